//! Session recordings: gateways upload each finished asciicast v2 file; the file is kept as
//! `DATA_DIR/recordings/<id>.cast` (mode 0600) and its metadata in the `recordings` table.
//! Users list and fetch their own recordings, and other users' recordings of servers that a
//! role's `view_recordings` selects, with the X.509 identity of `postern login`.
//!
//! Uploads are resumable, so that a recording of any size (up to `[recordings] max_bytes`)
//! survives a restart of either side: the gateway asks where the upload stands, appends
//! chunks at an offset to `DATA_DIR/recordings/partial/<id>.part`, and completes it with the
//! total size and SHA-256, which links the file to its final name, removes the partial name
//! and inserts the row. The single-request upload of earlier gateways (at most
//! [`MAX_RECORDING_BYTES`]) stays. Partial uploads untouched for [`STALE_UPLOAD_SECS`] are
//! swept (at start and every [`SWEEP_EVERY_SECS`]), and one gateway's unfinished uploads may
//! hold at most [`PARTIAL_UPLOADS_PER_GATEWAY`] × `max_bytes`.
//!
//! **Invariant:** a stored recording is never replaced. The file reaches its final name by a
//! hard link (which fails when the name exists), the partial name is removed before the row is
//! written and a partial file with a second name is never written or cut, and the row is
//! inserted with `INSERT OR IGNORE`, so a retried upload or completion changes nothing.
//!
//! **Invariant:** one piece of work per recording at a time. A request claims the id, and the
//! claim (with the upload slot) moves into a task that runs the file work and the database
//! update to their end, even when the request is dropped (gateway gone, timeout): a retry is
//! refused (409) until then, so no writer outlives the claim it was started under.
//!
//! **Invariant:** a partial upload is trusted only up to the length the database recorded after
//! the chunk's fsync (`recording_uploads.received`); a tail left by a request that died is cut
//! off before the next chunk is appended, and the SHA-256 is checked before anything is visible.
//!
//! **Invariant:** a recording is stored only for a session the CA authorized, with that
//! session's user, login, server and gateway (`<id>-N`, the gateway's further session channels
//! of one connection, belong to session `<id>`), and it is visible to others by the server
//! labels of that session (snapshotted in the row), not by what the server is labelled later.
//!
//! One concern per file: `claim` (the limits and the claims), `files` (paths and durable file
//! operations), `partial` (a resumable upload's file work), `check` (what a gateway sends),
//! `stored` (the insert of a stored recording; its SQL and the other tables' are in
//! `crate::store::recordings`), `session` (the binding to an authorized session),
//! `identity` (who asks), `visibility` (who may see what), `single` and `upload` (the two
//! upload protocols), `view` (the users' routes) and `sweep` (abandoned uploads).

mod check;
mod claim;
mod files;
mod identity;
mod partial;
mod session;
mod single;
mod stored;
mod sweep;
mod upload;
mod view;
mod visibility;

#[cfg(test)]
mod fixtures;

use anyhow::{anyhow, Result};

pub use claim::Store;
pub use files::{file_of, prepare_dir, sha256_of_path};
pub use sweep::sweeper;

use crate::service::Refusal;

/// Uploads buffered at the same time: single-request uploads (up to [`MAX_RECORDING_BYTES`]
/// each) and chunks (up to `[recordings] chunk_bytes` each).
pub const UPLOAD_SLOTS: usize = 4;

/// The largest single-request recording upload (the JSON body) accepted.
pub const MAX_RECORDING_BYTES: usize = 256 * 1024 * 1024;

/// Default and maximum number of rows a listing returns (newest first).
pub const DEFAULT_LIST: u32 = 100;
/// The most rows one listing returns.
pub const MAX_LIST: u32 = 10_000;

/// A partial upload that no chunk touched for this long (7 days) is abandoned: its row and its
/// file are removed, and an upload of that id starts again from 0.
pub const STALE_UPLOAD_SECS: u64 = 7 * 24 * 3600;

/// How often abandoned partial uploads are swept (and once when the daemon starts).
pub const SWEEP_EVERY_SECS: u64 = 3600;

/// The unfinished uploads one gateway may hold, in multiples of `[recordings] max_bytes`:
/// room for a few recordings of the largest size at once, and a bound on the disk that a
/// gateway abandoning uploads can take before the sweep frees it.
pub const PARTIAL_UPLOADS_PER_GATEWAY: u64 = 4;

type Outcome<T> = std::result::Result<T, Refusal>;

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!(e))?
}
