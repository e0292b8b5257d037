//! User stories of postern-gate under load it did not ask for: thousands of connections that
//! never authenticate, and slow ones, from one attacker's address do not keep a logged-in
//! user out; connections that do not authenticate within the login grace time are closed;
//! a user's connections to servers and channels are limited, with a message that says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_tests::{text, GateCluster, TEST_LOGIN};
use socket2::{Domain, SockAddr, Socket, Type};

/// The attacker's address; alice connects from 127.0.0.1.
const ATTACKER: &str = "127.0.0.9";
/// With `SLOW`, more than the 4,096 connections the gateway served at once before it had
/// limits: before them, these alone locked everyone out.
const IDLE: usize = 5000;
/// Connections that send one byte a second and never finish their SSH banner.
const SLOW: usize = 300;
/// How long a watchdog waits before it calls a step hung (not a measurement: the step takes
/// a second or two when the gateway works, and hangs for an hour when it does not).
const WATCHDOG: Duration = Duration::from_secs(180);

fn policy() -> String {
    format!(
        r#"
[defaults]
user_cert_ttl = "1h"

[roles.dev]
logins = ["{TEST_LOGIN}"]
nodes = {{ env = "dev" }}
permit = ["pty", "port-forwarding"]

[users.alice]
roles = ["dev"]
"#
    )
}

/// Raises this process's open-file limit to its hard limit (inherited by the gateway it
/// starts) so that the attack's thousands of sockets are possible on both sides.
#[allow(unsafe_code)]
fn raise_nofile(need: u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        assert!(
            l.rlim_max >= need,
            "RLIMIT_NOFILE's hard limit {} is below the {need} open files this test needs",
            l.rlim_max
        );
        l.rlim_cur = l.rlim_max;
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &l),
            0,
            "cannot raise RLIMIT_NOFILE to {}: {}",
            l.rlim_max,
            std::io::Error::last_os_error()
        );
    }
}

/// A TCP connection to the gateway from the attacker's address; `None` when the connection
/// could not be made (a full listen queue of a gateway that stopped accepting).
fn attacker_connect(gate: SocketAddr) -> Option<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{ATTACKER}:0").parse().unwrap();
    s.bind(&SockAddr::from(from)).unwrap();
    s.connect_timeout(&SockAddr::from(gate), Duration::from_millis(2500))
        .ok()?;
    Some(TcpStream::from(s))
}

