//! The inventory of servers and gateways: `nodes ls`, `nodes rm`.

use anyhow::{bail, Result};
use serde_json::json;

use crate::audit;
use crate::service::{now, Service};
use crate::store;

impl Service {
    /// `nodes ls`.
    pub async fn nodes_ls(&self, kind: Option<&'static str>) -> Result<serde_json::Value> {
        self.db
            .run(move |c| {
                let rows = store::nodes::list(c, kind)?
                    .into_iter()
                    .map(|n| {
                        json!({
                            "name": n.name, "kind": n.kind, "address": n.address,
                            "labels": n.labels, "joined_at": n.joined_at, "last_sync": n.last_sync,
                            "host_cert_expiry": n.host_cert_expiry,
                        })
                    })
                    .collect();
                Ok(serde_json::Value::Array(rows))
            })
            .await
    }

    /// `nodes rm NAME`: the node's identity and host certificates stop working at once.
    pub async fn nodes_rm(&self, name: String, actor: String) -> Result<serde_json::Value> {
        let now = now();
        self.db
            .run(move |c| {
                if !store::nodes::remove(c, &name)? {
                    bail!("no node {name}");
                }
                let revoked = store::certs::revoke_node(c, &name)?;
                audit::append(
                    c,
                    now,
                    "node.removed",
                    &actor,
                    json!({ "node": name, "revoked_certs": revoked }),
                )?;
                Ok(json!({ "node": name, "removed": true, "revoked_certs": revoked }))
            })
            .await
    }
}
