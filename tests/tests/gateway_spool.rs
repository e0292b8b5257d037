//! User stories of the gateway's audit events: durable in its state directory before the
//! operation goes through (strict recording), delivered after a `kill -9` and a restart, sent
//! again without being audited twice, and a full spool ending strict sessions with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postern_tests::{now, plain_log, text, Ca, Gate, GateCluster, TEST_LOGIN};
use serde_json::{json, Value};

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

[users.alice]
roles = ["dev"]
"#
    )
}

/// The gateway events of kind `kind` in the CA's audit log: what the gateway sent inside the
/// session (`extra`), or the whole detail of an event without a session.
fn events(ca: &Ca, kind: &str) -> Vec<Value> {
    ca.audit()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["detail"]["detail"].clone())
        .collect()
}

/// Waits (polling the CA's audit log) until `ok` holds.
fn wait_for(c: &GateCluster, what: &str, ok: impl Fn(&Ca) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok(&c.ca) {
        assert!(
            Instant::now() < deadline,
            "{what}: not in the audit log\naudit: {:#?}\ngate:\n{}",
            c.ca.audit(),
            c.gate.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Security review (issue 10): the gateway kept its audit events (the only trace of sftp,
/// scp and port forwards) in memory, so a crash lost them all. Now they are written to its
/// journal before the operation goes through: an sftp upload made while the CA cannot take
/// events, the gateway killed with SIGKILL the moment sftp exits, reaches the CA after both
/// restart, once.
#[test]
fn sftp_upload_events_reach_the_ca_after_kill_9_of_the_gateway() {
    let mut c = GateCluster::start(&policy("strict"));
    let local = tempfile::tempdir().unwrap();
    let up = local.path().join("up.bin");
    std::fs::write(&up, vec![7u8; 100_000]).unwrap();
    let remote = tempfile::Builder::new()
        .prefix("postern-spool-remote")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(remote.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let target = format!("{}/kill9.bin", remote.path().display());
    let home = c.alice.home.path();
    let mut sftp = Command::new("sftp")
        .env("HOME", home)
        .arg("-F")
        .arg(home.join(".ssh/config"))
        .args(["-q", "-o", "BatchMode=yes", "-b", "-"])
        .arg(format!("{TEST_LOGIN}@web1.{}", c.ca.cluster))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The session is authorized (that needs the CA) and the subsystem started...
    wait_for(&c, "gateway.subsystem", |ca| {
        events(ca, "gateway.subsystem")
            .iter()
            .any(|d| d["extra"]["name"] == "sftp")
    });
    // ... then the CA goes away, so the upload's events cannot be delivered before the kill.
    c.ca.stop();
    {
        let mut stdin = sftp.stdin.take().unwrap();
        writeln!(stdin, "put {} {target}", up.display()).unwrap();
        writeln!(stdin, "bye").unwrap();
    }
    let out = sftp.wait_with_output().unwrap();
    c.gate.kill();
    assert!(
        out.status.success(),
        "sftp: {}\ngate:\n{}",
        text(&out),
        c.gate.log()
    );
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 100_000);
    // What the gateway acknowledged is on its disk.
    let journal: String = std::fs::read_dir(c.gate.events_dir())
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(
        journal.contains("\"sftp.close\"") && journal.contains(&target),
        "journal: {journal}\ngate:\n{}",
        c.gate.log()
    );
    c.ca.spawn();
    c.gate.spawn();
    let closed = |ca: &Ca| {
        events(ca, "sftp.close")
            .iter()
            .any(|d| d["extra"]["path"] == target.as_str() && d["extra"]["written"] == 100_000)
    };
    wait_for(&c, "the upload's sftp.close", closed);
    let opens: Vec<Value> = events(&c.ca, "sftp.open")
        .into_iter()
        .filter(|d| d["extra"]["path"] == target.as_str())
        .collect();
    assert_eq!(opens.len(), 1, "{opens:#?}");
    assert!(
        c.gate.log().contains(
            "audit events the gateway had not delivered before it stopped are sent first"
        ),
        "{}",
        c.gate.log()
    );
    // Once the CA has them all, the journal empties.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<_> = std::fs::read_dir(c.gate.events_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left in the journal: {left:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        events(&c.ca, "sftp.close")
            .iter()
            .filter(|d| d["extra"]["path"] == target.as_str())
            .count(),
        1
    );
}

/// A gateway that crashed after the CA took a batch and before it removed the batch from its
/// journal sends it again: the CA audits each event id of a gateway once. Events without an
/// id (servers, older gateways) are audited as sent.
#[test]
fn events_a_gateway_sends_again_are_audited_once() {
    let ca = Ca::start(&policy("strict"));
    let gate = Gate::joined(&ca, Gate::reserve_port());
    let ev = |command: &str, id: Option<&str>| {
        let mut detail = json!({ "node": "web1", "extra": { "command": command } });
        if let Some(id) = id {
            detail["event_id"] = json!(id);
        }
        json!({ "kind": "gateway.exec", "ts": now(), "login": TEST_LOGIN, "user": "alice", "session": "s-1", "detail": detail })
    };
    let body = serde_json::to_vec(&json!({ "events": [
        ev("marker-with-id", Some("0123456789abcdef-1")),
        ev("marker-without-id", None),
    ] }))
    .unwrap();
    for _ in 0..2 {
        let (status, answer) = gate.api(
            &ca,
            "POST",
            "/v1/node/events",
            Some((&body, "application/json")),
        );
        assert_eq!(status, 200, "{answer}\n{}", ca.log());
    }
    let count = |command: &str| {
        ca.audit()
            .iter()
            .filter(|e| {
                e["kind"] == "gateway.exec" && e["detail"]["detail"]["extra"]["command"] == command
            })
            .count()
    };
    assert_eq!(count("marker-with-id"), 1, "{:#?}", ca.audit());
    assert_eq!(count("marker-without-id"), 2, "{:#?}", ca.audit());
}

/// At `[audit] spool_max_bytes` the gateway cannot record a session's operations: a strict
/// session ends with a message before the command runs, and the drop is logged and counted.
#[test]
fn a_full_event_spool_ends_a_strict_session_before_its_command_runs() {
    let mut c = GateCluster::start(&policy("strict"));
    c.gate.kill();
    c.gate.spawn_with_config("[audit]\nspool_max_bytes = 100\n");
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["echo", "MARKER-$((6*7))"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr.contains(
            "postern: cannot write the audit log (the audit event spool is full ([audit] \
             spool_max_bytes = 100)); the session ends (strict recording)"
        ),
        "{}\ngate:\n{}",
        text(&out),
        c.gate.log()
    );
    assert!(!stdout.contains("MARKER-42"), "the command ran: {stdout}");
    let dropped = |log: &str| {
        let log = plain_log(log);
        log.contains("audit event dropped: the audit event spool is full")
            && log.contains("dropped_total=1")
    };
    let log = c.gate.log_when(dropped);
    assert!(dropped(&log), "{}", plain_log(&log));
}

/// In best-effort recording the same session goes on; the dropped event is logged and counted.
#[test]
fn a_full_event_spool_keeps_a_best_effort_session_and_logs_the_drop() {
    let mut c = GateCluster::start(&policy("best-effort"));
    c.gate.kill();
    c.gate.spawn_with_config("[audit]\nspool_max_bytes = 100\n");
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["echo", "MARKER-$((6*7))"]);
    assert!(
        out.status.success(),
        "{}\ngate:\n{}",
        text(&out),
        c.gate.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("MARKER-42"));
    let dropped = |log: &str| {
        let log = plain_log(log);
        log.contains("audit event dropped: the audit event spool is full")
            && log.contains("kind=gateway.exec")
            && log.contains("dropped_total=1")
    };
    let log = c.gate.log_when(dropped);
    assert!(dropped(&log), "{}", plain_log(&log));
}

/// A port forward is an operation too: in strict mode it opens only once its event is on
/// disk, so a full spool refuses it with the reason.
#[test]
fn a_full_event_spool_refuses_a_strict_port_forward() {
    let mut c = GateCluster::start(&policy("strict").replace(
        r#"permit = ["pty"]"#,
        r#"permit = ["pty", "port-forwarding"]"#,
    ));
    c.gate.kill();
    c.gate.spawn_with_config("[audit]\nspool_max_bytes = 100\n");
    let home = c.alice.home.path();
    let out = postern_tests::run(
        Command::new("ssh")
            .env("HOME", home)
            .env_remove("SSH_AUTH_SOCK")
            .arg("-F")
            .arg(home.join(".ssh/config"))
            .args(["-o", "BatchMode=yes", "-l", TEST_LOGIN, "-W"])
            .arg(format!("127.0.0.1:{}", c.node.port))
            .arg(format!("web1.{}", c.ca.cluster))
            .stdin(Stdio::null()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr.contains(
            "cannot write the audit log (the audit event spool is full ([audit] \
             spool_max_bytes = 100)); port forward refused (strict recording)"
        ),
        "{}\ngate:\n{}",
        text(&out),
        c.gate.log()
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("SSH-2.0-"),
        "the forward reached the server"
    );
    let dropped = |log: &str| {
        let log = plain_log(log);
        log.contains("kind=gateway.port_forward ") && log.contains("dropped_total=1")
    };
    let log = c.gate.log_when(dropped);
    assert!(dropped(&log), "{}", plain_log(&log));
}
