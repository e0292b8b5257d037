//! Locks: `lock add`, `lock ls`, `lock rm`, and the active locks and locked logins that
//! issuing, bundles and the KRL read.

use anyhow::{bail, Result};
use postern_core::api::LockEntry;
use postern_core::{Login, Ttl, Username};
use serde_json::json;

use crate::admin::{LockAdded, LockRemoved};
use crate::audit;
use crate::service::{now, Service};
use crate::store::{self, Tx};

/// Active locks at `now`.
pub fn active_locks(tx: &Tx<'_>, now: u64) -> Result<Vec<LockEntry>> {
    store::locks::active(tx, now)
}

/// The logins that `locks` (active ones) lock: issuance leaves them out of a certificate.
pub fn locked_logins(locks: &[LockEntry]) -> Vec<Login> {
    locks
        .iter()
        .filter(|l| l.target == postern_core::LockTarget::Login)
        .filter_map(|l| l.name.parse().ok())
        .collect()
}

impl Service {
    /// `lock add`.
    pub async fn lock_add(
        &self,
        target: &str,
        name: String,
        ttl: Option<Ttl>,
        reason: String,
        actor: String,
    ) -> Result<LockAdded> {
        match target {
            "user" => drop(name.parse::<Username>()?),
            "login" => drop(name.parse::<Login>()?),
            "node" => drop(postern_core::names::parse_node_name(&name)?),
            _ => bail!("lock target must be user, login or node"),
        }
        if reason.trim().is_empty() || reason.len() > 512 {
            bail!("--reason must be 1 to 512 characters");
        }
        let now = now();
        let expires = ttl.map(|t| now + t.as_secs());
        let target = target.to_owned();
        self.db
            .run(move |c| {
                let id = store::locks::add(c, &target, &name, &reason, now, expires, &actor)?;
                audit::append(c, now, "lock.added", &actor, json!({ "id": id, "target": target, "name": name, "reason": reason, "expires": expires }))?;
                Ok(LockAdded {
                    id,
                    target,
                    name,
                    expires,
                })
            })
            .await
    }

    /// `lock ls`.
    pub async fn lock_ls(&self) -> Result<Vec<LockEntry>> {
        let now = now();
        self.db.run(move |c| active_locks(c, now)).await
    }

    /// `lock rm ID`.
    pub async fn lock_rm(&self, id: i64, actor: String) -> Result<LockRemoved> {
        let now = now();
        self.db
            .run(move |c| {
                if !store::locks::remove(c, id)? {
                    bail!("no lock {id}");
                }
                audit::append(c, now, "lock.removed", &actor, json!({ "id": id }))?;
                Ok(LockRemoved { id, removed: true })
            })
            .await
    }
}
