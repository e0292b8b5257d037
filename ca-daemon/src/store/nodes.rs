//! Joined servers and gateways, and the sessions the CA authorized gateways to open.

use anyhow::Result;

use super::{i, parsed, u, Tx};
use postern_core::NodeKind;

/// A node about to be stored by a join.
pub struct NewNode<'a> {
    /// Its name.
    pub name: &'a str,
    /// `node` or `gateway`.
    pub kind: NodeKind,
    /// The `HOST:PORT` it registered.
    pub address: Option<&'a str>,
    /// Its complete label set.
    pub labels: &'a str,
    /// The host key the CA certified (OpenSSH line).
    pub host_key: &'a str,
    /// End of its host certificate.
    pub host_cert_expiry: u64,
    /// The serial of its X.509 identity.
    pub identity_serial: u64,
    /// A gateway's egress addresses (comma-separated).
    pub egress: Option<&'a str>,
    /// The address a gateway joined from.
    pub seen_from: Option<&'a str>,
    /// Unix time of the join.
    pub joined_at: u64,
}

/// One line of `nodes ls`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLine {
    /// Its name.
    pub name: String,
    /// `node` or `gateway`.
    pub kind: String,
    /// The `HOST:PORT` it registered.
    pub address: Option<String>,
    /// Its labels, as stored.
    pub labels: String,
    /// Unix time of the join.
    pub joined_at: i64,
    /// Unix time of its last sync or gateway call.
    pub last_sync: Option<i64>,
    /// End of its host certificate.
    pub host_cert_expiry: Option<i64>,
}

/// What a node's mTLS identity is checked against.
pub struct NodeIdentity {
    /// Its labels, as stored.
    pub labels: String,
    /// The serial of its current X.509 identity.
    pub identity_serial: u64,
    /// `node` or `gateway`.
    pub kind: NodeKind,
}

/// A joined server (kind `node`) as the gateway dials it.
pub struct Server {
    /// Its name, as stored.
    pub name: String,
    /// The `HOST:PORT` it registered.
    pub address: Option<String>,
    /// Its labels, as stored.
    pub labels: String,
    /// The host key the CA certified.
    pub host_key: String,
}

/// A gateway's addresses, as stored.
pub struct GatewayAddresses {
    /// Its configured egress addresses (comma-separated).
    pub egress: Option<String>,
    /// The address it joined from.
    pub seen_from: Option<String>,
}

/// A session the CA authorized (`gateway_sessions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySession {
    /// The session id the gateway chose.
    pub id: String,
    /// The gateway it was authorized for.
    pub gateway: String,
    /// The Postern user.
    pub user: String,
    /// The login on the server.
    pub login: String,
    /// The server.
    pub node: String,
    /// The server's labels at authorization (`None` for sessions authorized before the CA
    /// kept them).
    pub labels: Option<String>,
    /// When the CA first authorized it (the CA's clock).
    pub first_authorized: i64,
}

/// Every node, or those of one kind, by name.
pub fn list(tx: &Tx<'_>, kind: Option<&str>) -> Result<Vec<NodeLine>> {
    let rows = tx.query_map("SELECT name, kind, address, labels, joined_at, last_sync, host_cert_expiry FROM nodes WHERE CAST(?1 AS TEXT) IS NULL OR kind = ?1 ORDER BY name", params![kind], |r| {
            Ok(NodeLine {
                name: r.get(0)?,
                kind: r.get(1)?,
                address: r.get(2)?,
                labels: r.get(3)?,
                joined_at: r.get(4)?,
                last_sync: r.get(5)?,
                host_cert_expiry: r.get(6)?,
            })
        })?;
    Ok(rows)
}

/// Stores a joined node.
pub fn add(tx: &Tx<'_>, n: &NewNode<'_>) -> Result<()> {
    tx.execute(
        "INSERT INTO nodes (name, kind, address, labels, joined_at, host_key, host_cert_expiry, identity_serial, egress, seen_from) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![n.name, n.kind.as_str(), n.address, n.labels, i(n.joined_at), n.host_key, i(n.host_cert_expiry), i(n.identity_serial), n.egress, n.seen_from],
    )?;
    Ok(())
}

/// Removes the node of that name; returns whether there was one.
pub fn remove(tx: &Tx<'_>, name: &str) -> Result<bool> {
    Ok(tx.execute("DELETE FROM nodes WHERE name = ?1", params![name])? > 0)
}

/// The kind of whatever has that name.
pub fn kind_of(tx: &Tx<'_>, name: &str) -> Result<Option<NodeKind>> {
    tx.query_opt(
        "SELECT kind FROM nodes WHERE name = ?1",
        params![name],
        |r| parsed(r, 0),
    )
}

