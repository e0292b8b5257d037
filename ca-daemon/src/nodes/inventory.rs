//! The inventory of servers and gateways: `nodes ls`, `nodes rm`.

use anyhow::{bail, Result};
use serde_json::json;

use crate::audit;
use crate::service::{now, Service};

impl Service {
    /// `nodes ls`.
    pub async fn nodes_ls(&self, kind: Option<&'static str>) -> Result<serde_json::Value> {
        self.db
            .run(move |c| {
                let mut st = c.prepare("SELECT name, kind, address, labels, joined_at, last_sync, host_cert_expiry FROM nodes WHERE ?1 IS NULL OR kind = ?1 ORDER BY name")?;
                let rows = st
                    .query_map([kind], |r| {
                        Ok(json!({
                            "name": r.get::<_, String>(0)?, "kind": r.get::<_, String>(1)?, "address": r.get::<_, Option<String>>(2)?,
                            "labels": r.get::<_, String>(3)?, "joined_at": r.get::<_, i64>(4)?, "last_sync": r.get::<_, Option<i64>>(5)?,
                            "host_cert_expiry": r.get::<_, Option<i64>>(6)?,
                        }))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(serde_json::Value::Array(rows))
            })
            .await
    }

    /// `nodes rm NAME`: the node's identity and host certificates stop working at once.
    pub async fn nodes_rm(&self, name: String, actor: String) -> Result<serde_json::Value> {
        let now = now();
        self.db
            .run(move |c| {
                let n = c.execute("DELETE FROM nodes WHERE name = ?1", [&name])?;
                if n == 0 {
                    bail!("no node {name}");
                }
                let revoked = c.execute("UPDATE certs SET revoked = 1 WHERE subject = ?1 AND kind IN ('ssh-host', 'x509-node') AND revoked = 0", [&name])?
                    + c.execute("UPDATE certs SET revoked = 1 WHERE kind = 'ssh-host' AND subject LIKE 'gateway:' || ?1 || '/%' AND revoked = 0", [&name])?;
                audit::append(c, now, "node.removed", &actor, json!({ "node": name, "revoked_certs": revoked }))?;
                Ok(json!({ "node": name, "removed": true, "revoked_certs": revoked }))
            })
            .await
    }
}
