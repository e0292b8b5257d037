//! Session recordings: asciicast v2 files in the spool (`STATE/recordings/`), written before
//! a byte is forwarded in strict mode, completed and uploaded to posternd when the session
//! ends, and recovered at start-up after a crash (completed, marked interrupted, uploaded).
//!
//! Uploads are resumable and of any size: the uploader asks the CA how much of a recording
//! it holds, sends the rest in chunks read from the file (one chunk in memory at a time), and
//! completes it with the size and SHA-256. A recording leaves the spool only after the CA
//! stored it; whatever fails (CA down, refusal, the gateway killed) is retried, resuming where
//! the CA stopped.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use postern_core::api::{RecordingComplete, RecordingMeta};
use postern_core::cast::{Header, PosternHeader};
use postern_core::clock::{self, now};
use serde_json::json;

use crate::ca::{CaClient, Refused, UploadSession};

/// The largest chunk the gateway uploads (the CA may ask for smaller ones with its
/// `[recordings] chunk_bytes`).
pub const UPLOAD_CHUNK: u64 = 8 * 1024 * 1024;

/// How often the spool is looked at when nothing wakes the uploader.
const SCAN_EVERY: Duration = Duration::from_secs(5);
/// The longest wait before retrying a recording the CA could not take (down, disk full).
const MAX_RETRY_UNAVAILABLE: Duration = Duration::from_secs(60);
/// The longest wait before retrying a recording the CA refused (it may be fixed by an admin).
const MAX_RETRY_REFUSED: Duration = Duration::from_secs(600);

/// An open recording.
pub struct Recorder {
    file: File,
    start: Instant,
    cast: PathBuf,
    meta: RecordingMeta,
    /// Bytes of a UTF-8 sequence split across chunks, per stream ("o", "i").
    carry: [Vec<u8>; 2],
}

impl Recorder {
    /// Creates `<id>.cast` with the asciicast v2 header and `<id>.meta.json`.
    pub fn create(
        spool: &Path,
        meta: RecordingMeta,
        width: u32,
        height: u32,
        term: &str,
        command: Option<&str>,
    ) -> Result<Recorder> {
        fs::create_dir_all(spool)?;
        let cast = spool.join(format!("{}.cast", meta.id));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&cast)
            .with_context(|| format!("cannot create {}", cast.display()))?;
        let header = Header {
            command: command.map(str::to_owned),
            env: Some(BTreeMap::from([
                ("SHELL".to_owned(), "/bin/sh".to_owned()),
                ("TERM".to_owned(), term.to_owned()),
            ])),
            height: Some(height.max(1)),
            postern: Some(PosternHeader {
                gateway: meta.gateway.clone(),
                login: meta.login.clone(),
                node: meta.node.clone(),
                session: meta.id.clone(),
                user: meta.user.clone(),
            }),
            timestamp: Some(meta.started_at),
            title: Some(format!(
                "{}@{} as {} ({})",
                meta.user, meta.node, meta.login, meta.id
            )),
            version: 2,
            width: Some(width.max(1)),
        }
        .to_line();
        writeln!(file, "{header}")?;
        crate::metrics::get().recording_bytes(header.len() + 1);
        file.sync_data()?;
        let m = spool.join(format!("{}.meta.json", meta.id));
        fs::write(&m, serde_json::to_vec(&meta)?)?;
        Ok(Recorder {
            file,
            start: Instant::now(),
            cast,
            meta,
            carry: [Vec::new(), Vec::new()],
        })
    }

    /// Appends one event; the caller forwards the bytes only after this returned Ok.
    pub fn event(&mut self, kind: &str, data: &[u8]) -> std::io::Result<()> {
        let idx = usize::from(kind == "i");
        let mut buf = std::mem::take(&mut self.carry[idx]);
        buf.extend_from_slice(data);
        // Keep an incomplete trailing UTF-8 sequence for the next chunk.
        let cut = match std::str::from_utf8(&buf) {
            Ok(_) => buf.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => buf.len(),
        };
        self.carry[idx] = buf.split_off(cut);
        if buf.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&buf);
        let t = self.start.elapsed().as_secs_f64();
        // One write(2) per event: formatting straight into the file costs a syscall per piece.
        let mut line = serde_json::to_vec(&((t * 1e6).round() / 1e6, kind, text))?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        crate::metrics::get().recording_bytes(line.len());
        Ok(())
    }

    /// A terminal resize (`"r"` events, asciicast v2).
    pub fn resize(&mut self, w: u32, h: u32) -> std::io::Result<()> {
        let t = self.start.elapsed().as_secs_f64();
        let line = format!("{}\n", json!([t, "r", format!("{w}x{h}")]));
        self.file.write_all(line.as_bytes())?;
        crate::metrics::get().recording_bytes(line.len());
        Ok(())
    }

    /// Completes the recording: syncs it and writes the done marker the uploader looks for.
    pub fn finish(mut self) -> Result<()> {
        for idx in 0..2 {
            let rest = std::mem::take(&mut self.carry[idx]);
            if !rest.is_empty() {
                let _ = self.event(if idx == 0 { "o" } else { "i" }, &rest);
            }
        }
        self.file.sync_all()?;
        let mut meta = self.meta.clone();
        meta.ended_at = now();
        meta.bytes = fs::metadata(&self.cast)?.len();
        let done = self.cast.with_extension("done.json");
        fs::write(&done, serde_json::to_vec(&meta)?)?;
        Ok(())
    }
}

