//! The sweeper of abandoned uploads: rows and partial files no chunk touched for
//! [`STALE_UPLOAD_SECS`], at start and every [`SWEEP_EVERY_SECS`].

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::claim::Store;
use super::files::{dir, partial_dir, partial_of, remove_partial};
use super::{blocking, STALE_UPLOAD_SECS, SWEEP_EVERY_SECS};
use crate::db::Db;
use crate::gateway::valid_session_id;
use crate::service::{now, Service};
use crate::store::{self, recordings::StaleUpload};

/// What one sweep of abandoned uploads removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Swept {
    /// `recording_uploads` rows (with their partial files).
    pub(super) uploads: usize,
    /// Files without a row: partial files, and temporary files of single-request uploads.
    pub(super) files: usize,
    /// The bytes those uploads had received.
    pub(super) bytes: u64,
}

/// Removes abandoned uploads: `recording_uploads` rows that no chunk updated for
/// [`STALE_UPLOAD_SECS`] with their partial files, partial files without a row and
/// temporary files of single-request uploads that old. Work in progress (a claimed id) is
/// left alone; every removal is logged.
pub(super) async fn sweep(db: &Db, store: &Store, data_dir: &Path, now: u64) -> Result<Swept> {
    let cutoff = now.saturating_sub(STALE_UPLOAD_SECS);
    let mut swept = Swept::default();
    let stale = db
        .run(move |c| store::recordings::stale_uploads(c, cutoff))
        .await?;
    for StaleUpload {
        id,
        gateway,
        received,
        updated_at,
    } in stale
    {
        let Ok(_claim) = store.claim(&id) else {
            continue;
        };
        let i2 = id.clone();
        let gone = db
            .run(move |c| store::recordings::forget_stale_upload(c, &i2, cutoff))
            .await?;
        if !gone {
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
            idle_secs = now.saturating_sub(updated_at),
            "removed an abandoned partial recording upload"
        );
        swept.uploads += 1;
        swept.bytes = swept.bytes.saturating_add(received);
    }

    let live: HashSet<String> = db.run(store::recordings::upload_ids).await?;
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
                    .and_then(postern_core::clock::unix)
                    .unwrap_or(u64::MAX);
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
            let begun = db
                .run(move |c| Ok(store::recordings::upload(c, &i2)?.is_some()))
                .await?;
            if begun {
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
    // With several instances on one database and one recordings directory, one sweeps at a
    // time: the lease outlives a sweep and is taken again at the next.
    let lease = std::time::Duration::from_secs(SWEEP_EVERY_SECS + 600);
    let mut held = None;
    loop {
        let now_held = svc.db.lease("recordings.sweep", lease).await;
        if let Ok(h) = now_held {
            if held != Some(h) {
                tracing::info!(
                    lease = "recordings.sweep",
                    held = h,
                    "{}",
                    if h {
                        "this instance sweeps abandoned uploads"
                    } else {
                        "another instance sweeps abandoned uploads"
                    }
                );
                held = Some(h);
            }
        }
        match now_held {
            Ok(true) => {}
            Ok(false) => {
                tokio::time::sleep(std::time::Duration::from_secs(SWEEP_EVERY_SECS)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot take the sweep's lease; sweeping later");
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                continue;
            }
        }
        match sweep(&svc.db, &svc.recordings, &svc.recordings_dir, now()).await {
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

#[cfg(test)]
mod tests {
    use super::super::files::{file_of, prepare_dir};
    use super::super::fixtures::{received_of, CAST};
    use super::*;

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
                c.conn().execute(
                    "INSERT INTO recording_uploads (id, gateway, received, started_at, updated_at) VALUES (?1, 'gw1', 3, 1, ?2)",
                    rusqlite::params![id, i64::try_from(updated).unwrap()],
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
}
