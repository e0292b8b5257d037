//! User stories of postern-shim: a stock sshd joined to the cluster enforces per-server policy,
//! locks and the KRL, and reports sessions to the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::Command;
use std::time::Duration;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use postern_tests::{bin, run, text, Ca, Distro, Node, TEST_LOGIN};

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
    let token = ca.token("node", "web1", labels);
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
    node.assert_shim_denied(
        &key,
        "root",
        "user alice may not log in as root on this server (labels env=dev)",
    );

    // A certificate from the user CA is not trusted by servers.
    let user_key = node.signed_key(&ca, "user", "alice", &[TEST_LOGIN]);
    let out = node.ssh(&user_key, TEST_LOGIN, "true");
    assert!(
        !out.status.success(),
        "user-CA certificate accepted: {}",
        text(&out)
    );
    // sshd trusts only the node-access CA: it refuses this one before the shim is asked.
    node.assert_refused_before_the_shim(&user_key, TEST_LOGIN);

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
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("user alice is locked"),
        "{}",
        text(&out)
    );

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
    node.assert_shim_denied(
        &key,
        TEST_LOGIN,
        &format!("locked (login {TEST_LOGIN}): maintenance"),
    );
}

#[test]
fn expired_reused_and_malformed_tokens_are_refused_and_logged_nowhere() {
    let mut ca = Ca::start(&policy());
    let expired = ca.admin_json(&[
        "tokens", "add", "--kind", "node", "--name", "web1", "--ttl", "1s",
    ])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    std::thread::sleep(Duration::from_secs(2));
    let (_n1, out) = Node::join(&ca, "web1", &expired, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("join refused: invalid, expired or already used token"),
        "{}",
        text(&out)
    );

    let good = ca.token("node", "web2", "env=dev");
    let (_n2, out) = Node::join(&ca, "web2", &good, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (_n3, out) = Node::join(&ca, "web3", &good, &[]);
    assert!(
        !out.status.success(),
        "a used token joined again: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("join refused: invalid, expired or already used token"),
        "{}",
        text(&out)
    );

    let malformed = "zz$(reboot)'\"";
    let (_n4, out) = Node::join(&ca, "web4", malformed, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("join refused: invalid, expired or already used token"),
        "{}",
        text(&out)
    );

    // Failed joins are counted per source and minute (`auth.failures`), written at the
    // latest when the daemon stops.
    ca.terminate();
    ca.spawn();
    let audit = serde_json::to_string(&ca.audit()).unwrap();
    let mut reasons = std::collections::BTreeMap::<String, u64>::new();
    for e in ca
        .audit()
        .iter()
        .filter(|e| e["kind"] == "auth.failures" && e["detail"]["kind"] == "join")
    {
        for (r, n) in e["detail"]["reasons"].as_object().unwrap() {
            *reasons.entry(r.clone()).or_default() += n.as_u64().unwrap();
        }
    }
    assert_eq!(
        reasons,
        [
            ("expired token".to_owned(), 1),
            ("malformed token".to_owned(), 1),
            ("unknown or already used token".to_owned(), 1)
        ]
        .into()
    );
    for t in [&expired, &good, &malformed.to_owned()] {
        assert!(!ca.log().contains(t.as_str()), "token in posternd's log");
        assert!(!audit.contains(t.as_str()), "token in the audit log");
    }
}

#[test]
fn join_that_fails_sshd_check_leaves_the_configuration_as_it_was() {
    let ca = Ca::start(&policy());
    let token = ca.token("node", "web1", "env=dev");
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
    let token = ca.token("node", "web1", "env=dev");
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
            // Denied by the decision, not by a crash or a missing binary.
            assert!(
                !postern_tests::shim_logs_to_stderr()
                    || String::from_utf8_lossy(&out.stderr).contains("postern-shim: deny login "),
                "{h:?} at {pos}: {}",
                text(&out)
            );
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
    assert_denial_names(&out, "is corrupt");
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
    assert!(
        !postern_tests::shim_logs_to_stderr()
            || String::from_utf8_lossy(&out.stderr).contains("s old, older than max_bundle_age"),
        "the denial does not say the bundle is stale: {}",
        text(&out)
    );
    // A missing bundle denies.
    std::fs::remove_file(&bundle).unwrap();
    let out = principals(&node, &good);
    assert!(!out.status.success(), "{}", text(&out));
    assert_denial_names(&out, "cannot read");
}

/// The shim logs to syslog, and to stderr when syslog is unreachable (no /dev/log, as on the
/// test machines): there its denial names why the bundle could not be used
/// (regression: "no valid policy bundle" alone, seen once in a flaky Debian 13 story, did not
/// tell a missing bundle from an unreadable or corrupt one).
fn assert_denial_names(out: &std::process::Output, why: &str) {
    if std::path::Path::new("/dev/log").exists() {
        return;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no valid policy bundle") && err.contains(why),
        "the denial does not say why ({why}): {err}"
    );
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
            // Reported by the server (the actor); the user is the server's claim, in the detail.
            assert!(e["actor"].as_str().unwrap().starts_with("node:"), "{e}");
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["detail"]["user"].as_str().unwrap().to_owned(),
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
    let token = ca.token("node", "web1", "env=dev");
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
    let token = ca.token("node", "web1", "env=dev,team=web");
    // The token's labels are the node's complete label set: a node asking for others is
    // refused (the token stays usable), one asking for a subset of them joins with all.
    let (_refused, out) = Node::join(&ca, "web1", &token, &["--labels", "env=prod,zone=a"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("the token sets this node's labels (env=dev,team=web); it does not give env=prod,zone=a"),
        "{}",
        text(&out)
    );
    let (node, out) = Node::join(&ca, "web1", &token, &["--labels", "env=dev"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(node.shim("status").status.success());
    let st = run(Command::new(bin("postern-shim"))
        .args(["status", "--json", "--state-dir"])
        .arg(node.state()));
    assert!(st.status.success(), "{}", text(&st));
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["name"], "web1");
    assert_eq!(v["labels"], "env=dev,team=web");
    assert_eq!(v["bundle_stale"], false);

    assert!(ca.admin(&["nodes", "rm", "web1"]).status.success());
    let out = node.shim("sync");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "this node's identity is not valid (removed or re-joined); run `postern-shim join` again"
        ),
        "{}",
        text(&out)
    );
}

/// `nodes ls` as (name, kind, address).
fn inventory(ca: &Ca) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for kind in ["nodes", "gateways"] {
        for n in ca.admin_json(&[kind, "ls"]).as_array().unwrap() {
            out.push((
                n["name"].as_str().unwrap().to_owned(),
                n["kind"].as_str().unwrap_or(kind).to_owned(),
                n["address"].as_str().unwrap_or("-").to_owned(),
            ));
        }
    }
    out.sort();
    out
}

