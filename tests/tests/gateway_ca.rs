//! User stories of the CA side of the recording gateway: a gateway joins with a token of kind
//! `gateway` and, with its mTLS identity, reads the inventory, gets node-access certificates
//! for exactly one login (or a refusal that says why), host certificates for servers' names,
//! and uploads recordings that their users then list and play with `postern`.
//!
//! The gateway here is `curl` with the identity that `/v1/join` returned, so that these tests
//! do not depend on `postern-gate`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use tempfile::TempDir;

use postern_tests::{bin, curl, run, text, Ca, Node, Person, TEST_LOGIN};

fn policy() -> String {
    format!(
        r#"
[defaults]
user_cert_ttl = "1h"

[roles.dev]
logins = ["{TEST_LOGIN}"]
nodes = {{ env = "dev" }}
permit = ["pty"]

[roles.prod-root]
logins = ["root"]
nodes = {{ env = "prod" }}
permit = ["pty", "port-forwarding"]

[users.alice]
roles = ["dev", "prod-root"]
[users.bob]
roles = ["dev"]
"#
    )
}

/// Standard base64 with padding, as the OpenSSH public key line needs it.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An SSH key pair made by ssh-keygen; returns the private key path and the public line.
fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(&key));
    assert!(out.status.success(), "{}", text(&out));
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap();
    (key, public.trim().to_owned())
}

/// What `ssh-keygen -L` says about a certificate.
fn describe_cert(dir: &Path, cert: &str) -> String {
    let f = dir.join(format!("described-{}.pub", rand_suffix()));
    std::fs::write(&f, cert).unwrap();
    let out = run(Command::new("ssh-keygen").arg("-Lf").arg(&f));
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// The lines of `ssh-keygen -L` under `Principals:`.
fn principals(described: &str) -> Vec<String> {
    described
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("Principals:"))
        .skip(1)
        .take_while(|l| l.starts_with("                "))
        .map(|l| l.trim().to_owned())
        .collect()
}

/// A client of the API holding an mTLS identity from `/v1/join`: a gateway, or a server
/// joined by hand (to prove that servers are refused).
struct Joined {
    dir: TempDir,
    url: String,
}

impl Joined {
    /// Joins through `/v1/join` with a token of `kind`. The identity key is made by openssl
    /// (curl needs it as PKCS#8 PEM); its OpenSSH line is built from the raw public key.
    fn join(ca: &Ca, kind: &str, name: &str, labels: &str, address: Option<&str>) -> Joined {
        Joined::join_with(ca, kind, name, labels, address, &[])
    }

    /// [`Joined::join`] with egress addresses (a gateway's `--egress-address`).
    fn join_with(
        ca: &Ca,
        kind: &str,
        name: &str,
        labels: &str,
        address: Option<&str>,
        egress: &[&str],
    ) -> Joined {
        let dir = tempfile::Builder::new()
            .prefix("postern-joined")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let out = run(Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(d.join("id.key")));
        assert!(out.status.success(), "{}", text(&out));
        let out = run(Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(d.join("id.key")));
        assert!(out.status.success(), "{}", text(&out));
        let raw = &out.stdout[out.stdout.len() - 32..];
        let mut blob = Vec::new();
        for part in [&b"ssh-ed25519"[..], raw] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(part);
        }
        let identity = format!("ssh-ed25519 {}", base64(&blob));
        let (_, host) = ssh_key(d, "host_key");
        let body = json!({
            "token": ca.token(kind, name, labels),
            "name": name,
            "address": address,
            "host_public_key": host,
            "identity_public_key": identity,
            "egress_addresses": egress,
        });
        let (status, resp) = curl(ca, "/v1/join", Some(body.to_string().as_bytes()));
        assert_eq!(status, 200, "{resp}");
        let v: Value = serde_json::from_str(&resp).unwrap();
        assert_eq!(v["kind"], kind);
        std::fs::write(d.join("id.crt"), v["x509_certificate"].as_str().unwrap()).unwrap();
        std::fs::write(d.join("ca.crt"), v["x509_ca"].as_str().unwrap()).unwrap();
        Joined {
            dir,
            url: ca.url.clone(),
        }
    }

    /// An API call with this identity (the server checked against the service CA): returns
    /// (HTTP status, body).
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        let d = self.dir.path();
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
            .arg("--cacert")
            .arg(d.join("ca.crt"))
            .arg("--cert")
            .arg(d.join("id.crt"))
            .arg("--key")
            .arg(d.join("id.key"))
            .args(["-H", "content-type: application/json"]);
        if let Some(b) = body {
            let f = d.join(format!("body-{}.json", rand_suffix()));
            std::fs::write(&f, b.to_string()).unwrap();
            cmd.arg("--data-binary").arg(format!("@{}", f.display()));
        }
        let out = run(cmd.arg(format!("{}{path}", self.url)));
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = s.rsplit_once('\n').unwrap_or(("", &s));
        assert!(
            out.status.success(),
            "curl {method} {path} failed: {}",
            text(&out)
        );
        (code.trim().parse().unwrap(), body.to_owned())
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, resp) = self.call(method, path, body);
        assert_eq!(status, 200, "{method} {path}: {resp}");
        serde_json::from_str(&resp).unwrap()
    }

    /// Asks for a node-access certificate; returns (status, body).
    fn authorize(
        &self,
        user: &str,
        cert: &str,
        login: &str,
        node: &str,
        session: &str,
        public_key: &str,
    ) -> (u16, Value) {
        let (status, resp) = self.call(
            "POST",
            "/v1/gateway/authorize",
            Some(&json!({
                "user": user, "user_certificate": cert, "login": login, "node": node,
                "session_id": session, "public_key": public_key,
            })),
        );
        (status, serde_json::from_str(&resp).unwrap_or(Value::Null))
    }
}

