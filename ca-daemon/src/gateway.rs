//! The CA side of the recording gateway: the inventory it routes by, the per-session
//! authorization that signs a node-access certificate for exactly one login, and the host
//! certificates it presents on the inner connection. Every call needs the mTLS identity of a
//! joined gateway (kind `gateway`); a server's identity is refused.

use crate::committed::Committed;
use anyhow::Result;
use postern_core::api::{
    AuthorizeRequest, AuthorizeResponse, HostCertRequest, HostCertResponse, Inventory,
    InventoryEntry, RevokedUserCert,
};
use postern_core::cert::{
    issue_node_access_cert, CertValidator, IssueParams, Signer, CLOCK_SKEW_SECS,
};
use postern_core::{Deny, KeyId, Labels, NodeName, Ttl};
use serde_json::json;
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, HashAlg};

use crate::audit;
use crate::authed::AuthedGateway;
use crate::keys::CaKind;
use crate::nodes::{active_locks, host_cert_as, host_principals, parse_key};
use crate::service::{now, Refusal, Service};
use crate::store::{self, nodes::GatewaySession, Tx};

/// Lifetime of a node-access certificate in seconds: long enough to log in, useless soon after.
pub const NODE_ACCESS_TTL_SECS: u64 = 5 * 60;

/// The longest host certificate a gateway gets for a server's names (it caches and renews).
pub const GATEWAY_HOST_CERT_MAX_SECS: u64 = 24 * 3600;

type Outcome<T> = std::result::Result<T, Refusal>;

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Whether `s` is a session id as the gateway chooses them: `[a-z0-9-]{1,64}`. It names a
/// recording file, so nothing else is allowed.
pub fn valid_session_id(s: &str) -> bool {
    s.parse::<postern_core::RecordingId>().is_ok()
}

/// How long after its end a revoked user certificate stays in the inventory. A gateway that
/// could not reach the CA while the certificate was revoked and then ended still learns of the
/// revocation, and cuts its sessions even where `disconnect_expired_cert` is off.
const REVOKED_LISTED_AFTER_END_SECS: u64 = 24 * 3600;

/// The user certificates revoked before their end, with why. Only `users rm` (which deletes
/// the user) and `users reset` (which keeps it) revoke user certificates, so the user's row
/// tells which of the two it was; a user removed and added again reads as reset, which cuts
/// all the same.
fn revoked_user_certs(c: &Tx<'_>, now: u64) -> Result<Vec<RevokedUserCert>> {
    let rows =
        store::certs::revoked_user_certs(c, now.saturating_sub(REVOKED_LISTED_AFTER_END_SECS))?;
    let mut out = Vec::with_capacity(rows.len());
    for store::certs::RevokedUser {
        serial,
        subject,
        user_exists,
    } in rows
    {
        // A subject that is no user name (none is written) would be no session's user.
        let Ok(user) = subject.parse() else { continue };
        out.push(RevokedUserCert {
            serial,
            user,
            reason: if user_exists {
                "user reset"
            } else {
                "user removed"
            }
            .into(),
        });
    }
    Ok(out)
}

fn not_a_gateway() -> Refusal {
    Refusal::Forbidden(
        "only a joined gateway may call this endpoint (run `postern-gate join` again if it was removed)"
            .into(),
    )
}

/// A joined server of kind `node`: its address, labels and the host key the CA certified.
fn server(c: &Tx<'_>, name: &NodeName) -> Result<Option<(Option<String>, Labels, String)>> {
    store::nodes::server(c, name.as_str())?
        .map(|s| Ok((s.address, s.labels.parse()?, s.host_key)))
        .transpose()
}