/// At start-up: recordings without a done marker belong to sessions the gateway lost (crash,
/// `kill -9`): mark them interrupted and complete them, so that the uploader sends them.
pub fn recover(spool: &Path) -> Result<usize> {
    let mut n = 0;
    let Ok(dir) = fs::read_dir(spool) else {
        return Ok(0);
    };
    for e in dir.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(id) = name.strip_suffix(".meta.json") else {
            continue;
        };
        let cast = spool.join(format!("{id}.cast"));
        let done = spool.join(format!("{id}.done.json"));
        if done.exists() || !cast.exists() {
            continue;
        }
        let mut meta: RecordingMeta = match fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(m) => m,
            None => continue,
        };
        // A line cut by the crash is dropped so that players read the file.
        let text = fs::read(&cast)?;
        let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if keep < text.len() {
            fs::write(&cast, &text[..keep])?;
        }
        let md = fs::metadata(&cast)?;
        meta.interrupted = true;
        meta.bytes = md.len();
        meta.ended_at = md.modified().ok().and_then(clock::unix).unwrap_or_else(now);
        fs::write(&done, serde_json::to_vec(&meta)?)?;
        n += 1;
    }
    Ok(n)
}

/// Puts recordings that an earlier version set aside as too large for one upload
/// (`<id>.cast.toolarge`, `<id>.done.json.toolarge`) back in the queue: every size uploads now.
pub fn requeue_set_aside(spool: &Path) -> usize {
    let Ok(dir) = fs::read_dir(spool) else {
        return 0;
    };
    let mut n = 0;
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".done.json.toolarge"))
        else {
            continue;
        };
        let (cast, done) = (
            spool.join(format!("{id}.cast")),
            spool.join(format!("{id}.done.json")),
        );
        let cast_aside = spool.join(format!("{id}.cast.toolarge"));
        // The cast first: a done marker never points to a missing file.
        if cast_aside.exists() {
            if cast.exists() {
                tracing::error!(recording = %id, "both {id}.cast and {id}.cast.toolarge exist; left as they are");
                continue;
            }
            if let Err(e) = fs::rename(&cast_aside, &cast) {
                tracing::error!(recording = %id, error = %e, "cannot requeue {id}.cast.toolarge");
                continue;
            }
        }
        if let Err(e) = fs::rename(e.path(), &done) {
            tracing::error!(recording = %id, error = %e, "cannot requeue {id}.done.json.toolarge");
            continue;
        }
        tracing::info!(recording = %id, "recording set aside as too large is queued for upload again");
        n += 1;
    }
    n
}

/// Whether a failure is the CA refusing (4xx) rather than being unreachable or failing.
fn is_refusal(e: &Refused) -> bool {
    e.1.is_some_and(|s| (400..500).contains(&s))
}

