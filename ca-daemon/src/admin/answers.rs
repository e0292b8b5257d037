//! The admin socket's answers: one type per [`AdminRequest`](super::AdminRequest), sent by the
//! daemon and decoded by `posternd`'s admin commands. Their JSON is a public interface (the
//! `--json` output that scripts read), so each type's unit test pins its exact bytes.
//!
//! The answers used to be built as `serde_json::Value`, whose objects keep their keys sorted;
//! [`sorted_json`] keeps that order on the wire and in `--json`, whatever the order in which a
//! type declares its fields.

use serde::{Deserialize, Serialize, Serializer};

pub use crate::audit::Verification;
pub use crate::policy_db::{PolicyApplied, PolicyText};
pub use crate::store::audit::Event;
pub use crate::store::certs::CertLine;
pub use crate::store::nodes::NodeLine;
pub use crate::store::policies::PolicyVersion;
pub use postern_core::api::{LockEntry, RecordingMeta};

/// `users add NAME`: the new user's invite. Not `Debug`: it holds the invite.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserInvite {
    /// The user added.
    pub user: String,
    /// The single-use invite.
    pub invite: String,
    /// Unix time the invite expires.
    pub expires_at: u64,
    /// Whether the policy gives the user any role yet.
    pub has_roles: bool,
}

/// One line of `users ls`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The name as stored.
    pub name: String,
    /// Whether a password is set.
    pub enrolled: bool,
    /// The user's roles in the policy.
    pub roles: Vec<String>,
    /// Unix time of the last password login.
    pub last_login: Option<i64>,
    /// Locked now, hard or until `locked_until`.
    pub locked: bool,
    /// Unix time a timed lock in force ends.
    pub locked_until: Option<u64>,
    /// Locked until `users reset`.
    pub hard_locked: bool,
    /// Failures since the last success.
    pub failures: i64,
    /// Unix time the user was added.
    pub created_at: i64,
}

/// `users rm NAME`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRemoved {
    /// The user removed.
    pub user: String,
    /// Always true: a user that does not exist is an error.
    pub removed: bool,
}

/// `users reset NAME`: the user's new invite. Not `Debug`: it holds the invite.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserReset {
    /// The user reset.
    pub user: String,
    /// The single-use invite.
    pub invite: String,
    /// Unix time the invite expires.
    pub expires_at: u64,
    /// Whether the reset cleared a hard lock.
    pub was_hard_locked: bool,
}

/// `ca export KIND`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaKeys {
    /// user, host or node-access.
    pub ca: String,
    /// The CA's public keys (OpenSSH lines).
    pub keys: Vec<String>,
}

/// `tokens add`: the new join token. Not `Debug`: it holds the token.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenInvite {
    /// The single-use token.
    pub token: String,
    /// Its public id.
    pub id: String,
    /// node or gateway.
    pub kind: postern_core::NodeKind,
    /// The one name that may join with it.
    pub name: String,
    /// Whether it may replace the existing node of that name.
    pub replace: bool,
    /// The node's complete label set.
    pub labels: String,
    /// Unix time it expires.
    pub expires_at: u64,
}

/// One line of `tokens ls` (ids only: the tokens are never stored).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The public id.
    pub id: String,
    /// node or gateway.
    pub kind: postern_core::NodeKind,
    /// The labels, as stored.
    pub labels: String,
    /// Unix time it expires.
    pub expires_at: i64,
    /// The one name it joins (`None`: made before names, joins nothing).
    pub name: Option<String>,
    /// Whether it may replace a node of that name.
    pub replace: bool,
}

impl From<crate::store::tokens::TokenLine> for TokenEntry {
    fn from(t: crate::store::tokens::TokenLine) -> Self {
        Self {
            id: t.id,
            kind: t.kind,
            labels: t.labels,
            expires_at: t.expires,
            name: t.name,
            replace: t.replace,
        }
    }
}

/// `tokens rm`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensRemoved {
    /// How many tokens went.
    pub removed: usize,
}

/// `nodes rm NAME`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRemoved {
    /// The node removed.
    pub node: String,
    /// Always true: a node that does not exist is an error.
    pub removed: bool,
    /// How many of its certificates were revoked.
    pub revoked_certs: usize,
}

/// `certs sign`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCert {
    /// The certificate (OpenSSH line).
    pub certificate: String,
    /// Its serial.
    pub serial: u64,
    /// Unix time it ends.
    pub valid_before: u64,
}