impl Service {
    /// `GET /v1/gateway/inventory`.
    pub async fn gateway_inventory(&self, gateway: AuthedGateway) -> Outcome<Inventory> {
        let now = now();
        let keys = std::sync::Arc::clone(&self.keys);
        let cluster = self.cluster.clone();
        self.db
            .run(move |c| -> Result<Committed<Inventory>> {
                if gateway.check(c, now)?.is_none() {
                    return Ok(Committed::Refused(not_a_gateway()));
                }
                let rows = store::nodes::routable_servers(c)?;
                let mut nodes = Vec::with_capacity(rows.len());
                for store::nodes::Server { name, address, labels, host_key } in rows {
                    let address = address.unwrap_or_default();
                    // One bad row (written by an older version) must not make the whole
                    // inventory fail for every gateway: it is left out and logged.
                    let Ok(name) = postern_core::names::parse_node_name(&name) else {
                        tracing::warn!(node = %name.escape_debug(), "inventory: skipping a node whose name is not valid");
                        continue;
                    };
                    nodes.push(InventoryEntry {
                        name,
                        address,
                        labels: labels.parse()?,
                        host_key: Some(host_key),
                    });
                }
                Ok(Committed::Done(Inventory {
                    cluster,
                    generated_at: now,
                    nodes,
                    user_ca_keys: vec![keys.public_line(CaKind::User)?],
                    host_ca_keys: vec![keys.public_line(CaKind::Host)?],
                    locks: active_locks(c, now)?,
                    revoked_user_certs: revoked_user_certs(c, now)?,
                }))
            })
            .await?
            .into_result()
    }

