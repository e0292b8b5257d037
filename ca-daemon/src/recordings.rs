//! Session recordings: gateways upload each finished asciicast v2 file; the file is kept as
//! `DATA_DIR/recordings/<id>.cast` (mode 0600) and its metadata in the `recordings` table.
//! Users list and fetch their own recordings with the X.509 identity of `postern login`.
//!
//! **Invariant:** a stored recording is never replaced. The file is written to a temporary
//! name, fsynced, and hard-linked to its final name (which fails when the name exists), and
//! the row is inserted with `INSERT OR IGNORE`, so a retried upload changes nothing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use postern_core::api::{RecordingMeta, RecordingUpload};
use postern_core::{Login, NodeName, Username};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit;
use crate::gateway::{gateway_for, valid_session_id};
use crate::service::{now, Refusal, Service};
use crate::x509::ClientIdentity;

/// Uploads buffered at the same time; each may be up to [`MAX_RECORDING_BYTES`].
pub const UPLOAD_SLOTS: usize = 4;

/// The largest recording upload (the JSON body) accepted.
pub const MAX_RECORDING_BYTES: usize = 256 * 1024 * 1024;

/// Default and maximum number of rows a listing returns (newest first).
pub const DEFAULT_LIST: u32 = 100;
/// The most rows one listing returns.
pub const MAX_LIST: u32 = 10_000;

type Outcome<T> = std::result::Result<T, Refusal>;

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The recordings directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("recordings")
}

