//! Clients with several CA URLs (`--ca` repeated) fail over when one instance is gone: the
//! CLI (login, and renew from what login remembered), the gateway (authorizing sessions) and
//! the shim (sync). One posternd stands for two instances, reached through two forwarders on
//! loopback; stopping a forwarder is its instance dying (its port refuses connections).
#![allow(clippy::unwrap_used)]

use postern_tests::{text, Ca, Forwarder, Gate, Node, Person, TEST_LOGIN};

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

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A CA, two forwarders to it ("instance A" and "instance B"), and alice enrolled (directly).
fn two_instances() -> (Ca, Forwarder, Forwarder, Person) {
    let ca = Ca::start(&policy());
    let a = Forwarder::to_url(&ca.url);
    let b = Forwarder::to_url(&ca.url);
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    (ca, a, b, alice)
}

fn login_via(alice: &mut Person, ca: &Ca, urls: &[&str]) -> std::process::Output {
    let code = alice.fresh_code();
    let pw = alice.password.clone();
    alice.login_via(ca, urls, &pw, &code, &[])
}

/// The CA URLs a state file of the CLI remembers.
fn remembered(alice: &Person, ca: &Ca, file: &str) -> serde_json::Value {
    let path = match file {
        "current.json" => alice.home.path().join(".ssh/postern/current.json"),
        _ => alice.cluster_dir(ca).join(file),
    };
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["ca"].clone()
}

#[test]
fn login_with_a_dead_first_url_signs_in_through_the_second_and_says_nothing_of_it() {
    let (ca, mut a, b, mut alice) = two_instances();
    a.stop();
    let (dead, live) = (a.url(), b.url());
    let out = login_via(&mut alice, &ca, &[&dead, &live]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).trim().is_empty(),
        "a failover the user need not act on was shown: {}",
        text(&out)
    );
    assert!(b.accepted() >= 1, "the login did not go through instance B");
    // Both are remembered, in the order given.
    for file in ["current.json", "profile.json"] {
        assert_eq!(
            remembered(&alice, &ca, file),
            serde_json::json!([dead, live]),
            "{file}"
        );
    }
}

#[test]
fn renew_fails_over_to_the_second_remembered_url_when_the_first_is_dead() {
    let (ca, mut a, b, mut alice) = two_instances();
    let out = login_via(&mut alice, &ca, &[&a.url(), &b.url()]);
    assert!(out.status.success(), "{}", text(&out));
    // The first URL answered while it could: B was not needed.
    assert!(a.accepted() >= 1);
    assert_eq!(b.accepted(), 0, "login went to B while A was up");
    assert_eq!(
        remembered(&alice, &ca, "profile.json"),
        serde_json::json!([a.url(), b.url()])
    );
    let before = std::fs::read(alice.cluster_dir(&ca).join("id_ed25519-cert.pub")).unwrap();

    a.stop();
    let out = alice.postern().args(["renew", "--json"]).output().unwrap();
    assert!(out.status.success(), "renew: {}", text(&out));
    assert!(b.accepted() >= 1, "the renewal did not go through B");
    let after = std::fs::read(alice.cluster_dir(&ca).join("id_ed25519-cert.pub")).unwrap();
    assert_ne!(before, after, "renew did not install a new certificate");
    // The renewal keeps both URLs for the next time.
    assert_eq!(
        remembered(&alice, &ca, "profile.json"),
        serde_json::json!([a.url(), b.url()])
    );
    // Exactly one renewal: the request was not also answered by another try.
    let renewals = ca
        .audit()
        .iter()
        .filter(|e| e["kind"] == "cert.issued" && e["detail"]["via"] == "renew")
        .count();
    assert_eq!(renewals, 1);
}

