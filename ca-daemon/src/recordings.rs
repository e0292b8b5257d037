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

use std::collections::HashSet;
use std::fs;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{anyhow, bail, Context, Result};
use postern_core::api::{RecordingComplete, RecordingMeta, RecordingUpload, RecordingUploadStatus};
use postern_core::cast::{check_cast, check_head, MAX_HEADER_BYTES};
use postern_core::{Labels, Login, NodeName, Policy, Username};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::OwnedSemaphorePermit;

use crate::audit;
use crate::db::Db;
use crate::gateway::{gateway_for, valid_session_id};
use crate::service::{now, Refusal, Service};
use crate::x509::ClientIdentity;

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

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

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
    fn claim(&self, id: &str) -> Outcome<Claim> {
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

    fn status(&self, id: &str, received: u64, complete: bool) -> RecordingUploadStatus {
        RecordingUploadStatus {
            id: id.to_owned(),
            received,
            complete,
            chunk_bytes: self.chunk_bytes,
            max_bytes: self.max_bytes,
        }
    }

    fn too_large(&self, id: &str, bytes: u64) -> Refusal {
        Refusal::TooLarge(format!(
            "recording {id} would be {bytes} bytes, more than this CA accepts ({} bytes, [recordings] max_bytes)",
            self.max_bytes
        ))
    }
}

/// One piece of work's hold on a recording id.
struct Claim {
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
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Outcome<T>> + Send + 'static,
) -> Outcome<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| Refusal::Internal(anyhow!("recording upload task failed: {e}")))?
}

/// The recordings directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("recordings")
}

/// Where partial uploads are kept until they are complete.
fn partial_dir(data_dir: &Path) -> PathBuf {
    dir(data_dir).join("partial")
}

/// Creates a directory (0700) or checks that it is a real directory, and makes it private.
fn private_dir(d: &Path) -> Result<()> {
    match fs::symlink_metadata(d) {
        Ok(md) if md.file_type().is_symlink() || !md.is_dir() => {
            bail!("{} exists and is not a directory", d.display())
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .mode(0o700)
            .create(d)
            .with_context(|| format!("cannot create {}", d.display()))?,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", d.display())),
    }
    fs::set_permissions(d, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {}", d.display()))
}

/// Creates the recordings directory and the partial uploads' directory (0700), or checks
/// that they are real directories, and makes them private: recordings hold everything users
/// typed and saw.
pub fn prepare_dir(data_dir: &Path) -> Result<()> {
    private_dir(&dir(data_dir))?;
    private_dir(&partial_dir(data_dir))
}

/// The file of one recording. `id` must have passed [`valid_session_id`].
fn file_of(data_dir: &Path, id: &str) -> PathBuf {
    dir(data_dir).join(format!("{id}.cast"))
}

/// The partial upload of one recording. `id` must have passed [`valid_session_id`].
fn partial_of(data_dir: &Path, id: &str) -> PathBuf {
    partial_dir(data_dir).join(format!("{id}.part"))
}

/// Checks the metadata every upload carries.
fn check_meta(m: &RecordingMeta) -> Outcome<()> {
    if !valid_session_id(&m.id) {
        return Err(Refusal::BadRequest(
            "meta.id must be 1 to 64 characters of a-z, 0-9 and -".into(),
        ));
    }
    if m.ended_at < m.started_at {
        return Err(Refusal::BadRequest(
            "meta.ended_at is before meta.started_at".into(),
        ));
    }
    Ok(())
}

fn check_upload(up: &RecordingUpload) -> Outcome<()> {
    let m = &up.meta;
    check_meta(m)?;
    if m.bytes != up.cast.len() as u64 {
        return Err(Refusal::BadRequest(format!(
            "meta.bytes is {} but the cast has {} bytes",
            m.bytes,
            up.cast.len()
        )));
    }
    check_cast(&up.cast).map_err(Refusal::BadRequest)
}

/// Whether `s` is a SHA-256 in lowercase hex.
fn valid_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn sha256_of_path(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    postern_core::sha256_hex_of(&mut f).with_context(|| format!("cannot read {}", path.display()))
}

/// Whether the file was written or was there already.
#[derive(Debug, PartialEq, Eq)]
enum Placed {
    Created,
    Existed,
}

/// Writes `bytes` as `path` unless `path` exists: temporary file (0600), fsync, hard link,
/// fsync of the directory. A crash leaves either no file or the whole file.
fn place_file(path: &Path, bytes: &[u8]) -> Result<Placed> {
    let parent = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", path.display()))?;
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| anyhow!("getrandom: {e}"))?;
    let tmp = parent.join(format!(".upload-{}.tmp", hex::encode(rnd)));
    let result = (|| -> Result<Placed> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot fsync {}", tmp.display()))?;
        let placed = match fs::hard_link(&tmp, path) {
            Ok(()) => Placed::Created,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Placed::Existed,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        };
        Ok(placed)
    })();
    let _ = fs::remove_file(&tmp);
    let placed = result?;
    sync_dir(parent)?;
    Ok(placed)
}

fn sync_dir(d: &Path) -> Result<()> {
    fs::File::open(d)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync {}", d.display()))
}

/// Whether an I/O error means the disk (or the quota, or the file size limit) is full.
fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
    )
}

