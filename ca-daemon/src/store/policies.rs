//! The policy's versions, on a database that several instances share (`policies`, PostgreSQL
//! only: one instance on SQLite keeps its policy in its file).

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::Tx;

/// One version of the policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyVersion {
    /// From 1, one more per `policy apply`.
    pub version: i64,
    /// SHA-256 of the text, hex.
    pub sha256: String,
    /// Unix time it was applied.
    pub applied_at: i64,
    /// Who applied it.
    pub applied_by: String,
}

/// The newest version's number, if there is one.
pub fn newest_version(tx: &Tx<'_>) -> Result<Option<i64>> {
    tx.query_row("SELECT MAX(version) FROM policies", params![], |r| r.get(0))
}

/// A version's text (the newest with `None`).
pub fn text(tx: &Tx<'_>, version: Option<i64>) -> Result<Option<(PolicyVersion, String)>> {
    let map = |r: &super::Row<'_>| {
        Ok((
            PolicyVersion {
                version: r.get(0)?,
                sha256: r.get(1)?,
                applied_at: r.get(2)?,
                applied_by: r.get(3)?,
            },
            r.get(4)?,
        ))
    };
    match version {
        Some(v) => tx.query_opt(
            "SELECT version, sha256, applied_at, applied_by, text FROM policies WHERE version = ?1",
            params![v],
            map,
        ),
        None => tx.query_opt(
            "SELECT version, sha256, applied_at, applied_by, text FROM policies ORDER BY version DESC LIMIT 1",
            params![],
            map,
        ),
    }
}

/// Records a new version.
pub fn insert(tx: &Tx<'_>, v: &PolicyVersion, text: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO policies (version, text, sha256, applied_at, applied_by) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![v.version, text, v.sha256, v.applied_at, v.applied_by],
    )?;
    Ok(())
}

/// Every version, newest first.
pub fn history(tx: &Tx<'_>) -> Result<Vec<PolicyVersion>> {
    tx.query_map(
        "SELECT version, sha256, applied_at, applied_by FROM policies ORDER BY version DESC",
        params![],
        |r| {
            Ok(PolicyVersion {
                version: r.get(0)?,
                sha256: r.get(1)?,
                applied_at: r.get(2)?,
                applied_by: r.get(3)?,
            })
        },
    )
}
