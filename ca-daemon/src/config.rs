//! `posternd.toml`: the daemon's configuration, validated with file:line:column errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use postern_core::policy::line_col;
use postern_core::ClusterName;
use serde::{Deserialize, Serialize};

/// The file as written by an admin.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: String,
    listen: String,
    api_url: String,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_policy")]
    policy: PathBuf,
    #[serde(default)]
    gateway: Option<RawGateway>,
    #[serde(default)]
    recordings: Option<RawRecordings>,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    storage: Option<RawStorage>,
    metrics: Option<RawMetrics>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    backend: toml::Spanned<String>,
    url: Option<toml::Spanned<String>>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    recordings_dir: Option<PathBuf>,
}

/// `[storage]` with `backend = "postgres"`.
#[derive(Clone, Debug)]
pub struct PgSettings {
    /// `url`: `postgres://USER@HOST:PORT/DB?sslmode=…`, without a password.
    pub url: String,
    /// `password_file`: the password, read at start (the URL and command lines never hold it).
    pub password_file: Option<PathBuf>,
    /// `ca_file`: PEM roots that verify the server's certificate when `sslmode` is `require`.
    pub ca_file: Option<PathBuf>,
}

impl PgSettings {
    /// Parses the URL, refusing one that carries a password or another scheme.
    pub fn check_url(url: &str) -> Result<tokio_postgres::Config, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "{url:?} is not a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE)"
            ));
        }
        let cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("the PostgreSQL URL is not valid: {e}"))?;
        if cfg.get_password().is_some() {
            return Err(
                "the PostgreSQL URL holds a password: put it in a file of mode 0600 and name that file as [storage] password_file (or init's --storage-password-file), so that it is never on a command line or in a config others read"
                    .to_owned(),
            );
        }
        if cfg.get_user().is_none() {
            return Err(
                "the PostgreSQL URL names no user (postgres://USER@HOST/DATABASE)".to_owned(),
            );
        }
        Ok(cfg)
    }
}

/// Where the daemon's tables live (`[storage]`).
#[derive(Debug, Clone)]
pub enum Storage {
    /// `backend = "sqlite"` (the default): `posternd.db` in the data directory, one instance.
    Sqlite(PathBuf),
    /// `backend = "postgres"`: a PostgreSQL database shared by every instance.
    Postgres(PgSettings),
}

impl Storage {
    /// Whether several instances may share it.
    pub fn is_shared(&self) -> bool {
        matches!(self, Storage::Postgres(_))
    }
}

impl Serialize for Storage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Storage::Sqlite(p) => s.serialize_str(&format!("sqlite:{}", p.display())),
            Storage::Postgres(pg) => s.serialize_str(&pg.url),
        }
    }
}

/// `[metrics]`: the Prometheus listener, off unless `listen` is set.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<toml::Spanned<String>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<toml::Spanned<i64>>,
    max_anonymous_connections: Option<toml::Spanned<i64>>,
    max_handshakes: Option<toml::Spanned<i64>>,
    per_source_max_handshakes: Option<toml::Spanned<i64>>,
    per_source_max_anonymous_connections: Option<toml::Spanned<i64>>,
    body_timeout: Option<toml::Spanned<String>>,
    handler_timeout: Option<toml::Spanned<String>>,
    upload_timeout: Option<toml::Spanned<String>>,
    argon2_concurrency: Option<toml::Spanned<i64>>,
    login_per_minute: Option<toml::Spanned<i64>>,
    login_burst: Option<toml::Spanned<i64>>,
    enroll_per_minute: Option<toml::Spanned<i64>>,
    enroll_burst: Option<toml::Spanned<i64>>,
    join_per_minute: Option<toml::Spanned<i64>>,
    join_burst: Option<toml::Spanned<i64>>,
}

/// A per-source rate: `per_minute` requests a minute on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rate {
    /// Tokens added a minute.
    pub per_minute: u32,
    /// The bucket's size.
    pub burst: u32,
}

