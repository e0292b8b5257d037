//! The `recordings` table: its columns and rows, loading and listing, the labels a row's
//! visibility is judged by, and the insert of a stored recording with its audit event.

use anyhow::{anyhow, Result};
use postern_core::api::RecordingMeta;
use postern_core::{Labels, Login, Username};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;

use super::session::{snapshot_labels, Session};
use super::{i, u, MAX_LIST};
use crate::audit;

pub(super) fn meta_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<(RecordingMetaRow, String)> {
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
pub(super) struct RecordingMetaRow {
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
    pub(super) fn into_meta(self) -> Result<RecordingMeta> {
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

pub(super) const COLUMNS: &str =
    "id, user, login, node, gateway, started_at, ended_at, interrupted, bytes, sha256";

/// [`COLUMNS`] of `recordings r`.
pub(super) const R_COLUMNS: &str =
    "r.id, r.user, r.login, r.node, r.gateway, r.started_at, r.ended_at, r.interrupted, r.bytes, r.sha256";

/// The labels `view_recordings` judges a recording `r` by: the snapshot taken when it was
/// stored; for a row stored before snapshots existed, the server's labels now (only a server,
/// kind `node`, counts), or none when it left the inventory.
pub(super) const EFFECTIVE_LABELS: &str = "COALESCE(r.node_labels, (SELECT n.labels FROM nodes n WHERE n.name = r.node AND n.kind = 'node'), '')";

/// Labels as stored. The CA stores only labels that parse; anything else counts as none,
/// which only `"*" = "*"` selects.
pub(super) fn parse_labels(s: &str) -> Labels {
    s.parse().unwrap_or_default()
}

pub(super) fn load(c: &Connection, id: &str) -> Result<Option<(RecordingMeta, String)>> {
    let row = c
        .query_row(
            &format!("SELECT {COLUMNS} FROM recordings WHERE id = ?1"),
            [id],
            meta_of,
        )
        .optional()?;
    row.map(|(m, sha)| Ok((m.into_meta()?, sha))).transpose()
}

/// A stored recording and the labels its visibility is judged by.
pub(super) fn load_for_viewing(
    c: &Connection,
    id: &str,
) -> Result<Option<(RecordingMeta, Labels)>> {
    let row = c
        .query_row(
            &format!("SELECT {R_COLUMNS}, {EFFECTIVE_LABELS} FROM recordings r WHERE r.id = ?1"),
            [id],
            |r| Ok((meta_of(r)?, r.get::<_, String>(10)?)),
        )
        .optional()?;
    row.map(|((m, _), labels)| Ok((m.into_meta()?, parse_labels(&labels))))
        .transpose()
}

/// Recordings, newest first, optionally only of one user and/or one server.
pub(super) fn list(
    c: &Connection,
    user: Option<&str>,
    node: Option<&str>,
    limit: u32,
) -> Result<Vec<RecordingMeta>> {
    let mut st = c.prepare(&format!(
        "SELECT {COLUMNS} FROM recordings WHERE (?1 IS NULL OR user = ?1) AND (?2 IS NULL OR node = ?2) ORDER BY started_at DESC, id LIMIT ?3"
    ))?;
    let rows = st
        .query_map(params![user, node, limit.min(MAX_LIST)], meta_of)?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().map(|(m, _)| m.into_meta()).collect()
}

/// Inserts a stored recording's row (with its labels snapshot) and its audit event, and
/// forgets its partial upload. A row that exists already (a concurrent single-request upload
/// won) is answered instead.
pub(super) fn insert_stored(
    c: &Connection,
    meta: &RecordingMeta,
    sha: &str,
    session: &Session,
    upload: &str,
    now: u64,
) -> Result<RecordingMeta> {
    let labels = snapshot_labels(c, session)?;
    let n = c.execute(
        "INSERT OR IGNORE INTO recordings (id, user, login, node, gateway, started_at, ended_at, interrupted, bytes, sha256, stored_at, node_labels, authorized_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            meta.id.as_str(), meta.user.as_str(), meta.login.as_str(), meta.node.as_str(), meta.gateway,
            i(meta.started_at), i(meta.ended_at), meta.interrupted, i(meta.bytes), sha, i(now),
            labels, session.first_authorized,
        ],
    )?;
    c.execute(
        "DELETE FROM recording_uploads WHERE id = ?1",
        [meta.id.as_str()],
    )?;
    if n == 0 {
        return load(c, &meta.id)?
            .map(|(m, _)| m)
            .ok_or_else(|| anyhow!("recording row vanished"));
    }
    audit::append(
        c,
        now,
        "recording.stored",
        &format!("gateway:{}", meta.gateway),
        json!({
            "id": meta.id, "user": meta.user.as_str(), "login": meta.login.as_str(),
            "node": meta.node.as_str(), "started_at": meta.started_at, "ended_at": meta.ended_at,
            "interrupted": meta.interrupted, "bytes": meta.bytes, "sha256": sha,
            "authorized_session": true, "session": session.id, "labels": labels,
            "upload": upload,
        }),
    )?;
    Ok(meta.clone())
}