/// What the node of that name's identity is checked against.
pub fn identity(tx: &Tx<'_>, name: &str) -> Result<Option<NodeIdentity>> {
    tx.query_opt(
        "SELECT labels, identity_serial, kind FROM nodes WHERE name = ?1",
        params![name],
        |r| {
            Ok(NodeIdentity {
                labels: r.get(0)?,
                identity_serial: u(r.get(1)?),
                kind: parsed(r, 2)?,
            })
        },
    )
}

/// The node was seen (a sync, a gateway's call).
pub fn touch(tx: &Tx<'_>, name: &str, now: u64) -> Result<()> {
    tx.execute(
        "UPDATE nodes SET last_sync = ?2 WHERE name = ?1",
        params![name, i(now)],
    )?;
    Ok(())
}

/// The host key the CA certified for the node (an error when there is no such node).
pub fn host_key(tx: &Tx<'_>, name: &str) -> Result<String> {
    tx.query_row(
        "SELECT host_key FROM nodes WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )
}

/// A renewed host certificate's end.
pub fn set_host_cert_expiry(tx: &Tx<'_>, name: &str, expiry: u64) -> Result<()> {
    tx.execute(
        "UPDATE nodes SET host_cert_expiry = ?2 WHERE name = ?1",
        params![name, i(expiry)],
    )?;
    Ok(())
}

/// The joined server (kind `node`) of that name.
pub fn server(tx: &Tx<'_>, name: &str) -> Result<Option<Server>> {
    tx.query_opt(
        "SELECT name, address, labels, host_key FROM nodes WHERE name = ?1 AND kind = 'node'",
        params![name],
        |r| {
            Ok(Server {
                name: r.get(0)?,
                address: r.get(1)?,
                labels: r.get(2)?,
                host_key: r.get(3)?,
            })
        },
    )
}

/// The labels of the joined server (kind `node`) of that name.
pub fn server_labels(tx: &Tx<'_>, name: &str) -> Result<Option<String>> {
    tx.query_opt(
        "SELECT labels FROM nodes WHERE name = ?1 AND kind = 'node'",
        params![name],
        |r| r.get(0),
    )
}

/// The servers a gateway can route to (those with an address), by name.
pub fn routable_servers(tx: &Tx<'_>) -> Result<Vec<Server>> {
    let rows = tx.query_map(
        "SELECT name, address, labels, host_key FROM nodes WHERE kind = 'node' AND address IS NOT NULL ORDER BY name",
        params![], |r| {
            Ok(Server {
                name: r.get(0)?,
                address: Some(r.get(1)?),
                labels: r.get(2)?,
                host_key: r.get(3)?,
            })
        })?;
    Ok(rows)
}

/// Every gateway's addresses.
pub fn gateway_addresses(tx: &Tx<'_>) -> Result<Vec<GatewayAddresses>> {
    let rows = tx.query_map(
        "SELECT egress, seen_from FROM nodes WHERE kind = 'gateway'",
        params![],
        |r| {
            Ok(GatewayAddresses {
                egress: r.get(0)?,
                seen_from: r.get(1)?,
            })
        },
    )?;
    Ok(rows)
}

/// The egress addresses of the gateway of that name (`None`: none configured, or no such
/// gateway).
pub fn gateway_egress(tx: &Tx<'_>, name: &str) -> Result<Option<String>> {
    Ok(tx
        .query_opt(
            "SELECT egress FROM nodes WHERE name = ?1 AND kind = 'gateway'",
            params![name],
            |r| r.get(0),
        )?
        .flatten())
}

/// The authorized session of that id.
pub fn session(tx: &Tx<'_>, id: &str) -> Result<Option<GatewaySession>> {
    tx.query_opt(
        "SELECT id, gateway, \"user\", login, node, labels, first_authorized FROM gateway_sessions WHERE id = ?1",
        params![id],
        |r| {
            Ok(GatewaySession {
                id: r.get(0)?,
                gateway: r.get(1)?,
                user: r.get(2)?,
                login: r.get(3)?,
                node: r.get(4)?,
                labels: r.get(5)?,
                first_authorized: r.get(6)?,
            })
        },
    )
}

/// Records a session's first authorization, with the server's labels now (what
/// `view_recordings` judges its recordings by, whatever the server becomes later).
pub fn add_session(tx: &Tx<'_>, s: &GatewaySession) -> Result<()> {
    tx.execute(
        "INSERT INTO gateway_sessions (id, gateway, \"user\", login, node, first_authorized, labels) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![s.id, s.gateway, s.user, s.login, s.node, s.first_authorized, s.labels],
    )?;
    Ok(())
}
