//! Daemon lifecycle: `init`, `check-config`, `serve` (with policy reload), `quickstart`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use postern_core::Policy;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, Config};
use crate::service::{now, Service};
use crate::store;
use crate::{admin, api, audit, auth, db, keys, tls};

/// What `init` created.
#[derive(Debug, Serialize)]
pub struct InitOutput {
    /// Cluster name.
    pub cluster: String,
    /// API URL for clients.
    pub api_url: String,
    /// `sha256:` pin of the service CA.
    pub ca_pin: String,
    /// The config file.
    pub config: PathBuf,
    /// The policy file.
    pub policy: PathBuf,
}

/// Formats Unix seconds as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn fmt_time(ts: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// How `posternd init` is told where the tables live (`--storage` and its files).
#[derive(Debug, Default, Clone)]
pub struct InitStorage {
    /// `--storage postgres://USER@HOST:PORT/DB` (none: the embedded SQLite file).
    pub url: Option<String>,
    /// `--storage-password-file FILE`.
    pub password_file: Option<PathBuf>,
    /// `--storage-ca-file FILE`.
    pub ca_file: Option<PathBuf>,
    /// `--recordings-dir DIR`.
    pub recordings_dir: Option<PathBuf>,
}

impl InitStorage {
    /// The `[storage]` section of the config `init` writes.
    pub fn render(&self) -> Result<String> {
        let Some(url) = &self.url else {
            if self.password_file.is_some() || self.ca_file.is_some() {
                bail!(
                    "--storage-password-file and --storage-ca-file go with --storage postgres://…"
                );
            }
            return Ok(match &self.recordings_dir {
                None => String::new(),
                Some(d) => format!(
                    "\n[storage]\nbackend = \"sqlite\"\nrecordings_dir = {:?}\n",
                    abs(d)?
                ),
            });
        };
        crate::config::PgSettings::check_url(url).map_err(|e| anyhow!("--storage: {e}"))?;
        let mut out = format!("\n[storage]\nbackend = \"postgres\"\nurl = {url:?}\n");
        if let Some(f) = &self.password_file {
            out.push_str(&format!("password_file = {:?}\n", abs(f)?));
        }
        if let Some(f) = &self.ca_file {
            out.push_str(&format!("ca_file = {:?}\n", abs(f)?));
        }
        match &self.recordings_dir {
            Some(d) => out.push_str(&format!(
                "# Every instance names this one shared directory.\nrecordings_dir = {:?}\n",
                abs(d)?
            )),
            None => out.push_str(
                "# Recordings are kept here; with several instances, name one directory they all share.\n# recordings_dir = \"/srv/postern/recordings\"\n",
            ),
        }
        Ok(out)
    }
}

fn abs(p: &Path) -> Result<String> {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{} is not UTF-8", p.display()))
}

