//! Fuzzes the asciicast checks of recording uploads: the CA's header rule for a recording sent
//! whole (`check_cast`) and for one assembled from chunks (`check_head` on its first bytes)
//! must agree, and a recording the CA accepts is one `postern play` can start reading; no line
//! of it makes the player panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_core::cast::{check_cast, check_head, MAX_HEADER_BYTES};
use postern_fuzz::cast::{delay, parse_event, parse_header, Line};

fuzz_target!(|data: &[u8]| {
    let bytes = data.len() as u64;
    let head = &data[..data.len().min(MAX_HEADER_BYTES)];
    let chunked = check_head(head, bytes);
    let Ok(text) = std::str::from_utf8(data) else {
        // A first line that is not UTF-8 is refused; later lines are the player's business.
        if let Some(n) = data.iter().position(|b| *b == b'\n') {
            if std::str::from_utf8(&data[..n]).is_err() {
                assert!(chunked.is_err());
            }
        }
        return;
    };
    let whole = check_cast(text);
    if text
        .split('\n')
        .next()
        .is_some_and(|l| l.len() < MAX_HEADER_BYTES)
    {
        assert_eq!(
            whole.is_ok(),
            chunked.is_ok(),
            "a single upload and a chunked one judge {text:?} differently: {whole:?} {chunked:?}"
        );
    }
    if whole.is_err() {
        return;
    }
    let mut lines = text.lines();
    if let Err(e) = parse_header(lines.next().unwrap_or_default()) {
        panic!("the CA stores a recording postern play refuses: {e:#}");
    }
    let mut prev = 0.0;
    for line in lines {
        if let Line::Output(o) = parse_event(line) {
            for speed in [0.5, 1.0, 1e300, f64::MIN_POSITIVE] {
                let _ = delay(prev, o.time, speed);
            }
            prev = o.time;
        }
    }
});
