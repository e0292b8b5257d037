//! User stories of subsystems through postern-gate in strict recording: sftp is a file
//! transfer audited per operation only while the gateway can follow SFTP, and is recorded as a
//! cast from the first byte it cannot; every other subsystem is recorded like an exec.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postern_tests::{
    run, run_with_input, text, Ca, Distro, Gate, GateCluster, Node, Person, TEST_BASH_LOGIN,
    TEST_LOGIN,
};
use serde_json::Value;

fn policy() -> String {
    policy_in("strict")
}

fn policy_in(recording: &str) -> String {
    format!(
        r#"
[defaults]
user_cert_ttl = "1h"
recording = "{recording}"

[roles.dev]
logins = ["{TEST_LOGIN}", "{TEST_BASH_LOGIN}"]
nodes = {{ env = "dev" }}
permit = ["pty"]

[users.alice]
roles = ["dev"]
"#
    )
}

/// [`GateCluster::start`] with `lines` appended to web1's sshd_config, as its admin would.
fn cluster_with_sshd_lines(policy: &str, lines: &str) -> GateCluster {
    let mut ca = Ca::init(policy);
    let gport = Gate::reserve_port();
    ca.set_gateway(&format!("127.0.0.1:{gport}"));
    ca.spawn();
    let token = ca.token("node", "web1", "env=dev");
    let mut node = Node::prepare(Distro::Debian12, "web1", |c| format!("{c}\n{lines}\n"));
    let out = node.run_join(&ca, &token, &[]);
    assert!(out.status.success(), "{}", text(&out));
    node.start_sshd();
    let gate = Gate::start(&ca, gport);
    let mut alice = Person::new("alice");
    alice.enroll(&ca);
    alice.login(&ca);
    GateCluster {
        ca,
        node,
        gate,
        gate2: None,
        alice,
    }
}

/// Stock ssh as alice through the gateway asking for subsystem `name`, with `input` on its
/// standard input.
fn ssh_subsystem(c: &GateCluster, login: &str, name: &str, input: &str) -> std::process::Output {
    let home = c.alice.home.path();
    run_with_input(
        Command::new("ssh")
            .env("HOME", home)
            .env_remove("SSH_AUTH_SOCK")
            .arg("-F")
            .arg(home.join(".ssh/config"))
            .args(["-o", "BatchMode=yes", "-l", login, "-s"])
            .arg(format!("web1.{}", c.ca.cluster))
            .arg(name),
        input,
    )
}

/// The events in the CA's audit log whose kind starts with `prefix`: (kind, what the gateway
/// sent).
fn events(ca: &Ca, prefix: &str) -> Vec<(String, Value)> {
    ca.audit()
        .into_iter()
        .filter(|e| e["kind"].as_str().unwrap_or_default().starts_with(prefix))
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["detail"]["detail"]["extra"].clone(),
            )
        })
        .collect()
}

