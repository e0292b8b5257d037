//! The shim's state directory and its files, every one written atomically (temp file, fsync,
//! rename, fsync of the directory): sshd refuses every key when `RevokedKeys` is unreadable or
//! truncated, so a half-written file must never be visible.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use postern_api_client::CaUrls;
use postern_core::api::Bundle;
use postern_core::{ClusterName, NodeName};
use serde::{Deserialize, Serialize};

/// Default state directory (DESIGN.md); defined with the flags that default to it.
pub use postern_shim::cli::DEFAULT_STATE_DIR;

/// What `join` remembers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Joined {
    /// The CA's API URLs (`--ca`, in order): one string, as in files from before several
    /// URLs, or a list.
    pub ca: CaUrls,
    /// The service CA pin.
    pub ca_pin: String,
    /// This node's name.
    pub name: NodeName,
    /// The cluster.
    pub cluster: ClusterName,
    /// Address given at join.
    #[serde(default)]
    pub address: Option<String>,
    /// `--keep-local-auth`: sshd's own authorized_keys and passwords were left as they were.
    #[serde(default)]
    pub keep_local_auth: bool,
    /// The sshd that join configured, so that `sync` can update the drop-in and reload it.
    /// Absent in the files of older versions: the defaults then.
    #[serde(default)]
    pub sshd: Option<JoinedSshd>,
}

/// The sshd files and the shim path that join used.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinedSshd {
    /// The sshd binary.
    pub bin: PathBuf,
    /// Its main configuration file.
    pub config: PathBuf,
    /// Its drop-in directory.
    pub dropin_dir: PathBuf,
    /// The shim as sshd runs it.
    pub shim: PathBuf,
}

impl Default for JoinedSshd {
    fn default() -> Self {
        JoinedSshd {
            bin: PathBuf::from("/usr/sbin/sshd"),
            config: PathBuf::from("/etc/ssh/sshd_config"),
            dropin_dir: PathBuf::from("/etc/ssh/sshd_config.d"),
            shim: PathBuf::from("/usr/libexec/postern/postern-shim"),
        }
    }
}

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    /// A path inside.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// SSH host private key.
    pub fn host_key(&self) -> PathBuf {
        self.path("ssh_host_ed25519_key")
    }
    /// SSH host certificate.
    pub fn host_cert(&self) -> PathBuf {
        self.path("ssh_host_ed25519_key-cert.pub")
    }
    /// `TrustedUserCAKeys`.
    pub fn node_ca(&self) -> PathBuf {
        self.path("node_access_ca.pub")
    }
    /// `RevokedKeys`.
    pub fn krl(&self) -> PathBuf {
        self.path("revoked_keys.krl")
    }
    /// The policy bundle.
    pub fn bundle(&self) -> PathBuf {
        self.path("bundle.json")
    }
    /// Spooled events.
    pub fn spool(&self) -> PathBuf {
        self.path("spool")
    }

    /// Creates the directory (0755: the principals command runs as an unprivileged user and
    /// reads the bundle and the node-access CA key from it).
    pub fn create(&self) -> Result<()> {
        fs::create_dir_all(&self.0)
            .with_context(|| format!("cannot create {}", self.0.display()))?;
        fs::set_permissions(&self.0, fs::Permissions::from_mode(0o755))?;
        let spool = self.spool();
        fs::create_dir_all(&spool)?;
        fs::set_permissions(&spool, fs::Permissions::from_mode(0o700))?;
        Ok(())
    }

    /// The join record.
    pub fn joined(&self) -> Result<Joined> {
        let p = self.path("joined.json");
        let text = fs::read_to_string(&p).with_context(|| {
            format!(
                "this server has not joined a cluster ({} is missing); run `postern-shim join`",
                p.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", p.display()))
    }

    /// The bundle, if present and parseable.
    pub fn load_bundle(&self) -> Result<Bundle> {
        let p = self.bundle();
        let bytes = read_limited(&p, 16 * 1024 * 1024)?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is corrupt", p.display()))
    }
}

/// Reads a file of at most `max` bytes.
pub fn read_limited(p: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
    let mut out = Vec::new();
    f.take(max + 1).read_to_end(&mut out)?;
    anyhow::ensure!(
        out.len() as u64 <= max,
        "{} is larger than {max} bytes",
        p.display()
    );
    Ok(out)
}

/// Writes a file atomically with the given mode ([`postern_core::atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    Ok(postern_core::atomic::write_atomic(path, bytes, mode)?)
}

/// The gid of a group in /etc/group (the principals command user's group, made by join).
pub fn group_id(name: &str) -> Result<u32> {
    let text = fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let n = f.next()?;
            let _pw = f.next()?;
            let gid = f.next()?.parse::<u32>().ok()?;
            (n == name).then_some(gid)
        })
        .next()
        .with_context(|| format!("no group {name} in /etc/group (run `postern-shim join` again: it creates the user)"))
}

/// [`write_atomic`] for a file owned by root and group `gid`: ownership and mode are set on
/// the temporary file, before the rename makes it visible.
pub fn write_atomic_owned(path: &Path, bytes: &[u8], mode: u32, gid: u32) -> Result<()> {
    Ok(postern_core::atomic::write_atomic_owned(
        path, bytes, mode, 0, gid,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_sets_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
    }

    #[test]
    fn read_limited_refuses_large_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, vec![0u8; 100]).unwrap();
        assert!(read_limited(&p, 99).is_err());
        assert_eq!(read_limited(&p, 100).unwrap().len(), 100);
    }
}
