//! Safe file handling under `~/.ssh`: no symlink is followed under `~/.ssh/postern`, every
//! file is replaced atomically (temporary file in the same directory, fsync, rename), and the
//! `Include` line at the top of `~/.ssh/config` is added exactly once.
//!
//! **Invariant:** nothing is written through a symbolic link under `~/.ssh/postern`: each path
//! component is checked with `lstat`, new files are opened with `O_CREAT|O_EXCL|O_NOFOLLOW`,
//! and a symlink where a file is to be replaced is an error.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Read as _};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use postern_core::ClusterName;

use crate::profile::Layout;
use crate::render;

/// The largest state file read back (keys, certificates and JSON are a few kilobytes).
const MAX_READ_BYTES: u64 = 1024 * 1024;

/// Checks one directory that must be ours: a real directory (not a symlink), owned by the
/// effective user. Tightens its mode to 0700 when it is looser. With `create`, a missing
/// directory is made with mode 0700. Returns whether it exists.
fn secure_dir(path: &Path, create: bool) -> anyhow::Result<bool> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !create {
                return Ok(false);
            }
            match DirBuilder::new().mode(0o700).create(path) {
                Ok(()) => {}
                // Lost a race with another postern: the checks below still apply.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", path.display()));
                }
            }
            fs::symlink_metadata(path).with_context(|| format!("checking {}", path.display()))?
        }
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    };
    if meta.file_type().is_symlink() {
        bail!(
            "refusing to use {}: it is a symbolic link (remove it and run the command again)",
            path.display()
        );
    }
    if !meta.is_dir() {
        bail!("refusing to use {}: it is not a directory", path.display());
    }
    if meta.uid() != crate::sys::euid() {
        bail!(
            "refusing to use {}: it is owned by uid {}, not by you",
            path.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(path, Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to mode 0700", path.display()))?;
    }
    Ok(true)
}

/// Makes sure `~/.ssh` exists (mode 0700 when created). A symlinked `~/.ssh` is accepted, as
/// dotfile managers make them; the strict checks start at `~/.ssh/postern`.
pub fn ensure_ssh_dir(layout: &Layout) -> anyhow::Result<PathBuf> {
    let dir = layout.ssh_dir();
    match fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => bail!("{} is not a directory", dir.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            Ok(dir)
        }
        Err(e) => Err(e).with_context(|| format!("checking {}", dir.display())),
    }
}

/// Makes sure `~/.ssh/postern` exists and is safe to write into.
pub fn ensure_postern_dir(layout: &Layout) -> anyhow::Result<PathBuf> {
    ensure_ssh_dir(layout)?;
    let dir = layout.postern_dir();
    secure_dir(&dir, true)?;
    Ok(dir)
}

/// Makes sure `~/.ssh/postern/<cluster>` exists and is safe to write into.
pub fn ensure_cluster_dir(layout: &Layout, cluster: &ClusterName) -> anyhow::Result<PathBuf> {
    ensure_postern_dir(layout)?;
    let dir = layout.cluster_dir(cluster);
    secure_dir(&dir, true)?;
    Ok(dir)
}

