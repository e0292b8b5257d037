//! Shared utilities of the harness: where the binaries are, free ports, running commands and
//! showing their output, spawning a daemon and waiting for its ready line, and waiting for a
//! log line.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the workspace's binaries are.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("POSTERN_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/debug/deps/<test> → target/debug
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The path of one workspace binary; panics with advice when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1 for a server a test starts.
///
/// Taken below the kernel's ephemeral range (32768 and up on Linux), so that no outgoing
/// connection (ssh, curl, the gateway's own dials) can be given the same port as its source
/// port between this call and the server's bind; each port is handed out once per process,
/// and the starting point depends on the pid so that concurrent test processes differ.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        let port = u16::try_from(FIRST + n).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs a command and returns its output, panicking only when it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command with the given standard input.
pub fn run_with_input(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // A command that refuses its arguments exits without reading: its closed pipe is not
    // the test's failure, its exit status and message are.
    if let Err(e) = child.stdin.take().unwrap().write_all(input.as_bytes()) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing to {cmd:?}: {e}"
        );
    }
    child.wait_with_output().unwrap()
}

/// Text of stdout and stderr, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Spawns a daemon, copies its stderr into `log`, and waits until a line contains `ready`.
pub(crate) fn spawn_until_ready(
    mut cmd: Command,
    ready: &'static str,
    log: &Arc<Mutex<String>>,
) -> Child {
    let mut child = cmd
        .env("POSTERN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let sink = Arc::clone(log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains(ready) {
                let _ = tx.send(());
            }
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    if rx.recv_timeout(Duration::from_secs(20)).is_err() {
        let _ = child.kill();
        panic!("no {ready:?} line within 20 s:\n{}", log.lock().unwrap());
    }
    child
}

pub(crate) fn split_status(out: &Output) -> (u16, String) {
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", &s));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The SHA-256 of a file in hex, by `sha256sum`.
pub fn sha256_hex(path: &std::path::Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// What `log` returns once `done` holds for it, or after 30 s (so that the caller's assertion
/// shows what was there). Daemons' logs arrive through a pipe that a thread of the test reads,
/// or a file that sshd's session processes append to: a line written before the client saw its
/// effect can still be in flight when the client exits.
pub fn log_when(log: impl Fn() -> String, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = log();
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A daemon's log without terminal colours (tracing colours field names and values apart).
pub fn plain_log(log: &str) -> String {
    let mut out = String::new();
    let mut rest = log;
    while let Some(i) = rest.find('\x1b') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        rest = match rest.find('m') {
            Some(j) => &rest[j + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// `cmd` run with `/etc/hosts` replaced by `hosts` for it alone (a private mount namespace),
/// as a resolver that answers one name with several addresses would.
pub fn with_hosts(hosts: &std::path::Path, cmd: &Command) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
        .arg(hosts)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}
