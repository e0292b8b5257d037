//! Typed identities of the HTTPS API's callers: axum extractors that take the connection's
//! verified mTLS client certificate, and the database check of each kind of identity, which
//! the services run inside their own transaction.
//!
//! The check is split in two on purpose. The extractor (`AuthedUser`, `AuthedNode`,
//! `AuthedGateway`) needs no database: it refuses a connection without a client certificate
//! (401) or with one that is not ours to read (403), with the message of the door it came
//! through. What it yields is a claim, not yet checked against the database: a certificate
//! that rustls verified may since have been revoked, its node removed or re-joined, its user
//! removed or locked. That half is `check` (or `lookup`), which takes the `store::Tx` of the
//! transaction that does the work, so that no other transaction can revoke, remove or lock in
//! between: what was checked is what the work runs as.

use std::marker::PhantomData;
use std::sync::Arc;

use anyhow::Result;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use postern_core::{Labels, NodeKind, NodeName, Username};

use crate::api::ApiError;
use crate::committed::Committed;
use crate::service::Refusal;
use crate::store::{self, Tx};
use crate::x509::ClientIdentity;

/// The verified client certificate of the TLS connection, if the client sent one (`tls.rs`
/// puts it in every request's extensions).
#[derive(Clone, Default)]
pub struct Peer(pub Option<Arc<Vec<u8>>>);

/// The route family an identity is presented at: what a client hears when it has none, or
/// one that cannot be read. Each is the message that route family has always answered.
pub trait Door: Send + Sync + 'static {
    /// The 401's message: no client certificate on the connection.
    const MISSING: &'static str;
    /// The 403's message: a client certificate that does not parse as one of ours.
    const UNUSABLE: &'static str = "unusable client certificate";
}

/// `POST /v1/node/sync`.
pub struct NodeSync;
impl Door for NodeSync {
    const MISSING: &'static str = "sync needs the client certificate from `postern-shim join`";
}

/// `POST /v1/node/events` (servers and gateways).
pub struct NodeEvents;
impl Door for NodeEvents {
    const MISSING: &'static str = "events needs the client certificate from `postern-shim join`";
}

/// `/v1/gateway/...`.
pub struct Gateway;
impl Door for Gateway {
    const MISSING: &'static str =
        "gateway endpoints need the client certificate from `postern-gate join`";
}

/// `/v1/recordings...`, the users' routes.
pub struct Recordings;
impl Door for Recordings {
    const MISSING: &'static str = "recordings need the client certificate from `postern login`";
}

/// `POST /v1/renew`.
pub struct Renewal;
impl Door for Renewal {
    const MISSING: &'static str = "renewal needs the client certificate from `postern login`";
    const UNUSABLE: &'static str =
        "renewal refused: unusable client certificate; run `postern login`";
}

/// The connection's client identity, or the door's refusal.
fn presented<D: Door>(parts: &Parts) -> Result<ClientIdentity, ApiError> {
    // tls.rs puts a `Peer` on every request; without one there is no certificate either.
    let Some(der) = parts.extensions.get::<Peer>().and_then(|p| p.0.clone()) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            D::MISSING.into(),
            "no client certificate".into(),
        ));
    };
    crate::x509::parse_client_cert(&der)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, D::UNUSABLE.into(), format!("{e:#}")))
}

/// A user's identity from `postern login`, as presented at door `D`; [`AuthedUser::check`]
/// (recordings) or [`AuthedUser::lookup`] (renewal) says who it is in the database.
pub struct AuthedUser<D> {
    id: ClientIdentity,
    door: PhantomData<D>,
}

/// A server's or gateway's identity from `join`, as presented at door `D`;
/// [`AuthedNode::check`] says which joined node it is.
pub struct AuthedNode<D> {
    id: ClientIdentity,
    door: PhantomData<D>,
}

/// A gateway's identity from `postern-gate join`; [`AuthedGateway::check`] says which joined
/// gateway it is (a server's identity is none).
pub struct AuthedGateway {
    id: ClientIdentity,
}

impl<S: Send + Sync, D: Door> FromRequestParts<S> for AuthedUser<D> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(AuthedUser {
            id: presented::<D>(parts)?,
            door: PhantomData,
        })
    }
}