fn joined_node(ca: &Ca, labels: &str) -> Node {
    let token = ca.token("node", "web1", labels);
    let (node, out) = Node::join(ca, "web1", &token, &[]);
    assert!(out.status.success(), "join: {}", text(&out));
    node
}

/// A person logged in; returns them with their user certificate (one line).
fn logged_in(ca: &Ca, user: &str) -> (Person, String) {
    let mut p = Person::new(user);
    p.enroll(ca);
    p.login(ca);
    let cert = std::fs::read_to_string(p.cluster_dir(ca).join("id_ed25519-cert.pub")).unwrap();
    (p, cert.trim().to_owned())
}

/// The serial of a certificate line, as ssh-keygen reads it.
fn serial_of(dir: &std::path::Path, cert: &str) -> u64 {
    describe_cert(dir, cert)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Serial: "))
        .unwrap()
        .parse()
        .unwrap()
}

fn audit_kinds(ca: &Ca, kind: &str) -> Vec<Value> {
    ca.audit()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

#[test]
fn inventory_lists_servers_with_an_address_and_only_gateways_may_read_it() {
    let ca = Ca::start(&policy());
    let node = joined_node(&ca, "env=dev");
    let gw = Joined::join(&ca, "gateway", "gw1", "", Some("127.0.0.1:3023"));
    // A server joined without an address cannot be dialled: it is left out.
    let lone = Joined::join(&ca, "node", "lone", "env=dev", None);

    let inv = gw.ok("GET", "/v1/gateway/inventory", None);
    assert_eq!(inv["cluster"], ca.cluster);
    assert_eq!(
        inv["nodes"],
        json!([{
            "name": "web1", "address": format!("127.0.0.1:{}", node.port), "labels": { "env": "dev" },
            // The host key the CA certified at join, which the gateway pins.
            "host_key": std::fs::read_to_string(node.state().join("ssh_host_ed25519_key.pub")).unwrap().trim(),
        }]),
        "{inv}"
    );
    let user_ca = ca.admin_json(&["ca", "export", "user"])["keys"][0].clone();
    let host_ca = ca.admin_json(&["ca", "export", "host"])["keys"][0].clone();
    assert_eq!(inv["user_ca_keys"], json!([user_ca]));
    assert_eq!(inv["host_ca_keys"], json!([host_ca]));
    assert_eq!(inv["locks"], json!([]));

    // Locks reach the gateway through the inventory.
    ca.admin_json(&["lock", "add", "--user", "mallory", "--reason", "test"]);
    let inv = gw.ok("GET", "/v1/gateway/inventory", None);
    assert_eq!(inv["locks"][0]["target"], "user");
    assert_eq!(inv["locks"][0]["name"], "mallory");

    // A server's identity is not a gateway's; no identity at all is a 401.
    let (status, body) = lone.call("GET", "/v1/gateway/inventory", None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("only a joined gateway"), "{body}");
    let (status, body) = curl(&ca, "/v1/gateway/inventory", None);
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("gateway endpoints need the client certificate from `postern-gate join`"),
        "{body}"
    );

    // `gateways ls` shows the gateway, seen just now, and no server.
    let gws = ca.admin_json(&["gateways", "ls"]);
    let gws = gws.as_array().unwrap();
    assert_eq!(gws.len(), 1, "{gws:?}");
    assert_eq!(gws[0]["name"], "gw1");
    assert_eq!(gws[0]["address"], "127.0.0.1:3023");
    assert!(gws[0]["last_sync"].as_u64().unwrap() + 60 >= postern_tests::now());
    let out = ca.admin(&["gateways", "ls"]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("LAST SEEN") && table.contains("gw1") && !table.contains("web1"),
        "{table}"
    );

    // A removed gateway's identity stops working at once.
    ca.admin_json(&["nodes", "rm", "gw1"]);
    let (status, body) = gw.call("GET", "/v1/gateway/inventory", None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("only a joined gateway"), "{body}");
}