/// Checks every component from `~/.ssh/postern` down to `dir` without creating anything.
/// Returns false when one is missing (nothing to read).
fn check_existing_dirs(layout: &Layout, dir: &Path) -> anyhow::Result<bool> {
    let base = layout.postern_dir();
    let rel = dir
        .strip_prefix(&base)
        .with_context(|| format!("{} is outside {}", dir.display(), base.display()))?;
    if !secure_dir(&base, false)? {
        return Ok(false);
    }
    let mut cur = base;
    for c in rel.components() {
        cur.push(c);
        if !secure_dir(&cur, false)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Refuses a symlink or directory where a file is to be replaced.
fn check_replaceable(target: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => bail!(
            "refusing to write {}: it is a symbolic link (remove it and run the command again)",
            target.display()
        ),
        Ok(m) if m.is_dir() => bail!("refusing to write {}: it is a directory", target.display()),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", target.display())),
    }
}

/// Checks, before anything is asked of the server, that the cluster directory and the named
/// files in it could be written, so that a planted symlink does not waste a one-time code.
pub fn preflight(layout: &Layout, cluster: &ClusterName, names: &[&str]) -> anyhow::Result<()> {
    let dir = ensure_cluster_dir(layout, cluster)?;
    for name in names {
        check_replaceable(&dir.join(name))?;
    }
    Ok(())
}

/// Atomically replaces `dir/name` with `data` ([`postern_core::atomic`]: a random
/// temporary name, `O_EXCL|O_NOFOLLOW`, the exact mode, fsync of file and directory).
/// `dir` must have been checked by one of the `ensure_*` functions.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let target = dir.join(name);
    check_replaceable(&target)?;
    postern_core::atomic::write_atomic(&target, data, mode)?;
    Ok(())
}