#[test]
fn with_every_url_dead_the_error_names_each_and_why() {
    let (ca, mut a, mut b, mut alice) = two_instances();
    let out = login_via(&mut alice, &ca, &[&a.url(), &b.url()]);
    assert!(out.status.success(), "{}", text(&out));
    a.stop();
    b.stop();
    let out = alice.postern().arg("renew").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("no CA address answered"), "{err}");
    for url in [a.url(), b.url()] {
        assert!(
            err.contains(&format!("could not reach {url}/v1/renew")),
            "{url} is not named: {err}"
        );
    }
    assert_eq!(
        err.matches("Connection refused").count(),
        2,
        "each URL's reason: {err}"
    );
    // One error, not one per try.
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_wrong_password_is_an_answer_and_is_not_sent_to_the_second_url() {
    let (ca, a, b, mut alice) = two_instances();
    let code = alice.fresh_code();
    let out = alice.login_via(&ca, &[&a.url(), &b.url()], "not the password", &code, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("invalid credentials"),
        "{}",
        text(&out)
    );
    assert!(a.accepted() >= 1);
    assert_eq!(b.accepted(), 0, "the refused login was tried on B");
    // The CA saw one failed login, not two.
    let mut ca = ca;
    ca.terminate();
    ca.spawn();
    let failures: u64 = ca
        .audit()
        .iter()
        .filter(|e| e["kind"] == "auth.failures" && e["detail"]["kind"] == "login")
        .map(|e| e["detail"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(failures, 1);
}

#[test]
fn the_gateway_keeps_authorizing_sessions_when_its_first_ca_url_is_down() {
    let mut ca = Ca::init(&policy());
    let gport = Gate::reserve_port();
    ca.set_gateway(&format!("127.0.0.1:{gport}"));
    ca.spawn();
    let mut a = Forwarder::to_url(&ca.url);
    let b = Forwarder::to_url(&ca.url);
    let mut gate = Gate::joined_via(&ca, &[&a.url(), &b.url()], gport);
    let joined: serde_json::Value =
        serde_json::from_slice(&std::fs::read(gate.dir.path().join("joined.json")).unwrap())
            .unwrap();
    assert_eq!(joined["ca"], serde_json::json!([a.url(), b.url()]));
    let token = ca.token("node", "web1", "env=dev");
    let (mut node, out) = Node::join(&ca, "web1", &token, &[]);
    assert!(out.status.success(), "{}", text(&out));
    node.start_sshd();
    gate.spawn();
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    alice.login(&ca);

    let out = alice.ssh_via_gate(&ca, "web1", TEST_LOGIN, &["echo first"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "first\n",
        "{}\ngate:\n{}",
        text(&out),
        gate.log()
    );
    assert!(a.accepted() >= 1, "the gateway did not use its first URL");

    a.stop();
    let before = b.accepted();
    let out = alice.ssh_via_gate(&ca, "web1", TEST_LOGIN, &["echo second"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "second\n",
        "{}\ngate:\n{}",
        text(&out),
        gate.log()
    );
    assert!(
        b.accepted() > before,
        "the session was not authorized through B"
    );
    // The CA authorized each session once.
    let authorized = ca
        .audit()
        .iter()
        .filter(|e| e["kind"] == "gateway.authorized")
        .count();
    assert_eq!(authorized, 2);
}

#[test]
fn the_shim_keeps_syncing_when_its_first_ca_url_is_down() {
    let ca = Ca::start(&policy());
    let mut a = Forwarder::to_url(&ca.url);
    let b = Forwarder::to_url(&ca.url);
    let token = ca.token("node", "web1", "env=dev");
    let node = Node::prepare(postern_tests::Distro::Debian12, "web1", |c| c);
    let out = node.run_join_via(&ca, &[&a.url(), &b.url()], &token, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let joined: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.state().join("joined.json")).unwrap()).unwrap();
    assert_eq!(joined["ca"], serde_json::json!([a.url(), b.url()]));
    assert_eq!(b.accepted(), 0, "join went to B while A was up");

    a.stop();
    let out = node.shim("sync");
    assert!(out.status.success(), "sync: {}", text(&out));
    assert!(b.accepted() >= 1, "sync did not go through B");
    let out = node.shim_args(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["ca"], a.url());
    assert_eq!(status["ca_urls"], serde_json::json!([a.url(), b.url()]));
}
