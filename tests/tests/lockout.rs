//! User stories of guessing that does not pay: failures counted across locks up to a hard lock
//! that only `posternd users reset` ends, names that are not users never logged or audited, and
//! secrets (invites, join tokens) kept off command lines.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::process::{Command, Stdio};

use postern_tests::{curl, run, run_with_input, text, Ca, Person, TEST_LOGIN};
use serde_json::Value;

fn policy() -> String {
    format!(
        r#"
[defaults]
user_cert_ttl = "1h"

[roles.dev]
logins = ["{TEST_LOGIN}"]
nodes = {{ "*" = "*" }}

[users.carol]
roles = ["dev"]
[users.dave]
roles = ["dev"]
"#
    )
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `users ls --json`'s entry for one user.
fn user_row(ca: &Ca, name: &str) -> Value {
    ca.admin_json(&["users", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in users ls"))
        .clone()
}

/// Ends a timed lock as the passing of its time would: the CA has no clock to turn, so the
/// test moves the lock's end into the past in the CA's own database.
fn let_lock_expire(ca: &Ca, name: &str) {
    let db = ca.dir.path().join("posternd.db");
    let out = run(Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(&db)
        .arg(format!(
            "UPDATE users SET locked_until = 1 WHERE name = '{name}';"
        )));
    assert!(out.status.success(), "{}", text(&out));
}

fn wrong_logins(ca: &Ca, p: &mut Person, n: usize) {
    for i in 0..n {
        let code = p.code_at_step(postern_tests::now() / 30);
        let out = p.login_with(ca, "wrong password", &code, &[]);
        assert_eq!(out.status.code(), Some(3), "try {i}: {}", text(&out));
        assert!(
            stderr(&out).contains("invalid credentials"),
            "try {i}: {}",
            text(&out)
        );
    }
}

/// The last `user.locked_out` event of a user.
fn last_lock_event(ca: &Ca, name: &str) -> Value {
    ca.audit()
        .into_iter()
        .rev()
        .find(|e| e["kind"] == "user.locked_out" && e["actor"] == name)
        .unwrap_or_else(|| panic!("no user.locked_out for {name}"))
}

fn detail(e: &Value) -> Value {
    match &e["detail"] {
        Value::String(s) => serde_json::from_str(s).unwrap(),
        other => other.clone(),
    }
}

#[test]
fn failures_count_across_locks_that_double_until_a_hard_lock_only_reset_ends() {
    let mut ca = Ca::start(&policy());
    let mut carol = Person::new("carol");
    carol.enroll(&ca);
    let pw = carol.password.clone();

    // Five failures: the first lock, 15 minutes.
    wrong_logins(&ca, &mut carol, 5);
    let row = user_row(&ca, "carol");
    assert_eq!(row["failures"], 5, "{row}");
    assert_eq!(row["hard_locked"], false, "{row}");
    assert!(
        row["locked_until"].as_u64().unwrap() > postern_tests::now(),
        "{row}"
    );
    let e = last_lock_event(&ca, "carol");
    let d = detail(&e);
    assert_eq!(d["lock"], 1, "{e}");
    assert_eq!(
        d["until"].as_u64().unwrap() - e["ts"].as_u64().unwrap(),
        15 * 60,
        "{e}"
    );

    // During the lock the right password and code are refused and change nothing.
    let code = carol.fresh_code();
    let out = carol.login_with(&ca, &pw, &code, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stderr(&out).contains("account locked"), "{}", text(&out));
    assert_eq!(user_row(&ca, "carol")["failures"], 5);

    // Each further five failures lock twice as long as the lock before; nothing starts over.
    for (nth, minutes) in [(2, 30), (3, 60), (4, 120), (5, 240)] {
        let_lock_expire(&ca, "carol");
        wrong_logins(&ca, &mut carol, 5);
        let row = user_row(&ca, "carol");
        assert_eq!(row["failures"], nth * 5, "{row}");
        let e = last_lock_event(&ca, "carol");
        let d = detail(&e);
        assert_eq!(d["lock"], nth, "{e}");
        assert_eq!(
            d["until"].as_u64().unwrap() - e["ts"].as_u64().unwrap(),
            minutes * 60,
            "{e}"
        );
    }

    // The 30th failure locks hard.
    let_lock_expire(&ca, "carol");
    wrong_logins(&ca, &mut carol, 5);
    let row = user_row(&ca, "carol");
    assert_eq!(row["failures"], 30, "{row}");
    assert_eq!(row["hard_locked"], true, "{row}");
    assert_eq!(row["locked"], true, "{row}");
    let e = last_lock_event(&ca, "carol");
    assert_eq!(detail(&e)["hard"], true, "{e}");
    let ls = ca.admin(&["users", "ls"]);
    let table = String::from_utf8_lossy(&ls.stdout).into_owned();
    let line = table.lines().find(|l| l.starts_with("carol ")).unwrap();
    assert!(line.contains("30") && line.contains("hard"), "{table}");

    // However long it has been, the right password and code are refused, with the reason in
    // the audit log and the CA's log.
    let_lock_expire(&ca, "carol");
    let code = carol.fresh_code();
    let out = carol.login_with(&ca, &pw, &code, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("only an administrator can unlock it"),
        "{}",
        text(&out)
    );
    assert!(ca.log().contains("user hard-locked"), "{}", ca.log());
    assert_eq!(user_row(&ca, "carol")["failures"], 30);
    // The refusals' reasons are in the per-minute failure summaries (`auth.failures`), written
    // at the latest when the daemon stops.
    ca.terminate();
    ca.spawn();
    let mut reasons = std::collections::BTreeMap::<String, u64>::new();
    for e in ca
        .audit()
        .iter()
        .filter(|e| e["kind"] == "auth.failures" && e["detail"]["kind"] == "login")
    {
        for (r, n) in e["detail"]["reasons"].as_object().unwrap() {
            *reasons.entry(r.clone()).or_default() += n.as_u64().unwrap();
        }
    }
    assert!(
        reasons.get("account locked").is_some_and(|n| *n >= 1),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(r, n)| r.contains("hard-locked") && *n >= 1),
        "{reasons:?}"
    );

    // `users reset` ends it: new invite, new credentials, a clean count.
    let out = ca.admin(&["users", "reset", "carol"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hard lock is cleared"),
        "{}",
        text(&out)
    );
    let invite = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    let row = user_row(&ca, "carol");
    assert_eq!(row["failures"], 0, "{row}");
    assert_eq!(row["hard_locked"], false, "{row}");
    assert_eq!(row["locked"], false, "{row}");
    let mut carol2 = Person::new("carol");
    enroll_from_stdin(&ca, &mut carol2, &invite);
    carol2.login(&ca);
}

/// `postern enroll --invite-stdin --password-stdin`, with the invite and the password as two
/// lines of standard input; checks that the invite is not in the process's arguments while it
/// waits for them.
fn enroll_from_stdin(ca: &Ca, p: &mut Person, invite: &str) {
    let mut child = p
        .postern()
        .args([
            "enroll", "--ca", &ca.url, "--ca-pin", &ca.pin, "--user", &p.user,
        ])
        .args(["--invite-stdin", "--password-stdin", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The kernel fills in the new program's arguments a moment after `spawn` returns (the
    // close-on-exec pipe std waits on closes first): read until they are there.
    let mut cmdline = String::new();
    for _ in 0..1000 {
        let raw = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
        cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if !cmdline.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(cmdline.contains("--invite-stdin"), "{cmdline}");
    assert!(
        !cmdline.contains(invite),
        "invite in the process list: {cmdline}"
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("  {invite}  \n{}\n", p.password).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "enroll: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let uri = v["otpauth_uri"].as_str().unwrap();
    let secret = uri
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("secret="))
        .unwrap();
    p.totp_secret = postern_tests::base32_decode(secret);
}

#[test]
fn enroll_reads_the_invite_from_standard_input() {
    let ca = Ca::start(&policy());
    let out = ca.admin(&["users", "add", "dave"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let invite = said.lines().nth(1).unwrap().trim().to_owned();
    // The next command shown keeps the invite off the command line.
    assert!(said.contains("--invite-stdin"), "{said}");
    assert_eq!(said.matches(invite.as_str()).count(), 1, "{said}");
    let mut dave = Person::new("dave");
    enroll_from_stdin(&ca, &mut dave, &invite);
    dave.login(&ca);

    // Both sources at once is a usage error, and so is neither.
    let out = run_with_input(
        dave.postern()
            .args([
                "enroll", "--ca", &ca.url, "--ca-pin", &ca.pin, "--user", "dave",
            ])
            .args(["--invite", "x", "--invite-stdin", "--password-stdin"]),
        "x\ny\n",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        text(&out)
    );
    let out = run(dave.postern().args([
        "enroll", "--ca", &ca.url, "--ca-pin", &ca.pin, "--user", "dave",
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("--invite"), "{}", text(&out));
}

#[test]
fn join_tokens_are_shown_in_the_environment_not_on_the_command_line() {
    let ca = Ca::start(&policy());
    for (kind, name) in [("node", "web1"), ("gateway", "gate1")] {
        let out = ca.admin(&[
            "tokens", "add", "--kind", kind, "--name", name, "--ttl", "10m",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        let token = said.lines().next().unwrap().trim().to_owned();
        let next = said.lines().last().unwrap();
        assert!(
            next.trim_start()
                .starts_with(&format!("POSTERN_JOIN_TOKEN={token} ")),
            "{said}"
        );
        assert!(!next.contains("--token"), "{said}");
    }
}

#[test]
fn a_password_typed_as_the_user_name_is_never_logged_audited_or_echoed() {
    let mut ca = Ca::start(&policy());
    // A password that is a valid user name: it reaches the CA, which counts it as an unknown
    // name and must not keep it.
    let typed = "CorrectHorse42battery";
    let mut ghost = Person::new(typed);
    for _ in 0..6 {
        let out = ghost.login_with(&ca, "pw", "123456", &[]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out));
        assert!(
            stderr(&out).contains("invalid credentials") || stderr(&out).contains("locked"),
            "{}",
            text(&out)
        );
        assert!(!text(&out).contains(typed), "{}", text(&out));
    }
    // An enrolment under that name too.
    let out = run_with_input(
        ghost
            .postern()
            .args([
                "enroll", "--ca", &ca.url, "--ca-pin", &ca.pin, "--user", typed,
            ])
            .args(["--invite-stdin", "--password-stdin"]),
        "0123456789abcdef\npassword-long\n",
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("enrolment refused: invalid credentials"),
        "{}",
        text(&out)
    );
    // A password that is not a valid user name: refused by the CLI before sending, without
    // repeating it, and by the CA's API alike.
    let typed_bad = "Tr0ub4dor&3!xyz";
    let out = run(ghost.postern().args([
        "login", "--ca", &ca.url, "--ca-pin", &ca.pin, "--user", typed_bad, "--otp", "123456",
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("not a user name"), "{}", text(&out));
    assert!(!text(&out).contains("Tr0ub4dor"), "{}", text(&out));
    let body = format!(
        r#"{{"user":"{typed_bad}","password":"p","otp":"123456","public_key":"ssh-ed25519 AAAA"}}"#
    );
    let (status, answer) = curl(&ca, "/v1/login", Some(body.as_bytes()));
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("invalid user name"), "{answer}");
    assert!(!answer.contains("Tr0ub4dor"), "{answer}");

    // Failures are counted per source and minute (`auth.failures`), written at the latest when
    // the daemon stops; the unknown name appears only as its keyed tag.
    ca.terminate();
    ca.spawn();
    let audit = ca.audit();
    let summaries: Vec<&Value> = audit
        .iter()
        .filter(|e| e["kind"] == "auth.failures")
        .collect();
    let count = |kind: &str| -> u64 {
        summaries
            .iter()
            .filter(|e| e["detail"]["kind"] == kind)
            .map(|e| e["detail"]["count"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(count("login"), 6, "{audit:?}");
    assert_eq!(count("enroll"), 1, "{audit:?}");
    // One name, one tag: repeated tries of a name can still be told from many names.
    let names: std::collections::BTreeSet<String> = summaries
        .iter()
        .flat_map(|e| e["detail"]["users"].as_object().unwrap().keys().cloned())
        .collect();
    assert_eq!(names.len(), 1, "{summaries:?}");
    assert!(
        names.iter().all(|n| n.starts_with("<unknown> ")),
        "{names:?}"
    );
    let all = serde_json::to_string(&audit).unwrap();
    assert!(!all.contains(typed), "{all}");
    assert!(!all.contains("Tr0ub4dor"), "{all}");
    let log = ca.log();
    assert!(!log.contains(typed), "{log}");
    assert!(!log.contains("Tr0ub4dor"), "{log}");
    let db = ca.dir.path().join("posternd.db");
    let dump = run(Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(&db)
        .arg(".dump"));
    assert!(dump.status.success(), "{}", text(&dump));
    assert!(!String::from_utf8_lossy(&dump.stdout).contains(typed));
}
