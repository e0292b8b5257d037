//! Which live gateway session a cut ends, and why: the one rule the gateway applies to each
//! fresh inventory (locks, revoked user certificates, removed servers) and at the end of the
//! user certificate a session was authenticated with.

use crate::api::Inventory;
use crate::ids::{LockTarget, Serial};
use crate::names::{Login, NodeName, Username};

/// What the gateway remembers of a live session to judge cuts, from its registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSession {
    /// The Postern user.
    pub user: Username,
    /// The OS login on the server.
    pub login: Login,
    /// The server.
    pub node: NodeName,
    /// Serial of the user certificate the inner connection was authenticated with.
    pub user_cert_serial: Serial,
    /// Its `valid_before` (Unix time).
    pub user_cert_valid_before: u64,
    /// The server's host key the session was pinned to (OpenSSH line), from its authorization.
    pub host_key: Option<String>,
}

/// Why a live session is cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cut {
    /// A lock in force covers the session (`target` is `user`, `login`, `node`, or a kind this
    /// version does not know, which covers every session).
    Locked {
        /// The lock's id.
        id: i64,
        /// What it locks.
        target: LockTarget,
        /// The locked name.
        name: String,
        /// The admin's reason.
        reason: String,
    },
    /// The user certificate was revoked (`reason` as the CA says it, e.g. `user removed`).
    Revoked {
        /// Its serial.
        serial: Serial,
        /// Why.
        reason: String,
    },
    /// The server is no longer in the inventory (`nodes rm`).
    ServerRemoved,
    /// The server's name now belongs to another machine (a `--replace` join): the session
    /// is still on the machine that was replaced.
    ServerReplaced,
    /// The user certificate ended.
    CertificateExpired {
        /// Its `valid_before`.
        valid_before: u64,
    },
}

impl Cut {
    /// The reason in the `gateway.session_cut` audit event.
    pub fn audit_reason(&self) -> String {
        match self {
            Cut::Locked { .. } => "locked".into(),
            Cut::Revoked { reason, .. } => reason.clone(),
            Cut::ServerRemoved => "server removed".into(),
            Cut::ServerReplaced => "server replaced".into(),
            Cut::CertificateExpired { .. } => "certificate expired".into(),
        }
    }

    /// What the user reads (after "session closed: ").
    pub fn message(&self, s: &LiveSession) -> String {
        match self {
            // The wording locks always had: admins and tests look for their reason in it.
            Cut::Locked {
                target,
                name,
                reason,
                ..
            } => format!("locked ({target} {name}): {reason}"),
            Cut::Revoked { reason, .. } if reason == "user removed" => {
                format!("user {} was removed", s.user)
            }
            Cut::Revoked { reason, .. } if reason == "user reset" => format!(
                "user {} was reset; enrol again with the new invite, then `postern login`",
                s.user
            ),
            Cut::Revoked { serial, reason } => {
                format!("your certificate (serial {serial}) was revoked: {reason}")
            }
            Cut::ServerRemoved => format!("server {} was removed from the cluster", s.node),
            Cut::ServerReplaced => format!(
                "server {} was replaced by another machine; connect again",
                s.node
            ),
            Cut::CertificateExpired { .. } => {
                "your certificate expired; run `postern login` and connect again".into()
            }
        }
    }
}

/// Whether the certificate a session was authenticated with has ended at `now`
/// (`now >= valid_before`, as OpenSSH and `CertValidator` judge it).
pub fn expired(s: &LiveSession, now: u64) -> Option<Cut> {
    (now >= s.user_cert_valid_before).then_some(Cut::CertificateExpired {
        valid_before: s.user_cert_valid_before,
    })
}