#[test]
fn authorize_signs_a_node_access_certificate_that_the_server_accepts() {
    let ca = Ca::start(&policy());
    let mut node = joined_node(&ca, "env=dev");
    node.start_sshd();
    let gw = Joined::join(&ca, "gateway", "gw1", "", None);
    let (alice, serial) = logged_in(&ca, "alice");
    let (key, public) = ssh_key(alice.home.path(), "gate_ephemeral");

    let (status, v) = gw.authorize("alice", &serial, TEST_LOGIN, "web1", "s-test-1", &public);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["node"]["name"], "web1");
    assert_eq!(v["node"]["address"], format!("127.0.0.1:{}", node.port));
    // Only the permits of the role that grants this login on env=dev.
    assert_eq!(v["permits"], json!(["pty"]));
    assert_eq!(v["recording"], "strict");
    assert_eq!(v["record_input"], false);

    let cert = v["certificate"].as_str().unwrap();
    let described = describe_cert(alice.home.path(), cert);
    assert!(described.contains("user certificate"), "{described}");
    assert!(
        described.contains("Key ID: \"alice/s-test-1\""),
        "{described}"
    );
    assert_eq!(principals(&described), [TEST_LOGIN]);
    assert!(described.contains("permit-pty"), "{described}");
    assert!(!described.contains("permit-port-forwarding"), "{described}");
    // Signed by the node-access CA, valid for a few minutes.
    let node_ca = ca.admin_json(&["ca", "export", "node-access"])["keys"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let ca_file = alice.home.path().join("node_ca.pub");
    std::fs::write(&ca_file, &node_ca).unwrap();
    let fp = run(Command::new("ssh-keygen").arg("-lf").arg(&ca_file));
    let fp = String::from_utf8_lossy(&fp.stdout);
    let fp = fp.split_whitespace().nth(1).unwrap();
    assert!(
        described.contains(&format!("Signing CA: ED25519 {fp}")),
        "{described}"
    );
    // "Valid: from T1 to T2": five minutes plus the one-minute backdating.
    let valid = described
        .lines()
        .find(|l| l.trim().starts_with("Valid:"))
        .unwrap();
    let parts: Vec<&str> = valid.split_whitespace().collect();
    let secs = |t: &str| {
        let out = run(Command::new("date").args(["-u", "-d", t, "+%s"]));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    assert_eq!(secs(parts[4]) - secs(parts[2]), 360, "{valid}");

    // The server's stock sshd accepts it for exactly that login, through the shim.
    std::fs::write(format!("{}-cert.pub", key.display()), cert).unwrap();
    let out = node.ssh(&key, TEST_LOGIN, "id -un");
    assert!(
        out.status.success(),
        "{}\nsshd:\n{}",
        text(&out),
        node.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), TEST_LOGIN);
    let out = node.ssh(&key, "root", "true");
    assert!(!out.status.success(), "root accepted: {}", text(&out));
    node.assert_shim_denied(&key, "root", "certificate does not carry login root");

    // Recorded and audited under the user.
    let certs = ca.admin_json(&["certs", "ls"]);
    let issued = certs
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "ssh-node-access")
        .unwrap();
    assert_eq!(issued["subject"], "alice");
    assert_eq!(issued["principals"], TEST_LOGIN);
    let ev = audit_kinds(&ca, "gateway.authorized");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["actor"], "alice");
    assert_eq!(ev[0]["detail"]["gateway"], "gw1");
    assert_eq!(ev[0]["detail"]["session"], "s-test-1");
    assert_eq!(ev[0]["detail"]["login"], TEST_LOGIN);

    // The same gateway may ask again for the same session.
    let (status, v) = gw.authorize("alice", &serial, TEST_LOGIN, "web1", "s-test-1", &public);
    assert_eq!(status, 200, "{v}");
}

