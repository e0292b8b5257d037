//! The audit log against someone who can write the CA's database but not its key directory or
//! the logs kept off its host: a rewritten event with the whole chain recomputed, a truncated
//! tail with its checkpoints deleted, and a node that reports events as a user or out of time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postern_tests::{run, text, Ca, Node, Person, TEST_LOGIN};
use serde_json::{json, Value};

fn policy() -> String {
    format!(
        r#"
[roles.dev]
logins = ["{TEST_LOGIN}"]
nodes = {{ env = "dev" }}

[users.alice]
roles = ["dev"]
"#
    )
}

/// Rows of a query, through the stock sqlite3 shell.
fn query(db: &Path, sql: &str) -> Vec<Value> {
    let out = run(Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg("-json")
        .arg(db)
        .arg(sql));
    assert!(out.status.success(), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    if s.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&s).unwrap()
}

fn exec(db: &Path, sql: &str) {
    let out = run(Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql));
    assert!(out.status.success(), "{sql}: {}", text(&out));
}

/// The chain formula of ca-daemon/src/audit.rs, reimplemented as the attacker would: SHA-256
/// over each field, length-prefixed (u64 big-endian).
fn event_hash(prev: &str, seq: i64, ts: i64, kind: &str, actor: &str, detail: &str) -> String {
    let mut input = Vec::new();
    for part in [prev, &seq.to_string(), &ts.to_string(), kind, actor, detail] {
        input.extend_from_slice(&(part.len() as u64).to_be_bytes());
        input.extend_from_slice(part.as_bytes());
    }
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Recomputes every event's link and hash, and the head, from the rows as they now are.
fn recompute_chain(db: &Path) {
    let rows = query(
        db,
        "SELECT seq, ts, kind, actor, detail FROM audit ORDER BY seq",
    );
    let mut prev = "0".repeat(64);
    let mut sql = String::from("BEGIN;");
    for r in rows {
        let seq = r["seq"].as_i64().unwrap();
        let h = event_hash(
            &prev,
            seq,
            r["ts"].as_i64().unwrap(),
            r["kind"].as_str().unwrap(),
            r["actor"].as_str().unwrap(),
            r["detail"].as_str().unwrap(),
        );
        sql.push_str(&format!(
            "UPDATE audit SET prev_hash = '{prev}', hash = '{h}' WHERE seq = {seq};UPDATE audit_head SET seq = {seq}, hash = '{h}';"
        ));
        prev = h;
    }
    sql.push_str("COMMIT;");
    exec(db, &sql);
}

fn verify(ca: &Ca, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    let out = ca.admin(&args);
    (out.status.success(), text(&out))
}

fn newest_seq(ca: &Ca) -> i64 {
    ca.audit().last().unwrap()["seq"].as_i64().unwrap()
}

#[test]
fn a_rewritten_event_with_the_whole_chain_recomputed_is_named_by_verify() {
    let ca = Ca::start(&policy());
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    alice.login(&ca);
    alice.login(&ca);
    let (ok, out) = verify(&ca, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("every event signed"), "{out}");

    let db = ca.dir.path().join("posternd.db");
    let first_login = query(
        &db,
        "SELECT seq FROM audit WHERE kind = 'login.success' ORDER BY seq LIMIT 1",
    )[0]["seq"]
        .as_i64()
        .unwrap();
    assert!(
        first_login < newest_seq(&ca),
        "events follow the rewritten one"
    );
    exec(
        &db,
        &format!("UPDATE audit SET detail = '{{\"serial\":1}}' WHERE seq = {first_login}"),
    );
    recompute_chain(&db);

    let (ok, out) = verify(&ca, &[]);
    assert!(!ok, "a rewritten and rehashed log must fail verify: {out}");
    let problems: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("  ")).collect();
    assert_eq!(
        problems.first().copied(),
        Some(
            format!(
                "event {first_login} (login.success) was rewritten: its hash is not the one the audit key signed for it"
            )
            .as_str()
        ),
        "{out}"
    );
    // The attack did recompute the chain: only the signatures catch it.
    assert!(
        !out.contains("was edited") && !out.contains("does not link"),
        "{out}"
    );
}

