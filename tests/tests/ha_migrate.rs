//! `posternd storage migrate`: a SQLite installation in use (users, certificates, a lock, a
//! recorded session, its audit chain) moved to a real PostgreSQL, verified, and serving from
//! there; and the refusals that keep a migration from losing anything.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use postern_tests::{run, text, GateCluster, Postgres, TEST_LOGIN};

fn policy() -> String {
    format!(
        r#"
[defaults]
user_cert_ttl = "1h"

[roles.dev]
logins = ["{TEST_LOGIN}"]
nodes = {{ env = "dev" }}
permit = ["pty"]

[users.alice]
roles = ["dev"]
[users.bob]
roles = ["dev"]
"#
    )
}

#[test]
fn a_sqlite_installation_moves_to_postgres_with_its_chain_verified_and_serves_from_there() {
    let pg = Postgres::start();
    let mut c = GateCluster::start(&policy());
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["echo before-the-move"]);
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(60);
    let recording = loop {
        let list = c.ca.admin_json(&["recordings", "ls"]);
        if let Some(r) = list.as_array().unwrap().first() {
            break r["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no recording\n{}", c.gate.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let out =
        c.ca.admin(&["lock", "add", "--user", "bob", "--reason", "on leave"]);
    assert!(out.status.success(), "{}", text(&out));
    let (users, events) = (c.ca.admin_json(&["users", "ls"]), c.ca.audit().len());

    // Refused while the daemon serves: what it answered after the copy would be lost.
    let cfg = c.ca.config();
    let migrate = |extra: &[&str]| {
        run(std::process::Command::new(postern_tests::bin("posternd"))
            .args(["storage", "migrate", "--to", &pg.url(), "--config"])
            .arg(&cfg)
            .args(extra))
    };
    let out = migrate(&[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("stop it first"), "{}", text(&out));

    c.ca.terminate();
    let rec = tempfile::Builder::new()
        .prefix("postern-rec")
        .tempdir()
        .unwrap();
    let out = migrate(&["--recordings-dir", rec.path().to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "migrate: {}", text(&out));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["recordings"], 1, "{m}");
    assert!(m["audit_events"].as_i64().unwrap() >= events as i64, "{m}");
    assert!(rec.path().join(format!("{recording}.cast")).exists());
    // A second migration into the same (now full) database is refused.
    std::fs::copy(
        cfg.with_extension("toml.before-migrate"),
        cfg.with_extension("toml.again"),
    )
    .unwrap();
    let out = run(std::process::Command::new(postern_tests::bin("posternd"))
        .args(["storage", "migrate", "--to", &pg.url(), "--config"])
        .arg(cfg.with_extension("toml.again")));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("migrate into an empty database"),
        "{}",
        text(&out)
    );

    // Serving from PostgreSQL: the same users, the lock, the chain, the recording.
    c.ca.spawn();
    assert!(
        c.ca.log().contains("policy in force from the database"),
        "{}",
        c.ca.log()
    );
    let after = c.ca.admin_json(&["users", "ls"]);
    assert_eq!(
        after.as_array().unwrap().len(),
        users.as_array().unwrap().len()
    );
    let locks = c.ca.admin_json(&["lock", "ls"]);
    assert!(locks.to_string().contains("on leave"), "{locks}");
    let out = c.ca.admin(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        pg.query("SELECT count(*) FROM audit WHERE kind = 'storage.migrated'"),
        "1"
    );
    // alice's certificate from before the move renews, and her recording plays.
    let out = run(c.alice.postern().arg("renew"));
    assert!(out.status.success(), "renew: {}", text(&out));
    let out = run(c
        .alice
        .postern()
        .args(["play", &recording, "--speed", "1000"]));
    assert!(out.status.success(), "play: {}", text(&out));
    assert!(text(&out).contains("before-the-move"), "{}", text(&out));
    // And a new session is recorded into the new place.
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["echo after-the-move"]);
    assert!(out.status.success(), "{}", text(&out));
}
