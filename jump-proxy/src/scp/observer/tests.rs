//! The scp observer's tests: conversations of stock scp, cut at every byte, and hostile ones.

use super::super::wire::MAX_LINE;
use super::*;

fn cmd(s: &str) -> ScpCommand {
    ScpCommand::parse(s).unwrap().unwrap()
}

fn p(path: &str) -> ScpPath {
    ScpPath {
        path: path.into(),
        if_target_is_dir: None,
    }
}

/// One conversation, in causal order: (bytes from the client?, bytes).
type Script = Vec<(bool, Vec<u8>)>;

fn feed(o: &mut ScpObserver, from_client: bool, b: &[u8]) -> Vec<ScpOp> {
    if from_client {
        o.client_bytes(b)
    } else {
        o.server_bytes(b)
    }
}

/// Runs a script with each message cut into the pieces `cut` gives.
fn run(command: &str, script: &Script, cut: impl Fn(&[u8]) -> Vec<&[u8]>) -> Vec<ScpOp> {
    let mut o = ScpObserver::new(cmd(command));
    let mut ops = Vec::new();
    for (from_client, msg) in script {
        for piece in cut(msg) {
            ops.extend(feed(&mut o, *from_client, piece));
        }
    }
    ops.extend(o.finish());
    ops
}

fn whole(b: &[u8]) -> Vec<&[u8]> {
    vec![b]
}

/// Asserts the script gives `want` whole, byte by byte, and cut at every byte boundary.
fn check_all_splits(command: &str, script: &Script, want: &[ScpOp]) {
    assert_eq!(run(command, script, whole), want, "whole");
    assert_eq!(
        run(command, script, |b| b.chunks(1).collect()),
        want,
        "byte by byte"
    );
    for (i, (_, msg)) in script.iter().enumerate() {
        for k in 0..=msg.len() {
            let got = run(command, script, |b| {
                if std::ptr::eq(b, script[i].1.as_slice()) {
                    let (x, y) = b.split_at(k);
                    vec![x, y]
                } else {
                    vec![b]
                }
            });
            assert_eq!(got, want, "message {i} cut at {k}");
        }
    }
}

fn c(b: &[u8]) -> (bool, Vec<u8>) {
    (true, b.to_vec())
}
fn s(b: &[u8]) -> (bool, Vec<u8>) {
    (false, b.to_vec())
}

fn gave_up(ops: &[ScpOp]) -> usize {
    ops.iter()
        .filter(|o| matches!(o, ScpOp::GaveUp { .. }))
        .count()
}

/// `scp -O -r -p tree host:/srv/` with tree/a.txt, tree/sub/b.bin, tree/sub/empty.
fn upload_tree() -> Script {
    vec![
        s(b"\0"),
        c(b"T1700000000 0 1700000001 0\n"),
        s(b"\0"),
        c(b"D0755 0 tree\n"),
        s(b"\0"),
        c(b"T1700000000 0 1700000001 0\n"),
        s(b"\0"),
        c(b"C0644 5 a.txt\n"),
        s(b"\0"),
        c(b"hello\0"),
        s(b"\0"),
        c(b"D0700 0 sub\n"),
        s(b"\0"),
        c(b"C0600 3 b.bin\n"),
        s(b"\0"),
        c(&[0, 10, 0xff, 0]),
        s(b"\0"),
        c(b"C0644 0 empty\n"),
        s(b"\0"),
        c(b"\0"),
        s(b"\0"),
        c(b"E\n"),
        s(b"\0"),
        c(b"E\n"),
        s(b"\0"),
    ]
}

#[test]
fn follows_a_recursive_upload_split_at_every_byte() {
    let want = [
        ScpOp::Mkdir {
            path: p("/srv/tree"),
            mode: 0o755,
        },
        ScpOp::Open {
            path: p("/srv/tree/a.txt"),
            mode: 0o644,
            size: 5,
            direction: Direction::Upload,
        },
        ScpOp::Close {
            path: p("/srv/tree/a.txt"),
            read: 0,
            written: 5,
            error: None,
        },
        ScpOp::Mkdir {
            path: p("/srv/tree/sub"),
            mode: 0o700,
        },
        ScpOp::Open {
            path: p("/srv/tree/sub/b.bin"),
            mode: 0o600,
            size: 3,
            direction: Direction::Upload,
        },
        ScpOp::Close {
            path: p("/srv/tree/sub/b.bin"),
            read: 0,
            written: 3,
            error: None,
        },
        ScpOp::Open {
            path: p("/srv/tree/sub/empty"),
            mode: 0o644,
            size: 0,
            direction: Direction::Upload,
        },
        ScpOp::Close {
            path: p("/srv/tree/sub/empty"),
            read: 0,
            written: 0,
            error: None,
        },
    ];
    check_all_splits("scp -r -p -t /srv/", &upload_tree(), &want);
}

