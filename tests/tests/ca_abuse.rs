//! posternd under load it did not ask for: slowloris bodies and floods of failed logins, joins
//! and enrolments take neither the capacity kept for mTLS peers (renewal, server sync, gateway
//! authorize) nor the audit table's disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_tests::{now, run, text, Ca, Gate, Node, Person, TEST_LOGIN};
use serde_json::{json, Value};

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

/// A TLS client that trusts the test CA's service CA, without a client certificate: what
/// anybody on the network can open.
fn anonymous_tls(ca: &Ca) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(ca.dir.path().join("ca/service_ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to the API with the handshake done.
fn open(ca: &Ca, cfg: &Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let sock = TcpStream::connect(ca.url.trim_start_matches("https://"))?;
    handshake(sock, cfg)
}

/// The address of another client than the test's people and servers (which use 127.0.0.1).
const ATTACKER: &str = "127.0.0.9";

/// A TCP connection to the API from [`ATTACKER`].
fn connect_from_attacker(ca: &Ca) -> std::io::Result<TcpStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let to: std::net::SocketAddr = ca.url.trim_start_matches("https://").parse().unwrap();
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let from: std::net::SocketAddr = format!("{ATTACKER}:0").parse().unwrap();
    s.bind(&SockAddr::from(from))?;
    s.connect_timeout(&SockAddr::from(to), Duration::from_secs(5))?;
    Ok(TcpStream::from(s))
}

/// The TLS handshake on a connected socket.
fn handshake(sock: TcpStream, cfg: &Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::clone(cfg), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    let mut waited = 0;
    while s.conn.is_handshaking() {
        match s.conn.complete_io(&mut s.sock) {
            Ok(_) => {}
            Err(e) if is_timeout(&e) && waited < 30 => waited += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(s)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// An answer: status, `Retry-After`, the JSON body's `error`.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    error: String,
}

fn parse(raw: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let retry_after = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after:")
            .map(|v| v.trim().to_owned())
    });
    let error = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned());
    Some(Answer {
        status,
        retry_after,
        error,
    })
}

/// Reads until the server closes the connection; `tick` runs at each second without data.
fn read_to_close(s: &mut Tls, mut tick: impl FnMut(&mut Tls) -> bool) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) => {
                if !tick(s) {
                    return Err(format!("gave up after {} bytes", raw.len()));
                }
            }
            // A close without close_notify, or a reset after the answer.
            Err(_) if !raw.is_empty() => return Ok(raw),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// One POST on its own connection (`Connection: close`).
fn post(
    ca: &Ca,
    cfg: &Arc<rustls::ClientConfig>,
    path: &str,
    body: &Value,
) -> Result<Answer, String> {
    let mut s = open(ca, cfg).map_err(|e| format!("connect: {e}"))?;
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut ticks = 0;
    let raw = read_to_close(&mut s, |_| {
        ticks += 1;
        ticks < 120
    })?;
    parse(&raw).ok_or_else(|| format!("not an HTTP answer: {:?}", String::from_utf8_lossy(&raw)))
}

