//! User stories of recordings after the session: a gateway uploads a recording of any size in
//! chunks that survive a restart of the CA or of the gateway, and people list and play the
//! recordings that the policy lets them see (their own, and others' on the servers that a
//! role's `view_recordings` selects).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use postern_tests::{bin, run, sha256_hex, text, Ca, Gate, Node, Person, TEST_LOGIN};

fn policy(prod_auditor_sees: &str) -> String {
    format!(
        r#"
[defaults]
user_cert_ttl = "1h"

[roles.dev]
logins = ["{TEST_LOGIN}"]
nodes = {{ env = "dev" }}
permit = ["pty"]

[roles.auditor]
logins = ["{TEST_LOGIN}"]
nodes = {{ env = "dev" }}
view_recordings = {{ "*" = "*" }}

[roles.prod-auditor]
logins = ["{TEST_LOGIN}"]
nodes = {{ env = "dev" }}
view_recordings = {{ env = "{prod_auditor_sees}" }}

[users.alice]
roles = ["dev"]
[users.bob]
roles = ["dev"]
[users.carol]
roles = ["dev", "auditor"]
[users.dave]
roles = ["prod-auditor"]
"#
    )
}

/// Small chunks, so that a few kilobytes take several of them.
const SMALL_CHUNKS: &str = "[recordings]\nchunk_bytes = 4096\nmax_bytes = \"1MiB\"";

fn logged_in(ca: &Ca, user: &str) -> Person {
    let mut p = Person::new(user);
    p.enroll(ca);
    let out = p.login(ca);
    assert!(out.status.success(), "{user}: {}", text(&out));
    p
}

