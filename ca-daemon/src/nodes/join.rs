//! Joining: a token, a name and keys become a node with its host certificate, its X.509
//! identity and its audit events, in one transaction.

use crate::committed::Committed;
use anyhow::Result;
use postern_core::api::{ExposeSecret as _, JoinRequest, JoinResponse};
use postern_core::cert::{issue_host_cert, IssueParams};
use postern_core::{HostCertApproval, KeyId, Labels, NodeKind, NodeName, Principal};
use serde_json::json;
use ssh_key::{HashAlg, PublicKey};

use super::bundle::build_bundle;
use super::tokens::token_well_formed;
use super::{parse_host_key, parse_key, u};
use crate::audit;
use crate::auth;
use crate::keys::KeyStore;
use crate::service::{now, Refusal, Service};
use crate::store::{self, Tx};

/// A node's host certificate is recorded and signed with the node's name as its key id.
pub(super) fn node_key_id(name: &NodeName) -> Result<KeyId> {
    Ok(name.as_str().parse()?)
}

/// Issues the host certificate the policy approved and records it with the approval's key id
/// as its subject. Returns the certificate line, its `valid_before` and its serial.
pub(crate) fn host_cert_as(
    conn: &Tx<'_>,
    keys: &KeyStore,
    approval: &HostCertApproval,
    host_key: &PublicKey,
    now: u64,
) -> Result<(String, u64, u64)> {
    let valid_before = now + approval.ttl().as_secs();
    let joined: Vec<&str> = approval.principals().iter().map(|p| p.as_str()).collect();
    let serial = store::certs::record(
        conn,
        &store::certs::CertRow {
            kind: postern_core::CertKind::SshHost,
            subject: approval.key_id().as_str(),
            principals: &joined.join(","),
            valid_after: now.saturating_sub(60),
            valid_before,
            issued_at: now,
            fingerprint: &host_key.fingerprint(HashAlg::Sha256).to_string(),
        },
    )?;
    let cert = issue_host_cert(&keys.host, approval, host_key, IssueParams { serial, now })?;
    Ok((cert.to_openssh()?, valid_before, serial))
}

/// The names a node's host certificate carries: NAME, NAME.<cluster>, and the host part of
/// its address when that is a valid principal.
pub(crate) fn host_principals(
    name: &NodeName,
    cluster: &str,
    address: Option<&str>,
) -> Result<Vec<Principal>> {
    let mut out = vec![name.as_str().parse()?, format!("{name}.{cluster}").parse()?];
    add_address_principal(&mut out, address);
    Ok(out)
}

/// Adds the principal ssh checks at `address` (its host, lowercased), when it has one.
pub(super) fn add_address_principal(out: &mut Vec<Principal>, address: Option<&str>) {
    if let Some(p) = address.and_then(|a| postern_core::names::address_principal(a).ok()) {
        if !out.contains(&p) {
            out.push(p);
        }
    }
}

/// Why a join with a valid token must be refused, if it must: the token joins exactly the
/// name it was made for, replaces an existing holder of that name only when made with
/// `--replace`, never turns a node into a gateway or the reverse, and sets the complete label
/// set (a node that asks for labels the token does not give is refused rather than silently
/// relabelled). `existing` is the kind of whatever already has the name.
pub(crate) fn join_refusal(
    token_kind: NodeKind,
    token_name: Option<&str>,
    replace: bool,
    token_labels: &Labels,
    req: &JoinRequest,
    existing: Option<NodeKind>,
    cluster: &str,
) -> Option<String> {
    let name = req.name.as_str();
    let Some(token_name) = token_name else {
        return Some(
            "this token was made before tokens were bound to a name; make a new one with `posternd tokens add --name`"
                .into(),
        );
    };
    if token_name != name {
        return Some(format!(
            "this token is for the name {token_name:?}, not {name:?}"
        ));
    }
    // Users reach servers as NAME.<cluster>: no node may be named like the cluster itself.
    if cluster.split('.').next() == Some(name) {
        return Some(format!("the name {name:?} is the cluster's own"));
    }
    match existing {
        Some(k) if k != token_kind => {
            return Some(format!(
                "the name {name:?} belongs to a {k}, and a {token_kind} never replaces a {k}"
            ))
        }
        Some(_) if !replace => {
            return Some(format!(
                "a {token_kind} named {name:?} is already joined; replacing it needs a token made with `posternd tokens add --kind {token_kind} --name {name} --replace`"
            ))
        }
        _ => {}
    }
    let asked: Vec<String> = req
        .labels
        .iter()
        .filter(|(k, v)| token_labels.get(k) != Some(*v))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !asked.is_empty() {
        return Some(format!(
            "the token sets this node's labels ({}); it does not give {}",
            if token_labels.is_empty() {
                "none".to_owned()
            } else {
                token_labels.to_string()
            },
            asked.join(",")
        ));
    }
    None
}

