//! One harness for Postern's end-to-end tests: temporary directories, `posternd` on a free
//! loopback port, the `postern` CLI with its own `$HOME`, and a stock `sshd`, all cleaned up on
//! drop, so that each test reads like a user story.
//!
//! The binaries are taken from the cargo target directory (`scripts/test` builds them first).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;

/// The OS account that test certificates log in as.
pub const TEST_LOGIN: &str = "postern-e2e";

/// A second OS account whose login shell is bash, for attacks that need bash's expansions.
pub const TEST_BASH_LOGIN: &str = "postern-e2b";

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
fn spawn_until_ready(
    mut cmd: Command,
    ready: &'static str,
    log: &std::sync::Arc<Mutex<String>>,
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
    let sink = std::sync::Arc::clone(log);
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

/// A running `posternd` with its own data directory.
pub struct Ca {
    /// The data directory (holds posternd.toml, policy.toml, ca/, the database).
    pub dir: TempDir,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The `sha256:` pin.
    pub pin: String,
    /// The cluster's name.
    pub cluster: String,
    child: Option<Child>,
    log: std::sync::Arc<Mutex<String>>,
}

impl Ca {
    /// Initialises a CA with the given policy and starts it.
    pub fn start(policy: &str) -> Ca {
        let mut ca = Ca::init(policy);
        ca.spawn();
        ca
    }

    /// Initialises a CA without starting it.
    pub fn init(policy: &str) -> Ca {
        let dir = tempfile::Builder::new()
            .prefix("postern-ca")
            .tempdir()
            .unwrap();
        let port = free_port();
        let out = run(Command::new(bin("posternd"))
            .args(["init", "--cluster", "test.postern", "--json", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.path()));
        assert!(out.status.success(), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
        Ca {
            url: v["api_url"].as_str().unwrap().to_owned(),
            pin: v["ca_pin"].as_str().unwrap().to_owned(),
            cluster: v["cluster"].as_str().unwrap().to_owned(),
            dir,
            child: None,
            log: Default::default(),
        }
    }

    /// The config file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("posternd.toml")
    }

    /// Starts `posternd serve` and waits for its ready line.
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(bin("posternd"));
        cmd.arg("serve").arg("--config").arg(self.config());
        self.child = Some(spawn_until_ready(cmd, "posternd ready", &self.log));
    }

    /// Stops the daemon (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Runs an admin subcommand with `--json` and returns its output.
    pub fn admin(&self, args: &[&str]) -> Output {
        run(Command::new(bin("posternd"))
            .args(args)
            .arg("--config")
            .arg(self.config()))
    }

    /// Runs an admin subcommand with `--json`; panics unless it succeeds.
    pub fn admin_json(&self, args: &[&str]) -> Value {
        let out = run(Command::new(bin("posternd"))
            .args(args)
            .arg("--json")
            .arg("--config")
            .arg(self.config()));
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Adds a user and returns the invite.
    pub fn invite(&self, user: &str) -> String {
        self.admin_json(&["users", "add", user])["invite"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Replaces the policy file.
    pub fn set_policy(&self, policy: &str) {
        let p = self.dir.path().join("policy.toml");
        let tmp = self.dir.path().join("policy.toml.tmp");
        std::fs::write(&tmp, policy).unwrap();
        std::fs::rename(tmp, p).unwrap();
    }

    /// The audit events, oldest first.
    pub fn audit(&self) -> Vec<Value> {
        self.admin_json(&["audit", "tail", "-n", "1000"])
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A person with their own `$HOME`, using the `postern` CLI.
pub struct Person {
    /// Their home directory.
    pub home: TempDir,
    /// Their Postern user name.
    pub user: String,
    /// Their password.
    pub password: String,
    /// Their TOTP secret (raw bytes), after enrolment.
    pub totp_secret: Vec<u8>,
    last_step: u64,
}

impl Person {
    /// A new person.
    pub fn new(user: &str) -> Person {
        Person {
            home: tempfile::Builder::new()
                .prefix("postern-home")
                .tempdir()
                .unwrap(),
            user: user.to_owned(),
            password: format!("pw-{user}-correct horse"),
            totp_secret: Vec::new(),
            last_step: 0,
        }
    }

    /// A `postern` command with this person's `$HOME`.
    pub fn postern(&self) -> Command {
        let mut c = Command::new(bin("postern"));
        c.env("HOME", self.home.path())
            .env_remove("SSH_AUTH_SOCK")
            .env("NO_COLOR", "1");
        c
    }

    /// Enrols with an invite from the CA; remembers the TOTP secret.
    pub fn enroll(&mut self, ca: &Ca) {
        let invite = ca.invite(&self.user);
        let out = run_with_input(
            self.postern()
                .args([
                    "enroll", "--ca", &ca.url, "--ca-pin", &ca.pin, "--user", &self.user,
                ])
                .args(["--invite", &invite, "--password-stdin", "--json"]),
            &format!("{}\n", self.password),
        );
        assert!(out.status.success(), "enroll: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let uri = v["otpauth_uri"].as_str().unwrap();
        let secret = uri
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("secret="))
            .unwrap();
        self.totp_secret = base32_decode(secret);
    }

    /// The TOTP code for a time step.
    pub fn code_at_step(&self, step: u64) -> String {
        let t = totp_rs::TOTP::new_unchecked(
            totp_rs::Algorithm::SHA1,
            6,
            1,
            30,
            self.totp_secret.clone(),
            None,
            String::new(),
        );
        t.generate(step * 30)
    }

    /// A code not used before (the current step, or the next one when that was used).
    pub fn fresh_code(&mut self) -> String {
        let step = (now() / 30).max(self.last_step + 1);
        assert!(
            step <= now() / 30 + 1,
            "out of fresh TOTP steps; the test logs in too often"
        );
        self.last_step = step;
        self.code_at_step(step)
    }

    /// `postern login` with the password on stdin and extra arguments.
    pub fn login_with(&mut self, ca: &Ca, password: &str, otp: &str, extra: &[&str]) -> Output {
        run_with_input(
            self.postern()
                .args([
                    "login", "--ca", &ca.url, "--ca-pin", &ca.pin, "--user", &self.user,
                ])
                .args(["--password-stdin", "--otp", otp])
                .args(extra),
            &format!("{password}\n"),
        )
    }

    /// A successful login; panics otherwise.
    pub fn login(&mut self, ca: &Ca) -> Output {
        let code = self.fresh_code();
        let pw = self.password.clone();
        let out = self.login_with(ca, &pw, &code, &[]);
        assert!(out.status.success(), "login: {}", text(&out));
        out
    }

    /// The cluster folder under `~/.ssh/postern`.
    pub fn cluster_dir(&self, ca: &Ca) -> PathBuf {
        self.home.path().join(".ssh/postern").join(&ca.cluster)
    }
}

/// RFC 4648 base32 (no padding), as in otpauth URIs.
pub fn base32_decode(s: &str) -> Vec<u8> {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits = 0u64;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHA
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())
            .unwrap_or_else(|| panic!("not base32: {s}")) as u64;
        bits = (bits << 5) | v;
        n += 5;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// Creates the test login account once (the tests run as root).
pub fn ensure_test_login() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| ensure_login(TEST_LOGIN, "/bin/sh"));
}

/// Creates [`TEST_BASH_LOGIN`] (login shell bash) if it does not exist.
pub fn ensure_bash_login() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| ensure_login(TEST_BASH_LOGIN, "/bin/bash"));
}

fn ensure_login(name: &str, shell: &str) {
    let exists = run(Command::new("id").arg(name)).status.success();
    if !exists {
        let out = run(Command::new("useradd").args(["--create-home", "--shell", shell, name]));
        assert!(
            out.status.success(),
            "cannot create the test account {name} (the end-to-end tests run as root): {}",
            text(&out)
        );
    }
    // sshd refuses accounts whose password field is locked ("!") when UsePAM is off;
    // "*" means no password login but an unlocked account.
    let _ = run(Command::new("usermod").args(["-p", "*", "--shell", shell, name]));
}

/// The distribution's default `sshd_config` (the pristine copy Debian's package keeps in
/// /usr/share/openssh), exactly as a fresh server has it, with its `Include` pointed at
/// `dropins` and this test's port, address, pid file and log level appended. The test adds
/// nothing that hardens sshd: whatever Postern needs, `postern-shim join` must write itself.
pub fn distribution_sshd_config(
    dropins: &std::path::Path,
    port: u16,
    pid: &std::path::Path,
) -> String {
    distribution_sshd_config_from(std::path::Path::new("/"), dropins, port, pid)
}

/// [`distribution_sshd_config`] from the root of another system (a Debian 13 chroot).
pub fn distribution_sshd_config_from(
    root: &std::path::Path,
    dropins: &std::path::Path,
    port: u16,
    pid: &std::path::Path,
) -> String {
    let pristine = root.join("usr/share/openssh/sshd_config");
    let text = std::fs::read_to_string(&pristine)
        .or_else(|_| std::fs::read_to_string(root.join("etc/ssh/sshd_config")))
        .unwrap_or_else(|e| panic!("no distribution sshd_config under {}: {e}", root.display()));
    let include = "Include /etc/ssh/sshd_config.d/*.conf";
    assert!(
        text.contains(include),
        "the distribution's sshd_config has no `{include}`"
    );
    let mut out = text.replace(include, &format!("Include {}/*.conf", dropins.display()));
    // Appended, so that they change nothing the distribution's lines set (sshd keeps the first
    // value of a keyword); none of these is set by Debian's file.
    out.push_str(&format!(
        "\n# postern tests\nPort {port}\nListenAddress 127.0.0.1\nPidFile {}\nLogLevel VERBOSE\n",
        pid.display()
    ));
    out
}

/// A stock `sshd` on a free loopback port.
pub struct Sshd {
    /// Its folder (config, host key, log).
    pub dir: TempDir,
    /// Its port.
    pub port: u16,
    child: Child,
}

impl Sshd {
    /// Starts sshd trusting the given CA public key lines as `TrustedUserCAKeys`.
    pub fn start(trusted_ca: &str) -> Sshd {
        ensure_test_login();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::Builder::new()
            .prefix("postern-sshd")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let out = run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join("host_key")));
        assert!(out.status.success(), "{}", text(&out));
        std::fs::write(d.join("trusted_ca.pub"), trusted_ca).unwrap();
        let port = free_port();
        // The distribution's sshd_config, with this test's drop-in trusting the CA.
        std::fs::create_dir_all(d.join("sshd_config.d")).unwrap();
        std::fs::write(
            d.join("sshd_config.d/50-test.conf"),
            format!(
                "HostKey {hk}\nTrustedUserCAKeys {ca}\n",
                hk = d.join("host_key").display(),
                ca = d.join("trusted_ca.pub").display(),
            ),
        )
        .unwrap();
        let cfg = distribution_sshd_config(&d.join("sshd_config.d"), port, &d.join("sshd.pid"));
        std::fs::write(d.join("sshd_config"), cfg).unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sshd { dir, port, child }
    }

    /// What sshd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Stock `ssh` as `login` to `NAME.<cluster>` (so that the `Host *.<cluster>` block that
    /// `postern login` wrote applies), pointed at this server with `HostName`.
    pub fn ssh(&self, person: &Person, ca: &Ca, login: &str, remote: &str) -> Output {
        run(Command::new("ssh")
            .env("HOME", person.home.path())
            .env_remove("SSH_AUTH_SOCK")
            .arg("-F")
            .arg(person.home.path().join(".ssh/config"))
            .args(["-o", "HostName=127.0.0.1", "-p", &self.port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .args(["-l", login])
            .arg(format!("web1.{}", ca.cluster))
            .arg(remote))
    }
}

/// `curl` against the API: returns (HTTP status, body). TLS is not verified here: these
/// tests are about the server's parsing, the CLI tests cover the pinning.
pub fn curl(ca: &Ca, path: &str, body: Option<&[u8]>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sk",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-H",
        "content-type: application/json",
    ]);
    if let Some(b) = body {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b).unwrap();
        // Wait for the server's answer to `Expect: 100-continue` before sending a body: a server
        // that refuses an oversized body (413) closes the connection, and a client still
        // sending would see a reset instead of the answer.
        cmd.args(["-H", "Expect: 100-continue", "--expect100-timeout", "30"]);
        cmd.arg("--data-binary")
            .arg(format!("@{}", f.path().display()));
        let out = run(cmd.arg(format!("{}{path}", ca.url)));
        return split_status(&out);
    }
    split_status(&run(cmd.arg(format!("{}{path}", ca.url))))
}