/// What happened to one slowloris connection.
#[derive(Debug)]
enum Slow {
    /// Answered (408 when its body was too slow, 503 when its pool was full).
    Answered(Answer),
    /// Still open when the flood was stopped.
    Abandoned,
    /// No HTTP answer.
    Failed(#[allow(dead_code)] String),
}

/// Slowloris: TLS done, `POST /v1/login` headers sent at once, then the body a byte a second,
/// on a new connection after each ends, until `stop`.
fn slowloris(
    ca: &Ca,
    cfg: &Arc<rustls::ClientConfig>,
    stop: &AtomicBool,
    timed_out: &AtomicUsize,
) -> Vec<Slow> {
    let mut outcomes = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let mut s = match open(ca, cfg) {
            Ok(s) => s,
            Err(e) => {
                outcomes.push(Slow::Failed(format!("connect: {e}")));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let head = "POST /v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
        if let Err(e) = s.write_all(head.as_bytes()) {
            outcomes.push(Slow::Failed(format!("write: {e}")));
            continue;
        }
        let mut abandoned = false;
        let r = read_to_close(&mut s, |s| {
            if stop.load(Ordering::SeqCst) {
                abandoned = true;
                return false;
            }
            // One more byte of a body that never ends; a refused write is the server's close.
            let _ = s.write_all(b" ");
            true
        });
        outcomes.push(match r {
            _ if abandoned => Slow::Abandoned,
            Ok(raw) => match parse(&raw) {
                Some(a) => {
                    if a.status == 408 {
                        timed_out.fetch_add(1, Ordering::SeqCst);
                    }
                    Slow::Answered(a)
                }
                None => Slow::Failed(format!("not HTTP: {:?}", String::from_utf8_lossy(&raw))),
            },
            Err(e) => Slow::Failed(e),
        });
        std::thread::sleep(Duration::from_secs(1));
    }
    outcomes
}

/// An OpenSSH Ed25519 public key line, for bodies that must get past key parsing.
fn public_key_line() -> String {
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("k");
    let out = run(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    assert!(out.status.success(), "{}", text(&out));
    std::fs::read_to_string(key.with_extension("pub"))
        .unwrap()
        .trim()
        .to_owned()
}

fn wrong_login(key: &str) -> Value {
    json!({ "user": "mallory", "password": "not the password", "otp": "000000", "public_key": key })
}

/// The `auth.failures` events of a kind, and every event of the given kinds.
fn summaries(events: &[Value], kind: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "auth.failures" && e["detail"]["kind"] == kind)
        .cloned()
        .collect()
}

fn count_kind(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["kind"] == kind).count()
}

/// Minutes (of Unix time) from `start` to now, both counted.
fn minutes_since(start: u64) -> usize {
    usize::try_from(now() / 60 - start / 60 + 1).unwrap()
}

#[test]
fn a_flood_of_failed_logins_joins_and_enrolments_costs_429s_and_a_few_summary_rows() {
    let mut ca = Ca::init(&policy());
    // Test-sized rates, so that the flood is mostly over them.
    ca.append_config(
        "[limits]\nlogin_per_minute = 10\nlogin_burst = 20\njoin_per_minute = 10\njoin_burst = 10\nenroll_per_minute = 10\nenroll_burst = 10\n",
    );
    ca.spawn();
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    let cfg = anonymous_tls(&ca);
    let key = public_key_line();
    let start = now();
    let before = ca.audit();

    // 300 failed logins from one source, 8 at a time.
    let answers = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for t in 0..8 {
            let (ca, cfg, key, answers) = (&ca, &cfg, &key, &answers);
            s.spawn(move || {
                for i in 0..300 / 8 + usize::from(t < 300 % 8) {
                    // Half for an existing user (wrong password), half for nobody.
                    let mut body = wrong_login(key);
                    if i % 2 == 0 {
                        body["user"] = json!("alice");
                    }
                    let a = post(ca, cfg, "/v1/login", &body).unwrap();
                    answers.lock().unwrap().push(a);
                }
            });
        }
    });
    let answers = answers.lock().unwrap().clone();
    assert_eq!(answers.len(), 300);
    let limited: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    // Checked and refused, or refused because every argon2 slot stayed taken.
    let refused: Vec<&Answer> = answers
        .iter()
        .filter(|a| {
            a.status == 401
                || a.status == 423
                || (a.status == 503
                    && a.error
                        == "the server is busy checking other passwords; try again in a second"
                    && a.retry_after.as_deref() == Some("1"))
        })
        .collect();
    assert_eq!(
        limited.len() + refused.len(),
        300,
        "every failed login is refused or rate limited: {answers:?}"
    );
    // The bucket: 20 at once and 10 a minute; the rest are told to come back.
    assert!(
        refused.len() >= 20 && refused.len() <= 20 + 10 * minutes_since(start),
        "{} logins were checked: {answers:?}",
        refused.len()
    );
    let a = limited[0];
    assert!(
        a.error
            .starts_with("too many login requests from your address; try again in "),
        "{a:?}"
    );
    let retry: u64 = a.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{a:?}");

    // Joins with malformed and unknown tokens, and enrolments with a wrong invite.
    for i in 0..40 {
        let token = if i % 2 == 0 {
            "garbage".to_owned()
        } else {
            "ab".repeat(20)
        };
        let body = json!({ "token": token, "name": "web9", "host_public_key": key, "identity_public_key": key });
        let a = post(&ca, &cfg, "/v1/join", &body).unwrap();
        assert!(a.status == 403 || a.status == 429, "{a:?}");
        let body =
            json!({ "user": "alice", "invite": "ab".repeat(20), "password": "a new password" });
        let a = post(&ca, &cfg, "/v1/enroll", &body).unwrap();
        assert!(a.status == 401 || a.status == 429, "{a:?}");
    }

    // The minute in progress is written when the daemon stops.
    ca.terminate();
    ca.spawn();
    let events = ca.audit();
    let new = &events[before.len()..];
    assert_eq!(count_kind(new, "login.failure"), 0, "{new:#?}");
    assert_eq!(count_kind(new, "join.failure"), 0, "{new:#?}");
    assert_eq!(count_kind(new, "enroll.failure"), 0, "{new:#?}");
    let minutes = minutes_since(start);
    for (kind, sent) in [("login", 300), ("join", 40), ("enroll", 40)] {
        let rows = summaries(new, kind);
        assert!(
            !rows.is_empty() && rows.len() <= minutes,
            "{kind}: {} summaries in {minutes} minutes: {rows:#?}",
            rows.len()
        );
        let counted: u64 = rows
            .iter()
            .map(|r| r["detail"]["count"].as_u64().unwrap())
            .sum();
        assert_eq!(counted, sent, "{kind}: {rows:#?}");
        for r in &rows {
            assert_eq!(r["actor"], "source:127.0.0.1", "{r:#}");
            assert_eq!(r["detail"]["source"], "127.0.0.1", "{r:#}");
        }
    }
    let login = summaries(new, "login");
    let reason = |name: &str| -> u64 {
        login
            .iter()
            .filter_map(|r| r["detail"]["reasons"][name].as_u64())
            .sum()
    };
    assert_eq!(reason("rate limited"), limited.len() as u64, "{login:#?}");
    assert!(
        reason("unknown user") > 0 && reason("wrong password") > 0,
        "{login:#?}"
    );
    // Names are kept only for users that exist: "mallory" may have been a password.
    assert!(
        login
            .iter()
            .any(|r| r["detail"]["users"]["alice"].as_u64() > Some(0)),
        "{login:#?}"
    );
    assert!(!format!("{login:?}").contains("mallory"), "{login:#?}");
    let join = summaries(new, "join");
    assert!(
        join.iter()
            .any(|r| r["detail"]["reasons"]["malformed token"].as_u64() > Some(0)),
        "{join:#?}"
    );
}