/// Waits until `ok` holds for the audit events starting with `prefix`, and returns them.
fn wait_for_events(
    c: &GateCluster,
    prefix: &str,
    ok: impl Fn(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = events(&c.ca, prefix);
        if ok(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "audit events {prefix}*: {got:#?}\ngate:\n{}",
            c.gate.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for a recording stored at the CA whose cast holds every string in `want`, and
/// returns the cast.
fn wait_for_cast(c: &GateCluster, want: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let recs = c.ca.admin_json(&["recordings", "ls"]);
        let found = recs.as_array().into_iter().flatten().find_map(|m| {
            let id = m["id"].as_str().unwrap_or_default();
            std::fs::read_to_string(cast_path(&c.ca, id))
                .ok()
                .filter(|cast| want.iter().all(|w| cast.contains(w)))
        });
        if let Some(cast) = found {
            return cast;
        }
        assert!(
            Instant::now() < deadline,
            "no recording holds {want:?}\nrecordings: {recs:#}\ngate:\n{}",
            c.gate.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cast_path(ca: &Ca, id: &str) -> PathBuf {
    ca.recordings_dir().join(format!("{id}.cast"))
}

/// The text of a cast's output events, JSON escapes undone.
fn cast_output(cast: &str) -> String {
    cast.lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e[1] == "o")
        .filter_map(|e| e[2].as_str().map(str::to_owned))
        .collect()
}

/// The cast header's `command`.
fn cast_command(cast: &str) -> Value {
    let header: Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    header["command"].clone()
}

/// Tests that replace the bash login's `~/.bashrc` run one at a time.
static BASHRC: Mutex<()> = Mutex::new(());

/// The bash login's `~/.bashrc` replaced for one test, put back as it was on drop: other
/// tests log in as that account.
struct PlantedBashrc {
    path: PathBuf,
    old: Option<Vec<u8>>,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl PlantedBashrc {
    fn plant(script: &str) -> PlantedBashrc {
        let guard = BASHRC.lock().unwrap_or_else(|e| e.into_inner());
        postern_tests::ensure_bash_login();
        let out = run(Command::new("getent").args(["passwd", TEST_BASH_LOGIN]));
        assert!(out.status.success(), "{}", text(&out));
        let home = String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(':')
            .nth(5)
            .unwrap()
            .to_owned();
        let path = Path::new(&home).join(".bashrc");
        let old = std::fs::read(&path).ok();
        std::fs::write(&path, script).unwrap();
        let out = run(Command::new("chown")
            .arg(format!("{TEST_BASH_LOGIN}:"))
            .arg(&path));
        assert!(out.status.success(), "{}", text(&out));
        PlantedBashrc {
            path,
            old,
            _one_at_a_time: guard,
        }
    }
}

impl Drop for PlantedBashrc {
    fn drop(&mut self) {
        match &self.old {
            Some(old) => {
                let _ = std::fs::write(&self.path, old);
            }
            None => {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Replaces the program sshd runs for the sftp subsystem (`bash -c
/// /usr/lib/openssh/sftp-server`, with Debian's bash reading `~/.bashrc` first because sshd
/// started it) by an interactive shell, and by nothing else.
const SHELL_FOR_SFTP: &str = r#"
case "$BASH_EXECUTION_STRING" in
*sftp-server*) exec /bin/bash -i ;;
esac
"#;

/// Security review: a subsystem channel opened no recorder, and the sftp observer silently
/// stopped watching on bytes that were not SFTP; so a `~/.bashrc` that replaces sftp-server
/// by a shell turned `ssh -s HOST sftp` into an unrecorded shell in strict mode. Now the
/// observer gives up (an audit event says so) and the channel is recorded from that byte on.
#[test]
fn regression_bashrc_turned_the_sftp_subsystem_into_an_unrecorded_shell() {
    let _bashrc = PlantedBashrc::plant(SHELL_FOR_SFTP);
    let c = GateCluster::start(&policy());
    let out = ssh_subsystem(
        &c,
        TEST_BASH_LOGIN,
        "sftp",
        "echo MARKER-$((6*7))\necho MARKER-$((7*8))\nexit\n",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("MARKER-42"),
        "the shell did not run, so this test proves nothing: {}\ngate:\n{}",
        text(&out),
        c.gate.log()
    );
    let cast = wait_for_cast(&c, &["MARKER-42"]);
    let seen = cast_output(&cast);
    for marker in ["MARKER-42", "MARKER-56"] {
        assert!(seen.contains(marker), "{marker} not recorded:\n{cast}");
    }
    assert_eq!(cast_command(&cast), "subsystem sftp", "{cast}");
    // The shell writes nothing before it reads, and its prompt goes to standard error, which
    // sshd discards for a subsystem: the client's first bytes ("echo") are what is not SFTP.
    let gave_up = wait_for_events(&c, "gateway.sftp.", |e| {
        e.iter().any(|(k, d)| {
            k == "gateway.sftp.observer_gave_up"
                && d["reason"] == "packet length 1701013615 is not SFTP"
        })
    });
    assert!(
        !events(&c.ca, "sftp.").iter().any(|(k, _)| k == "sftp.open"),
        "{gave_up:#?}"
    );
}

/// The same shell where strict recording cannot start (the spool is read-only): the session
/// ends at the first byte that is not SFTP, which never reaches the shell.
#[test]
fn strict_mode_ends_the_sftp_channel_when_its_recording_cannot_start() {
    let _bashrc = PlantedBashrc::plant(SHELL_FOR_SFTP);
    let c = GateCluster::start(&policy());
    let _ro = ReadOnly::mount(&c.gate.spool());
    let out = ssh_subsystem(&c, TEST_BASH_LOGIN, "sftp", "echo MARKER-$((6*7))\n");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("MARKER-42"),
        "strict mode let an unrecorded shell answer: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot record this session"),
        "{}\ngate:\n{}",
        text(&out),
        c.gate.log()
    );
    wait_for_events(&c, "gateway.sftp.", |e| {
        e.iter().any(|(k, _)| k == "gateway.sftp.observer_gave_up")
    });
}

/// In best-effort mode the same channel goes on unrecorded, and the audit log says why.
#[test]
fn best_effort_mode_keeps_the_sftp_channel_when_its_recording_cannot_start() {
    let _bashrc = PlantedBashrc::plant(SHELL_FOR_SFTP);
    let c = GateCluster::start(&policy_in("best-effort"));
    let _ro = ReadOnly::mount(&c.gate.spool());
    let out = ssh_subsystem(&c, TEST_BASH_LOGIN, "sftp", "echo MARKER-$((6*7))\n");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("MARKER-42"),
        "{}\ngate:\n{}",
        text(&out),
        c.gate.log()
    );
    wait_for_events(&c, "gateway.sftp.", |e| {
        e.iter().any(|(k, _)| k == "gateway.sftp.observer_gave_up")
    });
}

/// A read-only tmpfs mounted over the gateway's spool, so that no recording can be created.
/// Unmounted on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn mount(dir: &Path) -> ReadOnly {
        std::fs::create_dir_all(dir).unwrap();
        let out = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=64k,mode=0700", "tmpfs"])
            .arg(dir));
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (the suite runs as root): {}",
            text(&out)
        );
        ReadOnly(dir.to_owned())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg("-l").arg(&self.0));
    }
}

/// A subsystem other than sftp is whatever program the server's admin named, so it is
/// recorded from its first byte like an exec, and titled by its name.
#[test]
fn a_subsystem_other_than_sftp_is_recorded_like_an_exec() {
    let c = cluster_with_sshd_lines(&policy(), "Subsystem postern-echo /bin/cat");
    let out = ssh_subsystem(&c, TEST_LOGIN, "postern-echo", "ECHOED-BY-CAT\n");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ECHOED-BY-CAT"),
        "the subsystem did not run: {}\ngate:\n{}\nsshd:\n{}",
        text(&out),
        c.gate.log(),
        c.node.log()
    );
    let cast = wait_for_cast(&c, &["ECHOED-BY-CAT"]);
    assert!(cast_output(&cast).contains("ECHOED-BY-CAT\n"), "{cast}");
    assert_eq!(cast_command(&cast), "subsystem postern-echo", "{cast}");
}

