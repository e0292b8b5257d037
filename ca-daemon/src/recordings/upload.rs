//! The resumable upload protocol (`GET /v1/gateway/recordings/ID`, `PUT .../chunks?offset=N`,
//! `POST .../complete`): where an upload stands, chunks at the durable length, completion.

use crate::committed::Committed;
use std::fs;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use postern_core::api::{RecordingComplete, RecordingMeta, RecordingUploadStatus};
use postern_core::NodeName;
use tokio::sync::OwnedSemaphorePermit;

use super::check::{bad_id, check_meta, valid_sha256};
use super::claim::detached;
use super::files::{file_of, partial_of};
use super::partial::{beyond, finish_partial, incomplete, write_chunk, Finished};
use super::session::{session_matches, upload_state, Session, UploadState};
use super::stored::insert_stored;
use super::{blocking, Outcome, PARTIAL_UPLOADS_PER_GATEWAY, STALE_UPLOAD_SECS};
use crate::db::Db;
use crate::gateway::valid_session_id;
use crate::service::{now, Refusal, Service};
use crate::store;
use postern_core::RecordingId;

/// One chunk, under its claim: see [`Service::recording_chunk`]. Answers the durable length.
async fn append_chunk(
    db: Db,
    data_dir: PathBuf,
    cap: u64,
    gateway: String,
    id: String,
    offset: u64,
    bytes: axum::body::Bytes,
) -> Outcome<u64> {
    let (i2, gw) = (id.clone(), gateway.clone());
    let (state, others) = db
        .run(move |c| -> Result<Committed<(UploadState, u64)>> {
            let state = match upload_state(c, &i2, &gw)? {
                Committed::Done(s) => s,
                Committed::Refused(r) => return Ok(Committed::Refused(r)),
            };
            let others = store::recordings::others_received(c, &gw, &i2)?;
            Ok(Committed::Done((state, others)))
        })
        .await?
        .into_result()?;
    let (fresh, recorded) = match state {
        UploadState::Complete { .. } => {
            return Err(Refusal::Conflict(format!(
                "recording {id} is already complete; nothing more is accepted for it"
            )))
        }
        UploadState::Absent => (true, 0),
        UploadState::Partial { received } => (false, received),
    };
    if offset > recorded {
        return Err(beyond(&id, offset, recorded));
    }
    let end = offset.saturating_add(bytes.len() as u64);
    let held = others.saturating_add(end.max(recorded));
    if end > recorded && held > cap {
        return Err(Refusal::InsufficientStorage(format!(
            "gateway {gateway} would hold {held} bytes of unfinished recording uploads on this CA, more than its {cap} ({PARTIAL_UPLOADS_PER_GATEWAY} x [recordings] max_bytes); recording {id} keeps the {recorded} bytes received: retry once other uploads are complete (uploads untouched for {} days are removed)",
            STALE_UPLOAD_SECS / 86_400
        )));
    }
    let path = partial_of(&data_dir, &id);
    let i2 = id.clone();
    let received =
        blocking(move || write_chunk(&path, &i2, fresh, recorded, offset, &bytes)).await??;
    let now = now();
    db.run(move |c| store::recordings::set_received(c, &id, &gateway, received, now))
        .await?;
    Ok(received)
}