#[test]
fn slowloris_and_a_login_flood_leave_renewal_sync_and_gateway_authorize_working() {
    let mut ca = Ca::init(&policy());
    let gport = Gate::reserve_port();
    ca.set_gateway(&format!("127.0.0.1:{gport}"));
    // Test-sized pools: 300 slowloris connections are far more than the anonymous pool. They
    // come from 127.0.0.1 like the peers, so the per-source limits are out of the way here
    // (the next test is about them). The
    // login rate is out of the way, as for a flood from many sources: a source over its rate
    // would be refused (429) before its slow body is even read.
    ca.append_config(
        "[limits]\nmax_connections = 120\nmax_anonymous_connections = 40\nbody_timeout = \"4s\"\nlogin_per_minute = 1000000\nlogin_burst = 1000000\nper_source_max_handshakes = 100000\nper_source_max_anonymous_connections = 100000\n",
    );
    ca.spawn();
    let mut gate = Gate::joined(&ca, gport);
    let token = ca.token("node", "web1", "env=dev");
    let (mut node, out) = Node::join(&ca, "web1", &token, &[]);
    assert!(out.status.success(), "{}", text(&out));
    node.start_sshd();
    gate.spawn();
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    alice.login(&ca);
    let cfg = anonymous_tls(&ca);
    let key = public_key_line();
    let before = ca.audit();
    let start = now();

    let stop = AtomicBool::new(false);
    let timed_out = AtomicUsize::new(0);
    let (slow, flood, peers) = std::thread::scope(|s| {
        let slow: Vec<_> = (0..300)
            .map(|_| s.spawn(|| slowloris(&ca, &cfg, &stop, &timed_out)))
            .collect();
        let flood: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let mut answers = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        answers.push(post(&ca, &cfg, "/v1/login", &wrong_login(&key)));
                    }
                    answers
                })
            })
            .collect();
        // The anonymous pool is full once posternd starts refusing anonymous connections.
        // (Every wait ends the flood before any assertion: a panic here would wait forever
        // for the flood's threads.)
        let deadline = Instant::now() + Duration::from_secs(120);
        let wait = |what: &dyn Fn() -> bool| {
            while !what() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            what()
        };
        let full = wait(&|| ca.log().contains("refusing anonymous connection"));
        // Meanwhile the mTLS peers: a renewal, a server's sync, a gateway authorize.
        let peers = full.then(|| {
            (
                run(alice.postern().arg("renew")),
                node.shim("sync"),
                alice.ssh_via_gate(&ca, "web1", TEST_LOGIN, &["true"]),
            )
        });
        // The attack goes on until a slow body has met its deadline.
        let deadline_met = wait(&|| timed_out.load(Ordering::SeqCst) > 0);
        stop.store(true, Ordering::SeqCst);
        let slow: Vec<Slow> = slow.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let flood: Vec<_> = flood.into_iter().flat_map(|h| h.join().unwrap()).collect();
        (slow, flood, peers.zip(Some(deadline_met)))
    });
    let log = ca.log();
    let Some(((renew, sync, ssh), deadline_met)) = peers else {
        panic!("posternd never refused an anonymous connection:\n{log}");
    };
    assert!(
        deadline_met,
        "no slowloris connection was ended by the body deadline:\n{log}"
    );
    assert!(
        renew.status.success(),
        "renew under attack: {}\nposternd:\n{log}",
        text(&renew)
    );
    assert!(
        sync.status.success(),
        "sync under attack: {}\nposternd:\n{log}",
        text(&sync)
    );
    assert!(
        ssh.status.success(),
        "ssh through the gateway under attack: {}\ngate:\n{}\nposternd:\n{log}",
        text(&ssh),
        gate.log()
    );

    // Why the slowloris connections ended: their body was too slow (408), or the anonymous
    // pool was full (503 with Retry-After). None was left hanging.
    let mut timed_out = 0;
    let mut full = 0;
    for o in &slow {
        match o {
            Slow::Answered(a) if a.status == 408 => {
                assert_eq!(
                    a.error, "the request body did not arrive within 4 s",
                    "{a:?}"
                );
                timed_out += 1;
            }
            Slow::Answered(a) if a.status == 503 => {
                assert_eq!(
                    a.error,
                    "the server is busy: all 40 connections without a client certificate are taken (max_anonymous_connections); try again",
                    "{a:?}"
                );
                assert_eq!(a.retry_after.as_deref(), Some("1"), "{a:?}");
                full += 1;
            }
            Slow::Abandoned => {}
            other => panic!("a slowloris connection ended otherwise: {other:?}\nposternd:\n{log}"),
        }
    }
    assert!(timed_out > 0 && full > 0, "408: {timed_out}, 503: {full}");
    assert!(
        log.contains("refusing anonymous connection: all 40 connections without a client certificate are taken (max_anonymous_connections)"),
        "{log}"
    );

    // The flood's failures: every answered login was refused, and they are audited as a few
    // summaries, whatever their number.
    let mut counted = 0u64;
    for a in flood.iter().flatten() {
        match a.status {
            401 | 423 | 429 => counted += 1,
            503 if a
                .error
                .starts_with("the server is busy checking other passwords") =>
            {
                counted += 1
            }
            503 if a.error.starts_with("the server is busy: all ") => {}
            _ => panic!("a flood login was answered {a:?}"),
        }
    }
    ca.terminate();
    ca.spawn();
    let events = ca.audit();
    let new = &events[before.len()..];
    assert_eq!(count_kind(new, "login.failure"), 0, "{new:#?}");
    let rows = summaries(new, "login");
    assert!(rows.len() <= minutes_since(start), "{rows:#?}");
    let summed: u64 = rows
        .iter()
        .map(|r| r["detail"]["count"].as_u64().unwrap())
        .sum();
    let sent = flood.len() as u64;
    assert!(
        summed >= counted && summed <= sent,
        "{summed} failures summarised, {counted} refusals answered, {sent} sent: {rows:#?}"
    );
}