#[test]
fn an_upload_target_that_may_be_a_directory_gets_both_paths() {
    let script = vec![
        s(b"\0"),
        c(b"D0755 0 tree\n"),
        s(b"\0"),
        c(b"C0644 2 f\n"),
        s(b"\0"),
        c(b"hi\0"),
        s(b"\0"),
        c(b"E\n"),
        s(b"\0"),
    ];
    let ops = run("scp -r -t /srv/new", &script, whole);
    let both = |a: &str, b: &str| ScpPath {
        path: a.into(),
        if_target_is_dir: Some(b.into()),
    };
    assert_eq!(
        ops[0],
        ScpOp::Mkdir {
            path: both("/srv/new", "/srv/new/tree"),
            mode: 0o755
        }
    );
    assert_eq!(
        ops[2],
        ScpOp::Close {
            path: both("/srv/new/f", "/srv/new/tree/f"),
            read: 0,
            written: 2,
            error: None
        }
    );
    // `scp f host:` sends `-t .`; several sources send -d; `/` stays single.
    for (command, want) in [
        ("scp -t .", "./f"),
        ("scp -d -t /srv", "/srv/f"),
        ("scp -t /", "/f"),
    ] {
        let mut o = ScpObserver::new(cmd(command));
        o.server_bytes(b"\0");
        o.client_bytes(b"C0644 2 f\n");
        let ops = o.server_bytes(b"\0");
        assert!(
            matches!(&ops[0], ScpOp::Open { path, .. } if *path == p(want)),
            "{command}: {ops:?}"
        );
    }
}

#[test]
fn follows_a_download_with_times_and_errors() {
    // `scp -O -p host:/data/c.log .` where reading fails halfway.
    let script = vec![
        c(b"\0"),
        s(b"T1700000000 0 1700000000 0\n"),
        c(b"\0"),
        s(b"C0640 6 c.log\n"),
        c(b"\0"),
        s(b"\0\0\0"),
        s(b"\0\0\0\x01scp: /data/c.log: Input/output error\n"),
        c(b"\0"),
    ];
    let want = [
        ScpOp::Open {
            path: p("/data/c.log"),
            mode: 0o640,
            size: 6,
            direction: Direction::Download,
        },
        ScpOp::Close {
            path: p("/data/c.log"),
            read: 6,
            written: 0,
            error: Some("scp: /data/c.log: Input/output error".into()),
        },
    ];
    check_all_splits("scp -p -f /data/c.log", &script, &want);
    // An unreadable source.
    let script = vec![c(b"\0"), s(b"\x01scp: /data/b.log: Permission denied\n")];
    let want = [ScpOp::Error {
        from: Side::Server,
        path: None,
        message: "scp: /data/b.log: Permission denied".into(),
    }];
    check_all_splits("scp -f /data/b.log", &script, &want);
    // A name the one source is not: no stock scp sends it.
    let mut o = ScpObserver::new(cmd("scp -f /data/a.log/"));
    o.client_bytes(b"\0");
    assert_eq!(
        o.server_bytes(b"C0644 1 other\n"),
        [ScpOp::GaveUp {
            reason: "a name the source is not".into()
        }]
    );
}

#[test]
fn follows_a_recursive_download_and_names_its_paths() {
    let script = vec![
        c(b"\0"),
        s(b"D0755 0 proj\n"),
        c(b"\0"),
        s(b"D0755 0 src\n"),
        c(b"\0"),
        s(b"C0644 3 main.rs\n"),
        c(b"\0"),
        s(b"fn\n\0"),
        c(b"\0"),
        s(b"E\n"),
        c(b"\0"),
        s(b"E\n"),
        c(b"\0"),
    ];
    let ops = run("scp -r -f /home/u/proj/", &script, whole);
    assert_eq!(
        ops,
        [
            ScpOp::OpenDir {
                path: p("/home/u/proj"),
                mode: 0o755
            },
            ScpOp::OpenDir {
                path: p("/home/u/proj/src"),
                mode: 0o755
            },
            ScpOp::Open {
                path: p("/home/u/proj/src/main.rs"),
                mode: 0o644,
                size: 3,
                direction: Direction::Download
            },
            ScpOp::Close {
                path: p("/home/u/proj/src/main.rs"),
                read: 3,
                written: 0,
                error: None
            },
        ]
    );
    // A quoted path with a space.
    let mut o = ScpObserver::new(cmd("scp -f '/tmp/my file'"));
    o.client_bytes(b"\0");
    o.server_bytes(b"C0644 1 my file\n");
    let ops = o.client_bytes(b"\0");
    assert!(matches!(&ops[0], ScpOp::Open { path, .. } if *path == p("/tmp/my file")));
}

