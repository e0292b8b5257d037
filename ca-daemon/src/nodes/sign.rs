//! `certs sign`: the admin's break-glass signer.

use anyhow::{anyhow, bail, Result};
use postern_core::cert::{issue_user_cert, IssueParams};
use postern_core::{Login, Principal, Ttl, Username};
use serde_json::json;
use ssh_key::{HashAlg, PublicKey};

use super::join::{host_cert_as, node_key_id};
use super::locks::active_locks;
use crate::admin::SignedCert;
use crate::audit;
use crate::keys::CaKind;
use crate::service::{now, Service};

impl Service {
    /// `certs sign`: the admin's break-glass signer, capped by policy and audited.
    #[allow(clippy::too_many_arguments)]
    pub async fn certs_sign(
        &self,
        ca: &str,
        key_line: String,
        principals: Vec<String>,
        user: Option<String>,
        ttl: Option<Ttl>,
        actor: String,
    ) -> Result<SignedCert> {
        let key = PublicKey::from_openssh(key_line.trim())
            .map_err(|_| anyhow!("--key is not an OpenSSH public key"))?;
        let kind = CaKind::ALL
            .into_iter()
            .find(|k| k.as_str() == ca)
            .ok_or_else(|| anyhow!("--ca must be user, host or node-access"))?;
        let now = now();
        let policy = self.policy();
        let keys = std::sync::Arc::clone(&self.keys);
        self.db
            .run(move |c| {
                let (cert, serial, valid_before, subject) = if kind == CaKind::Host {
                    let ps = principals.iter().map(|p| p.parse::<Principal>()).collect::<Result<Vec<_>, _>>()?;
                    let name = postern_core::names::parse_node_name(principals.first().map_or("", |s| s.split('.').next().unwrap_or("")))?;
                    let approval = policy.decide_host_cert(node_key_id(&name)?, ps, ttl)?;
                    let (cert, vb, serial) = host_cert_as(c, &keys, &approval, &key, now)?;
                    (cert, serial, vb, name.to_string())
                } else {
                    let logins = principals.iter().map(|p| p.parse::<Login>()).collect::<Result<Vec<_>, _>>()?;
                    let who: Username = user.as_deref().unwrap_or("admin").parse()?;
                    let locks = active_locks(c, now)?;
                    let subject = postern_core::api::LockSubject { user: Some(who.as_str()), ..Default::default() };
                    if let Some(l) = postern_core::api::lock_for(&locks, &subject, now) {
                        bail!("{}", l.describe());
                    }
                    let d = policy.decide_admin_signing(&who, logins, ttl)?;
                    let a = &d.approval;
                    let vb = now + a.ttl().as_secs();
                    let kind_s = if kind == CaKind::User { postern_core::CertKind::SshUser } else { postern_core::CertKind::SshNodeAccess };
                    let ps: Vec<&str> = a.logins().iter().map(|l| l.as_str()).collect();
                    let serial = crate::store::certs::record(c, &crate::store::certs::CertRow {
                        kind: kind_s, subject: who.as_str(), principals: &ps.join(","),
                        valid_after: now - 60, valid_before: vb, issued_at: now,
                        fingerprint: &key.fingerprint(HashAlg::Sha256).to_string(),
                    })?;
                    let cert = issue_user_cert(keys.ssh(kind), a, &key, IssueParams { serial, now })?;
                    (cert.to_openssh()?, serial, vb, who.to_string())
                };
                audit::append(c, now, "cert.signed", &actor, json!({ "ca": kind.as_str(), "serial": serial, "subject": subject, "principals": principals, "valid_before": valid_before }))?;
                Ok(SignedCert { certificate: cert, serial, valid_before })
            })
            .await
    }
}
