//! High availability: several posternd instances on one real PostgreSQL server (Debian's
//! package, initdb in a temporary directory), answering any request, with every rule that
//! must hold across instances attacked by racing two of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::process::{Command, Stdio};

use postern_tests::{bin, plain_log, run, text, Ca, Person, Postgres, TEST_LOGIN};

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
    // Background work runs once: one instance holds the sweep's lease.
    let holds = |ca: &Ca| {
        plain_log(&ca.log_when(|l| l.contains("sweeps abandoned uploads")))
            .contains("this instance sweeps abandoned uploads")
    };
    assert!(
        holds(&c.a) != holds(&c.b),
        "A: {}\nB: {}",
        c.a.log(),
        c.b.log()
    );
    // The schema's `IF NOT EXISTS` notices stay out of the log of an instance that finds it.
    assert!(
        !c.b.log().contains("already exists, skipping"),
        "{}",
        c.b.log()
    );
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

/// `policy` with bob's role taken away.
fn policy_without_bob() -> String {
    policy().replace(
        "[users.bob]\nroles = [\"dev\"]\n",
        "[users.bob]\nroles = []\n",
    )
}

#[test]
fn a_policy_applied_at_one_instance_is_in_force_at_the_other_and_the_files_no_longer_count() {
    let c = cluster();
    let mut alice = Person::new("alice");
    alice.enroll(&c.a);
    alice.login(&c.b);
    let mut bob = Person::new("bob");
    bob.enroll(&c.a);
    bob.login(&c.b);
    // Version 1 is the first instance's file, seeded at its first start.
    let history = c.a.admin_json(&["policy", "history"]);
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");

    // The attack: an edit of one instance's file would make it serve another policy. In HA
    // mode the files are not read after the first start.
    std::fs::write(
        c.b.dir.path().join("policy.toml"),
        policy().replace("[users.alice]\nroles = [\"dev\"]\n", ""),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = run(alice.postern().arg("renew"));
    assert!(
        out.status.success(),
        "an edited file changed the policy of B: {}",
        text(&out)
    );

    // A bad file is refused with file:line:column and changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[roles.dev]\nlogins = [\"x\"\n").unwrap();
    let out = c.a.admin(&["policy", "apply", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("{}:3:1: invalid array", bad.display())),
        "{}",
        text(&out)
    );
    assert_eq!(
        c.a.admin_json(&["policy", "history"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Apply at A; the dry run first shows the change.
    let good = dir.path().join("policy.toml");
    std::fs::write(&good, policy_without_bob()).unwrap();
    let out =
        c.a.admin(&["policy", "apply", good.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("-roles = [\"dev\"]") && text(&out).contains("+roles = []"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("not applied"), "{}", text(&out));
    let applied = c.a.admin_json(&["policy", "apply", good.to_str().unwrap()]);
    assert_eq!(applied["version"], 2, "{applied}");
    // A stale --if-version is refused, saying why.
    let out = c.b.admin(&[
        "policy",
        "apply",
        good.to_str().unwrap(),
        "--if-version",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("changed since version 1 (now version 2)"),
        "{}",
        text(&out)
    );

    // In force at B without anything done there: bob's renewal through B is refused.
    let mut refused = None;
    for _ in 0..50 {
        let out = run(bob.postern().arg("renew"));
        if !out.status.success() {
            refused = Some(out);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = refused.expect("bob still renews at B after his role was taken away at A");
    assert!(text(&out).contains("role"), "{}", text(&out));
    let log = c.b.log_when(|l| l.contains("policy version in force"));
    let plain = plain_log(&log);
    assert!(
        plain
            .lines()
            .any(|l| l.contains("policy version in force version=2 previous=1")),
        "{plain}"
    );
    // Shown and versioned alike on both, and audited once.
    let shown = c.b.admin_json(&["policy", "show"]);
    assert_eq!(shown["version"], 2);
    assert_eq!(shown["text"].as_str().unwrap(), policy_without_bob());
    assert_eq!(
        c.b.admin_json(&["policy", "history"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let applied_events =
        c.a.audit()
            .iter()
            .filter(|e| e["kind"] == "policy.applied")
            .count();
    assert_eq!(applied_events, 2);
}

#[test]
fn one_instance_on_sqlite_keeps_its_policy_file_and_refuses_policy_apply_saying_why() {
    let mut ca = Ca::start(&policy());
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.toml");
    std::fs::write(&f, policy()).unwrap();
    let out = ca.admin(&["policy", "apply", f.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("edit that file"), "{}", text(&out));
    let shown = ca.admin_json(&["policy", "show"]);
    assert_eq!(shown["version"], serde_json::Value::Null);
    assert!(shown["source"].as_str().unwrap().ends_with("policy.toml"));
    ca.stop();
}

#[test]
fn kill_9_of_one_instance_under_renewal_and_login_load_loses_no_accepted_request() {
    let mut c = cluster();
    let urls = [c.a.url.clone(), c.b.url.clone()];
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let names = ["alice", "bob", "carol"];
    let mut people: Vec<Person> = names.iter().map(|n| Person::new(n)).collect();
    for p in people.iter_mut() {
        p.enroll(&c.b);
        let (pw, code) = (p.password.clone(), p.fresh_code());
        let out = p.login_via(&c.a, &urls, &pw, &code, &[]);
        assert!(out.status.success(), "login: {}", text(&out));
    }
    // dave logs in through A-first URLs after A is gone: failover at login.
    let mut dave = Person::new("dave");
    dave.enroll(&c.b);
    const EACH: usize = 10;
    let ok = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for p in &people {
            let ok = &ok;
            s.spawn(move || {
                for _ in 0..EACH {
                    let out = run(p.postern().arg("renew"));
                    assert!(out.status.success(), "{}: renew: {}", p.user, text(&out));
                    ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        // A dies in the middle of the load.
        while ok.load(std::sync::atomic::Ordering::Relaxed) < EACH {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        c.a.stop();
    });
    let (pw, code) = (dave.password.clone(), dave.fresh_code());
    let out = dave.login_via(&c.b, &urls, &pw, &code, &[]);
    assert!(out.status.success(), "login with A dead: {}", text(&out));

    // Every accepted request is in the database once: certificates and their audit events.
    let accepted = names.len() * (EACH + 1) + 1;
    let serials =
        c.pg.query("SELECT count(*), count(DISTINCT serial) FROM certs WHERE kind = 'ssh-user'");
    assert_eq!(
        serials,
        format!("{accepted}|{accepted}"),
        "certificates (all, distinct)"
    );
    let issued =
        c.pg.query("SELECT count(*) FROM audit WHERE kind = 'cert.issued'");
    assert_eq!(issued, accepted.to_string());
    let (max, n) = (
        c.pg.query("SELECT max(seq) FROM audit"),
        c.pg.query("SELECT count(*) FROM audit"),
    );
    assert_eq!(max, n, "the chain has a gap");
    verify(&c.b);
    // A comes back and reads the same chain.
    c.a.spawn();
    verify(&c.a);
}

/// Runs `a` and `b` on two threads released at the same moment; returns both results.
fn at_once<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    let gate = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let one = s.spawn(|| {
            gate.wait();
            a()
        });
        let two = s.spawn(|| {
            gate.wait();
            b()
        });
        (one.join().unwrap(), two.join().unwrap())
    })
}

#[test]
fn an_invite_sent_to_two_instances_at_the_same_moment_enrols_once() {
    let c = cluster();
    for name in ["alice", "bob", "carol"] {
        let invite = c.a.invite(name);
        // Two people holding one invite, each with a password of their own, one at each
        // instance.
        let (mut first, mut second) = (Person::new(name), Person::new(name));
        first.password = format!("first {name} horse battery");
        second.password = format!("second {name} horse battery");
        let enroll = |p: &Person, ca: &Ca| {
            postern_tests::run_with_input(
                p.postern()
                    .args([
                        "enroll", "--ca", &ca.url, "--ca-pin", &ca.pin, "--user", name,
                    ])
                    .args(["--invite", &invite, "--password-stdin", "--json"]),
                &format!("{}\n", p.password),
            )
        };
        let (one, two) = at_once(|| enroll(&first, &c.a), || enroll(&second, &c.b));
        let ok = [&one, &two].iter().filter(|o| o.status.success()).count();
        assert_eq!(
            ok,
            1,
            "{name}: {ok} enrolments with one invite\nA: {}\nB: {}",
            text(&one),
            text(&two)
        );
        let lost = if one.status.success() { &two } else { &one };
        assert!(
            text(lost).contains("enrolment refused: invalid credentials"),
            "{}",
            text(lost)
        );
        // One user, enrolled once, with the winner's password: the loser's cannot log in.
        assert_eq!(
            c.pg.query(&format!(
                "SELECT count(*) FROM audit WHERE kind = 'user.enrolled' AND actor = '{name}'"
            )),
            "1"
        );
        let (winner, loser) = if one.status.success() {
            (&mut first, &mut second)
        } else {
            (&mut second, &mut first)
        };
        let v: serde_json::Value =
            serde_json::from_slice(&if winner.password.starts_with("first") {
                one.stdout.clone()
            } else {
                two.stdout.clone()
            })
            .unwrap();
        let secret = v["otpauth_uri"]
            .as_str()
            .unwrap()
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("secret="))
            .unwrap()
            .to_owned();
        winner.totp_secret = postern_tests::base32_decode(&secret);
        loser.totp_secret = winner.totp_secret.clone();
        let (pw, code) = (loser.password.clone(), winner.fresh_code());
        let out = loser.login_with(&c.b, &pw, &code, &[]);
        assert!(!out.status.success(), "the loser's password logs in");
        let out = winner.login(&c.b);
        assert!(out.status.success(), "{}", text(&out));
    }
    verify(&c.a);
}

#[test]
fn a_join_token_sent_to_two_instances_at_the_same_moment_joins_once() {
    let c = cluster();
    for name in ["web1", "web2", "web3"] {
        let token = c.b.token("node", name, "env=prod");
        // Two servers claiming one name with one token, one at each instance.
        let first = postern_tests::Node::prepare(postern_tests::Distro::Debian12, name, |t| t);
        let second = postern_tests::Node::prepare(postern_tests::Distro::Debian12, name, |t| t);
        let (one, two) = at_once(
            || first.run_join_via(&c.a, &[&c.a.url], &token, &[]),
            || second.run_join_via(&c.b, &[&c.b.url], &token, &[]),
        );
        let ok = [&one, &two].iter().filter(|o| o.status.success()).count();
        assert_eq!(
            ok,
            1,
            "{name}: {ok} joins with one token\nA: {}\nB: {}",
            text(&one),
            text(&two)
        );
        let lost = if one.status.success() { &two } else { &one };
        assert!(
            text(lost).contains("invalid, expired or already used token"),
            "{}",
            text(lost)
        );
        assert_eq!(
            c.pg.query(&format!(
                "SELECT count(*) FROM audit WHERE kind = 'node.joined' AND actor = 'node:{name}'"
            )),
            "1"
        );
    }
    verify(&c.b);
}

#[test]
fn postgresql_restarted_under_renewal_load_instances_reconnect_and_readyz_says_so() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let c = cluster();
    let names = ["alice", "bob", "carol"];
    let mut people: Vec<Person> = names.iter().map(|n| Person::new(n)).collect();
    for (i, p) in people.iter_mut().enumerate() {
        let ca = if i % 2 == 0 { &c.a } else { &c.b };
        p.enroll(ca);
        p.login(ca);
    }
    let stop = AtomicBool::new(false);
    let restarted = AtomicBool::new(false);
    let ok = AtomicUsize::new(0);
    let refused_while_down = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let threads: Vec<_> = people
            .iter()
            .map(|p| {
                let (stop, restarted, ok, down) = (&stop, &restarted, &ok, &refused_while_down);
                s.spawn(move || {
                    let mut after_restart = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let back = restarted.load(Ordering::SeqCst);
                        let out = run(p.postern().arg("renew"));
                        if out.status.success() {
                            ok.fetch_add(1, Ordering::SeqCst);
                            after_restart += usize::from(back);
                        } else {
                            // Refused at once with the reason, never another failure.
                            assert!(
                                text(&out).contains("database is not answering"),
                                "{}: {}",
                                p.user,
                                text(&out)
                            );
                            down.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                    }
                    after_restart
                })
            })
            .collect();
        while ok.load(Ordering::SeqCst) < 6 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        c.pg.stop();
        // Both instances say so to a load balancer.
        for ca in [&c.a, &c.b] {
            let mut answer = (0, String::new());
            for _ in 0..50 {
                answer = postern_tests::curl(ca, "/readyz", None);
                if answer.0 == 503 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            assert_eq!(answer.0, 503, "{answer:?}");
            assert!(answer.1.contains("database"), "{answer:?}");
            assert_eq!(postern_tests::curl(ca, "/healthz", None).0, 200);
        }
        while refused_while_down.load(Ordering::SeqCst) < 3 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        c.pg.start_again();
        restarted.store(true, Ordering::SeqCst);
        for ca in [&c.a, &c.b] {
            let mut answer = (0, String::new());
            for _ in 0..100 {
                answer = postern_tests::curl(ca, "/readyz", None);
                if answer.0 == 200 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            assert_eq!(answer, (200, "ok\n".into()), "{}", ca.log());
        }
        // Load goes on until every user has renewed a few times more.
        let before = ok.load(Ordering::SeqCst);
        while ok.load(Ordering::SeqCst) < before + 9 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        stop.store(true, Ordering::SeqCst);
        for (t, name) in threads.into_iter().zip(names) {
            let after = t.join().unwrap();
            assert!(after > 0, "{name} renewed nothing after the restart");
        }
    });
    // Every accepted renewal has its certificate and audit event (a commit whose answer the
    // stop cut off may add one that no client counted), serials never repeat, and the one
    // chain verifies from both instances.
    let accepted = ok.load(Ordering::SeqCst) + names.len();
    let (n, distinct) = {
        let q = c
            .pg
            .query("SELECT count(*), count(DISTINCT serial) FROM certs WHERE kind = 'ssh-user'");
        let (a, b) = q.split_once('|').unwrap();
        (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap())
    };
    assert_eq!(n, distinct, "a serial repeats");
    assert!(
        n >= accepted,
        "{n} certificates for {accepted} accepted requests"
    );
    let issued =
        c.pg.query("SELECT count(*) FROM audit WHERE kind = 'cert.issued'");
    assert_eq!(issued, n.to_string());
    let (max, count) = (
        c.pg.query("SELECT max(seq) FROM audit"),
        c.pg.query("SELECT count(*) FROM audit"),
    );
    assert_eq!(max, count, "the chain has a gap");
    verify(&c.a);
    verify(&c.b);
}

#[test]
fn posternd_reaches_postgresql_over_verified_tls_and_refuses_a_server_its_ca_file_does_not_sign() {
    let (pg, tls) = Postgres::start_tls();
    let rec = tempfile::Builder::new()
        .prefix("postern-rec")
        .tempdir()
        .unwrap();
    let url = format!(
        "postgres://postern@127.0.0.1:{}/postern?sslmode=require",
        pg.port
    );
    let init = |ca_file: &std::path::Path| {
        let dir = tempfile::Builder::new()
            .prefix("postern-ca")
            .tempdir()
            .unwrap();
        let out = run(Command::new(bin("posternd"))
            .args(["init", "--cluster", "test.postern", "--listen"])
            .arg(format!("127.0.0.1:{}", postern_tests::free_port()))
            .args(["--storage", &url, "--storage-password-file"])
            .arg(&tls.password_file)
            .arg("--storage-ca-file")
            .arg(ca_file)
            .arg("--recordings-dir")
            .arg(rec.path())
            .arg("--data-dir")
            .arg(dir.path()));
        (dir, out)
    };
    // A certificate from a CA that ca_file does not hold: refused, and said why.
    let (_, out) = init(&tls.other_ca_file);
    assert!(
        !out.status.success(),
        "init trusted a server it cannot verify"
    );
    assert!(
        text(&out).contains("invalid peer certificate: UnknownIssuer"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("pg-test-password"), "{}", text(&out));
    assert_eq!(
        pg.query("SELECT count(*) FROM pg_tables WHERE tablename = 'users'"),
        "0"
    );

    // The right CA: the whole story works, and every connection of posternd is encrypted.
    let mut ca = Ca::init_with(
        &policy(),
        &[
            "--cluster",
            "test.postern",
            "--storage",
            &url,
            "--storage-password-file",
            tls.password_file.to_str().unwrap(),
            "--storage-ca-file",
            tls.ca_file.to_str().unwrap(),
            "--recordings-dir",
            rec.path().to_str().unwrap(),
        ],
    );
    ca.spawn();
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    alice.login(&ca);
    let out = run(alice.postern().arg("renew"));
    assert!(out.status.success(), "renew: {}", text(&out));
    let seen = pg.query(
        "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = 'postern' AND a.application_name <> 'psql'",
    );
    assert_eq!(seen, "1|t", "posternd's connections (count, all encrypted)");
    let config = std::fs::read_to_string(ca.config()).unwrap();
    assert!(!config.contains("pg-test-password"), "{config}");
    assert!(!ca.log().contains("pg-test-password"));
    verify(&ca);
}

#[test]
fn one_ca_name_for_two_instances_fails_over_from_the_killed_one() {
    let pg = Postgres::start();
    let rec = tempfile::Builder::new()
        .prefix("postern-rec")
        .tempdir()
        .unwrap();
    let (name, port) = ("cas.postern-dns.test", postern_tests::free_port());
    let storage = [
        "--api-name",
        name,
        "--storage",
        &pg.url(),
        "--recordings-dir",
        rec.path().to_str().unwrap(),
    ];
    let mut a = Ca::init_listening(
        &policy(),
        &format!("127.0.0.1:{port}"),
        &[&["--cluster", "test.postern"], &storage[..]].concat(),
    );
    let mut b = Ca::init_listening(
        &policy(),
        &format!("127.0.0.2:{port}"),
        &[
            &["--keys-from", a.dir.path().to_str().unwrap()],
            &storage[..],
        ]
        .concat(),
    );
    a.spawn();
    b.spawn();
    let hosts = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        hosts.path(),
        format!("127.0.0.1 localhost\n127.0.0.1 {name}\n127.0.0.2 {name}\n"),
    )
    .unwrap();
    let url = format!("https://{name}:{port}");
    let mut alice = Person::new("alice");
    let invite = a.invite("alice");
    let pw = format!("{}\n", alice.password);
    let mut enroll = alice.postern();
    enroll
        .args([
            "enroll", "--ca", &url, "--ca-pin", &a.pin, "--user", "alice",
        ])
        .args(["--invite", &invite, "--password-stdin", "--json"]);
    let out =
        postern_tests::run_with_input(&mut postern_tests::with_hosts(hosts.path(), &enroll), &pw);
    assert!(
        out.status.success(),
        "enroll through {name}: {}",
        text(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = v["otpauth_uri"]
        .as_str()
        .unwrap()
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("secret="))
        .unwrap()
        .to_owned();
    alice.totp_secret = postern_tests::base32_decode(&secret);
    let code = alice.fresh_code();
    let mut login = alice.postern();
    login
        .args(["login", "--ca", &url, "--ca-pin", &a.pin, "--user", "alice"])
        .args(["--password-stdin", "--otp", &code]);
    let out =
        postern_tests::run_with_input(&mut postern_tests::with_hosts(hosts.path(), &login), &pw);
    assert!(out.status.success(), "login through {name}: {}", text(&out));
    // Whichever instance is gone, `postern renew` by the one remembered name reaches the
    // other.
    for (down, up) in [(&mut a, "127.0.0.2"), (&mut b, "127.0.0.1")] {
        down.stop();
        let mut renew = alice.postern();
        renew.arg("renew");
        let out = run(&mut postern_tests::with_hosts(hosts.path(), &renew));
        assert!(
            out.status.success(),
            "renew with only {up} up: {}",
            text(&out)
        );
        down.spawn();
    }
    assert_eq!(
        pg.query("SELECT count(*) FROM audit WHERE kind = 'cert.issued'"),
        "3"
    );
    verify(&a);
}
