//! The one lock rule (`LockEntry::applies`), pinned by a table: which accesses each kind of
//! lock stops, expiry, unknown parts, and unknown kinds (deny).
#![allow(clippy::unwrap_used)]

use postern_core::api::{lock_for, LockEntry, LockSubject};
use postern_core::LockTarget;

fn lock(target: &str, name: &str, expires: Option<u64>) -> LockEntry {
    LockEntry {
        id: 1,
        target: target.into(),
        name: name.into(),
        expires,
        reason: "r".into(),
    }
}

const NOW: u64 = 1_000;

#[test]
fn lock_rule_table() {
    let full = LockSubject {
        user: Some("alice"),
        login: Some("deploy"),
        node: Some("web1"),
    };
    let unknown_user = LockSubject { user: None, ..full };
    let cases: &[(&str, &str, Option<u64>, LockSubject<'_>, bool)] = &[
        ("user", "alice", None, full, true),
        ("user", "bob", None, full, false),
        ("login", "deploy", None, full, true),
        ("login", "root", None, full, false),
        ("node", "web1", None, full, true),
        ("node", "web2", None, full, false),
        // Names are compared exactly: no case folding, no prefixes.
        ("user", "Alice", None, full, false),
        ("node", "web", None, full, false),
        // Expiry: in force until `expires`, not at it.
        ("user", "alice", Some(NOW + 1), full, true),
        ("user", "alice", Some(NOW), full, false),
        ("user", "alice", Some(NOW - 1), full, false),
        // A part that is not known matches no lock naming it.
        ("user", "alice", None, unknown_user, false),
        ("login", "deploy", None, unknown_user, true),
        // A kind this version does not know stops everything: fail closed.
        ("role", "ops", None, full, true),
        ("", "", None, full, true),
        ("User", "alice", None, full, true),
        ("role", "ops", None, LockSubject::default(), true),
        // ...until it expires.
        ("role", "ops", Some(NOW), full, false),
    ];
    for (target, name, expires, subject, want) in cases {
        let l = lock(target, name, *expires);
        assert_eq!(
            l.applies(subject, NOW),
            *want,
            "lock {target:?} {name:?} expires {expires:?} on {subject:?}"
        );
    }
}

#[test]
fn lock_for_finds_the_first_lock_in_force() {
    let locks = [
        lock("user", "alice", Some(NOW - 5)),
        lock("user", "bob", None),
        lock("login", "root", None),
    ];
    let s = LockSubject {
        user: Some("alice"),
        login: Some("root"),
        node: Some("web1"),
    };
    assert_eq!(lock_for(&locks, &s, NOW).unwrap().target, LockTarget::Login);
    assert_eq!(
        lock_for(&locks, &s, NOW).unwrap().describe(),
        "login root is locked"
    );
    let s = LockSubject {
        login: Some("deploy"),
        ..s
    };
    assert!(lock_for(&locks, &s, NOW).is_none());
}
