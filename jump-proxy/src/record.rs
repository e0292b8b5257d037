//! Session recordings: asciicast v2 files in the spool (`STATE/recordings/`), written before
//! a byte is forwarded in strict mode, completed and uploaded to posternd when the session
//! ends, and recovered at start-up after a crash (completed, marked interrupted, uploaded).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use postern_core::api::{RecordingMeta, RecordingUpload};
use serde_json::json;

use crate::ca::CaClient;

/// The largest recording the CA accepts in one upload (its route's body limit, with room for
/// the JSON around the cast).
pub const MAX_UPLOAD: u64 = 200 * 1024 * 1024;

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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
        let header = json!({
            "version": 2,
            "width": width.max(1),
            "height": height.max(1),
            "timestamp": meta.started_at,
            "title": format!("{}@{} as {} ({})", meta.user, meta.node, meta.login, meta.id),
            "env": { "TERM": term, "SHELL": "/bin/sh" },
            "command": command,
            "postern": { "session": meta.id, "user": meta.user, "login": meta.login, "node": meta.node, "gateway": meta.gateway },
        });
        writeln!(file, "{header}")?;
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
        self.file.write_all(&line)
    }

    /// A terminal resize (`"r"` events, asciicast v2).
    pub fn resize(&mut self, w: u32, h: u32) -> std::io::Result<()> {
        let t = self.start.elapsed().as_secs_f64();
        writeln!(self.file, "{}", json!([t, "r", format!("{w}x{h}")]))
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
        meta.ended_at = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(now(), |d| d.as_secs());
        fs::write(&done, serde_json::to_vec(&meta)?)?;
        n += 1;
    }
    Ok(n)
}

/// Uploads completed recordings until the task is dropped; retries what the CA refuses or
/// cannot take now. A recording leaves the spool only after the CA accepted it.
pub async fn uploader(spool: PathBuf, ca: CaClient, wake: std::sync::Arc<tokio::sync::Notify>) {
    loop {
        let mut pending = Vec::new();
        if let Ok(dir) = fs::read_dir(&spool) {
            for e in dir.flatten() {
                let p = e.path();
                if p.to_str().is_some_and(|s| s.ends_with(".done.json")) {
                    pending.push(p);
                }
            }
        }
        for done in pending {
            let Some(id) = done
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".done.json"))
                .map(str::to_owned)
            else {
                continue;
            };
            let cast = spool.join(format!("{id}.cast"));
            // A recording too large for one upload stays in the spool, set aside once with an
            // error, rather than being read into memory and refused again every few seconds.
            if fs::metadata(&cast)
                .map(|m| m.len() > MAX_UPLOAD)
                .unwrap_or(false)
            {
                tracing::error!(recording = %id, "recording larger than the CA accepts in one upload; kept in the spool as {id}.cast.toolarge");
                let _ = fs::rename(&cast, spool.join(format!("{id}.cast.toolarge")));
                let _ = fs::rename(&done, spool.join(format!("{id}.done.json.toolarge")));
                continue;
            }
            let (Ok(meta_bytes), Ok(cast_text)) = (fs::read(&done), fs::read(&cast)) else {
                continue;
            };
            let Ok(meta) = serde_json::from_slice::<RecordingMeta>(&meta_bytes) else {
                continue;
            };
            let upload = RecordingUpload {
                meta,
                cast: String::from_utf8_lossy(&cast_text).into_owned(),
            };
            match ca.upload(upload).await {
                Ok(()) => {
                    for p in [cast, done, spool.join(format!("{id}.meta.json"))] {
                        let _ = fs::remove_file(p);
                    }
                    tracing::info!(recording = %id, "recording uploaded");
                }
                Err(e) => {
                    tracing::warn!(recording = %id, error = %e.0, "recording upload failed; will retry")
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str) -> RecordingMeta {
        RecordingMeta {
            id: id.into(),
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