fn split_status(out: &Output) -> (u16, String) {
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", &s));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies a file to `dest` atomically with mode 0755 (root-owned: sshd requires that of its
/// helpers, with no group- or world-writable parent).
fn install_root_owned(src: &std::path::Path, dest: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let dir = dest.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Tests run in parallel threads: every copy gets its own temporary name.
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let tmp = dir.join(format!(".tmp{}-{n}", std::process::id()));
    std::fs::copy(src, &tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// The shim as sshd runs it: copied once per test process to a root-owned directory.
pub fn installed_shim() -> PathBuf {
    installed_shim_in(None)
}

/// [`installed_shim`] inside the system at `root` (a chroot) or on this machine; returns the
/// path as seen from inside that system.
pub fn installed_shim_in(root: Option<&std::path::Path>) -> PathBuf {
    static DONE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let inner = PathBuf::from(format!(
        "/usr/local/libexec/postern-test-{}/postern-shim",
        std::process::id()
    ));
    let base = root.map_or_else(|| PathBuf::from("/"), |r| r.to_path_buf());
    let mut done = DONE.lock().unwrap();
    if !done.contains(&base) {
        install_root_owned(
            &bin("postern-shim"),
            &base.join(inner.strip_prefix("/").unwrap()),
        );
        done.push(base);
    }
    inner
}

impl Ca {
    /// A join token for `name`.
    pub fn token(&self, kind: &str, name: &str, labels: &str) -> String {
        self.token_with(kind, name, labels, &[])
    }

    /// A join token for `name` with further `tokens add` flags (`--replace`).
    pub fn token_with(&self, kind: &str, name: &str, labels: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "tokens", "add", "--kind", kind, "--name", name, "--labels", labels,
        ];
        args.extend_from_slice(extra);
        self.admin_json(&args)["token"].as_str().unwrap().to_owned()
    }
}

/// The systems the servers of the end-to-end stories run: Debian 12's sshd (OpenSSH 9.2) on
/// this machine, and Debian 13's (OpenSSH 10.0) in a chroot that shares this machine's
/// loopback, built once by `scripts/test` with debootstrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distro {
    /// This machine (Debian 12).
    Debian12,
    /// The Debian 13 chroot.
    Debian13,
}

/// Where `scripts/test` keeps the Debian 13 root (outside the checkout).
pub const DEFAULT_DEBIAN13_ROOT: &str = "/var/cache/postern-tests/debian13";

impl Distro {
    /// The chroot's root, `None` for this machine. Panics with advice when the Debian 13 root
    /// was not built: these stories must not pass by being skipped.
    pub fn root(self) -> Option<PathBuf> {
        match self {
            Distro::Debian12 => None,
            Distro::Debian13 => {
                let r = PathBuf::from(
                    std::env::var("POSTERN_DEBIAN13_ROOT")
                        .unwrap_or_else(|_| DEFAULT_DEBIAN13_ROOT.to_owned()),
                );
                assert!(
                    r.join("usr/sbin/sshd").exists(),
                    "no Debian 13 root at {}: scripts/test builds it (debootstrap --variant=minbase --include=openssh-server trixie)",
                    r.display()
                );
                prepare_root(&r);
                Some(r)
            }
        }
    }
}

/// Accounts and directories a chroot needs, once per process.
fn prepare_root(root: &std::path::Path) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::fs::create_dir_all(root.join("run/sshd")).unwrap();
        for (name, shell) in [(TEST_LOGIN, "/bin/sh"), (TEST_BASH_LOGIN, "/bin/bash")] {
            let exists = run(Command::new("chroot").arg(root).args(["id", name]))
                .status
                .success();
            if !exists {
                let out = run(Command::new("chroot").arg(root).args([
                    "useradd",
                    "--create-home",
                    "--shell",
                    shell,
                    name,
                ]));
                assert!(
                    out.status.success(),
                    "useradd in {}: {}",
                    root.display(),
                    text(&out)
                );
            }
            let _ = run(Command::new("chroot")
                .arg(root)
                .args(["usermod", "-p", "*", name]));
        }
    });
}