/// The attack: `idle` connections that send nothing and `slow` ones that send one byte of
/// an SSH banner a second, until dropped.
struct Attack {
    idle: Vec<TcpStream>,
    slow: Arc<std::sync::Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Attack {
    fn start(gate: SocketAddr, idle: usize, slow: usize) -> Attack {
        // The slow ones first, so that they are the ones the gateway lets in.
        let slow: Vec<TcpStream> = (0..slow).filter_map(|_| attacker_connect(gate)).collect();
        let slow = Arc::new(std::sync::Mutex::new(slow));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (slow, stop) = (Arc::clone(&slow), Arc::clone(&stop));
            std::thread::spawn(move || {
                let banner = b"SSH-2.0-slowloris";
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let b = [banner[i % banner.len()]];
                    for s in slow.lock().unwrap().iter_mut() {
                        let _ = s.set_nonblocking(true);
                        let _ = s.write(&b);
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        };
        // A gateway that stops accepting (every slot held) fills its listen queue, and then
        // connects hang: three in a row that cannot be made end the attack's connecting.
        let mut idle_conns = Vec::new();
        let mut failed = 0;
        while idle_conns.len() < idle && failed < 3 {
            match attacker_connect(gate) {
                Some(s) => {
                    idle_conns.push(s);
                    failed = 0;
                }
                None => failed += 1,
            }
        }
        let idle = idle_conns;
        Attack {
            idle,
            slow,
            stop,
            thread: Some(thread),
        }
    }

    /// How many of the attack's connections the gateway has not closed (yet).
    fn open(&self) -> usize {
        let slow = self.slow.lock().unwrap();
        self.idle
            .iter()
            .chain(slow.iter())
            .filter(|s| !closed_by_peer(s))
            .count()
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether the peer closed `s`: everything it sent read, then end of file or a reset.
fn closed_by_peer(mut s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Waits for a child with a watchdog; panics (after killing it) when it hangs.
fn wait_output(mut child: Child, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > WATCHDOG {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{what} hung for {} s: {}", WATCHDOG.as_secs(), text(&out));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// alice's stock ssh to web1 through the gateway, started (not waited for).
fn alice_ssh(c: &GateCluster, args: &[&str]) -> Child {
    Command::new("ssh")
        .env("HOME", c.alice.home.path())
        .env_remove("SSH_AUTH_SOCK")
        .arg("-F")
        .arg(c.alice.home.path().join(".ssh/config"))
        .args(["-o", "BatchMode=yes", "-l", TEST_LOGIN])
        .arg(format!("web1.{}", c.ca.cluster))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits, with the watchdog, until `f` holds.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < WATCHDOG,
            "{what}: not within {} s",
            WATCHDOG.as_secs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The sum over the gateway's `[limits]` summaries of the connections refused by `key`
/// (their message says "N by KEY"; the fields after it may be coloured).
fn refused_by(log: &str, key: &str) -> u64 {
    let by = format!(" by {key}");
    log.lines()
        .filter(|l| l.contains("[limits] refused in the last"))
        .filter_map(|l| {
            let before = &l[..l.find(&by)?];
            before
                .rsplit([' ', '('])
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

#[test]
fn thousands_of_idle_and_slow_connections_from_one_address_do_not_keep_alice_out() {
    raise_nofile((IDLE + SLOW + 1024) as u64);
    // The gateway with its defaults: no gate.toml.
    let c = GateCluster::start(&policy());
    let gate: SocketAddr = format!("127.0.0.1:{}", c.gate.port).parse().unwrap();
    let attack = Attack::start(gate, IDLE, SLOW);
    // More than the 4,096 slots the gateway had before its limits, whatever happens next.
    let made = attack.idle.len() + attack.slow.lock().unwrap().len();
    assert!(
        made > 4096,
        "only {made} of the attack's connections were made"
    );
    let out = wait_output(alice_ssh(&c, &["echo in"]), "alice's ssh under the attack");
    assert!(
        out.status.success(),
        "alice's ssh under the attack: {}\ngate:\n{}",
        text(&out),
        c.gate.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in\n");
    // Why she got in: the attacker's address holds no more than its share of unauthenticated
    // connections (per_source_max_startups, 128 by default); the rest were closed at once.
    let open = attack.open();
    assert!(open <= 128, "{open} of the attack's connections are open");
    // And the gateway says so, in a summary rather than a line per connection.
    wait_until("the gateway's summary of refusals", || {
        refused_by(&c.gate.log(), "per_source_max_startups") >= (made - 128) as u64
    });
    let log = c.gate.log();
    assert!(
        log.contains(&format!("most from {ATTACKER}")),
        "the summary does not name the attacker:\n{log}"
    );
    let summaries = log
        .lines()
        .filter(|l| l.contains("[limits] refused in the last"))
        .count();
    assert!(summaries < 20, "{summaries} summary lines:\n{log}");
}

#[test]
fn connections_that_do_not_authenticate_within_the_grace_time_are_closed_and_alice_is_not() {
    raise_nofile((IDLE + SLOW + 1024) as u64);
    let mut c = GateCluster::start(&policy());
    // Room for every connection of the attack, so that only the grace time ends them.
    c.gate.respawn_with_config(
        "[limits]\nlogin_grace_time = \"10s\"\nmax_startups = \"2000:30:3000\"\nper_source_max_startups = 1000\n",
    );
    let gate: SocketAddr = format!("127.0.0.1:{}", c.gate.port).parse().unwrap();
    let attack = Attack::start(gate, 100, 100);
    assert_eq!(attack.idle.len() + attack.slow.lock().unwrap().len(), 200);
    // alice's session lasts longer than the grace time: it is authenticated, so it stays.
    // (Her own handshake has the whole grace time, ten seconds, where it takes well under one.)
    let out = wait_output(alice_ssh(&c, &["sleep 12; echo still here"]), "alice's ssh");
    assert!(
        out.status.success(),
        "alice's ssh: {}\ngate:\n{}",
        text(&out),
        c.gate.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");
    wait_until("the gateway closing the attack's connections", || {
        attack.open() == 0
    });
    wait_until("the gateway's summary of grace-time closes", || {
        refused_by(&c.gate.log(), "login_grace_time") >= 200
    });
    assert_eq!(refused_by(&c.gate.log(), "login_grace_time"), 200);
    assert_eq!(refused_by(&c.gate.log(), "per_source_max_startups"), 0);
}

/// Two sessions of alice held open (each is a connection to web1 with one session channel).
fn hold_two(c: &GateCluster) -> Vec<Child> {
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut ch = alice_ssh(c, &["echo ready; sleep 120"]);
        let mut line = [0u8; 6];
        ch.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
        assert_eq!(&line, b"ready\n", "gate:\n{}", c.gate.log());
        held.push(ch);
    }
    held
}

/// The refused third ssh, then, once the held ones end, one that succeeds (the slots are
/// given back).
fn third_is_refused_then_admitted(c: &GateCluster, held: Vec<Child>, message: &str, key: &str) {
    third_is_refused_with_then_admitted(c, held, message, key, message);
}

/// The same, with what the user's ssh prints (`shown`) apart from the gateway's message.
fn third_is_refused_with_then_admitted(
    c: &GateCluster,
    held: Vec<Child>,
    message: &str,
    key: &str,
    shown: &str,
) {
    let out = wait_output(alice_ssh(c, &["true"]), "alice's third ssh");
    assert!(!out.status.success(), "the third ssh was let through");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(shown) && (shown != message || err.contains(key)),
        "ssh did not print the gateway's reason: {}\ngate:\n{}",
        text(&out),
        c.gate.log()
    );
    // The gateway's log reaches the test through a pipe that a thread copies: wait for the
    // line rather than read it once (seen racing in a full run).
    wait_until("the refusal in the gateway's log", || {
        c.gate
            .log()
            .lines()
            .any(|l| l.contains("refused by [limits]") && l.contains(key))
    });
    wait_until("the refusal in the CA's audit log", || {
        c.ca.audit().iter().any(|e| {
            // The CA keeps the gateway's event whole: its detail is under the event's.
            let d = &e["detail"]["detail"];
            e["kind"] == "gateway.refused"
                && d["reason"] == key
                && d["message"].as_str().is_some_and(|m| m.contains(message))
        })
    });
    for mut h in held {
        let _ = h.kill();
        let _ = h.wait();
    }
    wait_until("a new ssh once the held ones ended", || {
        wait_output(alice_ssh(c, &["true"]), "alice's ssh")
            .status
            .success()
    });
}

#[test]
fn a_users_connections_to_servers_are_limited_with_a_message() {
    let mut c = GateCluster::start(&policy());
    c.gate
        .respawn_with_config("[limits]\nmax_inner_connections_per_user = 2\n");
    let held = hold_two(&c);
    third_is_refused_then_admitted(
        &c,
        held,
        "postern-gate: refused: alice already has 2 connections to servers open through this gateway",
        "max_inner_connections_per_user",
    );
}

#[test]
fn a_users_authenticated_connections_to_the_gateway_are_limited() {
    // Each ssh -J is one outer connection: two held, the third fails its authentication
    // (what one certificate holder could otherwise do to all 4,096 connections), and the
    // gateway and the CA say why.
    let mut c = GateCluster::start(&policy());
    c.gate
        .respawn_with_config("[limits]\nmax_connections_per_user = 2\n");
    let held = hold_two(&c);
    third_is_refused_with_then_admitted(
        &c,
        held,
        "postern-gate: refused: alice already has 2 connections open through this gateway",
        "max_connections_per_user",
        "Permission denied",
    );
}

#[test]
fn a_users_channels_are_limited_with_a_message() {
    let mut c = GateCluster::start(&policy());
    c.gate
        .respawn_with_config("[limits]\nmax_channels_per_user = 2\n");
    let held = hold_two(&c);
    third_is_refused_then_admitted(
        &c,
        held,
        "postern-gate: refused: alice already has 2 channels open through this gateway",
        "max_channels_per_user",
    );
}

#[test]
fn a_bad_limit_stops_the_gateway_with_the_line_and_the_reason() {
    // The file is read before anything else: no cluster is needed to be refused.
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("gate.toml");
    for (toml, why) in [
        (
            "[limits]\nmax_startups = \"10:0:100\"\n",
            ["line 2, column 16", "rate must be from 1 to 100"],
        ),
        (
            "[limits]\nlogin_grace_time = \"30\"\n",
            ["line 2", "a number needs a unit"],
        ),
        (
            "max_connections = 100\n[limits]\nmax_startups = \"10:30:100\"\n",
            [
                "gate.toml",
                "its full (100) must be below max_connections (100)",
            ],
        ),
    ] {
        std::fs::write(&path, toml).unwrap();
        let out = postern_tests::run(
            Command::new(postern_tests::bin("postern-gate"))
                .args(["serve", "--listen", "127.0.0.1:0", "--config"])
                .arg(&path)
                .arg("--state-dir")
                .arg(state.path()),
        );
        assert!(!out.status.success(), "{}", text(&out));
        for w in why {
            assert!(text(&out).contains(w), "{toml:?}: {}", text(&out));
        }
    }
}
