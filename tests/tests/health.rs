//! Load balancers and Prometheus: `/healthz` and `/readyz` on posternd (HTTPS, no client
//! certificate), `/metrics` (`[metrics]`, off by default), and readiness that follows the
//! database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use postern_tests::{curl, http_get, listening_ports, metric, run, text, Ca, TEST_LOGIN};

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

/// The API port of `ca.url`.
fn api_port(ca: &Ca) -> u16 {
    ca.url.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Scrapes `url`, which must answer 200 with Prometheus text.
fn scrape(url: &str) -> String {
    let (status, body) = http_get(url);
    assert_eq!(status, 200, "{url}: {body}");
    assert!(body.contains("# HELP "), "{url}: {body}");
    body
}

#[test]
fn posternd_probes_answer_without_a_client_certificate_and_metrics_are_off_by_default() {
    let ca = Ca::start(&policy());
    assert_eq!(curl(&ca, "/healthz", None), (200, "ok\n".into()));
    assert_eq!(curl(&ca, "/readyz", None), (200, "ok\n".into()));
    // Off unless [metrics] listen is set: the API is the only port the daemon listens on.
    assert_eq!(
        listening_ports(ca.pid()),
        vec![api_port(&ca)],
        "{}",
        ca.log()
    );
    assert!(!ca.log().contains("metrics on"), "{}", ca.log());
}

#[test]
fn probes_take_no_token_of_the_login_bucket() {
    let mut ca = Ca::init(&policy());
    ca.append_config("[limits]\nlogin_per_minute = 1\nlogin_burst = 1");
    ca.spawn();
    for _ in 0..20 {
        assert_eq!(curl(&ca, "/readyz", None).0, 200);
        assert_eq!(curl(&ca, "/healthz", None).0, 200);
    }
    // The bucket is still full: the first login attempt is judged on its credentials.
    let (status, body) = curl(&ca, "/v1/login", Some(UNKNOWN_LOGIN.as_bytes()));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid credentials"), "{body}");
}

/// A login request for a name that is no user (the key parses; nobody holds it).
const UNKNOWN_LOGIN: &str = r#"{"user":"nobody","password":"x","otp":"000000","public_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb2Bdn0DGwTWvAHmk2nhd0eNW9K7xzAKoB4hY0j1NLB x"}"#;

/// An `sqlite3` process holding the write lock of posternd's database until released (or
/// killed when the test fails first).
struct Locker {
    child: std::process::Child,
}

impl Drop for Locker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Locker {
    fn lock(ca: &Ca) -> Locker {
        let mut child = Command::new("sqlite3")
            .arg(ca.dir.path().join("posternd.db"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sqlite3 (Debian's sqlite3 package)");
        let stdin = child.stdin.as_mut().unwrap();
        stdin
            .write_all(b"BEGIN EXCLUSIVE;\nSELECT 'locked';\n")
            .unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "locked\n", "sqlite3 did not take the lock");
        Locker { child }
    }

    fn release(mut self) {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"ROLLBACK;\n.quit\n").unwrap();
        drop(stdin);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "sqlite3: {status}");
    }
}

#[test]
fn readyz_says_503_and_why_while_another_process_locks_the_database_and_200_after() {
    let mut ca = Ca::init(&policy());
    let metrics_url = ca.enable_metrics();
    ca.spawn();
    assert_eq!(curl(&ca, "/readyz", None), (200, "ok\n".into()));
    let before = scrape(&metrics_url);
    let locker = Locker::lock(&ca);
    // A login of a name that is no user begins its transaction with a write (as a user's
    // failure does), which waits for the lock (SQLite's busy timeout, 10 s) and holds the
    // database's writer: the readiness check queued behind it cannot be answered.
    let url = format!("{}/v1/login", ca.url);
    let login = std::thread::spawn(move || {
        run(Command::new("curl").args([
            "-sk",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
            "--data-binary",
            UNKNOWN_LOGIN,
            &url,
        ]))
    });
    let mut answer = (0, String::new());
    for _ in 0..50 {
        answer = curl(&ca, "/readyz", None);
        if answer.0 != 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        answer,
        (
            503,
            "not ready: the database did not answer within 1 s\n".into()
        ),
        "{}",
        ca.log()
    );
    // Quickly: the 503 came while the write it waited behind was still blocked.
    assert!(
        !login.is_finished(),
        "the login was not blocked by the lock"
    );
    // /healthz does not depend on the database.
    assert_eq!(curl(&ca, "/healthz", None), (200, "ok\n".into()));
    locker.release();
    // Once the lock is gone the login is answered as it would have been.
    let out = login.join().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("invalid credentials") && answer.ends_with("\n401"),
        "{}",
        text(&out)
    );
    assert_eq!(curl(&ca, "/readyz", None), (200, "ok\n".into()));
    let after = scrape(&metrics_url);
    let series = "postern_database_errors_total{source=\"readiness\"}";
    assert!(
        metric(&after, series) > metric(&before, series),
        "{series}:\n{after}"
    );
    assert!(ca.log().contains("not ready"), "{}", ca.log());
}