/// A server joined with `postern-shim join`, running a stock sshd (a copy under its own name,
/// so that it has its own PAM service) from the drop-in that join wrote.
pub struct Node {
    /// Everything of this node: state/, sshd_config, sshd_config.d/, logs (the path on this
    /// machine; inside the chroot of a Debian 13 node it is [`Node::inner`]).
    pub dir: TempDir,
    /// sshd's port.
    pub port: u16,
    /// Node name.
    pub name: String,
    /// The system it runs.
    pub distro: Distro,
    root: Option<PathBuf>,
    service: String,
    sshd: Option<Child>,
}

static NODE_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Node {
    /// The state directory (on this machine).
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A path of this machine as the node's own system sees it.
    pub fn inner(&self, path: &std::path::Path) -> PathBuf {
        match &self.root {
            Some(r) => PathBuf::from("/").join(path.strip_prefix(r).unwrap()),
            None => path.to_path_buf(),
        }
    }

    /// A command run on the node's system (in its chroot for Debian 13).
    pub fn command(&self, program: &std::path::Path) -> Command {
        match &self.root {
            Some(r) => {
                let mut c = Command::new("chroot");
                c.arg(r).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// Prepares config files, runs join (with --pam on this node's own PAM file) and returns
    /// the node and join's output; sshd is not started yet.
    pub fn join(ca: &Ca, name: &str, token: &str, extra: &[&str]) -> (Node, Output) {
        Node::join_on(Distro::Debian12, ca, name, token, extra)
    }

    /// [`Node::join`] on `distro`.
    pub fn join_on(
        distro: Distro,
        ca: &Ca,
        name: &str,
        token: &str,
        extra: &[&str],
    ) -> (Node, Output) {
        let node = Node::prepare(distro, name, |c| c);
        let out = node.run_join(ca, token, extra);
        (node, out)
    }

    /// The node's files from the distribution's sshd_config, which `edit` may change (as an
    /// admin's own lines would), before any join.
    pub fn prepare(distro: Distro, name: &str, edit: impl FnOnce(String) -> String) -> Node {
        ensure_test_login();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let root = distro.root();
        let mut b = tempfile::Builder::new();
        b.prefix("postern-node");
        let dir = match &root {
            Some(r) => b.tempdir_in(r.join("tmp")).unwrap(),
            None => b.tempdir().unwrap(),
        };
        let port = free_port();
        let n = NODE_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let service = format!("sshd-pt{}x{n}", std::process::id());
        let node = Node {
            dir,
            port,
            name: name.to_owned(),
            distro,
            root,
            service,
            sshd: None,
        };
        let d = node.dir.path();
        std::fs::create_dir_all(d.join("sshd_config.d")).unwrap();
        let text = distribution_sshd_config_from(
            node.root.as_deref().unwrap_or(std::path::Path::new("/")),
            &node.inner(&d.join("sshd_config.d")),
            port,
            &node.inner(&d.join("sshd.pid")),
        );
        std::fs::write(d.join("sshd_config"), edit(text)).unwrap();
        std::fs::write(
            node.pam_file(),
            "@include common-auth\n@include common-account\n@include common-session\n",
        )
        .unwrap();
        node
    }

    fn pam_file(&self) -> PathBuf {
        self.root
            .as_deref()
            .unwrap_or(std::path::Path::new("/"))
            .join("etc/pam.d")
            .join(&self.service)
    }

    /// Runs `postern-shim join` for this node's files, as an admin on that server would.
    pub fn run_join(&self, ca: &Ca, token: &str, extra: &[&str]) -> Output {
        let d = self.dir.path();
        let shim = installed_shim_in(self.root.as_deref());
        let program = match &self.root {
            Some(_) => shim.clone(),
            None => bin("postern-shim"),
        };
        run(self
            .command(&program)
            .args([
                "join", "--ca", &ca.url, "--ca-pin", &ca.pin, "--token", token, "--name",
                &self.name,
            ])
            .args(["--address", &format!("127.0.0.1:{}", self.port)])
            .arg("--state-dir")
            .arg(self.inner(&d.join("state")))
            .arg("--sshd-config")
            .arg(self.inner(&d.join("sshd_config")))
            .arg("--sshd-config-dir")
            .arg(self.inner(&d.join("sshd_config.d")))
            .args(if extra.contains(&"--shim-path") {
                vec![]
            } else {
                vec![OsString::from("--shim-path"), shim.into()]
            })
            .args(["--no-reload", "--pam", "--pam-file"])
            .arg(self.inner(&self.pam_file()))
            .args(extra))
    }

    /// Starts sshd (a copy named after this node's PAM service). A Debian 13 node's sshd runs
    /// chrooted, in a mount namespace of its own with this machine's /dev and a /proc.
    pub fn start_sshd(&mut self) {
        self.start_sshd_with(&[]);
    }

    /// [`Node::start_sshd`] with more arguments on sshd's command line (as Debian's unit adds
    /// `$SSHD_OPTS` from /etc/default/ssh).
    pub fn start_sshd_with(&mut self, extra: &[&str]) {
        let base = self.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        let exe = base.join("usr/local/sbin").join(&self.service);
        install_root_owned(&base.join("usr/sbin/sshd"), &exe);
        let config = self.inner(&self.dir.path().join("sshd_config"));
        // A thread of another test may fork while our copy of sshd is still open for writing;
        // its child holds that descriptor until it execs, and exec of the copy then fails with
        // ETXTBSY for a moment. Retry briefly.
        let mut tries = 0;
        let child = loop {
            let log = std::fs::File::create(self.dir.path().join("sshd.log")).unwrap();
            let mut cmd = match &self.root {
                Some(r) => {
                    let mut c = Command::new("unshare");
                    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                        .arg(
                            "r=$1 exe=$2 cfg=$3; shift 3; \
                             mount --rbind /dev \"$r/dev\" && mount -t proc proc \"$r/proc\" && \
                             exec chroot \"$r\" \"$exe\" -D -e -f \"$cfg\" \"$@\"",
                        )
                        .arg("sh")
                        .arg(r)
                        .arg(self.inner(&exe))
                        .arg(&config)
                        .args(extra);
                    c
                }
                None => {
                    let mut c = Command::new(&exe);
                    c.args(["-D", "-e", "-f"]).arg(&config).args(extra);
                    c
                }
            };
            match cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
            {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot start {}: {e}", exe.display()),
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.sshd = Some(child);
    }

    /// sshd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// `postern-shim SUBCOMMAND --state-dir <state>`, on the node's system.
    pub fn shim(&self, sub: &str) -> Output {
        self.shim_args(&[sub])
    }

    /// `postern-shim ARGS... --state-dir <state>`, on the node's system.
    pub fn shim_args(&self, args: &[&str]) -> Output {
        let program = match &self.root {
            Some(_) => installed_shim_in(self.root.as_deref()),
            None => bin("postern-shim"),
        };
        run(self
            .command(&program)
            .args(args)
            .arg("--state-dir")
            .arg(self.inner(&self.state())))
    }

    /// A key pair and a certificate signed by the CA's `ca` (`user` or `node-access`) for
    /// `user` with these logins, via `posternd certs sign`. Returns the private key path.
    pub fn signed_key(&self, ca: &Ca, which: &str, user: &str, logins: &[&str]) -> PathBuf {
        let n = NODE_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let key = self.dir.path().join(format!("key{n}"));
        let out = run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key));
        assert!(out.status.success(), "{}", text(&out));
        let mut args = vec![
            "certs", "sign", "--ca", which, "--user", user, "--ttl", "10m", "--key",
        ];
        let pubkey = format!("{}.pub", key.display());
        args.push(&pubkey);
        for l in logins {
            args.push("--principal");
            args.push(l);
        }
        let v = ca.admin_json(&args);
        std::fs::write(
            format!("{}-cert.pub", key.display()),
            v["certificate"].as_str().unwrap(),
        )
        .unwrap();
        key
    }

    /// Stock ssh with a key (and its `-cert.pub`) as `login`, checking the host certificate
    /// against the host CA (taken from the bundle, so that it works while the CA is down).
    pub fn ssh(&self, key: &std::path::Path, login: &str, remote: &str) -> Output {
        let kh = self.dir.path().join("known_hosts");
        if !kh.exists() {
            let b: Value =
                serde_json::from_slice(&std::fs::read(self.state().join("bundle.json")).unwrap())
                    .unwrap();
            let host_ca = b["host_ca_keys"][0].as_str().unwrap();
            std::fs::write(&kh, format!("@cert-authority * {host_ca}\n")).unwrap();
        }
        run(Command::new("ssh")
            .env_remove("SSH_AUTH_SOCK")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", kh.display()))
            // The server's host certificate names the server (web1), not its address.
            .arg("-o")
            .arg(format!("HostKeyAlias={}", self.name))
            .arg("-i")
            .arg(key)
            .args([
                "-p",
                &self.port.to_string(),
                "-l",
                login,
                "127.0.0.1",
                remote,
            ]))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let base = self.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        let _ = std::fs::remove_file(self.pam_file());
        let _ = std::fs::remove_file(base.join("usr/local/sbin").join(&self.service));
    }
}

/// A running `postern-gate`, joined with a gateway token.
pub struct Gate {
    /// Its state directory.
    pub dir: TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    log: std::sync::Arc<Mutex<String>>,
}

impl Gate {
    /// A port for the gateway, to be written into posternd.toml before the CA starts.
    pub fn reserve_port() -> u16 {
        free_port()
    }

    /// Joins and starts the gateway on `port`.
    pub fn start(ca: &Ca, port: u16) -> Gate {
        let mut g = Gate::joined(ca, port);
        g.spawn();
        g
    }

    /// Joins the gateway (for `port`) without starting it: `spawn` starts it.
    pub fn joined(ca: &Ca, port: u16) -> Gate {
        let dir = tempfile::Builder::new()
            .prefix("postern-gate")
            .tempdir()
            .unwrap();
        let token = ca.token("gateway", "gate1", "");
        let out = run(Command::new(bin("postern-gate"))
            .args([
                "join", "--ca", &ca.url, "--ca-pin", &ca.pin, "--token", &token, "--name", "gate1",
            ])
            .args(["--address", &format!("127.0.0.1:{port}"), "--state-dir"])
            .arg(dir.path()));
        assert!(out.status.success(), "gate join: {}", text(&out));
        Gate {
            dir,
            port,
            child: None,
            log: Default::default(),
        }
    }

    /// Starts (or restarts) `postern-gate serve` and waits for its ready line.
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(bin("postern-gate"));
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--state-dir",
        ])
        .arg(self.dir.path());
        self.child = Some(spawn_until_ready(cmd, "postern-gate ready", &self.log));
    }

    /// The gateway's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Kills the gateway with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What it logged.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// What it logged, once `done` holds for it (or after 30 s, so that the caller's
    /// assertion shows what was there). The log arrives through a pipe that a thread of the
    /// test reads: a line the gateway wrote before the client saw its effect can still be in
    /// flight when the client exits.
    pub fn log_when(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if done(&log) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Gate {
    /// Restarts `postern-gate serve` with `gate_toml` as its `--config` (written to
    /// `gate.toml` in its state directory) and waits for its ready line.
    pub fn respawn_with_config(&mut self, gate_toml: &str) {
        self.kill();
        let path = self.dir.path().join("gate.toml");
        std::fs::write(&path, gate_toml).unwrap();
        let mut cmd = Command::new(bin("postern-gate"));
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--config",
        ])
        .arg(&path)
        .arg("--state-dir")
        .arg(self.dir.path());
        self.child = Some(spawn_until_ready(cmd, "postern-gate ready", &self.log));
    }
}

