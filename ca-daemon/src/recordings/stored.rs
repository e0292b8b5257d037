//! The insert of a stored recording: its row with the labels it is judged by from now on,
//! its audit event, and the end of its partial upload.

use anyhow::{anyhow, Result};
use postern_core::api::RecordingMeta;
use serde_json::json;

use super::session::{snapshot_labels, Session};
use crate::audit;
use crate::store::{self, Tx};

/// Inserts a stored recording's row (with its labels snapshot) and its audit event, and
/// forgets its partial upload. A row that exists already (a concurrent single-request upload
/// won) is answered instead.
pub(super) fn insert_stored(
    c: &Tx<'_>,
    meta: &RecordingMeta,
    sha: &str,
    session: &Session,
    upload: &str,
    now: u64,
) -> Result<RecordingMeta> {
    let labels = snapshot_labels(c, session)?;
    let inserted = store::recordings::insert(c, meta, sha, &labels, session.first_authorized, now)?;
    store::recordings::forget_upload(c, &meta.id)?;
    if !inserted {
        return store::recordings::load(c, &meta.id)?
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