#[test]
fn a_refused_file_is_an_error_with_its_path_and_the_transfer_goes_on() {
    let script = vec![
        s(b"\0"),
        c(b"C0644 3 x\n"),
        s(b"\x01scp: /etc/x: Permission denied\n"),
        c(b"C0644 3 y\n"),
        s(b"\0"),
        c(b"abc\0"),
        s(b"\x01scp: /etc/y: No space left on device\n"),
    ];
    let want = [
        ScpOp::Error {
            from: Side::Server,
            path: Some(p("/etc/x")),
            message: "scp: /etc/x: Permission denied".into(),
        },
        ScpOp::Open {
            path: p("/etc/y"),
            mode: 0o644,
            size: 3,
            direction: Direction::Upload,
        },
        ScpOp::Close {
            path: p("/etc/y"),
            read: 0,
            written: 3,
            error: Some("scp: /etc/y: No space left on device".into()),
        },
    ];
    check_all_splits("scp -d -t /etc", &script, &want);
}

#[test]
fn a_channel_that_ends_mid_file_closes_it_with_the_bytes_seen() {
    let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
    o.server_bytes(b"\0");
    o.client_bytes(b"C0644 9223372036854775807 huge\n");
    let ops = o.server_bytes(b"\0");
    assert!(matches!(
        ops[0],
        ScpOp::Open {
            size: 9223372036854775807,
            ..
        }
    ));
    for _ in 0..100 {
        assert!(o.client_bytes(&[7u8; 32768]).is_empty());
    }
    assert_eq!(
        o.finish(),
        [ScpOp::Close {
            path: p("/tmp/huge"),
            read: 0,
            written: 3_276_800,
            error: Some("the channel closed before the file's transfer was confirmed".into()),
        }]
    );
    assert!(o.client_bytes(b"more").is_empty());
    assert!(o.finish().is_empty());
}

#[test]
fn counts_a_100_mb_file_in_channel_sized_chunks() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let mut o = ScpObserver::new(cmd("scp -f /srv/big.bin"));
    o.client_bytes(b"\0");
    o.server_bytes(format!("C0644 {SIZE} big.bin\n").as_bytes());
    assert_eq!(o.client_bytes(b"\0").len(), 1);
    // What russh hands the relay: at most a 32 KiB packet at a time; the last one carries
    // the status byte too.
    let chunk = vec![0x55u8; 32 * 1024];
    for _ in 0..SIZE / chunk.len() as u64 - 1 {
        assert!(o.server_bytes(&chunk).is_empty());
    }
    let mut last = chunk.clone();
    last.push(0);
    assert!(o.server_bytes(&last).is_empty());
    assert_eq!(
        o.client_bytes(b"\0"),
        [ScpOp::Close {
            path: p("/srv/big.bin"),
            read: SIZE,
            written: 0,
            error: None
        }]
    );
}

/// Sends one record after a good start and returns the events.
fn upload_record(record: &[u8]) -> Vec<ScpOp> {
    let mut o = ScpObserver::new(cmd("scp -r -t /tmp/"));
    let mut ops = o.server_bytes(b"\0");
    ops.extend(o.client_bytes(record));
    ops.extend(o.server_bytes(b"\0"));
    ops.extend(o.client_bytes(b"more bytes after it\n"));
    ops.extend(o.finish());
    ops
}

#[test]
fn gives_up_once_on_malformed_records() {
    for bad in [
        &b"C0644 99999999999999999999999 x\n"[..],
        b"C0644 9223372036854775808 x\n",
        b"C0644 -5 x\n",
        b"C0644 +5 x\n",
        b"C0644  5 x\n",
        b"C0644 5x\n",
        b"C0644 5 \n",
        b"C0644 5\n",
        b"C0648 5 x\n",
        b"C064 5 x\n",
        b"C06445 5 x\n",
        b"C\n",
        b"D0755 0 ..\n",
        b"D0755 0 .\n",
        b"C0644 5 ../../etc/passwd\n",
        b"C0644 5 a/b\n",
        b"C0644 5 a\0b\n",
        b"T1 0 1\n",
        b"T1 1000000 1 0\n",
        b"Tx 0 1 0\n",
        b"X\n",
        b"\n",
        b"Welcome to the server!\n",
    ] {
        let ops = upload_record(bad);
        assert_eq!(
            gave_up(&ops),
            1,
            "{:?}: {ops:?}",
            String::from_utf8_lossy(bad)
        );
        assert!(
            matches!(ops.last(), Some(ScpOp::GaveUp { .. })),
            "{:?}: {ops:?}",
            String::from_utf8_lossy(bad)
        );
        assert!(
            !ops.iter().any(|o| matches!(o, ScpOp::Open { .. })),
            "{ops:?}"
        );
    }
}