impl Ca {
    /// Sets `[gateway] public_addr` in posternd.toml (before `spawn`).
    pub fn set_gateway(&self, addr: &str) {
        let p = self.config();
        let text = std::fs::read_to_string(&p).unwrap().replace(
            "# [gateway]\n# public_addr = \"gate.example.com:3023\"\n",
            "",
        );
        std::fs::write(&p, format!("{text}\n[gateway]\npublic_addr = \"{addr}\"\n")).unwrap();
    }
}

impl Person {
    /// Stock ssh to `NAME.<cluster>` with the ssh_config `postern login` wrote (ProxyJump).
    pub fn ssh_via_gate(&self, ca: &Ca, node: &str, login: &str, args: &[&str]) -> Output {
        run(Command::new("ssh")
            .env("HOME", self.home.path())
            .env_remove("SSH_AUTH_SOCK")
            .arg("-F")
            .arg(self.home.path().join(".ssh/config"))
            .args(["-o", "BatchMode=yes", "-l", login])
            .arg(format!("{node}.{}", ca.cluster))
            .args(args))
    }
}

impl Ca {
    /// Appends text (a TOML table such as `[recordings]`) to posternd.toml (before `spawn`).
    pub fn append_config(&self, text: &str) {
        let p = self.config();
        let old = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("{old}\n{text}\n")).unwrap();
    }
}

