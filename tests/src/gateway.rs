//! `postern-gate` under test: joining, serving (with or without a gate.toml), its log and
//! spool, its mTLS identity against the CA's API, and the whole cluster of the gateway
//! stories.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use tempfile::TempDir;

use crate::ca::Ca;
use crate::node::Node;
use crate::person::Person;
use crate::sshd::Distro;
use crate::util::{bin, free_port, run, run_with_input, spawn_until_ready, split_status, text};

/// A running `postern-gate`, joined with a gateway token.
pub struct Gate {
    /// Its state directory.
    pub dir: TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
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
        Gate::joined_via(ca, &[&ca.url], port)
    }

    /// [`Gate::joined`] with `--ca` once for each of `urls`, in order.
    pub fn joined_via(ca: &Ca, urls: &[&str], port: u16) -> Gate {
        let dir = tempfile::Builder::new()
            .prefix("postern-gate")
            .tempdir()
            .unwrap();
        let token = ca.token("gateway", "gate1", "");
        let mut cmd = Command::new(bin("postern-gate"));
        cmd.arg("join");
        for u in urls {
            cmd.args(["--ca", u]);
        }
        let out = run(cmd
            .args(["--ca-pin", &ca.pin, "--token", &token, "--name", "gate1"])
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
        self.spawn_on("127.0.0.1");
    }

    /// [`Gate::spawn`] listening on `host` (a loopback address other than 127.0.0.1) at the
    /// gateway's port.
    pub fn spawn_on(&mut self, host: &str) {
        let mut cmd = Command::new(bin("postern-gate"));
        cmd.args([
            "serve",
            "--listen",
            &format!("{host}:{}", self.port),
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
        crate::util::log_when(|| self.log(), done)
    }

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

    // The gateway's audit event journal (tests/gateway_spool.rs): a gateway started with a
    // gate.toml, and where its undelivered events are kept.
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

impl Drop for Gate {
    fn drop(&mut self) {
        self.kill();
    }
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
    /// In the harness's high-availability mode ([`crate::ha_mode`]), a second gateway,
    /// listed after the first in `[gateway] public_addr`: the ssh_config `postern login`
    /// writes then probes the first (`postern reachable`) before every session, and would
    /// jump through this one were the first down.
    pub gate2: Option<Gate>,
    /// alice, logged in.
    pub alice: Person,
}

impl GateCluster {
    /// Starts everything; panics with the failing step's output otherwise.
    pub fn start(policy: &str) -> GateCluster {
        GateCluster::start_on(Distro::Debian12, policy)
    }

    /// [`GateCluster::start`] with `ca_toml` appended to posternd.toml and the gateway
    /// started with `gate_toml` as its gate.toml.
    pub fn start_with_config(policy: &str, ca_toml: &str, gate_toml: &str) -> GateCluster {
        GateCluster::start_configured(Distro::Debian12, policy, ca_toml, Some(gate_toml))
    }

    /// [`GateCluster::start`] with `web1` on `distro`. The gateway joins first, as an admin
    /// sets a cluster up, so that `web1`'s join already knows the gateway's address.
    pub fn start_on(distro: Distro, policy: &str) -> GateCluster {
        GateCluster::start_configured(distro, policy, "", None)
    }

    fn start_configured(
        distro: Distro,
        policy: &str,
        ca_toml: &str,
        gate_toml: Option<&str>,
    ) -> GateCluster {
        let mut ca = Ca::init(policy);
        let gport = Gate::reserve_port();
        let g2port = crate::ha_mode().then(Gate::reserve_port);
        match g2port {
            None => ca.set_gateway(&format!("127.0.0.1:{gport}")),
            Some(p2) => {
                ca.set_gateways(&[&format!("127.0.0.1:{gport}"), &format!("127.0.0.1:{p2}")])
            }
        }
        if !ca_toml.is_empty() {
            ca.append_config(ca_toml);
        }
        ca.spawn();
        let mut gate = Gate::joined(&ca, gport);
        let token = ca.token("node", "web1", "env=dev");
        let (mut node, out) = Node::join_on(distro, &ca, "web1", &token, &[]);
        assert!(out.status.success(), "{}", text(&out));
        node.start_sshd();
        match gate_toml {
            Some(t) => gate.spawn_with_config(t),
            None => gate.spawn(),
        }
        let gate2 = g2port.map(|p2| {
            let token = ca.token("gateway", "gate2", "");
            let (mut g, out) = Gate::join_as(
                &ca,
                p2,
                "gate2",
                &token,
                &["--address", &format!("127.0.0.1:{p2}")],
            );
            assert!(out.status.success(), "gate2 join: {}", text(&out));
            match gate_toml {
                Some(t) => g.spawn_with_config(t),
                None => g.spawn(),
            }
            g
        });
        let mut alice = Person::new("alice");
        alice.enroll(&ca);
        alice.login(&ca);
        GateCluster {
            ca,
            node,
            gate,
            gate2,
            alice,
        }
    }
}