fn refusals(ca: &Ca) -> Vec<String> {
    ca.audit()
        .iter()
        .filter(|e| e["kind"] == "join.refused")
        .map(|e| e["detail"]["reason"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn regression_any_join_token_took_over_any_name() {
    // Before, a token meant for a dev box joined as `db-prod` with another address, revoking
    // and replacing the real db-prod, which then received its users' sessions.
    let ca = Ca::start(&policy());
    let prod = ca.token("node", "db-prod", "env=prod");
    let (db_prod, out) = Node::join(&ca, "db-prod", &prod, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let before = inventory(&ca);
    let db_addr = before[0].2.clone();

    let dev = ca.token("node", "dev1", "env=dev");
    let (_evil, out) = Node::join(&ca, "db-prod", &dev, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("join refused: this token is for the name \"dev1\", not \"db-prod\""),
        "{}",
        text(&out)
    );
    // The same token for its own name, but the name is taken: needs --replace.
    let again = ca.token("node", "db-prod", "env=prod");
    let (_evil2, out) = Node::join(&ca, "db-prod", &again, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "a node named \"db-prod\" is already joined; replacing it needs a token made with `posternd tokens add --kind node --name db-prod --replace`"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(
        inventory(&ca),
        before,
        "the refused joins changed the inventory"
    );
    assert_eq!(before[0].2, db_addr);
    // The real db-prod keeps working: its identity was not revoked.
    let out = db_prod.shim("sync");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        refusals(&ca),
        [
            "this token is for the name \"dev1\", not \"db-prod\"",
            "a node named \"db-prod\" is already joined; replacing it needs a token made with `posternd tokens add --kind node --name db-prod --replace`",
        ]
    );
    // The refused tokens were not spent: the dev token still joins dev1.
    let (_dev1, out) = Node::join(&ca, "dev1", &dev, &[]);
    assert!(out.status.success(), "{}", text(&out));

    // An admin's --replace token replaces it, and the old identity stops working.
    let replace = ca.token_with("node", "db-prod", "env=prod", &["--replace"]);
    let (_new, out) = Node::join(&ca, "db-prod", &replace, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = db_prod.shim("sync");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("this node's identity is not valid (removed or re-joined)"),
        "{}",
        text(&out)
    );
}

#[test]
fn regression_a_node_token_revoked_the_gateway_and_the_reverse() {
    let ca = Ca::start(&policy());
    let _gate = postern_tests::Gate::joined(&ca, postern_tests::Gate::reserve_port());
    let web = ca.token("node", "web1", "env=dev");
    let (_web1, out) = Node::join(&ca, "web1", &web, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let before = inventory(&ca);

    // Even with --replace, a node token never takes a gateway's name.
    let t = ca.token_with("node", "gate1", "", &["--replace"]);
    let (_n, out) = Node::join(&ca, "gate1", &t, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "the name \"gate1\" belongs to a gateway, and a node never replaces a gateway"
        ),
        "{}",
        text(&out)
    );
    // Nor a gateway token a server's.
    let t = ca.token_with("gateway", "web1", "", &["--replace"]);
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(bin("postern-gate"))
        .args(["join", "--ca", &ca.url, "--ca-pin", &ca.pin, "--token", &t])
        .args(["--name", "web1", "--address", "127.0.0.1:1", "--state-dir"])
        .arg(dir.path()));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out)
            .contains("the name \"web1\" belongs to a node, and a gateway never replaces a node"),
        "{}",
        text(&out)
    );
    assert_eq!(inventory(&ca), before);
    assert_eq!(refusals(&ca).len(), 2);
}

/// A plain key (no certificate) planted in `login`'s `~/.ssh/authorized_keys` on the node's
/// system, as the user could do over sftp; removed again on drop.
struct Planted(PathBuf);

impl Planted {
    fn new(node: &Node, login: &str, public: &str) -> Planted {
        let home = node
            .dir
            .path()
            .ancestors()
            .nth(2)
            .unwrap()
            .join("home")
            .join(login);
        let home = if node.distro == Distro::Debian12 {
            PathBuf::from("/home").join(login)
        } else {
            home
        };
        let ssh = home.join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let file = ssh.join("authorized_keys");
        std::fs::write(&file, public).unwrap();
        for p in [&ssh, &file] {
            let out = run(Command::new("chown")
                .arg(format!("--reference={}", home.display()))
                .arg(p));
            assert!(out.status.success(), "{}", text(&out));
        }
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        Planted(file)
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The methods sshd offers after `none`, as ssh -v reports them.
fn offered_methods(node: &Node, key: &std::path::Path) -> String {
    let out = run(Command::new("ssh")
        .env_remove("SSH_AUTH_SOCK")
        .args([
            "-v",
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .arg("-i")
        .arg(key)
        .args([
            "-p",
            &node.port.to_string(),
            "-l",
            TEST_LOGIN,
            "127.0.0.1",
            "true",
        ]));
    let all = text(&out);
    all.lines()
        .find_map(|l| {
            l.split_once("Authentications that can continue: ")
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("ssh -v printed no methods: {all}"))
}

fn regression_planted_authorized_keys_and_passwords_bypassed_the_gateway(distro: Distro) {
    // Debian's sshd_config keeps AuthorizedKeysFile .ssh/authorized_keys(2) and password
    // logins; the drop-in set neither, so a key planted over sftp logged in directly: no
    // recording, no lock, no KRL.
    let ca = Ca::start(&policy());
    let token = ca.token("node", "web1", "env=dev");
    let (mut node, out) = Node::join_on(distro, &ca, "web1", &token, &[]);
    assert!(out.status.success(), "join: {}", text(&out));
    node.start_sshd();
    let key = node.dir.path().join("planted");
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "planted", "-f"])
        .arg(&key));
    assert!(out.status.success(), "{}", text(&out));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let fingerprint = String::from_utf8_lossy(
        &run(Command::new("ssh-keygen")
            .arg("-lf")
            .arg(key.with_extension("pub")))
        .stdout,
    )
    .split_whitespace()
    .nth(1)
    .unwrap()
    .to_owned();
    let _planted = Planted::new(&node, TEST_LOGIN, &public);

    let out = node.ssh(&key, TEST_LOGIN, "true");
    assert!(
        !out.status.success(),
        "a planted key logged in: {}",
        text(&out)
    );
    // Why: sshd looked the key up and found it nowhere (AuthorizedKeysFile none).
    let log = node.log();
    assert!(
        log.contains(&format!("Failed publickey for {TEST_LOGIN} from 127.0.0.1"))
            && log.contains(&fingerprint),
        "sshd did not refuse the planted key itself:\n{log}"
    );
    assert_eq!(
        offered_methods(&node, &key),
        "publickey",
        "sshd offers passwords"
    );
    let st = node.shim("status");
    assert!(
        text(&st).contains("local auth:    refused"),
        "{}",
        text(&st)
    );

    // The same server joined with --keep-local-auth: the planted key works, join warns and
    // status says so. (This is what every joined server did before.)
    let token = ca.token("node", "web2", "env=dev");
    let mut kept = Node::prepare(distro, "web2", |c| c);
    let out = kept.run_join(&ca, &token, &["--keep-local-auth"]);
    assert!(out.status.success(), "join: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning: --keep-local-auth"),
        "{}",
        text(&out)
    );
    kept.start_sshd();
    let out = kept.ssh(&key, TEST_LOGIN, "echo planted-key-works");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("planted-key-works"),
        "{}\n{}",
        text(&out),
        kept.log()
    );
    assert!(offered_methods(&kept, &key).contains("password"));
    let st = kept.shim("status");
    assert!(text(&st).contains("local auth:    KEPT"), "{}", text(&st));
}

#[test]
fn regression_planted_authorized_keys_and_passwords_bypassed_the_gateway_debian12() {
    regression_planted_authorized_keys_and_passwords_bypassed_the_gateway(Distro::Debian12);
}

#[test]
fn regression_planted_authorized_keys_and_passwords_bypassed_the_gateway_debian13() {
    regression_planted_authorized_keys_and_passwords_bypassed_the_gateway(Distro::Debian13);
}

fn regression_an_earlier_sshd_config_line_overrode_the_drop_in(distro: Distro) {
    // sshd keeps the first value it reads: lines above Debian's Include beat the drop-in.
    let ca = Ca::start(&policy());
    let token = ca.token("node", "web1", "env=dev");
    let node = Node::prepare(distro, "web1", |c| {
        format!(
            "PasswordAuthentication yes\nAuthorizedKeysFile .ssh/authorized_keys\n\
             AuthorizedKeysCommand /bin/true\nAuthorizedKeysCommandUser nobody\n\
             HostbasedAuthentication yes\n{c}"
        )
    });
    let out = node.run_join(&ca, &token, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "sshd's effective configuration",
        "AuthorizedKeysFile: effective value \".ssh/authorized_keys\", Postern needs \"none\"",
        "PasswordAuthentication: effective value \"yes\", Postern needs \"no\"",
        // An authorized-keys command (sss_ssh_authorizedkeys, ec2-instance-connect) and
        // host-based trust are ways in too.
        "AuthorizedKeysCommand: effective value \"/bin/true\", Postern needs \"none\"",
        "HostbasedAuthentication: effective value \"yes\", Postern needs \"no\"",
    ] {
        assert!(err.contains(want), "{want:?} missing: {err}");
    }
    let dropins: Vec<_> = std::fs::read_dir(node.dir.path().join("sshd_config.d"))
        .unwrap()
        .collect();
    assert!(dropins.is_empty(), "drop-in left behind: {dropins:?}");
}

#[test]
fn regression_an_earlier_sshd_config_line_overrode_the_drop_in_debian12() {
    regression_an_earlier_sshd_config_line_overrode_the_drop_in(Distro::Debian12);
}

#[test]
fn regression_an_earlier_sshd_config_line_overrode_the_drop_in_debian13() {
    regression_an_earlier_sshd_config_line_overrode_the_drop_in(Distro::Debian13);
}

fn regression_a_match_block_reopened_passwords_for_some_connections(distro: Distro) {
    // `sshd -T` without connection parameters does not evaluate Match blocks: one after the
    // Include that turns passwords back on passed join's check.
    let ca = Ca::start(&policy());
    let token = ca.token("node", "web1", "env=dev");
    let node = Node::prepare(distro, "web1", |c| {
        format!("{c}\nMatch Address 10.0.0.0/8\n    PasswordAuthentication yes\n")
    });
    let out = node.run_join(&ca, &token, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in a Match block, ") && err.contains(": PasswordAuthentication yes"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(node.dir.path().join("sshd_config.d"))
            .unwrap()
            .next()
            .is_none(),
        "drop-in left behind"
    );
}

#[test]
fn regression_a_match_block_reopened_passwords_for_some_connections_debian12() {
    regression_a_match_block_reopened_passwords_for_some_connections(Distro::Debian12);
}

#[test]
fn regression_a_match_block_reopened_passwords_for_some_connections_debian13() {
    regression_a_match_block_reopened_passwords_for_some_connections(Distro::Debian13);
}

#[test]
fn regression_a_later_config_change_reopened_a_way_in_unnoticed() {
    // After join, a drop-in that sorts before Postern's (a package's, cloud-init's) turned
    // passwords back on; sync and status kept saying all was well.
    let ca = Ca::start(&policy());
    let token = ca.token("node", "web1", "env=dev");
    let (node, out) = Node::join(&ca, "web1", &token, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(node.shim("sync").status.success());
    std::fs::write(
        node.dir.path().join("sshd_config.d/10-cloud.conf"),
        "PasswordAuthentication yes\n",
    )
    .unwrap();
    let out = node.shim("sync");
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no longer is what Postern relies on")
            && err.contains("PasswordAuthentication: effective value \"yes\""),
        "{err}"
    );
    // The bundle was still installed: the server keeps enforcing policy and locks.
    assert!(err.contains("bundle installed"), "{err}");
}

#[test]
fn regression_an_option_on_sshds_command_line_overrode_the_drop_in() {
    // Debian's unit runs `sshd -D $SSHD_OPTS`: a `-o PasswordAuthentication=yes` from
    // /etc/default/ssh wins over every file, and `sshd -T -f sshd_config` did not see it.
    let ca = Ca::start(&policy());
    let token = ca.token("node", "web1", "env=dev");
    let (mut node, out) = Node::join(&ca, "web1", &token, &[]);
    assert!(out.status.success(), "{}", text(&out));
    node.start_sshd_with(&["-o", "PasswordAuthentication=yes"]);
    let out = node.shim("sync");
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PasswordAuthentication: effective value \"yes\""),
        "{err}"
    );
}
