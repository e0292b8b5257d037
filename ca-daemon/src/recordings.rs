//! Session recordings: gateways upload each finished asciicast v2 file; the file is kept as
//! `DATA_DIR/recordings/<id>.cast` (mode 0600) and its metadata in the `recordings` table.
//! Users list and fetch their own recordings, and other users' recordings of servers that a
//! role's `view_recordings` selects, with the X.509 identity of `postern login`.
//!
//! Uploads are resumable, so that a recording of any size (up to `[recordings] max_bytes`)
//! survives a restart of either side: the gateway asks where the upload stands, appends
//! chunks at an offset to `DATA_DIR/recordings/partial/<id>.part`, and completes it with the
//! total size and SHA-256, which links the file to its final name and inserts the row in one
//! step. The single-request upload of earlier gateways (at most [`MAX_RECORDING_BYTES`]) stays.
//!
//! **Invariant:** a stored recording is never replaced. The file reaches its final name by a
//! hard link (which fails when the name exists), and the row is inserted with
//! `INSERT OR IGNORE`, so a retried upload or completion changes nothing.
//!
//! **Invariant:** a partial upload is trusted only up to the length the database recorded after
//! the chunk's fsync (`recording_uploads.received`); a tail left by a request that died is cut
//! off before the next chunk is appended, and the SHA-256 is checked before anything is visible.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::{anyhow, bail, Context, Result};
use postern_core::api::{RecordingComplete, RecordingMeta, RecordingUpload, RecordingUploadStatus};
use postern_core::{Labels, Login, NodeName, Policy, Username};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit;
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

/// The longest asciicast header line accepted (the header is a small JSON object).
const MAX_HEADER_BYTES: usize = 64 * 1024;

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
    /// Ids with a chunk or completion in progress: one request per recording at a time.
    busy: Mutex<HashSet<String>>,
}

impl Store {
    /// Limits from the configuration.
    pub fn new(max_bytes: u64, chunk_bytes: u64) -> Store {
        Store {
            max_bytes,
            chunk_bytes,
            busy: Mutex::new(HashSet::new()),
        }
    }