#[test]
fn a_truncated_log_is_found_by_the_checkpoints_emitted_off_the_host() {
    let mut ca = Ca::start(&policy());
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    alice.login(&ca);
    let newest = newest_seq(&ca);
    // The daemon's log stands for the syslog/journald copy kept off the host.
    let tag = format!("postern-audit-checkpoint seq={newest} ");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ca.log().contains(&tag) {
        assert!(
            Instant::now() < deadline,
            "no checkpoint of event {newest} emitted:\n{}",
            ca.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let offhost = ca.dir.path().join("offhost.log");
    std::fs::write(&offhost, ca.log()).unwrap();
    ca.stop();

    // Delete the last two events with their checkpoints, and point the head at what is left.
    let db = ca.dir.path().join("posternd.db");
    let keep = newest - 2;
    let h = query(&db, &format!("SELECT hash FROM audit WHERE seq = {keep}"))[0]["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    exec(
        &db,
        &format!(
            "BEGIN; DELETE FROM audit WHERE seq > {keep}; DELETE FROM audit_checkpoints WHERE seq > {keep}; UPDATE audit_head SET seq = {keep}, hash = '{h}'; COMMIT;"
        ),
    );
    ca.spawn();

    // The limit: on its own, the database is a valid shorter log.
    let (ok, out) = verify(&ca, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("found only with --checkpoints"), "{out}");

    let (ok, out) = verify(&ca, &["--checkpoints", offhost.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "the log ends at event {keep} but a checkpoint emitted off the host names event {newest}: events {} to {newest} were deleted from the end",
            keep + 1
        )),
        "{out}"
    );
}

#[test]
fn a_node_reports_events_as_itself_with_clamped_times_and_logs_the_newest_checkpoint() {
    let ca = Ca::start(&policy());
    let token = ca.token("node", "web1", "env=dev");
    let (mut node, out) = Node::join(&ca, "web1", &token, &[]);
    assert!(out.status.success(), "join: {}", text(&out));
    node.start_sshd();

    // The node's own mTLS identity, from its state directory, as its PAM helper would use it.
    let state = node.state();
    let far_future = postern_tests::now() + 10 * 365 * 24 * 3600;
    let body = json!({ "events": [
        { "kind": "session.open", "ts": far_future, "login": TEST_LOGIN, "user": "alice" },
        { "kind": "session.close", "ts": 1, "login": TEST_LOGIN, "user": "alice" },
    ] });
    // curl's OpenSSL 3.0 reads no PKCS#8 v2 (the shim's form, with the public key): the same
    // seed as PKCS#8 v1 DER (RFC 8410).
    let pem = std::fs::read_to_string(state.join("identity.key")).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b64.as_bytes())
        .unwrap();
    let der = child.wait_with_output().unwrap().stdout;
    let at = der
        .windows(4)
        .position(|w| w == [0x04, 0x22, 0x04, 0x20])
        .unwrap();
    let mut v1 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    v1.extend_from_slice(&der[at + 4..at + 36]);
    let key = ca.dir.path().join("web1-identity.der");
    std::fs::write(&key, v1).unwrap();
    let body_file = ca.dir.path().join("events.json");
    std::fs::write(&body_file, body.to_string()).unwrap();
    let before = postern_tests::now();
    let out = run(Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
        ])
        .arg("--cacert")
        .arg(ca.dir.path().join("ca/service_ca.crt"))
        .arg("--cert")
        .arg(state.join("identity.crt"))
        .arg("--key")
        .arg(&key)
        .args(["--key-type", "DER"])
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()))
        .arg(format!("{}/v1/node/events", ca.url)));
    let after = postern_tests::now();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim_end()
            .ends_with("\n200"),
        "{}",
        text(&out)
    );

    let events = ca.audit();
    let open = events.iter().find(|e| e["kind"] == "session.open").unwrap();
    let close = events
        .iter()
        .find(|e| e["kind"] == "session.close")
        .unwrap();
    for e in [open, close] {
        assert_eq!(e["actor"], "node:web1", "{e}");
        assert_eq!(e["detail"]["user"], "alice", "{e}");
    }
    assert!(
        open["seq"].as_i64() < close["seq"].as_i64(),
        "in arrival order"
    );
    assert_eq!(
        open["detail"]["ts"], far_future,
        "the reported time is kept"
    );
    let ts = open["ts"].as_u64().unwrap();
    assert!(
        before <= ts && ts <= after,
        "clamped to the arrival: {open}"
    );
    let ts = close["ts"].as_u64().unwrap();
    assert!(
        ts >= before - 24 * 3600 && ts <= after,
        "clamped to a day back: {close}"
    );

    // The shim logs the bundle's checkpoint (to syslog; to stderr here, where none listens),
    // and that copy is one `verify --checkpoints` accepts.
    let out = node.shim("sync");
    let logged = text(&out);
    assert!(logged.contains("postern-audit-checkpoint seq="), "{logged}");
    let copy = ca.dir.path().join("web1-syslog.log");
    std::fs::write(&copy, &logged).unwrap();
    let (ok, out) = verify(&ca, &["--checkpoints", copy.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("consistent with the checkpoints emitted off the host"),
        "{out}"
    );
}

#[test]
fn an_installation_older_than_checkpoints_gets_its_key_and_its_events_signed_at_first_start() {
    let mut ca = Ca::start(&policy());
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    ca.stop();
    // What a CA made before checkpoints has: no audit key, no checkpoint table.
    std::fs::remove_file(ca.dir.path().join("ca/audit.key")).unwrap();
    std::fs::remove_file(ca.dir.path().join("ca/audit.pub")).unwrap();
    let db = ca.dir.path().join("posternd.db");
    exec(&db, "DROP TABLE audit_checkpoints;");
    let events = query(&db, "SELECT count(*) AS n FROM audit")[0]["n"]
        .as_i64()
        .unwrap();
    ca.spawn();
    assert!(
        ca.log().contains(&format!(
            "created the audit checkpoint key; signed the {events} events already in the audit log"
        )),
        "{}",
        ca.log()
    );
    let md = std::fs::metadata(ca.dir.path().join("ca/audit.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
        0o600
    );
    alice.login(&ca);
    let (ok, out) = verify(&ca, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("every event signed"), "{out}");
}