/// Uploads one recording: asks where the CA stands, sends the missing chunks, and completes
/// it. `sha256` is the file's hash when an earlier attempt computed it; the hash used is
/// handed back with the result so that a retry does not read the file again. The file is
/// read (a chunk at a time, and whole for the hash) on blocking threads.
async fn upload_one(
    s: &UploadSession,
    cast: &Path,
    mut meta: RecordingMeta,
    sha256: Option<String>,
) -> (Option<String>, Result<RecordingMeta, Refused>) {
    let local =
        |what: &str, e: std::io::Error| Refused(format!("{what} {}: {e}", cast.display()), None);
    let id = meta.id.clone();
    let file = match File::open(cast) {
        Ok(f) => Arc::new(f),
        Err(e) => return (sha256, Err(local("cannot open", e))),
    };
    let size = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return (sha256, Err(local("cannot read", e))),
    };
    // The file is the truth (the done marker of an older version may disagree).
    meta.bytes = size;
    let sent = async {
        let st = s.status(&id).await?;
        if st.complete {
            return Ok(());
        }
        if size > st.max_bytes {
            return Err(Refused(
                format!(
                    "the recording is {size} bytes and the CA accepts at most {} ([recordings] max_bytes in posternd.toml)",
                    st.max_bytes
                ),
                Some(413),
            ));
        }
        let chunk = UPLOAD_CHUNK.min(st.chunk_bytes).max(1);
        let mut offset = st.received;
        if offset > 0 && offset < size {
            tracing::info!(recording = %id, offset, size, "resuming the upload of recording {id} at byte {offset} of {size}");
        }
        while offset < size {
            let n = usize::try_from(chunk.min(size - offset)).unwrap_or(usize::MAX);
            let f = file.clone();
            let buf = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                f.read_exact_at(&mut buf, offset).map(|()| buf)
            })
            .await
            .map_err(internal)?
            .map_err(|e| local("cannot read", e))?;
            let st = s.chunk(&id, offset, buf).await?;
            if st.received <= offset || st.received > size {
                return Err(Refused(
                    format!(
                        "the CA answered that it holds {} bytes after a chunk at offset {offset}",
                        st.received
                    ),
                    None,
                ));
            }
            offset = st.received;
        }
        // A CA holding more than the file (offset > size) refuses the completion and
        // discards what it holds, so that the next attempt starts again from 0.
        Ok::<(), Refused>(())
    }
    .await;
    if let Err(e) = sent {
        return (sha256, Err(e));
    }
    let sha256 = match sha256 {
        Some(h) => h,
        None => {
            let f = file.clone();
            match tokio::task::spawn_blocking(move || postern_core::sha256_hex_of(&*f)).await {
                Ok(Ok(h)) => h,
                Ok(Err(e)) => return (None, Err(local("cannot read", e))),
                Err(e) => return (None, Err(internal(e))),
            }
        }
    };
    let done = s
        .complete(
            &id,
            &RecordingComplete {
                meta,
                sha256: sha256.clone(),
            },
        )
        .await;
    (Some(sha256), done)
}

/// A blocking task that did not finish (it panicked).
fn internal(e: tokio::task::JoinError) -> Refused {
    Refused(format!("internal error: {e}"), None)
}

/// When a recording that failed is tried again.
struct Retry {
    at: Instant,
    delay: Duration,
}

