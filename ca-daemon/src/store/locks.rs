//! Locks on users, logins and servers.

use anyhow::Result;
use postern_core::api::LockEntry;

use super::{i, u, Tx};

/// Active locks at `now`, oldest first.
pub fn active(tx: &Tx<'_>, now: u64) -> Result<Vec<LockEntry>> {
    tx.query_map(
        "SELECT id, target, name, expires, reason FROM locks WHERE expires IS NULL OR expires > ?1 ORDER BY id",
        params![i(now)],
        |r| {
            Ok(LockEntry {
                id: r.get(0)?,
                target: postern_core::LockTarget::parse(&r.get::<String>(1)?),
                name: r.get(2)?,
                expires: r.get::<Option<i64>>(3)?.map(u),
                reason: r.get(4)?,
            })
        },
    )
}

/// A new lock; returns its id.
pub fn add(
    tx: &Tx<'_>,
    target: &str,
    name: &str,
    reason: &str,
    now: u64,
    expires: Option<u64>,
    created_by: &str,
) -> Result<i64> {
    tx.query_row(
        "INSERT INTO locks (target, name, reason, created_at, expires, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
        params![target, name, reason, i(now), expires.map(i), created_by],
        |r| r.get(0),
    )
}

/// Removes lock `id`; returns whether it existed.
pub fn remove(tx: &Tx<'_>, id: i64) -> Result<bool> {
    Ok(tx.execute("DELETE FROM locks WHERE id = ?1", params![id])? > 0)
}
