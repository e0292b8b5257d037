//! The CA key store in the data directory: creation by `init`, loading with the permission
//! check that `serve` refuses to start without.
//!
//! Layout: `DIR/ca/` (0700) holds `user_ca`, `host_ca`, `node_ca` (OpenSSH Ed25519 keys, 0600),
//! `service_ca.key`/`service_ca.crt` (X.509 CA), `api.key`/`api.crt` (the API's TLS pair),
//! `audit.key`/`audit.pub` (the key that signs audit checkpoints, OpenSSH Ed25519).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use postern_core::cert::{generate_ed25519, KeySigner, Signer};
use ssh_key::{LineEnding, PrivateKey};
use zeroize::Zeroizing;

use crate::x509::ServiceCa;

/// Which SSH CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKind {
    /// Signs users' certificates.
    User,
    /// Signs host certificates.
    Host,
    /// Signs the gateway's certificates for servers.
    NodeAccess,
}

impl CaKind {
    /// All kinds.
    pub const ALL: [CaKind; 3] = [CaKind::User, CaKind::Host, CaKind::NodeAccess];

    fn file(self) -> &'static str {
        match self {
            CaKind::User => "user_ca",
            CaKind::Host => "host_ca",
            CaKind::NodeAccess => "node_ca",
        }
    }

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            CaKind::User => "user",
            CaKind::Host => "host",
            CaKind::NodeAccess => "node-access",
        }
    }
}

/// Every key the daemon holds.
pub struct KeyStore {
    /// User CA.
    pub user: KeySigner,
    /// Host CA.
    pub host: KeySigner,
    /// Node-access CA.
    pub node: KeySigner,
    /// X.509 service CA.
    pub service: ServiceCa,
    /// The API's certificate (PEM).
    pub api_cert_pem: String,
    /// The API's key (PEM), wiped from memory when dropped.
    pub api_key_pem: Zeroizing<String>,
}

impl KeyStore {
    /// The signer of one SSH CA.
    pub fn ssh(&self, kind: CaKind) -> &KeySigner {
        match kind {
            CaKind::User => &self.user,
            CaKind::Host => &self.host,
            CaKind::NodeAccess => &self.node,
        }
    }

    /// The `sha256:` pin of the service CA.
    pub fn pin(&self) -> String {
        postern_core::ca_pin(&self.service.cert_der)
    }

    /// The public key line of one SSH CA (authorized_keys form).
    pub fn public_line(&self, kind: CaKind) -> Result<String> {
        Ok(self.ssh(kind).public_key().to_openssh()?)
    }
}

/// The CA directory.
pub fn ca_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("ca")
}

