//! Where the CLI keeps its state under `~/.ssh/postern/`, and the two JSON state files:
//! `current.json` (which CA and user `postern login` uses without flags) and each cluster's
//! `profile.json` (what the last login or renewal granted).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use postern_api_client::CaUrls;
use postern_core::{ClusterName, Login, Permit, Username};

use crate::files;

/// File names inside a cluster directory.
pub const KEY: &str = "id_ed25519";
/// The public key.
pub const PUB: &str = "id_ed25519.pub";
/// The SSH user certificate (ssh and ssh-add find it beside the key by this name).
pub const CERT: &str = "id_ed25519-cert.pub";
/// The X.509 client certificate for renewals.
pub const TLS_CRT: &str = "tls.crt";
/// The same Ed25519 key as PKCS#8, for the TLS client.
pub const TLS_KEY: &str = "tls.key";
/// The service CA.
pub const CA_CRT: &str = "ca.crt";
/// `@cert-authority` lines for the cluster's host CA.
pub const KNOWN_HOSTS: &str = "known_hosts";
/// The ssh_config block included from `~/.ssh/config`.
pub const SSH_CONFIG: &str = "ssh_config";
/// What was granted.
pub const PROFILE: &str = "profile.json";
/// Every file `postern` writes into a cluster directory, for `postern logout`.
pub const ALL_FILES: [&str; 9] = [
    KEY,
    PUB,
    CERT,
    TLS_CRT,
    TLS_KEY,
    CA_CRT,
    KNOWN_HOSTS,
    SSH_CONFIG,
    PROFILE,
];

/// Paths derived from a home directory. The home is an argument, never read here, so that
/// tests run against a temporary directory.
#[derive(Debug, Clone)]
pub struct Layout {
    home: PathBuf,
}

impl Layout {
    /// The layout under `home` (an absolute path).
    pub fn new(home: PathBuf) -> Layout {
        Layout { home }
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `~/.ssh`.
    pub fn ssh_dir(&self) -> PathBuf {
        self.home.join(".ssh")
    }

    /// `~/.ssh/config`.
    pub fn ssh_config(&self) -> PathBuf {
        self.ssh_dir().join("config")
    }

    /// `~/.ssh/postern`.
    pub fn postern_dir(&self) -> PathBuf {
        self.ssh_dir().join("postern")
    }

    /// `~/.ssh/postern/<cluster>`.
    pub fn cluster_dir(&self, cluster: &ClusterName) -> PathBuf {
        self.postern_dir().join(cluster.as_str())
    }
}

/// `~/.ssh/postern/current.json`: what `postern login` uses when flags are omitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Current {
    /// The CA's base URLs (`--ca`, in order): one string, as in files from before several
    /// URLs, or a list.
    pub ca: CaUrls,
    /// The service CA pin.
    pub ca_pin: String,
    /// The Postern user.
    pub user: Username,
    /// The cluster of the last login (unknown right after `postern enroll`).
    #[serde(default)]
    pub cluster: Option<ClusterName>,
}

/// `profile.json` of a cluster: what the last login or renewal granted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    /// The CA's base URLs, as in `current.json`.
    pub ca: CaUrls,
    /// The service CA pin.
    pub ca_pin: String,
    /// The Postern user.
    pub user: Username,
    /// The cluster.
    pub cluster: ClusterName,
    /// `valid_before` of the certificate (Unix seconds).
    pub valid_before: u64,
    /// Renewals are refused after this Unix time.
    pub renew_until: u64,
    /// Principals (OS logins).
    pub principals: Vec<Login>,
    /// Certificate extensions.
    pub permits: Vec<Permit>,
    /// Whether `postern login --agent` put the key into ssh-agent.
    pub agent: bool,
    /// The gateway (`HOST:PORT`), when the cluster has one; the first when it has several.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Every gateway (`HOST:PORT`), in order, when the cluster has several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
}

/// Reads `current.json`; `None` when there is none.
pub fn load_current(layout: &Layout) -> anyhow::Result<Option<Current>> {
    let Some(bytes) = files::read_private(&layout.postern_dir(), "current.json", layout)? else {
        return Ok(None);
    };
    let c = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "reading {}",
            layout.postern_dir().join("current.json").display()
        )
    })?;
    Ok(Some(c))
}

/// Writes `current.json`.
pub fn save_current(layout: &Layout, current: &Current) -> anyhow::Result<()> {
    let dir = files::ensure_postern_dir(layout)?;
    let mut json = serde_json::to_vec_pretty(current).context("encoding current.json")?;
    json.push(b'\n');
    files::write_atomic(&dir, "current.json", &json, 0o600)
}

/// Reads a cluster's `profile.json`; `None` when the cluster has none (logged out).
pub fn load_profile(layout: &Layout, cluster: &ClusterName) -> anyhow::Result<Option<Profile>> {
    let dir = layout.cluster_dir(cluster);
    let Some(bytes) = files::read_private(&dir, PROFILE, layout)? else {
        return Ok(None);
    };
    let p = serde_json::from_slice(&bytes)
        .with_context(|| format!("reading {}", dir.join(PROFILE).display()))?;
    Ok(Some(p))
}

/// The current cluster's profile, or an error telling the user to log in.
pub fn current_profile(layout: &Layout) -> anyhow::Result<(Current, Profile)> {
    let not_logged_in = || anyhow::anyhow!("not logged in: run `postern login` first");
    let current = load_current(layout)?.ok_or_else(not_logged_in)?;
    let cluster = current.cluster.clone().ok_or_else(not_logged_in)?;
    let profile = load_profile(layout, &cluster)?.ok_or_else(not_logged_in)?;
    Ok((current, profile))
}
