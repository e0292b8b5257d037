//! A new user's first gateway (issue 9): the address users are told to use (posternd.toml's
//! `[gateway] public_addr`, which `postern login` writes as ProxyJump) is the one the gateway's
//! host certificate names, and `postern-gate serve` refuses to start with a certificate that
//! does not name it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use postern_tests::{text, Ca, Gate, Node, Person, TEST_LOGIN};

fn policy() -> String {
    format!(
        r#"
[defaults]
user_cert_ttl = "1h"

[roles.dev]
logins = ["{TEST_LOGIN}"]
nodes = {{ env = "dev" }}

[users.alice]
roles = ["dev"]
"#
    )
}

/// A CA whose `[gateway] public_addr` is `addr`, started.
fn ca_with_gateway(addr: &str) -> Ca {
    let mut ca = Ca::init(&policy());
    ca.set_gateway(addr);
    ca.spawn();
    ca
}

#[test]
fn regression_a_gateway_joined_without_address_failed_host_key_verification() {
    // As the README has it, minus --address: the CA's public_addr is what users are told.
    let gport = Gate::reserve_port();
    let public = format!("127.0.0.1:{gport}");
    let ca = ca_with_gateway(&public);
    let token = ca.token("gateway", "gw", "");
    let (mut gate, out) = Gate::join_as(&ca, gport, "gw", &token, &[]);
    assert!(out.status.success(), "gate join: {}", text(&out));
    assert!(
        gate.cert_principals().contains(&"127.0.0.1".to_owned()),
        "the certificate does not name the public address's host: {:?}",
        gate.cert_principals()
    );
    let token = ca.token("node", "web1", "env=dev");
    let (mut node, out) = Node::join(&ca, "web1", &token, &[]);
    assert!(out.status.success(), "{}", text(&out));
    node.start_sshd();
    gate.spawn();
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    alice.login(&ca);
    let config = std::fs::read_to_string(alice.cluster_dir(&ca).join("ssh_config")).unwrap();
    assert!(
        config.contains(&format!("ProxyJump {public}\n")),
        "{config}"
    );

    // Stock ssh with the ssh_config postern wrote: before the fix the jump connection ended
    // with "Host key verification failed" (the certificate named only gw and gw.<cluster>).
    let out = alice.ssh_via_gate(&ca, "web1", TEST_LOGIN, &["echo through-the-gateway"]);
    assert!(
        out.status.success(),
        "{}\ngate:\n{}",
        text(&out),
        gate.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "through-the-gateway\n"
    );
}

#[test]
fn gateway_serve_refuses_a_certificate_that_does_not_name_the_public_address() {
    let gport = Gate::reserve_port();
    let mut ca = ca_with_gateway(&format!("127.0.0.1:{gport}"));
    let token = ca.token("gateway", "gw", "");
    let (gate, out) = Gate::join_as(&ca, gport, "gw", &token, &[]);
    assert!(out.status.success(), "gate join: {}", text(&out));

    // The admin then tells users another address: the certificate no longer does for it.
    ca.stop();
    let moved = format!("localhost:{gport}");
    ca.change_gateway(&moved);
    ca.spawn();
    let (status, err) = gate.serve_refused();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("refusing to start"), "{err}");
    // Both values: what the certificate names, and the address users are told.
    assert!(
        err.contains("names gw, gw.test.postern, 127.0.0.1,"),
        "{err}"
    );
    assert!(err.contains(&format!("reach it at {moved}")), "{err}");
    assert!(err.contains("Host key verification failed"), "{err}");
    assert!(err.contains("as the CA says now"), "{err}");
    // And how to fix it, which works: a re-join certifies the CA's address.
    assert!(
        err.contains("posternd tokens add --kind gateway --name gw --replace"),
        "{err}"
    );
    let token = ca.token_with("gateway", "gw", "", &["--replace"]);
    let out = gate.rejoin(&ca, "gw", &token, &[]);
    assert!(out.status.success(), "gate re-join: {}", text(&out));
    assert!(
        gate.cert_principals().contains(&"localhost".to_owned()),
        "{:?}",
        gate.cert_principals()
    );
    let mut gate = gate;
    gate.spawn();
}

#[test]
fn gateway_joined_with_another_address_before_the_ca_had_one_is_refused_once_it_has() {
    // No public_addr at join: the certificate names only what --address said.
    let mut ca = Ca::init(&policy());
    ca.spawn();
    let gport = Gate::reserve_port();
    let token = ca.token("gateway", "gw", "");
    let given = format!("127.0.0.1:{gport}");
    let (gate, out) = Gate::join_as(&ca, gport, "gw", &token, &["--address", &given]);
    assert!(out.status.success(), "gate join: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the CA has no [gateway] public_addr"),
        "{}",
        text(&out)
    );

    ca.stop();
    let public = format!("localhost:{gport}");
    ca.set_gateway(&public);
    ca.spawn();
    let (status, err) = gate.serve_refused();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("names gw, gw.test.postern, 127.0.0.1,"),
        "{err}"
    );
    assert!(err.contains(&format!("reach it at {public}")), "{err}");
}

#[test]
fn join_with_an_address_other_than_the_public_one_warns_and_certifies_both() {
    let gport = Gate::reserve_port();
    let public = format!("localhost:{gport}");
    let ca = ca_with_gateway(&public);
    let token = ca.token("gateway", "gw", "");
    let given = format!("127.0.0.1:{gport}");
    let (mut gate, out) = Gate::join_as(&ca, gport, "gw", &token, &["--address", &given]);
    assert!(out.status.success(), "gate join: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "--address {given} is not the address users are told to use, {public}"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(
        gate.cert_principals(),
        ["gw", "gw.test.postern", "127.0.0.1", "localhost"],
    );
    // The certificate names the public address, so the gateway starts.
    gate.spawn();
}