    /// Claims `id` until the claim is dropped; refuses while another request holds it (a
    /// gateway retrying a request that timed out on its side while it still runs here).
    fn claim(&self, id: &str) -> Outcome<Claim<'_>> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if !busy.insert(id.to_owned()) {
            return Err(Refusal::Conflict(format!(
                "another request for recording {id} is in progress; retry"
            )));
        }
        Ok(Claim {
            store: self,
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

/// One request's hold on a recording id.
struct Claim<'a> {
    store: &'a Store,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.store
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
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

/// Checks the first line of an asciicast: a JSON object with `"version": 2`.
fn check_cast(cast: &str) -> std::result::Result<(), String> {
    let header = cast.split('\n').next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(header)
        .map_err(|e| format!("the cast's first line is not a JSON header: {e}"))?;
    if v.get("version").and_then(serde_json::Value::as_u64) != Some(2) {
        return Err("the cast's header does not say \"version\": 2 (asciicast v2)".into());
    }
    Ok(())
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

/// The SHA-256 (lowercase hex) of a file, read in bounded pieces.
fn sha256_of(f: &mut fs::File) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(h.finalize()))
}

fn sha256_of_path(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    sha256_of(&mut f).with_context(|| format!("cannot read {}", path.display()))
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

/// Checks a complete partial upload against its size, asciicast header and SHA-256, and
/// links it to its final name (blocking).
fn finish_partial(
    partial: &Path,
    final_path: &Path,
    id: &str,
    recorded: u64,
    bytes: u64,
    sha256: &str,
) -> Result<Finished> {
    let mut f = match open_partial(partial, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Finished::Refused(incomplete(id, 0, bytes)))
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", partial.display())),
    };
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
    let header_ok = match head.iter().position(|b| *b == b'\n') {
        Some(n) => std::str::from_utf8(&head[..n])
            .map_err(|_| "the cast's first line is not UTF-8".to_owned())
            .and_then(check_cast),
        None if bytes <= MAX_HEADER_BYTES as u64 => std::str::from_utf8(&head)
            .map_err(|_| "the cast's first line is not UTF-8".to_owned())
            .and_then(check_cast),
        None => Err(format!(
            "the cast's first line is longer than {MAX_HEADER_BYTES} bytes"
        )),
    };
    let got = sha256_of(&mut f).with_context(|| format!("cannot read {}", partial.display()))?;
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
    match fs::hard_link(partial, final_path) {
        Ok(()) => {}
        // Left by a completion that died before its row was written: the same file is fine,
        // another one is never replaced.
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
/// `view_recordings` against the servers' current labels.
struct Visibility {
    /// Whether any role of the user has `view_recordings` at all.
    any: bool,
    /// Servers in the inventory whose labels a `view_recordings` selects.
    nodes: Vec<String>,
    /// Whether servers no longer in the inventory are selected (only `"*" = "*"` does).
    removed: bool,
}

/// The labels of a server in the inventory (`None` when it was removed).
fn labels_of(c: &Connection, node: &str) -> Result<Option<Labels>> {
    let labels: Option<String> = c
        .query_row("SELECT labels FROM nodes WHERE name = ?1", [node], |r| {
            r.get(0)
        })
        .optional()?;
    // Labels the CA stored always parse; one that does not selects nothing.
    Ok(labels.map(|l| l.parse().unwrap_or_default()))
}

fn visibility(c: &Connection, policy: &Policy, me: &Username) -> Result<Visibility> {
    if !policy.views_others_recordings(me) {
        return Ok(Visibility {
            any: false,
            nodes: Vec::new(),
            removed: false,
        });
    }
    let mut st = c.prepare("SELECT name, labels FROM nodes WHERE kind = 'node'")?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let nodes = rows
        .into_iter()
        .filter(|(_, labels)| {
            labels
                .parse::<Labels>()
                .is_ok_and(|l| policy.recording_viewer_role(me, &l).is_some())
        })
        .map(|(name, _)| name)
        .collect();
    Ok(Visibility {
        any: true,
        nodes,
        removed: policy
            .recording_viewer_role(me, &Labels::default())
            .is_some(),
    })
}

/// The recordings `me` may see, newest first: their own, and others' on servers their
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
        "SELECT {COLUMNS} FROM recordings \
         WHERE (?1 IS NULL OR user = ?1) AND (?2 IS NULL OR node = ?2) \
         AND (user = ?3 OR node IN (SELECT value FROM json_each(?4)) \
              OR (?5 AND node NOT IN (SELECT name FROM nodes WHERE kind = 'node'))) \
         ORDER BY started_at DESC, id LIMIT ?6"
    ))?;
    let nodes = serde_json::to_string(&vis.nodes)?;
    let rows = st
        .query_map(
            params![
                user,
                node,
                me.as_str(),
                nodes,
                vis.removed,
                limit.min(MAX_LIST)
            ],
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
    let locked = crate::nodes::active_locks(c, now)?
        .iter()
        .any(|l| l.target == "user" && l.name == user.as_str());
    if locked {
        return Ok(Err(Refusal::Forbidden(format!("user {user} is locked"))));
    }
    Ok(Ok(user))
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

/// Where the upload of `id` by `gateway` stands; refuses an id that another gateway stored,
/// is uploading, or was authorized for.
fn upload_state(c: &Connection, id: &str, gateway: &str) -> Result<Outcome<UploadState>> {
    if let Some((meta, sha256)) = load(c, id)? {
        if meta.gateway != gateway {
            return Ok(Err(Refusal::Conflict(format!(
                "recording {id} was stored by another gateway"
            ))));
        }
        return Ok(Ok(UploadState::Complete { meta, sha256 }));
    }
    let session: Option<String> = c
        .query_row(
            "SELECT gateway FROM gateway_sessions WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()?;
    if session.is_some_and(|g| g != gateway) {
        return Ok(Err(Refusal::Forbidden(format!(
            "session {id} was authorized for another gateway"
        ))));
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

/// Whether a recording matches the session the CA authorized under its id: `Ok(true)` when
/// it does, `Ok(false)` when the CA authorized no session of that id (stored, and audited as
/// such), a refusal when the user, login, server or gateway differ.
fn session_matches(c: &Connection, m: &RecordingMeta, gateway: &str) -> Result<Outcome<bool>> {
    let session: Option<(String, String, String, String)> = c
        .query_row(
            "SELECT gateway, user, login, node FROM gateway_sessions WHERE id = ?1",
            [&m.id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    Ok(match session {
        None => Ok(false),
        Some(s)
            if s == (
                gateway.to_owned(),
                m.user.to_string(),
                m.login.to_string(),
                m.node.to_string(),
            ) =>
        {
            Ok(true)
        }
        Some(_) => Err(Refusal::Forbidden(format!(
            "recording {} does not match the session the CA authorized under that id",
            m.id
        ))),
    })
}

/// Inserts a stored recording's row and its audit event, and forgets its partial upload. A
/// row that exists already (a concurrent single-request upload won) is answered instead.
fn insert_stored(
    c: &Connection,
    meta: &RecordingMeta,
    sha: &str,
    authorized: bool,
    upload: &str,
    now: u64,
) -> Result<RecordingMeta> {
    let n = c.execute(
        "INSERT OR IGNORE INTO recordings (id, user, login, node, gateway, started_at, ended_at, interrupted, bytes, sha256, stored_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            meta.id, meta.user.as_str(), meta.login.as_str(), meta.node.as_str(), meta.gateway,
            i(meta.started_at), i(meta.ended_at), meta.interrupted, i(meta.bytes), sha, i(now),
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
            "authorized_session": authorized, "upload": upload,
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
    /// idempotently by id (gateways before resumable uploads).
    pub async fn recording_store(
        &self,
        gateway: NodeName,
        up: RecordingUpload,
    ) -> Outcome<RecordingMeta> {
        check_upload(&up)?;
        if up.meta.bytes > self.recordings.max_bytes {
            return Err(self.recordings.too_large(&up.meta.id, up.meta.bytes));
        }
        let RecordingUpload { mut meta, cast } = up;
        meta.gateway = gateway.to_string();
        let now = now();
        let _claim = self.recordings.claim(&meta.id)?;

        // A retried upload answers with what is stored and touches nothing.
        let m2 = meta.clone();
        let authorized = self
            .db
            .run(
                move |c| -> Result<Outcome<std::result::Result<bool, RecordingMeta>>> {
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
        let authorized = match authorized {
            Ok(a) => a,
            Err(stored) => return Ok(stored),
        };

        let path = file_of(&self.data_dir, &meta.id);
        let (sha, placed) = {
            let path = path.clone();
            blocking(move || -> Result<(String, Placed)> {
                let placed = place_file(&path, cast.as_bytes())?;
                let sha = match placed {
                    Placed::Created => hex::encode(Sha256::digest(cast.as_bytes())),
                    // Left by an upload that crashed before its row was written, or by a
                    // concurrent one: that file stays, and the row describes it.
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
        let stored = self
            .db
            .run(move |c| insert_stored(c, &meta, &sha, authorized, "single", now))
            .await?;
        // A resumable upload of the same recording, if one was begun, is moot now.
        let _ = fs::remove_file(partial_of(&self.data_dir, &id));
        Ok(stored)
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
                // A partial file left by a completion that died after its row was written
                // shares the stored file's blocks; it is only a name to remove.
                let _ = fs::remove_file(partial_of(&self.data_dir, &id));
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
    /// (see [`RecordingUploadStatus`] for the rules).
    pub async fn recording_chunk(
        &self,
        gateway: NodeName,
        id: String,
        offset: u64,
        bytes: axum::body::Bytes,
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
        let _claim = store.claim(&id)?;
        let (i2, gw) = (id.clone(), gateway.to_string());
        let state = self.db.run(move |c| upload_state(c, &i2, &gw)).await??;
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
        let path = partial_of(&self.data_dir, &id);
        let i2 = id.clone();
        let received =
            blocking(move || write_chunk(&path, &i2, fresh, recorded, offset, &bytes)).await??;
        let (i2, gw, now) = (id.clone(), gateway.to_string(), now());
        self.db
            .run(move |c| {
                c.execute(
                    "INSERT INTO recording_uploads (id, gateway, received, started_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4) \
                     ON CONFLICT(id) DO UPDATE SET received = excluded.received, updated_at = excluded.updated_at",
                    params![i2, gw, i(received), i(now)],
                )?;
                Ok(())
            })
            .await?;
        Ok(store.status(&id, received, false))
    }

    /// `POST /v1/gateway/recordings/ID/complete`: checks the size and SHA-256 of a partial
    /// upload and makes it a stored recording, atomically and idempotently.
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
        let _claim = self.recordings.claim(&id)?;
        let m2 = meta.clone();
        let state = self
            .db
            .run(move |c| -> Result<Outcome<(UploadState, bool)>> {
                let state = match upload_state(c, &m2.id, &m2.gateway)? {
                    Ok(s) => s,
                    Err(r) => return Ok(Err(r)),
                };
                if matches!(state, UploadState::Complete { .. }) {
                    return Ok(Ok((state, true)));
                }
                Ok(session_matches(c, &m2, &m2.gateway)?.map(|a| (state, a)))
            })
            .await??;
        let (recorded, authorized) = match state {
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
            (UploadState::Partial { received }, a) => (received, a),
        };
        let partial = partial_of(&self.data_dir, &id);
        let final_path = file_of(&self.data_dir, &id);
        let (p2, i2, s2, bytes) = (partial.clone(), id.clone(), sha256.clone(), meta.bytes);
        let finished =
            blocking(move || finish_partial(&p2, &final_path, &i2, recorded, bytes, &s2)).await?;
        match finished {
            Finished::Linked => {}
            Finished::Refused(r) => return Err(r),
            Finished::Discarded(r) => {
                let i2 = id.clone();
                self.db
                    .run(move |c| {
                        c.execute("DELETE FROM recording_uploads WHERE id = ?1", [&i2])?;
                        Ok(())
                    })
                    .await?;
                return Err(r);
            }
        }
        let now = now();
        let stored = self
            .db
            .run(move |c| insert_stored(c, &meta, &sha256, authorized, "chunked", now))
            .await?;
        // The stored file is a hard link of the partial one: removing this name frees nothing
        // and loses nothing.
        let _ = fs::remove_file(&partial);
        Ok(stored)
    }

    /// `GET /v1/recordings`: the recordings the caller may see: their own, and other users'
    /// on servers that a role's `view_recordings` selects. Asking for another user's without
    /// any `view_recordings` is refused rather than answered with an empty list.
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
                let stored = if valid { load(c, &r2)? } else { None };
                let Some((meta, _)) = stored else {
                    return Ok(Ok(Err(views_others)));
                };
                let role = if meta.user == me {
                    None
                } else {
                    let labels = labels_of(c, meta.node.as_str())?.unwrap_or_default();
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
}