/// Creates a data directory with config, policy, keys and database. With `keys_from` (an
/// instance's data directory), makes another instance of that CA on the same database: its
/// keys, pin, cluster and policy, and an API certificate for this instance's names.
pub fn init(
    data_dir: &Path,
    cluster: Option<&str>,
    listen: SocketAddr,
    extra_names: &[String],
    policy_text: Option<&str>,
    storage: &InitStorage,
    keys_from: Option<&Path>,
) -> Result<InitOutput> {
    let from = match keys_from {
        None => None,
        Some(dir) => {
            let cfg = Config::load(&dir.join("posternd.toml")).with_context(|| {
                format!(
                    "--keys-from {}: not an instance's data directory",
                    dir.display()
                )
            })?;
            if !cfg.storage.is_shared() || storage.url.is_none() {
                bail!(
                    "--keys-from makes another instance on one PostgreSQL database: both instances need [storage] backend = \"postgres\" (give --storage postgres://… the same as {})",
                    cfg.file.display()
                );
            }
            Some(cfg)
        }
    };
    let cluster = match (cluster, &from) {
        (Some(c), Some(f)) if c != f.cluster.as_str() => bail!(
            "--cluster {c} differs from the cluster of --keys-from ({}); leave --cluster out",
            f.cluster
        ),
        (_, Some(f)) => f.cluster.as_str().to_owned(),
        (Some(c), None) => c.to_owned(),
        (None, None) => bail!("--cluster NAME is required (unless --keys-from DIR names an instance whose cluster to join)"),
    };
    let cluster_name = postern_core::names::parse_cluster_name(&cluster)?;
    let config_path = data_dir.join("posternd.toml");
    if keys::ca_dir(data_dir).exists() || config_path.exists() {
        bail!(
            "refusing to overwrite the existing CA in {} (remove the directory first if you really mean to start over)",
            data_dir.display()
        );
    }
    let storage_section = storage.render()?;
    // The database first: a first instance refuses a database that belongs to a CA already,
    // before any file is written.
    if let (None, Some(url)) = (&from, &storage.url) {
        let st = crate::config::Storage::Postgres(crate::config::PgSettings {
            url: url.clone(),
            password_file: storage.password_file.clone(),
            ca_file: storage.ca_file.clone(),
        });
        if let Some((pin, c)) = db::with_tx(&st, store::meta::ca)? {
            bail!(
                "the database already belongs to the CA of cluster {c:?} (pin {pin}): to add an instance of it, run init with --keys-from DIR of one of its instances"
            );
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let ip = listen.ip();
    let host = if ip.is_unspecified() {
        host_name().unwrap_or_else(|| "localhost".into())
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let api_url = format!("https://{host}:{}", listen.port());
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    if let Some(h) = host_name() {
        names.push(h);
    }
    names.extend(extra_names.iter().cloned());
    names.sort();
    names.dedup();
    match &from {
        None => keys::create(data_dir, cluster_name.as_str(), &names, now())?,
        Some(f) => keys::copy_from(&f.data_dir, data_dir, &names, now())?,
    }
    let mut config_text = Config::render(cluster_name.as_str(), &listen, &api_url);
    // What every instance must say alike comes from the instance the keys come from.
    if let Some(f) = from.as_ref().filter(|f| !f.gateway_public_addrs.is_empty()) {
        config_text.push_str(&format!(
            "\n[gateway]\npublic_addr = {}\n",
            config::render_public_addrs(&f.gateway_public_addrs)
        ));
    }
    config_text.push_str(&storage_section);
    keys::write_new(&config_path, config_text.as_bytes(), 0o644)?;
    let policy_path = data_dir.join("policy.toml");
    let policy = match &from {
        Some(f) => std::fs::read_to_string(&f.policy)
            .with_context(|| format!("cannot read {}", f.policy.display()))?,
        None => policy_text
            .unwrap_or(postern_core::policy::SAMPLE_POLICY)
            .to_owned(),
    };
    Policy::parse(&policy, &policy_path.display().to_string())?;
    keys::write_new(&policy_path, policy.as_bytes(), 0o644)?;
    let cfg = Config::load(&config_path)?;
    let store = keys::load(data_dir)?;
    open_audit_key(&cfg)?;
    db::with_tx(&cfg.storage, |tx| {
        store::meta::claim_ca(tx, &store.pin(), cluster_name.as_str())?;
        let (kind, detail) = match &from {
            None => ("ca.created", json!({ "cluster": cluster_name.as_str() })),
            Some(_) => ("ca.instance_added", json!({ "api_url": api_url })),
        };
        audit::append(tx, now(), kind, "posternd init", detail)
    })?;
    Ok(InitOutput {
        cluster: cluster_name.to_string(),
        api_url,
        ca_pin: store.pin(),
        config: config_path,
        policy: policy_path,
    })
}

/// Loads the audit checkpoint key (creating it, and signing the events already logged, on the
/// first start of an installation older than checkpoints) and installs it for `audit::append`.
pub(crate) fn open_audit_key(cfg: &Config) -> Result<audit::AuditPublicKey> {
    let key = keys::audit_key(&cfg.data_dir, cfg.cluster.as_str(), |key| {
        let n = db::with_tx(&cfg.storage, |tx| audit::sign_existing(tx, key))?;
        tracing::info!(
            "created the audit checkpoint key; signed the {n} events already in the audit log"
        );
        Ok(())
    })?;
    let public = key.public();
    audit::install_key(key);
    Ok(public)
}

/// Validates config and policy.
pub fn check_config(path: &Path) -> Result<(Config, Policy)> {
    let cfg = Config::load(path)?;
    let policy = load_policy(&cfg.policy)?;
    keys::load(&cfg.data_dir)?;
    Ok((cfg, policy))
}

fn load_policy(path: &Path) -> Result<Policy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy {}", path.display()))?;
    Ok(Policy::parse(&text, &path.display().to_string())?)
}

/// The admin socket named by a config file.
pub fn socket_for(config: &Path) -> Result<PathBuf> {
    Ok(Config::load(config)?.admin_socket())
}

/// Runs the daemon. `ready` is told once the API listens.
pub async fn serve(config: &Path, banner: Option<String>) -> Result<()> {
    let cfg = Config::load(config)?;
    let keys = Arc::new(keys::load(&cfg.data_dir)?);
    let audit_key = open_audit_key(&cfg)?;
    let db = db::Db::open_storage(&cfg.storage).await?;
    {
        let (pin, cluster) = (keys.pin(), cfg.cluster.to_string());
        db.run(move |tx| store::meta::claim_ca(tx, &pin, &cluster))
            .await?;
    }
    // One instance: the file. Several: the database's newest version (the file seeds
    // version 1 on the first start), never the file again.
    let (policy, policy_source, policy_version) = if cfg.storage.is_shared() {
        let (v, p) = crate::policy_db::load_or_seed(&db, &cfg.policy).await?;
        tracing::info!(version = v, "policy in force from the database");
        (p, crate::policy_db::PolicySource::Database, Some(v))
    } else {
        (
            load_policy(&cfg.policy)?,
            crate::policy_db::PolicySource::File(cfg.policy.clone()),
            None,
        )
    };
    tokio::spawn(audit::run_emitter(db.clone(), audit_key));
    let svc = Arc::new(Service {
        cluster: cfg.cluster.clone(),
        gateways: cfg.gateway_public_addrs.clone(),
        keys: Arc::clone(&keys),
        db,
        policy: RwLock::new(Arc::new(policy)),
        policy_source,
        ghosts: auth::GhostLockout::default(),
        recordings_dir: cfg.recordings_dir.clone(),
        upload_slots: Arc::new(tokio::sync::Semaphore::new(crate::recordings::UPLOAD_SLOTS)),
        recordings: crate::recordings::Store::new(
            cfg.recordings_max_bytes,
            cfg.recordings_chunk_bytes,
        ),
        limits: Arc::new(crate::limits::Limits::new(&cfg.limits)),
    });
    crate::recordings::prepare_dir(&cfg.recordings_dir)?;
    let tls_cfg = tls::server_config(&keys)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some(crate::health::bind_metrics(addr).await?),
        None => None,
    };
    let admin_listener = admin::bind(&cfg.admin_socket())?;
    let local = listener.local_addr()?;
    tokio::spawn(admin::serve(admin_listener, Arc::clone(&svc)));
    match policy_version {
        Some(v) => tokio::spawn(crate::policy_db::watch(Arc::clone(&svc), v)),
        None => tokio::spawn(watch_policy(Arc::clone(&svc), cfg.policy.clone())),
    };
    // Abandoned partial uploads: swept now and every hour.
    tokio::spawn(crate::recordings::sweeper(Arc::clone(&svc)));
    let app = api::router(Arc::clone(&svc));
    let server = tokio::spawn(tls::serve(listener, tls_cfg, app, cfg.limits.clone()));
    let failures = tokio::spawn(crate::limits::flush_failures(Arc::clone(&svc)));
    if let Some(l) = metrics_listener {
        tracing::info!("metrics on http://{}/metrics", l.local_addr()?);
        tokio::spawn(async move {
            if let Err(e) = crate::health::serve_metrics(l).await {
                tracing::error!(error = %format!("{e:#}"), "metrics listener stopped");
            }
        });
    }
    tracing::info!(
        "posternd ready: cluster {} listening on https://{local} (api_url {}), CA pin {}",
        cfg.cluster,
        cfg.api_url,
        keys.pin()
    );
    if let Some(b) = banner {
        println!("{b}");
    }
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = server => { r.map_err(|e| anyhow!(e))??; }
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = std::fs::remove_file(cfg.admin_socket());
    // The failures of the minute in progress are written before the daemon goes.
    failures.abort();
    match crate::limits::write_failures(&svc, true).await {
        Ok(n) if n > 0 => tracing::info!(summaries = n, "failed authentications written"),
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot write the summaries of failed authentications")
        }
    }
    tracing::info!("posternd stopping");
    Ok(())
}

