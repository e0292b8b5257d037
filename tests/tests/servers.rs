//! Stories that run against both server systems Postern supports: Debian 12's sshd (OpenSSH
//! 9.2) and Debian 13's (OpenSSH 10.0, in a chroot). OpenSSH 9.8 changed two things a joined
//! server depends on: per-source penalties (every session arrives from the gateway's address)
//! and when the host certificate is read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use postern_tests::{run, text, Distro, GateCluster, Node, TEST_LOGIN};

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

/// Runs a story once per server system, each as its own test.
macro_rules! on_both {
    ($story:ident) => {
        mod $story {
            #[test]
            fn debian12() {
                super::$story(postern_tests::Distro::Debian12);
            }
            #[test]
            fn debian13() {
                super::$story(postern_tests::Distro::Debian13);
            }
        }
    };
}

/// The host certificates `node`'s sshd serves now, as ssh-keyscan (from this machine) sees them.
fn served(node: &Node) -> String {
    let out = run(Command::new("ssh-keyscan").args([
        "-c",
        "-t",
        "ed25519",
        "-p",
        &node.port.to_string(),
        "127.0.0.1",
    ]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect::<Vec<_>>()
        .join(" ")
}

fn cert_blob(node: &Node) -> String {
    std::fs::read_to_string(node.state().join("ssh_host_ed25519_key-cert.pub"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

fn join_login_lock_and_krl(distro: Distro) {
    let c = GateCluster::start_on(distro, &policy());
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["echo", "hello-from-web1"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello-from-web1"),
        "{}\n{}\n{}",
        text(&out),
        c.gate.log(),
        c.node.log()
    );
    // A lock: the gateway refuses at once, and after a sync the server's own sshd refuses the
    // user's node-access certificates by the KRL.
    let lock = c.ca.admin_json(&[
        "lock",
        "add",
        "--user",
        "alice",
        "--reason",
        "stolen laptop",
    ]);
    let out = c.node.shim("sync");
    assert!(out.status.success(), "{}", text(&out));
    let out = c.alice.ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["true"]);
    assert!(!out.status.success(), "{}", text(&out));
    // By the gateway from its inventory (the user certificate refused), or, before its next
    // inventory, by the CA's authorization.
    let refused = "user certificate refused: locked (user alice): stolen laptop";
    let by_ca = String::from_utf8_lossy(&out.stderr).contains("user alice is locked");
    let log = c.gate.log_when(|l| by_ca || l.contains(refused));
    assert!(
        by_ca || log.contains(refused),
        "{}\ngate:\n{log}",
        text(&out)
    );
    let key = c
        .node
        .signed_key(&c.ca, "node-access", "bob", &[TEST_LOGIN]);
    assert!(
        c.node.ssh(&key, TEST_LOGIN, "true").status.success(),
        "{}",
        c.node.log()
    );
    let id = lock["id"].to_string();
    assert!(c.ca.admin(&["lock", "rm", &id]).status.success());
    let locked =
        c.ca.admin_json(&["lock", "add", "--user", "bob", "--reason", "left"]);
    assert!(c.node.shim("sync").status.success());
    let out = c.node.ssh(&key, TEST_LOGIN, "true");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        c.node.log().contains("revoked"),
        "sshd did not refuse by the KRL:\n{}",
        c.node.log()
    );
    let id = locked["id"].to_string();
    assert!(c.ca.admin(&["lock", "rm", &id]).status.success());
    assert!(c.node.shim("sync").status.success());
    assert!(
        c.node.ssh(&key, TEST_LOGIN, "true").status.success(),
        "{}",
        c.node.log()
    );
}
on_both!(join_login_lock_and_krl);

fn regression_renewed_host_certificate_was_not_served_until_a_manual_reload(distro: Distro) {
    // OpenSSH 10.0 kept serving the old certificate after sync renewed it, until SIGHUP.
    let c = GateCluster::start_on(distro, &policy());
    let before = cert_blob(&c.node);
    assert_eq!(served(&c.node), before);
    let out = c.node.shim_args(&["sync", "--renew"]);
    assert!(out.status.success(), "{}\n{}", text(&out), c.node.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("host certificate renewed"), "{stdout}");
    assert!(
        stdout.contains("serves the renewed certificate"),
        "{stdout}"
    );
    let after = cert_blob(&c.node);
    assert_ne!(before, after);
    assert_eq!(served(&c.node), after, "sshd serves the old certificate");
    // And the gateway's host check accepts it.
    let out = c.alice.ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["true"]);
    assert!(out.status.success(), "{}\n{}", text(&out), c.gate.log());
}
on_both!(regression_renewed_host_certificate_was_not_served_until_a_manual_reload);

fn dropin(node: &Node) -> String {
    std::fs::read_to_string(node.dir.path().join("sshd_config.d/50-postern.conf")).unwrap()
}

fn regression_aborted_dials_locked_every_user_out(distro: Distro) {
    // After about 25 connections from the gateway's address that never authenticated,
    // OpenSSH 10.0's PerSourcePenalties refused the gateway's next dial: everyone was locked
    // out of the server. join exempts the gateways' addresses where sshd knows the keyword.
    let c = GateCluster::start_on(distro, &policy());
    let d = dropin(&c.node);
    if distro == Distro::Debian13 {
        assert!(
            d.contains("\nPerSourcePenaltyExemptList 127.0.0.1\n"),
            "{d}"
        );
    } else {
        assert!(
            !d.contains("PerSourcePenalty"),
            "9.2 does not know the keyword: {d}"
        );
    }
    for _ in 0..30 {
        // Read the banner, send nothing, hang up: a probe or a user's Ctrl-C.
        let mut s = TcpStream::connect(("127.0.0.1", c.node.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = std::io::Read::read(&mut s, &mut [0u8; 64]);
        let _ = s.write_all(b"");
    }
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["echo", "still-in"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("still-in"),
        "{}\n{}\n{}",
        text(&out),
        c.gate.log(),
        c.node.log()
    );
    // Why it still works: sshd never penalised the exempt address.
    assert!(
        !c.node
            .log()
            .contains("srclimit_penalise: ipv4: new 127.0.0.1/32"),
        "{}",
        c.node.log()
    );
}
on_both!(regression_aborted_dials_locked_every_user_out);

fn regression_failed_server_side_logins_locked_every_user_out(distro: Distro) {
    // Five failed logins at the server (from the gateway's address) earned it a penalty on
    // OpenSSH 10.0, and then another user's session through the gateway was refused.
    let c = GateCluster::start_on(distro, &policy());
    let key = c.node.dir.path().join("stranger");
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    assert!(out.status.success(), "{}", text(&out));
    for _ in 0..5 {
        let out = c.node.ssh(&key, TEST_LOGIN, "true");
        assert!(!out.status.success(), "{}", text(&out));
    }
    assert!(
        c.node
            .log()
            .matches(&format!("Failed publickey for {TEST_LOGIN}"))
            .count()
            >= 5,
        "the failures did not reach sshd:\n{}",
        c.node.log()
    );
    let mut bob = postern_tests::Person::new("bob");
    bob.enroll(&c.ca);
    bob.login(&c.ca);
    let out = bob.ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["echo", "bob-is-in"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bob-is-in"),
        "{}\n{}\n{}",
        text(&out),
        c.gate.log(),
        c.node.log()
    );
}
on_both!(regression_failed_server_side_logins_locked_every_user_out);
