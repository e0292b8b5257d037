//! The audit chain's tables: events, the head, the signed checkpoints, and the event ids of
//! gateways' events already audited. The chain's rules (hashing, signing, verifying) are in
//! `crate::audit`.

use anyhow::Result;
use postern_core::api::AuditCheckpoint;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Tx;

/// An event as stored, with the checkpoint row of its seq (if any).
pub struct StoredEvent {
    /// Sequence number, from 1.
    pub seq: i64,
    /// Unix time.
    pub ts: i64,
    /// Event kind.
    pub kind: String,
    /// Who caused it.
    pub actor: String,
    /// Details, as stored (JSON text).
    pub detail: String,
    /// The previous event's hash, as stored.
    pub prev_hash: String,
    /// This event's hash, as stored.
    pub hash: String,
    /// The checkpoint row's hash.
    pub cp_hash: Option<String>,
    /// The checkpoint row's signature.
    pub cp_sig: Option<String>,
}

/// The head: the newest event's seq and hash.
pub fn head(tx: &Tx<'_>) -> Result<Option<(i64, String)>> {
    if let Some(h) = tx.written_audit_head() {
        return Ok(Some(h));
    }
    tx.query_opt(
        "SELECT seq, hash FROM audit_head WHERE id = 1",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Appends an event (its hash computed by the caller), moves the head to it and records its
/// checkpoint (`seq`, `hash`, `sig`), in one round trip on PostgreSQL. The checkpoint is a
/// plain insert: a row already there for a new event means the database was written behind
/// the daemon's back, and this fails rather than hide it.
pub fn insert_event_with_checkpoint(
    tx: &Tx<'_>,
    e: &StoredEvent,
    cp_hash: &str,
    sig: &str,
) -> Result<()> {
    tx.execute_all(&[
        (
            "INSERT INTO audit (seq, ts, kind, actor, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![e.seq, e.ts, e.kind, e.actor, e.detail, e.prev_hash, e.hash],
        ),
        (
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            params![e.seq, e.hash],
        ),
        (
            "INSERT INTO audit_checkpoints (seq, hash, sig) VALUES (?1, ?2, ?3)",
            params![e.seq, cp_hash, sig],
        ),
    ])?;
    tx.wrote_audit_head(e.seq, &e.hash);
    Ok(())
}

/// Appends an event (its hash computed by the caller) and moves the head to it, without a
/// checkpoint (for tests that build a chain row by row).
#[cfg(test)]
pub fn insert_event(tx: &Tx<'_>, e: &StoredEvent) -> Result<()> {
    tx.execute_all(&[
        (
            "INSERT INTO audit (seq, ts, kind, actor, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![e.seq, e.ts, e.kind, e.actor, e.detail, e.prev_hash, e.hash],
        ),
        (
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            params![e.seq, e.hash],
        ),
    ])?;
    Ok(())
}

/// Records a new event's checkpoint. A plain insert: a row already there for a new event
/// means the database was written behind the daemon's back, and this fails rather than hide
/// it.
#[cfg(test)]
pub fn insert_checkpoint(tx: &Tx<'_>, seq: i64, hash: &str, sig: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO audit_checkpoints (seq, hash, sig) VALUES (?1, ?2, ?3)",
        params![seq, hash, sig],
    )?;
    Ok(())
}

/// Records an existing event's checkpoint, replacing the row there.
pub fn replace_checkpoint(tx: &Tx<'_>, seq: i64, hash: &str, sig: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO audit_checkpoints (seq, hash, sig) VALUES (?1, ?2, ?3) ON CONFLICT(seq) DO UPDATE SET hash = excluded.hash, sig = excluded.sig",
        params![seq, hash, sig],
    )?;
    Ok(())
}

/// An event's seq and hash with its checkpoint row's hash and signature, if it has one.
pub struct HashRow {
    /// The event's sequence number.
    pub seq: i64,
    /// The event's chained hash.
    pub hash: String,
    /// The hash its checkpoint row signs.
    pub cp_hash: Option<String>,
    /// The checkpoint's signature.
    pub cp_sig: Option<String>,
}

/// Every event's seq and hash with its checkpoint row's hash and signature, by seq.
pub fn hashes_with_checkpoints(tx: &Tx<'_>) -> Result<Vec<HashRow>> {
    let rows = tx.query_map(
        "SELECT a.seq, a.hash, c.hash, c.sig FROM audit a LEFT JOIN audit_checkpoints c ON c.seq = a.seq ORDER BY a.seq",
        params![], |r| {
            Ok(HashRow {
                seq: r.get(0)?,
                hash: r.get(1)?,
                cp_hash: r.get(2)?,
                cp_sig: r.get(3)?,
            })
        })?;
    Ok(rows)
}