/// A completion, under its claim: see [`Service::recording_complete`].
async fn complete_upload(
    db: Db,
    data_dir: PathBuf,
    meta: RecordingMeta,
    sha256: String,
) -> Outcome<RecordingMeta> {
    let id = meta.id.clone();
    let m2 = meta.clone();
    let state = db
        .run(
            move |c| -> Result<Committed<(UploadState, Option<Session>)>> {
                let state = match upload_state(c, &m2.id, &m2.gateway)? {
                    Committed::Done(s) => s,
                    Committed::Refused(r) => return Ok(Committed::Refused(r)),
                };
                if matches!(state, UploadState::Complete { .. }) {
                    return Ok(Committed::Done((state, None)));
                }
                Ok(session_matches(c, &m2, &m2.gateway)?.map(|s| (state, Some(s))))
            },
        )
        .await?
        .into_result()?;
    let (recorded, session) = match state {
        (
            UploadState::Complete {
                meta: stored,
                sha256: stored_sha,
            },
            _,
        ) => {
            // Completing again is answered with what is stored; other content is refused.
            return if stored_sha == sha256 {
                Ok(stored)
            } else {
                Err(Refusal::Conflict(format!(
                    "recording {id} is already stored with other content (sha256 {stored_sha}); a recording is never replaced"
                )))
            };
        }
        (UploadState::Absent, _) => return Err(incomplete(&id, 0, meta.bytes)),
        (UploadState::Partial { received }, Some(s)) => (received, s),
        (UploadState::Partial { .. }, None) => {
            return Err(Refusal::Internal(anyhow!(
                "no session for a partial upload"
            )))
        }
    };
    let partial = partial_of(&data_dir, &id);
    let final_path = file_of(&data_dir, &id);
    let (i2, s2, bytes) = (id.clone(), sha256.clone(), meta.bytes);
    let finished =
        blocking(move || finish_partial(&partial, &final_path, &i2, recorded, bytes, &s2)).await?;
    match finished {
        Finished::Linked => {}
        Finished::Refused(r) => return Err(r),
        Finished::Discarded(r) => {
            db.run(move |c| store::recordings::forget_upload(c, &id))
                .await?;
            return Err(r);
        }
    }
    let now = now();
    Ok(db
        .run(move |c| insert_stored(c, &meta, &sha256, &session, "chunked", now))
        .await?)
}

impl Service {
    /// `GET /v1/gateway/recordings/ID`: where the upload of a recording stands.
    pub async fn recording_upload_status(
        &self,
        gateway: NodeName,
        id: String,
    ) -> Outcome<RecordingUploadStatus> {
        let Ok(rid) = id.parse::<RecordingId>() else {
            return Err(bad_id());
        };
        let (i2, gw) = (id.clone(), gateway.to_string());
        let state = self
            .db
            .run(move |c| upload_state(c, &i2, &gw))
            .await?
            .into_result()?;
        let received = match state {
            UploadState::Complete { meta, .. } => {
                return Ok(self.recordings.status(&rid, meta.bytes, true));
            }
            UploadState::Absent => 0,
            UploadState::Partial { received } => {
                let path = partial_of(&self.recordings_dir, &id);
                // What the next chunk will trust: never more than the file holds.
                let len = match fs::symlink_metadata(&path) {
                    Ok(md) if md.is_file() => md.len(),
                    _ => 0,
                };
                received.min(len)
            }
        };
        Ok(self.recordings.status(&rid, received, false))
    }

    /// `PUT /v1/gateway/recordings/ID/chunks?offset=N`: appends a chunk to a partial upload
    /// of an authorized session (see [`RecordingUploadStatus`] for the rules). `slot` is the
    /// upload slot the chunk was read under; it is held until the work ends.
    pub async fn recording_chunk(
        &self,
        gateway: NodeName,
        id: String,
        offset: u64,
        bytes: axum::body::Bytes,
        slot: OwnedSemaphorePermit,
    ) -> Outcome<RecordingUploadStatus> {
        let Ok(rid) = id.parse::<RecordingId>() else {
            return Err(bad_id());
        };
        let store = &self.recordings;
        if bytes.is_empty() {
            return Err(Refusal::BadRequest("a chunk must not be empty".into()));
        }
        if bytes.len() as u64 > store.chunk_bytes {
            return Err(Refusal::TooLarge(format!(
                "a chunk is at most {} bytes ([recordings] chunk_bytes)",
                store.chunk_bytes
            )));
        }
        let end = offset
            .checked_add(bytes.len() as u64)
            .ok_or_else(|| Refusal::BadRequest(format!("offset {offset} is out of range")))?;
        if end > store.max_bytes {
            return Err(store.too_large(&id, end));
        }
        let claim = store.claim(&id)?;
        let (db, data_dir, cap) = (
            self.db.clone(),
            self.recordings_dir.clone(),
            store.partial_cap(),
        );
        let (i2, gw) = (id.clone(), gateway.to_string());
        let received = detached(async move {
            let _held = (claim, slot);
            append_chunk(db, data_dir, cap, gw, i2, offset, bytes).await
        })
        .await?;
        Ok(store.status(&rid, received, false))
    }

