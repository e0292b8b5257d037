//! The inventory of servers and gateways: `nodes ls`, `nodes rm`.

use anyhow::{bail, Result};
use serde_json::json;

use crate::admin::NodeRemoved;
use crate::audit;
use crate::service::{now, Service};
use crate::store::{self, nodes::NodeLine};

impl Service {
    /// `nodes ls`.
    pub async fn nodes_ls(&self, kind: Option<&'static str>) -> Result<Vec<NodeLine>> {
        self.db.run(move |c| store::nodes::list(c, kind)).await
    }

    /// `nodes rm NAME`: the node's identity and host certificates stop working at once.
    pub async fn nodes_rm(&self, name: String, actor: String) -> Result<NodeRemoved> {
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
                Ok(NodeRemoved {
                    node: name,
                    removed: true,
                    revoked_certs: revoked,
                })
            })
            .await
    }
}