/// Uploads completed recordings until the task is dropped; retries, with a growing delay per
/// recording, what the CA refuses or cannot take now. A recording leaves the spool only after
/// the CA stored it.
pub async fn uploader(spool: PathBuf, ca: CaClient, wake: std::sync::Arc<tokio::sync::Notify>) {
    let mut retry: HashMap<String, Retry> = HashMap::new();
    let mut hashes: HashMap<String, String> = HashMap::new();
    loop {
        requeue_set_aside(&spool);
        let mut pending = Vec::new();
        if let Ok(dir) = fs::read_dir(&spool) {
            for e in dir.flatten() {
                let p = e.path();
                if p.to_str().is_some_and(|s| s.ends_with(".done.json")) {
                    pending.push(p);
                }
            }
        }
        // Forget recordings that left the spool (by hand, or uploaded).
        let queued: std::collections::HashSet<String> = pending
            .iter()
            .filter_map(|p| {
                p.file_name()?
                    .to_str()?
                    .strip_suffix(".done.json")
                    .map(str::to_owned)
            })
            .collect();
        retry.retain(|id, _| queued.contains(id));
        hashes.retain(|id, _| queued.contains(id));
        for done in pending {
            let Some(id) = done
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".done.json"))
                .map(str::to_owned)
            else {
                continue;
            };
            if retry.get(&id).is_some_and(|r| Instant::now() < r.at) {
                continue;
            }
            let cast = spool.join(format!("{id}.cast"));
            let Ok(meta) = fs::read(&done)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice::<RecordingMeta>(&b)?))
            else {
                continue;
            };
            let sha = hashes.remove(&id);
            let (sha, result) = match ca.upload_session().await {
                Ok(s) => upload_one(&s, &cast, meta, sha).await,
                Err(e) => (sha, Err(e)),
            };
            match result {
                Ok(stored) => {
                    for p in [cast, done, spool.join(format!("{id}.meta.json"))] {
                        let _ = fs::remove_file(p);
                    }
                    retry.remove(&id);
                    tracing::info!(recording = %id, bytes = stored.bytes, "recording uploaded");
                }
                Err(e) => {
                    if let Some(h) = sha {
                        hashes.insert(id.clone(), h);
                    }
                    let cap = if is_refusal(&e) {
                        MAX_RETRY_REFUSED
                    } else {
                        MAX_RETRY_UNAVAILABLE
                    };
                    let delay = retry
                        .get(&id)
                        .map_or(SCAN_EVERY, |r| (r.delay * 2).min(cap));
                    tracing::warn!(recording = %id, error = %e.0, retry_in = ?delay, "recording upload failed; will retry");
                    retry.insert(
                        id,
                        Retry {
                            at: Instant::now() + delay,
                            delay,
                        },
                    );
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(SCAN_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str) -> RecordingMeta {
        RecordingMeta {
            id: id.parse().unwrap(),
            user: "alice".parse().unwrap(),
            login: "deploy".parse().unwrap(),
            node: "web1".parse().unwrap(),
            gateway: "gate".into(),
            started_at: 1,
            ended_at: 0,
            interrupted: false,
            bytes: 0,
        }
    }

    #[test]
    fn keeps_utf8_sequences_split_across_chunks() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Recorder::create(d.path(), meta("s1"), 80, 24, "xterm", None).unwrap();
        let e = "é".as_bytes();
        r.event("o", &[b'a', e[0]]).unwrap();
        r.event("o", &[e[1], b'b']).unwrap();
        r.finish().unwrap();
        let text = fs::read_to_string(d.path().join("s1.cast")).unwrap();
        let out: String = text
            .lines()
            .skip(1)
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()[2]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(out, "aéb");
        assert!(d.path().join("s1.done.json").exists());
    }

    #[test]
    fn recordings_set_aside_as_too_large_are_queued_again() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        fs::write(p("s3.cast.toolarge"), "cast").unwrap();
        fs::write(p("s3.done.json.toolarge"), "{}").unwrap();
        // A clash is left alone rather than overwriting anything.
        fs::write(p("s4.cast"), "new").unwrap();
        fs::write(p("s4.cast.toolarge"), "old").unwrap();
        fs::write(p("s4.done.json.toolarge"), "{}").unwrap();
        assert_eq!(requeue_set_aside(d.path()), 1);
        assert_eq!(fs::read_to_string(p("s3.cast")).unwrap(), "cast");
        assert!(p("s3.done.json").exists());
        assert!(!p("s3.cast.toolarge").exists() && !p("s3.done.json.toolarge").exists());
        assert_eq!(fs::read_to_string(p("s4.cast")).unwrap(), "new");
        assert!(p("s4.cast.toolarge").exists() && !p("s4.done.json").exists());
        assert_eq!(requeue_set_aside(d.path()), 0);
    }

    #[test]
    fn recovers_an_interrupted_recording_and_drops_a_torn_line() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Recorder::create(d.path(), meta("s2"), 80, 24, "xterm", None).unwrap();
        r.event("o", b"hello").unwrap();
        drop(r); // the process died: no finish()
        let cast = d.path().join("s2.cast");
        let mut f = OpenOptions::new().append(true).open(&cast).unwrap();
        f.write_all(b"[0.5, \"o\", \"torn").unwrap();
        assert_eq!(recover(d.path()).unwrap(), 1);
        let text = fs::read_to_string(&cast).unwrap();
        assert!(text.ends_with("\"hello\"]\n"), "{text}");
        let m: RecordingMeta =
            serde_json::from_slice(&fs::read(d.path().join("s2.done.json")).unwrap()).unwrap();
        assert!(m.interrupted);
        assert_eq!(recover(d.path()).unwrap(), 0, "recovery is idempotent");
    }
}
