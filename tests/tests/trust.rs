//! What the gateway and the CA trust: a server is the machine the CA joined under that name
//! (its pinned host key, its own names only, a valid address), locks fail closed everywhere,
//! user certificates with restrictions the gateway cannot enforce are refused, and a refusal
//! by the server's sshd reaches the user as a reason, not as "Permission denied".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

use postern_tests::{run, text, Ca, GateCluster, Node, TEST_LOGIN};

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

/// Waits (generously) until the gateway's log contains `what`.
fn gate_log_has(c: &GateCluster, what: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if c.gate.log().contains(what) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn principals_of(cert_file: &std::path::Path) -> Vec<String> {
    let out = run(Command::new("ssh-keygen").arg("-Lf").arg(cert_file));
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = t
        .lines()
        .skip_while(|l| !l.trim().starts_with("Principals:"));
    lines.next();
    lines
        .take_while(|l| l.starts_with("                "))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn regression_a_replaced_servers_old_certificate_passed_for_the_server() {
    // The gateway wanted only a host-CA certificate naming the server: a machine that once
    // was web1 (removed, replaced, or stolen with its state directory) still passed for it.
    let c = GateCluster::start(&policy());
    let out = c.alice.ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["true"]);
    assert!(out.status.success(), "{}", text(&out));
    // web1 is replaced by a new machine with a new host key, at the same address, which the
    // old machine still answers: its certificate still names web1 and is still valid.
    let token = c.ca.token_with("node", "web1", "env=dev", &["--replace"]);
    let mut new = Node::prepare(postern_tests::Distro::Debian12, "web1", |t| t);
    new.port = c.node.port;
    let out = new.run_join(&c.ca, &token, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = c.alice.ssh_via_gate(
        &c.ca,
        "web1",
        TEST_LOGIN,
        &["echo", "reached-the-old-machine"],
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("reached-the-old-machine"),
        "the old machine passed for web1: {}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("web1's host certificate was refused"),
        "{}\n{}",
        text(&out),
        c.gate.log()
    );
    assert!(
        gate_log_has(&c, "not the host key the CA certified"),
        "{}",
        c.gate.log()
    );
    // And once removed, web1 is refused before any dial.
    assert!(c.ca.admin(&["nodes", "rm", "web1"]).status.success());
    let out = c.alice.ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["true"]);
    assert!(!out.status.success());
    // Which of the two refusals alice sees depends on whether the gateway's list of servers
    // was refreshed before she dialled (the gateway refuses on its own) or not (the CA's
    // authorize refuses): both say that web1 is no longer a server.
    let e = stderr(&out);
    assert!(
        e.contains("no server named web1")
            || e.contains(&format!("web1.{} is not a server of cluster", c.ca.cluster)),
        "{}",
        text(&out)
    );
}

#[test]
fn regression_a_server_named_itself_after_its_address() {
    // The host certificate carried the host part of the node's self-declared --address as a
    // principal: a node joined with --address db-prod.example:22 was certified as db-prod.
    let ca = Ca::start(&policy());
    let token = ca.token("node", "web1", "env=dev");
    let node = Node::prepare(postern_tests::Distro::Debian12, "web1", |t| t);
    let out = node.run_join(&ca, &token, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let cluster = &ca.cluster;
    assert_eq!(
        principals_of(&node.state().join("ssh_host_ed25519_key-cert.pub")),
        ["web1".to_owned(), format!("web1.{cluster}")],
        "the address 127.0.0.1 became a principal"
    );
    // An address that is not HOST:PORT is refused (it would reach every gateway's dial).
    for bad in [
        "web1",
        "127.0.0.1:0",
        "root@127.0.0.1:22",
        "127.0.0.1:22 -oProxyCommand=x",
    ] {
        let token = ca.token("node", "web2", "env=dev");
        let n2 = Node::prepare(postern_tests::Distro::Debian12, "web2", |t| t);
        let out = run(Command::new(postern_tests::bin("postern-shim"))
            .args([
                "join", "--ca", &ca.url, "--ca-pin", &ca.pin, "--token", &token,
            ])
            .args([
                "--name",
                "web2",
                "--address",
                bad,
                "--no-reload",
                "--state-dir",
            ])
            .arg(n2.state())
            .arg("--sshd-config")
            .arg(n2.dir.path().join("sshd_config"))
            .arg("--sshd-config-dir")
            .arg(n2.dir.path().join("sshd_config.d")));
        assert!(!out.status.success(), "{bad}: {}", text(&out));
        assert!(
            stderr(&out).contains("invalid address"),
            "{bad}: {}",
            text(&out)
        );
    }
}

#[test]
fn regression_an_unknown_lock_kind_was_ignored_by_the_ca_and_the_gateway() {
    // The shim failed closed on a lock kind it did not know; the CA and the gateway let the
    // session through. A newer CA may lock by something older parts cannot see.
    let c = GateCluster::start(&policy());
    let out = c.alice.ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["true"]);
    assert!(out.status.success(), "{}", text(&out));
    let key = c
        .node
        .signed_key(&c.ca, "node-access", "alice", &[TEST_LOGIN]);
    let out = run(Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(c.ca.dir.path().join("posternd.db"))
        .arg("INSERT INTO locks (target, name, reason, created_at, created_by) VALUES ('role', 'ops', 'a newer kind', strftime('%s','now'), 'test')"));
    assert!(out.status.success(), "{}", text(&out));
    let out = c.alice.ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["true"]);
    assert!(
        !out.status.success(),
        "an unknown lock kind let the session through: {}",
        text(&out)
    );
    let refused: Vec<String> =
        c.ca.audit()
            .iter()
            .filter(|e| e["kind"] == "gateway.refused")
            .map(|e| e["detail"]["reason"].as_str().unwrap_or("").to_owned())
            .collect();
    // Refused by the gateway itself (from its inventory) or by the CA: either says why.
    assert!(
        refused.iter().any(|r| r.ends_with(": a newer kind"))
            || gate_log_has(&c, "locked (role ops): a newer kind"),
        "{refused:?}\n{}",
        c.gate.log()
    );
    // The CA signs nothing for the user while it is in force...
    let out = c.ca.admin(&[
        "certs",
        "sign",
        "--ca",
        "node-access",
        "--user",
        "alice",
        "--principal",
        TEST_LOGIN,
        "--key",
        &format!("{}.pub", key.display()),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("locked (role ops)"), "{}", text(&out));
    // ...and the server refuses by the same rule a certificate signed before.
    assert!(c.node.shim("sync").status.success());
    let out = c.node.ssh(&key, TEST_LOGIN, "true");
    assert!(!out.status.success(), "{}", text(&out));
    c.node
        .assert_shim_denied(&key, TEST_LOGIN, "locked (role ops): a newer kind");
}

#[test]
fn regression_the_bundle_was_world_readable() {
    let c = GateCluster::start(&policy());
    let meta = std::fs::metadata(c.node.state().join("bundle.json")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    let group = String::from_utf8_lossy(
        &run(Command::new("getent").args(["group", "postern-shim"])).stdout,
    )
    .split(':')
    .nth(2)
    .unwrap()
    .trim()
    .parse::<u32>()
    .unwrap();
    assert_eq!(meta.gid(), group);
    // The principals command (run as postern-shim) still reads it: logins work.
    let out = c.alice.ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["true"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn regression_a_user_certificate_with_critical_options_passed_the_gateway() {
    // The gateway enforces no critical option: a certificate restricted to another source
    // address (or a forced command) was accepted as if it were not restricted.
    let c = GateCluster::start(&policy());
    let cert_path = c.alice.cluster_dir(&c.ca).join("id_ed25519-cert.pub");
    let described =
        String::from_utf8_lossy(&run(Command::new("ssh-keygen").arg("-Lf").arg(&cert_path)).stdout)
            .into_owned();
    let serial = described
        .lines()
        .find_map(|l| l.trim().strip_prefix("Serial: "))
        .unwrap()
        .to_owned();
    // The same key, serial and principals, signed by the real user CA, but restricted.
    let key_pub = c.alice.cluster_dir(&c.ca).join("id_ed25519.pub");
    if !key_pub.exists() {
        let out = run(Command::new("ssh-keygen")
            .arg("-yf")
            .arg(c.alice.cluster_dir(&c.ca).join("id_ed25519")));
        std::fs::write(&key_pub, &out.stdout).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let k = work.path().join("id.pub");
    std::fs::copy(&key_pub, &k).unwrap();
    let ca_key = c.ca.dir.path().join("ca/user_ca");
    let out = run(Command::new("ssh-keygen")
        .arg("-s")
        .arg(&ca_key)
        .args([
            "-I", "alice", "-n", TEST_LOGIN, "-z", &serial, "-V", "-5m:+1h",
        ])
        .args(["-O", "source-address=10.9.9.9", "-O", "permit-pty"])
        .arg(&k));
    assert!(out.status.success(), "{}", text(&out));
    std::fs::copy(work.path().join("id-cert.pub"), &cert_path).unwrap();
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["echo", "restricted-got-in"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("restricted-got-in"),
        "{}",
        text(&out)
    );
    assert!(
        gate_log_has(&c, "critical options the gateway does not enforce"),
        "{}",
        c.gate.log()
    );
}

#[test]
fn regression_sshd_closing_before_authentication_showed_only_permission_denied() {
    // When web1's sshd dropped the gateway's connection before authentication (MaxStartups,
    // PerSourcePenalties), the user saw "Permission denied" and looked in the wrong place.
    let c = GateCluster::start(&policy());
    let pid: i32 = std::fs::read_to_string(c.node.dir.path().join("sshd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(run(Command::new("kill").arg(pid.to_string()))
        .status
        .success());
    // Something on web1's port that closes every connection at once, as a penalising sshd does.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match std::net::TcpListener::bind(("127.0.0.1", c.node.port)) {
            Ok(l) => break l,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("{e}"),
        }
    };
    std::thread::spawn(move || {
        for s in listener.incoming().take(20) {
            drop(s);
        }
    });
    let out = c.alice.ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["true"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("web1's sshd closed the connection before authentication")
            && err.contains("PerSourcePenaltyExemptList"),
        "{}",
        text(&out)
    );
    assert!(!err.contains("Permission denied"), "{err}");
}