#[test]
fn authorize_refuses_with_a_reason_the_user_can_read() {
    let ca = Ca::start(&policy());
    let _node = joined_node(&ca, "env=dev");
    let gw = Joined::join(&ca, "gateway", "gw1", "", None);
    let not_gw = Joined::join(&ca, "node", "web2", "env=dev", Some("127.0.0.1:22"));
    let (alice, serial) = logged_in(&ca, "alice");
    let (_bob, bob_serial) = logged_in(&ca, "bob");
    let (_, public) = ssh_key(alice.home.path(), "gate_ephemeral");

    let refused = |user: &str, serial: &str, login: &str, node: &str, session: &str| {
        let (status, v) = gw.authorize(user, serial, login, node, session, &public);
        assert_eq!(status, 403, "{v}");
        v["error"].as_str().unwrap().to_owned()
    };

    // root is alice's only on env=prod servers.
    let e = refused("alice", &serial, "root", "web1", "s-1");
    assert_eq!(e, "policy does not allow alice to log in as root on web1");
    // A certificate for alice with her serial from another CA, and someone else's certificate.
    let forged = forge_user_cert(
        alice.home.path(),
        "alice",
        serial_of(alice.home.path(), &serial),
    );
    let e = refused("alice", &forged, TEST_LOGIN, "web1", "s-2");
    assert!(e.contains("is not valid"), "{e}");
    let e = refused("alice", &bob_serial, TEST_LOGIN, "web1", "s-3");
    assert!(e.contains("is not valid"), "{e}");
    // Unknown server.
    let e = refused("alice", &serial, TEST_LOGIN, "nosuch", "s-4");
    assert_eq!(e, "no server named nosuch has joined the cluster");

    // Locks on the user, the login and the server.
    let lock = ca.admin_json(&[
        "lock",
        "add",
        "--user",
        "alice",
        "--reason",
        "laptop stolen",
    ]);
    let e = refused("alice", &serial, TEST_LOGIN, "web1", "s-5");
    assert_eq!(e, "user alice is locked");
    ca.admin_json(&["lock", "rm", &lock["id"].to_string()]);
    let lock = ca.admin_json(&[
        "lock",
        "add",
        "--login",
        TEST_LOGIN,
        "--reason",
        "maintenance",
    ]);
    let e = refused("alice", &serial, TEST_LOGIN, "web1", "s-6");
    assert_eq!(e, format!("login {TEST_LOGIN} is locked"));
    ca.admin_json(&["lock", "rm", &lock["id"].to_string()]);
    let lock = ca.admin_json(&["lock", "add", "--node", "web1", "--reason", "incident"]);
    let e = refused("alice", &serial, TEST_LOGIN, "web1", "s-7");
    assert_eq!(e, "server web1 is locked");
    ca.admin_json(&["lock", "rm", &lock["id"].to_string()]);

    // A revoked certificate (the user was reset) is refused.
    let (status, v) = gw.authorize("bob", &bob_serial, TEST_LOGIN, "web1", "s-8", &public);
    assert_eq!(status, 200, "{v}");
    ca.admin_json(&["users", "reset", "bob"]);
    let e = refused("bob", &bob_serial, TEST_LOGIN, "web1", "s-9");
    assert!(e.contains("is not valid"), "{e}");

    // Malformed session ids are a 400, a server's identity a 403, no identity a 401.
    let (status, v) = gw.authorize("alice", &serial, TEST_LOGIN, "web1", "S_1/..", &public);
    assert_eq!(status, 400, "{v}");
    let (status, v) = not_gw.authorize("alice", &serial, TEST_LOGIN, "web1", "s-11", &public);
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("only a joined gateway"),
        "{v}"
    );
    let (status, body) = curl(&ca, "/v1/gateway/authorize", Some(b"{}"));
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("gateway endpoints need the client certificate"),
        "{body}"
    );

    // Every refusal is audited with its reason; nothing was signed for them.
    let refusals = audit_kinds(&ca, "gateway.refused");
    let reasons: Vec<&str> = refusals
        .iter()
        .map(|e| e["detail"]["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("does not allow")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("user certificate: ") && r.contains("CA")),
        "the forged certificate was not refused for its CA: {reasons:?}"
    );
    assert!(
        reasons.contains(&"user certificate: the certificate belongs to another user"),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"user certificate: revoked"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.ends_with("laptop stolen")),
        "{reasons:?}"
    );
    assert!(reasons.contains(&"not a joined gateway"), "{reasons:?}");
    assert_eq!(audit_kinds(&ca, "gateway.authorized").len(), 1);
}

#[test]
fn gateways_report_what_they_saw_and_servers_only_sessions() {
    let ca = Ca::start(&policy());
    let gw = Joined::join(&ca, "gateway", "gw1", "", None);
    let server = Joined::join(&ca, "node", "web2", "env=dev", Some("127.0.0.1:22"));
    let events = |kind: &str| {
        json!({ "events": [{
            "kind": kind, "ts": postern_tests::now(), "login": TEST_LOGIN, "user": "alice",
            "session": "s-ev-1", "detail": { "node": "web1", "extra": { "path": "/tmp/f" } },
        }] })
    };
    let v = gw.ok("POST", "/v1/node/events", Some(&events("sftp.open")));
    assert_eq!(v["accepted"], 1);
    let ev = audit_kinds(&ca, "sftp.open");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["actor"], "gateway:gw1");
    assert_eq!(ev[0]["detail"]["user"], "alice");
    assert_eq!(ev[0]["detail"]["gateway"], "gw1");
    assert_eq!(ev[0]["detail"]["detail"]["extra"]["path"], "/tmp/f");
    gw.ok("POST", "/v1/node/events", Some(&events("session.close")));

    // A gateway cannot write the CA's own events; a server reports only PAM sessions.
    let (status, body) = gw.call(
        "POST",
        "/v1/node/events",
        Some(&events("gateway.authorized")),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.call("POST", "/v1/node/events", Some(&events("sftp.open")));
    assert_eq!(status, 400, "{body}");
    let v = server.ok("POST", "/v1/node/events", Some(&events("session.open")));
    assert_eq!(v["accepted"], 1);
    assert_eq!(
        audit_kinds(&ca, "session.open")[0]["detail"]["node"],
        "web2"
    );
    assert!(audit_kinds(&ca, "gateway.authorized").is_empty());
}

