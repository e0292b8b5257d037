//! High availability: several posternd instances on one real PostgreSQL server (Debian's
//! package, initdb in a temporary directory), answering any request, with every rule that
//! must hold across instances attacked by racing two of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::process::{Command, Stdio};

use postern_tests::{bin, run, text, Ca, Person, Postgres, TEST_LOGIN};

fn policy() -> String {
    format!(
        r#"
[defaults]
user_cert_ttl = "1h"
max_user_cert_ttl = "24h"

[roles.dev]
logins = ["{TEST_LOGIN}"]
nodes = {{ "*" = "*" }}
permit = ["pty"]

[users.alice]
roles = ["dev"]
[users.bob]
roles = ["dev"]
[users.carol]
roles = ["dev"]
[users.dave]
roles = ["dev"]
"#
    )
}

/// A PostgreSQL server, a shared recordings directory, and two running instances of one CA.
struct Cluster {
    a: Ca,
    b: Ca,
    _recordings: tempfile::TempDir,
    pg: Postgres,
}

fn cluster() -> Cluster {
    let pg = Postgres::start();
    let rec = tempfile::Builder::new()
        .prefix("postern-rec")
        .tempdir()
        .unwrap();
    let mut a = Ca::init_postgres(&policy(), &pg.url(), rec.path());
    let mut b = a.another_instance(&policy(), &pg.url(), rec.path());
    assert_eq!(a.pin, b.pin, "the second instance has other keys");
    assert_ne!(a.url, b.url);
    a.spawn();
    b.spawn();
    Cluster {
        a,
        b,
        _recordings: rec,
        pg,
    }
}

fn verify(ca: &Ca) {
    let out = ca.admin(&["audit", "verify"]);
    assert!(out.status.success(), "audit verify: {}", text(&out));
}

#[test]
fn two_instances_on_postgres_share_users_logins_and_one_audit_chain() {
    let c = cluster();
    let mut alice = Person::new("alice");
    // Invited on A, enrolled through B, logged in through A and then B.
    alice.enroll(&c.b);
    alice.login(&c.a);
    let cert = std::fs::read(alice.cluster_dir(&c.a).join("id_ed25519-cert.pub")).unwrap();
    alice.login(&c.b);
    let again = std::fs::read(alice.cluster_dir(&c.b).join("id_ed25519-cert.pub")).unwrap();
    assert_ne!(cert, again, "the second login wrote no new certificate");
    // A renewal (proof of possession) at the instance remembered from the last login.
    let out = run(alice.postern().arg("renew"));
    assert!(out.status.success(), "renew: {}", text(&out));

    // One chain: what B appended, A lists and verifies, and the other way round.
    let kinds: Vec<String> =
        c.a.audit()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "login.success").count(),
        2,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"ca.instance_added".to_owned()), "{kinds:?}");
    assert_eq!(c.a.audit().len(), c.b.audit().len());
    verify(&c.a);
    verify(&c.b);
    // The rows are in PostgreSQL, not in a file of either instance.
    assert!(!c.a.dir.path().join("posternd.db").exists());
    assert_eq!(
        c.pg.query("SELECT count(*) FROM users WHERE name = 'alice' AND password_hash IS NOT NULL"),
        "1"
    );
}

#[test]
fn the_same_code_sent_to_two_instances_at_the_same_moment_logs_in_once() {
    let c = cluster();
    // Three users, one race each (a user has only so many fresh TOTP steps a minute).
    for name in ["alice", "bob", "carol"] {
        let mut first = Person::new(name);
        first.enroll(&c.a);
        // Two laptops of one user send one code, one to each instance, at once.
        let second = Person::new(name);
        let code = first.fresh_code();
        let spawn = |p: &Person, ca: &Ca| {
            let mut child = p
                .postern()
                .args([
                    "login", "--ca", &ca.url, "--ca-pin", &ca.pin, "--user", name,
                ])
                .args(["--password-stdin", "--otp", &code])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            writeln!(child.stdin.take().unwrap(), "{}", first.password).unwrap();
            child
        };
        let (one, two) = (spawn(&first, &c.a), spawn(&second, &c.b));
        let (one, two) = (
            one.wait_with_output().unwrap(),
            two.wait_with_output().unwrap(),
        );
        let ok = [&one, &two].iter().filter(|o| o.status.success()).count();
        assert_eq!(
            ok,
            1,
            "{name}: {ok} logins with one code\nA: {}\nB: {}",
            text(&one),
            text(&two)
        );
        let lost = if one.status.success() { &two } else { &one };
        assert!(text(lost).contains("invalid credentials"), "{}", text(lost));
        // The refused one counted as a failure in the one shared counter: with the right
        // password, the only reason is the code already used at the other instance.
        let users = c.b.admin_json(&["users", "ls"]);
        let failures = users
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap()["failures"]
            .as_i64()
            .unwrap();
        assert_eq!(failures, 1, "{name}: {users}");
    }
    verify(&c.a);
}

