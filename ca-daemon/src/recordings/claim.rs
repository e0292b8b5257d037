//! The recording limits and the claims on recording ids: one piece of work per recording at a
//! time, held by the task doing it until it ends.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::anyhow;
use postern_core::api::RecordingUploadStatus;
use postern_core::RecordingId;

use super::{Outcome, PARTIAL_UPLOADS_PER_GATEWAY};
use crate::service::Refusal;

/// The recording limits of `posternd.toml` and the uploads being handled right now.
pub struct Store {
    /// `[recordings] max_bytes`: the largest recording accepted.
    pub max_bytes: u64,
    /// `[recordings] chunk_bytes`: the largest chunk accepted.
    pub chunk_bytes: u64,
    /// Ids with a chunk, completion, single-request upload or sweep in progress: one piece of
    /// work per recording at a time.
    busy: Arc<Mutex<HashSet<String>>>,
}

impl Store {
    /// Limits from the configuration.
    pub fn new(max_bytes: u64, chunk_bytes: u64) -> Store {
        Store {
            max_bytes,
            chunk_bytes,
            busy: Arc::default(),
        }
    }

    /// The bytes of unfinished uploads one gateway may hold.
    pub fn partial_cap(&self) -> u64 {
        self.max_bytes.saturating_mul(PARTIAL_UPLOADS_PER_GATEWAY)
    }

    /// Claims `id` until the claim is dropped; refuses while another request holds it (a
    /// gateway retrying a request that timed out on its side while it still runs here). The
    /// claim does not borrow the store, so that it can move into the task doing the work.
    pub(super) fn claim(&self, id: &str) -> Outcome<Claim> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if !busy.insert(id.to_owned()) {
            return Err(Refusal::Conflict(format!(
                "another request for recording {id} is in progress; retry"
            )));
        }
        Ok(Claim {
            busy: Arc::clone(&self.busy),
            id: id.to_owned(),
        })
    }

    pub(super) fn status(
        &self,
        id: &RecordingId,
        received: u64,
        complete: bool,
    ) -> RecordingUploadStatus {
        RecordingUploadStatus {
            id: id.clone(),
            received,
            complete,
            chunk_bytes: self.chunk_bytes,
            max_bytes: self.max_bytes,
        }
    }

    pub(super) fn too_large(&self, id: &str, bytes: u64) -> Refusal {
        Refusal::TooLarge(format!(
            "recording {id} would be {bytes} bytes, more than this CA accepts ({} bytes, [recordings] max_bytes)",
            self.max_bytes
        ))
    }
}

/// One piece of work's hold on a recording id.
pub(super) struct Claim {
    busy: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Runs an upload's work in a task of its own and waits for it. The claim and the upload slot
/// move into `work`, which runs to its end (file work and database update) even when the
/// request awaiting it is dropped: they are released only when nothing of it runs any more.
pub(super) async fn detached<T: Send + 'static>(
    work: impl Future<Output = Outcome<T>> + Send + 'static,
) -> Outcome<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| Refusal::Internal(anyhow!("recording upload task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_and_released_on_drop() {
        let s = Store::new(100, 10);
        let a = s.claim("s-1").unwrap();
        assert!(matches!(s.claim("s-1"), Err(Refusal::Conflict(_))));
        assert!(s.claim("s-2").is_ok());
        drop(a);
        assert!(s.claim("s-1").is_ok());
    }
}