/// Waits until the CA lists a recording with this id; returns its metadata.
fn stored(ca: &Ca, id: &str, deadline: Duration, log: impl Fn() -> String) -> Value {
    let until = Instant::now() + deadline;
    loop {
        let list = ca.admin_json(&["recordings", "ls"]);
        if let Some(m) = list.as_array().unwrap().iter().find(|m| m["id"] == id) {
            return m.clone();
        }
        assert!(
            Instant::now() < until,
            "recording {id} never stored:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ids(out: &std::process::Output) -> Vec<String> {
    assert!(out.status.success(), "{}", text(out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until `person` lists exactly `want` among `--user alice`'s recordings (the policy
/// is reloaded within a second or two).
fn wait_listing(person: &Person, want: &[String]) {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let out = run(person
            .postern()
            .args(["recordings", "ls", "--user", "alice", "--json"]));
        if ids(&out) == want {
            return;
        }
        assert!(Instant::now() < until, "{}", text(&out));
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn recordings_are_seen_by_their_user_and_by_roles_whose_view_recordings_selects_the_server() {
    let mut ca = Ca::init(&policy("prod"));
    let gport = Gate::reserve_port();
    ca.set_gateway(&format!("127.0.0.1:{gport}"));
    ca.append_config(SMALL_CHUNKS);
    ca.spawn();
    let token = ca.token("node", "web1", "env=dev");
    let (mut node, out) = Node::join(&ca, "web1", &token, &[]);
    assert!(out.status.success(), "{}", text(&out));
    node.start_sshd();
    let gate = Gate::start(&ca, gport);
    let alice = logged_in(&ca, "alice");
    let bob = logged_in(&ca, "bob");
    let carol = logged_in(&ca, "carol");
    let dave = logged_in(&ca, "dave");

    // alice's session prints more than one upload chunk holds.
    let out = alice.ssh_via_gate(&ca, "web1", TEST_LOGIN, &["seq 1 3000; echo marker-end"]);
    assert!(out.status.success(), "{}\n{}", text(&out), gate.log());
    let saw = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(saw.ends_with("3000\nmarker-end\n"), "{saw:?}");
    let list = {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let l = ca.admin_json(&["recordings", "ls"]);
            if !l.as_array().unwrap().is_empty() {
                break l;
            }
            assert!(Instant::now() < until, "no recording:\n{}", gate.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let meta = &list[0];
    let id = meta["id"].as_str().unwrap().to_owned();
    assert_eq!(meta["user"], "alice");
    assert!(meta["bytes"].as_u64().unwrap() > 3 * 4096, "{meta}");
    let file = ca.dir.path().join(format!("recordings/{id}.cast"));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), meta["bytes"]);
    let stored_ev = ca
        .audit()
        .into_iter()
        .find(|e| e["kind"] == "recording.stored")
        .unwrap();
    assert_eq!(stored_ev["detail"]["upload"], "chunked");
    assert_eq!(stored_ev["detail"]["sha256"], sha256_hex(&file));
    assert_eq!(stored_ev["detail"]["authorized_session"], true);

    // alice sees and plays her own.
    assert_eq!(
        ids(&run(alice.postern().args(["recordings", "ls", "--json"]))),
        vec![id.clone()]
    );
    let out = run(alice.postern().args(["play", &id]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), saw);

    // bob has no view_recordings: his listing is empty, asking for alice's is refused with a
    // reason (exit 3), and her recording is "not found" like one that does not exist.
    assert!(ids(&run(bob.postern().args(["recordings", "ls", "--json"]))).is_empty());
    let out = run(bob.postern().args(["recordings", "ls", "--user", "alice"]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("only their own recordings"),
        "{}",
        text(&out)
    );
    assert!(stderr(&out).contains("view_recordings"), "{}", text(&out));
    let out = run(bob.postern().args(["play", &id]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains(&format!("no recording {id} of yours")),
        "{}",
        text(&out)
    );

    // carol's auditor role selects every server: she lists and plays alice's, and that is
    // audited with the role that allowed it.
    assert_eq!(
        ids(&run(carol.postern().args(["recordings", "ls", "--json"]))),
        vec![id.clone()]
    );
    assert_eq!(
        ids(&run(carol.postern().args([
            "recordings",
            "ls",
            "--user",
            "alice",
            "--json"
        ]))),
        vec![id.clone()]
    );
    assert_eq!(
        ids(&run(carol.postern().args([
            "recordings",
            "ls",
            "--node",
            "web1",
            "--json"
        ]))),
        vec![id.clone()]
    );
    let out = run(carol.postern().args(["recordings", "ls"]));
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("ID ") && table.contains(" USER "),
        "{table}"
    );
    assert!(table.contains("alice"), "{table}");
    let out = run(carol.postern().args(["play", &id, "--speed", "8"]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), saw);
    let viewed: Vec<Value> = ca
        .audit()
        .into_iter()
        .filter(|e| e["kind"] == "recording.viewed")
        .collect();
    assert_eq!(viewed.len(), 2, "{viewed:?}");
    assert_eq!(viewed[0]["actor"], "alice");
    assert_eq!(viewed[0]["detail"]["role"], Value::Null);
    assert_eq!(viewed[1]["actor"], "carol");
    assert_eq!(viewed[1]["detail"]["user"], "alice");
    assert_eq!(viewed[1]["detail"]["node"], "web1");
    assert_eq!(viewed[1]["detail"]["role"], "auditor");

    // dave sees env=prod only; web1 is env=dev. Asking is allowed (he has view_recordings),
    // the answer does not include alice's, and playing it is "not found".
    assert!(ids(&run(dave.postern().args([
        "recordings",
        "ls",
        "--user",
        "alice",
        "--json"
    ])))
    .is_empty());
    let out = run(dave.postern().args(["play", &id]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains(&format!("no recording {id} that you may see")),
        "{}",
        text(&out)
    );
    let out = run(dave.postern().args(["play", "s-nosuch"]));
    assert!(
        stderr(&out).contains("no recording s-nosuch that you may see"),
        "{}",
        text(&out)
    );

    // The policy changes: dave's role now selects env=dev, and he sees it at once.
    ca.set_policy(&policy("dev"));
    wait_listing(&dave, std::slice::from_ref(&id));
    let out = run(dave.postern().args(["play", &id]));
    assert!(out.status.success(), "{}", text(&out));

    // web1 leaves the cluster, and another server joins under its name with env=prod: the
    // recording keeps the labels of its session (env=dev), so dave still sees it...
    ca.admin_json(&["nodes", "rm", "web1"]);
    let token = ca.token_with("node", "web1", "env=prod", &["--replace"]);
    let (_new_web1, out) = Node::join(&ca, "web1", &token, &[]);
    assert!(out.status.success(), "{}", text(&out));
    wait_listing(&dave, std::slice::from_ref(&id));
    // ...and when his role selects env=prod instead, the new web1's labels do not show him
    // the old session.
    ca.set_policy(&policy("prod"));
    wait_listing(&dave, &[]);
    let out = run(dave.postern().args(["play", &id]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!("no recording {id} that you may see")),
        "{}",
        text(&out)
    );
    assert_eq!(
        ids(&run(carol.postern().args([
            "recordings",
            "ls",
            "--user",
            "alice",
            "--json"
        ]))),
        vec![id.clone()]
    );
    let out = run(carol.postern().args(["play", &id]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        ids(&run(alice.postern().args(["recordings", "ls", "--json"]))),
        vec![id.clone()]
    );
    // The admin still lists everything.
    assert_eq!(
        ca.admin_json(&["recordings", "ls"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// A valid asciicast of about `lines` events.
fn cast(lines: usize) -> Vec<u8> {
    let mut c = String::from("{\"version\": 2, \"width\": 80, \"height\": 24}\n");
    for i in 0..lines {
        c.push_str(&format!(
            "[{}.5, \"o\", \"line {i} of a long session\\r\\n\"]\n",
            i / 10
        ));
    }
    c.into_bytes()
}

fn sha(bytes: &[u8], dir: &Path) -> String {
    let f = dir.join("sha-input");
    std::fs::write(&f, bytes).unwrap();
    sha256_hex(&f)
}

fn meta(id: &str, bytes: usize) -> Value {
    let now = postern_tests::now();
    json!({
        "id": id, "user": "alice", "login": TEST_LOGIN, "node": "web1", "gateway": "ignored",
        "started_at": now - 60, "ended_at": now, "interrupted": false, "bytes": bytes,
    })
}

const OCTETS: &str = "application/octet-stream";
const JSON: &str = "application/json";

fn put(g: &Gate, ca: &Ca, id: &str, offset: u64, bytes: &[u8]) -> (u16, Value) {
    let (status, body) = g.api(
        ca,
        "PUT",
        &format!("/v1/gateway/recordings/{id}/chunks?offset={offset}"),
        Some((bytes, OCTETS)),
    );
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn complete(g: &Gate, ca: &Ca, id: &str, body: &Value) -> (u16, Value) {
    let (status, resp) = g.api(
        ca,
        "POST",
        &format!("/v1/gateway/recordings/{id}/complete"),
        Some((body.to_string().as_bytes(), JSON)),
    );
    (
        status,
        serde_json::from_str(&resp).unwrap_or(Value::String(resp)),
    )
}

fn status(g: &Gate, ca: &Ca, id: &str) -> (u16, Value) {
    let (status, body) = g.api(ca, "GET", &format!("/v1/gateway/recordings/{id}"), None);
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// Sessions authorized as the gateway asks for them before each session (alice as
/// TEST_LOGIN on web1, env=dev): the CA stores recordings of authorized sessions only.
struct Sessions {
    _web1: Node,
    _alice: Person,
    serial: String,
    public: String,
}

impl Sessions {
    fn new(ca: &Ca) -> Sessions {
        let token = ca.token("node", "web1", "env=dev");
        let (web1, out) = Node::join(ca, "web1", &token, &[]);
        assert!(out.status.success(), "{}", text(&out));
        let alice = logged_in(ca, "alice");
        let serial = std::fs::read_to_string(alice.cluster_dir(ca).join("id_ed25519-cert.pub"))
            .unwrap()
            .trim()
            .to_owned();
        let key = alice.home.path().join("session_key");
        let out = run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key));
        assert!(out.status.success(), "{}", text(&out));
        let public = std::fs::read_to_string(key.with_extension("pub"))
            .unwrap()
            .trim()
            .to_owned();
        Sessions {
            _web1: web1,
            _alice: alice,
            serial,
            public,
        }
    }

    fn authorize(&self, g: &Gate, ca: &Ca, id: &str) {
        let body = json!({
            "user": "alice", "user_certificate": self.serial, "login": TEST_LOGIN,
            "node": "web1", "session_id": id, "public_key": self.public,
        });
        let (s, resp) = g.api(
            ca,
            "POST",
            "/v1/gateway/authorize",
            Some((body.to_string().as_bytes(), JSON)),
        );
        assert_eq!(s, 200, "{resp}");
    }
}

#[test]
fn a_recording_larger_than_a_chunk_resumes_after_a_ca_restart_and_is_stored_byte_identical() {
    let mut ca = Ca::init(&policy("prod"));
    ca.append_config(SMALL_CHUNKS);
    ca.spawn();
    let gate = Gate::joined(&ca, Gate::reserve_port());
    let sessions = Sessions::new(&ca);
    for id in [
        "s-big",
        "s-wrong",
        "s-h",
        "s-nothing",
        "s-notcast",
        "s-mine",
    ] {
        sessions.authorize(&gate, &ca, id);
    }
    let work = tempfile::tempdir().unwrap();
    let data = cast(1000);
    assert!(data.len() > 10 * 4096, "{}", data.len());
    let chunks: Vec<&[u8]> = data.chunks(4096).collect();

    let (s, v) = status(&gate, &ca, "s-big");
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({ "id": "s-big", "received": 0, "complete": false, "chunk_bytes": 4096, "max_bytes": 1 << 20 })
    );
    for (i, c) in chunks.iter().take(3).enumerate() {
        let (s, v) = put(&gate, &ca, "s-big", (i * 4096) as u64, c);
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["received"], (i + 1) * 4096);
    }
    // Nothing is visible before the completion.
    assert_eq!(ca.admin_json(&["recordings", "ls"]), json!([]));

    // The CA dies (SIGKILL) and comes back: it holds what it acknowledged.
    ca.stop();
    ca.spawn();
    let (s, v) = status(&gate, &ca, "s-big");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["received"], 3 * 4096);
    // A retried chunk (its answer was lost) is accepted and changes nothing...
    let (s, v) = put(&gate, &ca, "s-big", 2 * 4096, chunks[2]);
    assert_eq!((s, v["received"].clone()), (200, json!(3 * 4096)), "{v}");
    // ...other bytes at a received offset are refused...
    let (s, v) = put(&gate, &ca, "s-big", 4096, &vec![b'x'; 4096]);
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("differ"), "{v}");
    // ...and so is an offset beyond what was received, with where to resume.
    let (s, v) = put(&gate, &ca, "s-big", 5 * 4096, chunks[5]);
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("resume at 12288"),
        "{v}"
    );
    // Completing before every byte arrived is refused with where to resume.
    let mut done = json!({ "meta": meta("s-big", data.len()), "sha256": sha(&data, work.path()) });
    let (s, v) = complete(&gate, &ca, "s-big", &done);
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("resume at 12288"),
        "{v}"
    );

    for (i, c) in chunks.iter().enumerate().skip(3) {
        let (s, v) = put(&gate, &ca, "s-big", (i * 4096) as u64, c);
        assert_eq!(s, 200, "{v}");
    }
    let (s, stored) = complete(&gate, &ca, "s-big", &done);
    assert_eq!(s, 200, "{stored}");
    assert_eq!(stored["bytes"], data.len());
    assert_eq!(stored["gateway"], "gate1");
    let file = ca.dir.path().join("recordings/s-big.cast");
    assert_eq!(std::fs::read(&file).unwrap(), data);
    assert_eq!(sha256_hex(&file), done["sha256"]);
    assert_eq!(ca.admin_json(&["recordings", "ls"]), json!([stored]));
    let out = ca.admin(&["recordings", "ls"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("s-big"),
        "{}",
        text(&out)
    );
    assert!(
        std::fs::read_dir(ca.dir.path().join("recordings/partial"))
            .unwrap()
            .next()
            .is_none(),
        "a partial upload was left behind"
    );

    // Completing twice answers what is stored; other content is refused, nothing is
    // replaced; no chunk is accepted any more.
    let (s, again) = complete(&gate, &ca, "s-big", &done);
    assert_eq!((s, &again), (200, &stored));
    done["sha256"] = json!(sha(b"other", work.path()));
    let (s, v) = complete(&gate, &ca, "s-big", &done);
    assert_eq!(s, 409, "{v}");
    let (s, v) = put(&gate, &ca, "s-big", data.len() as u64, b"more");
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("already complete"),
        "{v}"
    );
    let (s, v) = put(&gate, &ca, "s-big", 0, chunks[0]);
    assert_eq!(s, 409, "{v}");
    let (_, v) = status(&gate, &ca, "s-big");
    assert_eq!(
        (v["complete"].clone(), v["received"].clone()),
        (json!(true), json!(data.len()))
    );
    assert_eq!(std::fs::read(&file).unwrap(), data);
    let stored_events = ca
        .audit()
        .into_iter()
        .filter(|e| e["kind"] == "recording.stored")
        .count();
    assert_eq!(stored_events, 1);

    // A wrong SHA-256 discards what was received: the upload starts again from 0.
    let small = cast(20);
    let (s, v) = put(&gate, &ca, "s-wrong", 0, &small);
    assert_eq!(s, 200, "{v}");
    let bad =
        json!({ "meta": meta("s-wrong", small.len()), "sha256": sha(b"not it", work.path()) });
    let (s, v) = complete(&gate, &ca, "s-wrong", &bad);
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("discarded"), "{v}");
    assert_eq!(status(&gate, &ca, "s-wrong").1["received"], 0);
    assert!(!ca.dir.path().join("recordings/s-wrong.cast").exists());
    assert!(!ca
        .dir
        .path()
        .join("recordings/partial/s-wrong.part")
        .exists());

    // Hostile requests change nothing.
    let before = std::fs::read_dir(ca.dir.path().join("recordings"))
        .unwrap()
        .count();
    for path in [
        "/v1/gateway/recordings/s-h/chunks?offset=-1",
        "/v1/gateway/recordings/s-h/chunks?offset=18446744073709551616",
        "/v1/gateway/recordings/s-h/chunks?offset=1e3",
        "/v1/gateway/recordings/s-h/chunks",
        "/v1/gateway/recordings/s-h/chunks?offset=0&extra=1",
        "/v1/gateway/recordings/..%2F..%2Fposternd.db/chunks?offset=0",
        "/v1/gateway/recordings/%2e%2e/chunks?offset=0",
        "/v1/gateway/recordings/S-UPPER/chunks?offset=0",
        "/v1/gateway/recordings/s.cast/chunks?offset=0",
        "/v1/gateway/recordings/%ff%fe/chunks?offset=0",
    ] {
        let (s, body) = gate.api(&ca, "PUT", path, Some((b"{\"version\": 2}\n", OCTETS)));
        assert_eq!(s, 400, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].is_string(), "{path}: {body}");
    }
    for path in [
        "/v1/gateway/recordings/../../posternd.db/chunks?offset=0",
        "/v1/gateway/recordings/a/b/chunks?offset=0",
    ] {
        let (s, body) = gate.api(&ca, "PUT", path, Some((b"x", OCTETS)));
        assert_eq!(s, 404, "{path}: {body}");
    }
    let (s, v) = put(&gate, &ca, &"a".repeat(65), 0, b"x");
    assert_eq!(s, 400, "{v}");
    // An offset whose end overflows, or passes max_bytes (1 MiB here).
    let (s, v) = put(&gate, &ca, "s-h", u64::MAX, b"x");
    assert_eq!(s, 400, "{v}");
    let (s, v) = put(&gate, &ca, "s-h", 1 << 63, b"x");
    assert_eq!(s, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("max_bytes"), "{v}");
    let (s, v) = put(&gate, &ca, "s-h", (1 << 20) - 1, b"xy");
    assert_eq!(s, 413, "{v}");
    // A chunk larger than chunk_bytes, an empty chunk, a first chunk not at 0.
    let (s, v) = put(&gate, &ca, "s-h", 0, &[b'x'; 4097]);
    assert_eq!(s, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("chunk_bytes"), "{v}");
    let (s, v) = put(&gate, &ca, "s-h", 0, b"");
    assert_eq!(s, 400, "{v}");
    let (s, v) = put(&gate, &ca, "s-h", 10, b"x");
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("resume at 0"), "{v}");
    // Completions that do not match their path, size or format.
    let (s, v) = put(&gate, &ca, "s-h", 0, &small);
    assert_eq!(s, 200, "{v}");
    let good = json!({ "meta": meta("s-h", small.len()), "sha256": sha(&small, work.path()) });
    let mut m = good.clone();
    m["meta"]["id"] = json!("s-other");
    assert_eq!(complete(&gate, &ca, "s-h", &m).0, 400);
    let mut m = good.clone();
    m["sha256"] = json!("abc");
    assert_eq!(complete(&gate, &ca, "s-h", &m).0, 400);
    let mut m = good.clone();
    m["sha256"] = json!(good["sha256"].as_str().unwrap().to_uppercase());
    assert_eq!(complete(&gate, &ca, "s-h", &m).0, 400);
    let mut m = good.clone();
    m["meta"]["bytes"] = json!(-1);
    assert_eq!(complete(&gate, &ca, "s-h", &m).0, 400);
    let mut m = good.clone();
    m["meta"]["bytes"] = json!(2 << 20);
    assert_eq!(complete(&gate, &ca, "s-h", &m).0, 413);
    let mut m = good.clone();
    m["meta"]["ended_at"] = json!(0);
    assert_eq!(complete(&gate, &ca, "s-h", &m).0, 400);
    let mut m = good.clone();
    m["meta"]["user"] = json!("../root");
    assert_eq!(complete(&gate, &ca, "s-h", &m).0, 400);
    let mut m = good.clone();
    m["extra"] = json!(1);
    assert_eq!(complete(&gate, &ca, "s-h", &m).0, 400);
    assert_eq!(
        complete(
            &gate,
            &ca,
            "s-nothing",
            &json!({ "meta": meta("s-nothing", 10), "sha256": good["sha256"] })
        )
        .0,
        409
    );
    // ...none of which lost the received bytes: the good completion still works.
    let (s, v) = complete(&gate, &ca, "s-h", &good);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        std::fs::read(ca.dir.path().join("recordings/s-h.cast")).unwrap(),
        small
    );
    // Something that is not asciicast is refused at completion.
    let not_cast = b"MZ\x90\x00 not a cast\n";
    let (s, _) = put(&gate, &ca, "s-notcast", 0, not_cast);
    assert_eq!(s, 200);
    let nc =
        json!({ "meta": meta("s-notcast", not_cast.len()), "sha256": sha(not_cast, work.path()) });
    let (s, v) = complete(&gate, &ca, "s-notcast", &nc);
    assert_eq!(s, 400, "{v}");
    assert!(!ca.dir.path().join("recordings/s-notcast.cast").exists());
    let after = std::fs::read_dir(ca.dir.path().join("recordings"))
        .unwrap()
        .count();
    assert_eq!(after, before + 1, "only s-h.cast was added");

    // Another gateway cannot touch this gateway's uploads; a client without a gateway
    // identity cannot call the routes at all.
    let gate2 = {
        // Joined under another name by hand: Gate::joined always names its gateway gate1.
        let g = tempfile::tempdir().unwrap();
        let token = ca.token("gateway", "gate2", "");
        let out = run(Command::new(bin("postern-gate"))
            .args([
                "join", "--ca", &ca.url, "--ca-pin", &ca.pin, "--token", &token, "--name", "gate2",
            ])
            .args(["--address", "127.0.0.1:1", "--state-dir"])
            .arg(g.path()));
        assert!(out.status.success(), "{}", text(&out));
        g
    };
    let as_gate2 = |method: &str, path: &str, body: Option<&[u8]>| {
        let d = gate2.path();
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
            .arg("--cacert")
            .arg(d.join("ca.crt"))
            .arg("--cert")
            .arg(d.join("identity.crt"))
            .arg("--key")
            .arg(postern_tests::pkcs8_v1(&d.join("identity.key")));
        if let Some(b) = body {
            let f = d.join("body");
            std::fs::write(&f, b).unwrap();
            cmd.args([
                "-H",
                "content-type: application/octet-stream",
                "--data-binary",
            ])
            .arg(format!("@{}", f.display()));
        }
        let out = run(cmd.arg(format!("{}{path}", ca.url)));
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = s.rsplit_once('\n').unwrap();
        (code.trim().parse::<u16>().unwrap(), body.to_owned())
    };
    let (s, v) = put(&gate, &ca, "s-mine", 0, &small[..100]);
    assert_eq!(s, 200, "{v}");
    let (s, body) = as_gate2(
        "PUT",
        "/v1/gateway/recordings/s-mine/chunks?offset=100",
        Some(&small[100..]),
    );
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("another gateway"), "{body}");
    let (s, body) = as_gate2("GET", "/v1/gateway/recordings/s-big", None);
    assert_eq!(s, 409, "{body}");
    let (s, body) = postern_tests::curl(&ca, "/v1/gateway/recordings/s-mine", None);
    assert_eq!(s, 401, "{body}");
    assert!(
        body.contains("gateway endpoints need the client certificate"),
        "{body}"
    );
    assert_eq!(status(&gate, &ca, "s-mine").1["received"], 100);
}

#[test]
fn the_gateway_uploads_a_set_aside_recording_resuming_where_the_ca_stopped_even_after_an_outage() {
    let mut ca = Ca::init(&policy("prod"));
    ca.append_config(SMALL_CHUNKS);
    ca.spawn();
    let mut gate = Gate::joined(&ca, Gate::reserve_port());
    let sessions = Sessions::new(&ca);
    sessions.authorize(&gate, &ca, "s-aside");
    let data = cast(1500);
    assert!(data.len() > 15 * 4096);
    // An earlier gateway set the recording aside as too large for one upload.
    let spool = gate.spool();
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join("s-aside.cast.toolarge"), &data).unwrap();
    std::fs::write(
        spool.join("s-aside.done.json.toolarge"),
        meta("s-aside", data.len()).to_string(),
    )
    .unwrap();
    std::fs::write(
        spool.join("s-aside.meta.json"),
        meta("s-aside", 0).to_string(),
    )
    .unwrap();
    // And it was killed in the middle of an upload: the CA holds the first 5 chunks.
    for i in 0..5 {
        let (s, v) = put(
            &gate,
            &ca,
            "s-aside",
            i * 4096,
            &data[(i * 4096) as usize..((i + 1) * 4096) as usize],
        );
        assert_eq!(s, 200, "{v}");
    }
    // The CA is down when the gateway starts: nothing is lost, the gateway retries.
    ca.stop();
    gate.spawn();
    let until = Instant::now() + Duration::from_secs(20);
    while !gate.log().contains("recording upload failed; will retry") {
        assert!(Instant::now() < until, "{}", gate.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(spool.join("s-aside.cast").exists(), "{}", gate.log());
    ca.spawn();
    let m = stored(&ca, "s-aside", Duration::from_secs(60), || gate.log());
    assert_eq!(m["bytes"], data.len());
    let file = ca.dir.path().join("recordings/s-aside.cast");
    assert_eq!(std::fs::read(&file).unwrap(), data);
    assert!(
        gate.log()
            .contains("resuming the upload of recording s-aside at byte 20480"),
        "{}",
        gate.log()
    );
    // The spool is empty once the CA stored it.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<_> = std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "{left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