/// Writes a new file with the given mode; refuses to replace anything.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Creates every key; refuses when a CA already exists.
pub fn create(data_dir: &Path, cluster: &str, api_names: &[String], now: u64) -> Result<()> {
    let dir = ca_dir(data_dir);
    if dir.exists() {
        bail!(
            "refusing to overwrite the existing CA in {} (remove it first if you really mean to start over)",
            dir.display()
        );
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for kind in CaKind::ALL {
        let key = generate_ed25519(&format!("postern {} CA ({cluster})", kind.as_str()))?;
        // `to_openssh` already returns `Zeroizing<String>`: the PEM is wiped when dropped.
        let pem = key.to_openssh(LineEnding::LF)?;
        write_new(&dir.join(kind.file()), pem.as_bytes(), 0o600)?;
        write_new(
            &dir.join(format!("{}.pub", kind.file())),
            format!("{}\n", key.public_key().to_openssh()?).as_bytes(),
            0o644,
        )?;
    }
    let (ca_pem, ca_key) = crate::x509::generate_ca(cluster, now)?;
    write_new(&dir.join("service_ca.key"), ca_key.as_bytes(), 0o600)?;
    write_new(&dir.join("service_ca.crt"), ca_pem.as_bytes(), 0o644)?;
    let ca = ServiceCa::load(&ca_pem, &ca_key)?;
    let (api_pem, api_key) = ca.issue_server_cert(api_names, now)?;
    write_new(&dir.join("api.key"), api_key.as_bytes(), 0o600)?;
    write_new(&dir.join("api.crt"), api_pem.as_bytes(), 0o644)?;
    let (private, public) = crate::audit::generate_key_pem(cluster)?;
    write_new(&dir.join("audit.key"), private.as_bytes(), 0o600)?;
    write_new(
        &dir.join("audit.pub"),
        format!("{public}\n").as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// Makes another instance's key directory from `from` (an instance's data directory): the
/// same CA keys, service CA (so the same pin) and audit key, copied file to file with the
/// same modes after the same permission checks as loading them, and an API certificate of
/// this instance's own names signed by the same service CA. Nothing passes through a
/// database, a log or a command line.
pub fn copy_from(from: &Path, data_dir: &Path, api_names: &[String], now: u64) -> Result<()> {
    let src = ca_dir(from);
    check_private(&src, true).with_context(|| format!("--keys-from {}", from.display()))?;
    let dir = ca_dir(data_dir);
    if dir.exists() {
        bail!(
            "refusing to overwrite the existing CA in {} (remove it first if you really mean to start over)",
            dir.display()
        );
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut secret: Vec<String> = CaKind::ALL.iter().map(|k| k.file().to_owned()).collect();
    secret.extend(["service_ca.key".to_owned(), "audit.key".to_owned()]);
    let mut public: Vec<String> = CaKind::ALL
        .iter()
        .map(|k| format!("{}.pub", k.file()))
        .collect();
    public.extend(["service_ca.crt".to_owned(), "audit.pub".to_owned()]);
    for f in &secret {
        check_private(&src.join(f), false)?;
        let text = read_secret(&src.join(f))?;
        write_new(&dir.join(f), text.as_bytes(), 0o600)?;
    }
    for f in &public {
        let text = fs::read(src.join(f))
            .with_context(|| format!("cannot read {}", src.join(f).display()))?;
        write_new(&dir.join(f), &text, 0o644)?;
    }
    let ca_pem = fs::read_to_string(dir.join("service_ca.crt"))?;
    let ca_key = read_secret(&dir.join("service_ca.key"))?;
    let ca = ServiceCa::load(&ca_pem, &ca_key)?;
    let (api_pem, api_key) = ca.issue_server_cert(api_names, now)?;
    write_new(&dir.join("api.key"), api_key.as_bytes(), 0o600)?;
    write_new(&dir.join("api.crt"), api_pem.as_bytes(), 0o644)?;
    Ok(())
}

/// Loads the audit checkpoint key, after the same permission checks as the CA keys. An
/// installation older than checkpoints has none: it is made as `audit.key.new`, `sign_existing`
/// signs the events already logged (the one time the daemon vouches for events it did not
/// just append), and only then is it renamed `audit.key`, so that a crash in between signs
/// them again at the next start instead of leaving them unsigned.
pub fn audit_key(
    data_dir: &Path,
    cluster: &str,
    sign_existing: impl FnOnce(&crate::audit::AuditKey) -> Result<()>,
) -> Result<crate::audit::AuditKey> {
    let dir = ca_dir(data_dir);
    check_private(&dir, true)?;
    let (path, new) = (dir.join("audit.key"), dir.join("audit.key.new"));
    let read = |p: &Path| -> Result<crate::audit::AuditKey> {
        check_private(p, false)?;
        let text = zeroize::Zeroizing::new(
            fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        );
        crate::audit::key_from_openssh(&text, p)
    };
    if fs::symlink_metadata(&path).is_ok() {
        return read(&path);
    }
    if fs::symlink_metadata(&new).is_err() {
        let (private, _) = crate::audit::generate_key_pem(cluster)?;
        write_new(&new, private.as_bytes(), 0o600)?;
    }
    let key = read(&new)?;
    sign_existing(&key)?;
    let public = key.public().to_openssh(cluster)?;
    let pub_path = dir.join("audit.pub");
    let _ = fs::remove_file(&pub_path);
    write_new(&pub_path, format!("{public}\n").as_bytes(), 0o644)?;
    fs::rename(&new, &path).with_context(|| format!("cannot rename {}", new.display()))?;
    fs::File::open(&dir)?.sync_all()?;
    Ok(key)
}

fn check_private(path: &Path, want_dir: bool) -> Result<()> {
    let md =
        fs::symlink_metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if md.file_type().is_symlink() {
        bail!("refusing to start: {} is a symbolic link", path.display());
    }
    if md.is_dir() != want_dir {
        bail!(
            "refusing to start: {} has the wrong file type",
            path.display()
        );
    }
    let mode = md.permissions().mode() & 0o777;
    let want = if want_dir { 0o700 } else { 0o600 };
    if mode & 0o077 != 0 {
        bail!(
            "refusing to start: {} has mode {mode:04o}; CA keys must be files of mode 0600 in a directory of mode 0700 (fix: chmod {want:o} {})",
            path.display(),
            path.display()
        );
    }
    // SAFETY-free: geteuid never fails.
    let euid = unsafe_free_geteuid();
    if md.uid() != euid {
        bail!(
            "refusing to start: {} belongs to uid {}, not to the daemon's uid {euid}",
            path.display(),
            md.uid()
        );
    }
    Ok(())
}

/// The effective uid, through std's metadata of `/proc/self` (no unsafe code).
pub fn unsafe_free_geteuid() -> u32 {
    fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// Reads a private key file into memory that is wiped when dropped. The buffer is sized from
/// the file first, so that growing it leaves no copy of the key behind in freed memory.
fn read_secret(path: &Path) -> Result<Zeroizing<String>> {
    use std::io::Read as _;
    let f = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    // A private key is a few hundred bytes; more is not a key of ours.
    if len > 64 * 1024 {
        bail!("{} is too large to be a key", path.display());
    }
    let mut text = Zeroizing::new(String::with_capacity(usize::try_from(len).unwrap_or(0) + 1));
    f.take(64 * 1024 + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text)
}

/// Loads every key after checking the directory's and the private files' permissions.
pub fn load(data_dir: &Path) -> Result<KeyStore> {
    let dir = ca_dir(data_dir);
    check_private(&dir, true)?;
    let read_private = |name: &str| -> Result<Zeroizing<String>> {
        let p = dir.join(name);
        check_private(&p, false)?;
        read_secret(&p)
    };
    let ssh = |kind: CaKind| -> Result<KeySigner> {
        let text = read_private(kind.file())?;
        let key = PrivateKey::from_openssh(&text)
            .map_err(|e| anyhow!("{}: {e}", dir.join(kind.file()).display()))?;
        if key.is_encrypted() {
            bail!(
                "{} is encrypted; posternd needs an unencrypted key",
                kind.file()
            );
        }
        Ok(KeySigner::new(key))
    };
    let service_key = read_private("service_ca.key")?;
    let service_pem = fs::read_to_string(dir.join("service_ca.crt"))
        .with_context(|| format!("cannot read {}", dir.join("service_ca.crt").display()))?;
    Ok(KeyStore {
        user: ssh(CaKind::User)?,
        host: ssh(CaKind::Host)?,
        node: ssh(CaKind::NodeAccess)?,
        service: ServiceCa::load(&service_pem, &service_key)?,
        api_key_pem: read_private("api.key")?,
        api_cert_pem: fs::read_to_string(dir.join("api.crt"))
            .with_context(|| format!("cannot read {}", dir.join("api.crt").display()))?,
    })
}