/// `[limits]`: what one client, or all anonymous clients together, may cost the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Connections at once, of every kind (after the TLS handshake).
    pub max_connections: usize,
    /// Of those, connections without a verified client certificate (login, enroll, join);
    /// the rest is kept for mTLS peers (renewal, servers, gateways).
    pub max_anonymous_connections: usize,
    /// TLS handshakes in progress at once (each has 10 s).
    pub max_handshakes: usize,
    /// Of those, from one source address (IPv6: one /64): before its handshake ends nobody
    /// knows whether a connection is a peer, so one source must not be able to take them all.
    pub per_source_max_handshakes: usize,
    /// Anonymous connections from one source address (IPv6: one /64) at once.
    pub per_source_max_anonymous_connections: usize,
    /// Every request body must have arrived this long after its headers (408 otherwise).
    #[serde(serialize_with = "as_secs")]
    pub body_timeout: std::time::Duration,
    /// Every handler must have answered this long after the request's headers (503).
    #[serde(serialize_with = "as_secs")]
    pub handler_timeout: std::time::Duration,
    /// The body and handler deadline of the gateways' recording uploads (mTLS only).
    #[serde(serialize_with = "as_secs")]
    pub upload_timeout: std::time::Duration,
    /// Password hashes (argon2id, 19 MiB each) computed at once.
    pub argon2_concurrency: usize,
    /// `POST /v1/login` per source address (IPv6: per /64).
    pub login: Rate,
    /// `POST /v1/enroll` per source address.
    pub enroll: Rate,
    /// `POST /v1/join` per source address.
    pub join: Rate,
}

