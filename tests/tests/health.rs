//! Load balancers and Prometheus: `/healthz` and `/readyz` on posternd (HTTPS, no client
//! certificate) and on postern-gate (`[health]`), `/metrics` on both (`[metrics]`, off by
//! default), readiness that follows the database and the CA, and counters that move with
//! logins, renewals and sessions without naming anyone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postern_tests::{
    curl, free_port, http_get, listening_ports, metric, run, text, Ca, GateCluster, Person,
    TEST_LOGIN,
};

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

[roles.prod]
logins = ["{TEST_LOGIN}"]
nodes = {{ env = "prod" }}

[users.carol]
roles = ["prod"]
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

/// Waits until `f` holds for a fresh scrape of `url` (or 30 s passed) and returns the last.
fn scrape_until(url: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = scrape(url);
        if f(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
    // The check still waiting is not asked again: the next probe is told so.
    assert_eq!(
        curl(&ca, "/readyz", None),
        (
            503,
            "not ready: the database did not answer within 1 s (an earlier check is still waiting)\n"
                .into()
        )
    );
    // Quickly: the 503s came while the write they waited behind was still blocked.
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

#[test]
fn a_login_a_renewal_and_a_session_move_the_counters_and_name_nobody() {
    let ca_metrics_port = free_port();
    let (health_port, gate_metrics_port) = (free_port(), free_port());
    let mut c = GateCluster::start_with_config(
        &policy(),
        &format!("[metrics]\nlisten = \"127.0.0.1:{ca_metrics_port}\""),
        &format!(
            "[health]\nlisten = \"127.0.0.1:{health_port}\"\n\n[metrics]\nlisten = \"127.0.0.1:{gate_metrics_port}\"\n"
        ),
    );
    let ca_url = format!("http://127.0.0.1:{ca_metrics_port}/metrics");
    let gate_url = format!("http://127.0.0.1:{gate_metrics_port}/metrics");
    let health = format!("http://127.0.0.1:{health_port}");
    assert_eq!(http_get(&format!("{health}/healthz")), (200, "ok\n".into()));
    let ready = (200, "ok\n".to_owned());
    assert_eq!(http_get(&format!("{health}/readyz")), ready);
    // The probes' listener shows no metrics.
    assert_eq!(http_get(&format!("{health}/metrics")).0, 404);
    let ca0 = scrape(&ca_url);
    let gate0 = scrape(&gate_url);

    // A failed login, a login, a renewal, and a session with a pty (recorded).
    let mut bob = Person::new("bob");
    bob.enroll(&c.ca);
    let out = bob.login_with(&c.ca, "not the password", "000000", &[]);
    assert!(!out.status.success(), "{}", text(&out));
    c.alice.login(&c.ca);
    let out = run(c.alice.postern().arg("renew"));
    assert!(out.status.success(), "{}", text(&out));
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["-tt", "echo hi"]);
    assert!(out.status.success(), "{}\n{}", text(&out), c.gate.log());

    let ca1 = scrape_until(&ca_url, |s| {
        metric(s, "postern_recording_bytes_received_total")
            > metric(&ca0, "postern_recording_bytes_received_total")
    });
    let moved = |name: &str| metric(&ca1, name) - metric(&ca0, name);
    assert_eq!(moved("postern_logins_total{outcome=\"ok\"}"), 1.0, "{ca1}");
    assert_eq!(
        moved("postern_logins_total{outcome=\"bad_credentials\"}"),
        1.0,
        "{ca1}"
    );
    assert_eq!(
        moved("postern_renewals_total{outcome=\"ok\"}"),
        1.0,
        "{ca1}"
    );
    assert_eq!(
        moved("postern_certificates_issued_total{kind=\"ssh-user\"}"),
        2.0,
        "{ca1}"
    );
    assert_eq!(
        moved("postern_certificates_issued_total{kind=\"x509-client\"}"),
        2.0,
        "{ca1}"
    );
    assert_eq!(
        moved("postern_certificates_issued_total{kind=\"ssh-node-access\"}"),
        1.0,
        "{ca1}"
    );
    assert_eq!(
        moved("postern_authorize_requests_total{outcome=\"ok\"}"),
        1.0,
        "{ca1}"
    );
    assert_eq!(
        moved("postern_authorize_duration_seconds_count"),
        1.0,
        "{ca1}"
    );
    assert!(
        moved("postern_recording_bytes_received_total") > 0.0,
        "{ca1}"
    );

    let gate1 = scrape_until(&gate_url, |s| {
        metric(s, "postern_gateway_upload_backlog_recordings") == 0.0
    });
    let gmoved = |name: &str| metric(&gate1, name) - metric(&gate0, name);
    assert_eq!(
        gmoved("postern_gateway_sessions_total{outcome=\"authorized\"}"),
        1.0,
        "{gate1}"
    );
    assert_eq!(
        gmoved("postern_gateway_authorize_duration_seconds_count"),
        1.0,
        "{gate1}"
    );
    assert!(
        gmoved("postern_gateway_recording_bytes_written_total") > 0.0,
        "{gate1}"
    );
    assert_eq!(
        metric(&gate1, "postern_gateway_sessions_active"),
        0.0,
        "{gate1}"
    );
    assert_eq!(
        metric(&gate1, "postern_gateway_upload_backlog_recordings"),
        0.0,
        "{gate1}"
    );

    // A session the CA refuses (carol's roles are for other servers) counts as refused on
    // both sides.
    let mut carol = Person::new("carol");
    carol.enroll(&c.ca);
    carol.login(&c.ca);
    let out = carol.ssh_via_gate(&c.ca, "web1", TEST_LOGIN, &["true"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "postern-gate: refused: policy does not allow carol to log in as {TEST_LOGIN} on web1 "
        )),
        "{}\n{}",
        text(&out),
        c.gate.log()
    );
    let ca2 = scrape(&ca_url);
    let gate2 = scrape(&gate_url);
    assert_eq!(
        metric(
            &ca2,
            "postern_authorize_requests_total{outcome=\"forbidden\"}"
        ) - metric(
            &ca1,
            "postern_authorize_requests_total{outcome=\"forbidden\"}"
        ),
        1.0,
        "{ca2}"
    );
    assert_eq!(
        metric(
            &gate2,
            "postern_gateway_sessions_total{outcome=\"refused\"}"
        ) - metric(
            &gate1,
            "postern_gateway_sessions_total{outcome=\"refused\"}"
        ),
        1.0,
        "{gate2}"
    );

    // A session in progress is active.
    let mut ssh = Command::new("ssh")
        .env("HOME", c.alice.home.path())
        .env_remove("SSH_AUTH_SOCK")
        .arg("-F")
        .arg(c.alice.home.path().join(".ssh/config"))
        .args(["-o", "BatchMode=yes", "-l", TEST_LOGIN])
        .arg(format!("web1.{}", c.ca.cluster))
        .arg("echo up; sleep 60")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(ssh.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "up\n", "{}", c.gate.log());
    let during = scrape(&gate_url);
    assert_eq!(
        metric(&during, "postern_gateway_sessions_active"),
        1.0,
        "{during}"
    );
    let _ = ssh.kill();
    let _ = ssh.wait();
    let after = scrape_until(&gate_url, |s| {
        metric(s, "postern_gateway_sessions_active") == 0.0
    });
    assert_eq!(
        metric(&after, "postern_gateway_sessions_active"),
        0.0,
        "{after}"
    );

    // Nobody is named: no user, login or server appears in either exposition.
    for text in [&ca1, &gate1, &ca2, &gate2, &during] {
        for name in ["alice", "bob", "carol", TEST_LOGIN, "web1", "gate1"] {
            assert!(!text.contains(name), "{name} in:\n{text}");
        }
    }

    // Without the CA the gateway has no current inventory: not ready, and it says why.
    c.ca.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answer = http_get(&format!("{health}/readyz"));
    while answer.0 == 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        answer = http_get(&format!("{health}/readyz"));
    }
    assert_eq!(answer.0, 503, "{answer:?}");
    assert!(
        answer
            .1
            .starts_with("not ready: the last inventory from the CA is "),
        "{answer:?}"
    );
    let down = scrape(&gate_url);
    assert!(
        metric(
            &down,
            "postern_gateway_ca_request_errors_total{call=\"inventory\",kind=\"unreachable\"}"
        ) > 0.0,
        "{down}"
    );
}

#[test]
fn the_gateway_listens_only_for_ssh_unless_gate_toml_asks() {
    let c = GateCluster::start(&policy());
    assert_eq!(
        listening_ports(c.gate.pid()),
        vec![c.gate.port],
        "{}",
        c.gate.log()
    );
}
