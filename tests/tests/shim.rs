//! User stories of postern-shim: a stock sshd joined to the cluster enforces per-server policy,
//! locks and the KRL, and reports sessions to the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::Command;
use std::time::Duration;

use postern_tests::{bin, run, text, Ca, Node, TEST_LOGIN};

fn policy() -> String {
    format!(
        r#"
[defaults]
user_cert_ttl = "1h"

[roles.dev]
logins = ["{TEST_LOGIN}"]
nodes = {{ env = "dev" }}

[roles.prod-root]
logins = ["root"]
nodes = {{ env = "prod" }}

[users.alice]
roles = ["dev", "prod-root"]
"#
    )
}

fn joined(ca: &Ca, labels: &str) -> Node {
    let token = ca.token("node", labels);
    let (mut node, out) = Node::join(ca, "web1", &token, &[]);
    assert!(out.status.success(), "join: {}", text(&out));
    node.start_sshd();
    node
}

#[test]
fn node_access_cert_logs_in_only_where_policy_allows_and_user_certs_are_refused() {
    let ca = Ca::start(&policy());
    let node = joined(&ca, "env=dev");
    let key = node.signed_key(&ca, "node-access", "alice", &[TEST_LOGIN, "root"]);

    let out = node.ssh(&key, TEST_LOGIN, "id -un");
    assert!(
        out.status.success(),
        "{}\nsshd:\n{}",
        text(&out),
        node.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), TEST_LOGIN);

    // root is allowed to alice only on env=prod servers.
    let out = node.ssh(&key, "root", "true");
    assert!(
        !out.status.success(),
        "root login accepted on env=dev: {}",
        text(&out)
    );

    // A certificate from the user CA is not trusted by servers.
    let user_key = node.signed_key(&ca, "user", "alice", &[TEST_LOGIN]);
    let out = node.ssh(&user_key, TEST_LOGIN, "true");
    assert!(
        !out.status.success(),
        "user-CA certificate accepted: {}",
        text(&out)
    );

    let nodes = ca.admin_json(&["nodes", "ls"]);
    assert_eq!(nodes[0]["name"], "web1");
    assert_eq!(nodes[0]["labels"], "env=dev");
}