/// The cut a fresh inventory makes of a live session, if any: a lock in force that covers it
/// (first, so the admin's reason is what the user reads), a revoked certificate, its server
/// gone from the inventory, and, when `expiry_cut`, the end of its certificate. Every test is
/// on state that lasts (the lock, the revocation, the server's absence), so a session that
/// registers after the change is cut by the next inventory, and none is needed to be seen
/// at the moment of the change.
pub fn cut_by_inventory(
    s: &LiveSession,
    inv: &Inventory,
    now: u64,
    expiry_cut: bool,
) -> Option<Cut> {
    // The one lock rule (a kind this gateway does not know fails closed).
    let subject = crate::api::LockSubject {
        user: Some(s.user.as_str()),
        login: Some(s.login.as_str()),
        node: Some(s.node.as_str()),
    };
    if let Some(lock) = crate::api::lock_for(&inv.locks, &subject, now) {
        return Some(Cut::Locked {
            id: lock.id,
            target: lock.target.clone(),
            name: lock.name.clone(),
            reason: lock.reason.clone(),
        });
    }
    // By serial alone: serials are unique across the CA's certificates, and a revoked serial
    // listed under another user is still revoked.
    if let Some(r) = inv
        .revoked_user_certs
        .iter()
        .find(|r| r.serial == s.user_cert_serial)
    {
        return Some(Cut::Revoked {
            serial: r.serial,
            reason: r.reason.clone(),
        });
    }
    let Some(entry) = inv.nodes.iter().find(|n| n.name == s.node) else {
        return Some(Cut::ServerRemoved);
    };
    // Host keys are compared without their comments.
    let key = |k: &Option<String>| {
        k.as_deref()
            .map(|k| k.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
    };
    if key(&entry.host_key) != key(&s.host_key) {
        return Some(Cut::ServerReplaced);
    }
    if expiry_cut {
        return expired(s, now);
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::api::{InventoryEntry, LockEntry, RevokedUserCert};

    fn session() -> LiveSession {
        LiveSession {
            user: "alice".parse().unwrap(),
            login: "deploy".parse().unwrap(),
            node: "web1".parse().unwrap(),
            user_cert_serial: Serial::new(42),
            user_cert_valid_before: 1_000,
            host_key: Some("ssh-ed25519 AAAAold web1".into()),
        }
    }

    fn inventory() -> Inventory {
        Inventory {
            cluster: "example.test".parse().unwrap(),
            generated_at: 500,
            nodes: vec![InventoryEntry {
                name: "web1".parse().unwrap(),
                address: "10.0.0.1:22".into(),
                labels: "env=dev".parse().unwrap(),
                host_key: Some("ssh-ed25519 AAAAold postern host key of web1".into()),
            }],
            user_ca_keys: vec![],
            host_ca_keys: vec![],
            locks: vec![],
            revoked_user_certs: vec![],
        }
    }

    fn lock(target: &str, name: &str, expires: Option<u64>) -> LockEntry {
        LockEntry {
            id: 7,
            target: LockTarget::parse(target),
            name: name.into(),
            expires,
            reason: "incident".into(),
        }
    }

    fn revoked(serial: u64, user: &str, reason: &str) -> RevokedUserCert {
        RevokedUserCert {
            serial: Serial::new(serial),
            user: user.parse().unwrap(),
            reason: reason.into(),
        }
    }

    #[test]
    fn which_live_session_an_inventory_cuts() {
        let now = 600;
        let locked = |target: &str, name: &str| Cut::Locked {
            id: 7,
            target: LockTarget::parse(target),
            name: name.into(),
            reason: "incident".into(),
        };
        let revoked_cut = |reason: &str| Cut::Revoked {
            serial: Serial::new(42),
            reason: reason.into(),
        };
        type Edit = fn(&mut Inventory);
        let cases: Vec<(&str, Edit, Option<Cut>)> = vec![
            ("nothing changed", |_| {}, None),
            (
                "the server re-joined with another host key (--replace)",
                |i| {
                    i.nodes[0].host_key =
                        Some("ssh-ed25519 AAAAnew postern host key of web1".into())
                },
                Some(Cut::ServerReplaced),
            ),
            (
                "the same key with another comment",
                |i| i.nodes[0].host_key = Some("ssh-ed25519 AAAAold another comment".into()),
                None,
            ),
            (
                "user lock",
                |i| i.locks.push(lock("user", "alice", None)),
                Some(locked("user", "alice")),
            ),
            (
                "lock of another user",
                |i| i.locks.push(lock("user", "bob", None)),
                None,
            ),
            (
                "login lock",
                |i| i.locks.push(lock("login", "deploy", Some(601))),
                Some(locked("login", "deploy")),
            ),
            (
                "node lock",
                |i| i.locks.push(lock("node", "web1", None)),
                Some(locked("node", "web1")),
            ),
            (
                "a lock that ended",
                |i| i.locks.push(lock("user", "alice", Some(600))),
                None,
            ),
            (
                "a lock of a kind this version does not know covers everyone",
                |i| i.locks.push(lock("role", "dev", None)),
                Some(locked("role", "dev")),
            ),
            (
                "its certificate revoked by users rm",
                |i| {
                    i.revoked_user_certs
                        .push(revoked(42, "alice", "user removed"))
                },
                Some(revoked_cut("user removed")),
            ),
            (
                "its certificate revoked by users reset",
                |i| {
                    i.revoked_user_certs
                        .push(revoked(42, "alice", "user reset"))
                },
                Some(revoked_cut("user reset")),
            ),
            (
                "a revoked serial is revoked whoever it is listed under",
                |i| {
                    i.revoked_user_certs
                        .push(revoked(42, "bob", "user removed"))
                },
                Some(revoked_cut("user removed")),
            ),
            (
                "another certificate of the user revoked",
                |i| {
                    i.revoked_user_certs
                        .push(revoked(43, "alice", "user reset"))
                },
                None,
            ),
            (
                "its server removed",
                |i| i.nodes.clear(),
                Some(Cut::ServerRemoved),
            ),
            (
                "another server removed",
                |i| {
                    i.nodes[0].name = "web2".parse().unwrap();
                    i.nodes.push(InventoryEntry {
                        name: "web1".parse().unwrap(),
                        address: "10.0.0.1:22".into(),
                        labels: "env=dev".parse().unwrap(),
                        host_key: Some("ssh-ed25519 AAAAold postern host key of web1".into()),
                    });
                },
                None,
            ),
            (
                "a lock wins over the other reasons",
                |i| {
                    i.nodes.clear();
                    i.revoked_user_certs
                        .push(revoked(42, "alice", "user removed"));
                    i.locks.push(lock("user", "alice", None));
                },
                Some(locked("user", "alice")),
            ),
        ];
        for (what, edit, want) in cases {
            let mut inv = inventory();
            edit(&mut inv);
            assert_eq!(
                cut_by_inventory(&session(), &inv, now, true),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn the_end_of_the_certificate_cuts_only_when_the_gateway_says_so() {
        let s = session();
        let inv = inventory();
        let expired_cut = Some(Cut::CertificateExpired {
            valid_before: 1_000,
        });
        assert_eq!(cut_by_inventory(&s, &inv, 999, true), None);
        assert_eq!(cut_by_inventory(&s, &inv, 1_000, true), expired_cut);
        assert_eq!(cut_by_inventory(&s, &inv, 5_000, true), expired_cut);
        assert_eq!(cut_by_inventory(&s, &inv, 5_000, false), None);
        assert_eq!(expired(&s, 999), None);
        assert_eq!(expired(&s, 1_000), expired_cut);
    }

    #[test]
    fn each_cut_says_why() {
        let s = session();
        let cases = [
            (
                Cut::Locked {
                    id: 1,
                    target: LockTarget::User,
                    name: "alice".into(),
                    reason: "incident 7".into(),
                },
                "locked",
                "locked (user alice): incident 7",
            ),
            (
                Cut::Revoked {
                    serial: Serial::new(42),
                    reason: "user removed".into(),
                },
                "user removed",
                "user alice was removed",
            ),
            (
                Cut::Revoked {
                    serial: Serial::new(42),
                    reason: "user reset".into(),
                },
                "user reset",
                "user alice was reset; enrol again with the new invite, then `postern login`",
            ),
            (
                Cut::Revoked {
                    serial: Serial::new(42),
                    reason: "compromised".into(),
                },
                "compromised",
                "your certificate (serial 42) was revoked: compromised",
            ),
            (
                Cut::ServerRemoved,
                "server removed",
                "server web1 was removed from the cluster",
            ),
            (
                Cut::CertificateExpired { valid_before: 1 },
                "certificate expired",
                "your certificate expired; run `postern login` and connect again",
            ),
        ];
        for (cut, reason, message) in cases {
            assert_eq!(cut.audit_reason(), reason);
            assert_eq!(cut.message(&s), message);
        }
    }
}