/// Reloads the policy on SIGHUP and when the file's content changes (checked every second).
/// A bad policy is logged with file:line:column and audited; the last good one stays.
async fn watch_policy(svc: Arc<Service>, path: PathBuf) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; policy reload by signal is off");
        return;
    };
    let mut last_seen = std::fs::read(&path).ok();
    loop {
        let forced = tokio::select! {
            _ = hup.recv() => true,
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
        let Ok(bytes) = std::fs::read(&path) else {
            if forced {
                tracing::error!(file = %path.display(), "cannot read the policy; keeping the last good one");
            }
            continue;
        };
        if !forced && last_seen.as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        last_seen = Some(bytes.clone());
        let text = String::from_utf8_lossy(&bytes);
        let now = now();
        match Policy::parse(&text, &path.display().to_string()) {
            Ok(p) => {
                svc.set_policy(p);
                tracing::info!(file = %path.display(), "policy reloaded");
                let _ = svc
                    .db
                    .run(move |c| audit::append(c, now, "policy.reloaded", "posternd", json!({})))
                    .await;
            }
            Err(e) => {
                tracing::error!("policy rejected, keeping the last good one: {e}");
                let msg = e.to_string();
                let _ = svc
                    .db
                    .run(move |c| {
                        audit::append(
                            c,
                            now,
                            "policy.rejected",
                            "posternd",
                            json!({ "error": msg }),
                        )
                    })
                    .await;
            }
        }
    }
}