/// Calls `f` with every event and its checkpoint row, by seq, one at a time (the log may be
/// long); stops at the first error.
pub fn for_each_event(tx: &Tx<'_>, mut f: impl FnMut(StoredEvent) -> Result<()>) -> Result<()> {
    // Pages by seq, so that neither backend holds the whole log in memory.
    const PAGE: i64 = 2048;
    let mut after = 0i64;
    loop {
        let page = tx.query_map(
            "SELECT a.seq, a.ts, a.kind, a.actor, a.detail, a.prev_hash, a.hash, c.hash, c.sig FROM audit a LEFT JOIN audit_checkpoints c ON c.seq = a.seq WHERE a.seq > ?1 ORDER BY a.seq LIMIT ?2",
            params![after, PAGE],
            |r| {
                Ok(StoredEvent {
                    seq: r.get(0)?,
                    ts: r.get(1)?,
                    kind: r.get(2)?,
                    actor: r.get(3)?,
                    detail: r.get(4)?,
                    prev_hash: r.get(5)?,
                    hash: r.get(6)?,
                    cp_hash: r.get(7)?,
                    cp_sig: r.get(8)?,
                })
            },
        )?;
        let full = page.len() as i64 == PAGE;
        for e in page {
            after = e.seq;
            f(e)?;
        }
        if !full {
            return Ok(());
        }
    }
}

/// One event as shown by `audit tail`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Sequence number, from 1.
    pub seq: i64,
    /// Unix time.
    pub ts: i64,
    /// Event kind (`login.success`, `cert.issued`, ...).
    pub kind: String,
    /// Who caused it.
    pub actor: String,
    /// Details.
    pub detail: Value,
}

/// The last `n` events, oldest first.
pub fn tail(tx: &Tx<'_>, n: u32) -> Result<Vec<Event>> {
    tx.query_map(
        "SELECT seq, ts, kind, actor, detail FROM (SELECT * FROM audit ORDER BY seq DESC LIMIT ?1) AS newest ORDER BY seq",
        params![n],
        |r| {
            let detail: String = r.get(4)?;
            Ok(Event {
                seq: r.get(0)?,
                ts: r.get(1)?,
                kind: r.get(2)?,
                actor: r.get(3)?,
                detail: serde_json::from_str(&detail).unwrap_or(Value::String(detail)),
            })
        },
    )
}

/// The stored hash and kind of event `seq`.
pub fn hash_and_kind(tx: &Tx<'_>, seq: i64) -> Result<Option<(String, String)>> {
    tx.query_opt(
        "SELECT hash, kind FROM audit WHERE seq = ?1",
        params![seq],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// The checkpoint of the newest event, as the database holds it (unchecked).
pub fn newest_checkpoint(tx: &Tx<'_>) -> Result<Option<AuditCheckpoint>> {
    let row: Option<(i64, String, String)> = tx.query_opt(
        "SELECT seq, hash, sig FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    row.map(to_checkpoint).transpose()
}

/// The checkpoint rows after `seq` (of events gone from the end of the log).
pub fn checkpoints_after(tx: &Tx<'_>, seq: i64) -> Result<Vec<AuditCheckpoint>> {
    let rows = tx.query_map(
        "SELECT seq, hash, sig FROM audit_checkpoints WHERE seq > ?1",
        params![seq],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    rows.into_iter().map(to_checkpoint).collect()
}

/// Whether this is the first report of event `event_id` by `gateway` (remembered from now
/// on).
pub fn first_report(tx: &Tx<'_>, gateway: &str, event_id: &str, now: u64) -> Result<bool> {
    let n = tx.execute(
        "INSERT INTO gateway_event_ids (gateway, event_id, received) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        params![gateway, event_id, i64::try_from(now)?],
    )?;
    Ok(n == 1)
}

/// A checkpoint row as [`AuditCheckpoint`] (an error for a negative seq).
fn to_checkpoint((seq, hash, sig): (i64, String, String)) -> Result<AuditCheckpoint> {
    Ok(AuditCheckpoint {
        seq: u64::try_from(seq)?,
        hash,
        sig,
    })
}
