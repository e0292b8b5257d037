//! Fuzzes the gateway's scp exec-command allowlist (`ScpCommand::parse`): whatever it trusts
//! as scp must be a command no shell does anything with but split at spaces and unquote.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_fuzz::scp::{ScpCommand, ScpObserver, MAX_COMMAND};

/// Characters a trusted command may hold outside single quotes (besides letters, digits and
/// non-ASCII characters that are neither spaces nor controls): the plain-path set, the
/// space between words and the `-` of options.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || " ._/+,:=@%-".contains(c)
        || (!c.is_ascii() && !c.is_whitespace() && !c.is_control())
}

fuzz_target!(|data: &[u8]| {
    let Ok(cmd) = std::str::from_utf8(data) else {
        return;
    };
    let Some(Ok(parsed)) = ScpCommand::parse(cmd) else {
        return;
    };
    // An independent reading of the rule: the command is `scp ` and words separated by
    // single spaces or runs of them, each plain or wholly single-quoted without `\`.
    assert!(cmd.len() <= MAX_COMMAND, "too long: {cmd:?}");
    assert!(cmd.starts_with("scp "), "{cmd:?}");
    assert!(!cmd.chars().any(char::is_control), "{cmd:?}");
    let mut quoted = false;
    let mut prev = ' ';
    for c in cmd.chars() {
        if c == '\'' {
            if !quoted {
                assert_eq!(prev, ' ', "a quote opening inside a word: {cmd:?}");
            }
            quoted = !quoted;
        } else if quoted {
            assert!(c != '\\', "a backslash in quotes: {cmd:?}");
        } else {
            assert!(plain(c), "{c:?} outside quotes: {cmd:?}");
            // No word a shell would expand: `~` is not in the set, `=`/`%` never start one.
            if prev == ' ' {
                assert!(!"=%~".contains(c), "a word starting with {c:?}: {cmd:?}");
            }
            if prev == '\'' {
                assert_eq!(c, ' ', "a quote closing inside a word: {cmd:?}");
            }
        }
        prev = c;
    }
    assert!(!quoted, "an unterminated quote: {cmd:?}");
    // Parsing is a function of the text.
    assert_eq!(ScpCommand::parse(cmd), Some(Ok(parsed.clone())));
    let _ = ScpObserver::new(parsed);
});
