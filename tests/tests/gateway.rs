//! User stories of postern-gate: stock `ssh` through the gateway with the config that
//! `postern login` wrote; policy checked, sessions recorded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use postern_tests::{run, text, Ca, GateCluster, Person, TEST_LOGIN};

fn policy() -> String {
    format!(
        r#"
[defaults]
user_cert_ttl = "1h"

[roles.dev]
logins = ["{TEST_LOGIN}"]
nodes = {{ env = "dev" }}
permit = ["pty"]

[roles.fwd]
logins = ["{TEST_LOGIN}"]
nodes = {{ env = "dev" }}
permit = ["pty", "port-forwarding"]

[users.alice]
roles = ["dev"]

[users.bob]
roles = ["fwd"]
"#
    )
}

type Cluster = GateCluster;

fn cluster() -> Cluster {
    GateCluster::start(&policy())
}

#[test]
fn exec_through_the_gateway_prints_output_and_returns_the_exit_code() {
    let c = cluster();
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["echo hi; exit 3"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\ngate:\n{}",
        text(&out),
        c.gate.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
}

#[test]
fn unregistered_destination_is_refused_with_a_message() {
    let c = cluster();
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "nosuchhost", TEST_LOGIN, &["true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("administratively prohibited"),
        "{}",
        text(&out)
    );
    assert!(err.contains("not a server of cluster"), "{}", text(&out));
}

/// The recordings the CA holds: (metadata, cast text), oldest first. Waits for `n` of them.
fn recordings(c: &Cluster, n: usize) -> Vec<(serde_json::Value, String)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let list = c.ca.admin_json(&["recordings", "ls"]);
        let list = list.as_array().unwrap().clone();
        if list.len() >= n {
            return list
                .into_iter()
                .map(|m| {
                    let id = m["id"].as_str().unwrap().to_owned();
                    let cast =
                        std::fs::read_to_string(c.ca.recordings_dir().join(format!("{id}.cast")))
                            .unwrap();
                    (m, cast)
                })
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} recordings:\n{}",
            list.len(),
            c.gate.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The output a cast replays.
fn replay(cast: &str) -> String {
    cast.lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn pty_session_is_recorded_and_the_recording_replays_what_the_client_saw() {
    let c = cluster();
    let out = c.alice.ssh_via_gate(
        &c.ca,
        "web1",
        TEST_LOGIN,
        &[
            "-tt",
            "printf 'one\\n'; printf 'två\\n'; tput cols 2>/dev/null; exit 0",
        ],
    );
    assert!(out.status.success(), "{}\n{}", text(&out), c.gate.log());
    let saw = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(saw.contains("one\r\ntvå\r\n"), "{saw:?}");
    let recs = recordings(&c, 1);
    let (meta, cast) = &recs[0];
    assert_eq!(meta["user"], "alice");
    assert_eq!(meta["login"], TEST_LOGIN);
    assert_eq!(meta["node"], "web1");
    assert_eq!(meta["interrupted"], false);
    let header: serde_json::Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert!(header["width"].as_u64().unwrap() > 0);
    assert_eq!(
        replay(cast),
        saw,
        "the recording does not replay what the client saw"
    );
    // Stock asciinema's format: every event line is [time, "o"|"i"|"r", text].
    for l in cast.lines().skip(1) {
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(e[0].is_f64() || e[0].is_u64(), "{l}");
    }
}

fn sha256(path: &std::path::Path) -> String {
    let out = run(std::process::Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn scp_both_ways_in_both_modes_and_sftp_move_100_mb_intact() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    let st = std::process::Command::new("head")
        .args(["-c", "104857600", "/dev/urandom"])
        .stdout(std::fs::File::create(&big).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    let sum = sha256(&big);
    let cfg = c.alice.home.path().join(".ssh/config");
    let host = format!("{TEST_LOGIN}@web1.{}", c.ca.cluster);
    for (mode, remote) in [
        ("-O", "/tmp/postern-scp-legacy.bin"),
        ("-s", "/tmp/postern-scp-sftp.bin"),
    ] {
        let _ = std::fs::remove_file(remote);
        let out = run(std::process::Command::new("scp")
            .env("HOME", c.alice.home.path())
            .arg("-F")
            .arg(&cfg)
            .args(["-q", "-o", "BatchMode=yes", mode])
            .arg(&big)
            .arg(format!("{host}:{remote}")));
        assert!(
            out.status.success(),
            "scp {mode} up: {}\n{}",
            text(&out),
            c.gate.log()
        );
        assert_eq!(
            sha256(std::path::Path::new(remote)),
            sum,
            "scp {mode} upload corrupted"
        );
        let back = dir.path().join(format!("back{mode}.bin"));
        let out = run(std::process::Command::new("scp")
            .env("HOME", c.alice.home.path())
            .arg("-F")
            .arg(&cfg)
            .args(["-q", "-o", "BatchMode=yes", mode])
            .arg(format!("{host}:{remote}"))
            .arg(&back));
        assert!(out.status.success(), "scp {mode} down: {}", text(&out));
        assert_eq!(sha256(&back), sum, "scp {mode} download corrupted");
        let _ = std::fs::remove_file(remote);
    }
    // sftp put, ls, get, rm.
    let batch = dir.path().join("batch");
    let got = dir.path().join("got.bin");
    std::fs::write(&batch, format!("put {} /tmp/postern-sftp.bin\nls -l /tmp/postern-sftp.bin\nget /tmp/postern-sftp.bin {}\nrm /tmp/postern-sftp.bin\n", big.display(), got.display())).unwrap();
    let out = run(std::process::Command::new("sftp")
        .env("HOME", c.alice.home.path())
        .arg("-F")
        .arg(&cfg)
        .args(["-q", "-o", "BatchMode=yes", "-b"])
        .arg(&batch)
        .arg(&host));
    assert!(out.status.success(), "sftp: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("104857600"),
        "{}",
        text(&out)
    );
    assert_eq!(sha256(&got), sum);
    // File operations are in the audit log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let kinds: Vec<String> =
            c.ca.audit()
                .iter()
                .map(|e| e["kind"].as_str().unwrap().to_owned())
                .collect();
        if ["sftp.open", "sftp.close", "sftp.remove"]
            .iter()
            .all(|k| kinds.iter().any(|x| x == k))
        {
            let close = c.ca.audit().into_iter().find(|e| {
                e["kind"] == "sftp.close"
                    && e["detail"]["detail"]["extra"]["written"] == 104_857_600
            });
            assert!(close.is_some(), "no sftp.close with the bytes written");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "file operations missing from the audit log: {kinds:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_lock_cuts_a_live_session_within_five_seconds() {
    let c = cluster();
    let mut child = std::process::Command::new("ssh")
        .env("HOME", c.alice.home.path())
        .arg("-F")
        .arg(c.alice.home.path().join(".ssh/config"))
        .args(["-o", "BatchMode=yes", "-l", TEST_LOGIN])
        .arg(format!("web1.{}", c.ca.cluster))
        .arg("echo started; sleep 60")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert_eq!(first, "started\n");
    c.ca.admin_json(&["lock", "add", "--user", "alice", "--reason", "incident 7"]);
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(8),
            "the session outlived the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("incident 7"), "{err}");
}

#[test]
fn kill_9_of_the_gateway_loses_no_recorded_byte_the_client_received() {
    let mut c = cluster();
    let mut child = std::process::Command::new("ssh")
        .env("HOME", c.alice.home.path())
        .arg("-F")
        .arg(c.alice.home.path().join(".ssh/config"))
        .args(["-o", "BatchMode=yes", "-l", TEST_LOGIN])
        .arg(format!("web1.{}", c.ca.cluster))
        .arg("i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.05; done")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut received = String::new();
    for _ in 0..20 {
        std::io::BufRead::read_line(&mut reader, &mut received).unwrap();
    }
    c.gate.kill();
    // Whatever else reached the client before the connection died counts too.
    let _ = std::io::Read::read_to_string(&mut reader, &mut received);
    let _ = child.wait();
    c.gate.spawn();
    let recs = recordings(&c, 1);
    let (meta, cast) = &recs[0];
    assert_eq!(meta["interrupted"], true, "{meta}");
    let replayed = replay(cast);
    assert!(
        replayed.starts_with(&received),
        "client saw bytes the recording lacks:\nclient: {received:?}\nrecorded: {replayed:?}"
    );
}

#[test]
fn twenty_concurrent_sessions_give_twenty_distinct_complete_recordings() {
    let c = cluster();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let home = c.alice.home.path().to_path_buf();
            let host = format!("web1.{}", c.ca.cluster);
            std::thread::spawn(move || {
                run(std::process::Command::new("ssh")
                    .env("HOME", &home)
                    .arg("-F")
                    .arg(home.join(".ssh/config"))
                    .args(["-o", "BatchMode=yes", "-l", TEST_LOGIN, &host])
                    .arg(format!(
                        "echo session-{i}-start; sleep 1; echo session-{i}-end"
                    )))
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(
            out.status.success(),
            "{}\ngate:\n{}",
            text(&out),
            c.gate.log()
        );
    }
    let recs = recordings(&c, 20);
    assert_eq!(recs.len(), 20);
    let mut ids: Vec<String> = recs
        .iter()
        .map(|(m, _)| m["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "recording ids are not distinct");
    let mut seen: Vec<usize> = recs
        .iter()
        .map(|(_, cast)| {
            let r = replay(cast);
            let i: usize = r
                .trim_start_matches("session-")
                .split('-')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                r,
                format!("session-{i}-start\nsession-{i}-end\n"),
                "incomplete recording"
            );
            i
        })
        .collect();
    seen.sort();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
}

/// Reads what a local forward to the node's sshd delivers: its banner when allowed.
fn through_forward(person: &Person, ca: &Ca, target_port: u16) -> String {
    use std::io::Read;
    let lport = postern_tests::free_port();
    let mut child = std::process::Command::new("ssh")
        .env("HOME", person.home.path())
        .arg("-F")
        .arg(person.home.path().join(".ssh/config"))
        .args(["-o", "BatchMode=yes", "-N", "-L"])
        .arg(format!("127.0.0.1:{lport}:127.0.0.1:{target_port}"))
        .args(["-l", TEST_LOGIN])
        .arg(format!("web1.{}", ca.cluster))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", lport)) {
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(3)));
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf) {
                got = String::from_utf8_lossy(&buf[..n]).into_owned();
            }
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    got
}

#[test]
fn port_forwarding_follows_permits() {
    let c = cluster();
    let node_port = c.node.port;
    // alice's role does not permit port forwarding: the channel is refused.
    assert_eq!(
        through_forward(&c.alice, &c.ca, node_port),
        "",
        "alice forwarded without the permit"
    );
    let refused = |l: &str| {
        l.lines()
            .any(|l| l.contains("port forwarding refused by permits") && l.contains("alice"))
    };
    let log = c.gate.log_when(refused);
    assert!(
        refused(&log),
        "the gateway did not refuse by permits:\n{log}"
    );
    let mut bob = Person::new("bob");
    bob.enroll(&c.ca);
    bob.login(&c.ca);
    let banner = through_forward(&bob, &c.ca, node_port);
    assert!(
        banner.starts_with("SSH-2.0-"),
        "bob's permitted forward did not reach the server: {banner:?}"
    );
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        })
        .unwrap()
}

#[test]
fn hostile_clients_cost_bounded_memory_and_never_panic_the_gateway() {
    use std::io::Write;
    let c = cluster();
    let pid = c.gate.pid();
    let before = rss_kb(pid);
    for i in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", c.gate.port)) {
            let _ = s.set_write_timeout(Some(std::time::Duration::from_millis(200)));
            let junk: Vec<u8> = match i % 4 {
                0 => b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                1 => vec![0xff; 64 * 1024],
                // A valid banner, then a packet claiming 2 GiB.
                2 => [
                    b"SSH-2.0-evil\r\n".as_slice(),
                    &[0x7f, 0xff, 0xff, 0xff, 0x01],
                ]
                .concat(),
                _ => [b"SSH-2.0-evil\r\n".as_slice(), &vec![0u8; 300_000]].concat(),
            };
            let _ = s.write_all(&junk);
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = rss_kb(pid);
    assert!(!c.gate.log().contains("panicked"), "{}", c.gate.log());
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} kB to {after} kB"
    );
    // Still serving.
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["echo still-here"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "still-here\n",
        "{}",
        text(&out)
    );
}

#[test]
fn user_certificate_used_directly_against_the_server_is_refused() {
    let c = cluster();
    let dir = c.alice.cluster_dir(&c.ca);
    let out = run(std::process::Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-i")
        .arg(dir.join("id_ed25519"))
        .args([
            "-p",
            &c.node.port.to_string(),
            "-l",
            TEST_LOGIN,
            "127.0.0.1",
            "true",
        ]));
    assert!(
        !out.status.success(),
        "a user-CA certificate logged in to the server directly: {}",
        text(&out)
    );
    // web1's sshd trusts only the node-access CA: it refuses the user CA's certificate
    // itself, before asking the shim.
    c.node
        .assert_refused_before_the_shim(&dir.join("id_ed25519"), TEST_LOGIN);
}

#[test]
fn regression_refused_subsystem_ends_the_channel_instead_of_hanging() {
    let c = cluster();
    let t0 = std::time::Instant::now();
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["-s", "no-such-subsystem"]);
    assert!(!out.status.success());
    assert!(t0.elapsed() < std::time::Duration::from_secs(30), "hung");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused the subsystem request"),
        "{}",
        text(&out)
    );
}