    /// `POST /v1/gateway/recordings/ID/complete`: checks the size and SHA-256 of a partial
    /// upload and makes it a stored recording of its authorized session, atomically and
    /// idempotently.
    pub async fn recording_complete(
        &self,
        gateway: NodeName,
        id: String,
        req: RecordingComplete,
    ) -> Outcome<RecordingMeta> {
        if !valid_session_id(&id) {
            return Err(bad_id());
        }
        let RecordingComplete { mut meta, sha256 } = req;
        if meta.id.as_str() != id {
            return Err(Refusal::BadRequest(format!(
                "meta.id {:?} is not the recording {id} of the path",
                meta.id.chars().take(80).collect::<String>()
            )));
        }
        check_meta(&meta)?;
        if !valid_sha256(&sha256) {
            return Err(Refusal::BadRequest(
                "sha256 must be 64 lowercase hexadecimal digits".into(),
            ));
        }
        if meta.bytes > self.recordings.max_bytes {
            return Err(self.recordings.too_large(&id, meta.bytes));
        }
        meta.gateway = gateway.to_string();
        let claim = self.recordings.claim(&id)?;
        let (db, data_dir) = (self.db.clone(), self.recordings_dir.clone());
        detached(async move {
            let _held = claim;
            complete_upload(db, data_dir, meta, sha256).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;

    use super::super::fixtures::{authorize, complete_req, gw, received_of, service, slot, CAST};
    use super::super::UPLOAD_SLOTS;
    use super::*;

    /// Finding 4: a chunk request dropped while its write runs (the gateway disconnected or
    /// timed out) used to release its claim at once, so that a retry wrote the same file
    /// beside the leftover writer.
    #[tokio::test]
    async fn regression_a_dropped_chunk_request_keeps_its_claim_until_the_chunk_is_durable() {
        let (_d, svc) = service(1 << 20, 4096).await;
        authorize(&svc.db, "s-1", "gw1", "web1", Some("env=dev")).await;
        let slot = slot(&svc).await;
        let mut req = Box::pin(svc.recording_chunk(
            gw("gw1"),
            "s-1".into(),
            0,
            axum::body::Bytes::from_static(CAST),
            slot,
        ));
        // Polled once (it claims the id and hands the work over), then dropped.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(req.as_mut().poll(&mut cx).is_pending());
        drop(req);
        // A retry is refused while the dropped request's work runs...
        assert!(matches!(
            svc.recordings.claim("s-1"),
            Err(Refusal::Conflict(_))
        ));
        // ...and the claim and the slot are released only once the chunk is on disk and in
        // the database.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if svc.recordings.claim("s-1").is_ok() {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "the claim was never released"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(received_of(&svc.db, "s-1").await, Some(CAST.len() as i64));
        assert_eq!(
            fs::read(partial_of(&svc.recordings_dir, "s-1")).unwrap(),
            CAST
        );
        assert_eq!(svc.upload_slots.available_permits(), UPLOAD_SLOTS);
        // The upload goes on from there.
        let stored = svc
            .recording_complete(gw("gw1"), "s-1".into(), complete_req("s-1", "alice", CAST))
            .await
            .unwrap();
        assert_eq!(stored.bytes, CAST.len() as u64);
    }

    /// Finding 7: a gateway could hold any amount of unfinished uploads.
    #[tokio::test]
    async fn regression_a_gateway_holds_at_most_its_cap_of_unfinished_uploads() {
        let (_d, svc) = service(10_000, 4096).await;
        assert_eq!(svc.recordings.partial_cap(), 40_000);
        authorize(&svc.db, "s-c", "gw1", "web1", None).await;
        svc.db
            .run(|c| {
                c.conn().execute(
                    "INSERT INTO recording_uploads (id, gateway, received, started_at, updated_at) VALUES ('s-held', 'gw1', 39000, 1, 1), ('s-other', 'gw2', 39000, 1, 1)",
                    [],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let put = |n: usize| {
            svc.recording_chunk(
                gw("gw1"),
                "s-c".into(),
                0,
                axum::body::Bytes::from(vec![b'x'; n]),
                Arc::clone(&svc.upload_slots).try_acquire_owned().unwrap(),
            )
        };
        match put(1001).await {
            Err(Refusal::InsufficientStorage(m)) => {
                assert!(m.contains("40000") && m.contains("max_bytes"), "{m}")
            }
            other => panic!("expected 507, got {other:?}"),
        }
        assert_eq!(received_of(&svc.db, "s-c").await, None);
        // Up to the cap is fine; other gateways' uploads do not count.
        assert_eq!(put(1000).await.unwrap().received, 1000);
    }
}