/// Opens an existing file without following a symlink and reads it (bounded).
fn read_nofollow(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            bail!("refusing to read {}: it is a symbolic link", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut buf = Vec::new();
    f.take(MAX_READ_BYTES + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    if buf.len() as u64 > MAX_READ_BYTES {
        bail!("{} is larger than {MAX_READ_BYTES} bytes", path.display());
    }
    Ok(Some(buf))
}

/// Reads `dir/name` where `dir` is `~/.ssh/postern` or below, refusing symlinks on the way.
/// `None` when the file or a directory on the way does not exist.
pub fn read_private(dir: &Path, name: &str, layout: &Layout) -> anyhow::Result<Option<Vec<u8>>> {
    if !check_existing_dirs(layout, dir)? {
        return Ok(None);
    }
    read_nofollow(&dir.join(name))
}

/// Removes the named files of a cluster directory, then the directory when it is empty.
/// Returns how many files were removed.
pub fn remove_cluster_files(
    layout: &Layout,
    cluster: &ClusterName,
    names: &[&str],
) -> anyhow::Result<usize> {
    let dir = layout.cluster_dir(cluster);
    if !check_existing_dirs(layout, &dir)? {
        return Ok(0);
    }
    let mut removed = 0;
    for name in names {
        let p = dir.join(name);
        // unlink never follows a symlink: a planted link is removed, not its target.
        match fs::remove_file(&p) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    // Left-over temporary files of an interrupted write.
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with('.') && n.ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    match fs::remove_dir(&dir) {
        Ok(()) => {}
        // Files the user put there themselves stay, and so does the directory.
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    Ok(removed)
}

/// The new contents of `~/.ssh/config` with `line` as its first line, or `None` when it
/// already starts with it. Every other line is kept byte for byte.
///
/// The Include must come first: ssh_config(5) applies an `Include` inside a `Host` or `Match`
/// block only to that block's hosts, and the first value obtained for an option wins.
pub fn with_include(existing: &str, line: &str) -> Option<String> {
    let first = existing.split_inclusive('\n').next().unwrap_or("");
    if first.trim_end_matches(['\n', '\r']).trim_end() == line {
        return None;
    }
    let mut out = String::with_capacity(line.len() + 1 + existing.len());
    out.push_str(line);
    out.push('\n');
    out.push_str(existing);
    Some(out)
}

/// What [`ensure_include`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncludeOutcome {
    /// `~/.ssh/config` was created with the Include line.
    Created,
    /// The line was added; the previous file is kept as `config.postern-backup`.
    Added,
    /// The file already started with the line.
    Present,
    /// `~/.ssh/config` is a symlink (a dotfile manager's, usually): left alone.
    SkippedSymlink(String),
}

/// Makes `~/.ssh/config` start with the Include line for `~/.ssh/postern/*/ssh_config`.
pub fn ensure_include(layout: &Layout) -> anyhow::Result<IncludeOutcome> {
    let ssh_dir = ensure_ssh_dir(layout)?;
    let line = render::include_line(&layout.postern_dir())?;
    let path = layout.ssh_config();
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    };
    let Some(meta) = meta else {
        write_atomic(&ssh_dir, "config", format!("{line}\n").as_bytes(), 0o600)?;
        return Ok(IncludeOutcome::Created);
    };
    if meta.file_type().is_symlink() {
        // Replacing the link would detach the user's dotfiles; writing through it would
        // change a file elsewhere. Both are the user's call.
        return Ok(IncludeOutcome::SkippedSymlink(line));
    }
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let bytes = read_nofollow(&path)?.unwrap_or_default();
    let existing = String::from_utf8(bytes)
        .with_context(|| format!("{} is not valid UTF-8", path.display()))?;
    let Some(new) = with_include(&existing, &line) else {
        return Ok(IncludeOutcome::Present);
    };
    let mode = meta.mode() & 0o7777;
    write_atomic(&ssh_dir, "config.postern-backup", existing.as_bytes(), mode)?;
    write_atomic(&ssh_dir, "config", new.as_bytes(), mode)?;
    Ok(IncludeOutcome::Added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn layout() -> (tempfile::TempDir, Layout) {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::new(t.path().to_path_buf());
        (t, l)
    }

    fn cluster() -> ClusterName {
        postern_core::names::parse_cluster_name("example.com").unwrap()
    }

    fn include(l: &Layout) -> String {
        format!("Include {}/.ssh/postern/*/ssh_config", l.home().display())
    }

    #[test]
    fn with_include_prepends_once_and_keeps_other_lines() {
        let line = "Include /h/.ssh/postern/*/ssh_config";
        let existing = "Host a\n  User x\r\n# comment\nHost b";
        let new = with_include(existing, line).unwrap();
        assert_eq!(new, format!("{line}\n{existing}"));
        assert_eq!(with_include(&new, line), None);
        assert_eq!(with_include("", line).unwrap(), format!("{line}\n"));
    }

    #[test]
    fn include_creates_missing_ssh_dir_and_config() {
        let (_t, l) = layout();
        assert_eq!(ensure_include(&l).unwrap(), IncludeOutcome::Created);
        let cfg = fs::read_to_string(l.ssh_config()).unwrap();
        assert_eq!(cfg, format!("{}\n", include(&l)));
        assert_eq!(fs::metadata(l.ssh_config()).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(l.ssh_dir()).unwrap().mode() & 0o777, 0o700);
        assert!(!l.ssh_dir().join("config.postern-backup").exists());
    }

    #[test]
    fn include_is_added_on_top_of_existing_config_with_backup() {
        let (_t, l) = layout();
        fs::create_dir(l.ssh_dir()).unwrap();
        let old = "Host *\n    ServerAliveInterval 30\n\nHost work\n    User me\n";
        fs::write(l.ssh_config(), old).unwrap();
        fs::set_permissions(l.ssh_config(), Permissions::from_mode(0o644)).unwrap();
        assert_eq!(ensure_include(&l).unwrap(), IncludeOutcome::Added);
        let cfg = fs::read_to_string(l.ssh_config()).unwrap();
        assert_eq!(cfg, format!("{}\n{old}", include(&l)));
        assert_eq!(
            fs::read_to_string(l.ssh_dir().join("config.postern-backup")).unwrap(),
            old
        );
        // The user's mode is kept.
        assert_eq!(fs::metadata(l.ssh_config()).unwrap().mode() & 0o777, 0o644);

        // A second run changes nothing, not even the backup.
        fs::write(l.ssh_dir().join("config.postern-backup"), "marker").unwrap();
        assert_eq!(ensure_include(&l).unwrap(), IncludeOutcome::Present);
        assert_eq!(fs::read_to_string(l.ssh_config()).unwrap(), cfg);
        assert_eq!(
            fs::read_to_string(l.ssh_dir().join("config.postern-backup")).unwrap(),
            "marker"
        );
    }

    #[test]
    fn include_leaves_symlinked_config_alone() {
        let (t, l) = layout();
        fs::create_dir(l.ssh_dir()).unwrap();
        let real = t.path().join("dotfiles-config");
        fs::write(&real, "Host x\n").unwrap();
        symlink(&real, l.ssh_config()).unwrap();
        assert!(matches!(
            ensure_include(&l).unwrap(),
            IncludeOutcome::SkippedSymlink(_)
        ));
        assert_eq!(fs::read_to_string(&real).unwrap(), "Host x\n");
        assert!(fs::symlink_metadata(l.ssh_config())
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn write_atomic_sets_mode_and_replaces() {
        let (_t, l) = layout();
        let dir = ensure_cluster_dir(&l, &cluster()).unwrap();
        write_atomic(&dir, "id_ed25519", b"one", 0o600).unwrap();
        write_atomic(&dir, "id_ed25519", b"two", 0o600).unwrap();
        let p = dir.join("id_ed25519");
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn refuses_symlink_planted_at_key_path() {
        let (t, l) = layout();
        let dir = ensure_cluster_dir(&l, &cluster()).unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        symlink(&victim, dir.join("id_ed25519")).unwrap();
        let e = write_atomic(&dir, "id_ed25519", b"key", 0o600).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        let e = read_private(&dir, "id_ed25519", &l).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
    }

    #[test]
    fn preflight_finds_planted_symlink_before_any_write() {
        let (t, l) = layout();
        let dir = ensure_cluster_dir(&l, &cluster()).unwrap();
        symlink(t.path().join("victim"), dir.join("tls.key")).unwrap();
        let e = preflight(&l, &cluster(), &["id_ed25519", "tls.key"]).unwrap_err();
        assert!(format!("{e:#}").contains("tls.key"), "{e:#}");
        assert!(!t.path().join("victim").exists());
        preflight(&l, &cluster(), &["id_ed25519"]).unwrap();
    }

    #[test]
    fn refuses_symlink_planted_at_postern_dir() {
        let (t, l) = layout();
        fs::create_dir(l.ssh_dir()).unwrap();
        let elsewhere = t.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        symlink(&elsewhere, l.postern_dir()).unwrap();
        let e = ensure_cluster_dir(&l, &cluster()).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        let e = ensure_postern_dir(&l).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        let e = read_private(&l.postern_dir(), "current.json", &l).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn refuses_symlink_planted_at_cluster_dir() {
        let (t, l) = layout();
        ensure_postern_dir(&l).unwrap();
        let elsewhere = t.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        symlink(&elsewhere, l.cluster_dir(&cluster())).unwrap();
        ensure_cluster_dir(&l, &cluster()).unwrap_err();
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn tightens_loose_directory_mode() {
        let (_t, l) = layout();
        fs::create_dir_all(l.postern_dir()).unwrap();
        fs::set_permissions(l.postern_dir(), Permissions::from_mode(0o777)).unwrap();
        ensure_postern_dir(&l).unwrap();
        assert_eq!(fs::metadata(l.postern_dir()).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn remove_cluster_files_removes_ours_and_the_empty_dir() {
        let (_t, l) = layout();
        let dir = ensure_cluster_dir(&l, &cluster()).unwrap();
        write_atomic(&dir, "id_ed25519", b"k", 0o600).unwrap();
        write_atomic(&dir, "profile.json", b"{}", 0o600).unwrap();
        fs::write(dir.join(".id_ed25519.00.tmp"), "").unwrap();
        let n = remove_cluster_files(&l, &cluster(), &["id_ed25519", "profile.json", "ca.crt"])
            .unwrap();
        assert_eq!(n, 2);
        assert!(!dir.exists());
        assert_eq!(
            remove_cluster_files(&l, &cluster(), &["id_ed25519"]).unwrap(),
            0
        );
    }

    #[test]
    fn read_private_is_none_when_missing() {
        let (_t, l) = layout();
        assert!(read_private(&l.cluster_dir(&cluster()), "profile.json", &l)
            .unwrap()
            .is_none());
    }
}