/// Why a server may not take `name`: its host certificate would name a host users are told
/// to dial for a gateway (`[gateway] public_addr`), so the server could stand in for the
/// gateway, which records every session. `None` for a gateway, or a name that is no such host.
pub(crate) fn gateway_address_clash(
    kind: NodeKind,
    name: &str,
    cluster: &str,
    public_addrs: &[String],
) -> Option<String> {
    if kind == NodeKind::Gateway {
        return None;
    }
    let full = format!("{name}.{cluster}");
    public_addrs.iter().find_map(|a| {
        let host = postern_core::names::address_principal(a).ok()?;
        (host.as_str() == name || host.as_str() == full).then(|| {
            format!("the name {name:?} is the host of a gateway address users are told to dial ({a}, [gateway] public_addr)")
        })
    })
}

impl Service {
    /// `POST /v1/join`.
    pub async fn join(
        &self,
        req: JoinRequest,
        remote: String,
        source: crate::limits::Source,
    ) -> std::result::Result<JoinResponse, Refusal> {
        let host_key = parse_host_key(&req.host_public_key, "host_public_key")?;
        let ident = parse_key(&req.identity_public_key, "identity_public_key")?;
        if let Some(a) = &req.address {
            postern_core::names::parse_host_port(a)
                .map_err(|e| Refusal::BadRequest(e.to_string()))?;
        }
        if req.egress_addresses.len() > 16 {
            return Err(Refusal::BadRequest("at most 16 egress addresses".into()));
        }
        let egress = req
            .egress_addresses
            .iter()
            .map(|a| postern_core::names::parse_source_address(a))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Refusal::BadRequest(e.to_string()))?;
        // Every server exempts these from sshd's penalties and node-access certificates are
        // bound to them: a gateway may not claim half the Internet.
        if let Some(wide) = egress.iter().find(|a| {
            a.split_once('/').is_some_and(|(ip, len)| {
                let len: u8 = len.parse().unwrap_or(0);
                if ip.contains(':') {
                    len < 48
                } else {
                    len < 16
                }
            })
        }) {
            return Err(Refusal::BadRequest(format!(
                "egress address {wide} is wider than a /16 (IPv4) or /48 (IPv6)"
            )));
        }
        let egress = egress.join(",");
        let seen_from = postern_core::names::parse_source_address(&remote).ok();
        let ident_ed = ident
            .key_data()
            .ed25519()
            .map(|k| k.0)
            .ok_or_else(|| Refusal::BadRequest("identity_public_key must be Ed25519".into()))?;
        let well_formed = token_well_formed(req.token.expose_secret());
        let hash = auth::invite_hash(req.token.expose_secret());
        let now = now();
        let policy = self.policy();
        let keys = std::sync::Arc::clone(&self.keys);
        let cluster = self.cluster.clone();
        let public_addrs = self.gateways.clone();
        let failures = std::sync::Arc::clone(&self.limits.failures);
        self.db
            .run(move |c| -> Result<Committed<JoinResponse>> {
                let row = if well_formed {
                    store::tokens::find(c, &hash)?.map(|t| (t.kind, t.labels, t.expires, t.name, t.replace))
                } else {
                    None
                };
                let reason = match &row {
                    None if !well_formed => Some("malformed token"),
                    None => Some("unknown or already used token"),
                    Some((_, _, exp, _, _)) if u(*exp) <= now => Some("expired token"),
                    Some(_) => None,
                };
                if let Some(reason) = reason {
                    // Counted in the source's summary (without the token), not audited one
                    // by one: anybody can send tokens.
                    failures.record(source, crate::limits::FailureKind::Join, reason, None, now);
                    return Ok(Committed::Refused(Refusal::Forbidden("join refused: invalid, expired or already used token".into())));
                }
                let Some((kind, token_labels, _, token_name, replace)) = row else { unreachable!() };
                let tl: Labels = token_labels.parse()?;
                let existing = store::nodes::kind_of(c, req.name.as_str())?;
                let refusal = join_refusal(kind, token_name.as_deref(), replace, &tl, &req, existing, cluster.as_str())
                    .or_else(|| gateway_address_clash(kind, req.name.as_str(), cluster.as_str(), &public_addrs));
                if let Some(refusal) = refusal {
                    // A refused token stays unused: it was not spent on the wrong name. The
                    // attempt is audited (without the token).
                    audit::append(c, now, "join.refused", &format!("{}@{remote}", req.name), json!({
                        "reason": refusal, "token_name": token_name, "token_kind": kind, "existing": existing,
                    }))?;
                    return Ok(Committed::Refused(Refusal::Forbidden(format!("join refused: {refusal}"))));
                }
                store::tokens::spend(c, &hash)?;
                // The token's labels are the node's complete label set (join_refusal checked
                // that the node asked for none of its own).
                let labels = tl;
                // A re-join replaces the node: its old certificates stop working.
                // A gateway's host certificates for servers' names go with it.
                store::certs::revoke_node(c, req.name.as_str())?;
                store::nodes::remove(c, req.name.as_str())?;
                // A server's certificate names only the server (NAME, NAME.<cluster>): its
                // self-declared address proves nothing, and would let it claim another host's
                // name. A gateway's also names the address it was joined with and every one
                // users are told to dial: posternd.toml's `[gateway] public_addr` (what
                // `postern login` writes as ProxyJump), whatever --address said. Every
                // gateway of the cluster is named by all of them, so that any can stand in
                // for another behind one of its addresses (a moved IP, a DNS name for all).
                let mut principals = host_principals(&req.name, cluster.as_str(), req.address.as_deref().filter(|_| kind == NodeKind::Gateway))?;
                if kind == NodeKind::Gateway {
                    for a in &public_addrs {
                        add_address_principal(&mut principals, Some(a));
                    }
                }
                let approval = policy.decide_host_cert(node_key_id(&req.name)?, principals, None)?;
                let (cert, expiry, _) = host_cert_as(c, &keys, &approval, &host_key, now)?;
                let ident_serial = store::certs::record(c, &store::certs::CertRow {
                    kind: postern_core::CertKind::X509Node, subject: req.name.as_str(), principals: "",
                    valid_after: now - 60, valid_before: now + 365 * 86_400, issued_at: now,
                    fingerprint: &ident.fingerprint(HashAlg::Sha256).to_string(),
                })?;
                let x509 = keys.service.issue_client_cert(&format!("{kind}:{}", req.name), &ident_ed, ident_serial, now - 60, now + 365 * 86_400)?;
                store::nodes::add(c, &store::nodes::NewNode {
                    name: req.name.as_str(), kind, address: req.address.as_deref(), labels: &labels.to_string(),
                    joined_at: now, host_key: &host_key.to_openssh()?, host_cert_expiry: expiry, identity_serial: ident_serial,
                    egress: (kind == NodeKind::Gateway).then_some(egress.as_str()),
                    seen_from: if kind == NodeKind::Gateway { seen_from.as_deref() } else { None },
                })?;
                audit::append(c, now, "node.joined", &format!("{kind}:{}", req.name), json!({ "address": req.address, "labels": labels.to_string(), "remote": remote }))?;
                let bundle = build_bundle(c, &keys, &policy, &cluster, &req.name, &labels, now)?;
                Ok(Committed::Done(JoinResponse {
                    cluster: cluster.clone(),
                    kind,
                    labels,
                    host_certificate: cert,
                    x509_certificate: x509,
                    x509_ca: keys.service.cert_pem.clone(),
                    bundle,
                }))
            })
            .await?
            .into_result()
    }
}

#[cfg(test)]
mod clash_tests {
    use super::*;

    #[test]
    fn a_server_may_not_be_named_after_a_gateway_address() {
        let addrs = vec!["gate2:3023".to_owned(), "gw.example.com:22".to_owned()];
        let clash = |kind, name| gateway_address_clash(kind, name, "example.com", &addrs);
        let why = clash(NodeKind::Node, "gate2").unwrap();
        assert!(why.contains("gate2:3023"), "{why}");
        assert!(clash(NodeKind::Node, "gw")
            .unwrap()
            .contains("gw.example.com:22"));
        assert_eq!(clash(NodeKind::Node, "web1"), None);
        assert_eq!(clash(NodeKind::Gateway, "gw"), None);
        assert_eq!(
            gateway_address_clash(NodeKind::Node, "gw", "example.com", &[]),
            None
        );
    }
}
