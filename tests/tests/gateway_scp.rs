//! User stories of legacy scp (`scp -O`) through postern-gate: every file and directory a
//! stock scp moves, either way, is an audit event in the CA's log with its full path, mode and
//! byte count, and an scp command the gateway cannot follow is recorded like any command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use postern_tests::{run, run_with_input, text, GateCluster, TEST_BASH_LOGIN, TEST_LOGIN};
use serde_json::Value;

fn policy() -> String {
    format!(
        r#"
[defaults]
user_cert_ttl = "1h"

[roles.dev]
logins = ["{TEST_LOGIN}", "{TEST_BASH_LOGIN}"]
nodes = {{ env = "dev" }}
permit = ["pty"]

[users.alice]
roles = ["dev"]
"#
    )
}

/// The gateway cluster, with scp helpers.
struct Cluster(GateCluster);

impl std::ops::Deref for Cluster {
    type Target = GateCluster;
    fn deref(&self) -> &GateCluster {
        &self.0
    }
}

fn cluster() -> Cluster {
    Cluster(GateCluster::start(&policy()))
}

impl Cluster {
    /// `user@web1.<cluster>`.
    fn host(&self) -> String {
        format!("{TEST_LOGIN}@web1.{}", self.ca.cluster)
    }

    /// Stock `scp -O` (the legacy protocol) with the config `postern login` wrote.
    fn scp(&self, args: &[&str], from: &Path, to: &str) {
        self.scp_raw(args, from.as_os_str().to_str().unwrap(), to);
    }

    fn scp_raw(&self, args: &[&str], from: &str, to: &str) {
        let out = run(std::process::Command::new("scp")
            .env("HOME", self.alice.home.path())
            .arg("-F")
            .arg(self.alice.home.path().join(".ssh/config"))
            .args(["-O", "-q", "-o", "BatchMode=yes"])
            .args(args)
            .arg(from)
            .arg(to));
        assert!(
            out.status.success(),
            "scp -O {args:?} {from} {to}: {}\ngate:\n{}",
            text(&out),
            self.gate.log()
        );
    }

