//! What a node fetches on every sync: its bundle (policy slice, locks, KRL, CA keys) and, when
//! due, a renewed host certificate.

use crate::committed::Committed;
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use base64::Engine;
use postern_core::api::{Bundle, SyncResponse};
use postern_core::cert::Signer;
use postern_core::krl::{CaRevocations, Krl};
use postern_core::{Labels, NodeName, Policy};
use serde_json::json;
use ssh_key::PublicKey;

use super::join::host_principals;
use super::join::{host_cert_as, node_key_id};
use super::locks::active_locks;
use super::parse_host_key;
use crate::audit;
use crate::authed::{AuthedNode, JoinedNode, NodeSync};
use crate::keys::{CaKind, KeyStore};
use crate::service::{now, Refusal, Service};
use crate::store::{self, Tx};

/// The KRL from the database: revoked certificates, and every live certificate of a locked
/// user (under the user and node-access CAs, by serial and by key id). Lifting the lock lifts
/// the revocation at the next build.
pub fn build_krl(conn: &Tx<'_>, keys: &KeyStore, now: u64) -> Result<Krl> {
    let blob = |k: CaKind| keys.ssh(k).public_key().to_bytes();
    let mut certs: BTreeMap<Vec<u8>, CaRevocations> = BTreeMap::new();
    let kind_ca = |kind: Option<postern_core::CertKind>| match kind? {
        postern_core::CertKind::SshUser => Some(CaKind::User),
        postern_core::CertKind::SshHost => Some(CaKind::Host),
        postern_core::CertKind::SshNodeAccess => Some(CaKind::NodeAccess),
        postern_core::CertKind::X509Client | postern_core::CertKind::X509Node => None,
    };
    let locks = active_locks(conn, now)?;
    let locked_users: BTreeSet<&str> = locks
        .iter()
        .filter(|l| l.target == postern_core::LockTarget::User)
        .map(|l| l.name.as_str())
        .collect();
    for store::certs::LiveSsh {
        serial,
        kind,
        subject,
        revoked,
    } in store::certs::live_ssh(conn, now)?
    {
        let Some(ca) = kind_ca(kind) else { continue };
        let by_lock = ca != CaKind::Host && locked_users.contains(subject.as_str());
        if revoked || by_lock {
            certs.entry(blob(ca)?).or_default().serials.insert(serial);
        }
    }
    for user in &locked_users {
        for ca in [CaKind::User, CaKind::NodeAccess] {
            certs
                .entry(blob(ca)?)
                .or_default()
                .key_ids
                .insert((*user).to_owned());
        }
    }
    Ok(Krl {
        version: store::meta::krl_version(conn, now)?,
        generated: now,
        comment: "postern".into(),
        certs,
        keys: BTreeSet::new(),
    })
}

/// The addresses gateways dial servers from: each gateway's configured egress addresses, or
/// the address the CA saw it join from.
pub fn gateway_addresses(conn: &Tx<'_>) -> Result<Vec<String>> {
    let mut out = BTreeSet::new();
    for store::nodes::GatewayAddresses {
        egress,
        seen_from: seen,
    } in store::nodes::gateway_addresses(conn)?
    {
        let list = egress
            .filter(|e| !e.is_empty())
            .or(seen)
            .unwrap_or_default();
        for a in list.split(',').filter(|a| !a.is_empty()) {
            // Stored validated; parsed again so that nothing else reaches sshd_config.
            if let Ok(a) = postern_core::names::parse_source_address(a) {
                out.insert(a);
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The bundle for one node.
pub fn build_bundle(
    conn: &Tx<'_>,
    keys: &KeyStore,
    policy: &Policy,
    cluster: &postern_core::ClusterName,
    node: &NodeName,
    labels: &Labels,
    now: u64,
) -> Result<Bundle> {
    let krl = build_krl(conn, keys, now)?;
    Ok(Bundle {
        gateway_addresses: gateway_addresses(conn)?,
        cluster: cluster.clone(),
        node: node.clone(),
        labels: labels.clone(),
        generated_at: now,
        max_bundle_age: policy.defaults().max_bundle_age,
        allowed: policy.slice_for_node(labels),
        locks: active_locks(conn, now)?,
        krl: base64::engine::general_purpose::STANDARD
            .encode(krl.encode().context("encoding the KRL")?),
        user_ca_keys: vec![keys.public_line(CaKind::User)?],
        host_ca_keys: vec![keys.public_line(CaKind::Host)?],
        node_access_ca_keys: vec![keys.public_line(CaKind::NodeAccess)?],
        audit_checkpoint: None,
    })
}

impl Service {
    /// `POST /v1/node/sync`.
    pub async fn node_sync(
        &self,
        id: AuthedNode<NodeSync>,
        req: postern_core::api::SyncRequest,
    ) -> std::result::Result<SyncResponse, Refusal> {
        let host_key = req
            .host_public_key
            .as_deref()
            .map(|k| parse_host_key(k, "host_public_key"))
            .transpose()?;
        let now = now();
        let policy = self.policy();
        let keys = std::sync::Arc::clone(&self.keys);
        let cluster = self.cluster.clone();
        self.db
            .run(move |c| -> Result<Committed<SyncResponse>> {
                let Some(JoinedNode { name, labels, kind }) = id.check(c)? else {
                    return Ok(Committed::Refused(Refusal::Forbidden("this node's identity is not valid (removed or re-joined); run `postern-shim join` again".into())));
                };
                // The bundle is a server's: a gateway has no use for the policy slice, and its
                // identity must not renew host certificates through this door.
                if kind != postern_core::NodeKind::Node {
                    return Ok(Committed::Refused(Refusal::Forbidden("only a joined server may sync; this identity is a gateway's".into())));
                }
                store::nodes::touch(c, name.as_str(), now)?;
                let mut host_certificate = None;
                if let (Some((_after, before)), Some(key)) = (req.host_cert_window, host_key) {
                    let stored = store::nodes::host_key(c, name.as_str())?;
                    // Renew when a third of the certificate's life or less is left. The life is
                    // the policy's TTL, not the window: valid_after is backdated for clock skew.
                    let life = policy.defaults().host_cert_ttl.as_secs();
                    let due = req.renew || before.saturating_sub(now) * 3 <= life;
                    if due && PublicKey::from_openssh(&stored).ok().as_ref() == Some(&key) {
                        let principals = host_principals(&name, cluster.as_str(), None)?;
                        let approval = policy.decide_host_cert(node_key_id(&name)?, principals, None)?;
                        let (cert, expiry, _) = host_cert_as(c, &keys, &approval, &key, now)?;
                        store::nodes::set_host_cert_expiry(c, name.as_str(), expiry)?;
                        audit::append(c, now, "host_cert.renewed", &format!("node:{name}"), json!({ "valid_before": expiry }))?;
                        host_certificate = Some(cert);
                    }
                }
                let mut bundle = build_bundle(c, &keys, &policy, &cluster, &name, &labels, now)?;
                // Only a shim that asked gets the checkpoint: older shims refuse unknown fields.
                if req.audit_checkpoint {
                    let key = audit::installed_public_key()?;
                    bundle.audit_checkpoint = audit::newest_checkpoint(c)?.filter(|cp| key.checks(cp));
                }
                Ok(Committed::Done(SyncResponse { bundle, host_certificate }))
            })
            .await?
            .into_result()
    }
}