    /// `POST /v1/gateway/authorize`: checks the user certificate, locks, the server and the
    /// policy, then signs a node-access certificate for exactly that login. Each refusal is
    /// audited as `gateway.refused` and answered with a message the gateway shows the user.
    pub async fn gateway_authorize(
        &self,
        gateway: AuthedGateway,
        req: AuthorizeRequest,
    ) -> Outcome<AuthorizeResponse> {
        let key = parse_key(&req.public_key, "public_key")?;
        if req.user_certificate.len() > 16 * 1024 {
            return Err(Refusal::BadRequest("user_certificate is too long".into()));
        }
        let user_cert = Certificate::from_openssh(req.user_certificate.trim()).map_err(|_| {
            Refusal::BadRequest("user_certificate is not an OpenSSH certificate".into())
        })?;
        let user_ca = self.keys.ssh(CaKind::User).public_key().clone();
        let key_id: KeyId = format!("{}/{}", req.user, req.session_id)
            .parse()
            .map_err(|_| {
                Refusal::BadRequest("user and session_id are too long for a key id".into())
            })?;
        let ttl = Ttl::from_secs(NODE_ACCESS_TTL_SECS)
            .ok_or_else(|| anyhow::anyhow!("node-access TTL out of range"))?;
        let now = now();
        let policy = self.policy();
        let keys = std::sync::Arc::clone(&self.keys);
        self.db
            .run(move |c| -> Result<Committed<AuthorizeResponse>> {
                let Some(gateway) = gateway.check(c, now)? else {
                    audit::append(c, now, "gateway.refused", gateway.subject(), json!({ "reason": "not a joined gateway", "user": req.user.as_str(), "node": req.node.as_str() }))?;
                    return Ok(Committed::Refused(not_a_gateway()));
                };
                let (user, login, node) = (&req.user, &req.login, &req.node);
                // `public` is what the user reads; `detail` only goes to the audit log.
                let refuse = |public: String, detail: &str| -> Result<Committed<AuthorizeResponse>> {
                    audit::append(c, now, "gateway.refused", user.as_str(), json!({
                        "gateway": gateway.as_str(), "session": req.session_id, "login": login.as_str(),
                        "node": node.as_str(), "user_cert_serial": user_cert.serial(), "reason": detail,
                    }))?;
                    Ok(Committed::Refused(Refusal::Forbidden(public)))
                };

                // The certificate itself, validated as the gateway did, then its record: the
                // serial alone proves nothing (a gateway could name any serial).
                let serial = user_cert.serial();
                let cert_problem: Option<String> = match (CertValidator { trusted: std::slice::from_ref(&user_ca), cert_type: CertType::User }).validate(&user_cert, now) {
                    Err(e) => Some(e.to_string()),
                    Ok(v) if v.key_id.as_str() != user.as_str() => Some("the certificate belongs to another user".into()),
                    Ok(v) if !v.principals.iter().any(|p| p.as_str() == login.as_str()) => Some(format!("the certificate does not carry the login {login}")),
                    Ok(_) => {
                        let row = store::certs::by_serial(c, postern_core::CertKind::SshUser, serial)?.map(|c| (c.subject, c.revoked, c.fingerprint));
                        let fp = user_cert.public_key().fingerprint(HashAlg::Sha256).to_string();
                        match row {
                            None => Some("unknown serial".into()),
                            Some((subject, ..)) if subject != user.as_str() => Some("the certificate belongs to another user".into()),
                            Some((_, true, _)) => Some("revoked".into()),
                            Some((_, _, f)) if f != fp => Some("the certificate does not match the one issued under its serial".into()),
                            Some(_) => None,
                        }
                    }
                };
                if let Some(why) = cert_problem {
                    return refuse(
                        format!("the user certificate (serial {serial}) is not valid: unknown, revoked or expired; run `postern login`"),
                        &format!("user certificate: {why}"),
                    );
                }

                let locks = active_locks(c, now)?;
                let subject = postern_core::api::LockSubject {
                    user: Some(user.as_str()),
                    login: Some(login.as_str()),
                    node: Some(node.as_str()),
                };
                if let Some(lock) = postern_core::api::lock_for(&locks, &subject, now) {
                    return refuse(lock.describe(), &format!("lock {}: {}", lock.id, lock.reason));
                }

                let Some((address, labels, host_key)) = server(c, node)? else {
                    return refuse(format!("no server named {node} has joined the cluster"), "unknown server");
                };
                let Some(address) = address else {
                    return refuse(format!("server {node} has no address to connect to"), "server without address");
                };
                let decision = match policy.decide_node_access(user, login, &labels, ttl) {
                    Ok(d) => d,
                    Err(deny) => {
                        let public = format!("policy does not allow {user} to log in as {login} on {node}");
                        let public = match &deny {
                            Deny::LoginNotOnNode { .. } => public,
                            other => format!("{public}: {other}"),
                        };
                        return refuse(public, &deny.to_string());
                    }
                };
                let approval = &decision.approval;

                // A session id names one session (and its recording): the same gateway may ask
                // again for the same session, nobody may reuse it for another.
                let earlier = store::nodes::session(c, &req.session_id)?.map(|s| (s.gateway, s.user, s.login, s.node));
                match earlier {
                    None => {
                        // The server's labels now: what `view_recordings` judges the
                        // session's recordings by, whatever the server becomes later.
                        store::nodes::add_session(c, &GatewaySession {
                            id: req.session_id.to_string(), gateway: gateway.to_string(), user: user.to_string(),
                            login: login.to_string(), node: node.to_string(), labels: Some(labels.to_string()),
                            first_authorized: i(now),
                        })?;
                    }
                    Some(e) if e == (gateway.to_string(), user.to_string(), login.to_string(), node.to_string()) => {}
                    Some(_) => {
                        return refuse(
                            format!("session id {} is already used by another session", req.session_id),
                            "session id reused",
                        )
                    }
                }

                let fp = key.fingerprint(HashAlg::Sha256).to_string();
                let valid_after = now.saturating_sub(CLOCK_SKEW_SECS);
                let valid_before = now + approval.ttl().as_secs();
                let serial = store::certs::record(c, &store::certs::CertRow {
                    kind: postern_core::CertKind::SshNodeAccess, subject: user.as_str(), principals: login.as_str(),
                    valid_after, valid_before, issued_at: now, fingerprint: &fp,
                })?;
                let egress = store::nodes::gateway_egress(c, gateway.as_str())?.filter(|e| !e.is_empty());
                let cert = issue_node_access_cert(&keys.node, approval, &key_id, &key, egress.as_deref(), IssueParams { serial, now })?;
                let permits: Vec<_> = approval.permits().iter().copied().collect();
                audit::append(c, now, "gateway.authorized", user.as_str(), json!({
                    "gateway": gateway.as_str(), "session": req.session_id, "login": login.as_str(),
                    "node": node.as_str(), "serial": serial, "user_cert_serial": user_cert.serial(),
                    "key_id": key_id.as_str(), "permits": permits.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                    "valid_before": valid_before, "key": fp,
                }))?;
                Ok(Committed::Done(AuthorizeResponse {
                    certificate: cert.to_openssh()?,
                    node: InventoryEntry { name: node.clone(), address, labels, host_key: Some(host_key) },
                    permits,
                    recording: policy.defaults().recording,
                    record_input: policy.defaults().record_input,
                }))
            })
            .await?
            .into_result()
    }