impl<S: Send + Sync, D: Door> FromRequestParts<S> for AuthedNode<D> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(AuthedNode {
            id: presented::<D>(parts)?,
            door: PhantomData,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuthedGateway {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(AuthedGateway {
            id: presented::<Gateway>(parts)?,
        })
    }
}

/// What the database says of a user identity, before its user and locks are looked at.
pub enum UserRecord {
    /// No `x509-client` certificate under that serial for that subject.
    Unknown,
    /// The certificate was revoked.
    Revoked,
    /// The subject is no user name (none is written).
    NotAUser,
    /// Issued to `user`, valid until `valid_before`.
    Issued { user: Username, valid_before: u64 },
}

impl<D> AuthedUser<D> {
    /// The identity as the certificate states it (serial, subject, key).
    pub fn identity(&self) -> &ClientIdentity {
        &self.id
    }

    /// The certificate's record: known (under this subject), not revoked, naming a user.
    pub fn lookup(&self, tx: &Tx<'_>) -> Result<UserRecord> {
        let row = store::certs::by_serial(tx, postern_core::CertKind::X509Client, self.id.serial)?
            .filter(|c| c.subject == self.id.subject);
        let Some(row) = row else {
            return Ok(UserRecord::Unknown);
        };
        if row.revoked {
            return Ok(UserRecord::Revoked);
        }
        let Ok(user) = row.subject.parse::<Username>() else {
            return Ok(UserRecord::NotAUser);
        };
        Ok(UserRecord::Issued {
            user,
            valid_before: row.valid_before,
        })
    }
}

fn bad_user_identity() -> Refusal {
    Refusal::Forbidden(
        "this device's identity is not valid (expired, revoked or unknown); run `postern login`"
            .into(),
    )
}

impl AuthedUser<Recordings> {
    /// The signed-in user: a known, unrevoked, unexpired `x509-client` certificate whose
    /// subject is an existing user, whom no lock stops.
    pub fn check(&self, tx: &Tx<'_>, now: u64) -> Result<Committed<Username>> {
        let UserRecord::Issued { user, valid_before } = self.lookup(tx)? else {
            return Ok(Committed::Refused(bad_user_identity()));
        };
        if now >= valid_before || !store::users::exists(tx, user.as_str())? {
            return Ok(Committed::Refused(bad_user_identity()));
        }
        let locks = crate::nodes::active_locks(tx, now)?;
        let subject = postern_core::api::LockSubject {
            user: Some(user.as_str()),
            ..Default::default()
        };
        if let Some(l) = postern_core::api::lock_for(&locks, &subject, now) {
            return Ok(Committed::Refused(Refusal::Forbidden(l.describe())));
        }
        Ok(Committed::Done(user))
    }
}

/// A joined server or gateway, as its identity and its `nodes` row agree.
pub struct JoinedNode {
    pub name: NodeName,
    pub labels: Labels,
    /// A server or a gateway.
    pub kind: NodeKind,
}

/// The joined node behind an identity: the subject `KIND:NAME` names a node of that kind whose
/// current identity has this serial, and the certificate is not revoked.
fn joined(tx: &Tx<'_>, id: &ClientIdentity) -> Result<Option<JoinedNode>> {
    let Some((kind, name)) = id.subject.split_once(':') else {
        return Ok(None);
    };
    let row = store::nodes::identity(tx, name)?;
    let revoked = store::certs::by_serial(tx, postern_core::CertKind::X509Node, id.serial)?
        .map(|c| c.revoked);
    match (row, revoked) {
        (
            Some(store::nodes::NodeIdentity {
                labels,
                identity_serial: serial,
                kind: k,
            }),
            Some(false),
        ) if serial == id.serial && k.as_str() == kind => Ok(Some(JoinedNode {
            name: postern_core::names::parse_node_name(name)?,
            labels: labels.parse()?,
            kind: k,
        })),
        _ => Ok(None),
    }
}

impl<D> AuthedNode<D> {
    /// The joined server or gateway this identity is; `None` when it was removed, re-joined
    /// (a newer identity) or revoked, or is no node's.
    pub fn check(&self, tx: &Tx<'_>) -> Result<Option<JoinedNode>> {
        joined(tx, &self.id)
    }
}

impl AuthedGateway {
    /// The subject the certificate states, for the audit of a refusal.
    pub fn subject(&self) -> &str {
        &self.id.subject
    }

    /// The joined gateway this identity is, its "last seen" time refreshed; `None` for
    /// anything that is not a currently joined gateway (servers included).
    pub fn check(&self, tx: &Tx<'_>, now: u64) -> Result<Option<NodeName>> {
        match joined(tx, &self.id)? {
            Some(n) if n.kind == NodeKind::Gateway => {
                store::nodes::touch(tx, n.name.as_str(), now)?;
                Ok(Some(n.name))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use rusqlite::Connection;

    /// The status and `error` of a refusal, as the client reads them.
    async fn answer(e: ApiError) -> (StatusCode, String) {
        let r = e.into_response();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 64 * 1024)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (status, v["error"].as_str().unwrap().to_owned())
    }

    fn parts(peer: Option<Peer>) -> Parts {
        let mut req = axum::http::Request::new(());
        if let Some(p) = peer {
            req.extensions_mut().insert(p);
        }
        req.into_parts().0
    }

    async fn refusal<T: FromRequestParts<(), Rejection = ApiError>>(
        peer: Option<Peer>,
    ) -> (StatusCode, String) {
        match T::from_request_parts(&mut parts(peer), &()).await {
            Ok(_) => panic!("an identity was extracted"),
            Err(e) => answer(e).await,
        }
    }

    /// Each door answers what its route answered before the extractors: a 401 without a
    /// certificate (whether or not tls.rs put a `Peer` in), a 403 for one that is not ours.
    #[tokio::test]
    async fn each_door_refuses_with_its_own_message() {
        let none = || Some(Peer(None));
        let junk = || Some(Peer(Some(Arc::new(b"not a certificate".to_vec()))));
        let unauthorized = StatusCode::UNAUTHORIZED;
        let forbidden = StatusCode::FORBIDDEN;
        let cases = [
            (
                refusal::<AuthedNode<NodeSync>>(none()).await,
                unauthorized,
                "sync needs the client certificate from `postern-shim join`",
            ),
            (
                refusal::<AuthedNode<NodeEvents>>(none()).await,
                unauthorized,
                "events needs the client certificate from `postern-shim join`",
            ),
            (
                refusal::<AuthedGateway>(none()).await,
                unauthorized,
                "gateway endpoints need the client certificate from `postern-gate join`",
            ),
            (
                refusal::<AuthedGateway>(None).await,
                unauthorized,
                "gateway endpoints need the client certificate from `postern-gate join`",
            ),
            (
                refusal::<AuthedUser<Recordings>>(none()).await,
                unauthorized,
                "recordings need the client certificate from `postern login`",
            ),
            (
                refusal::<AuthedUser<Renewal>>(none()).await,
                unauthorized,
                "renewal needs the client certificate from `postern login`",
            ),
            (
                refusal::<AuthedNode<NodeSync>>(junk()).await,
                forbidden,
                "unusable client certificate",
            ),
            (
                refusal::<AuthedGateway>(junk()).await,
                forbidden,
                "unusable client certificate",
            ),
            (
                refusal::<AuthedUser<Recordings>>(junk()).await,
                forbidden,
                "unusable client certificate",
            ),
            (
                refusal::<AuthedUser<Renewal>>(junk()).await,
                forbidden,
                "renewal refused: unusable client certificate; run `postern login`",
            ),
        ];
        for ((status, message), want_status, want) in cases {
            assert_eq!((status, message.as_str()), (want_status, want));
        }
    }

    fn id(serial: u64, subject: &str) -> ClientIdentity {
        ClientIdentity {
            serial,
            subject: subject.into(),
            ed25519: [7; 32],
        }
    }

    fn user(id: ClientIdentity) -> AuthedUser<Recordings> {
        AuthedUser {
            id,
            door: PhantomData,
        }
    }

    fn cert(tx: &Tx<'_>, kind: postern_core::CertKind, subject: &str, valid_before: u64) -> u64 {
        store::certs::record(
            tx,
            &store::certs::CertRow {
                kind,
                subject,
                principals: "",
                valid_after: 0,
                valid_before,
                issued_at: 0,
                fingerprint: "fp",
            },
        )
        .unwrap()
    }

    fn refused<T>(c: Committed<T>) -> bool {
        matches!(c, Committed::Refused(Refusal::Forbidden(_)))
    }

    #[test]
    fn a_user_identity_counts_while_known_unrevoked_unexpired_and_unlocked() {
        let c = Connection::open_in_memory().unwrap();
        crate::db::init_schema(&c).unwrap();
        let tx = Tx::sqlite(&c);
        store::users::add_invited(&tx, "alice", "h", 10_000, 0).unwrap();
        let serial = cert(&tx, postern_core::CertKind::X509Client, "alice", 1000);

        let ok = user(id(serial, "alice"));
        assert!(matches!(ok.check(&tx, 500).unwrap(), Committed::Done(u) if u.as_str() == "alice"));
        // Expired by the record, another subject, another serial or kind: unknown.
        assert!(refused(ok.check(&tx, 1000).unwrap()));
        assert!(refused(user(id(serial, "bob")).check(&tx, 500).unwrap()));
        assert!(refused(
            user(id(serial ^ 1, "alice")).check(&tx, 500).unwrap()
        ));
        let node_serial = cert(&tx, postern_core::CertKind::X509Node, "alice", 1000);
        assert!(refused(
            user(id(node_serial, "alice")).check(&tx, 500).unwrap()
        ));

        // A lock on the user: refused with the lock's description.
        let lock = store::locks::add(&tx, "user", "alice", "test", 500, None, "admin").unwrap();
        assert!(refused(ok.check(&tx, 500).unwrap()));
        store::locks::remove(&tx, lock).unwrap();
        assert!(matches!(ok.check(&tx, 500).unwrap(), Committed::Done(_)));

        // Renewal's lookup tells revoked from unknown; the user's removal is the caller's.
        assert!(matches!(
            ok.lookup(&tx).unwrap(),
            UserRecord::Issued {
                valid_before: 1000,
                ..
            }
        ));
        store::certs::revoke_subject(&tx, "alice").unwrap();
        assert!(matches!(ok.lookup(&tx).unwrap(), UserRecord::Revoked));
        assert!(matches!(
            user(id(serial, "bob")).lookup(&tx).unwrap(),
            UserRecord::Unknown
        ));
        assert!(refused(ok.check(&tx, 500).unwrap()));

        // A known certificate whose user was removed.
        store::users::add_invited(&tx, "carol", "h", 10_000, 0).unwrap();
        let carol = user(id(
            cert(&tx, postern_core::CertKind::X509Client, "carol", 1000),
            "carol",
        ));
        assert!(matches!(carol.check(&tx, 500).unwrap(), Committed::Done(_)));
        store::users::remove(&tx, &"carol".parse().unwrap()).unwrap();
        assert!(refused(carol.check(&tx, 500).unwrap()));
    }

    #[test]
    fn a_node_identity_counts_for_its_kind_and_current_serial_only() {
        let c = Connection::open_in_memory().unwrap();
        crate::db::init_schema(&c).unwrap();
        let tx = Tx::sqlite(&c);
        let mut serials = Vec::new();
        for (name, kind) in [("web1", NodeKind::Node), ("gw1", NodeKind::Gateway)] {
            let serial = cert(&tx, postern_core::CertKind::X509Node, name, u64::MAX >> 2);
            serials.push(serial);
            store::nodes::add(
                &tx,
                &store::nodes::NewNode {
                    name,
                    kind,
                    address: None,
                    labels: "",
                    host_key: "key",
                    host_cert_expiry: 0,
                    identity_serial: serial,
                    egress: None,
                    seen_from: None,
                    joined_at: 0,
                },
            )
            .unwrap();
        }
        let node = |serial, subject: &str| AuthedNode::<NodeEvents> {
            id: id(serial, subject),
            door: PhantomData,
        };
        let gateway = |serial, subject: &str| AuthedGateway {
            id: id(serial, subject),
        };
        let (web, gw) = (serials[0], serials[1]);

        let n = node(web, "node:web1").check(&tx).unwrap().unwrap();
        assert_eq!((n.name.as_str(), n.kind.as_str()), ("web1", "node"));
        let n = node(gw, "gateway:gw1").check(&tx).unwrap().unwrap();
        assert_eq!((n.name.as_str(), n.kind.as_str()), ("gw1", "gateway"));
        assert_eq!(
            gateway(gw, "gateway:gw1")
                .check(&tx, 5)
                .unwrap()
                .unwrap()
                .as_str(),
            "gw1"
        );

        // A server is no gateway; a claimed kind must be the row's; the serial must be the
        // node's current one; a subject without a kind is nobody's.
        assert!(gateway(web, "node:web1").check(&tx, 5).unwrap().is_none());
        assert!(gateway(web, "gateway:web1")
            .check(&tx, 5)
            .unwrap()
            .is_none());
        assert!(node(gw, "node:gw1").check(&tx).unwrap().is_none());
        assert!(node(web, "node:gw1").check(&tx).unwrap().is_none());
        assert!(node(web, "web1").check(&tx).unwrap().is_none());

        // Revoked (as `nodes rm` does), the identity no longer counts.
        store::certs::revoke_node(&tx, "gw1").unwrap();
        assert!(gateway(gw, "gateway:gw1").check(&tx, 5).unwrap().is_none());
    }
}
