//! Which recordings a signed-in user may see: their own (of sessions since their user record
//! was made), and others' whose labels a role's `view_recordings` selects.

use super::MAX_LIST;
use crate::store::{self, recordings::parse_labels, Tx};
use anyhow::Result;
use postern_core::api::RecordingMeta;
use postern_core::{Policy, Username};

/// Which other users' recordings a signed-in user may see, decided by the policy's
/// `view_recordings` against each recording's labels (the snapshot taken when it was stored;
/// see `store::recordings`).
pub(super) struct Visibility {
    /// Whether any role of the user has `view_recordings` at all.
    pub(super) any: bool,
    /// The label sets (as stored) of recordings that a `view_recordings` selects.
    pub(super) labels: Vec<String>,
}

pub(super) fn visibility(c: &Tx<'_>, policy: &Policy, me: &Username) -> Result<Visibility> {
    if !policy.views_others_recordings(me) {
        return Ok(Visibility {
            any: false,
            labels: Vec::new(),
        });
    }
    // Few distinct label sets, however many recordings: each is judged once.
    let labels = store::recordings::distinct_labels(c)?
        .into_iter()
        .filter(|l| policy.recording_viewer_role(me, &parse_labels(l)).is_some())
        .collect();
    Ok(Visibility { any: true, labels })
}

/// Whether recording `id` is `me`'s own: of a session of that name that the CA authorized
/// since `me`'s user record was made (both the CA's clock). A name removed and added again is
/// a new user, who does not see the sessions of the one before (a role's `view_recordings`
/// still does). `list_visible` applies the same rule (one copy, in `store::recordings`).
pub(super) fn is_own(c: &Tx<'_>, me: &Username, id: &str) -> Result<bool> {
    store::recordings::is_own(c, me, id)
}

/// The recordings `me` may see, newest first: their own, and others' whose labels their
/// `view_recordings` selects; optionally only of one user and/or one server.
pub(super) fn list_visible(
    c: &Tx<'_>,
    me: &Username,
    vis: &Visibility,
    user: Option<&str>,
    node: Option<&str>,
    limit: u32,
) -> Result<Vec<RecordingMeta>> {
    store::recordings::list_visible(c, me, &vis.labels, user, node, limit.min(MAX_LIST))
}

#[cfg(test)]
mod tests {
    use postern_core::{Policy, Username};
    use rusqlite::{params, Connection};

    use super::super::fixtures::{meta, POLICY};
    use super::super::session::Session;
    use super::super::stored::insert_stored;
    use super::*;
    use crate::store::recordings::load_for_viewing;
    use crate::store::Tx;

    fn insert_row(c: &Connection, id: &str, user: &str, node: &str, labels: Option<&str>) {
        c.execute(
            "INSERT INTO recordings (id, user, login, node, gateway, started_at, ended_at, interrupted, bytes, sha256, stored_at, node_labels) VALUES (?1, ?2, 'root', ?3, 'gw1', 1, 2, 0, 3, 'x', 4, ?4)",
            params![id, user, node, labels],
        )
        .unwrap();
    }

    fn set_node(c: &Connection, name: &str, kind: &str, labels: &str) {
        c.execute("DELETE FROM nodes WHERE name = ?1", [name])
            .unwrap();
        c.execute(
            "INSERT INTO nodes (name, kind, address, labels, joined_at, host_key, identity_serial) VALUES (?1, ?2, '127.0.0.1:22', ?3, 1, 'k', 1)",
            params![name, kind, labels],
        )
        .unwrap();
    }

    /// A name removed and added again is a new user: it saw every recording of the old one.
    #[test]
    fn regression_a_re_added_user_saw_the_old_users_recordings() {
        let d = tempfile::tempdir().unwrap();
        let c = crate::db::open_connection(&d.path().join("db")).unwrap();
        crate::db::init_schema(&c).unwrap();
        let alice: Username = "alice".parse().unwrap();
        let add = |created: i64| {
            c.execute("DELETE FROM users WHERE name = 'alice'", [])
                .unwrap();
            c.execute(
                "INSERT INTO users (name, created_at) VALUES ('alice', ?1)",
                [created],
            )
            .unwrap();
        };
        add(100);
        set_node(&c, "web1", "node", "env=dev");
        let session = Session {
            id: "s-old".into(),
            gateway: "gw1".into(),
            user: "alice".into(),
            login: "root".into(),
            node: "web1".into(),
            labels: Some("env=dev".into()),
            first_authorized: 150,
        };
        insert_stored(
            &Tx::sqlite(&c),
            &meta("s-old", "alice", 3),
            "x",
            &session,
            "single",
            160,
        )
        .unwrap();
        let none = Visibility {
            any: false,
            labels: vec![],
        };
        let seen = |c: &Connection| -> Vec<String> {
            list_visible(&Tx::sqlite(c), &alice, &none, None, None, 100)
                .unwrap()
                .into_iter()
                .map(|m| m.id.to_string())
                .collect()
        };
        assert_eq!(seen(&c), ["s-old"]);
        assert!(is_own(&Tx::sqlite(&c), &alice, "s-old").unwrap());
        // `users rm alice`, later `users add alice`: someone else.
        add(200);
        assert!(
            seen(&c).is_empty(),
            "the new alice sees the old one's session"
        );
        assert!(!is_own(&Tx::sqlite(&c), &alice, "s-old").unwrap());
    }

