//! Stored recordings (`recordings`), the labels their visibility is judged by, and the
//! uploads in progress (`recording_uploads`).

use std::collections::HashSet;

use anyhow::Result;
use postern_core::api::RecordingMeta;
use postern_core::{Labels, Login, Username};

use super::{i, u, Row, Tx};

const COLUMNS: &str =
    "id, \"user\", login, node, gateway, started_at, ended_at, interrupted, bytes, sha256";

/// [`COLUMNS`] of `recordings r`.
const R_COLUMNS: &str =
    "r.id, r.\"user\", r.login, r.node, r.gateway, r.started_at, r.ended_at, r.interrupted, r.bytes, r.sha256";

/// The labels `view_recordings` judges a recording `r` by: the snapshot taken when it was
/// stored; for a row stored before snapshots existed, the server's labels now (only a server,
/// kind `node`, counts), or none when it left the inventory.
const EFFECTIVE_LABELS: &str = "COALESCE(r.node_labels, (SELECT n.labels FROM nodes n WHERE n.name = r.node AND n.kind = 'node'), '')";

/// A user's own recordings are of sessions of that name authorized since the user record was
/// made (both the CA's clock): a name removed and added again is a new user. `?ME` is the
/// user's parameter.
const OWN: &str =
    "r.\"user\" = ?ME AND COALESCE(r.authorized_at, r.started_at) >= (SELECT created_at FROM users WHERE name = ?ME)";

fn meta_of(r: &Row<'_>) -> Result<(RecordingMetaRow, String)> {
    Ok((
        RecordingMetaRow {
            id: r.get(0)?,
            user: r.get(1)?,
            login: r.get(2)?,
            node: r.get(3)?,
            gateway: r.get(4)?,
            started_at: r.get(5)?,
            ended_at: r.get(6)?,
            interrupted: r.get(7)?,
            bytes: r.get(8)?,
        },
        r.get(9)?,
    ))
}

/// A row as stored, before its names are parsed back into their types.
struct RecordingMetaRow {
    id: String,
    user: String,
    login: String,
    node: String,
    gateway: String,
    started_at: i64,
    ended_at: i64,
    interrupted: bool,
    bytes: i64,
}

impl RecordingMetaRow {
    fn into_meta(self) -> Result<RecordingMeta> {
        Ok(RecordingMeta {
            id: self.id.parse()?,
            user: self.user.parse::<Username>()?,
            login: self.login.parse::<Login>()?,
            node: postern_core::names::parse_node_name(&self.node)?,
            gateway: self.gateway,
            started_at: u(self.started_at),
            ended_at: u(self.ended_at),
            interrupted: self.interrupted,
            bytes: u(self.bytes),
        })
    }
}

/// Labels as stored. The CA stores only labels that parse; anything else counts as none,
/// which only `"*" = "*"` selects.
pub fn parse_labels(s: &str) -> Labels {
    s.parse().unwrap_or_default()
}

/// The stored recording of that id and its SHA-256.
pub fn load(tx: &Tx<'_>, id: &str) -> Result<Option<(RecordingMeta, String)>> {
    let row = tx.query_opt(
        &format!("SELECT {COLUMNS} FROM recordings WHERE id = ?1"),
        params![id],
        meta_of,
    )?;
    row.map(|(m, sha)| Ok((m.into_meta()?, sha))).transpose()
}

/// A stored recording and the labels its visibility is judged by.
pub fn load_for_viewing(tx: &Tx<'_>, id: &str) -> Result<Option<(RecordingMeta, Labels)>> {
    let row = tx.query_opt(
        &format!("SELECT {R_COLUMNS}, {EFFECTIVE_LABELS} FROM recordings r WHERE r.id = ?1"),
        params![id],
        |r| Ok((meta_of(r)?, r.get::<String>(10)?)),
    )?;
    row.map(|((m, _), labels)| Ok((m.into_meta()?, parse_labels(&labels))))
        .transpose()
}

/// Recordings, newest first, optionally only of one user and/or one server.
pub fn list(
    tx: &Tx<'_>,
    user: Option<&str>,
    node: Option<&str>,
    limit: u32,
) -> Result<Vec<RecordingMeta>> {
    let rows = tx.query_map(&format!(
        "SELECT {COLUMNS} FROM recordings WHERE (CAST(?1 AS TEXT) IS NULL OR \"user\" = ?1) AND (CAST(?2 AS TEXT) IS NULL OR node = ?2) ORDER BY started_at DESC, id LIMIT ?3"
    ), params![user, node, limit], meta_of)?;
    rows.into_iter().map(|(m, _)| m.into_meta()).collect()
}

/// Every distinct label set (as stored) that recordings are judged by.
pub fn distinct_labels(tx: &Tx<'_>) -> Result<Vec<String>> {
    let all = tx.query_map(
        &format!("SELECT DISTINCT {EFFECTIVE_LABELS} FROM recordings r"),
        params![],
        |r| r.get::<String>(0),
    )?;
    Ok(all)
}

/// Whether recording `id` is `me`'s own (see [`OWN`]).
pub fn is_own(tx: &Tx<'_>, me: &Username, id: &str) -> Result<bool> {
    Ok(tx
        .query_opt(
            &format!(
                "SELECT 1 FROM recordings r WHERE r.id = ?1 AND {}",
                OWN.replace("?ME", "?2")
            ),
            params![id, me.as_str()],
            |_| Ok(()),
        )?
        .is_some())
}