#[test]
fn lock_refuses_after_sync_and_krl_refuses_in_sshd_itself() {
    let ca = Ca::start(&policy());
    let node = joined(&ca, "env=dev");
    let key = node.signed_key(&ca, "node-access", "alice", &[TEST_LOGIN]);
    assert!(
        node.ssh(&key, TEST_LOGIN, "true").status.success(),
        "{}",
        node.log()
    );

    let lock = ca.admin_json(&[
        "lock",
        "add",
        "--user",
        "alice",
        "--reason",
        "laptop stolen",
    ]);
    let out = node.shim("sync");
    assert!(out.status.success(), "{}", text(&out));
    let out = node.ssh(&key, TEST_LOGIN, "true");
    assert!(
        !out.status.success(),
        "locked user logged in: {}",
        text(&out)
    );
    // sshd itself refused the key by the KRL (before the principals command ran).
    assert!(
        node.log().contains("revoked"),
        "no KRL refusal in sshd's log:\n{}",
        node.log()
    );
    // Locks also stop issuance.
    let out = ca.admin(&[
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
    assert!(!out.status.success(), "{}", text(&out));

    let id = lock["id"].to_string();
    assert!(ca.admin(&["lock", "rm", &id]).status.success());
    assert!(node.shim("sync").status.success());
    let out = node.ssh(&key, TEST_LOGIN, "true");
    assert!(
        out.status.success(),
        "after lock rm: {}\n{}",
        text(&out),
        node.log()
    );
}

#[test]
fn login_lock_is_enforced_by_the_principals_command() {
    let ca = Ca::start(&policy());
    let node = joined(&ca, "env=dev");
    let key = node.signed_key(&ca, "node-access", "alice", &[TEST_LOGIN]);
    ca.admin_json(&[
        "lock",
        "add",
        "--login",
        TEST_LOGIN,
        "--reason",
        "maintenance",
    ]);
    assert!(node.shim("sync").status.success());
    let out = node.ssh(&key, TEST_LOGIN, "true");
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn expired_reused_and_malformed_tokens_are_refused_and_logged_nowhere() {
    let ca = Ca::start(&policy());
    let expired = ca.admin_json(&["tokens", "add", "--kind", "node", "--ttl", "1s"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    std::thread::sleep(Duration::from_secs(2));
    let (_n1, out) = Node::join(&ca, "web1", &expired, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token"),
        "{}",
        text(&out)
    );

    let good = ca.token("node", "env=dev");
    let (_n2, out) = Node::join(&ca, "web2", &good, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (_n3, out) = Node::join(&ca, "web3", &good, &[]);
    assert!(
        !out.status.success(),
        "a used token joined again: {}",
        text(&out)
    );

    let malformed = "zz$(reboot)'\"";
    let (_n4, out) = Node::join(&ca, "web4", malformed, &[]);
    assert!(!out.status.success());

    let audit = serde_json::to_string(&ca.audit()).unwrap();
    let reasons: Vec<String> = ca
        .audit()
        .iter()
        .filter(|e| e["kind"] == "join.failure")
        .map(|e| e["detail"]["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        reasons,
        [
            "expired token",
            "unknown or already used token",
            "malformed token"
        ]
    );
    for t in [&expired, &good, &malformed.to_owned()] {
        assert!(!ca.log().contains(t.as_str()), "token in posternd's log");
        assert!(!audit.contains(t.as_str()), "token in the audit log");
    }
}

#[test]
fn join_that_fails_sshd_check_leaves_the_configuration_as_it_was() {
    let ca = Ca::start(&policy());
    let token = ca.token("node", "env=dev");
    // sshd requires an absolute AuthorizedPrincipalsCommand: `sshd -t` fails on this drop-in.
    let (node, out) = Node::join(
        &ca,
        "web1",
        &token,
        &["--shim-path", "relative/postern-shim"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sshd -t rejected"), "{}", text(&out));
    assert!(
        err.contains("absolute path"),
        "sshd's own message is missing: {}",
        text(&out)
    );
    let dropins: Vec<_> = std::fs::read_dir(node.dir.path().join("sshd_config.d"))
        .unwrap()
        .collect();
    assert!(dropins.is_empty(), "drop-in left behind: {dropins:?}");
    let check = run(Command::new("/usr/sbin/sshd")
        .arg("-t")
        .arg("-f")
        .arg(node.dir.path().join("sshd_config")));
    // Without the drop-in this test config has no host key, which is what it had before.
    assert!(
        !String::from_utf8_lossy(&check.stderr).contains("absolute path"),
        "{}",
        text(&check)
    );
}

fn principals(node: &Node, args: &[OsString]) -> std::process::Output {
    run(Command::new(bin("postern-shim"))
        .arg("principals")
        .arg("--state-dir")
        .arg(node.state())
        .args(args))
}

#[test]
fn principals_command_survives_hostile_arguments_and_denies_bad_bundles() {
    let ca = Ca::start(&policy());
    let token = ca.token("node", "env=dev");
    let (node, out) = Node::join(&ca, "web1", &token, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let key = node.signed_key(&ca, "node-access", "alice", &[TEST_LOGIN]);
    let cert_line = std::fs::read_to_string(format!("{}-cert.pub", key.display())).unwrap();
    let mut parts = cert_line.split_whitespace();
    let (ktype, kb64) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
    );
    let cert = ssh_key_fields(&cert_line);
    let good: Vec<OsString> = vec![
        TEST_LOGIN.into(),
        kb64.into(),
        ktype.into(),
        cert.0.into(),
        cert.1.into(),
    ];

    let out = principals(&node, &good);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{TEST_LOGIN}\n")
    );

    let hostile: Vec<OsString> = vec![
        "with space".into(),
        "quo'te\"".into(),
        "$(touch /tmp/postern-pwned)".into(),
        "new\nline".into(),
        OsString::from_vec(vec![0xc3, 0x28, 0xff]),
        "x".repeat(64 * 1024).into(),
    ];
    for h in &hostile {
        for pos in 0..5 {
            let mut a = good.clone();
            a[pos] = h.clone();
            let out = principals(&node, &a);
            assert!(!out.status.success(), "accepted with {h:?} at {pos}");
            assert!(out.stdout.is_empty(), "printed something for {h:?}");
            assert!(
                !String::from_utf8_lossy(&out.stderr).contains("panicked"),
                "{}",
                text(&out)
            );
        }
    }
    assert!(!std::path::Path::new("/tmp/postern-pwned").exists());

    // A corrupt bundle denies.
    let bundle = node.state().join("bundle.json");
    let original = std::fs::read_to_string(&bundle).unwrap();
    std::fs::write(&bundle, &original[..original.len() / 2]).unwrap();
    let out = principals(&node, &good);
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "{}",
        text(&out)
    );
    // A stale bundle denies.
    let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
    v["generated_at"] = serde_json::json!(postern_tests::now() - 2 * 86_400);
    std::fs::write(&bundle, v.to_string()).unwrap();
    let out = principals(&node, &good);
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "{}",
        text(&out)
    );
    // A missing bundle denies.
    std::fs::remove_file(&bundle).unwrap();
    assert!(!principals(&node, &good).status.success());
}

/// (key id, serial) of a certificate line, read by ssh-keygen -L.
fn ssh_key_fields(line: &str) -> (String, String) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), line).unwrap();
    let out = run(Command::new("ssh-keygen").arg("-L").arg("-f").arg(f.path()));
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    let id = t
        .lines()
        .find_map(|l| l.trim().strip_prefix("Key ID: "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let serial = t
        .lines()
        .find_map(|l| l.trim().strip_prefix("Serial: "))
        .unwrap()
        .to_owned();
    (id, serial)
}

fn session_events(ca: &Ca) -> Vec<(String, String)> {
    ca.audit()
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("session."))
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn session_events_reach_the_audit_log_also_when_the_ca_was_down() {
    let mut ca = Ca::start(&policy());
    let node = joined(&ca, "env=dev");
    let key = node.signed_key(&ca, "node-access", "alice", &[TEST_LOGIN]);
    let out = node.ssh(&key, TEST_LOGIN, "true");
    assert!(out.status.success(), "{}\n{}", text(&out), node.log());
    let want = vec![
        ("session.open".to_owned(), "alice".to_owned()),
        ("session.close".to_owned(), "alice".to_owned()),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while session_events(&ca) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "events: {:?}\n{}",
            session_events(&ca),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    ca.stop();
    let out = node.ssh(&key, TEST_LOGIN, "true");
    assert!(
        out.status.success(),
        "login failed while the CA was down: {}\n{}",
        text(&out),
        node.log()
    );
    // sshd closes the PAM session after the client has gone: wait for the second event.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(node.state().join("spool"))
        .unwrap()
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "open and close were not both spooled"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    ca.spawn();
    let out = node.shim("sync");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 spooled events delivered"),
        "{}",
        text(&out)
    );
    assert_eq!(session_events(&ca).len(), 4);
    assert_eq!(
        std::fs::read_dir(node.state().join("spool"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn sync_renews_the_host_certificate_when_a_third_of_its_life_is_left() {
    let ca = Ca::start(&policy().replace(
        "user_cert_ttl = \"1h\"",
        "user_cert_ttl = \"1h\"\nhost_cert_ttl = \"9s\"",
    ));
    let token = ca.token("node", "env=dev");
    let (node, out) = Node::join(&ca, "web1", &token, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let cert = node.state().join("ssh_host_ed25519_key-cert.pub");
    let first = std::fs::read_to_string(&cert).unwrap();
    // More than a third left: no renewal.
    let out = node.shim("sync");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("renewed"),
        "{}",
        text(&out)
    );
    std::thread::sleep(Duration::from_millis(6500));
    let out = node.shim("sync");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("host certificate renewed"),
        "{}",
        text(&out)
    );
    assert_ne!(first, std::fs::read_to_string(&cert).unwrap());
}

#[test]
fn removed_node_can_no_longer_sync_and_status_says_what_it_has() {
    let ca = Ca::start(&policy());
    let token = ca.token("node", "env=dev,team=web");
    let (node, out) = Node::join(&ca, "web1", &token, &["--labels", "env=prod,zone=a"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(node.shim("status").status.success());
    let st = run(Command::new(bin("postern-shim"))
        .args(["status", "--json", "--state-dir"])
        .arg(node.state()));
    assert!(st.status.success(), "{}", text(&st));
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["name"], "web1");
    // The token's labels win over what the node asked for.
    assert_eq!(v["labels"], "env=dev,team=web,zone=a");
    assert_eq!(v["bundle_stale"], false);

    assert!(ca.admin(&["nodes", "rm", "web1"]).status.success());
    let out = node.shim("sync");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("join"),
        "{}",
        text(&out)
    );
}
