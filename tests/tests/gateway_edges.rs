//! postern-gate at its edges: agent forwarding by permits, recording failures in strict and
//! best-effort mode, uploads while the CA is down, stock `asciinema play`, and hostile SSH
//! clients that send requests on channels they never opened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postern_tests::{run, text, Ca, GateCluster, Person, TEST_LOGIN};

fn policy(recording: &str) -> String {
    format!(
        r#"
[defaults]
user_cert_ttl = "1h"
recording = "{recording}"

[roles.dev]
logins = ["{TEST_LOGIN}"]
nodes = {{ env = "dev" }}
permit = ["pty"]

[roles.agent]
logins = ["{TEST_LOGIN}"]
nodes = {{ env = "dev" }}
permit = ["pty", "agent-forwarding", "port-forwarding"]

[users.alice]
roles = ["dev"]

[users.carol]
roles = ["agent"]
"#
    )
}

type Cluster = GateCluster;

fn cluster(recording: &str) -> Cluster {
    GateCluster::start(&policy(recording))
}

/// Waits until the CA holds `n` recordings; returns (metadata, cast path), oldest first.
fn recordings(c: &Cluster, n: usize, within: Duration) -> Vec<(serde_json::Value, String)> {
    let deadline = Instant::now() + within;
    loop {
        let list = c.ca.admin_json(&["recordings", "ls"]);
        let list = list.as_array().unwrap().clone();
        if list.len() >= n {
            return list
                .into_iter()
                .map(|m| {
                    let id = m["id"].as_str().unwrap().to_owned();
                    let p = c.ca.recordings_dir().join(format!("{id}.cast"));
                    (m, p.to_string_lossy().into_owned())
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "only {} recordings:\n{}",
            list.len(),
            c.gate.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn audit_kinds(ca: &Ca) -> Vec<String> {
    ca.audit()
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until the audit log holds an event of `kind`.
fn wait_for_audit(ca: &Ca, kind: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !audit_kinds(ca).iter().any(|k| k == kind) {
        assert!(
            Instant::now() < deadline,
            "no {kind} event in {:?}",
            audit_kinds(ca)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An ssh-agent holding one fresh key, on its own socket; killed on drop.
struct Agent {
    dir: tempfile::TempDir,
    child: std::process::Child,
    fingerprint: String,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("postern-agent")
            .tempdir()
            .unwrap();
        let sock = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "ssh-agent did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let key = dir.path().join("agent-key");
        let out = run(Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "forwarded-agent-key",
                "-f",
            ])
            .arg(&key));
        assert!(out.status.success(), "{}", text(&out));
        let out = run(Command::new("ssh-add")
            .env("SSH_AUTH_SOCK", &sock)
            .arg(&key));
        assert!(out.status.success(), "{}", text(&out));
        let out = run(Command::new("ssh-keygen").arg("-lf").arg(&key));
        let fingerprint = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned();
        Agent {
            dir,
            child,
            fingerprint,
        }
    }

    fn sock(&self) -> std::path::PathBuf {
        self.dir.path().join("agent.sock")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ssh -A` through the gateway with the agent; runs `ssh-add -l` on the server.
fn list_forwarded_keys(person: &Person, ca: &Ca, agent: &Agent) -> std::process::Output {
    run(Command::new("ssh")
        .env("HOME", person.home.path())
        .env("SSH_AUTH_SOCK", agent.sock())
        .arg("-F")
        .arg(person.home.path().join(".ssh/config"))
        .args(["-o", "BatchMode=yes", "-A", "-l", TEST_LOGIN])
        .arg(format!("web1.{}", ca.cluster))
        .arg("ssh-add -l; echo status=$?"))
}

#[test]
fn agent_forwarding_follows_permits_and_is_audited() {
    let c = cluster("strict");
    let agent = Agent::start();

    // alice's role does not permit agent forwarding: the server sees no agent.
    let out = list_forwarded_keys(&c.alice, &c.ca, &agent);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains(&agent.fingerprint) && !stdout.contains("status=0"),
        "alice's agent reached the server without the permit: {}",
        text(&out)
    );
    wait_for_audit(&c.ca, "gateway.agent_forward_refused");

    // carol's role permits it: the server lists the key held by her local agent.
    let mut carol = Person::new("carol");
    carol.enroll(&c.ca);
    carol.login(&c.ca);
    let out = list_forwarded_keys(&carol, &c.ca, &agent);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&agent.fingerprint) && stdout.contains("status=0"),
        "carol's forwarded agent was not usable on the server: {}\ngate:\n{}",
        text(&out),
        c.gate.log()
    );
    wait_for_audit(&c.ca, "gateway.agent_forward");
    wait_for_audit(&c.ca, "gateway.agent_channel");
    let carol_events =
        c.ca.audit()
            .into_iter()
            .filter(|e| e["kind"] == "gateway.agent_channel")
            .count();
    assert!(carol_events >= 1);
}

#[test]
fn a_lock_ends_a_port_forward_only_session_within_five_seconds() {
    use std::io::Read;
    let c = cluster("strict");
    let mut carol = Person::new("carol");
    carol.enroll(&c.ca);
    carol.login(&c.ca);
    let lport = postern_tests::free_port();
    // `ssh -N -L`: no session channel at all, only forwards.
    let mut child = Command::new("ssh")
        .env("HOME", carol.home.path())
        .arg("-F")
        .arg(carol.home.path().join(".ssh/config"))
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-N",
            "-L",
        ])
        .arg(format!("127.0.0.1:{lport}:127.0.0.1:{}", c.node.port))
        .args(["-l", TEST_LOGIN])
        .arg(format!("web1.{}", c.ca.cluster))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let banner = |port: u16| -> String {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !banner(lport).starts_with("SSH-2.0-") {
        assert!(
            Instant::now() < deadline,
            "the forward never worked:\n{}",
            c.gate.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A forwarded connection open while the lock lands is cut too.
    let mut open = std::net::TcpStream::connect(("127.0.0.1", lport)).unwrap();
    c.ca.admin_json(&["lock", "add", "--user", "carol", "--reason", "incident 9"]);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "the forwarding session outlived the lock:\n{}",
            c.gate.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let mut err = String::new();
    child
        .stderr
        .as_mut()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("incident 9"), "{err}");
    let _ = open.set_read_timeout(Some(Duration::from_secs(5)));
    let mut rest = Vec::new();
    let _ = open.read_to_end(&mut rest);
    assert_eq!(banner(lport), "", "the forward still works after the lock");
}

/// Mounts a tmpfs of `kb` KiB over `dir` (the gateway's spool), so that recording fails
/// once it is full. Unmounted on drop.
struct FullDisk(std::path::PathBuf);

impl FullDisk {
    fn mount(dir: &Path, kb: u32) -> FullDisk {
        let out = run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kb}k,mode=0700"),
                "tmpfs",
            ])
            .arg(dir));
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (the suite runs as root): {}",
            text(&out)
        );
        FullDisk(dir.to_owned())
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg("-l").arg(&self.0));
    }
}

/// About 1.3 MB of output: more than the 256 KiB spool can hold.
const BIG_OUTPUT: &str = "head -c 1000000 /dev/zero | base64 -w 76; echo END-OF-OUTPUT";

#[test]
fn strict_recording_ends_the_session_when_the_recording_cannot_be_written() {
    let c = cluster("strict");
    let _full = FullDisk::mount(&c.gate.dir.path().join("recordings"), 256);
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &[BIG_OUTPUT]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    assert!(
        !stdout.contains("END-OF-OUTPUT"),
        "strict mode let unrecorded bytes through"
    );
    assert!(
        stderr.contains("recording failed") || stdout.contains("recording failed"),
        "no message to the user: {stderr}"
    );
}

#[test]
fn best_effort_recording_keeps_the_session_and_audits_the_failure() {
    let c = cluster("best-effort");
    let _full = FullDisk::mount(&c.gate.dir.path().join("recordings"), 256);
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &[BIG_OUTPUT]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", text(&out), c.gate.log());
    assert!(
        stdout.trim_end().ends_with("END-OF-OUTPUT"),
        "best-effort mode cut the output"
    );
    assert!(stdout.len() > 1_300_000, "{} bytes", stdout.len());
    wait_for_audit(&c.ca, "gateway.recording_failed");
}

#[test]
fn recordings_made_while_the_ca_is_down_are_uploaded_when_it_returns() {
    let mut c = cluster("strict");
    // The session starts while the CA is up (authorization needs it) and ends after it died.
    let mut child = Command::new("ssh")
        .env("HOME", c.alice.home.path())
        .arg("-F")
        .arg(c.alice.home.path().join(".ssh/config"))
        .args(["-o", "BatchMode=yes", "-l", TEST_LOGIN])
        .arg(format!("web1.{}", c.ca.cluster))
        .arg("echo started; sleep 2; echo while-the-ca-was-down")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut reader, &mut first).unwrap();
    assert_eq!(first, "started\n");
    c.ca.stop();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(rest, "while-the-ca-was-down\n");
    // The gateway keeps it and retries.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.gate.log().contains("will retry") {
        assert!(Instant::now() < deadline, "{}", c.gate.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let spooled = std::fs::read_dir(c.gate.dir.path().join("recordings"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cast"))
        .count();
    assert_eq!(spooled, 1, "the recording is not in the spool");
    c.ca.spawn();
    let recs = recordings(&c, 1, Duration::from_secs(30));
    let cast = std::fs::read_to_string(&recs[0].1).unwrap();
    assert!(cast.contains("while-the-ca-was-down"), "{cast}");
    assert_eq!(recs[0].0["interrupted"], false);
}

#[test]
fn stock_asciinema_plays_a_recording() {
    let c = cluster("strict");
    let out = c.alice.ssh_via_gate(
        &c.ca,
        "web1",
        TEST_LOGIN,
        &[
            "-tt",
            "printf 'played by asciinema\\n'; printf 'två rader\\n'; exit 0",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let saw = String::from_utf8_lossy(&out.stdout).into_owned();
    let recs = recordings(&c, 1, Duration::from_secs(20));
    let played = run(Command::new("asciinema")
        .args(["play", "--speed", "20", "--idle-time-limit", "0.1"])
        .arg(&recs[0].1)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null()));
    assert!(played.status.success(), "{}", text(&played));
    let shown = String::from_utf8_lossy(&played.stdout);
    assert!(
        shown.contains(&*saw),
        "asciinema showed {shown:?}, the client saw {saw:?}"
    );
}

/// A hostile client (paramiko, a real SSH implementation) that authenticates with the user
/// certificate and then sends requests, data, window adjusts, EOF and close for channel
/// numbers it never opened, on the outer connection and on the inner one.
const HOSTILE: &str = r#"
import socket, sys, time, paramiko
from paramiko.message import Message
from paramiko.common import (cMSG_CHANNEL_REQUEST, cMSG_CHANNEL_DATA, cMSG_CHANNEL_EOF,
    cMSG_CHANNEL_CLOSE, cMSG_CHANNEL_WINDOW_ADJUST, cMSG_CHANNEL_SUCCESS, cMSG_CHANNEL_FAILURE,
    cMSG_CHANNEL_OPEN_SUCCESS, cMSG_CHANNEL_EXTENDED_DATA)
port, key, cert, login, dest = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]

def attack(t):
    """Sends the hostile messages; the gateway may answer by disconnecting (a protocol error)."""
    sent = 0
    try:
        for chan in (0, 1, 77, 2**31, 2**32 - 1):
            msgs = []
            m = Message(); m.add_byte(cMSG_CHANNEL_REQUEST); m.add_int(chan)
            m.add_string("exec"); m.add_boolean(True); m.add_string("id"); msgs.append(m)
            m = Message(); m.add_byte(cMSG_CHANNEL_REQUEST); m.add_int(chan)
            m.add_string("pty-req"); m.add_boolean(True); m.add_string("xterm")
            for v in (80, 24, 0, 0): m.add_int(v)
            m.add_string(""); msgs.append(m)
            m = Message(); m.add_byte(cMSG_CHANNEL_DATA); m.add_int(chan); m.add_string(b"x" * 30000)
            msgs.append(m)
            m = Message(); m.add_byte(cMSG_CHANNEL_EXTENDED_DATA); m.add_int(chan); m.add_int(1)
            m.add_string(b"y" * 1000); msgs.append(m)
            m = Message(); m.add_byte(cMSG_CHANNEL_WINDOW_ADJUST); m.add_int(chan); m.add_int(2**32 - 1)
            msgs.append(m)
            for b in (cMSG_CHANNEL_SUCCESS, cMSG_CHANNEL_FAILURE, cMSG_CHANNEL_EOF, cMSG_CHANNEL_CLOSE):
                m = Message(); m.add_byte(b); m.add_int(chan); msgs.append(m)
            m = Message(); m.add_byte(cMSG_CHANNEL_OPEN_SUCCESS)
            for v in (chan, 5, 1 << 20, 32768): m.add_int(v)
            msgs.append(m)
            for m in msgs:
                t._send_user_message(m)
                sent += 1
        time.sleep(0.5)
    except (EOFError, OSError, paramiko.SSHException):
        pass
    return sent, t.is_active()

def connect():
    k = paramiko.Ed25519Key.from_private_key_file(key)
    k.load_certificate(cert)
    t = paramiko.Transport(socket.create_connection(("127.0.0.1", int(port))))
    t.start_client(timeout=10)
    t.auth_publickey(login, k)
    return t, k

outer, k = connect()
sent, alive = attack(outer)
print(f"outer sent={sent} alive={alive}", flush=True)
outer2, k = connect()
ch = outer2.open_channel("direct-tcpip", (dest, 22), ("127.0.0.1", 0), timeout=10)
inner = paramiko.Transport(ch)
inner.start_client(timeout=10)
inner.auth_publickey(login, k)
sent, alive = attack(inner)
print(f"inner sent={sent} alive={alive}", flush=True)
"#;

#[test]
fn requests_on_channels_never_opened_do_not_panic_the_gateway() {
    let c = cluster("strict");
    let dir = c.alice.cluster_dir(&c.ca);
    let pid = c.gate.pid();
    let out = run(Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(HOSTILE)
        .arg(c.gate.port.to_string())
        .arg(dir.join("id_ed25519"))
        .arg(dir.join("id_ed25519-cert.pub"))
        .arg(TEST_LOGIN)
        .arg(format!("web1.{}", c.ca.cluster)));
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("hostile client: {stdout}");
    // Both connections authenticated and sent at least the first hostile message; the
    // gateway may end such a connection (a protocol error) but must survive it.
    assert!(
        out.status.success() && stdout.contains("outer sent=") && stdout.contains("inner sent="),
        "the hostile client did not get to attack: {}",
        text(&out)
    );
    for line in stdout.lines() {
        let sent: usize = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("sent="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(sent >= 1, "{line}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_ok(),
        "the gateway died:\n{}",
        c.gate.log()
    );
    assert!(!c.gate.log().contains("panicked"), "{}", c.gate.log());
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
    let _ = &c.node;
}