impl Gate {
    /// The gateway's spool of recordings.
    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    /// `curl` against the CA's API with this gateway's mTLS identity (the server checked
    /// against the service CA): returns (HTTP status, body). `body` goes with `content_type`.
    pub fn api(
        &self,
        ca: &Ca,
        method: &str,
        path: &str,
        body: Option<(&[u8], &str)>,
    ) -> (u16, String) {
        let d = self.dir.path();
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "--path-as-is",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ])
        .arg("--cacert")
        .arg(d.join("ca.crt"))
        .arg("--cert")
        .arg(d.join("identity.crt"))
        .arg("--key")
        .arg(pkcs8_v1(&d.join("identity.key")));
        let _file;
        if let Some((bytes, content_type)) = body {
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), bytes).unwrap();
            cmd.args(["-H", &format!("content-type: {content_type}")])
                .arg("--data-binary")
                .arg(format!("@{}", f.path().display()));
            _file = f;
        }
        let out = run(cmd.arg(format!("{}{path}", ca.url)));
        assert!(
            out.status.success(),
            "curl {method} {path} failed: {}",
            text(&out)
        );
        split_status(&out)
    }
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

/// An Ed25519 PKCS#8 key written as version 1 beside the original (`<file>.v1`) and its path:
/// curl's OpenSSL 3.0 does not read the version 2 form (RFC 5958, with the public key) that
/// Postern writes and rustls reads.
pub fn pkcs8_v1(key: &std::path::Path) -> PathBuf {
    let out_path = PathBuf::from(format!("{}.v1", key.display()));
    if out_path.exists() {
        return out_path;
    }
    let pem = std::fs::read_to_string(key).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = run_with_input(Command::new("base64").arg("-d"), &b64);
    assert!(der.status.success(), "{}", text(&der));
    let der = der.stdout;
    // SEQUENCE { INTEGER version, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING
    // seed } [, public key] }: the seed is at the same place in both versions.
    const ALGORITHM_AND_SEED: [u8; 11] = [
        0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    assert_eq!(
        &der[5..16],
        &ALGORITHM_AND_SEED,
        "not an Ed25519 PKCS#8 key"
    );
    let mut v1 = vec![0x30, 0x2e, 0x02, 0x01, 0x00];
    v1.extend_from_slice(&ALGORITHM_AND_SEED);
    v1.extend_from_slice(&der[16..48]);
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &v1).unwrap();
    let b64 = run(Command::new("base64").arg("-w0").arg(f.path()));
    assert!(b64.status.success(), "{}", text(&b64));
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        String::from_utf8_lossy(&b64.stdout).trim()
    );
    let tmp = PathBuf::from(format!("{}.tmp", out_path.display()));
    std::fs::write(&tmp, pem).unwrap();
    std::fs::rename(&tmp, &out_path).unwrap();
    out_path
}