/// Creates the recordings directory (0700) or checks that it is a real directory, and makes
/// it private: recordings hold everything users typed and saw.
pub fn prepare_dir(data_dir: &Path) -> Result<()> {
    let d = dir(data_dir);
    match fs::symlink_metadata(&d) {
        Ok(md) if md.file_type().is_symlink() || !md.is_dir() => {
            bail!("{} exists and is not a directory", d.display())
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .mode(0o700)
            .create(&d)
            .with_context(|| format!("cannot create {}", d.display()))?,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", d.display())),
    }
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {}", d.display()))
}

/// The file of one recording. `id` must have passed [`valid_session_id`].
fn file_of(data_dir: &Path, id: &str) -> PathBuf {
    dir(data_dir).join(format!("{id}.cast"))
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

fn check_upload(up: &RecordingUpload) -> Outcome<()> {
    let m = &up.meta;
    if !valid_session_id(&m.id) {
        return Err(Refusal::BadRequest(
            "meta.id must be 1 to 64 characters of a-z, 0-9 and -".into(),
        ));
    }
    if m.bytes != up.cast.len() as u64 {
        return Err(Refusal::BadRequest(format!(
            "meta.bytes is {} but the cast has {} bytes",
            m.bytes,
            up.cast.len()
        )));
    }
    if m.ended_at < m.started_at {
        return Err(Refusal::BadRequest(
            "meta.ended_at is before meta.started_at".into(),
        ));
    }
    check_cast(&up.cast).map_err(Refusal::BadRequest)
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
    fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync {}", parent.display()))?;
    Ok(placed)
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

impl Service {
    /// The gateway behind an mTLS identity, checked before an upload's body is read.
    pub async fn authenticate_gateway(&self, id: ClientIdentity) -> Outcome<NodeName> {
        let now = now();
        self.db
            .run(move |c| gateway_for(c, &id, now))
            .await?
            .ok_or_else(|| Refusal::Forbidden("only a joined gateway may upload recordings".into()))
    }

    /// `POST /v1/gateway/recordings`: stores one finished recording, idempotently by id.
    pub async fn recording_store(
        &self,
        gateway: NodeName,
        up: RecordingUpload,
    ) -> Outcome<RecordingMeta> {
        check_upload(&up)?;
        let RecordingUpload { mut meta, cast } = up;
        meta.gateway = gateway.to_string();
        let now = now();

        // A retried upload answers with what is stored and touches nothing.
        let (id, gw, m2) = (meta.id.clone(), meta.gateway.clone(), meta.clone());
        let authorized = self
            .db
            .run(
                move |c| -> Result<Outcome<std::result::Result<bool, RecordingMeta>>> {
                    if let Some((stored, _)) = load(c, &id)? {
                        if stored.gateway != gw {
                            return Ok(Err(Refusal::Conflict(format!(
                                "recording {id} was stored by another gateway"
                            ))));
                        }
                        return Ok(Ok(Err(stored)));
                    }
                    let session: Option<(String, String, String, String)> = c
                        .query_row(
                            "SELECT gateway, user, login, node FROM gateway_sessions WHERE id = ?1",
                            [&id],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                        )
                        .optional()?;
                    match session {
                        None => Ok(Ok(Ok(false))),
                        Some(s)
                            if s == (
                                gw.clone(),
                                m2.user.to_string(),
                                m2.login.to_string(),
                                m2.node.to_string(),
                            ) =>
                        {
                            Ok(Ok(Ok(true)))
                        }
                        Some(_) => Ok(Err(Refusal::Forbidden(format!(
                        "recording {id} does not match the session the CA authorized under that id"
                    )))),
                    }
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
            tokio::task::spawn_blocking(move || -> Result<(String, Placed)> {
                let placed = place_file(&path, cast.as_bytes())?;
                let sha = match placed {
                    Placed::Created => hex::encode(Sha256::digest(cast.as_bytes())),
                    // Left by an upload that crashed before its row was written, or by a
                    // concurrent one: that file stays, and the row describes it.
                    Placed::Existed => hex::encode(Sha256::digest(
                        fs::read(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?,
                    )),
                };
                Ok((sha, placed))
            })
            .await
            .map_err(|e| anyhow!(e))??
        };
        if placed == Placed::Existed {
            meta.bytes = fs::metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .len();
        }

        let stored = self
            .db
            .run(move |c| -> Result<RecordingMeta> {
                let n = c.execute(
                    "INSERT OR IGNORE INTO recordings (id, user, login, node, gateway, started_at, ended_at, interrupted, bytes, sha256, stored_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        meta.id, meta.user.as_str(), meta.login.as_str(), meta.node.as_str(), meta.gateway,
                        i(meta.started_at), i(meta.ended_at), meta.interrupted, i(meta.bytes), sha, i(now),
                    ],
                )?;
                if n == 0 {
                    // A concurrent upload of the same id won.
                    return load(c, &meta.id)?.map(|(m, _)| m).ok_or_else(|| anyhow!("recording row vanished"));
                }
                audit::append(c, now, "recording.stored", &format!("gateway:{}", meta.gateway), json!({
                    "id": meta.id, "user": meta.user.as_str(), "login": meta.login.as_str(),
                    "node": meta.node.as_str(), "started_at": meta.started_at, "ended_at": meta.ended_at,
                    "interrupted": meta.interrupted, "bytes": meta.bytes, "sha256": sha,
                    "authorized_session": authorized,
                }))?;
                Ok(meta)
            })
            .await?;
        Ok(stored)
    }

    /// `GET /v1/recordings`: the caller's own recordings. Asking for another user's is
    /// refused: the policy has no rule that lets one user see another's sessions yet.
    pub async fn recordings_of_user(
        &self,
        id: ClientIdentity,
        user: Option<Username>,
        node: Option<NodeName>,
        limit: Option<u32>,
    ) -> Outcome<Vec<RecordingMeta>> {
        let now = now();
        self.db
            .run(move |c| -> Result<Outcome<Vec<RecordingMeta>>> {
                let me = match signed_in_user(c, &id, now)? {
                    Ok(u) => u,
                    Err(r) => return Ok(Err(r)),
                };
                if user.as_ref().is_some_and(|u| *u != me) {
                    return Ok(Err(Refusal::Forbidden(format!(
                        "{me} may list only their own recordings"
                    ))));
                }
                let rows = list(
                    c,
                    Some(me.as_str()),
                    node.as_ref().map(NodeName::as_str),
                    limit.unwrap_or(DEFAULT_LIST),
                )?;
                Ok(Ok(rows))
            })
            .await?
    }

    /// `GET /v1/recordings/ID`: the asciicast text of one of the caller's recordings.
    pub async fn recording_cast(&self, id: ClientIdentity, rid: String) -> Outcome<Vec<u8>> {
        let now = now();
        let not_found = || Refusal::NotFound(format!("no recording {rid} of yours"));
        if !valid_session_id(&rid) {
            return Err(not_found());
        }
        let r2 = rid.clone();
        let visible = self
            .db
            .run(move |c| -> Result<Outcome<bool>> {
                let me = match signed_in_user(c, &id, now)? {
                    Ok(u) => u,
                    Err(r) => return Ok(Err(r)),
                };
                let mine = load(c, &r2)?.is_some_and(|(m, _)| m.user == me);
                if mine {
                    audit::append(c, now, "recording.viewed", me.as_str(), json!({ "id": r2 }))?;
                }
                Ok(Ok(mine))
            })
            .await??;
        if !visible {
            return Err(not_found());
        }
        let path = file_of(&self.data_dir, &rid);
        Ok(tokio::fs::read(&path)
            .await
            .with_context(|| format!("cannot read {}", path.display()))?)
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

    #[test]
    fn prepare_dir_makes_a_private_directory_and_refuses_a_file() {
        let d = tempfile::tempdir().unwrap();
        prepare_dir(d.path()).unwrap();
        let md = fs::metadata(dir(d.path())).unwrap();
        assert!(md.is_dir());
        assert_eq!(md.permissions().mode() & 0o777, 0o700);
        prepare_dir(d.path()).unwrap();
        let e = tempfile::tempdir().unwrap();
        fs::write(dir(e.path()), "x").unwrap();
        assert!(prepare_dir(e.path()).is_err());
    }
}