    /// Finding 5: visibility followed the server's current labels (a relabelled or replaced
    /// server showed old sessions to the wrong viewers), and play looked up labels of any kind
    /// of node while the listing looked up servers only.
    #[test]
    fn regression_recordings_are_visible_by_the_labels_of_their_session() {
        let d = tempfile::tempdir().unwrap();
        let c = crate::db::open_connection(&d.path().join("db")).unwrap();
        crate::db::init_schema(&c).unwrap();
        let policy = Policy::parse(POLICY, "policy.toml").unwrap();
        let dave: Username = "dave".parse().unwrap();
        let session = |id: &str, labels: Option<&str>| Session {
            id: id.into(),
            gateway: "gw1".into(),
            user: "alice".into(),
            login: "root".into(),
            node: "web1".into(),
            labels: labels.map(str::to_owned),
            first_authorized: 1,
        };
        set_node(&c, "web1", "node", "env=prod");
        // Stored with the labels the session was authorized with.
        let mut m = meta("s-prod", "alice", 3);
        insert_stored(
            &Tx::sqlite(&c),
            &m,
            "x",
            &session("s-prod", Some("env=prod")),
            "single",
            1,
        )
        .unwrap();
        // A session authorized before the CA kept labels: the server's labels at store time.
        m.id = "s-prod2".parse().unwrap();
        insert_stored(
            &Tx::sqlite(&c),
            &m,
            "x",
            &session("s-prod2", None),
            "single",
            1,
        )
        .unwrap();
        // A row stored by an older posternd, without a snapshot.
        insert_row(&c, "s-legacy", "alice", "web1", None);
        // A legacy row of a name that is now a gateway labelled env=dev.
        set_node(&c, "gate9", "gateway", "env=dev");
        insert_row(&c, "s-gate", "alice", "gate9", None);

        // web1 is relabelled (or replaced by another server of that name) as env=dev.
        set_node(&c, "web1", "node", "env=dev");
        let vis = visibility(&Tx::sqlite(&c), &policy, &dave).unwrap();
        let seen: Vec<String> = list_visible(&Tx::sqlite(&c), &dave, &vis, None, None, 100)
            .unwrap()
            .into_iter()
            .map(|m| m.id.to_string())
            .collect();
        assert_eq!(
            seen,
            ["s-legacy"],
            "old rows fall back to the current labels"
        );
        for (id, visible) in [
            ("s-prod", false),
            ("s-prod2", false),
            ("s-legacy", true),
            ("s-gate", false),
        ] {
            let (_, labels) = load_for_viewing(&Tx::sqlite(&c), id).unwrap().unwrap();
            assert_eq!(
                policy.recording_viewer_role(&dave, &labels).is_some(),
                visible,
                "{id}: list and play must agree"
            );
        }
        let snap: Option<String> = c
            .query_row(
                "SELECT node_labels FROM recordings WHERE id = 's-prod2'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(snap.as_deref(), Some("env=prod"));

        // The other way round: a dev session stays visible to dev viewers when the server
        // becomes prod or leaves.
        m.id = "s-dev".parse().unwrap();
        insert_stored(
            &Tx::sqlite(&c),
            &m,
            "x",
            &session("s-dev", Some("env=dev")),
            "single",
            1,
        )
        .unwrap();
        c.execute("DELETE FROM nodes WHERE name = 'web1'", [])
            .unwrap();
        let vis = visibility(&Tx::sqlite(&c), &policy, &dave).unwrap();
        let seen: Vec<String> = list_visible(&Tx::sqlite(&c), &dave, &vis, None, None, 100)
            .unwrap()
            .into_iter()
            .map(|m| m.id.to_string())
            .collect();
        assert_eq!(seen, ["s-dev"]);
        // Their own recordings (of sessions since their user record was made), users always
        // see.
        c.execute(
            "INSERT INTO users (name, created_at) VALUES ('alice', 0)",
            [],
        )
        .unwrap();
        let alice: Username = "alice".parse().unwrap();
        let vis = visibility(&Tx::sqlite(&c), &policy, &alice).unwrap();
        assert_eq!(
            list_visible(&Tx::sqlite(&c), &alice, &vis, None, None, 100)
                .unwrap()
                .len(),
            5
        );
    }
}