impl Default for Limits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Limits {
            max_connections: 4096,
            max_anonymous_connections: 1024,
            max_handshakes: 4096,
            per_source_max_handshakes: 128,
            per_source_max_anonymous_connections: 128,
            body_timeout: std::time::Duration::from_secs(10),
            handler_timeout: std::time::Duration::from_secs(30),
            upload_timeout: std::time::Duration::from_secs(600),
            argon2_concurrency: 2 * cores,
            login: Rate {
                per_minute: 20,
                burst: 40,
            },
            enroll: Rate {
                per_minute: 10,
                burst: 20,
            },
            join: Rate {
                per_minute: 10,
                burst: 20,
            },
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRecordings {
    max_bytes: Option<toml::Spanned<RawSize>>,
    chunk_bytes: Option<toml::Spanned<RawSize>>,
}

/// A size: a number of bytes, or a string such as `"64GiB"` (KiB, MiB, GiB, TiB).
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

/// Parses a [`RawSize`]; `None` with a reason when it is not a size.
fn parse_size(raw: &RawSize) -> std::result::Result<u64, String> {
    let text = match raw {
        RawSize::Bytes(n) => {
            return u64::try_from(*n).map_err(|_| format!("{n} is not a size in bytes"))
        }
        RawSize::Text(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => {
            return Err(format!(
                "{text:?} is not a size: expected bytes or a number with KiB, MiB, GiB or TiB"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{text:?} is not a size"))
}

/// Durations are printed as seconds (`check-config --print`).
fn as_secs<S: serde::Serializer>(
    d: &std::time::Duration,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// Parses `[limits]`; errors are (offset, message).
fn parse_limits(raw: &RawLimits) -> std::result::Result<Limits, (usize, String)> {
    let mut l = Limits::default();
    let int = |v: &Option<toml::Spanned<i64>>, key: &str, min: i64, max: i64, into: &mut usize| {
        if let Some(v) = v {
            let n = *v.get_ref();
            if n < min || n > max {
                return Err((
                    v.span().start,
                    format!("[limits] {key} must be between {min} and {max}"),
                ));
            }
            *into = usize::try_from(n)
                .map_err(|_| (v.span().start, format!("[limits] {key} is out of range")))?;
        }
        Ok(())
    };
    let dur = |v: &Option<toml::Spanned<String>>, key: &str, into: &mut std::time::Duration| {
        if let Some(v) = v {
            let t: postern_core::Ttl =
                v.get_ref()
                    .parse()
                    .map_err(|e: postern_core::ttl::TtlError| {
                        (v.span().start, format!("[limits] {key}: {e}"))
                    })?;
            if t.as_secs() > 86_400 {
                return Err((v.span().start, format!("[limits] {key} must be at most 1d")));
            }
            *into = t.as_duration();
        }
        Ok(())
    };
    int(
        &raw.max_connections,
        "max_connections",
        2,
        1 << 20,
        &mut l.max_connections,
    )?;
    int(
        &raw.max_anonymous_connections,
        "max_anonymous_connections",
        1,
        1 << 20,
        &mut l.max_anonymous_connections,
    )?;
    int(
        &raw.max_handshakes,
        "max_handshakes",
        1,
        1 << 20,
        &mut l.max_handshakes,
    )?;
    int(
        &raw.per_source_max_handshakes,
        "per_source_max_handshakes",
        1,
        1 << 20,
        &mut l.per_source_max_handshakes,
    )?;
    int(
        &raw.per_source_max_anonymous_connections,
        "per_source_max_anonymous_connections",
        1,
        1 << 20,
        &mut l.per_source_max_anonymous_connections,
    )?;
    int(
        &raw.argon2_concurrency,
        "argon2_concurrency",
        1,
        1024,
        &mut l.argon2_concurrency,
    )?;
    if l.max_anonymous_connections >= l.max_connections {
        let offset = raw
            .max_anonymous_connections
            .as_ref()
            .or(raw.max_connections.as_ref())
            .map_or(0, |v| v.span().start);
        return Err((
            offset,
            format!(
                "[limits] max_anonymous_connections ({}) must be less than max_connections ({}): the difference is kept for clients with a certificate",
                l.max_anonymous_connections, l.max_connections
            ),
        ));
    }
    dur(&raw.body_timeout, "body_timeout", &mut l.body_timeout)?;
    dur(
        &raw.handler_timeout,
        "handler_timeout",
        &mut l.handler_timeout,
    )?;
    dur(&raw.upload_timeout, "upload_timeout", &mut l.upload_timeout)?;
    let rate = |per: &Option<toml::Spanned<i64>>,
                burst: &Option<toml::Spanned<i64>>,
                name: &str,
                into: &mut Rate| {
        let (mut p, mut b) = (into.per_minute as usize, into.burst as usize);
        int(per, &format!("{name}_per_minute"), 1, 1_000_000, &mut p)?;
        int(burst, &format!("{name}_burst"), 1, 1_000_000, &mut b)?;
        *into = Rate {
            per_minute: u32::try_from(p).unwrap_or(u32::MAX),
            burst: u32::try_from(b).unwrap_or(u32::MAX),
        };
        Ok::<(), (usize, String)>(())
    };
    rate(
        &raw.login_per_minute,
        &raw.login_burst,
        "login",
        &mut l.login,
    )?;
    rate(
        &raw.enroll_per_minute,
        &raw.enroll_burst,
        "enroll",
        &mut l.enroll,
    )?;
    rate(&raw.join_per_minute, &raw.join_burst, "join", &mut l.join)?;
    Ok(l)
}

/// Default largest recording: 64 GiB.
pub const DEFAULT_RECORDING_MAX_BYTES: u64 = 64 << 30;
/// Default (and largest useful) upload chunk: 8 MiB.
pub const DEFAULT_RECORDING_CHUNK_BYTES: u64 = 8 << 20;
/// Smallest accepted `chunk_bytes`.
pub const MIN_RECORDING_CHUNK_BYTES: u64 = 4 << 10;
/// Largest accepted `chunk_bytes`: each upload in flight buffers one chunk.
pub const MAX_RECORDING_CHUNK_BYTES: u64 = 64 << 20;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    public_addr: Option<toml::Spanned<PublicAddrs>>,
}

/// `public_addr = "HOST:PORT"` or `public_addr = ["HOST:PORT", ...]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum PublicAddrs {
    One(String),
    Several(Vec<String>),
}

/// `public_addrs` as posternd.toml writes them: one string, or an array of several.
pub fn render_public_addrs(addrs: &[String]) -> String {
    match addrs {
        [one] => format!("{one:?}"),
        several => format!(
            "[{}]",
            several
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".")
}
fn default_policy() -> PathBuf {
    PathBuf::from("policy.toml")
}

/// The validated configuration; relative paths are resolved against the config file's folder.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The config file itself.
    pub file: PathBuf,
    /// Cluster name (`Host *.<cluster>`).
    pub cluster: ClusterName,
    /// Where the HTTPS API listens.
    pub listen: SocketAddr,
    /// How clients reach the API.
    pub api_url: String,
    /// Data directory (CA keys, database, admin socket).
    pub data_dir: PathBuf,
    /// The policy file.
    pub policy: PathBuf,
    /// The gateways' `HOST:PORT`s that clients use as ProxyJump, in order (empty without):
    /// the one source of the gateways' public addresses. `postern login` writes them, the CA
    /// puts their hosts into every gateway's host certificate, and `postern-gate serve`
    /// refuses a certificate that names none of them.
    pub gateway_public_addrs: Vec<String>,
    /// `[recordings] max_bytes`: the largest recording accepted.
    pub recordings_max_bytes: u64,
    /// `[recordings] chunk_bytes`: the largest upload chunk accepted (gateways send chunks of
    /// this size).
    pub recordings_chunk_bytes: u64,
    /// `[limits]`.
    pub limits: Limits,
    /// `[storage]`.
    pub storage: Storage,
    /// `[storage] recordings_dir`: where recordings are kept (default `recordings/` in the
    /// data directory); every instance on one PostgreSQL database must name one shared
    /// directory (see posternd.toml(5)).
    pub recordings_dir: PathBuf,
    /// `[metrics] listen`: where `GET /metrics` is served in plain HTTP; `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(&text, path).map_err(anyhow::Error::msg)
    }

    /// Parses config text; errors are `file:line:column: message`.
    pub fn parse(text: &str, path: &Path) -> std::result::Result<Config, String> {
        let at = |offset: usize, msg: String| {
            let (l, c) = line_col(text, offset);
            format!("{}:{l}:{c}: {msg}", path.display())
        };
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| at(e.span().map_or(0, |s| s.start), e.message().to_owned()))?;
        let find = |key: &str| text.find(key).unwrap_or(0);
        let cluster = postern_core::names::parse_cluster_name(&raw.cluster)
            .map_err(|e| at(find("cluster"), e.to_string()))?;
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            at(
                find("listen"),
                format!(
                    "listen {:?} is not an address like 127.0.0.1:3080",
                    raw.listen
                ),
            )
        })?;
        if !raw.api_url.starts_with("https://") {
            return Err(at(
                find("api_url"),
                "api_url must start with https://".into(),
            ));
        }
        let size = |v: &toml::Spanned<RawSize>, key: &str, min: u64, max: u64| {
            let n = parse_size(v.get_ref()).map_err(|e| at(v.span().start, e))?;
            if n < min || n > max {
                return Err(at(
                    v.span().start,
                    format!("[recordings] {key} must be between {min} and {max} bytes"),
                ));
            }
            Ok(n)
        };
        let (mut recordings_max_bytes, mut recordings_chunk_bytes) =
            (DEFAULT_RECORDING_MAX_BYTES, DEFAULT_RECORDING_CHUNK_BYTES);
        if let Some(r) = &raw.recordings {
            if let Some(v) = &r.max_bytes {
                recordings_max_bytes = size(v, "max_bytes", 1, i64::MAX as u64)?;
            }
            if let Some(v) = &r.chunk_bytes {
                recordings_chunk_bytes = size(
                    v,
                    "chunk_bytes",
                    MIN_RECORDING_CHUNK_BYTES,
                    MAX_RECORDING_CHUNK_BYTES,
                )?;
            }
        }
        let limits = match &raw.limits {
            None => Limits::default(),
            Some(l) => parse_limits(l).map_err(|(offset, msg)| at(offset, msg))?,
        };
        // Checked here, not first by `postern login` or a failing ssh: the host must be one a
        // host certificate can name, or every user's ssh fails with "Host key verification
        // failed" at the gateway.
        let gateway_public_addrs = match raw.gateway.as_ref().and_then(|g| g.public_addr.as_ref()) {
            None => Vec::new(),
            Some(v) => {
                let start = v.span().start;
                let addrs = match v.get_ref() {
                    PublicAddrs::One(a) => vec![a.clone()],
                    PublicAddrs::Several(a) if a.is_empty() => {
                        return Err(at(
                            start,
                            "[gateway] public_addr: an empty list; leave the key out when \
                             the cluster has no gateway"
                                .into(),
                        ))
                    }
                    PublicAddrs::Several(a) => a.clone(),
                };
                let mut seen = std::collections::HashSet::new();
                for a in &addrs {
                    postern_core::names::address_principal(a)
                        .map_err(|e| at(start, format!("[gateway] public_addr: {e}")))?;
                    if !seen.insert(a.to_ascii_lowercase()) {
                        return Err(at(
                            start,
                            format!("[gateway] public_addr: {a:?} is listed twice"),
                        ));
                    }
                }
                addrs
            }
        };
        let metrics_listen = match raw.metrics.as_ref().and_then(|m| m.listen.as_ref()) {
            None => None,
            Some(v) => Some(v.get_ref().parse::<SocketAddr>().map_err(|_| {
                at(
                    v.span().start,
                    format!(
                        "[metrics] listen {:?} is not an address like 127.0.0.1:9464",
                        v.get_ref()
                    ),
                )
            })?),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let data_dir = resolve(&raw.data_dir);
        let (storage, recordings_dir) = match &raw.storage {
            None => (
                Storage::Sqlite(data_dir.join("posternd.db")),
                data_dir.join("recordings"),
            ),
            Some(st) => {
                let rec = st
                    .recordings_dir
                    .as_ref()
                    .map_or_else(|| data_dir.join("recordings"), |p| resolve(p));
                let storage = match st.backend.get_ref().as_str() {
                    "sqlite" => {
                        if let Some(u) = &st.url {
                            return Err(at(
                                u.span().start,
                                "[storage] url is for backend = \"postgres\"; the SQLite file is posternd.db in data_dir".into(),
                            ));
                        }
                        Storage::Sqlite(data_dir.join("posternd.db"))
                    }
                    "postgres" => {
                        let Some(u) = &st.url else {
                            return Err(at(
                                st.backend.span().start,
                                "[storage] backend = \"postgres\" needs url = \"postgres://USER@HOST:PORT/DATABASE\"".into(),
                            ));
                        };
                        PgSettings::check_url(u.get_ref())
                            .map_err(|e| at(u.span().start, format!("[storage] url: {e}")))?;
                        Storage::Postgres(PgSettings {
                            url: u.get_ref().clone(),
                            password_file: st.password_file.as_deref().map(resolve),
                            ca_file: st.ca_file.as_deref().map(resolve),
                        })
                    }
                    other => {
                        return Err(at(
                            st.backend.span().start,
                            format!(
                            "[storage] backend {other:?} is not one of \"sqlite\", \"postgres\""
                        ),
                        ))
                    }
                };
                (storage, rec)
            }
        };
        Ok(Config {
            file: path.to_path_buf(),
            cluster,
            listen,
            api_url: raw.api_url,
            data_dir,
            policy: resolve(&raw.policy),
            gateway_public_addrs,
            recordings_max_bytes,
            recordings_chunk_bytes,
            limits,
            storage,
            recordings_dir,
            metrics_listen,
        })
    }

    /// The text `posternd init` writes.
    pub fn render(cluster: &str, listen: &SocketAddr, api_url: &str) -> String {
        format!(
            "# posternd configuration. See posternd.toml(5).\n\
             cluster = {cluster:?}\n\
             listen = \"{listen}\"\n\
             api_url = {api_url:?}\n\
             # Relative paths are relative to this file's folder.\n\
             data_dir = \".\"\n\
             policy = \"policy.toml\"\n\
             \n\
             # [gateway]\n\
             # public_addr = \"gate.example.com:3023\"\n\
             # several gateways: one DNS name for all, or a list\n\
             # public_addr = [\"gate1.example.com:3023\", \"gate2.example.com:3023\"]\n\
             \n\
             # [recordings]\n\
             # max_bytes = \"64GiB\"      # the largest recording a gateway may upload\n\
             # chunk_bytes = \"8MiB\"     # gateways upload in chunks of this size\n\
             \n\
             # [limits]                  # see posternd.toml(5) for every key\n\
             # max_anonymous_connections = 1024\n\
             # login_per_minute = 20\n\
             \n\
             # [metrics]                 # Prometheus /metrics in plain HTTP, off unless set\n\
             # listen = \"127.0.0.1:9464\"\n"
        )
    }

    /// The admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.data_dir.join("admin.sock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_config_parses() {
        let text = Config::render(
            "c.test",
            &"127.0.0.1:3080".parse().unwrap(),
            "https://127.0.0.1:3080",
        );
        let c = Config::parse(&text, Path::new("/d/posternd.toml")).unwrap();
        assert_eq!(c.cluster.as_str(), "c.test");
        assert_eq!(c.data_dir, Path::new("/d/."));
        assert_eq!(c.policy, Path::new("/d/policy.toml"));
    }

    #[test]
    fn metrics_listener_is_off_unless_set_and_must_be_an_address() {
        let base = "cluster = \"c\"\nlisten = \"127.0.0.1:1\"\napi_url = \"https://x\"\n";
        let c = Config::parse(base, Path::new("p.toml")).unwrap();
        assert_eq!(c.metrics_listen, None);
        let on = format!("{base}[metrics]\nlisten = \"127.0.0.1:9464\"\n");
        let c = Config::parse(&on, Path::new("p.toml")).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        let bad = format!("{base}[metrics]\nlisten = \"localhost\"\n");
        let e = Config::parse(&bad, Path::new("p.toml")).unwrap_err();
        assert!(
            e.starts_with("p.toml:5:10: [metrics] listen \"localhost\" is not an address"),
            "{e}"
        );
    }

    #[test]
    fn rejects_unknown_key_with_position() {
        let text = "cluster = \"c\"\nlisten = \"127.0.0.1:1\"\napi_url = \"https://x\"\nfoo = 1\n";
        let e = Config::parse(text, Path::new("p.toml")).unwrap_err();
        assert!(e.starts_with("p.toml:4:1: "), "{e}");
    }

    #[test]
    fn recordings_limits_default_and_parse_with_units() {
        let base = "cluster = \"c\"\nlisten = \"127.0.0.1:1\"\napi_url = \"https://x\"\n";
        let c = Config::parse(base, Path::new("p")).unwrap();
        assert_eq!(c.recordings_max_bytes, 64 << 30);
        assert_eq!(c.recordings_chunk_bytes, 8 << 20);
        let c = Config::parse(
            &format!("{base}[recordings]\nmax_bytes = \"2TiB\"\nchunk_bytes = 65536\n"),
            Path::new("p"),
        )
        .unwrap();
        assert_eq!(c.recordings_max_bytes, 2 << 40);
        assert_eq!(c.recordings_chunk_bytes, 65536);
        let c = Config::parse(
            &format!("{base}[recordings]\nmax_bytes = \"300 MiB\"\n"),
            Path::new("p"),
        )
        .unwrap();
        assert_eq!(c.recordings_max_bytes, 300 << 20);
    }

    #[test]
    fn rejects_bad_recordings_limits_at_their_position() {
        let base =
            "cluster = \"c\"\nlisten = \"127.0.0.1:1\"\napi_url = \"https://x\"\n[recordings]\n";
        for (bad, why) in [
            ("max_bytes = -1\n", "not a size"),
            ("max_bytes = 0\n", "between"),
            ("max_bytes = \"64GB\"\n", "KiB, MiB"),
            ("max_bytes = \"lots\"\n", "not a size"),
            ("max_bytes = \"99999999999TiB\"\n", "not a size"),
            ("max_bytes = \"9223372036854775808\"\n", "between"),
            ("chunk_bytes = 100\n", "between"),
            ("chunk_bytes = \"1GiB\"\n", "between"),
        ] {
            let e = Config::parse(&format!("{base}{bad}"), Path::new("p")).unwrap_err();
            assert!(e.starts_with("p:5:"), "{bad}: {e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = Config::parse(&format!("{base}max_size = 1\n"), Path::new("p")).unwrap_err();
        assert!(e.starts_with("p:5:1: ") && e.contains("max_size"), "{e}");
        let e = Config::parse(&format!("{base}max_bytes = 1.5\n"), Path::new("p")).unwrap_err();
        assert!(e.starts_with("p:5:"), "{e}");
    }

    #[test]
    fn gateway_public_addr_must_be_nameable_by_a_host_certificate() {
        let base =
            "cluster = \"c\"\nlisten = \"127.0.0.1:1\"\napi_url = \"https://x\"\n[gateway]\n";
        let c = Config::parse(
            &format!("{base}public_addr = \"gate.example.com:3023\"\n"),
            Path::new("p"),
        )
        .unwrap();
        assert_eq!(c.gateway_public_addrs, ["gate.example.com:3023"]);
        let c = Config::parse(
            &format!("{base}public_addr = [\"g1.example.com:3023\", \"10.0.0.2:22\"]\n"),
            Path::new("p"),
        )
        .unwrap();
        assert_eq!(
            c.gateway_public_addrs,
            ["g1.example.com:3023", "10.0.0.2:22"]
        );
        assert_eq!(
            render_public_addrs(&c.gateway_public_addrs),
            "[\"g1.example.com:3023\", \"10.0.0.2:22\"]"
        );
        for bad in [
            "[]",
            "[\"g1:22\", \"G1:22\"]",
            "[\"g1:22\", \"gate example:22\"]",
            "[\"g1:22\", 3]",
        ] {
            let e =
                Config::parse(&format!("{base}public_addr = {bad}\n"), Path::new("p")).unwrap_err();
            assert!(e.starts_with("p:5:"), "{bad}: {e}");
        }
        for bad in ["[::1]:3023", "gate:0", "gate example:22", ""] {
            let e = Config::parse(&format!("{base}public_addr = {bad:?}\n"), Path::new("p"))
                .unwrap_err();
            assert!(
                e.starts_with("p:5:15: [gateway] public_addr: "),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn limits_default_and_parse() {
        let base = "cluster = \"c\"\nlisten = \"127.0.0.1:1\"\napi_url = \"https://x\"\n";
        let c = Config::parse(base, Path::new("p")).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.limits.max_anonymous_connections, 1024);
        assert_eq!(c.limits.body_timeout.as_secs(), 10);
        let c = Config::parse(
            &format!("{base}[limits]\nmax_connections = 100\nmax_anonymous_connections = 10\nbody_timeout = \"4s\"\nupload_timeout = \"1h\"\nargon2_concurrency = 3\nlogin_per_minute = 5\njoin_burst = 7\n"),
            Path::new("p"),
        )
        .unwrap();
        let l = &c.limits;
        assert_eq!((l.max_connections, l.max_anonymous_connections), (100, 10));
        assert_eq!(
            (l.body_timeout.as_secs(), l.upload_timeout.as_secs()),
            (4, 3600)
        );
        assert_eq!(l.argon2_concurrency, 3);
        assert_eq!(
            l.login,
            Rate {
                per_minute: 5,
                burst: 40
            }
        );
        assert_eq!(
            l.join,
            Rate {
                per_minute: 10,
                burst: 7
            }
        );
    }

    #[test]
    fn rejects_bad_limits_at_their_position() {
        let base = "cluster = \"c\"\nlisten = \"127.0.0.1:1\"\napi_url = \"https://x\"\n[limits]\n";
        for (bad, why) in [
            (
                "max_anonymous_connections = 4096\n",
                "must be less than max_connections (4096)",
            ),
            ("max_connections = 0\n", "between"),
            (
                "login_per_minute = 0\n",
                "login_per_minute must be between 1",
            ),
            ("body_timeout = \"soon\"\n", "body_timeout"),
            ("handler_timeout = \"2d\"\n", "at most 1d"),
            ("argon2_concurrency = -1\n", "between"),
            ("max_body = 1\n", "max_body"),
        ] {
            let e = Config::parse(&format!("{base}{bad}"), Path::new("p")).unwrap_err();
            assert!(e.starts_with("p:5:"), "{bad}: {e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn rejects_bad_values() {
        let e = Config::parse(
            "cluster = \"a b\"\nlisten = \"127.0.0.1:1\"\napi_url = \"https://x\"\n",
            Path::new("p"),
        )
        .unwrap_err();
        assert!(e.contains("cluster"), "{e}");
        let e = Config::parse(
            "cluster = \"c\"\nlisten = \"nowhere\"\napi_url = \"https://x\"\n",
            Path::new("p"),
        )
        .unwrap_err();
        assert!(e.contains("p:2:1"), "{e}");
        let e = Config::parse(
            "cluster = \"c\"\nlisten = \"127.0.0.1:1\"\napi_url = \"http://x\"\n",
            Path::new("p"),
        )
        .unwrap_err();
        assert!(e.contains("https"), "{e}");
    }
}
