//! Fuzzes the gateway's SFTP observer with arbitrary streams in both directions: it must not
//! panic, must give up at most once and then report nothing, and must read a stream the same
//! way however it is cut into chunks (up to the wording of why it gave up). Input: steps
//! (see `steps`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_fuzz::sftp::{FileOp, SftpObserver};
use postern_fuzz::{merged, steps};

fn run(steps: &[(u8, &[u8])]) -> Vec<FileOp> {
    let mut o = SftpObserver::default();
    let mut ops = Vec::new();
    for &(tag, bytes) in steps {
        ops.extend(match tag {
            0 => o.client_bytes(bytes),
            1 => o.server_bytes(bytes),
            2 => o.give_up_now("the server wrote to standard error"),
            _ => Vec::new(),
        });
    }
    ops
}

/// Events with the reason of a `GaveUp` blanked: a packet judged by its beginning and the same
/// packet judged whole may be refused in other words.
fn blank(ops: Vec<FileOp>) -> Vec<FileOp> {
    ops.into_iter()
        .map(|op| match op {
            FileOp::GaveUp { .. } => FileOp::GaveUp {
                reason: String::new(),
            },
            op => op,
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let steps = steps(data);
    let ops = run(&steps);
    if let Some(i) = ops.iter().position(|o| matches!(o, FileOp::GaveUp { .. })) {
        assert_eq!(i + 1, ops.len(), "an event after giving up: {ops:?}");
    }
    let joined = merged(&steps);
    let joined: Vec<(u8, &[u8])> = joined.iter().map(|(t, b)| (*t, b.as_slice())).collect();
    assert_eq!(
        blank(run(&joined)),
        blank(ops),
        "chunking changed what was seen"
    );
});