/// The recordings `me` may see, newest first: their own, and others' whose labels (as stored)
/// are among `labels`; optionally only of one user and/or one server.
pub fn list_visible(
    tx: &Tx<'_>,
    me: &Username,
    labels: &[String],
    user: Option<&str>,
    node: Option<&str>,
    limit: u32,
) -> Result<Vec<RecordingMeta>> {
    let labels = serde_json::to_string(labels)?;
    let rows = tx.query_map(
        &format!(
            "SELECT {R_COLUMNS} FROM recordings r \
             WHERE (CAST(?1 AS TEXT) IS NULL OR r.\"user\" = ?1) AND (CAST(?2 AS TEXT) IS NULL OR r.node = ?2) \
             AND (({}) \
                  OR {EFFECTIVE_LABELS} IN (SELECT value FROM {})) \
             ORDER BY r.started_at DESC, r.id LIMIT ?5",
            OWN.replace("?ME", "?3"),
            tx.json_strings("?4"),
        ),
        params![user, node, me.as_str(), &labels, limit],
        meta_of,
    )?;
    rows.into_iter().map(|(m, _)| m.into_meta()).collect()
}

/// Inserts a stored recording's row with the labels it is judged by and when its session was
/// authorized, unless a row of that id exists; returns whether it inserted.
pub fn insert(
    tx: &Tx<'_>,
    meta: &RecordingMeta,
    sha: &str,
    labels: &str,
    authorized_at: i64,
    now: u64,
) -> Result<bool> {
    let n = tx.execute(
        "INSERT INTO recordings (id, \"user\", login, node, gateway, started_at, ended_at, interrupted, bytes, sha256, stored_at, node_labels, authorized_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) ON CONFLICT DO NOTHING",
        params![
            meta.id.as_str(), meta.user.as_str(), meta.login.as_str(), meta.node.as_str(), meta.gateway,
            i(meta.started_at), i(meta.ended_at), meta.interrupted, i(meta.bytes), sha, i(now),
            labels, authorized_at,
        ],
    )?;
    Ok(n > 0)
}

/// The upload of `id` in progress: its gateway and the durable length received.
pub fn upload(tx: &Tx<'_>, id: &str) -> Result<Option<(String, u64)>> {
    let row: Option<(String, i64)> = tx.query_opt(
        "SELECT gateway, received FROM recording_uploads WHERE id = ?1",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(row.map(|(g, r)| (g, u(r))))
}

/// The bytes `gateway`'s other unfinished uploads hold.
pub fn others_received(tx: &Tx<'_>, gateway: &str, id: &str) -> Result<u64> {
    let n: i64 = tx.query_row(
        "SELECT CAST(COALESCE(SUM(received), 0) AS BIGINT) FROM recording_uploads WHERE gateway = ?1 AND id != ?2",
        params![gateway, id],
        |r| r.get(0),
    )?;
    Ok(u(n))
}

/// The durable length of `id`'s upload is now `received` (the upload starts with it).
pub fn set_received(tx: &Tx<'_>, id: &str, gateway: &str, received: u64, now: u64) -> Result<()> {
    tx.execute(
        "INSERT INTO recording_uploads (id, gateway, received, started_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4) \
         ON CONFLICT(id) DO UPDATE SET received = excluded.received, updated_at = excluded.updated_at",
        params![id, gateway, i(received), i(now)],
    )?;
    Ok(())
}

/// Forgets `id`'s upload (stored, or discarded).
pub fn forget_upload(tx: &Tx<'_>, id: &str) -> Result<()> {
    tx.execute("DELETE FROM recording_uploads WHERE id = ?1", params![id])?;
    Ok(())
}

/// An upload no chunk touched for a while.
pub struct StaleUpload {
    /// The recording id.
    pub id: String,
    /// The gateway uploading it.
    pub gateway: String,
    /// The bytes received.
    pub received: u64,
    /// When a chunk last came.
    pub updated_at: u64,
}

/// The uploads last updated before `cutoff`, by id.
pub fn stale_uploads(tx: &Tx<'_>, cutoff: u64) -> Result<Vec<StaleUpload>> {
    let rows = tx.query_map(
        "SELECT id, gateway, received, updated_at FROM recording_uploads WHERE updated_at < ?1 ORDER BY id",
        params![i(cutoff)], |r| {
            Ok(StaleUpload {
                id: r.get(0)?,
                gateway: r.get(1)?,
                received: u(r.get(2)?),
                updated_at: u(r.get(3)?),
            })
        })?;
    Ok(rows)
}

/// Forgets `id`'s upload if it is still last updated before `cutoff`; returns whether it did.
pub fn forget_stale_upload(tx: &Tx<'_>, id: &str, cutoff: u64) -> Result<bool> {
    Ok(tx.execute(
        "DELETE FROM recording_uploads WHERE id = ?1 AND updated_at < ?2",
        params![id, i(cutoff)],
    )? > 0)
}

/// The ids of every upload in progress.
pub fn upload_ids(tx: &Tx<'_>) -> Result<HashSet<String>> {
    let ids = tx.query_map("SELECT id FROM recording_uploads", params![], |r| r.get(0))?;
    Ok(ids.into_iter().collect())
}
