//! The recordings' files and the durable file operations under them: paths, the private
//! directories, the never-replacing placement of a file, fsyncs, and partial files' trusted length.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

#[cfg(doc)]
use crate::gateway::valid_session_id;

/// The recordings directory (`[storage] recordings_dir`, by default `recordings/` in the
/// data directory): the functions here take it as their `data_dir`.
pub(super) fn dir(data_dir: &Path) -> PathBuf {
    data_dir.to_path_buf()
}

/// Where partial uploads are kept until they are complete.
pub(super) fn partial_dir(data_dir: &Path) -> PathBuf {
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
pub fn file_of(data_dir: &Path, id: &str) -> PathBuf {
    dir(data_dir).join(format!("{id}.cast"))
}

/// The partial upload of one recording. `id` must have passed [`valid_session_id`].
pub(super) fn partial_of(data_dir: &Path, id: &str) -> PathBuf {
    partial_dir(data_dir).join(format!("{id}.part"))
}

pub fn sha256_of_path(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    postern_core::sha256_hex_of(&mut f).with_context(|| format!("cannot read {}", path.display()))
}

/// Whether the file was written or was there already.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Placed {
    Created,
    Existed,
}

/// Writes `bytes` as `path` unless `path` exists: temporary file (0600), fsync, hard link,
/// fsync of the directory. A crash leaves either no file or the whole file.
pub(super) fn place_file(path: &Path, bytes: &[u8]) -> Result<Placed> {
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

pub(super) fn sync_dir(d: &Path) -> Result<()> {
    fs::File::open(d)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync {}", d.display()))
}

/// Whether an I/O error means the disk (or the quota, or the file size limit) is full.
pub(super) fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
    )
}

/// Opens a partial upload for reading and writing; never follows a symbolic link.
pub(super) fn open_partial(path: &Path, create: bool) -> std::io::Result<fs::File> {
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
pub(super) fn linked(f: &fs::File) -> std::io::Result<bool> {
    Ok(f.metadata()?.nlink() > 1)
}

/// Removes a partial upload's name (if it is there) durably.
pub(super) fn remove_partial(path: &Path) -> Result<()> {
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
pub(super) fn durable_length(f: &fs::File, recorded: u64) -> std::io::Result<u64> {
    let len = f.metadata()?.len();
    let durable = len.min(recorded);
    if len > durable {
        f.set_len(durable)?;
        f.sync_data()?;
    }
    Ok(durable)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for sub in [dir(d.path()), partial_dir(d.path())] {
            let md = fs::metadata(sub).unwrap();
            assert!(md.is_dir());
            assert_eq!(md.permissions().mode() & 0o777, 0o700);
        }
        prepare_dir(d.path()).unwrap();
        let e = tempfile::tempdir().unwrap();
        fs::write(e.path().join("recordings"), "x").unwrap();
        assert!(prepare_dir(&e.path().join("recordings")).is_err());
    }
}