#[test]
fn one_source_cannot_take_the_shared_handshake_pool_or_the_anonymous_pool() {
    let mut ca = Ca::init(&policy());
    // Test-sized pools; the attacker alone opens more connections than either.
    ca.append_config(
        "[limits]\nmax_handshakes = 64\nper_source_max_handshakes = 16\nmax_connections = 120\nmax_anonymous_connections = 40\nper_source_max_anonymous_connections = 10\n",
    );
    ca.spawn();
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    alice.login(&ca);
    let wait_for_log = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ca.log().contains(what) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            ca.log().contains(what),
            "posternd never said {what:?}:\n{}",
            ca.log()
        );
    };

    // Connections that never send their ClientHello: more than the whole handshake pool,
    // each held for the 10 s handshake deadline. Before a connection's handshake ends nobody
    // knows whether it is a peer, so the pool is shared: only the per-source share keeps the
    // renewal's handshake possible.
    let silent: Vec<TcpStream> = (0..100)
        .filter_map(|_| connect_from_attacker(&ca).ok())
        .collect();
    assert!(
        silent.len() > 64,
        "only {} connections were made",
        silent.len()
    );
    wait_for_log("has 16 handshakes in progress (per_source_max_handshakes)");
    let renew = run(alice.postern().arg("renew"));
    assert!(
        renew.status.success(),
        "renew beside the silent connections: {}\nposternd:\n{}",
        text(&renew),
        ca.log()
    );
    drop(silent);

    // Connections that finish their handshake and then send nothing: more than the anonymous
    // pool, each held until the header deadline. Another client's password login (anonymous
    // too) still finds a slot.
    let cfg = anonymous_tls(&ca);
    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        match connect_from_attacker(&ca).and_then(|s| handshake(s, &cfg)) {
            Ok(s) => idle.push(s),
            Err(_) => refused += 1,
        }
    }
    wait_for_log(
        "has 10 connections without a client certificate (per_source_max_anonymous_connections)",
    );
    let (password, code) = (alice.password.clone(), alice.fresh_code());
    let out = alice.login_with(&ca, &password, &code, &[]);
    assert!(
        out.status.success(),
        "a login beside {} idle anonymous connections ({refused} refused at the handshake): {}\nposternd:\n{}",
        idle.len(),
        text(&out),
        ca.log()
    );
    drop(idle);
}
