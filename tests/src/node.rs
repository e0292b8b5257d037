//! A server joined with `postern-shim join`: the shim installed where sshd accepts it, the
//! node's sshd started from the drop-in that join wrote, the shim's subcommands, and stock ssh
//! with certificates the CA signed.

use std::ffi::OsString;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::ca::Ca;
use crate::sshd::{distribution_sshd_config_from, ensure_test_login, Distro};
use crate::util::{bin, free_port, run, text};

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
        self.run_join_via(ca, &[&ca.url], token, extra)
    }

    /// [`Node::run_join`] with `--ca` once for each of `urls`, in order.
    pub fn run_join_via(&self, ca: &Ca, urls: &[&str], token: &str, extra: &[&str]) -> Output {
        let d = self.dir.path();
        let shim = installed_shim_in(self.root.as_deref());
        let program = match &self.root {
            Some(_) => shim.clone(),
            None => bin("postern-shim"),
        };
        let mut cmd = self.command(&program);
        cmd.arg("join");
        for u in urls {
            cmd.args(["--ca", u]);
        }
        run(cmd
            .args(["--ca-pin", &ca.pin, "--token", token, "--name", &self.name])
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

    /// sshd's log once `done` holds for it (see [`crate::log_when`]).
    pub fn log_when(&self, done: impl Fn(&str) -> bool) -> String {
        crate::util::log_when(|| self.log(), done)
    }

    /// Asserts that sshd refused `login` with the certificate of `key` because postern-shim's
    /// principals command denied it: sshd logged the command's failure for that certificate's
    /// serial and a failed publickey for it, and the shim's denial says `why` (where the
    /// shim's log reaches sshd's: [`shim_logs_to_stderr`]). A dead sshd, a wrong port or a
    /// refusal by the KRL cannot pass it.
    pub fn assert_shim_denied(&self, key: &Path, login: &str, why: &str) {
        let cert = CertSeen::of(key);
        let log = self.log_when(|l| cert.failed_publickey(l, login));
        assert!(
            cert.failed_publickey(&log, login),
            "sshd logged no failed publickey for {login} with {}:\n{log}",
            cert.id
        );
        assert!(
            cert.principals_command_failed(&log, login),
            "sshd did not log the principals command's refusal of {login} for {}:\n{log}",
            cert.id
        );
        if shim_logs_to_stderr() {
            let denial = format!("postern-shim: deny login {login:?}: {why}");
            assert!(log.contains(&denial), "no {denial:?} in sshd's log:\n{log}");
        }
    }

    /// Asserts that sshd refused `login` with the certificate of `key` before asking the
    /// principals command, as it refuses a certificate whose CA is not its
    /// `TrustedUserCAKeys`: a failed publickey for that certificate, naming its signing CA,
    /// and no principals command run for it.
    pub fn assert_refused_before_the_shim(&self, key: &Path, login: &str) {
        let cert = CertSeen::of(key);
        let log = self.log_when(|l| cert.failed_publickey(l, login));
        assert!(
            cert.failed_publickey(&log, login),
            "sshd logged no failed publickey for {login} with {} (CA {}):\n{log}",
            cert.id,
            cert.ca
        );
        assert!(
            !log.lines()
                .any(|l| l.starts_with("AuthorizedPrincipalsCommand ") && cert.in_command(l)),
            "sshd asked the principals command about {}:\n{log}",
            cert.id
        );
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

/// Whether postern-shim's log lines reach its standard error, and so, for the principals
/// command, sshd's log: the shim logs to syslog, and to stderr only when syslog is unreachable
/// (no /dev/log, as on the test machines) or stderr is a terminal.
pub fn shim_logs_to_stderr() -> bool {
    !Path::new("/dev/log").exists()
}

/// A certificate as sshd's log names it (read from `KEY-cert.pub` by `ssh-keygen -L`).
struct CertSeen {
    /// `ID alice (serial 42)`, as sshd's `Failed publickey` line has it.
    id: String,
    /// The serial alone.
    serial: String,
    /// `ED25519 SHA256:...`, the signing CA, as that line has it.
    ca: String,
}

impl CertSeen {
    fn of(key: &Path) -> CertSeen {
        let out = run(Command::new("ssh-keygen")
            .arg("-Lf")
            .arg(format!("{}-cert.pub", key.display())));
        assert!(out.status.success(), "{}", text(&out));
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |name: &str| {
            listing
                .lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name:?} in {listing}"))
                .trim()
                .to_owned()
        };
        let key_id = field("Key ID:").trim_matches('"').to_owned();
        let serial = field("Serial:");
        // "Signing CA: ED25519 SHA256:... (using ssh-ed25519)"
        let ca = field("Signing CA:")
            .split(" (using")
            .next()
            .unwrap()
            .to_owned();
        CertSeen {
            id: format!("ID {key_id} (serial {serial})"),
            serial,
            ca,
        }
    }

    /// Whether `log` has sshd's `Failed publickey for LOGIN` line for this certificate.
    fn failed_publickey(&self, log: &str, login: &str) -> bool {
        let failed = format!("Failed publickey for {login} from 127.0.0.1 ");
        log.lines().any(|l| {
            l.contains(&failed) && l.contains(&self.id) && l.contains(&format!("CA {}", self.ca))
        })
    }

    /// Whether an `AuthorizedPrincipalsCommand` line is about this certificate (its arguments
    /// end with `%i %s`: the key id and the serial).
    fn in_command(&self, line: &str) -> bool {
        line.contains(&format!(" {} ", self.serial)) || line.ends_with(&format!(" {}", self.serial))
    }

    /// Whether sshd logged that the principals command failed for `login` with this
    /// certificate (`AuthorizedPrincipalsCommand ... LOGIN ... SERIAL failed, status 1`).
    fn principals_command_failed(&self, log: &str, login: &str) -> bool {
        log.lines().any(|l| {
            l.starts_with("AuthorizedPrincipalsCommand ")
                && l.contains(&format!(" {login} "))
                && l.ends_with(&format!(" {} failed, status 1", self.serial))
        })
    }
}