#[test]
fn renewals_racing_on_two_instances_get_distinct_serials_and_one_unforked_chain() {
    let c = cluster();
    let names = ["alice", "bob", "carol", "dave"];
    let mut people: Vec<Person> = names.iter().map(|n| Person::new(n)).collect();
    for (i, p) in people.iter_mut().enumerate() {
        let ca = if i % 2 == 0 { &c.a } else { &c.b };
        p.enroll(ca);
        p.login(ca);
    }
    const EACH: usize = 8;
    std::thread::scope(|s| {
        for p in &people {
            s.spawn(move || {
                for _ in 0..EACH {
                    let out = run(p.postern().arg("renew"));
                    assert!(out.status.success(), "{}: renew: {}", p.user, text(&out));
                }
            });
        }
    });
    let serials =
        c.pg.query("SELECT serial FROM certs WHERE kind = 'ssh-user'");
    let serials: Vec<&str> = serials.lines().collect();
    let distinct: HashSet<&str> = serials.iter().copied().collect();
    assert_eq!(serials.len(), names.len() * (EACH + 1), "{serials:?}");
    assert_eq!(distinct.len(), serials.len(), "a serial repeats");
    // Every issue is audited once, in one chain with no gap or fork.
    let issued =
        c.pg.query("SELECT count(*) FROM audit WHERE kind = 'cert.issued'");
    assert_eq!(issued, serials.len().to_string());
    let (max, n) = (
        c.pg.query("SELECT max(seq) FROM audit"),
        c.pg.query("SELECT count(*) FROM audit"),
    );
    assert_eq!(max, n, "the chain has a gap");
    verify(&c.a);
    verify(&c.b);
}

#[test]
fn a_database_that_belongs_to_one_ca_refuses_an_instance_with_other_keys() {
    let c = cluster();
    // `init` of a new CA on it is refused before anything is written.
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(bin("posternd"))
        .args(["init", "--cluster", "other.test", "--listen", "127.0.0.1:1"])
        .args(["--storage", &c.pg.url(), "--data-dir"])
        .arg(dir.path().join("d")));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("already belongs to the CA of cluster \"test.postern\""),
        "{}",
        text(&out)
    );
    assert!(
        !dir.path().join("d").exists(),
        "init wrote files before refusing"
    );
    // A CA made elsewhere and pointed at the database refuses to serve.
    let mut other = Ca::init(&policy());
    other.append_config(&format!(
        "\n[storage]\nbackend = \"postgres\"\nurl = \"{}\"\n",
        c.pg.url()
    ));
    let out = run(Command::new(bin("posternd"))
        .arg("serve")
        .arg("--config")
        .arg(other.config()));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("every instance on one database must hold the same keys"),
        "{}",
        text(&out)
    );
    other.stop();
    // A password in the URL is refused, and not echoed.
    let out = run(Command::new(bin("posternd"))
        .args(["init", "--cluster", "x.test", "--listen", "127.0.0.1:1"])
        .args([
            "--storage",
            "postgres://postern:s3cret-pw@127.0.0.1/postern",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("e")));
    assert!(!out.status.success());
    assert!(text(&out).contains("password_file"), "{}", text(&out));
    assert!(!text(&out).contains("s3cret-pw"), "{}", text(&out));
}

#[test]
fn while_postgresql_is_down_posternd_answers_503_and_reconnects_by_itself_when_it_is_back() {
    let c = cluster();
    let mut alice = Person::new("alice");
    alice.enroll(&c.a);
    alice.login(&c.a);
    c.pg.stop();
    // Renewal (proof of possession, no TOTP step spent) is refused with the reason, not hung.
    let out = run(alice.postern().arg("renew"));
    assert!(!out.status.success(), "renewed with the database down");
    assert!(
        text(&out).contains("database is not answering"),
        "{}",
        text(&out)
    );
    assert!(
        c.a.log().contains("cannot reach PostgreSQL") || c.a.log().contains("PostgreSQL:"),
        "{}",
        c.a.log()
    );
    c.pg.start_again();
    // No restart of posternd: the pool connects again on the next request.
    let mut renewed = false;
    for _ in 0..50 {
        if run(alice.postern().arg("renew")).status.success() {
            renewed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(renewed, "posternd did not reconnect:\n{}", c.a.log());
    alice.login(&c.b);
    verify(&c.a);
}