#[test]
fn gives_up_on_lines_without_end_with_bounded_memory() {
    let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
    o.server_bytes(b"\0");
    let mut ops = o.client_bytes(b"C0644 5 ");
    // A name that never ends: one event, then nothing kept.
    for _ in 0..1000 {
        ops.extend(o.client_bytes(&[b'a'; 4096]));
    }
    assert_eq!(gave_up(&ops), 1);
    assert_eq!(o.line.capacity(), 0);
    // The longest line sink() reads whole is followed; one byte more is not.
    let name = "n".repeat(MAX_LINE - 1 - "C0644 1 ".len());
    let ops = upload_record(format!("C0644 1 {name}\n").as_bytes());
    assert!(matches!(&ops[0], ScpOp::Open { .. }), "{ops:?}");
    let ops = upload_record(format!("C0644 1 {name}n\n").as_bytes());
    assert_eq!(
        ops,
        [ScpOp::GaveUp {
            reason: "record line too long".into()
        }]
    );
    // A status message that never ends.
    let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
    let mut ops = o.server_bytes(b"\x01");
    for _ in 0..100 {
        ops.extend(o.server_bytes(&[b'e'; 4096]));
    }
    assert_eq!(
        ops,
        [ScpOp::GaveUp {
            reason: "status message too long".into()
        }]
    );
    assert_eq!(o.resp.msg().capacity(), 0);
}

#[test]
fn gives_up_on_responses_out_of_step() {
    // A sender that does not wait for the answer.
    let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
    o.server_bytes(b"\0");
    let ops = o.client_bytes(b"C0644 1 x\nZ\0");
    assert_eq!(gave_up(&ops), 1);
    // An answer nobody asked for.
    let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
    o.server_bytes(b"\0");
    assert_eq!(gave_up(&o.server_bytes(b"\0")), 1);
    // A byte that is no status (a shell start-up file printing to standard output).
    let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
    assert_eq!(gave_up(&o.server_bytes(b"Hello!\n")), 1);
    // A status byte after file data that is none.
    let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
    o.server_bytes(b"\0");
    o.client_bytes(b"C0644 1 x\n");
    o.server_bytes(b"\0");
    let ops = o.client_bytes(b"x\x07");
    assert_eq!(
        ops,
        [
            ScpOp::Close {
                path: p("/tmp/x"),
                read: 0,
                written: 1,
                error: Some("scp observer gave up: unexpected status byte".into())
            },
            ScpOp::GaveUp {
                reason: "unexpected status byte".into()
            }
        ]
    );
}

#[test]
fn a_fatal_status_ends_the_transfer_and_any_byte_after_it_gives_up() {
    let mut o = ScpObserver::new(cmd("scp -d -t /nope"));
    let ops = o.server_bytes(b"\x02scp: /nope: No such file or directory\n");
    assert_eq!(
        ops,
        [ScpOp::Error {
            from: Side::Server,
            path: None,
            message: "scp: /nope: No such file or directory".into()
        }]
    );
    // The server's scp has exited: whatever speaks now is something else.
    assert_eq!(
        o.server_bytes(b"$ "),
        [ScpOp::GaveUp {
            reason: "bytes after the end of the transfer".into()
        }]
    );
    assert!(o.client_bytes(b"id\n").is_empty());
    // `E` at the top level ends sink() too.
    let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
    o.server_bytes(b"\0");
    o.client_bytes(b"E\n");
    assert!(o.server_bytes(b"\0").is_empty());
    assert_eq!(gave_up(&o.client_bytes(b"C0644 1 x\n")), 1);
    // The channel's end is no give-up, and nothing is seen after it.
    let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
    assert!(o.finish().is_empty());
    assert!(o.server_bytes(b"anything").is_empty());
    assert!(o.give_up_now("late").is_empty());
}