fn invoking_login() -> Result<postern_core::Login> {
    let name = std::env::var("SUDO_USER")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("USER").ok().filter(|s| !s.is_empty()))
        .or_else(|| std::env::var("LOGNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "root".into());
    name.parse()
        .map_err(|e| anyhow!("cannot use your OS user as a login: {e}"))
}

/// `posternd quickstart`: init when needed, make sure user `admin` can enrol, serve.
pub async fn quickstart(data_dir: &Path, listen: SocketAddr) -> Result<()> {
    let config = data_dir.join("posternd.toml");
    if !config.exists() {
        let login = invoking_login()?;
        let policy = format!(
            "{}\n# Written by `posternd quickstart`: user admin may log in as {login} everywhere.\n[roles.quickstart]\nlogins = [\"{login}\"]\nnodes = {{ \"*\" = \"*\" }}\npermit = [\"pty\", \"port-forwarding\"]\n\n[users.admin]\nroles = [\"quickstart\"]\n",
            postern_core::policy::SAMPLE_POLICY
        );
        let out = init(
            data_dir,
            Some("postern.test"),
            listen,
            &[],
            Some(&policy),
            &InitStorage::default(),
            None,
        )?;
        println!(
            "Initialised a new CA in {} (cluster {}).",
            data_dir.display(),
            out.cluster
        );
    }
    let cfg = Config::load(&config)?;
    let keys = keys::load(&cfg.data_dir)?;
    open_audit_key(&cfg)?;
    let pin = keys.pin();
    // Give admin a fresh invite unless it has already enrolled.
    let next = db::with_tx(&cfg.storage, |tx| {
        let enrolled = store::users::enrolled(tx, "admin")?;
        let now = now();
        if enrolled == Some(true) {
            return Ok("User admin is enrolled already. Log in with:".to_owned());
        }
        let (token, hash) = auth::new_invite()?;
        let expires = now + auth::INVITE_SECS;
        if enrolled.is_none() {
            store::users::add_invited(tx, "admin", &hash, expires, now)?;
            audit::append(
                tx,
                now,
                "user.added",
                "posternd quickstart",
                json!({ "user": "admin" }),
            )?;
        } else {
            store::users::set_invite(tx, "admin", &hash, expires)?;
        }
        Ok(format!(
            "Enrol user admin (sets a password, shows a TOTP secret for your authenticator app) with the invite\n  {token}\npasted when asked (on the command line every local user could read it):\n  postern enroll --ca {url} --ca-pin {pin} --user admin --invite-stdin\nthen log in:",
            url = cfg.api_url
        ))
    })?;
    let banner = format!(
        "\nposternd quickstart is serving {url} (CA pin {pin}).\n\n{next}\n  postern login --ca {url} --ca-pin {pin} --user admin\n\n(From the source tree, `postern` is `cargo run --release --bin postern --`.)\nThe certificate lands in ~/.ssh/postern/{cluster}/. Stop with Ctrl-C.",
        url = cfg.api_url,
        cluster = cfg.cluster
    );
    serve(&config, Some(banner)).await
}