    /// `POST /v1/gateway/host-cert`: a host certificate for a joined server's names, for the
    /// gateway's own key.
    pub async fn gateway_host_cert(
        &self,
        gateway: AuthedGateway,
        req: HostCertRequest,
    ) -> Outcome<HostCertResponse> {
        let key = crate::nodes::parse_host_key(&req.public_key, "public_key")?;
        let now = now();
        let policy = self.policy();
        let keys = std::sync::Arc::clone(&self.keys);
        let cluster = self.cluster.clone();
        self.db
            .run(move |c| -> Result<Committed<HostCertResponse>> {
                let Some(gateway) = gateway.check(c, now)? else {
                    return Ok(Committed::Refused(not_a_gateway()));
                };
                let Some(_) = server(c, &req.node)? else {
                    return Ok(Committed::Refused(Refusal::NotFound(format!(
                        "no server named {} has joined the cluster",
                        req.node
                    ))));
                };
                let principals = host_principals(&req.node, cluster.as_str(), None)?;
                // Recorded under the gateway's and the server's names, so that nobody mistakes
                // it for the server's own certificate (re-joining the server does not touch it).
                let key_id: KeyId = format!("gateway:{gateway}/{}", req.node).parse()?;
                let approval = policy.decide_host_cert(key_id, principals, Ttl::from_secs(GATEWAY_HOST_CERT_MAX_SECS))?;
                let (certificate, valid_before, serial) = host_cert_as(c, &keys, &approval, &key, now)?;
                audit::append(
                    c,
                    now,
                    "host_cert.issued",
                    &format!("gateway:{gateway}"),
                    json!({
                        "node": req.node.as_str(), "serial": serial,
                        "principals": approval.principals().iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                        "valid_before": valid_before, "key": key.fingerprint(HashAlg::Sha256).to_string(),
                    }),
                )?;
                Ok(Committed::Done(HostCertResponse {
                    certificate,
                    valid_before,
                }))
            })
            .await?
            .into_result()
    }
}

impl Service {
    /// `GET /v1/gateway/public-addr`: the address users are told to use for the gateway
    /// (`[gateway] public_addr`, one or several), which the gateway's host certificate must
    /// name.
    pub async fn gateway_public_addr(
        &self,
        gateway: AuthedGateway,
    ) -> Outcome<postern_core::api::GatewayPublicAddr> {
        let now = now();
        let known = self
            .db
            .run(move |c| Ok(gateway.check(c, now)?.is_some()))
            .await?;
        if !known {
            return Err(not_a_gateway());
        }
        Ok(postern_core::api::GatewayPublicAddr {
            public_addr: self.gateways.first().cloned(),
            public_addrs: self.gateways.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_short_lowercase_tokens() {
        assert!(valid_session_id("s-1a2b"));
        assert!(valid_session_id(&"a".repeat(64)));
        for bad in ["", "S1", "a_b", "a/b", "../x", "a b", "é", &"a".repeat(65)] {
            assert!(!valid_session_id(bad), "{bad:?}");
        }
    }
}
