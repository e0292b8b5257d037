//! Stories of what ends a live session at the gateway besides a lock: `users rm`,
//! `users reset`, `nodes rm`, and the end of the certificate the user logged in with. Each
//! cut must reach the user with its reason and be audited as `gateway.session_cut`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postern_tests::{text, Ca, GateCluster, TEST_LOGIN};
use serde_json::Value;

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
"#
    )
}

/// A session through the gateway that would run for ten minutes, started and seen running.
struct Held {
    child: Child,
}

impl Held {
    fn open(c: &GateCluster) -> Held {
        let mut child = Command::new("ssh")
            .env("HOME", c.alice.home.path())
            .env_remove("SSH_AUTH_SOCK")
            .arg("-F")
            .arg(c.alice.home.path().join(".ssh/config"))
            .args(["-o", "BatchMode=yes", "-l", TEST_LOGIN])
            .arg(format!("web1.{}", c.ca.cluster))
            .arg("echo started; sleep 600")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        let _ = BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut first);
        if first != "started\n" {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child.stderr.as_mut().unwrap().read_to_string(&mut err);
            panic!(
                "the session did not start: {first:?} {err}\ngate:\n{}",
                c.gate.log()
            );
        }
        Held { child }
    }

    /// Waits (with a deadline far beyond the gateway's two-second inventory poll) for the
    /// session to end, and returns what ssh printed on standard error.
    fn wait_ended(mut self, c: &GateCluster, deadline: Duration, what: &str) -> String {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the session outlived {what}\ngate:\n{}", c.gate.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(!status.success(), "a cut session exits with a failure");
        let mut err = String::new();
        self.child
            .stderr
            .as_mut()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        err
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for the gateway's `gateway.session_cut` event and returns its reason.
fn cut_reason(ca: &Ca) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cuts: Vec<Value> = ca
            .audit()
            .into_iter()
            .filter(|e| e["kind"] == "gateway.session_cut")
            .collect();
        if let Some(e) = cuts.first() {
            assert_eq!(cuts.len(), 1, "one session, one cut: {cuts:?}");
            assert_eq!(e["actor"], "gateway:gate1", "{e}");
            assert_eq!(e["detail"]["user"], "alice", "{e}");
            assert!(e["detail"]["session"].is_string(), "{e}");
            return e["detail"]["detail"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no gateway.session_cut event in the audit log"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn regression_users_rm_left_live_sessions_running() {
    let c = GateCluster::start(&policy());
    let held = Held::open(&c);
    let out = c.ca.admin(&["users", "rm", "alice"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = held.wait_ended(&c, Duration::from_secs(60), "users rm");
    assert!(err.contains("user alice was removed"), "{err}");
    assert_eq!(cut_reason(&c.ca), "user removed");
}

#[test]
fn regression_users_reset_left_live_sessions_running() {
    let c = GateCluster::start(&policy());
    let held = Held::open(&c);
    let out = c.ca.admin(&["users", "reset", "alice"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = held.wait_ended(&c, Duration::from_secs(60), "users reset");
    assert!(err.contains("user alice was reset"), "{err}");
    assert_eq!(cut_reason(&c.ca), "user reset");
}

#[test]
fn regression_nodes_rm_left_live_sessions_running() {
    let c = GateCluster::start(&policy());
    let held = Held::open(&c);
    let out = c.ca.admin(&["nodes", "rm", "web1"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = held.wait_ended(&c, Duration::from_secs(60), "nodes rm");
    assert!(err.contains("server web1 was removed"), "{err}");
    assert_eq!(cut_reason(&c.ca), "server removed");
}

#[test]
fn regression_an_expired_certificate_kept_its_session() {
    let mut c = GateCluster::start(&policy());
    // A certificate that ends soon after the session starts (the default is on: no gate.toml).
    let code = c.alice.fresh_code();
    let pw = c.alice.password.clone();
    let out = c.alice.login_with(&c.ca, &pw, &code, &["--ttl", "30s"]);
    assert!(out.status.success(), "login --ttl 30s: {}", text(&out));
    let held = Held::open(&c);
    let err = held.wait_ended(&c, Duration::from_secs(120), "its certificate");
    assert!(err.contains("your certificate expired"), "{err}");
    assert_eq!(cut_reason(&c.ca), "certificate expired");
}

#[test]
fn regression_a_replaced_server_kept_its_live_sessions() {
    // After a --replace join, new sessions were refused (the pinned host key changed) but a
    // live one stayed on the replaced, possibly stolen, machine.
    let c = GateCluster::start(&policy());
    let held = Held::open(&c);
    let token = c.ca.token_with("node", "web1", "env=dev", &["--replace"]);
    let mut new = postern_tests::Node::prepare(postern_tests::Distro::Debian12, "web1", |t| t);
    new.port = c.node.port;
    let out = new.run_join(&c.ca, &token, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let err = held.wait_ended(&c, Duration::from_secs(60), "a --replace join");
    assert!(
        err.contains("server web1 was replaced by another machine"),
        "{err}"
    );
    assert_eq!(cut_reason(&c.ca), "server replaced");
}
