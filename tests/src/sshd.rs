//! Stock sshd as the distributions ship it: the test accounts, an sshd_config made from the
//! distribution's pristine copy (Debian 12 here, Debian 13 in a chroot), and a plain sshd
//! trusting a CA key.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ca::Ca;
use crate::person::Person;
use crate::util::{free_port, run, text};

/// The OS account that test certificates log in as.
pub const TEST_LOGIN: &str = "postern-e2e";

/// A second OS account whose login shell is bash, for attacks that need bash's expansions.
pub const TEST_BASH_LOGIN: &str = "postern-e2b";

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

    /// sshd's log once `done` holds for it (see [`crate::log_when`]).
    pub fn log_when(&self, done: impl Fn(&str) -> bool) -> String {
        crate::util::log_when(|| self.log(), done)
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

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
