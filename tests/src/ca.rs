//! The `posternd` under test: a CA with its own data directory on a free loopback port, its
//! admin commands, its log and audit, and plain `curl` against its API.

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tempfile::TempDir;

use crate::util::{bin, free_port, run, spawn_until_ready, split_status, text};

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
    log: Arc<Mutex<String>>,
    /// In the high-availability mode of the harness: the second instance and what both share.
    twin: Option<Box<Twin>>,
}

/// The second instance of a CA in the harness's high-availability mode, the load balancer
/// in front of both, and the PostgreSQL server and recordings directory they share.
struct Twin {
    b: Ca,
    lb: crate::forward::Forwarder,
    _recordings: TempDir,
    pg: crate::pg::Postgres,
}

/// Whether `POSTERN_TEST_STORAGE=postgres-ha` asks for every [`Ca::init`] to be two
/// instances on a PostgreSQL server of the test's own, behind a round-robin load balancer
/// at [`Ca::url`]: the existing stories then run, unchanged, against any instance.
pub fn ha_mode() -> bool {
    match std::env::var("POSTERN_TEST_STORAGE").as_deref() {
        Ok("postgres-ha") => true,
        Ok("") | Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("POSTERN_TEST_STORAGE={other:?}: say sqlite or postgres-ha"),
    }
}

impl Ca {
    /// Initialises a CA with the given policy and starts it.
    pub fn start(policy: &str) -> Ca {
        let mut ca = Ca::init(policy);
        ca.spawn();
        ca
    }

    /// Initialises a CA without starting it (two instances on PostgreSQL in the
    /// harness's high-availability mode, see [`ha_mode`]).
    pub fn init(policy: &str) -> Ca {
        if ha_mode() {
            return Ca::init_ha(policy);
        }
        Ca::init_with(policy, &["--cluster", "test.postern"])
    }

    /// Two instances of one CA on a PostgreSQL server of their own, behind a round-robin
    /// load balancer whose URL is [`Ca::url`]; admin commands go to the first instance, its
    /// log is both instances' logs, and spawn, stop and the config changes act on both.
    fn init_ha(policy: &str) -> Ca {
        let pg = crate::pg::Postgres::start();
        let rec = tempfile::Builder::new()
            .prefix("postern-rec")
            .tempdir()
            .unwrap();
        let mut a = Ca::init_postgres(policy, &pg.url(), rec.path());
        let b = a.another_instance(policy, &pg.url(), rec.path());
        let strip = |u: &str| u.trim_start_matches("https://").to_owned();
        let lb = crate::forward::Forwarder::start_many(&[&strip(&a.url), &strip(&b.url)]);
        a.url = lb.url();
        a.twin = Some(Box::new(Twin {
            b,
            lb,
            _recordings: rec,
            pg,
        }));
        a
    }

    /// Every instance's config file (one, or two in the high-availability mode).
    fn configs(&self) -> Vec<PathBuf> {
        let mut v = vec![self.config()];
        if let Some(t) = &self.twin {
            v.push(t.b.config());
        }
        v
    }

    /// Where the CA keeps recordings: `DATA_DIR/recordings`, or the directory both instances
    /// share in the high-availability mode.
    pub fn recordings_dir(&self) -> PathBuf {
        match &self.twin {
            Some(t) => t._recordings.path().to_path_buf(),
            None => self.dir.path().join("recordings"),
        }
    }

    /// The PostgreSQL server in the high-availability mode.
    pub fn postgres(&self) -> Option<&crate::pg::Postgres> {
        self.twin.as_ref().map(|t| &t.pg)
    }

    /// The first instance of a CA on PostgreSQL (not started), its recordings in `recordings`
    /// (a directory every instance shares).
    pub fn init_postgres(policy: &str, url: &str, recordings: &std::path::Path) -> Ca {
        let rec = recordings.to_str().unwrap();
        Ca::init_with(
            policy,
            &[
                "--cluster",
                "test.postern",
                "--storage",
                url,
                "--recordings-dir",
                rec,
            ],
        )
    }

    /// Another instance of this CA on the same PostgreSQL database (`init --keys-from`), not
    /// started.
    pub fn another_instance(&self, policy: &str, url: &str, recordings: &std::path::Path) -> Ca {
        let (from, rec) = (
            self.dir.path().to_str().unwrap(),
            recordings.to_str().unwrap(),
        );
        Ca::init_with(
            policy,
            &[
                "--keys-from",
                from,
                "--storage",
                url,
                "--recordings-dir",
                rec,
            ],
        )
    }

    /// Initialises a CA with `init`'s extra arguments, without starting it.
    pub fn init_with(policy: &str, args: &[&str]) -> Ca {
        Ca::init_listening(policy, &format!("127.0.0.1:{}", free_port()), args)
    }