/// The cluster of the gateway stories: a CA with the given policy whose
/// `[gateway] public_addr` is the gateway's, one server `web1` (labels `env=dev`) joined with
/// postern-shim and running sshd, a joined and serving postern-gate, and alice enrolled and
/// logged in (her ssh_config goes through the gateway).
pub struct GateCluster {
    /// The CA.
    pub ca: Ca,
    /// The server `web1`.
    pub node: Node,
    /// The gateway.
    pub gate: Gate,
    /// alice, logged in.
    pub alice: Person,
}

impl GateCluster {
    /// Starts everything; panics with the failing step's output otherwise.
    pub fn start(policy: &str) -> GateCluster {
        GateCluster::start_on(Distro::Debian12, policy)
    }

    /// [`GateCluster::start`] with `web1` on `distro`. The gateway joins first, as an admin
    /// sets a cluster up, so that `web1`'s join already knows the gateway's address.
    pub fn start_on(distro: Distro, policy: &str) -> GateCluster {
        let mut ca = Ca::init(policy);
        let gport = Gate::reserve_port();
        ca.set_gateway(&format!("127.0.0.1:{gport}"));
        ca.spawn();
        let mut gate = Gate::joined(&ca, gport);
        let token = ca.token("node", "web1", "env=dev");
        let (mut node, out) = Node::join_on(distro, &ca, "web1", &token, &[]);
        assert!(out.status.success(), "{}", text(&out));
        node.start_sshd();
        gate.spawn();
        let mut alice = Person::new("alice");
        alice.enroll(&ca);
        alice.login(&ca);
        GateCluster {
            ca,
            node,
            gate,
            alice,
        }
    }
}