    /// The `gateway.scp.*` events in the CA's audit log: (kind, detail the gateway sent).
    fn scp_events(&self) -> Vec<(String, Value)> {
        self.ca
            .audit()
            .into_iter()
            .filter(|e| {
                e["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("gateway.scp.")
            })
            .map(|e| {
                (
                    e["kind"].as_str().unwrap().to_owned(),
                    e["detail"]["detail"]["extra"].clone(),
                )
            })
            .collect()
    }

    /// Waits until the audit log holds every expected event (kind and the fields given) as
    /// many times as it is expected, and returns all scp events.
    fn wait_for(&self, want: &[(&str, Value)]) -> Vec<(String, Value)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.scp_events();
            let count = |(kind, fields): &(&str, Value)| {
                got.iter()
                    .filter(|(k, d)| {
                        k == kind
                            && fields
                                .as_object()
                                .unwrap()
                                .iter()
                                .all(|(f, v)| d.get(f) == Some(v))
                    })
                    .count()
            };
            let missing: Vec<_> = want
                .iter()
                .filter(|w| count(w) != want.iter().filter(|x| x == w).count())
                .collect();
            if missing.is_empty() {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "missing or repeated in the audit log: {missing:#?}\nscp events: {got:#?}\ngate:\n{}",
                self.gate.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Cluster {
    /// Stock ssh as alice through the gateway, with `input` on its standard input (no pty).
    fn ssh_with_input(&self, command: &str, input: &str) -> std::process::Output {
        let home = self.alice.home.path();
        run_with_input(
            std::process::Command::new("ssh")
                .env("HOME", home)
                .env_remove("SSH_AUTH_SOCK")
                .arg("-F")
                .arg(home.join(".ssh/config"))
                .args(["-o", "BatchMode=yes", "-l", TEST_LOGIN])
                .arg(format!("web1.{}", self.ca.cluster))
                .arg(command),
            input,
        )
    }

    /// Waits for a completed recording (listed by `posternd recordings ls`) whose cast holds
    /// every string in `want`, and returns the cast.
    fn wait_for_cast(&self, want: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let recs = self.ca.admin_json(&["recordings", "ls"]);
            let found = recs.as_array().into_iter().flatten().find_map(|m| {
                let id = m["id"].as_str().unwrap_or_default();
                std::fs::read_to_string(self.ca.recordings_dir().join(format!("{id}.cast")))
                    .ok()
                    .filter(|cast| want.iter().all(|w| cast.contains(w)))
            });
            if let Some(cast) = found {
                return cast;
            }
            assert!(
                Instant::now() < deadline,
                "no recording holds {want:?}\nrecordings: {recs:#}\nscp events: {:#?}\ngate:\n{}",
                self.scp_events(),
                self.gate.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The text a cast's output events hold, JSON escapes undone (to find what a client saw).
fn cast_output(cast: &str) -> String {
    cast.lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e[1] == "o")
        .filter_map(|e| e[2].as_str().map(str::to_owned))
        .collect()
}

/// A directory the node's login can write to, removed at the end.
fn remote_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("postern-scp-remote")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

fn write(path: &Path, len: usize, seed: u8, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect();
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> String {
    format!(
        "{:04o}",
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    )
}

fn assert_same(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{} and {} differ",
        a.display(),
        b.display()
    );
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

fn no_give_up(events: &[(String, Value)]) {
    assert!(
        !events
            .iter()
            .any(|(k, _)| k == "gateway.scp.observer_gave_up"),
        "{events:#?}"
    );
}

#[test]
fn legacy_scp_of_one_file_both_ways_is_audited_with_path_mode_and_bytes() {
    let c = cluster();
    let remote = remote_dir();
    let r = remote.path();
    let local = tempfile::tempdir().unwrap();
    let f = local.path().join("report.txt");
    write(&f, 12_345, 1, 0o640);

    // Upload into a directory (the target ends with a slash: certainly a directory).
    c.scp(&[], &f, &format!("{}:{}/", c.host(), s(r)));
    assert_same(&f, &r.join("report.txt"));
    let up = s(&r.join("report.txt"));
    // Upload to a new name: the server alone knows whether the target is a directory, so the
    // event carries both readings.
    let renamed = s(&r.join("renamed.txt"));
    c.scp(&[], &f, &format!("{}:{renamed}", c.host()));
    assert_same(&f, &r.join("renamed.txt"));
    // Download.
    let back = local.path().join("back.txt");
    c.scp_raw(&[], &format!("{}:{up}", c.host()), &s(&back));
    assert_same(&f, &back);

    let remote_mode = mode(&r.join("report.txt"));
    let events = c.wait_for(&[
        (
            "gateway.scp.open",
            serde_json::json!({ "path": up, "mode": "0640", "size": 12_345, "direction": "upload" }),
        ),
        (
            "gateway.scp.close",
            serde_json::json!({ "path": up, "written": 12_345, "read": 0, "ok": true }),
        ),
        (
            "gateway.scp.open",
            serde_json::json!({
                "path": renamed,
                "path_if_target_is_dir": format!("{renamed}/report.txt"),
                "mode": "0640",
                "size": 12_345,
                "direction": "upload",
            }),
        ),
        (
            "gateway.scp.close",
            serde_json::json!({ "path": renamed, "written": 12_345, "ok": true }),
        ),
        (
            "gateway.scp.open",
            serde_json::json!({ "path": up, "mode": remote_mode, "size": 12_345, "direction": "download" }),
        ),
        (
            "gateway.scp.close",
            serde_json::json!({ "path": up, "read": 12_345, "written": 0, "ok": true }),
        ),
    ]);
    no_give_up(&events);
    assert_eq!(events.len(), 6, "{events:#?}");
}

#[test]
fn legacy_scp_of_a_directory_tree_both_ways_is_audited_per_file_and_directory() {
    let c = cluster();
    let remote = remote_dir();
    let r = remote.path();
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("tree");
    // (relative path, size, mode)
    let files = [
        ("a.txt", 1_000, 0o644),
        ("sub/b.bin", 70_000, 0o600),
        ("sub/empty", 0, 0o644),
        ("sub/deeper/c.txt", 300, 0o755),
    ];
    for (i, (rel, len, m)) in files.iter().enumerate() {
        write(&tree.join(rel), *len, i as u8, *m);
    }
    for d in ["sub", "sub/deeper"] {
        std::fs::set_permissions(tree.join(d), std::fs::Permissions::from_mode(0o750)).unwrap();
    }
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o755)).unwrap();

    c.scp(&["-r"], &tree, &format!("{}:{}/", c.host(), s(r)));
    let rtree = r.join("tree");
    for (rel, _, _) in files {
        assert_same(&tree.join(rel), &rtree.join(rel));
    }
    let down = local.path().join("down");
    std::fs::create_dir(&down).unwrap();
    c.scp_raw(&["-r"], &format!("{}:{}", c.host(), s(&rtree)), &s(&down));
    for (rel, _, _) in files {
        assert_same(&tree.join(rel), &down.join("tree").join(rel));
    }

    let mut want = vec![];
    for (kind, dir) in [
        ("gateway.scp.mkdir", &tree),
        ("gateway.scp.opendir", &rtree),
    ] {
        for d in ["", "sub", "sub/deeper"] {
            want.push((
                kind,
                serde_json::json!({ "path": s(&rtree.join(d)).trim_end_matches('/'), "mode": mode(&dir.join(d)) }),
            ));
        }
    }
    for (rel, len, _) in files {
        let path = s(&rtree.join(rel));
        want.push((
            "gateway.scp.open",
            serde_json::json!({ "path": path, "mode": mode(&tree.join(rel)), "size": len, "direction": "upload" }),
        ));
        want.push((
            "gateway.scp.close",
            serde_json::json!({ "path": path, "read": 0, "written": len, "ok": true }),
        ));
        want.push((
            "gateway.scp.open",
            serde_json::json!({ "path": path, "mode": mode(&rtree.join(rel)), "size": len, "direction": "download" }),
        ));
        want.push((
            "gateway.scp.close",
            serde_json::json!({ "path": path, "read": len, "written": 0, "ok": true }),
        ));
    }
    let events = c.wait_for(&want);
    no_give_up(&events);
    assert_eq!(events.len(), want.len(), "{events:#?}");
    // Each file's close follows its open, and a directory's files follow its mkdir.
    let at = |kind: &str, path: &str, dir: &str| {
        events
            .iter()
            .position(|(k, d)| {
                k == kind
                    && d["path"] == path
                    && (dir.is_empty() || d.get("direction").is_none_or(|v| v == dir))
            })
            .unwrap()
    };
    for (rel, _, _) in files {
        let p = s(&rtree.join(rel));
        assert!(at("gateway.scp.open", &p, "upload") < at("gateway.scp.close", &p, ""));
    }
    assert!(
        at("gateway.scp.mkdir", &s(&rtree.join("sub/deeper")), "")
            < at(
                "gateway.scp.open",
                &s(&rtree.join("sub/deeper/c.txt")),
                "upload"
            )
    );
}

#[test]
fn an_scp_command_the_gateway_cannot_follow_is_recorded_like_any_command() {
    let c = cluster();
    // Shell syntax around scp: not a plain transfer, so the gateway records the session
    // instead of trusting that only scp runs, and says it could not follow it.
    let out = c.alice.ssh_via_gate(
        &c.ca,
        "web1",
        TEST_LOGIN,
        &["scp -f /nonexistent-postern; echo not-only-scp"],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not-only-scp"),
        "{}",
        text(&out)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = c.scp_events();
        let recs = c.ca.admin_json(&["recordings", "ls"]);
        let gave_up = events.iter().any(|(k, d)| {
            k == "gateway.scp.observer_gave_up"
                && d["reason"]
                    == "unsupported scp command: shell syntax or unsafe characters in the path"
        });
        let recorded = recs.as_array().is_some_and(|l| {
            l.iter().any(|m| {
                let id = m["id"].as_str().unwrap_or_default();
                std::fs::read_to_string(c.ca.recordings_dir().join(format!("{id}.cast")))
                    .is_ok_and(|cast| cast.contains("not-only-scp"))
            })
        });
        if gave_up && recorded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gave up: {gave_up}, recorded: {recorded}\n{events:#?}\n{}",
            c.gate.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Security review: `scp -t ${x:='a[$(bash -i >&2)]'}${a[x]}` passed as plain scp, so the
/// gateway opened no recording while bash ran `$(...)` expanding the subscript. The command
/// is no longer trusted as scp: the session is recorded, and what bash's command substitution
/// printed is in the cast (the login's shell is bash, as the attack needs).
#[test]
fn regression_crafted_scp_command_cannot_run_an_unrecorded_shell() {
    postern_tests::ensure_bash_login();
    let c = cluster();
    let attack = r#"scp -t ${x:='a[$(echo PWNED-MARKER >&2)]'}${a[x]}"#;
    let out = c
        .alice
        .ssh_via_gate(&c.ca, "web1", TEST_BASH_LOGIN, &[attack]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PWNED-MARKER"),
        "the payload did not run under bash, so this test proves nothing: {}",
        text(&out)
    );
    // The cast's header names the command; everything the client saw is in its output.
    let cast = c.wait_for_cast(&["PWNED-MARKER"]);
    let seen = cast_output(&cast);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr
        .lines()
        .filter(|l| l.contains("PWNED") || l.contains("ubstitution"))
    {
        assert!(
            seen.contains(line.trim()),
            "{line:?} not recorded:\n{cast}\n{}",
            text(&out)
        );
    }
    assert!(
        seen.contains("PWNED-MARKER"),
        "the shell's output is not in the cast:\n{cast}\n{}",
        text(&out)
    );
    let events = c.scp_events();
    assert!(
        events
            .iter()
            .any(|(k, d)| k == "gateway.scp.observer_gave_up"
                && d["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("unsupported scp command: "))),
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|(k, _)| k == "gateway.scp.open"),
        "{events:#?}"
    );
}

/// An exec the allowlist trusts (`scp -t DIR`) whose stream stops being rcp: the observer
/// gives up and the relay records the channel from the bytes that made it give up, so what
/// the server says after is in a cast (here the server's scp, answering non-rcp input; a
/// login whose `scp` is a shell function or script printing text ends the same way).
#[test]
fn regression_scp_observer_give_up_starts_the_recording() {
    let c = cluster();
    let remote = remote_dir();
    let command = format!("scp -t {}", s(remote.path()));
    let out = c.ssh_with_input(&command, "this is not rcp\n");
    // sink() answers a line that is no record with it as an error, and exits.
    let answer = "\u{1}scp: this is not rcp\n";
    let cast = c.wait_for_cast(&[&command]);
    let seen = cast_output(&cast);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(answer) && seen.contains(answer),
        "{}\ncast:\n{cast}",
        text(&out)
    );
    // Which of the two the observer saw first depends on timing: the client's bytes before
    // the server's first response, or as a record after it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events = c.scp_events();
        if events.iter().any(|(k, d)| {
            k == "gateway.scp.observer_gave_up"
                && (d["reason"] == "unexpected record"
                    || d["reason"] == "the sender did not wait for the response")
        }) {
            break events;
        }
        assert!(Instant::now() < deadline, "{events:#?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // The server's message came after the give-up: recorded, and no longer an scp event.
    assert!(
        !events.iter().any(|(k, d)| k == "gateway.scp.error"
            && d["message"]
                .as_str()
                .is_some_and(|m| m.contains("this is not rcp"))),
        "{events:#?}"
    );
}
