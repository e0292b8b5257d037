//! The one atomic file replacement of every binary (the CLI's `~/.ssh` files, the shim's
//! bundle, KRL and host certificate, the gateway's joined state). It is the only file I/O in
//! postern-core, here because each binary needs exactly the same guarantees:
//!
//! - the new content goes to a temporary file in the target's directory, with a random name,
//!   created with `O_CREAT|O_EXCL|O_NOFOLLOW` (no other file, and no symbolic link planted
//!   there, is ever written through);
//! - its mode (exactly, not filtered by the umask) and its owner are set before it is visible;
//! - the file is fsynced, renamed over the target, and the directory fsynced, so that after a
//!   crash the target holds either the old content or the new, never a mix or nothing;
//! - on failure the temporary file is removed.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a file could not be replaced: the step that failed, the file it failed on, and the
/// operating system's error.
#[derive(Debug, thiserror::Error)]
#[error("cannot {step} {}: {source}", path.display())]
pub struct AtomicWriteError {
    /// What was being done (`create`, `write`, `sync`, `replace`, …).
    pub step: &'static str,
    /// The temporary file, the target or the directory.
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: std::io::Error,
}

/// Replaces `path` with `data`, mode `mode` (see the module's documentation).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    write(path, data, mode, None)
}

/// [`write_atomic`] for a file owned by `uid` and `gid` (set on the temporary file, before the
/// rename makes it visible: the file never exists with the wrong owner).
pub fn write_atomic_owned(
    path: &Path,
    data: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), AtomicWriteError> {
    write(path, data, mode, Some((uid, gid)))
}

fn write(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), AtomicWriteError> {
    let err = |step, p: &Path| {
        let path = p.to_path_buf();
        move |source| AtomicWriteError { step, path, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.{}.tmp", random_suffix()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(err("create", &tmp))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(err("chown", &tmp))?;
        }
        // The mode given to open is filtered by the umask (and chown may clear set-id bits):
        // set it exactly, last.
        f.set_permissions(Permissions::from_mode(mode))
            .map_err(err("set the mode of", &tmp))?;
        f.write_all(data).map_err(err("write", &tmp))?;
        f.sync_all().map_err(err("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(err("replace", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Without this the rename itself may be lost on a crash, leaving the old file.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("sync the directory", dir))
}

/// 128 random bits in hex; the process id and a counter if the system has no randomness
/// (`O_EXCL` makes a guessed name fail rather than be written through).
fn random_suffix() -> String {
    let mut b = [0u8; 16];
    match getrandom::fill(&mut b) {
        Ok(()) => hex::encode(b),
        Err(_) => {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("{}-{n}", std::process::id())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_content_and_sets_the_exact_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o644);
        // Nothing but the target is left in the directory.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_symbolic_link_at_the_target_is_replaced_not_written_through() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let p = d.path().join("f");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        write_atomic(&p, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn a_failure_names_the_step_and_leaves_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename fails after the temporary file was
        // written.
        let p = d.path().join("dir");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("inside"), b"x").unwrap();
        let e = write_atomic(&p, b"new", 0o600).unwrap_err();
        assert_eq!(e.step, "replace", "{e}");
        assert!(e.to_string().starts_with("cannot replace "), "{e}");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        let missing = d.path().join("no/such/dir/f");
        assert_eq!(
            write_atomic(&missing, b"x", 0o600).unwrap_err().step,
            "create"
        );
    }

    #[test]
    fn the_owned_write_sets_owner_and_group() {
        let d = tempfile::tempdir().unwrap();
        let md = fs::metadata(d.path()).unwrap();
        let p = d.path().join("f");
        write_atomic_owned(&p, b"x", 0o640, md.uid(), md.gid()).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (md.uid(), md.gid(), 0o640)
        );
    }
}