#[test]
fn standard_error_from_the_server_gives_up_once() {
    let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
    o.server_bytes(b"\0");
    o.client_bytes(b"C0644 3 x\n");
    o.server_bytes(b"\0");
    assert_eq!(
        o.give_up_now("the server wrote to standard error"),
        [
            ScpOp::Close {
                path: p("/tmp/x"),
                read: 0,
                written: 0,
                error: Some("scp observer gave up: the server wrote to standard error".into())
            },
            ScpOp::GaveUp {
                reason: "the server wrote to standard error".into()
            }
        ]
    );
    assert!(o.give_up_now("again").is_empty());
}

#[test]
fn a_flood_of_error_messages_is_capped_and_gives_up() {
    // 10,000 three-byte error records in one 30 kB chunk, as the review sent.
    let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
    o.server_bytes(b"\0");
    let flood = b"\x01x\n".repeat(10_000);
    let ops = o.client_bytes(&flood);
    assert_eq!(ops.len(), MAX_ERRORS + 2, "{:?}", ops.last());
    assert!(ops[..MAX_ERRORS].iter().all(|op| matches!(
        op,
        ScpOp::Error {
            from: Side::Client,
            ..
        }
    )));
    assert_eq!(
        ops[MAX_ERRORS..],
        [
            ScpOp::ErrorsSuppressed {
                reported: MAX_ERRORS
            },
            ScpOp::GaveUp {
                reason: "too many error messages".into()
            }
        ]
    );
    assert!(o.client_bytes(&flood).is_empty());
    // One at a time, from the server, as responses: the same.
    let mut o = ScpObserver::new(cmd("scp -f /tmp/x"));
    o.client_bytes(b"\0");
    let mut ops = Vec::new();
    for _ in 0..300 {
        ops.extend(o.server_bytes(b"\x01scp: nope\n"));
    }
    assert_eq!(ops.len(), MAX_ERRORS + 2);
    assert_eq!(gave_up(&ops), 1);
    // Exactly the cap is fine.
    let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
    o.server_bytes(b"\0");
    let ops = o.client_bytes(&b"\x01x\n".repeat(MAX_ERRORS));
    assert_eq!(ops.len(), MAX_ERRORS);
    assert_eq!(gave_up(&ops), 0);
}

#[test]
fn deep_nesting_gives_up_with_bounded_memory() {
    let mut o = ScpObserver::new(cmd("scp -r -t /t/"));
    let mut ops = o.server_bytes(b"\0");
    let name = "d".repeat(200);
    let rec = format!("D0755 0 {name}\n");
    for _ in 0..1000 {
        ops.extend(o.client_bytes(rec.as_bytes()));
        ops.extend(o.server_bytes(b"\0"));
    }
    assert_eq!(gave_up(&ops), 1);
    assert_eq!(
        ops.last(),
        Some(&ScpOp::GaveUp {
            reason: "path too long".into()
        })
    );
    assert!(ops.len() < 50);
    assert!(o.dirs.marks.capacity() == 0 && o.dirs.cur.path.capacity() == 0);
}

#[test]
fn survives_binary_garbage_in_both_directions() {
    // xorshift: reproducible noise without a dependency.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..300 {
        let command = if round % 2 == 0 {
            "scp -r -t /tmp/"
        } else {
            "scp -r -f /tmp/x"
        };
        let mut o = ScpObserver::new(cmd(command));
        let mut ops = Vec::new();
        // Start with a plausible prefix so the noise reaches the deeper states too.
        ops.extend(o.server_bytes(b"\0"));
        ops.extend(o.client_bytes(b"\0"));
        for _ in 0..50 {
            let len = (next() % 300) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Bias towards protocol bytes.
            for b in buf.iter_mut() {
                match *b % 8 {
                    0 => *b = 0,
                    1 => *b = b'\n',
                    2 => *b = b"CDET 0123456789"[(*b as usize / 8) % 15],
                    _ => {}
                }
            }
            ops.extend(if next() % 2 == 0 {
                o.client_bytes(&buf)
            } else {
                o.server_bytes(&buf)
            });
        }
        ops.extend(o.finish());
        assert!(gave_up(&ops) <= 1, "{ops:?}");
        if let Some(i) = ops.iter().position(|o| matches!(o, ScpOp::GaveUp { .. })) {
            assert_eq!(i, ops.len() - 1, "events after giving up: {ops:?}");
        }
        let opens = ops
            .iter()
            .filter(|o| matches!(o, ScpOp::Open { .. }))
            .count();
        let closes = ops
            .iter()
            .filter(|o| matches!(o, ScpOp::Close { .. }))
            .count();
        assert_eq!(opens, closes, "{ops:?}");
        assert!(o.line.len() < MAX_LINE && o.resp.msg().len() < MAX_LINE);
    }
}