/// sftp-server behind a pty is not SFTP any more (the terminal rewrites its bytes), and no
/// sftp client asks for one: the channel is recorded from the start, like scp's.
#[test]
fn the_sftp_subsystem_with_a_pty_is_recorded_from_the_start() {
    let c = GateCluster::start(&policy());
    let home = c.alice.home.path();
    let out = run_with_input(
        Command::new("ssh")
            .env("HOME", home)
            .env_remove("SSH_AUTH_SOCK")
            .arg("-F")
            .arg(home.join(".ssh/config"))
            .args(["-o", "BatchMode=yes", "-tt", "-l", TEST_LOGIN, "-s"])
            .arg(format!("web1.{}", c.ca.cluster))
            .arg("sftp"),
        "ECHOED-BY-THE-PTY\n",
    );
    // The terminal echoes what it is given before sftp-server reads it.
    let cast = wait_for_cast(&c, &["ECHOED-BY-THE-PTY"]);
    assert_eq!(
        cast_command(&cast),
        "subsystem sftp",
        "{cast}\n{}",
        text(&out)
    );
    wait_for_events(&c, "gateway.sftp.", |e| {
        e.iter().any(|(k, d)| {
            k == "gateway.sftp.observer_gave_up" && d["reason"] == "a pty was requested"
        })
    });
}

/// Stock sftp moving, renaming and removing files is still a file transfer: every operation
/// is an `sftp.*` event, the observer never gives up, and nothing is recorded as a cast.
#[test]
fn stock_sftp_is_audited_per_operation_and_not_recorded() {
    let c = GateCluster::start(&policy());
    let local = tempfile::tempdir().unwrap();
    let up = local.path().join("up.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&up, &data).unwrap();
    let down = local.path().join("down.bin");
    let remote = tempfile::Builder::new()
        .prefix("postern-sftp-remote")
        .tempdir()
        .unwrap();
    // The login writes there as itself.
    std::fs::set_permissions(remote.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = remote.path().to_str().unwrap();
    let batch = local.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {up} {r}/a.bin\nrename {r}/a.bin {r}/b.bin\nmkdir {r}/d\nrmdir {r}/d\n\
             get {r}/b.bin {down}\nrm {r}/b.bin\n",
            up = up.display(),
            down = down.display()
        ),
    )
    .unwrap();
    let home = c.alice.home.path();
    let out = run(Command::new("sftp")
        .env("HOME", home)
        .arg("-F")
        .arg(home.join(".ssh/config"))
        .args(["-q", "-o", "BatchMode=yes", "-b"])
        .arg(&batch)
        .arg(format!("{TEST_LOGIN}@web1.{}", c.ca.cluster)));
    assert!(
        out.status.success(),
        "sftp: {}\ngate:\n{}",
        text(&out),
        c.gate.log()
    );
    assert!(
        std::fs::read(&down).unwrap() == data,
        "the download differs"
    );
    let (a, b) = (format!("{r}/a.bin"), format!("{r}/b.bin"));
    let got = wait_for_events(&c, "sftp.", |e| {
        let has = |kind: &str, f: &dyn Fn(&Value) -> bool| e.iter().any(|(k, d)| k == kind && f(d));
        has("sftp.close", &|d| {
            d["path"] == a.as_str() && d["written"] == 300_000
        }) && has("sftp.close", &|d| {
            d["path"] == b.as_str() && d["read"] == 300_000
        }) && has("sftp.remove", &|d| d["path"] == b.as_str())
            && has("sftp.mkdir", &|d| d["path"] == format!("{r}/d"))
            && has("sftp.rmdir", &|d| d["path"] == format!("{r}/d"))
    });
    assert!(
        events(&c.ca, "gateway.sftp.").is_empty(),
        "{:#?}\nsftp events: {got:#?}",
        events(&c.ca, "gateway.sftp.")
    );
    // The spool first, then the CA: a recording leaves the spool only once the CA has it.
    let spooled: Vec<_> = std::fs::read_dir(c.gate.spool())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cast"))
        .collect();
    assert!(spooled.is_empty(), "{spooled:?}");
    let recs = c.ca.admin_json(&["recordings", "ls"]);
    assert_eq!(recs, serde_json::json!([]), "{recs:#}");
}