    /// [`Ca::init_with`] listening on `listen` (`HOST:PORT`).
    pub fn init_listening(policy: &str, listen: &str, args: &[&str]) -> Ca {
        let dir = tempfile::Builder::new()
            .prefix("postern-ca")
            .tempdir()
            .unwrap();
        let out = run(Command::new(bin("posternd"))
            .args(["init", "--json", "--listen", listen])
            .args(args)
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
            twin: None,
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
        if let Some(t) = &mut self.twin {
            t.b.spawn();
            t.lb.resume();
        }
    }

    /// The daemon's pid (0 when it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Turns on `[metrics] listen` on a free loopback port (before `spawn`) and returns the
    /// URL of `/metrics`.
    pub fn enable_metrics(&self) -> String {
        let port = free_port();
        append(
            &self.config(),
            &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""),
        );
        if let Some(t) = &self.twin {
            t.b.enable_metrics();
        }
        format!("http://127.0.0.1:{port}/metrics")
    }

    /// Stops the daemon (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(t) = &mut self.twin {
            // Both instances must have lived until now, or the story ran on one alone (the
            // load balancer sends a connection that one refuses to the other).
            if !std::thread::panicking() {
                for (which, c) in [("first", &mut self.child), ("second", &mut t.b.child)] {
                    if let Some(status) = c.as_mut().and_then(|c| c.try_wait().unwrap()) {
                        panic!(
                            "the {which} posternd instance exited ({status}) before the story ended:\n{}",
                            self.log.lock().unwrap()
                        );
                    }
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(t) = &mut self.twin {
            // Nothing answers at the URL any more, as with one instance.
            t.lb.stop();
            t.b.stop();
        }
    }

    /// Everything the daemon logged so far (both instances', in the high-availability mode).
    pub fn log(&self) -> String {
        let mut log = self.log.lock().unwrap().clone();
        if let Some(t) = &self.twin {
            log.push_str(&t.b.log());
        }
        log
    }

    /// What the daemon logged, once `done` holds for it (see [`crate::log_when`]).
    pub fn log_when(&self, done: impl Fn(&str) -> bool) -> String {
        crate::util::log_when(|| self.log(), done)
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

    /// Replaces the policy file; in the high-availability mode, once the instances run,
    /// applies it to the database (`posternd policy apply`) and waits until both say it is
    /// in force.
    pub fn set_policy(&self, policy: &str) {
        let p = self.dir.path().join("policy.toml");
        let tmp = self.dir.path().join("policy.toml.tmp");
        std::fs::write(&tmp, policy).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        let Some(t) = &self.twin else {
            return;
        };
        t.b.set_policy(policy);
        if self.child.is_none() {
            return;
        }
        let before = |ca: &Ca| {
            ca.log
                .lock()
                .unwrap()
                .matches("policy in force from the database")
                .count()
        };
        let (a0, b0) = (before(self), before(&t.b));
        let out = self.admin(&["policy", "apply", p.to_str().unwrap()]);
        if !out.status.success() {
            // A policy that does not validate (FILE:LINE:COLUMN) stays out, as a bad file
            // edit would; any other failure is the harness's.
            let said = text(&out);
            assert!(
                said.contains(&format!("{}:", p.display())),
                "policy apply: {said}"
            );
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while before(self) == a0 || before(&t.b) == b0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the applied policy is not in force on both instances:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The audit events, oldest first.
    pub fn audit(&self) -> Vec<Value> {
        self.admin_json(&["audit", "tail", "-n", "1000"])
            .as_array()
            .unwrap()
            .clone()
    }

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

    /// Sets `[gateway] public_addr` in posternd.toml (before `spawn`).
    pub fn set_gateway(&self, addr: &str) {
        for p in self.configs() {
            let text = std::fs::read_to_string(&p).unwrap().replace(
                "# [gateway]\n# public_addr = \"gate.example.com:3023\"\n",
                "",
            );
            std::fs::write(&p, format!("{text}\n[gateway]\npublic_addr = \"{addr}\"\n")).unwrap();
        }
    }

    /// Sets `[gateway] public_addr` to a list of several addresses (before `spawn`).
    pub fn set_gateways(&self, addrs: &[&str]) {
        let list: Vec<String> = addrs.iter().map(|a| format!("{a:?}")).collect();
        for p in self.configs() {
            append(
                &p,
                &format!("[gateway]\npublic_addr = [{}]", list.join(", ")),
            );
        }
    }

    /// Appends text (a TOML table such as `[recordings]`) to posternd.toml (before `spawn`).
    pub fn append_config(&self, text: &str) {
        for p in self.configs() {
            append(&p, text);
        }
    }

    /// Changes `[gateway] public_addr` in posternd.toml, which [`Ca::set_gateway`] wrote (with
    /// the daemon stopped: it reads the file at start).
    pub fn change_gateway(&self, addr: &str) {
        for p in self.configs() {
            change_gateway_in(&p, addr);
        }
    }

    /// Stops the daemon as its service manager does (SIGTERM) and waits until it has exited,
    /// so that what it writes when stopping is in the database.
    pub fn terminate(&mut self) {
        if let Some(t) = &mut self.twin {
            t.lb.stop();
            t.b.terminate();
        }
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

/// Appends `text` to the config file `p`.
fn append(p: &std::path::Path, text: &str) {
    let old = std::fs::read_to_string(p).unwrap();
    std::fs::write(p, format!("{old}\n{text}\n")).unwrap();
}

/// [`Ca::change_gateway`] in one config file.
fn change_gateway_in(p: &std::path::Path, addr: &str) {
    {
        let old = std::fs::read_to_string(p).unwrap();
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
        std::fs::write(p, text).unwrap();
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        self.stop();
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
