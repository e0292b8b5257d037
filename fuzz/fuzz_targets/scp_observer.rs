//! Fuzzes the gateway's rcp (legacy scp) observer with arbitrary streams in both directions:
//! it must not panic, must give up at most once and then report nothing, must close every
//! file it opened once the channel ends, and must read a stream the same way however it is
//! cut into chunks. Input: one byte choosing the command, then steps (see `steps`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_fuzz::scp::{ScpCommand, ScpObserver, ScpOp};
use postern_fuzz::{merged, steps};

const COMMANDS: [&str; 8] = [
    "scp -t /tmp",
    "scp -t /tmp/file.txt",
    "scp -r -t /srv/dir",
    "scp -d -t /tmp",
    "scp -f /etc/hostname",
    "scp -r -f /var/log",
    "scp -p -f 'a b/c'",
    "scp -v -r -p -t -- /home/u/x",
];

fn run(cmd: &ScpCommand, steps: &[(u8, &[u8])]) -> Vec<ScpOp> {
    let mut o = ScpObserver::new(cmd.clone());
    let mut ops = Vec::new();
    for &(tag, bytes) in steps {
        ops.extend(match tag {
            0 => o.client_bytes(bytes),
            1 => o.server_bytes(bytes),
            2 => o.give_up_now("the server wrote to standard error"),
            _ => o.finish(),
        });
    }
    ops.extend(o.finish());
    ops
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let cmd = match ScpCommand::parse(COMMANDS[usize::from(which) % COMMANDS.len()]) {
        Some(Ok(c)) => c,
        other => panic!("a seed command is not trusted: {other:?}"),
    };
    let steps = steps(rest);
    let ops = run(&cmd, &steps);

    let mut open = 0usize;
    let mut gave_up = false;
    for op in &ops {
        assert!(!gave_up, "an event after giving up: {op:?} in {ops:?}");
        match op {
            ScpOp::Open { .. } => {
                assert_eq!(open, 0, "a second open file: {ops:?}");
                open += 1;
            }
            ScpOp::Close { .. } => {
                assert_eq!(open, 1, "a close without an open: {ops:?}");
                open -= 1;
            }
            ScpOp::GaveUp { .. } => gave_up = true,
            _ => {}
        }
    }
    assert_eq!(open, 0, "a file left open at the end: {ops:?}");

    let joined = merged(&steps);
    let joined: Vec<(u8, &[u8])> = joined.iter().map(|(t, b)| (*t, b.as_slice())).collect();
    assert_eq!(run(&cmd, &joined), ops, "chunking changed what was seen");
});