#[test]
fn a_session_id_cannot_be_reused_for_another_session() {
    let ca = Ca::start(&policy());
    let _node = joined_node(&ca, "env=dev");
    let gw = Joined::join(&ca, "gateway", "gw1", "", None);
    let (alice, serial) = logged_in(&ca, "alice");
    let (_bob, bob_serial) = logged_in(&ca, "bob");
    let (_, public) = ssh_key(alice.home.path(), "k");
    let (status, v) = gw.authorize("alice", &serial, TEST_LOGIN, "web1", "s-dup", &public);
    assert_eq!(status, 200, "{v}");
    let (status, v) = gw.authorize("bob", &bob_serial, TEST_LOGIN, "web1", "s-dup", &public);
    assert_eq!(status, 403, "{v}");
    assert_eq!(
        v["error"],
        "session id s-dup is already used by another session"
    );
}

#[test]
fn host_cert_names_the_server_for_the_gateways_key() {
    let ca = Ca::start(&policy());
    let _node = joined_node(&ca, "env=dev");
    let gw = Joined::join(&ca, "gateway", "gw1", "", None);
    let (_, public) = ssh_key(gw.dir.path(), "inner_host");

    let v = gw.ok(
        "POST",
        "/v1/gateway/host-cert",
        Some(&json!({ "node": "web1", "public_key": public })),
    );
    let described = describe_cert(gw.dir.path(), v["certificate"].as_str().unwrap());
    assert!(described.contains("host certificate"), "{described}");
    // The server's names only: not its self-declared address.
    assert_eq!(
        principals(&described),
        ["web1", &format!("web1.{}", ca.cluster)]
    );
    assert!(
        described.contains("Key ID: \"gateway:gw1/web1\""),
        "{described}"
    );
    // At most a day, although the policy's host_cert_ttl is 30 days.
    let vb = v["valid_before"].as_u64().unwrap();
    let now = postern_tests::now();
    assert!(vb > now + 23 * 3600 && vb <= now + 24 * 3600 + 5, "{vb}");

    let ev = audit_kinds(&ca, "host_cert.issued");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["actor"], "gateway:gw1");
    assert_eq!(ev[0]["detail"]["node"], "web1");

    let (status, body) = gw.call(
        "POST",
        "/v1/gateway/host-cert",
        Some(&json!({ "node": "nosuch", "public_key": public })),
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = gw.call(
        "POST",
        "/v1/gateway/host-cert",
        Some(&json!({ "node": "web1", "public_key": "ssh-ed25519 AAAA" })),
    );
    assert_eq!(status, 400, "{body}");

    // Removing the gateway revokes the host certificates it got for servers.
    ca.admin_json(&["nodes", "rm", "gw1"]);
    let certs = ca.admin_json(&["certs", "ls"]);
    let mine: Vec<&Value> = certs
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["subject"] == "gateway:gw1/web1")
        .collect();
    assert_eq!(mine.len(), 1, "{certs}");
    assert_eq!(mine[0]["kind"], "ssh-host");
    assert_eq!(mine[0]["revoked"], true);
}

const CAST: &str = "{\"version\": 2, \"width\": 80, \"height\": 24, \"timestamp\": 1700000000}\n\
[0.1, \"o\", \"$ \"]\n\
[0.2, \"i\", \"echo secret-input\\r\"]\n\
[0.3, \"o\", \"echo hi\\r\\nhi\\r\\n\"]\n\
[0.4, \"o\", \"$ exit\\r\\n\"]\n";

fn upload(id: &str, user: &str, login: &str, cast: &str) -> Value {
    let now = postern_tests::now();
    json!({
        "meta": {
            "id": id, "user": user, "login": login, "node": "web1", "gateway": "ignored",
            "started_at": now - 5, "ended_at": now, "interrupted": false, "bytes": cast.len(),
        },
        "cast": cast,
    })
}