/// Opens a partial upload for reading and writing; never follows a symbolic link.
fn open_partial(path: &Path, create: bool) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Whether an open partial file has another name too (the stored recording's).
fn linked(f: &fs::File) -> std::io::Result<bool> {
    Ok(f.metadata()?.nlink() > 1)
}

/// Removes a partial upload's name (if it is there) durably.
fn remove_partial(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => match path.parent() {
            Some(parent) => sync_dir(parent),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// The bytes of a partial upload that can be trusted: at most what the database recorded,
/// and what the file still holds. A longer file (a chunk written by a request that died
/// before its row was updated) is cut back.
fn durable_length(f: &fs::File, recorded: u64) -> std::io::Result<u64> {
    let len = f.metadata()?.len();
    let durable = len.min(recorded);
    if len > durable {
        f.set_len(durable)?;
        f.sync_data()?;
    }
    Ok(durable)
}

/// Appends one chunk to a partial upload (blocking). `recorded` is the durable length the
/// database holds (0 for a new upload, whose stale file, if any, is discarded). Answers the
/// new durable length, or a refusal that changed nothing the gateway relies on.
fn write_chunk(
    path: &Path,
    id: &str,
    fresh: bool,
    recorded: u64,
    offset: u64,
    bytes: &[u8],
) -> Result<Outcome<u64>> {
    let f = open_partial(path, true).with_context(|| format!("cannot open {}", path.display()))?;
    // A partial file with a second name is a stored recording (a completion died between the
    // link and the removal of the partial name): it is never written or cut.
    if linked(&f).with_context(|| format!("cannot read {}", path.display()))? {
        return Ok(Err(Refusal::Conflict(format!(
            "recording {id} is already stored under its final name; complete it again instead of sending chunks"
        ))));
    }
    if fresh {
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
    }
    let durable = durable_length(&f, if fresh { 0 } else { recorded })
        .with_context(|| format!("cannot read {}", path.display()))?;
    if offset > durable {
        return Ok(Err(beyond(id, offset, durable)));
    }
    let end = offset + bytes.len() as u64;
    // A retried chunk repeats bytes already received: accepted only when they are the same.
    let overlap = usize::try_from(end.min(durable) - offset)?;
    if overlap > 0 {
        let mut have = vec![0u8; overlap];
        f.read_exact_at(&mut have, offset)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if have[..] != bytes[..overlap] {
            return Ok(Err(Refusal::Conflict(format!(
                "the bytes at offset {offset} differ from those already received of recording {id}; nothing was changed (received: {durable})"
            ))));
        }
    }
    if end > durable {
        let written = f
            .write_all_at(&bytes[overlap..], durable)
            .and_then(|()| f.sync_data());
        if let Err(e) = written {
            // Nothing past the durable length is kept: a later chunk starts there again.
            let _ = f.set_len(durable);
            if is_no_space(&e) {
                return Ok(Err(Refusal::InsufficientStorage(format!(
                    "the CA has no room for recording {id} ({e}); it keeps the {durable} bytes received, retry later"
                ))));
            }
            return Err(e).with_context(|| format!("cannot write {}", path.display()));
        }
    }
    Ok(Ok(end.max(durable)))
}

fn beyond(id: &str, offset: u64, received: u64) -> Refusal {
    Refusal::Conflict(format!(
        "offset {offset} is beyond the {received} bytes received of recording {id}; resume at {received}"
    ))
}

/// How a completion ended on disk.
enum Finished {
    /// The file is at its final name (put there now, or identical and there already).
    Linked,
    /// Refused; the partial upload stays.
    Refused(Refusal),
    /// The received bytes are not the recording the gateway describes: they were deleted,
    /// and the upload starts again from 0.
    Discarded(Refusal),
}

/// Checks a complete partial upload against its size, asciicast header and SHA-256, links it
/// to its final name and removes the partial name (blocking): once linked, the file is never
/// written through the partial name again.
fn finish_partial(
    partial: &Path,
    final_path: &Path,
    id: &str,
    recorded: u64,
    bytes: u64,
    sha256: &str,
) -> Result<Finished> {
    // Stored already, by a completion that died before its row was written or by a
    // single-request upload: the same file is fine, another one is never replaced.
    match fs::symlink_metadata(final_path) {
        Ok(_) => {
            if sha256_of_path(final_path)? != sha256 {
                return Ok(Finished::Refused(Refusal::Conflict(format!(
                    "recording {id} is already stored with other content; a recording is never replaced"
                ))));
            }
            remove_partial(partial)?;
            return Ok(Finished::Linked);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", final_path.display())),
    }
    let mut f = match open_partial(partial, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Finished::Refused(incomplete(id, 0, bytes)))
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", partial.display())),
    };
    if linked(&f).with_context(|| format!("cannot read {}", partial.display()))? {
        bail!(
            "{} has another name (not {}); it is left alone",
            partial.display(),
            final_path.display()
        );
    }
    let durable = durable_length(&f, recorded)
        .with_context(|| format!("cannot read {}", partial.display()))?;
    if durable > bytes {
        // More than the whole recording: these bytes are not the recording described.
        drop(f);
        fs::remove_file(partial).with_context(|| format!("cannot remove {}", partial.display()))?;
        return Ok(Finished::Discarded(Refusal::Conflict(format!(
            "{durable} bytes were received of recording {id}, which has {bytes}; they were discarded: upload it again from offset 0"
        ))));
    }
    if durable != bytes {
        return Ok(Finished::Refused(incomplete(id, durable, bytes)));
    }
    let mut head = vec![0u8; usize::try_from(bytes.min(MAX_HEADER_BYTES as u64))?];
    f.read_exact_at(&mut head, 0)
        .with_context(|| format!("cannot read {}", partial.display()))?;
    let header_ok = check_head(&head, bytes);
    let got = postern_core::sha256_hex_of(&mut f)
        .with_context(|| format!("cannot read {}", partial.display()))?;
    if got != sha256 {
        drop(f);
        fs::remove_file(partial).with_context(|| format!("cannot remove {}", partial.display()))?;
        return Ok(Finished::Discarded(Refusal::Conflict(format!(
            "the {bytes} bytes received of recording {id} have sha256 {got}, not {sha256}; they were discarded: upload it again from offset 0"
        ))));
    }
    if let Err(e) = header_ok {
        return Ok(Finished::Refused(Refusal::BadRequest(e)));
    }
    f.sync_all()
        .with_context(|| format!("cannot fsync {}", partial.display()))?;
    drop(f);
    match fs::hard_link(partial, final_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if sha256_of_path(final_path)? != sha256 {
                return Ok(Finished::Refused(Refusal::Conflict(format!(
                    "recording {id} is already stored with other content; a recording is never replaced"
                ))));
            }
        }
        Err(e) if is_no_space(&e) => {
            return Ok(Finished::Refused(Refusal::InsufficientStorage(format!(
                "the CA has no room to store recording {id} ({e}); retry later"
            ))))
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", final_path.display())),
    }
    if let Some(parent) = final_path.parent() {
        sync_dir(parent)?;
    }
    // At once, before the row: nothing may reach the stored file through the partial name.
    remove_partial(partial)?;
    Ok(Finished::Linked)
}

fn incomplete(id: &str, received: u64, bytes: u64) -> Refusal {
    Refusal::Conflict(format!(
        "{received} of the {bytes} bytes of recording {id} were received; resume at {received}"
    ))
}

fn meta_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<(RecordingMetaRow, String)> {
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
            id: self.id,
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

const COLUMNS: &str =
    "id, user, login, node, gateway, started_at, ended_at, interrupted, bytes, sha256";

/// [`COLUMNS`] of `recordings r`.
const R_COLUMNS: &str =
    "r.id, r.user, r.login, r.node, r.gateway, r.started_at, r.ended_at, r.interrupted, r.bytes, r.sha256";

/// The labels `view_recordings` judges a recording `r` by: the snapshot taken when it was
/// stored; for a row stored before snapshots existed, the server's labels now (only a server,
/// kind `node`, counts), or none when it left the inventory.
const EFFECTIVE_LABELS: &str = "COALESCE(r.node_labels, (SELECT n.labels FROM nodes n WHERE n.name = r.node AND n.kind = 'node'), '')";

/// Labels as stored. The CA stores only labels that parse; anything else counts as none,
/// which only `"*" = "*"` selects.
fn parse_labels(s: &str) -> Labels {
    s.parse().unwrap_or_default()
}

fn load(c: &Connection, id: &str) -> Result<Option<(RecordingMeta, String)>> {
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
fn load_for_viewing(c: &Connection, id: &str) -> Result<Option<(RecordingMeta, Labels)>> {
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
pub fn list(
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

/// Which other users' recordings a signed-in user may see, decided by the policy's
/// `view_recordings` against each recording's labels ([`EFFECTIVE_LABELS`]).
struct Visibility {
    /// Whether any role of the user has `view_recordings` at all.
    any: bool,
    /// The label sets (as stored) of recordings that a `view_recordings` selects.
    labels: Vec<String>,
}

fn visibility(c: &Connection, policy: &Policy, me: &Username) -> Result<Visibility> {
    if !policy.views_others_recordings(me) {
        return Ok(Visibility {
            any: false,
            labels: Vec::new(),
        });
    }
    // Few distinct label sets, however many recordings: each is judged once.
    let mut st = c.prepare(&format!(
        "SELECT DISTINCT {EFFECTIVE_LABELS} FROM recordings r"
    ))?;
    let all = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let labels = all
        .into_iter()
        .filter(|l| policy.recording_viewer_role(me, &parse_labels(l)).is_some())
        .collect();
    Ok(Visibility { any: true, labels })
}

/// Whether recording `id` is `me`'s own: of a session of that name that the CA authorized
/// since `me`'s user record was made (both the CA's clock). A name removed and added again is
/// a new user, who does not see the sessions of the one before (a role's `view_recordings`
/// still does). The same rule is in `list_visible`'s SQL.
fn is_own(c: &Connection, me: &Username, id: &str) -> Result<bool> {
    Ok(c
        .query_row(
            "SELECT 1 FROM recordings r WHERE r.id = ?1 AND r.user = ?2 \
             AND COALESCE(r.authorized_at, r.started_at) >= (SELECT created_at FROM users WHERE name = ?2)",
            params![id, me.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The recordings `me` may see, newest first: their own, and others' whose labels their
/// `view_recordings` selects; optionally only of one user and/or one server.
fn list_visible(
    c: &Connection,
    me: &Username,
    vis: &Visibility,
    user: Option<&str>,
    node: Option<&str>,
    limit: u32,
) -> Result<Vec<RecordingMeta>> {
    let mut st = c.prepare(&format!(
        "SELECT {R_COLUMNS} FROM recordings r \
         WHERE (?1 IS NULL OR r.user = ?1) AND (?2 IS NULL OR r.node = ?2) \
         AND ((r.user = ?3 AND COALESCE(r.authorized_at, r.started_at) >= (SELECT created_at FROM users WHERE name = ?3)) \
              OR {EFFECTIVE_LABELS} IN (SELECT value FROM json_each(?4))) \
         ORDER BY r.started_at DESC, r.id LIMIT ?5"
    ))?;
    let labels = serde_json::to_string(&vis.labels)?;
    let rows = st
        .query_map(
            params![user, node, me.as_str(), labels, limit.min(MAX_LIST)],
            meta_of,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().map(|(m, _)| m.into_meta()).collect()
}

/// The Postern user behind an X.509 identity from `postern login`: a known, unrevoked,
/// unexpired `x509-client` certificate whose subject is an existing user.
fn user_for(c: &Connection, id: &ClientIdentity, now: u64) -> Result<Option<Username>> {
    let row: Option<(String, bool, i64)> = c
        .query_row(
            "SELECT subject, revoked, valid_before FROM certs WHERE serial = ?1 AND kind = 'x509-client'",
            [i(id.serial)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((subject, false, before)) = row else {
        return Ok(None);
    };
    if subject != id.subject || now >= u(before) {
        return Ok(None);
    }
    let Ok(user) = subject.parse::<Username>() else {
        return Ok(None);
    };
    let exists: Option<i64> = c
        .query_row(
            "SELECT 1 FROM users WHERE name = ?1",
            [user.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(exists.map(|_| user))
}

fn bad_identity() -> Refusal {
    Refusal::Forbidden(
        "this device's identity is not valid (expired, revoked or unknown); run `postern login`"
            .into(),
    )
}

/// Checks a user's identity and that no lock stops them.
fn signed_in_user(c: &Connection, id: &ClientIdentity, now: u64) -> Result<Outcome<Username>> {
    let Some(user) = user_for(c, id, now)? else {
        return Ok(Err(bad_identity()));
    };
    let locks = crate::nodes::active_locks(c, now)?;
    let subject = postern_core::api::LockSubject {
        user: Some(user.as_str()),
        ..Default::default()
    };
    if let Some(l) = postern_core::api::lock_for(&locks, &subject, now) {
        return Ok(Err(Refusal::Forbidden(l.describe())));
    }
    Ok(Ok(user))
}

/// A session the CA authorized (`gateway_sessions`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    id: String,
    gateway: String,
    user: String,
    login: String,
    node: String,
    /// The server's labels at authorization (`None` for sessions authorized before the CA
    /// kept them).
    labels: Option<String>,
    /// When the CA first authorized it (the CA's clock).
    first_authorized: i64,
}

fn session_row(c: &Connection, id: &str) -> Result<Option<Session>> {
    Ok(c.query_row(
        "SELECT id, gateway, user, login, node, labels, first_authorized FROM gateway_sessions WHERE id = ?1",
        [id],
        |r| {
            Ok(Session {
                id: r.get(0)?,
                gateway: r.get(1)?,
                user: r.get(2)?,
                login: r.get(3)?,
                node: r.get(4)?,
                labels: r.get(5)?,
                first_authorized: r.get(6)?,
            })
        },
    )
    .optional()?)
}

/// Whether `n` numbers a further session channel: 2 or more, in decimal, no leading zero.
fn channel_number(n: &str) -> bool {
    (1..=9).contains(&n.len())
        && !n.starts_with('0')
        && n.bytes().all(|b| b.is_ascii_digit())
        && n.parse::<u32>().is_ok_and(|n| n >= 2)
}

/// The authorized session a recording id belongs to: the session of that id, or for
/// `<id>-N` (N ≥ 2: the gateway records the second and later session channels of one
/// connection under those ids) the session `<id>`.
fn authorized_session(c: &Connection, id: &str) -> Result<Option<Session>> {
    if let Some(s) = session_row(c, id)? {
        return Ok(Some(s));
    }
    match id.rsplit_once('-') {
        Some((base, n)) if !base.is_empty() && channel_number(n) => session_row(c, base),
        _ => Ok(None),
    }
}

fn unauthorized(id: &str) -> Refusal {
    Refusal::Forbidden(format!(
        "recording {id} belongs to no session this CA authorized (a gateway asks /v1/gateway/authorize before each session); it is refused"
    ))
}

/// Where the upload of a recording by a gateway stands.
enum UploadState {
    /// Nothing received.
    Absent,
    /// Some bytes received (the durable length the database holds).
    Partial { received: u64 },
    /// Stored: the row and its SHA-256.
    Complete { meta: RecordingMeta, sha256: String },
}

/// Where the upload of `id` by `gateway` stands; refuses an id that another gateway stored or
/// is uploading, and one that belongs to no session authorized for this gateway.
fn upload_state(c: &Connection, id: &str, gateway: &str) -> Result<Outcome<UploadState>> {
    if let Some((meta, sha256)) = load(c, id)? {
        if meta.gateway != gateway {
            return Ok(Err(Refusal::Conflict(format!(
                "recording {id} was stored by another gateway"
            ))));
        }
        return Ok(Ok(UploadState::Complete { meta, sha256 }));
    }
    match authorized_session(c, id)? {
        None => return Ok(Err(unauthorized(id))),
        Some(s) if s.gateway != gateway => {
            return Ok(Err(Refusal::Forbidden(format!(
                "session {} was authorized for another gateway",
                s.id
            ))))
        }
        Some(_) => {}
    }
    let upload: Option<(String, i64)> = c
        .query_row(
            "SELECT gateway, received FROM recording_uploads WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(Ok(match upload {
        Some((g, _)) if g != gateway => {
            return Ok(Err(Refusal::Conflict(format!(
                "recording {id} is being uploaded by another gateway"
            ))))
        }
        Some((_, received)) => UploadState::Partial {
            received: u(received),
        },
        None => UploadState::Absent,
    }))
}

/// The authorized session a recording belongs to, when its user, login, server and gateway
/// are that session's; a refusal otherwise, and for a recording of no authorized session.
fn session_matches(c: &Connection, m: &RecordingMeta, gateway: &str) -> Result<Outcome<Session>> {
    let Some(s) = authorized_session(c, &m.id)? else {
        return Ok(Err(unauthorized(&m.id)));
    };
    let same = s.gateway == gateway
        && s.user == m.user.as_str()
        && s.login == m.login.as_str()
        && s.node == m.node.as_str();
    if !same {
        return Ok(Err(Refusal::Forbidden(format!(
            "recording {} does not match session {} that the CA authorized (user, login, server and gateway must be the session's)",
            m.id, s.id
        ))));
    }
    Ok(Ok(s))
}

/// The labels a recording of session `s` is judged by from now on: the server's at
/// authorization, or (a session authorized before the CA kept them) its labels now, or none.
fn snapshot_labels(c: &Connection, s: &Session) -> Result<String> {
    if let Some(l) = &s.labels {
        return Ok(l.clone());
    }
    let now: Option<String> = c
        .query_row(
            "SELECT labels FROM nodes WHERE name = ?1 AND kind = 'node'",
            [&s.node],
            |r| r.get(0),
        )
        .optional()?;
    Ok(now.unwrap_or_default())
}

/// Inserts a stored recording's row (with its labels snapshot) and its audit event, and
/// forgets its partial upload. A row that exists already (a concurrent single-request upload
/// won) is answered instead.
fn insert_stored(
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
            meta.id, meta.user.as_str(), meta.login.as_str(), meta.node.as_str(), meta.gateway,
            i(meta.started_at), i(meta.ended_at), meta.interrupted, i(meta.bytes), sha, i(now),
            labels, session.first_authorized,
        ],
    )?;
    c.execute("DELETE FROM recording_uploads WHERE id = ?1", [&meta.id])?;
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

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!(e))?
}

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
            move |c| -> Result<Outcome<std::result::Result<Session, RecordingMeta>>> {
                if let Some((stored, _)) = load(c, &m2.id)? {
                    if stored.gateway != m2.gateway {
                        return Ok(Err(Refusal::Conflict(format!(
                            "recording {} was stored by another gateway",
                            m2.id
                        ))));
                    }
                    return Ok(Ok(Err(stored)));
                }
                Ok(session_matches(c, &m2, &m2.gateway)?.map(Ok))
            },
        )
        .await??;
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
        .run(move |c| -> Result<Outcome<(UploadState, u64)>> {
            let state = match upload_state(c, &i2, &gw)? {
                Ok(s) => s,
                Err(r) => return Ok(Err(r)),
            };
            let others: i64 = c.query_row(
                "SELECT COALESCE(SUM(received), 0) FROM recording_uploads WHERE gateway = ?1 AND id != ?2",
                params![gw, i2],
                |r| r.get(0),
            )?;
            Ok(Ok((state, u(others))))
        })
        .await??;
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
    db.run(move |c| {
        c.execute(
            "INSERT INTO recording_uploads (id, gateway, received, started_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4) \
             ON CONFLICT(id) DO UPDATE SET received = excluded.received, updated_at = excluded.updated_at",
            params![id, gateway, i(received), i(now)],
        )?;
        Ok(())
    })
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
            move |c| -> Result<Outcome<(UploadState, Option<Session>)>> {
                let state = match upload_state(c, &m2.id, &m2.gateway)? {
                    Ok(s) => s,
                    Err(r) => return Ok(Err(r)),
                };
                if matches!(state, UploadState::Complete { .. }) {
                    return Ok(Ok((state, None)));
                }
                Ok(session_matches(c, &m2, &m2.gateway)?.map(|s| (state, Some(s))))
            },
        )
        .await??;
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
            db.run(move |c| {
                c.execute("DELETE FROM recording_uploads WHERE id = ?1", [&id])?;
                Ok(())
            })
            .await?;
            return Err(r);
        }
    }
    let now = now();
    Ok(db
        .run(move |c| insert_stored(c, &meta, &sha256, &session, "chunked", now))
        .await?)
}

/// What one sweep of abandoned uploads removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// `recording_uploads` rows (with their partial files).
    pub uploads: usize,
    /// Files without a row: partial files, and temporary files of single-request uploads.
    pub files: usize,
    /// The bytes those uploads had received.
    pub bytes: u64,
}

/// Removes abandoned uploads: `recording_uploads` rows that no chunk updated for
/// [`STALE_UPLOAD_SECS`] with their partial files, partial files without a row and
/// temporary files of single-request uploads that old. Work in progress (a claimed id) is
/// left alone; every removal is logged.
pub async fn sweep(db: &Db, store: &Store, data_dir: &Path, now: u64) -> Result<Swept> {
    let cutoff = now.saturating_sub(STALE_UPLOAD_SECS);
    let mut swept = Swept::default();
    let stale: Vec<(String, String, i64, i64)> = db
        .run(move |c| {
            let mut st = c.prepare(
                "SELECT id, gateway, received, updated_at FROM recording_uploads WHERE updated_at < ?1 ORDER BY id",
            )?;
            let rows = st
                .query_map([i(cutoff)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await?;
    for (id, gateway, received, updated_at) in stale {
        let Ok(_claim) = store.claim(&id) else {
            continue;
        };
        let i2 = id.clone();
        let gone = db
            .run(move |c| {
                Ok(c.execute(
                    "DELETE FROM recording_uploads WHERE id = ?1 AND updated_at < ?2",
                    params![i2, i(cutoff)],
                )?)
            })
            .await?;
        if gone == 0 {
            continue;
        }
        if valid_session_id(&id) {
            let path = partial_of(data_dir, &id);
            blocking(move || remove_partial(&path)).await?;
        }
        tracing::info!(
            id,
            gateway,
            received,
            idle_secs = now.saturating_sub(u(updated_at)),
            "removed an abandoned partial recording upload"
        );
        swept.uploads += 1;
        swept.bytes = swept.bytes.saturating_add(u(received));
    }

    let live: HashSet<String> = db
        .run(|c| {
            let mut st = c.prepare("SELECT id FROM recording_uploads")?;
            let ids = st
                .query_map([], |r| r.get(0))?
                .collect::<Result<HashSet<String>, _>>()?;
            Ok(ids)
        })
        .await?;
    let (pdir, rdir) = (partial_dir(data_dir), dir(data_dir));
    let old = blocking(move || -> Result<Vec<(PathBuf, Option<String>)>> {
        let mut old = Vec::new();
        for (d, temporary) in [(pdir, false), (rdir, true)] {
            let entries = match fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", d.display())),
            };
            for e in entries {
                let e = e.with_context(|| format!("cannot read {}", d.display()))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let md = e.metadata()?;
                let modified = md
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(u64::MAX, |t| t.as_secs());
                if !md.is_file() || modified >= cutoff {
                    continue;
                }
                if temporary {
                    if name.starts_with(".upload-") && name.ends_with(".tmp") {
                        old.push((e.path(), None));
                    }
                } else if let Some(id) = name.strip_suffix(".part") {
                    if valid_session_id(id) {
                        old.push((e.path(), Some(id.to_owned())));
                    }
                }
            }
        }
        Ok(old)
    })
    .await?;
    for (path, id) in old {
        let _claim = match &id {
            Some(id) if live.contains(id) => continue,
            Some(id) => match store.claim(id) {
                Ok(c) => Some(c),
                Err(_) => continue,
            },
            None => None,
        };
        if let Some(id) = &id {
            // An upload that began since the listing keeps its file.
            let i2 = id.clone();
            let begun: Option<i64> = db
                .run(move |c| {
                    Ok(
                        c.query_row("SELECT 1 FROM recording_uploads WHERE id = ?1", [i2], |r| {
                            r.get(0)
                        })
                        .optional()?,
                    )
                })
                .await?;
            if begun.is_some() {
                continue;
            }
        }
        let p2 = path.clone();
        blocking(move || remove_partial(&p2)).await?;
        tracing::info!(file = %path.display(), "removed an abandoned upload file");
        swept.files += 1;
    }
    Ok(swept)
}

/// Sweeps abandoned uploads when the daemon starts and every [`SWEEP_EVERY_SECS`].
pub async fn sweeper(svc: Arc<Service>) {
    loop {
        match sweep(&svc.db, &svc.recordings, &svc.data_dir, now()).await {
            Ok(s) if s != Swept::default() => tracing::info!(
                uploads = s.uploads,
                files = s.files,
                bytes = s.bytes,
                "swept abandoned recording uploads (untouched for {} days)",
                STALE_UPLOAD_SECS / 86_400
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot sweep abandoned recording uploads")
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(SWEEP_EVERY_SECS)).await;
    }
}

impl Service {
    /// The gateway behind an mTLS identity, checked before an upload's body is read.
    pub async fn authenticate_gateway(&self, id: ClientIdentity) -> Outcome<NodeName> {
        let now = now();
        self.db
            .run(move |c| gateway_for(c, &id, now))
            .await?
            .ok_or_else(|| Refusal::Forbidden("only a joined gateway may upload recordings".into()))
    }

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
        let (db, data_dir, now) = (self.db.clone(), self.data_dir.clone(), now());
        detached(async move {
            let _held = (claim, slot);
            store_single(db, data_dir, meta, cast, now).await
        })
        .await
    }

    /// `GET /v1/gateway/recordings/ID`: where the upload of a recording stands.
    pub async fn recording_upload_status(
        &self,
        gateway: NodeName,
        id: String,
    ) -> Outcome<RecordingUploadStatus> {
        if !valid_session_id(&id) {
            return Err(bad_id());
        }
        let (i2, gw) = (id.clone(), gateway.to_string());
        let state = self.db.run(move |c| upload_state(c, &i2, &gw)).await??;
        let received = match state {
            UploadState::Complete { meta, .. } => {
                return Ok(self.recordings.status(&id, meta.bytes, true));
            }
            UploadState::Absent => 0,
            UploadState::Partial { received } => {
                let path = partial_of(&self.data_dir, &id);
                // What the next chunk will trust: never more than the file holds.
                let len = match fs::symlink_metadata(&path) {
                    Ok(md) if md.is_file() => md.len(),
                    _ => 0,
                };
                received.min(len)
            }
        };
        Ok(self.recordings.status(&id, received, false))
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
        if !valid_session_id(&id) {
            return Err(bad_id());
        }
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
        let (db, data_dir, cap) = (self.db.clone(), self.data_dir.clone(), store.partial_cap());
        let (i2, gw) = (id.clone(), gateway.to_string());
        let received = detached(async move {
            let _held = (claim, slot);
            append_chunk(db, data_dir, cap, gw, i2, offset, bytes).await
        })
        .await?;
        Ok(store.status(&id, received, false))
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
        if meta.id != id {
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
        let (db, data_dir) = (self.db.clone(), self.data_dir.clone());
        detached(async move {
            let _held = claim;
            complete_upload(db, data_dir, meta, sha256).await
        })
        .await
    }

    /// `GET /v1/recordings`: the recordings the caller may see: their own, and other users'
    /// that a role's `view_recordings` selects by the recording's labels. Asking for another
    /// user's without any `view_recordings` is refused rather than answered with an empty list.
    pub async fn recordings_of_user(
        &self,
        id: ClientIdentity,
        user: Option<Username>,
        node: Option<NodeName>,
        limit: Option<u32>,
    ) -> Outcome<Vec<RecordingMeta>> {
        let now = now();
        let policy = self.policy();
        self.db
            .run(move |c| -> Result<Outcome<Vec<RecordingMeta>>> {
                let me = match signed_in_user(c, &id, now)? {
                    Ok(u) => u,
                    Err(r) => return Ok(Err(r)),
                };
                let vis = visibility(c, &policy, &me)?;
                if let Some(other) = user.as_ref().filter(|u| **u != me) {
                    if !vis.any {
                        return Ok(Err(Refusal::Forbidden(format!(
                            "{me} may list only their own recordings, not {other}'s: no role of {me} has view_recordings in the policy"
                        ))));
                    }
                }
                let rows = list_visible(
                    c,
                    &me,
                    &vis,
                    user.as_ref().map(Username::as_str),
                    node.as_ref().map(NodeName::as_str),
                    limit.unwrap_or(DEFAULT_LIST),
                )?;
                Ok(Ok(rows))
            })
            .await?
    }

    /// `GET /v1/recordings/ID`: one recording the caller may see, as an open file and its
    /// length (the API streams it). Playing another user's recording is audited with the role
    /// that allowed it.
    pub async fn recording_cast(
        &self,
        id: ClientIdentity,
        rid: String,
    ) -> Outcome<(tokio::fs::File, u64)> {
        let now = now();
        let policy = self.policy();
        let valid = valid_session_id(&rid);
        let r2 = rid.clone();
        let visible = self
            .db
            .run(move |c| -> Result<Outcome<std::result::Result<(), bool>>> {
                let me = match signed_in_user(c, &id, now)? {
                    Ok(u) => u,
                    Err(r) => return Ok(Err(r)),
                };
                let views_others = policy.views_others_recordings(&me);
                let stored = if valid {
                    load_for_viewing(c, &r2)?
                } else {
                    None
                };
                let Some((meta, labels)) = stored else {
                    return Ok(Ok(Err(views_others)));
                };
                let role = if meta.user == me && is_own(c, &me, &r2)? {
                    None
                } else {
                    match policy.recording_viewer_role(&me, &labels) {
                        Some(role) => Some(role.to_owned()),
                        None => return Ok(Ok(Err(views_others))),
                    }
                };
                audit::append(
                    c,
                    now,
                    "recording.viewed",
                    me.as_str(),
                    json!({
                        "id": r2, "user": meta.user.as_str(), "node": meta.node.as_str(),
                        "role": role,
                    }),
                )?;
                Ok(Ok(Ok(())))
            })
            .await??;
        if let Err(views_others) = visible {
            // The same answer whether it does not exist or is not the caller's to see.
            let shown: String = rid.chars().take(64).collect();
            return Err(Refusal::NotFound(if views_others {
                format!("no recording {shown} that you may see")
            } else {
                format!("no recording {shown} of yours")
            }));
        }
        let path = file_of(&self.data_dir, &rid);
        let file = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let len = file
            .metadata()
            .await
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        Ok((file, len))
    }

    /// `recordings ls` (admin).
    pub async fn recordings_ls(
        &self,
        user: Option<String>,
        node: Option<String>,
        limit: u32,
    ) -> Result<serde_json::Value> {
        let rows = self
            .db
            .run(move |c| list(c, user.as_deref(), node.as_deref(), limit))
            .await?;
        Ok(serde_json::to_value(rows)?)
    }
}

fn bad_id() -> Refusal {
    Refusal::BadRequest("a recording id is 1 to 64 characters of a-z, 0-9 and -".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_asciicast_v2_headers() {
        assert!(check_cast("{\"version\": 2, \"width\": 80}\n[0.1, \"o\", \"hi\"]\n").is_ok());
        assert!(check_cast("{\"version\": 2}").is_ok());
        assert!(check_cast("{\"version\": 1}\n").is_err());
        assert!(check_cast("[0.1, \"o\", \"hi\"]\n").is_err());
        assert!(check_cast("").is_err());
    }

    #[test]
    fn place_file_never_replaces_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.cast");
        assert_eq!(place_file(&p, b"first").unwrap(), Placed::Created);
        assert_eq!(place_file(&p, b"second").unwrap(), Placed::Existed);
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.cast"]);
    }

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    fn conflict(o: Outcome<u64>) -> String {
        match o {
            Err(Refusal::Conflict(m)) => m,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn chunks_append_at_the_received_length_and_retries_change_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s1.part");
        assert_eq!(
            write_chunk(&p, "s1", true, 0, 0, b"hello ")
                .unwrap()
                .unwrap(),
            6
        );
        assert_eq!(
            write_chunk(&p, "s1", false, 6, 6, b"world")
                .unwrap()
                .unwrap(),
            11
        );
        // The same chunk again (its answer was lost): accepted, nothing changes.
        assert_eq!(
            write_chunk(&p, "s1", false, 11, 6, b"world")
                .unwrap()
                .unwrap(),
            11
        );
        // Overlapping the end: the known part must match, the rest is appended.
        assert_eq!(
            write_chunk(&p, "s1", false, 11, 9, b"ld!")
                .unwrap()
                .unwrap(),
            12
        );
        assert_eq!(fs::read(&p).unwrap(), b"hello world!");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Other bytes at a received offset: refused, file unchanged.
        let m = conflict(write_chunk(&p, "s1", false, 12, 0, b"HELLO").unwrap());
        assert!(m.contains("differ"), "{m}");
        // Beyond the end: refused with where to resume.
        let m = conflict(write_chunk(&p, "s1", false, 12, 13, b"x").unwrap());
        assert!(m.contains("resume at 12"), "{m}");
        assert_eq!(fs::read(&p).unwrap(), b"hello world!");
    }

    #[test]
    fn a_tail_the_database_never_recorded_is_cut_before_the_next_chunk() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s2.part");
        write_chunk(&p, "s2", true, 0, 0, b"abc").unwrap().unwrap();
        // A request died after writing but before the row said so.
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"torn")
            .unwrap();
        assert_eq!(
            write_chunk(&p, "s2", false, 3, 3, b"def").unwrap().unwrap(),
            6
        );
        assert_eq!(fs::read(&p).unwrap(), b"abcdef");
        // A stale file under a new upload's name is discarded.
        assert_eq!(
            write_chunk(&p, "s2", true, 0, 0, b"xy").unwrap().unwrap(),
            2
        );
        assert_eq!(fs::read(&p).unwrap(), b"xy");
        // The file lost bytes the database recorded: resume where the file ends.
        let m = conflict(write_chunk(&p, "s2", false, 10, 10, b"z").unwrap());
        assert!(m.contains("resume at 2"), "{m}");
    }

    #[test]
    fn a_partial_upload_is_never_read_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("elsewhere");
        fs::write(&target, b"keep").unwrap();
        let p = d.path().join("s3.part");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        assert!(write_chunk(&p, "s3", true, 0, 0, b"evil").is_err());
        assert!(finish_partial(&p, &d.path().join("s3.cast"), "s3", 4, 4, &sha(b"keep")).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }

    const CAST: &[u8] = b"{\"version\": 2}\n[0.1, \"o\", \"hi\"]\n";

    #[test]
    fn completion_links_only_the_whole_file_with_the_right_sha256() {
        let d = tempfile::tempdir().unwrap();
        let (p, f) = (d.path().join("s4.part"), d.path().join("s4.cast"));
        write_chunk(&p, "s4", true, 0, 0, &CAST[..10])
            .unwrap()
            .unwrap();
        let n = CAST.len() as u64;
        // Not all bytes yet.
        match finish_partial(&p, &f, "s4", 10, n, &sha(CAST)).unwrap() {
            Finished::Refused(Refusal::Conflict(m)) => assert!(m.contains("resume at 10"), "{m}"),
            _ => panic!("an incomplete upload was completed"),
        }
        // Fewer bytes than received: not this recording, discarded.
        match finish_partial(&p, &f, "s4", 10, 5, &sha(&CAST[..5])).unwrap() {
            Finished::Discarded(Refusal::Conflict(m)) => assert!(m.contains("offset 0"), "{m}"),
            _ => panic!("a longer upload was completed"),
        }
        assert!(!p.exists() && !f.exists());
        write_chunk(&p, "s4", true, 0, 0, &CAST[..10])
            .unwrap()
            .unwrap();
        write_chunk(&p, "s4", false, 10, 10, &CAST[10..])
            .unwrap()
            .unwrap();
        // Wrong sha256: the bytes are discarded, nothing is stored.
        match finish_partial(&p, &f, "s4", n, n, &sha(b"other")).unwrap() {
            Finished::Discarded(Refusal::Conflict(m)) => assert!(m.contains("offset 0"), "{m}"),
            _ => panic!("a wrong sha256 was accepted"),
        }
        assert!(!p.exists() && !f.exists());
        write_chunk(&p, "s4", true, 0, 0, CAST).unwrap().unwrap();
        assert!(matches!(
            finish_partial(&p, &f, "s4", n, n, &sha(CAST)).unwrap(),
            Finished::Linked
        ));
        assert_eq!(fs::read(&f).unwrap(), CAST);
        // Completing again with the same file is fine; a final file with other content is
        // never replaced.
        assert!(matches!(
            finish_partial(&p, &f, "s4", n, n, &sha(CAST)).unwrap(),
            Finished::Linked
        ));
        fs::remove_file(&f).unwrap();
        fs::write(&f, b"{\"version\": 2}\n").unwrap();
        assert!(matches!(
            finish_partial(&p, &f, "s4", n, n, &sha(CAST)).unwrap(),
            Finished::Refused(Refusal::Conflict(_))
        ));
        assert_eq!(fs::read(&f).unwrap(), b"{\"version\": 2}\n");
    }

    #[test]
    fn completion_refuses_what_is_not_asciicast_v2() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("s5.cast");
        let long_header = format!("{{\"version\": 2, \"x\": \"{}\"}}\n", "a".repeat(70_000));
        for bad in [
            &b"not a cast\n"[..],
            b"{\"version\": 1}\n",
            b"\xff\xfe\n",
            long_header.as_bytes(),
        ] {
            let p = d.path().join("s5.part");
            write_chunk(&p, "s5", true, 0, 0, bad).unwrap().unwrap();
            let n = bad.len() as u64;
            assert!(
                matches!(
                    finish_partial(&p, &f, "s5", n, n, &sha(bad)).unwrap(),
                    Finished::Refused(Refusal::BadRequest(_))
                ),
                "{:?}",
                String::from_utf8_lossy(&bad[..bad.len().min(40)])
            );
            assert!(!f.exists());
        }
    }

    #[test]
    fn recording_ids_and_hashes_are_checked() {
        assert!(valid_sha256(&sha(b"x")));
        assert!(!valid_sha256(&sha(b"x").to_uppercase()));
        assert!(!valid_sha256("abc"));
        assert!(!valid_sha256(&"g".repeat(64)));
        for bad in ["", "../etc/passwd", "a/b", "A", "a.cast", &"a".repeat(65)] {
            assert!(!valid_session_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn claims_are_exclusive_and_released_on_drop() {
        let s = Store::new(100, 10);
        let a = s.claim("s-1").unwrap();
        assert!(matches!(s.claim("s-1"), Err(Refusal::Conflict(_))));
        assert!(s.claim("s-2").is_ok());
        drop(a);
        assert!(s.claim("s-1").is_ok());
    }

    #[test]
    fn prepare_dir_makes_a_private_directory_and_refuses_a_file() {
        let d = tempfile::tempdir().unwrap();
        prepare_dir(d.path()).unwrap();
        for sub in [dir(d.path()), partial_dir(d.path())] {
            let md = fs::metadata(sub).unwrap();
            assert!(md.is_dir());
            assert_eq!(md.permissions().mode() & 0o777, 0o700);
        }
        prepare_dir(d.path()).unwrap();
        let e = tempfile::tempdir().unwrap();
        fs::write(dir(e.path()), "x").unwrap();
        assert!(prepare_dir(e.path()).is_err());
    }

    // ---- Regressions of the recordings store review ----

    const POLICY: &str = r#"
[roles.dev]
logins = ["root"]
nodes = { env = "dev" }

[roles.dev-viewer]
logins = ["root"]
nodes = { env = "dev" }
view_recordings = { env = "dev" }

[users.alice]
roles = ["dev"]
[users.bob]
roles = ["dev"]
[users.dave]
roles = ["dev-viewer"]
"#;

    async fn service(max_bytes: u64, chunk_bytes: u64) -> (tempfile::TempDir, Service) {
        let d = tempfile::tempdir().unwrap();
        crate::keys::create(d.path(), "c.test", &["localhost".to_owned()], now()).unwrap();
        let keys = Arc::new(crate::keys::load(d.path()).unwrap());
        prepare_dir(d.path()).unwrap();
        let svc = Service {
            cluster: "c.test".parse().unwrap(),
            gateway: None,
            keys,
            db: Db::open(&d.path().join("posternd.db")).unwrap(),
            policy: std::sync::RwLock::new(Arc::new(Policy::parse(POLICY, "policy.toml").unwrap())),
            ghosts: Default::default(),
            data_dir: d.path().to_owned(),
            upload_slots: Arc::new(tokio::sync::Semaphore::new(UPLOAD_SLOTS)),
            recordings: Store::new(max_bytes, chunk_bytes),
            limits: Default::default(),
        };
        (d, svc)
    }

    /// A session as `/v1/gateway/authorize` records it (user alice, login root).
    async fn authorize(db: &Db, id: &str, gateway: &str, node: &str, labels: Option<&str>) {
        let (id, gateway, node) = (id.to_owned(), gateway.to_owned(), node.to_owned());
        let labels = labels.map(str::to_owned);
        db.run(move |c| {
            c.execute(
                "INSERT INTO gateway_sessions (id, gateway, user, login, node, first_authorized, labels) VALUES (?1, ?2, 'alice', 'root', ?3, 1, ?4)",
                params![id, gateway, node, labels],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    }

    fn gw(name: &str) -> NodeName {
        postern_core::names::parse_node_name(name).unwrap()
    }

    async fn slot(svc: &Service) -> OwnedSemaphorePermit {
        Arc::clone(&svc.upload_slots).acquire_owned().await.unwrap()
    }

    fn meta(id: &str, user: &str, bytes: usize) -> RecordingMeta {
        RecordingMeta {
            id: id.to_owned(),
            user: user.parse().unwrap(),
            login: "root".parse().unwrap(),
            node: gw("web1"),
            gateway: "ignored".into(),
            started_at: 1,
            ended_at: 2,
            interrupted: false,
            bytes: bytes as u64,
        }
    }

    fn complete_req(id: &str, user: &str, cast: &[u8]) -> RecordingComplete {
        RecordingComplete {
            meta: meta(id, user, cast.len()),
            sha256: sha(cast),
        }
    }

    fn single(id: &str, user: &str) -> RecordingUpload {
        RecordingUpload {
            meta: meta(id, user, CAST.len()),
            cast: String::from_utf8(CAST.to_vec()).unwrap(),
        }
    }

    fn forbidden<T: std::fmt::Debug>(o: Outcome<T>) -> String {
        match o {
            Err(Refusal::Forbidden(m)) => m,
            other => panic!("expected a refusal (403), got {other:?}"),
        }
    }

    async fn received_of(db: &Db, id: &str) -> Option<i64> {
        let id = id.to_owned();
        db.run(move |c| {
            Ok(c.query_row(
                "SELECT received FROM recording_uploads WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
        .unwrap()
    }

    /// Finding 4: a chunk request dropped while its write runs (the gateway disconnected or
    /// timed out) used to release its claim at once, so that a retry wrote the same file
    /// beside the leftover writer.
    #[tokio::test]
    async fn regression_a_dropped_chunk_request_keeps_its_claim_until_the_chunk_is_durable() {
        let (d, svc) = service(1 << 20, 4096).await;
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
        assert_eq!(fs::read(partial_of(d.path(), "s-1")).unwrap(), CAST);
        assert_eq!(svc.upload_slots.available_permits(), UPLOAD_SLOTS);
        // The upload goes on from there.
        let stored = svc
            .recording_complete(gw("gw1"), "s-1".into(), complete_req("s-1", "alice", CAST))
            .await
            .unwrap();
        assert_eq!(stored.bytes, CAST.len() as u64);
    }

    /// Finding 4: a partial file linked to its final name (same inode) must never be written
    /// or cut through the partial name, or the stored recording changes.
    #[test]
    fn regression_a_linked_partial_file_is_never_written_or_cut() {
        let d = tempfile::tempdir().unwrap();
        let (p, f) = (d.path().join("s6.part"), d.path().join("s6.cast"));
        let n = CAST.len() as u64;
        write_chunk(&p, "s6", true, 0, 0, CAST).unwrap().unwrap();
        // A completion linked it and died before it removed the partial name.
        fs::hard_link(&p, &f).unwrap();
        // A writer that trusts fewer bytes than the file holds would cut it: refused.
        let m = conflict(write_chunk(&p, "s6", false, 5, 5, b"xxxxxxxxxx").unwrap());
        assert!(m.contains("already stored"), "{m}");
        let m = conflict(write_chunk(&p, "s6", true, 0, 0, b"x").unwrap());
        assert!(m.contains("already stored"), "{m}");
        assert_eq!(fs::read(&f).unwrap(), CAST);
        // Completing again accepts the stored file and removes the partial name.
        assert!(matches!(
            finish_partial(&p, &f, "s6", n, n, &sha(CAST)).unwrap(),
            Finished::Linked
        ));
        assert!(!p.exists());
        assert_eq!(fs::read(&f).unwrap(), CAST);
        // A completion leaves no partial name behind.
        let (p, f) = (d.path().join("s7.part"), d.path().join("s7.cast"));
        write_chunk(&p, "s7", true, 0, 0, CAST).unwrap().unwrap();
        assert!(matches!(
            finish_partial(&p, &f, "s7", n, n, &sha(CAST)).unwrap(),
            Finished::Linked
        ));
        assert!(!p.exists());
        assert_eq!(fs::metadata(&f).unwrap().nlink(), 1);
    }

    fn insert_row(c: &Connection, id: &str, user: &str, node: &str, labels: Option<&str>) {
        c.execute(
            "INSERT INTO recordings (id, user, login, node, gateway, started_at, ended_at, interrupted, bytes, sha256, stored_at, node_labels) VALUES (?1, ?2, 'root', ?3, 'gw1', 1, 2, 0, 3, 'x', 4, ?4)",
            params![id, user, node, labels],
        )
        .unwrap();
    }

    fn set_node(c: &Connection, name: &str, kind: &str, labels: &str) {
        c.execute("DELETE FROM nodes WHERE name = ?1", [name])
            .unwrap();
        c.execute(
            "INSERT INTO nodes (name, kind, address, labels, joined_at, host_key, identity_serial) VALUES (?1, ?2, '127.0.0.1:22', ?3, 1, 'k', 1)",
            params![name, kind, labels],
        )
        .unwrap();
    }

    /// A name removed and added again is a new user: it saw every recording of the old one.
    #[test]
    fn regression_a_re_added_user_saw_the_old_users_recordings() {
        let d = tempfile::tempdir().unwrap();
        let c = crate::db::open_connection(&d.path().join("db")).unwrap();
        crate::db::init_schema(&c).unwrap();
        let alice: Username = "alice".parse().unwrap();
        let add = |created: i64| {
            c.execute("DELETE FROM users WHERE name = 'alice'", [])
                .unwrap();
            c.execute(
                "INSERT INTO users (name, created_at) VALUES ('alice', ?1)",
                [created],
            )
            .unwrap();
        };
        add(100);
        set_node(&c, "web1", "node", "env=dev");
        let session = Session {
            id: "s-old".into(),
            gateway: "gw1".into(),
            user: "alice".into(),
            login: "root".into(),
            node: "web1".into(),
            labels: Some("env=dev".into()),
            first_authorized: 150,
        };
        insert_stored(&c, &meta("s-old", "alice", 3), "x", &session, "single", 160).unwrap();
        let none = Visibility {
            any: false,
            labels: vec![],
        };
        let seen = |c: &Connection| -> Vec<String> {
            list_visible(c, &alice, &none, None, None, 100)
                .unwrap()
                .into_iter()
                .map(|m| m.id)
                .collect()
        };
        assert_eq!(seen(&c), ["s-old"]);
        assert!(is_own(&c, &alice, "s-old").unwrap());
        // `users rm alice`, later `users add alice`: someone else.
        add(200);
        assert!(
            seen(&c).is_empty(),
            "the new alice sees the old one's session"
        );
        assert!(!is_own(&c, &alice, "s-old").unwrap());
    }

    /// Finding 5: visibility followed the server's current labels (a relabelled or replaced
    /// server showed old sessions to the wrong viewers), and play looked up labels of any kind
    /// of node while the listing looked up servers only.
    #[test]
    fn regression_recordings_are_visible_by_the_labels_of_their_session() {
        let d = tempfile::tempdir().unwrap();
        let c = crate::db::open_connection(&d.path().join("db")).unwrap();
        crate::db::init_schema(&c).unwrap();
        let policy = Policy::parse(POLICY, "policy.toml").unwrap();
        let dave: Username = "dave".parse().unwrap();
        let session = |id: &str, labels: Option<&str>| Session {
            id: id.into(),
            gateway: "gw1".into(),
            user: "alice".into(),
            login: "root".into(),
            node: "web1".into(),
            labels: labels.map(str::to_owned),
            first_authorized: 1,
        };
        set_node(&c, "web1", "node", "env=prod");
        // Stored with the labels the session was authorized with.
        let mut m = meta("s-prod", "alice", 3);
        insert_stored(
            &c,
            &m,
            "x",
            &session("s-prod", Some("env=prod")),
            "single",
            1,
        )
        .unwrap();
        // A session authorized before the CA kept labels: the server's labels at store time.
        m.id = "s-prod2".into();
        insert_stored(&c, &m, "x", &session("s-prod2", None), "single", 1).unwrap();
        // A row stored by an older posternd, without a snapshot.
        insert_row(&c, "s-legacy", "alice", "web1", None);
        // A legacy row of a name that is now a gateway labelled env=dev.
        set_node(&c, "gate9", "gateway", "env=dev");
        insert_row(&c, "s-gate", "alice", "gate9", None);

        // web1 is relabelled (or replaced by another server of that name) as env=dev.
        set_node(&c, "web1", "node", "env=dev");
        let vis = visibility(&c, &policy, &dave).unwrap();
        let seen: Vec<String> = list_visible(&c, &dave, &vis, None, None, 100)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(
            seen,
            ["s-legacy"],
            "old rows fall back to the current labels"
        );
        for (id, visible) in [
            ("s-prod", false),
            ("s-prod2", false),
            ("s-legacy", true),
            ("s-gate", false),
        ] {
            let (_, labels) = load_for_viewing(&c, id).unwrap().unwrap();
            assert_eq!(
                policy.recording_viewer_role(&dave, &labels).is_some(),
                visible,
                "{id}: list and play must agree"
            );
        }
        let snap: Option<String> = c
            .query_row(
                "SELECT node_labels FROM recordings WHERE id = 's-prod2'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(snap.as_deref(), Some("env=prod"));

        // The other way round: a dev session stays visible to dev viewers when the server
        // becomes prod or leaves.
        m.id = "s-dev".into();
        insert_stored(&c, &m, "x", &session("s-dev", Some("env=dev")), "single", 1).unwrap();
        c.execute("DELETE FROM nodes WHERE name = 'web1'", [])
            .unwrap();
        let vis = visibility(&c, &policy, &dave).unwrap();
        let seen: Vec<String> = list_visible(&c, &dave, &vis, None, None, 100)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(seen, ["s-dev"]);
        // Their own recordings (of sessions since their user record was made), users always
        // see.
        c.execute(
            "INSERT INTO users (name, created_at) VALUES ('alice', 0)",
            [],
        )
        .unwrap();
        let alice: Username = "alice".parse().unwrap();
        let vis = visibility(&c, &policy, &alice).unwrap();
        assert_eq!(
            list_visible(&c, &alice, &vis, None, None, 100)
                .unwrap()
                .len(),
            5
        );
    }

    /// Finding 6: a recording of an id the CA never authorized was stored with whatever user
    /// and server the gateway claimed, on every upload route.
    #[tokio::test]
    async fn regression_recordings_of_unauthorized_sessions_are_refused_on_every_route() {
        let (d, svc) = service(1 << 20, 4096).await;
        let m = forbidden(
            svc.recording_store(gw("gw1"), single("s-x", "alice"), slot(&svc).await)
                .await,
        );
        assert!(m.contains("no session this CA authorized"), "{m}");
        let m = forbidden(
            svc.recording_chunk(
                gw("gw1"),
                "s-x".into(),
                0,
                axum::body::Bytes::from_static(CAST),
                slot(&svc).await,
            )
            .await,
        );
        assert!(m.contains("no session this CA authorized"), "{m}");
        forbidden(svc.recording_upload_status(gw("gw1"), "s-x".into()).await);
        forbidden(
            svc.recording_complete(gw("gw1"), "s-x".into(), complete_req("s-x", "alice", CAST))
                .await,
        );
        assert!(!file_of(d.path(), "s-x").exists());
        assert!(!partial_of(d.path(), "s-x").exists());

        // The further channels of an authorized session belong to it, on both routes.
        authorize(&svc.db, "s-a", "gw1", "web1", Some("env=dev")).await;
        for id in ["s-a", "s-a-2"] {
            svc.recording_chunk(
                gw("gw1"),
                id.into(),
                0,
                axum::body::Bytes::from_static(CAST),
                slot(&svc).await,
            )
            .await
            .unwrap();
            svc.recording_complete(gw("gw1"), id.into(), complete_req(id, "alice", CAST))
                .await
                .unwrap();
        }
        svc.recording_store(gw("gw1"), single("s-a-3", "alice"), slot(&svc).await)
            .await
            .unwrap();
        let labels: String = svc
            .db
            .run(|c| {
                Ok(c.query_row(
                    "SELECT node_labels FROM recordings WHERE id = 's-a-3'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(labels, "env=dev");
        // Nothing else maps to a session.
        for id in ["s-a-1", "s-a-02", "s-a-x", "s-a-2-2", "s-ab"] {
            let m = forbidden(
                svc.recording_store(gw("gw1"), single(id, "alice"), slot(&svc).await)
                    .await,
            );
            assert!(m.contains("no session"), "{id}: {m}");
        }
        // Another user, or another gateway, than the session's.
        let m = forbidden(
            svc.recording_store(gw("gw1"), single("s-a-4", "bob"), slot(&svc).await)
                .await,
        );
        assert!(m.contains("does not match session s-a"), "{m}");
        svc.recording_chunk(
            gw("gw1"),
            "s-a-5".into(),
            0,
            axum::body::Bytes::from_static(CAST),
            slot(&svc).await,
        )
        .await
        .unwrap();
        let m = forbidden(
            svc.recording_complete(
                gw("gw1"),
                "s-a-5".into(),
                complete_req("s-a-5", "bob", CAST),
            )
            .await,
        );
        assert!(m.contains("does not match"), "{m}");
        let m = forbidden(
            svc.recording_chunk(
                gw("gw2"),
                "s-a-6".into(),
                0,
                axum::body::Bytes::from_static(CAST),
                slot(&svc).await,
            )
            .await,
        );
        assert!(m.contains("another gateway"), "{m}");
        let m = forbidden(
            svc.recording_store(gw("gw2"), single("s-a-6", "alice"), slot(&svc).await)
                .await,
        );
        assert!(m.contains("does not match"), "{m}");
        for id in ["s-a-4", "s-a-5", "s-a-6"] {
            assert!(!file_of(d.path(), id).exists(), "{id}");
        }
    }

    fn age(path: &Path, secs: u64) {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(secs))
            .unwrap();
    }

    /// Finding 7: abandoned partial uploads (rows and files) were never removed.
    #[tokio::test]
    async fn regression_abandoned_partial_uploads_are_swept() {
        let d = tempfile::tempdir().unwrap();
        prepare_dir(d.path()).unwrap();
        let db = Db::open(&d.path().join("posternd.db")).unwrap();
        let store = Store::new(1 << 20, 4096);
        let now = now();
        let old = STALE_UPLOAD_SECS + 3600;
        for (id, updated) in [
            ("s-old", now - old),
            ("s-new", now - 60),
            ("s-busy", now - old),
        ] {
            fs::write(partial_of(d.path(), id), b"abc").unwrap();
            let id = id.to_owned();
            db.run(move |c| {
                c.execute(
                    "INSERT INTO recording_uploads (id, gateway, received, started_at, updated_at) VALUES (?1, 'gw1', 3, 1, ?2)",
                    params![id, i(updated)],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        }
        // Files without a row: abandoned (old) and just created (young).
        fs::write(partial_of(d.path(), "s-orphan"), b"x").unwrap();
        age(&partial_of(d.path(), "s-orphan"), old);
        fs::write(partial_of(d.path(), "s-young"), b"x").unwrap();
        let tmp = dir(d.path()).join(".upload-0123.tmp");
        fs::write(&tmp, b"x").unwrap();
        age(&tmp, old);
        // Stored recordings are never touched, however old.
        fs::write(file_of(d.path(), "s-done"), CAST).unwrap();
        age(&file_of(d.path(), "s-done"), old);
        // An upload whose work is in progress (claimed) is left alone.
        let busy = store.claim("s-busy").unwrap();

        let swept = sweep(&db, &store, d.path(), now).await.unwrap();
        assert_eq!(
            swept,
            Swept {
                uploads: 1,
                files: 2,
                bytes: 3
            }
        );
        assert_eq!(received_of(&db, "s-old").await, None);
        assert!(!partial_of(d.path(), "s-old").exists());
        assert!(!partial_of(d.path(), "s-orphan").exists());
        assert!(!tmp.exists());
        for id in ["s-new", "s-young", "s-busy"] {
            assert!(partial_of(d.path(), id).exists(), "{id}");
        }
        assert_eq!(received_of(&db, "s-new").await, Some(3));
        assert_eq!(fs::read(file_of(d.path(), "s-done")).unwrap(), CAST);
        // Once its work ends, the abandoned upload goes at the next sweep.
        drop(busy);
        let swept = sweep(&db, &store, d.path(), now).await.unwrap();
        assert_eq!(swept.uploads, 1);
        assert!(!partial_of(d.path(), "s-busy").exists());
        assert_eq!(
            sweep(&db, &store, d.path(), now).await.unwrap(),
            Swept::default()
        );
    }

    /// Finding 7: a gateway could hold any amount of unfinished uploads.
    #[tokio::test]
    async fn regression_a_gateway_holds_at_most_its_cap_of_unfinished_uploads() {
        let (_d, svc) = service(10_000, 4096).await;
        assert_eq!(svc.recordings.partial_cap(), 40_000);
        authorize(&svc.db, "s-c", "gw1", "web1", None).await;
        svc.db
            .run(|c| {
                c.execute(
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