/// `lock add`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockAdded {
    /// The lock's id.
    pub id: i64,
    /// user, login or node.
    pub target: String,
    /// What is locked.
    pub name: String,
    /// Unix time it ends (`None`: until removed).
    pub expires: Option<u64>,
}

/// `lock rm ID`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockRemoved {
    /// The lock's id.
    pub id: i64,
    /// Always true: a lock that does not exist is an error.
    pub removed: bool,
}

/// One enum variant and one `From` impl per answer, from a single list.
macro_rules! answers {
    ($($(#[$doc:meta])* $variant:ident($ty:ty)),* $(,)?) => {
        /// What the daemon answers to any request: the variant belongs to the request, and the
        /// client, which knows what it asked, decodes the inner type.
        #[derive(Serialize)]
        #[serde(untagged)]
        pub enum AdminAnswer {
            $($(#[$doc])* $variant($ty),)*
        }

        $(impl From<$ty> for AdminAnswer {
            fn from(a: $ty) -> Self {
                Self::$variant(a)
            }
        })*
    };
}

answers!(
    /// `users add`.
    UserInvite(UserInvite),
    /// `users ls`.
    Users(Vec<UserEntry>),
    /// `users rm`.
    UserRemoved(UserRemoved),
    /// `users reset`.
    UserReset(UserReset),
    /// `ca export`.
    CaKeys(CaKeys),
    /// `certs ls`.
    Certs(Vec<CertLine>),
    /// `certs sign`.
    SignedCert(SignedCert),
    /// `audit tail`.
    Events(Vec<Event>),
    /// `audit verify`.
    Verification(Verification),
    /// `tokens add`.
    TokenInvite(TokenInvite),
    /// `tokens ls`.
    Tokens(Vec<TokenEntry>),
    /// `tokens rm`.
    TokensRemoved(TokensRemoved),
    /// `nodes ls`, `gateways ls`.
    Nodes(Vec<NodeLine>),
    /// `nodes rm`.
    NodeRemoved(NodeRemoved),
    /// `lock add`.
    LockAdded(LockAdded),
    /// `lock ls`.
    Locks(Vec<LockEntry>),
    /// `lock rm`.
    LockRemoved(LockRemoved),
    /// `recordings ls`.
    Recordings(Vec<RecordingMeta>),
    /// `policy apply`.
    PolicyApplied(PolicyApplied),
    /// `policy show`.
    PolicyText(PolicyText),
    /// `policy history`.
    PolicyHistory(Vec<PolicyVersion>),
);

/// `answer` as one line of JSON with every object's keys sorted: the bytes the admin socket
/// and `--json` have always given (they were a `serde_json::Value`, whose maps are sorted).
pub fn sorted_json<T: Serialize>(answer: &T) -> serde_json::Result<String> {
    Ok(serde_json::to_value(answer)?.to_string())
}

/// Serializes a response's data as [`sorted_json`] does (for `#[serde(serialize_with)]`).
pub fn serialize_sorted<T: Serialize, S: Serializer>(answer: &T, s: S) -> Result<S::Ok, S::Error> {
    serde_json::to_value(answer)
        .map_err(serde::ser::Error::custom)?
        .serialize(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde::de::DeserializeOwned;
    use serde_json::{json, Value};

    use super::super::AdminResponse;
    use super::*;

    /// `answer` gives exactly the bytes `before` (the `serde_json::Value` the daemon built before
    /// the answers were typed) and `pinned` gave, on the wire and in `--json`, and a client
    /// that decodes them as `T` prints the same bytes again.
    fn same_bytes<T>(answer: T, before: Value, pinned: &str)
    where
        T: Serialize + DeserializeOwned,
        AdminAnswer: From<T>,
    {
        assert_eq!(
            before.to_string(),
            pinned,
            "the pinned text is the old answer"
        );
        let now = sorted_json(&answer).unwrap();
        assert_eq!(now, pinned);
        let decoded: T = serde_json::from_str(&now).unwrap();
        assert_eq!(
            sorted_json(&decoded).unwrap(),
            pinned,
            "the client prints it unchanged"
        );
        let wire = serde_json::to_string(&AdminResponse {
            ok: true,
            data: Some(AdminAnswer::from(answer)),
            error: None,
        })
        .unwrap();
        let old_wire = json!({ "ok": true, "data": before, "error": null });
        assert_eq!(
            wire,
            format!(r#"{{"ok":true,"data":{pinned},"error":null}}"#)
        );
        assert_eq!(
            serde_json::from_str::<Value>(&wire).unwrap(),
            old_wire,
            "same shape as the old envelope"
        );
        let back: AdminResponse<T> = serde_json::from_str(&wire).unwrap();
        assert!(back.ok && back.error.is_none());
        assert_eq!(sorted_json(&back.data.unwrap()).unwrap(), pinned);
    }

    #[test]
    fn an_error_answer_keeps_its_bytes() {
        let wire = serde_json::to_string(&AdminResponse::<AdminAnswer> {
            ok: false,
            data: None,
            error: Some("no user bob".into()),
        })
        .unwrap();
        assert_eq!(wire, r#"{"ok":false,"data":null,"error":"no user bob"}"#);
        let back: AdminResponse<UserRemoved> = serde_json::from_str(&wire).unwrap();
        assert!(!back.ok && back.data.is_none());
        assert_eq!(back.error.as_deref(), Some("no user bob"));
        // An answer without `data` or `error` (as `#[serde(default)]` always allowed).
        let bare: AdminResponse<UserRemoved> = serde_json::from_str(r#"{"ok":false}"#).unwrap();
        assert!(bare.data.is_none() && bare.error.is_none());
    }

    #[test]
    fn users_add() {
        let (name, token, expires, has_roles) = ("alice", "inv-1", 1_700_000_000u64, false);
        same_bytes(
            UserInvite {
                user: name.into(),
                invite: token.into(),
                expires_at: expires,
                has_roles,
            },
            json!({ "user": name, "invite": token, "expires_at": expires, "has_roles": has_roles }),
            r#"{"expires_at":1700000000,"has_roles":false,"invite":"inv-1","user":"alice"}"#,
        );
    }

    #[test]
    fn users_ls() {
        let entry =
            |name: &str, last: Option<i64>, locked_until: Option<u64>, hard: bool| UserEntry {
                name: name.into(),
                enrolled: last.is_some(),
                roles: if hard {
                    vec![]
                } else {
                    vec!["dev".into(), "ops".into()]
                },
                last_login: last,
                locked: hard || locked_until.is_some(),
                locked_until,
                hard_locked: hard,
                failures: 3,
                created_at: 100,
            };
        let old = |name: &str, last: Option<i64>, locked_until: Option<u64>, hard: bool| {
            let roles: Vec<String> = if hard {
                vec![]
            } else {
                vec!["dev".into(), "ops".into()]
            };
            json!({
                "name": name,
                "enrolled": last.is_some(),
                "roles": roles,
                "last_login": last,
                "locked": hard || locked_until.is_some(),
                "locked_until": locked_until,
                "hard_locked": hard,
                "failures": 3,
                "created_at": 100,
            })
        };
        same_bytes(
            vec![
                entry("alice", Some(200), Some(300), false),
                entry("bob", None, None, true),
            ],
            Value::Array(vec![
                old("alice", Some(200), Some(300), false),
                old("bob", None, None, true),
            ]),
            concat!(
                r#"[{"created_at":100,"enrolled":true,"failures":3,"hard_locked":false,"last_login":200,"locked":true,"locked_until":300,"name":"alice","roles":["dev","ops"]},"#,
                r#"{"created_at":100,"enrolled":false,"failures":3,"hard_locked":true,"last_login":null,"locked":true,"locked_until":null,"name":"bob","roles":[]}]"#
            ),
        );
        same_bytes(Vec::<UserEntry>::new(), json!([]), "[]");
    }

    #[test]
    fn users_rm() {
        same_bytes(
            UserRemoved {
                user: "alice".into(),
                removed: true,
            },
            json!({ "user": "alice", "removed": true }),
            r#"{"removed":true,"user":"alice"}"#,
        );
    }

    #[test]
    fn users_reset() {
        let (name, token, expires, was_hard_locked) = ("alice", "inv-2", 5u64, true);
        same_bytes(
            UserReset {
                user: name.into(),
                invite: token.into(),
                expires_at: expires,
                was_hard_locked,
            },
            json!({ "user": name, "invite": token, "expires_at": expires, "was_hard_locked": was_hard_locked }),
            r#"{"expires_at":5,"invite":"inv-2","user":"alice","was_hard_locked":true}"#,
        );
    }

    #[test]
    fn ca_export() {
        let line = "ssh-ed25519 AAAAC3Nz postern-user-ca";
        same_bytes(
            CaKeys {
                ca: "user".into(),
                keys: vec![line.into()],
            },
            json!({ "ca": "user", "keys": [line] }),
            r#"{"ca":"user","keys":["ssh-ed25519 AAAAC3Nz postern-user-ca"]}"#,
        );
    }

    #[test]
    fn certs_ls() {
        let rows = vec![CertLine {
            serial: 42,
            kind: "ssh-user".into(),
            subject: "alice".into(),
            principals: "root,deploy".into(),
            valid_after: 1,
            valid_before: 2,
            issued_at: 3,
            revoked: false,
        }];
        let before = serde_json::to_value(
            rows.iter()
                .map(|c| {
                    json!({ "serial": c.serial, "kind": c.kind, "subject": c.subject,
                        "principals": c.principals, "valid_after": c.valid_after,
                        "valid_before": c.valid_before, "issued_at": c.issued_at, "revoked": c.revoked })
                })
                .collect::<Vec<_>>(),
        )
        .unwrap();
        same_bytes(
            rows,
            before,
            r#"[{"issued_at":3,"kind":"ssh-user","principals":"root,deploy","revoked":false,"serial":42,"subject":"alice","valid_after":1,"valid_before":2}]"#,
        );
    }

    #[test]
    fn certs_sign() {
        let (cert, serial, valid_before) = ("ssh-ed25519-cert-v01@openssh.com AAAA", 9u64, 10u64);
        same_bytes(
            SignedCert {
                certificate: cert.into(),
                serial,
                valid_before,
            },
            json!({ "certificate": cert, "serial": serial, "valid_before": valid_before }),
            r#"{"certificate":"ssh-ed25519-cert-v01@openssh.com AAAA","serial":9,"valid_before":10}"#,
        );
    }

    #[test]
    fn audit_tail() {
        let detail = json!({ "user": "alice", "revoked_certs": 2 });
        same_bytes(
            vec![Event {
                seq: 7,
                ts: 1000,
                kind: "user.removed".into(),
                actor: "admin(uid 0)".into(),
                detail: detail.clone(),
            }],
            json!([{ "seq": 7, "ts": 1000, "kind": "user.removed", "actor": "admin(uid 0)", "detail": detail }]),
            r#"[{"actor":"admin(uid 0)","detail":{"revoked_certs":2,"user":"alice"},"kind":"user.removed","seq":7,"ts":1000}]"#,
        );
    }

    #[test]
    fn audit_verify() {
        for (v, pinned) in [
            (
                Verification {
                    events: 3,
                    problems: vec![],
                    signed: 3,
                    offhost_newest: Some(2),
                },
                r#"{"events":3,"offhost_newest":2,"problems":[],"signed":3}"#,
            ),
            (
                Verification {
                    events: 4,
                    problems: vec!["event 2: hash mismatch".into()],
                    signed: 3,
                    offhost_newest: None,
                },
                r#"{"events":4,"offhost_newest":null,"problems":["event 2: hash mismatch"],"signed":3}"#,
            ),
        ] {
            let before = json!({ "events": v.events, "problems": v.problems, "signed": v.signed, "offhost_newest": v.offhost_newest });
            same_bytes(v, before, pinned);
        }
    }

    #[test]
    fn tokens_add() {
        let (token, id, kind, name, replace, labels, expires) =
            ("tok", "abc123", "node", "web1", true, "env=prod", 77u64);
        same_bytes(
            TokenInvite {
                token: token.into(),
                id: id.into(),
                kind: kind.parse().unwrap(),
                name: name.into(),
                replace,
                labels: labels.into(),
                expires_at: expires,
            },
            json!({ "token": token, "id": id, "kind": kind, "name": name, "replace": replace, "labels": labels, "expires_at": expires }),
            r#"{"expires_at":77,"id":"abc123","kind":"node","labels":"env=prod","name":"web1","replace":true,"token":"tok"}"#,
        );
    }

    #[test]
    fn tokens_ls() {
        let lines = [("a1", Some("web1")), ("b2", None)].map(|(id, name)| {
            crate::store::tokens::TokenLine {
                id: id.into(),
                kind: postern_core::NodeKind::Gateway,
                labels: String::new(),
                expires: 50,
                name: name.map(str::to_owned),
                replace: false,
            }
        });
        let before = Value::Array(
            lines
                .iter()
                .map(|t| json!({ "id": t.id, "kind": t.kind, "labels": t.labels, "expires_at": t.expires, "name": t.name, "replace": t.replace }))
                .collect(),
        );
        same_bytes(
            lines.into_iter().map(TokenEntry::from).collect::<Vec<_>>(),
            before,
            concat!(
                r#"[{"expires_at":50,"id":"a1","kind":"gateway","labels":"","name":"web1","replace":false},"#,
                r#"{"expires_at":50,"id":"b2","kind":"gateway","labels":"","name":null,"replace":false}]"#
            ),
        );
    }

    #[test]
    fn tokens_rm() {
        same_bytes(
            TokensRemoved { removed: 1 },
            json!({ "removed": 1usize }),
            r#"{"removed":1}"#,
        );
    }

    #[test]
    fn nodes_ls() {
        let n = NodeLine {
            name: "web1".into(),
            kind: "node".into(),
            address: Some("127.0.0.1:22".into()),
            labels: "env=prod".into(),
            joined_at: 10,
            last_sync: None,
            host_cert_expiry: Some(20),
        };
        let before = json!([{
            "name": n.name, "kind": n.kind, "address": n.address,
            "labels": n.labels, "joined_at": n.joined_at, "last_sync": n.last_sync,
            "host_cert_expiry": n.host_cert_expiry,
        }]);
        same_bytes(
            vec![n],
            before,
            r#"[{"address":"127.0.0.1:22","host_cert_expiry":20,"joined_at":10,"kind":"node","labels":"env=prod","last_sync":null,"name":"web1"}]"#,
        );
    }

    #[test]
    fn nodes_rm() {
        same_bytes(
            NodeRemoved {
                node: "web1".into(),
                removed: true,
                revoked_certs: 2,
            },
            json!({ "node": "web1", "removed": true, "revoked_certs": 2usize }),
            r#"{"node":"web1","removed":true,"revoked_certs":2}"#,
        );
    }

    #[test]
    fn lock_add() {
        for (expires, pinned) in [
            (
                Some(99u64),
                r#"{"expires":99,"id":4,"name":"alice","target":"user"}"#,
            ),
            (
                None,
                r#"{"expires":null,"id":4,"name":"alice","target":"user"}"#,
            ),
        ] {
            same_bytes(
                LockAdded {
                    id: 4,
                    target: "user".into(),
                    name: "alice".into(),
                    expires,
                },
                json!({ "id": 4i64, "target": "user", "name": "alice", "expires": expires }),
                pinned,
            );
        }
    }

    #[test]
    fn lock_ls() {
        let locks = vec![
            LockEntry {
                id: 1,
                target: postern_core::LockTarget::Login,
                name: "root".into(),
                expires: None,
                reason: "incident".into(),
            },
            LockEntry {
                id: 2,
                target: postern_core::LockTarget::from("role"),
                name: "x".into(),
                expires: Some(5),
                reason: "kept".into(),
            },
        ];
        let before = serde_json::to_value(&locks).unwrap();
        same_bytes(
            locks,
            before,
            concat!(
                r#"[{"expires":null,"id":1,"name":"root","reason":"incident","target":"login"},"#,
                r#"{"expires":5,"id":2,"name":"x","reason":"kept","target":"role"}]"#
            ),
        );
    }

    #[test]
    fn lock_rm() {
        same_bytes(
            LockRemoved {
                id: 4,
                removed: true,
            },
            json!({ "id": 4i64, "removed": true }),
            r#"{"id":4,"removed":true}"#,
        );
    }

    #[test]
    fn recordings_ls() {
        let rows = vec![RecordingMeta {
            id: "s-1-2".parse().unwrap(),
            user: "alice".parse().unwrap(),
            login: "root".parse().unwrap(),
            node: "web1".parse().unwrap(),
            gateway: "gw1".into(),
            started_at: 1,
            ended_at: 3,
            interrupted: true,
            bytes: 512,
        }];
        let before = serde_json::to_value(&rows).unwrap();
        same_bytes(
            rows,
            before,
            r#"[{"bytes":512,"ended_at":3,"gateway":"gw1","id":"s-1-2","interrupted":true,"login":"root","node":"web1","started_at":1,"user":"alice"}]"#,
        );
    }
}