#[test]
fn recordings_are_stored_once_and_their_users_list_and_play_them() {
    let ca = Ca::start(&policy());
    let _node = joined_node(&ca, "env=dev");
    let gw = Joined::join(&ca, "gateway", "gw1", "", None);
    let not_gw = Joined::join(&ca, "node", "web2", "env=dev", Some("127.0.0.1:22"));
    let (alice, serial) = logged_in(&ca, "alice");
    let (bob, bob_serial) = logged_in(&ca, "bob");
    let (_, public) = ssh_key(alice.home.path(), "k");
    // The CA stores recordings of authorized sessions only.
    for (user, serial, session) in [
        ("alice", serial.as_str(), "s-rec-1"),
        ("bob", bob_serial.as_str(), "s-big"),
        ("alice", serial.as_str(), "s-idle"),
    ] {
        let (status, v) = gw.authorize(user, serial, TEST_LOGIN, "web1", session, &public);
        assert_eq!(status, 200, "{v}");
    }

    let stored = gw.ok(
        "POST",
        "/v1/gateway/recordings",
        Some(&upload("s-rec-1", "alice", TEST_LOGIN, CAST)),
    );
    assert_eq!(stored["id"], "s-rec-1");
    assert_eq!(stored["gateway"], "gw1");
    assert_eq!(stored["bytes"], CAST.len());
    let file = ca.dir.path().join("recordings/s-rec-1.cast");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), CAST);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A retried upload is accepted and changes nothing, even with other content.
    let again = gw.ok(
        "POST",
        "/v1/gateway/recordings",
        Some(&upload(
            "s-rec-1",
            "alice",
            TEST_LOGIN,
            "{\"version\": 2}\n",
        )),
    );
    assert_eq!(again, stored);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), CAST);
    let listed = ca.admin_json(&["recordings", "ls"]);
    assert_eq!(listed, json!([stored]));
    assert_eq!(audit_kinds(&ca, "recording.stored").len(), 1);
    let ev = &audit_kinds(&ca, "recording.stored")[0];
    assert_eq!(ev["actor"], "gateway:gw1");
    assert_eq!(ev["detail"]["authorized_session"], true);
    // Another gateway cannot claim the id.
    let gw2 = Joined::join(&ca, "gateway", "gw2", "", None);
    let (status, body) = gw2.call(
        "POST",
        "/v1/gateway/recordings",
        Some(&upload("s-rec-1", "alice", TEST_LOGIN, CAST)),
    );
    assert_eq!(status, 409, "{body}");

    // Larger than the API's 16 KiB body limit: this route has its own.
    let big = format!(
        "{{\"version\": 2}}\n{}",
        "[0.5, \"o\", \"0123456789abcdef0123456789abcdef\"]\n".repeat(3000)
    );
    assert!(big.len() > 100_000);
    gw.ok(
        "POST",
        "/v1/gateway/recordings",
        Some(&upload("s-big", "bob", TEST_LOGIN, &big)),
    );
    assert_eq!(
        std::fs::read_to_string(ca.dir.path().join("recordings/s-big.cast")).unwrap(),
        big
    );
    // ...while the other routes keep the global limit.
    let padded = json!({ "node": "web1", "public_key": "x".repeat(20_000) });
    let (status, _) = gw.call("POST", "/v1/gateway/host-cert", Some(&padded));
    assert_eq!(status, 413);

    // Refused uploads: wrong size, not asciicast, not matching the authorized session,
    // not from a gateway.
    let mut bad = upload("s-bad", "alice", TEST_LOGIN, CAST);
    bad["meta"]["bytes"] = json!(3);
    let (status, body) = gw.call("POST", "/v1/gateway/recordings", Some(&bad));
    assert_eq!(status, 400, "{body}");
    let (status, body) = gw.call(
        "POST",
        "/v1/gateway/recordings",
        Some(&upload("s-bad", "alice", TEST_LOGIN, "not a cast\n")),
    );
    assert_eq!(status, 400, "{body}");
    let (status, v) = gw.authorize("alice", &serial, TEST_LOGIN, "web1", "s-rec-2", &public);
    assert_eq!(status, 200, "{v}");
    let (status, body) = gw.call(
        "POST",
        "/v1/gateway/recordings",
        Some(&upload("s-rec-2", "bob", TEST_LOGIN, CAST)),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = not_gw.call(
        "POST",
        "/v1/gateway/recordings",
        Some(&upload("s-x", "alice", TEST_LOGIN, CAST)),
    );
    assert_eq!(status, 403, "{body}");
    // ...nor of a session the CA never authorized.
    let (status, body) = gw.call(
        "POST",
        "/v1/gateway/recordings",
        Some(&upload("s-never", "alice", TEST_LOGIN, CAST)),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no session this CA authorized"), "{body}");
    assert!(!ca.dir.path().join("recordings/s-never.cast").exists());
    assert!(!ca.dir.path().join("recordings/s-bad.cast").exists());
    assert!(!ca.dir.path().join("recordings/s-rec-2.cast").exists());

    let out = ca.admin(&["recordings", "ls"]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table.contains("s-rec-1") && table.contains("s-big"),
        "{table}"
    );

    // The admin filters by user and node.
    let alices = ca.admin_json(&["recordings", "ls", "--user", "alice"]);
    assert_eq!(alices.as_array().unwrap().len(), 1);
    let bobs = ca.admin_json(&["recordings", "ls", "--user", "bob", "--node", "web1"]);
    assert_eq!(bobs[0]["id"], "s-big");
    assert_eq!(
        ca.admin_json(&["recordings", "ls", "--node", "web9"]),
        json!([])
    );

    // alice lists and plays her own recording; stdout is a pipe, so output comes at once.
    let out = run(alice.postern().args(["recordings", "ls", "--json"]));
    assert!(out.status.success(), "{}", text(&out));
    let mine: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(mine, json!([stored]));
    let out = run(alice.postern().args(["recordings", "ls"]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("s-rec-1"),
        "{}",
        text(&out)
    );
    let out = run(alice.postern().args(["play", "s-rec-1", "--speed", "4"]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "$ echo hi\r\nhi\r\n$ exit\r\n"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a terminal"),
        "{}",
        text(&out)
    );
    assert_eq!(audit_kinds(&ca, "recording.viewed").len(), 1);

    // bob sees only his own: asking for alice's is refused (exit 3), playing hers is "not
    // found" exactly like a recording that does not exist.
    let out = run(bob.postern().args(["recordings", "ls", "--json"]));
    assert!(out.status.success(), "{}", text(&out));
    let his: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(his.as_array().unwrap().len(), 1);
    assert_eq!(his[0]["id"], "s-big");
    let out = run(bob.postern().args(["recordings", "ls", "--user", "alice"]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only their own recordings"),
        "{}",
        text(&out)
    );
    let out = run(bob.postern().args(["play", "s-rec-1"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(out.stdout.is_empty());
    let theirs = String::from_utf8_lossy(&out.stderr).into_owned();
    let out = run(bob.postern().args(["play", "s-nosuch"]));
    let missing = String::from_utf8_lossy(&out.stderr).into_owned();
    let strip = |s: &str| {
        s.split(" (request id")
            .next()
            .unwrap()
            .replace("s-nosuch", "ID")
    };
    assert_eq!(strip(&theirs.replace("s-rec-1", "ID")), strip(&missing));
    assert!(theirs.contains("no recording s-rec-1 of yours"), "{theirs}");

    // On a terminal, play keeps the timing but shortens a 100-second pause to 2 seconds.
    let idle = "{\"version\": 2}\n[0.2, \"o\", \"start\\r\\n\"]\n[100.0, \"o\", \"end\\r\\n\"]\n";
    gw.ok(
        "POST",
        "/v1/gateway/recordings",
        Some(&upload("s-idle", "alice", TEST_LOGIN, idle)),
    );
    let started = std::time::Instant::now();
    let out = run(Command::new("script")
        .args([
            "-qec",
            &format!("{} play s-idle", bin("postern").display()),
            "/dev/null",
        ])
        .env("HOME", alice.home.path()));
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(seen.contains("start") && seen.contains("end"), "{seen}");
    assert!(!seen.contains("not a terminal"), "{seen}");
    assert!(
        took >= std::time::Duration::from_millis(2200) && took < std::time::Duration::from_secs(10),
        "{took:?}"
    );

    // A locked user can no longer read recordings.
    ca.admin_json(&["lock", "add", "--user", "alice", "--reason", "x"]);
    let out = run(alice.postern().args(["play", "s-rec-1"]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("playing the recording refused: user alice is locked"),
        "{}",
        text(&out)
    );
}

/// A user certificate for `user` with `serial` and the key of `dir/id_ed25519`-like key made
/// here, signed by a CA that is not Postern's: what a gateway could make up.
fn forge_user_cert(dir: &std::path::Path, user: &str, serial: u64) -> String {
    let d = tempfile::tempdir_in(dir).unwrap();
    for name in ["forger_ca", "forged"] {
        let out = run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.path().join(name)));
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = run(Command::new("ssh-keygen")
        .arg("-s")
        .arg(d.path().join("forger_ca"))
        .args([
            "-I",
            user,
            "-n",
            TEST_LOGIN,
            "-z",
            &serial.to_string(),
            "-V",
            "-5m:+1h",
        ])
        .arg(d.path().join("forged.pub")));
    assert!(out.status.success(), "{}", text(&out));
    std::fs::read_to_string(d.path().join("forged-cert.pub"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn regression_a_gateway_walked_sequential_serials_to_act_as_any_user() {
    // Authorize took (user, serial) and serials were sequential: a gateway identity could name
    // any logged-in user's serial. Now serials are random and authorize needs the certificate.
    let ca = Ca::start(&policy());
    let _node = joined_node(&ca, "env=dev");
    let gw = Joined::join(&ca, "gateway", "gw1", "", None);
    let (alice, cert) = logged_in(&ca, "alice");
    let (_bob, bob_cert) = logged_in(&ca, "bob");
    let (a, b) = (
        serial_of(alice.home.path(), &cert),
        serial_of(alice.home.path(), &bob_cert),
    );
    assert!(
        a.abs_diff(b) > 1_000_000,
        "serials look sequential: {a} {b}"
    );
    let (_, public) = ssh_key(alice.home.path(), "gate_ephemeral");
    // The old request (a serial, no certificate) is refused as malformed.
    let (status, resp) = gw.call(
        "POST",
        "/v1/gateway/authorize",
        Some(&json!({
            "user": "bob", "user_cert_serial": b, "login": TEST_LOGIN, "node": "web1",
            "session_id": "s-walk", "public_key": public,
        })),
    );
    assert_eq!(status, 400, "{resp}");
    // bob's serial in a certificate the gateway made up: refused, and why is audited.
    let forged = forge_user_cert(alice.home.path(), "bob", b);
    let (status, v) = gw.authorize("bob", &forged, TEST_LOGIN, "web1", "s-walk", &public);
    assert_eq!(status, 403, "{v}");
    let reasons: Vec<String> = audit_kinds(&ca, "gateway.refused")
        .iter()
        .map(|e| e["detail"]["reason"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("user certificate:") && r.contains("CA")),
        "{reasons:?}"
    );
    // The real certificate works.
    let (status, v) = gw.authorize("bob", &bob_cert, TEST_LOGIN, "web1", "s-walk", &public);
    assert_eq!(status, 200, "{v}");
}

#[test]
fn node_access_certificates_are_bound_to_the_gateways_egress_addresses() {
    let ca = Ca::start(&policy());
    let node = joined_node(&ca, "env=dev");
    let plain = Joined::join(&ca, "gateway", "gw1", "", None);
    let bound = Joined::join_with(
        &ca,
        "gateway",
        "gw2",
        "",
        None,
        &["127.0.0.1", "10.1.0.0/16"],
    );
    let (alice, cert) = logged_in(&ca, "alice");
    let (_, public) = ssh_key(alice.home.path(), "gate_ephemeral");
    let (status, v) = plain.authorize("alice", &cert, TEST_LOGIN, "web1", "s-plain", &public);
    assert_eq!(status, 200, "{v}");
    let described = describe_cert(alice.home.path(), v["certificate"].as_str().unwrap());
    assert!(!described.contains("source-address"), "{described}");
    let (status, v) = bound.authorize("alice", &cert, TEST_LOGIN, "web1", "s-bound", &public);
    assert_eq!(status, 200, "{v}");
    let described = describe_cert(alice.home.path(), v["certificate"].as_str().unwrap());
    assert!(
        described.contains("source-address 127.0.0.1,10.1.0.0/16"),
        "{described}"
    );
    // The servers exempt both gateways' addresses from sshd's penalties: gw1's as seen at its
    // join, gw2's as configured.
    let out = node.shim("sync");
    assert!(out.status.success(), "{}", text(&out));
    let b: Value =
        serde_json::from_slice(&std::fs::read(node.state().join("bundle.json")).unwrap()).unwrap();
    assert_eq!(b["gateway_addresses"], json!(["10.1.0.0/16", "127.0.0.1"]));
    // Egress addresses that are not IPs are refused at join.
    let (status, resp) = curl(
        &ca,
        "/v1/join",
        Some(
            json!({
                "token": ca.token("gateway", "gw3", ""), "name": "gw3",
                "host_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDbY6f2Hz4pfwbmUhtLbe/2lH+6uXkT/4I2l3wcDiAc9",
                "identity_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDbY6f2Hz4pfwbmUhtLbe/2lH+6uXkT/4I2l3wcDiAc9",
                "egress_addresses": ["gate.example.com"],
            })
            .to_string()
            .as_bytes(),
        ),
    );
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("invalid source address"), "{resp}");
    // Nor may a gateway claim a whole range of the Internet (every server would exempt it).
    let (status, resp) = curl(
        &ca,
        "/v1/join",
        Some(
            json!({
                "token": ca.token("gateway", "gw4", ""), "name": "gw4",
                "host_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDbY6f2Hz4pfwbmUhtLbe/2lH+6uXkT/4I2l3wcDiAc9",
                "identity_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDbY6f2Hz4pfwbmUhtLbe/2lH+6uXkT/4I2l3wcDiAc9",
                "egress_addresses": ["0.0.0.0/0"],
            })
            .to_string()
            .as_bytes(),
        ),
    );
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("wider than a /16"), "{resp}");
}

#[test]
fn regression_the_host_ca_signed_weak_host_keys_and_node_sync_took_a_gateway_identity() {
    let ca = Ca::start(&policy());
    let d = tempfile::tempdir().unwrap();
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
        .arg(d.path().join("rsa")));
    assert!(out.status.success(), "{}", text(&out));
    let rsa = std::fs::read_to_string(d.path().join("rsa.pub")).unwrap();
    let (status, resp) = curl(
        &ca,
        "/v1/join",
        Some(
            json!({
                "token": ca.token("node", "web9", ""), "name": "web9",
                "host_public_key": rsa.trim(),
                "identity_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDbY6f2Hz4pfwbmUhtLbe/2lH+6uXkT/4I2l3wcDiAc9",
            })
            .to_string()
            .as_bytes(),
        ),
    );
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("must be an Ed25519 key"), "{resp}");
    // A gateway's identity gets no server bundle (nor host-certificate renewals) from sync.
    let gw = Joined::join(&ca, "gateway", "gw1", "", None);
    let (status, resp) = gw.call("POST", "/v1/node/sync", Some(&json!({})));
    assert_eq!(status, 403, "{resp}");
    assert!(resp.contains("only a joined server may sync"), "{resp}");
}
