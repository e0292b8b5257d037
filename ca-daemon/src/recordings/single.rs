//! The single-request upload of gateways before resumable uploads (`POST
//! /v1/gateway/recordings`, at most [`MAX_RECORDING_BYTES`]).

use crate::committed::Committed;
use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use postern_core::api::{RecordingMeta, RecordingUpload};
use postern_core::NodeName;
use sha2::{Digest, Sha256};
use tokio::sync::OwnedSemaphorePermit;

use super::check::check_upload;
use super::claim::detached;
use super::files::{file_of, partial_of, place_file, remove_partial, sha256_of_path, Placed};
use super::session::{session_matches, Session};
use super::stored::insert_stored;
#[cfg(doc)]
use super::MAX_RECORDING_BYTES;
use super::{blocking, Outcome};
use crate::db::Db;
use crate::service::{now, Refusal, Service};
use crate::store::recordings::load;

/// The single-request upload, under its claim: see [`Service::recording_store`].
async fn store_single(
    db: Db,
    data_dir: PathBuf,
    mut meta: RecordingMeta,
    cast: String,
    now: u64,
) -> Outcome<RecordingMeta> {
    // A retried upload answers with what is stored and touches nothing.
    let m2 = meta.clone();
    let session = db
        .run(
            move |c| -> Result<Committed<std::result::Result<Session, RecordingMeta>>> {
                if let Some((stored, _)) = load(c, &m2.id)? {
                    if stored.gateway != m2.gateway {
                        return Ok(Committed::Refused(Refusal::Conflict(format!(
                            "recording {} was stored by another gateway",
                            m2.id
                        ))));
                    }
                    return Ok(Committed::Done(Err(stored)));
                }
                Ok(session_matches(c, &m2, &m2.gateway)?.map(Ok))
            },
        )
        .await?
        .into_result()?;
    let session = match session {
        Ok(s) => s,
        Err(stored) => return Ok(stored),
    };

    let path = file_of(&data_dir, &meta.id);
    let (sha, placed) = {
        let path = path.clone();
        blocking(move || -> Result<(String, Placed)> {
            let placed = place_file(&path, cast.as_bytes())?;
            let sha = match placed {
                Placed::Created => hex::encode(Sha256::digest(cast.as_bytes())),
                // Left by an upload that crashed before its row was written, or by a
                // completion of a resumable upload: that file stays, and the row describes it.
                Placed::Existed => sha256_of_path(&path)?,
            };
            Ok((sha, placed))
        })
        .await?
    };
    if placed == Placed::Existed {
        meta.bytes = fs::metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
    }
    let id = meta.id.clone();
    let stored = db
        .run(move |c| insert_stored(c, &meta, &sha, &session, "single", now))
        .await?;
    // A resumable upload of the same recording, if one was begun, is moot now.
    let partial = partial_of(&data_dir, &id);
    blocking(move || remove_partial(&partial)).await?;
    Ok(stored)
}

impl Service {
    /// `POST /v1/gateway/recordings`: stores one finished recording sent in one request,
    /// idempotently by id (gateways before resumable uploads), for an authorized session.
    /// `slot` is the upload slot the body was read under; it is held until the work ends.
    pub async fn recording_store(
        &self,
        gateway: NodeName,
        up: RecordingUpload,
        slot: OwnedSemaphorePermit,
    ) -> Outcome<RecordingMeta> {
        check_upload(&up)?;
        if up.meta.bytes > self.recordings.max_bytes {
            return Err(self.recordings.too_large(&up.meta.id, up.meta.bytes));
        }
        let RecordingUpload { mut meta, cast } = up;
        meta.gateway = gateway.to_string();
        let claim = self.recordings.claim(&meta.id)?;
        let (db, data_dir, now) = (self.db.clone(), self.recordings_dir.clone(), now());
        detached(async move {
            let _held = (claim, slot);
            store_single(db, data_dir, meta, cast, now).await
        })
        .await
    }
}