impl Ca {
    /// Changes `[gateway] public_addr` in posternd.toml, which [`Ca::set_gateway`] wrote (with
    /// the daemon stopped: it reads the file at start).
    pub fn change_gateway(&self, addr: &str) {
        let p = self.config();
        let old = std::fs::read_to_string(&p).unwrap();
        let mut found = false;
        let text: String = old
            .lines()
            .map(|l| {
                if l.starts_with("public_addr = ") {
                    found = true;
                    format!("public_addr = \"{addr}\"\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        assert!(found, "no public_addr in posternd.toml:\n{old}");
        std::fs::write(&p, text).unwrap();
    }
}

impl Gate {
    /// Joins a gateway named `name` (to serve on `port`) as an admin types it: `join --ca
    /// --ca-pin --token --name` and `extra` (`--address` or nothing). Returns the gateway, not
    /// started, and join's output, whatever it is.
    pub fn join_as(ca: &Ca, port: u16, name: &str, token: &str, extra: &[&str]) -> (Gate, Output) {
        let dir = tempfile::Builder::new()
            .prefix("postern-gate")
            .tempdir()
            .unwrap();
        let out = Gate::rejoin_dir(ca, dir.path(), name, token, extra);
        let gate = Gate {
            dir,
            port,
            child: None,
            log: Default::default(),
        };
        (gate, out)
    }

    /// `postern-gate join` again into this gateway's state directory.
    pub fn rejoin(&self, ca: &Ca, name: &str, token: &str, extra: &[&str]) -> Output {
        Gate::rejoin_dir(ca, self.dir.path(), name, token, extra)
    }

    fn rejoin_dir(
        ca: &Ca,
        dir: &std::path::Path,
        name: &str,
        token: &str,
        extra: &[&str],
    ) -> Output {
        run(Command::new(bin("postern-gate"))
            .args([
                "join", "--ca", &ca.url, "--ca-pin", &ca.pin, "--token", token,
            ])
            .args(["--name", name])
            .args(extra)
            .arg("--state-dir")
            .arg(dir))
    }

    /// The principals of the gateway's host certificate, as `ssh-keygen -L` lists them.
    pub fn cert_principals(&self) -> Vec<String> {
        let out = run(Command::new("ssh-keygen")
            .arg("-Lf")
            .arg(self.dir.path().join("host_key-cert.pub")));
        assert!(out.status.success(), "{}", text(&out));
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        listing
            .split("Principals:")
            .nth(1)
            .and_then(|rest| rest.split("Critical Options:").next())
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Runs `postern-gate serve` expecting it to refuse to start: returns its exit status and
    /// standard error once it exits. Panics (after stopping it) if it prints its ready line
    /// instead, so a gateway that starts cannot pass for one that refused.
    pub fn serve_refused(&self) -> (std::process::ExitStatus, String) {
        let mut child = Command::new(bin("postern-gate"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--state-dir",
            ])
            .arg(self.dir.path())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = String::new();
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            let line = line.unwrap();
            err.push_str(&line);
            err.push('\n');
            if line.contains("postern-gate ready") {
                let _ = child.kill();
                let _ = child.wait();
                panic!("postern-gate serve started instead of refusing:\n{err}");
            }
        }
        (child.wait().unwrap(), err)
    }
}

// The gateway's audit event journal (tests/gateway_spool.rs): a gateway started with a
// gate.toml, and where its undelivered events are kept.
impl Gate {
    /// The journal of audit events the CA has not acknowledged yet.
    pub fn events_dir(&self) -> PathBuf {
        self.dir.path().join("events")
    }

    /// Starts (or restarts) `postern-gate serve --config STATE/gate.toml` with `config` as
    /// that file, and waits for its ready line.
    pub fn spawn_with_config(&mut self, config: &str) {
        let p = self.dir.path().join("gate.toml");
        std::fs::write(&p, config).unwrap();
        let mut cmd = Command::new(bin("postern-gate"));
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--config",
        ])
        .arg(&p)
        .arg("--state-dir")
        .arg(self.dir.path());
        self.child = Some(spawn_until_ready(cmd, "postern-gate ready", &self.log));
    }
}

impl Ca {
    /// Stops the daemon as its service manager does (SIGTERM) and waits until it has exited,
    /// so that what it writes when stopping is in the database.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let out = run(Command::new("kill").args(["-TERM", &c.id().to_string()]));
            assert!(out.status.success(), "kill -TERM: {}", text(&out));
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "posternd exited with {status} after SIGTERM:\n{}",
                self.log()
            );
        }
    }
}
