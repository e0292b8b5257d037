//! User stories of the foundation: enrol, log in with password + TOTP, use the written
//! certificate with stock ssh against stock sshd, renew, and every refusal with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use postern_tests::{bin, curl, run, text, Ca, Person, Sshd, TEST_LOGIN};

fn policy(extra_defaults: &str) -> String {
    format!(
        r#"
[defaults]
user_cert_ttl = "1h"
max_user_cert_ttl = "24h"
{extra_defaults}

[roles.dev]
logins = ["{TEST_LOGIN}", "deploy"]
nodes = {{ "*" = "*" }}
permit = ["pty"]

[roles.own]
logins = ["{{user}}"]
nodes = {{ "*" = "*" }}

[users.alice]
roles = ["dev"]
[users.bob]
roles = ["dev"]
[users.carol]
roles = ["dev"]
[users.dave]
roles = ["dev"]
[users.erin]
roles = []
[users."frank@corp"]
roles = ["own"]
"#
    )
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn login_writes_certificate_that_stock_ssh_uses_against_stock_sshd() {
    let ca = Ca::start(&policy(""));
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    alice.login(&ca);

    let dir = alice.cluster_dir(&ca);
    let key_mode = std::fs::metadata(dir.join("id_ed25519"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let config = std::fs::read_to_string(alice.home.path().join(".ssh/config")).unwrap();
    assert!(config.starts_with("Include "), "{config}");

    // ssh-keygen -L shows what the policy says: principals, key id and a 1h window.
    let out = run(Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(dir.join("id_ed25519-cert.pub")));
    assert!(out.status.success(), "{}", text(&out));
    let l = String::from_utf8_lossy(&out.stdout);
    assert!(l.contains("Key ID: \"alice\""), "{l}");
    let principals: Vec<&str> = l
        .lines()
        .skip_while(|x| !x.contains("Principals:"))
        .skip(1)
        .take_while(|x| !x.contains("Critical Options:"))
        .map(str::trim)
        .collect();
    assert_eq!(principals, ["deploy", TEST_LOGIN]);
    assert!(l.contains("permit-pty"), "{l}");
    assert!(!l.contains("permit-port-forwarding"), "{l}");
    let cert = std::fs::read_to_string(dir.join("id_ed25519-cert.pub")).unwrap();
    let cert = ssh_cert_window(&cert);
    assert_eq!(
        cert.1 - cert.0,
        3600 + 60,
        "1h plus the one-minute backdating"
    );

    let user_ca = ca.admin_json(&["ca", "export", "user"])["keys"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let sshd = Sshd::start(&user_ca);
    let out = sshd.ssh(&alice, &ca, TEST_LOGIN, "echo hello-from-$(id -un)");
    assert!(
        out.status.success(),
        "{}\nsshd log:\n{}",
        text(&out),
        sshd.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("hello-from-{TEST_LOGIN}")
    );
    // The server logged the certificate's key id and serial.
    assert!(sshd.log().contains("ID alice (serial"), "{}", sshd.log());

    // A login the certificate does not carry is refused by sshd.
    let out = sshd.ssh(&alice, &ca, "root", "true");
    assert!(!out.status.success(), "{}", text(&out));
    let why = "Certificate invalid: name is not a listed principal";
    let log = sshd.log_when(|l| l.contains(why));
    assert!(log.contains(why), "{log}");

    // The audit log has the login and the issued certificate.
    let kinds: Vec<String> = ca
        .audit()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert!(kinds.contains(&"login.success".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"cert.issued".to_owned()), "{kinds:?}");
}

/// (valid_after, valid_before) of an OpenSSH certificate line, read by ssh-keygen.
fn ssh_cert_window(line: &str) -> (i64, i64) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), line).unwrap();
    let out = run(Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(f.path())
        .env("TZ", "UTC"));
    let l = String::from_utf8_lossy(&out.stdout);
    let valid = l
        .lines()
        .find(|x| x.trim_start().starts_with("Valid:"))
        .unwrap();
    // "Valid: from 2026-11-23T19:00:00 to 2026-11-23T20:01:00"
    let parts: Vec<&str> = valid.split_whitespace().collect();
    let parse = |s: &str| {
        let out = run(Command::new("date").args(["-u", "-d", s, "+%s"]));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    (parse(parts[2]), parse(parts[4]))
}

#[test]
fn refuses_wrong_password_wrong_code_and_replayed_code() {
    let mut ca = Ca::start(&policy(""));
    let mut bob = Person::new("bob");
    bob.enroll(&ca);

    let code = bob.fresh_code();
    let out = bob.login_with(&ca, "not the password", &code, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid credentials"),
        "{}",
        text(&out)
    );

    let pw = bob.password.clone();
    let out = bob.login_with(&ca, &pw, "000000", &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid credentials"),
        "{}",
        text(&out)
    );

    // The same code works once, and never again.
    let out = bob.login_with(&ca, &pw, &code, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = bob.login_with(&ca, &pw, &code, &[]);
    assert!(
        !out.status.success(),
        "a replayed code was accepted: {}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("invalid credentials"),
        "{}",
        text(&out)
    );

    // Failed logins are counted per source and minute (`auth.failures`), written at the
    // latest when the daemon stops.
    ca.terminate();
    ca.spawn();
    let mut reasons = std::collections::BTreeMap::<String, u64>::new();
    for e in ca
        .audit()
        .iter()
        .filter(|e| e["kind"] == "auth.failures" && e["detail"]["kind"] == "login")
    {
        assert_eq!(e["detail"]["users"]["bob"], e["detail"]["count"], "{e:#}");
        for (r, n) in e["detail"]["reasons"].as_object().unwrap() {
            *reasons.entry(r.clone()).or_default() += n.as_u64().unwrap();
        }
    }
    assert_eq!(
        reasons,
        [
            ("replayed one-time code".to_owned(), 1),
            ("wrong one-time code".to_owned(), 1),
            ("wrong password".to_owned(), 1)
        ]
        .into()
    );
    // Secrets never reach the daemon's log.
    assert!(!ca.log().contains(&pw), "password in log");
}

#[test]
fn sixth_try_is_refused_as_locked_and_unknown_users_look_the_same() {
    let ca = Ca::start(&policy(""));
    let mut carol = Person::new("carol");
    carol.enroll(&ca);
    let pw = carol.password.clone();
    let mut ghost = Person::new("nosuchuser");
    for i in 0..5 {
        let code = carol.code_at_step(postern_tests::now() / 30);
        let a = carol.login_with(&ca, "wrong password", &code, &[]);
        let b = ghost.login_with(&ca, "wrong password", "123456", &[]);
        assert_eq!(a.status.code(), b.status.code(), "try {i}");
        assert!(stderr(&a).contains("invalid credentials"), "{}", text(&a));
        assert!(stderr(&b).contains("invalid credentials"), "{}", text(&b));
    }
    let code = carol.fresh_code();
    let out = carol.login_with(&ca, &pw, &code, &[]);
    assert!(!out.status.success(), "sixth try accepted: {}", text(&out));
    assert!(stderr(&out).contains("locked"), "{}", text(&out));
    let out = ghost.login_with(&ca, "wrong password", "123456", &[]);
    assert!(
        stderr(&out).contains("locked"),
        "unknown user differs: {}",
        text(&out)
    );
}

#[test]
fn refuses_user_without_roles_and_unsafe_principal() {
    let ca = Ca::start(&policy(""));
    let mut erin = Person::new("erin");
    erin.enroll(&ca);
    let code = erin.fresh_code();
    let pw = erin.password.clone();
    let out = erin.login_with(&ca, &pw, &code, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("has no roles"), "{}", text(&out));

    let mut frank = Person::new("frank@corp");
    frank.enroll(&ca);
    let code = frank.fresh_code();
    let pw = frank.password.clone();
    let out = frank.login_with(&ca, &pw, &code, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a safe login name"),
        "{}",
        text(&out)
    );
    assert!(!frank.cluster_dir(&ca).join("id_ed25519-cert.pub").exists());
}

#[test]
fn ttl_above_the_cap_is_capped_and_the_cli_says_so() {
    let ca = Ca::start(&policy(""));
    let mut dave = Person::new("dave");
    dave.enroll(&ca);
    let code = dave.fresh_code();
    let pw = dave.password.clone();
    let out = dave.login_with(&ca, &pw, &code, &["--ttl", "48h"]);
    assert!(out.status.success(), "{}", text(&out));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(all.contains("capped"), "{all}");
    let cert = std::fs::read_to_string(dave.cluster_dir(&ca).join("id_ed25519-cert.pub")).unwrap();
    let (a, b) = ssh_cert_window(&cert);
    assert_eq!(b - a, 24 * 3600 + 60);
}

#[test]
fn renew_needs_no_password_and_is_refused_after_renew_until() {
    let ca = Ca::start(&policy("renew_until = \"8s\""));
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    alice.login(&ca);
    let cert_path = alice.cluster_dir(&ca).join("id_ed25519-cert.pub");
    let before = std::fs::read_to_string(&cert_path).unwrap();
    let out = run(alice.postern().arg("renew"));
    assert!(out.status.success(), "{}", text(&out));
    let after = std::fs::read_to_string(&cert_path).unwrap();
    assert_ne!(before, after, "renew wrote no new certificate");
    // regression: renewal issued a certificate for the whole user_cert_ttl (1h), valid long
    // past renew_until. Neither the login's nor the renewal's may outlive the window (valid
    // from is backdated 60 s for clock skew).
    for cert in [&before, &after] {
        let (a, b) = ssh_cert_window(cert);
        assert!(b - a <= 60 + 8, "valid for {}s past its start", b - a);
    }
    std::thread::sleep(std::time::Duration::from_secs(9));
    let out = run(alice.postern().arg("renew"));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(stderr(&out).contains("postern login"), "{}", text(&out));
}

#[test]
fn removed_user_can_neither_log_in_nor_renew() {
    let ca = Ca::start(&policy(""));
    let mut bob = Person::new("bob");
    bob.enroll(&ca);
    bob.login(&ca);
    let out = ca.admin(&["users", "rm", "bob"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(bob.postern().arg("renew"));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(stderr(&out).contains("postern login"), "{}", text(&out));
    let code = bob.fresh_code();
    let pw = bob.password.clone();
    let out = bob.login_with(&ca, &pw, &code, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid credentials"),
        "{}",
        text(&out)
    );
}

#[test]
fn second_login_needs_no_flags() {
    let ca = Ca::start(&policy(""));
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    alice.login(&ca);
    let code = alice.fresh_code();
    let out = postern_tests::run_with_input(
        alice
            .postern()
            .args(["login", "--password-stdin", "--otp", &code]),
        &format!("{}\n", alice.password),
    );
    assert!(out.status.success(), "{}", text(&out));
    let config = std::fs::read_to_string(alice.home.path().join(".ssh/config")).unwrap();
    assert_eq!(config.matches("Include ").count(), 1, "{config}");
}

#[test]
fn bad_policy_edit_is_reported_with_position_and_the_old_policy_stays() {
    let ca = Ca::start(&policy(""));
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    let good = std::fs::read_to_string(ca.dir.path().join("policy.toml")).unwrap();
    ca.set_policy(&format!(
        "{good}\n[roles.broken]\nlogins = [\"x\"]\nbogus_key = true\n"
    ));
    let bad_line = good.lines().count() + 4;
    // check-config names file, line and column.
    let out = ca.admin(&["check-config"]);
    assert!(!out.status.success());
    let want = format!("policy.toml:{bad_line}:1: ");
    assert!(stderr(&out).contains(&want), "{want} not in {}", text(&out));
    assert!(stderr(&out).contains("bogus_key"), "{}", text(&out));
    // The running daemon says the same and keeps the old policy: alice can still log in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ca.log().contains(&want) {
        assert!(
            std::time::Instant::now() < deadline,
            "no rejection logged:\n{}",
            ca.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    alice.login(&ca);
    assert!(ca.audit().iter().any(|e| e["kind"] == "policy.rejected"));
}

#[test]
fn serve_refuses_a_ca_key_of_mode_0644() {
    let ca = Ca::init(&policy(""));
    let key = ca.dir.path().join("ca/user_ca");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(Command::new(bin("posternd"))
        .arg("serve")
        .arg("--config")
        .arg(ca.config()));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("mode 0644"), "{}", text(&out));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(
        ca.dir.path().join("ca"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = run(Command::new(bin("posternd"))
        .arg("check-config")
        .arg("--config")
        .arg(ca.config()));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("mode 0755"), "{}", text(&out));
}

#[test]
fn init_refuses_to_overwrite_an_existing_ca() {
    let ca = Ca::init(&policy(""));
    let before = std::fs::read(ca.dir.path().join("ca/user_ca")).unwrap();
    let out = run(Command::new(bin("posternd"))
        .args(["init", "--cluster", "other.test", "--data-dir"])
        .arg(ca.dir.path()));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refusing to overwrite"),
        "{}",
        text(&out)
    );
    assert_eq!(
        before,
        std::fs::read(ca.dir.path().join("ca/user_ca")).unwrap()
    );
}

#[test]
fn malformed_and_oversized_api_requests_get_clear_errors() {
    let ca = Ca::start(&policy(""));
    let cases: &[(&[u8], u16, &str)] = &[
        (b"{not json", 400, "malformed request"),
        (b"{\"user\":\"alice\"}", 400, "missing field"),
        (b"{\"user\":\"a b\",\"password\":\"x\",\"otp\":\"1\",\"public_key\":\"x\"}", 400, "invalid user name"),
        (b"{\"user\":\"alice\",\"password\":\"x\",\"otp\":\"1\",\"public_key\":\"x\",\"extra\":1}", 400, "unknown field"),
        (b"{\"user\":\"alice\",\"password\":\"x\",\"otp\":\"1\",\"public_key\":\"ssh-rsa AAAA\"}", 400, "public_key"),
        (b"\xff\xfe\x00garbage", 400, "malformed request"),
    ];
    for (body, status, msg) in cases {
        let (code, text) = curl(&ca, "/v1/login", Some(body));
        assert_eq!(code, *status, "{text}");
        assert!(text.contains(msg), "{msg:?} not in {text}");
        assert!(text.contains("request_id"), "{text}");
    }
    let big = vec![b'a'; 200_000];
    let (code, text) = curl(&ca, "/v1/login", Some(&big));
    assert_eq!(code, 413, "{text}");
    let (code, _) = curl(&ca, "/v1/nope", None);
    assert_eq!(code, 404);
    // The daemon is still healthy.
    let (code, text) = curl(&ca, "/v1/ping", None);
    assert_eq!(code, 200, "{text}");
}

#[test]
fn audit_verify_finds_a_tampered_event() {
    let ca = Ca::start(&policy(""));
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    alice.login(&ca);
    let out = ca.admin(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    let edit = "UPDATE audit SET detail = '{\"user\":\"mallory\"}' WHERE seq = 2;";
    // Behind the daemon's back, in whichever database holds the chain.
    let out = match ca.postgres() {
        Some(pg) => pg.psql("postern", edit),
        None => run(Command::new("sqlite3")
            .args(["-cmd", ".timeout 10000"])
            .arg(ca.dir.path().join("posternd.db"))
            .arg(edit)),
    };
    assert!(out.status.success(), "{}", text(&out));
    let out = ca.admin(&["audit", "verify"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("event 2 was edited"),
        "{}",
        text(&out)
    );
}

#[test]
fn admin_socket_refuses_other_users() {
    let ca = Ca::start(&policy(""));
    postern_tests::ensure_test_login();
    // Let the unprivileged account reach the socket file, so that only peer credentials stop it.
    let sock = ca.dir.path().join("admin.sock");
    std::fs::set_permissions(ca.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = run(Command::new("setpriv")
        .args([
            "--reuid",
            TEST_LOGIN,
            "--regid",
            TEST_LOGIN,
            "--clear-groups",
        ])
        .arg(bin("posternd"))
        .args(["users", "ls", "--config"])
        .arg(ca.config()));
    assert!(!out.status.success(), "{}", text(&out));
    // Refused by the daemon for who the caller is, not by a file the account cannot read
    // (the client sees the connection closed, before or after it wrote its request).
    let refused = "admin socket: refused a caller that is neither root nor the daemon's user";
    let log = ca.log_when(|l| l.contains(refused));
    assert!(log.contains(refused), "{log}");
}
