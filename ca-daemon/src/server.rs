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

use crate::config::Config;
use crate::service::{now, Service};
use crate::store::{self, Tx};
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

/// Creates a data directory with config, policy, keys and database.
pub fn init(
    data_dir: &Path,
    cluster: &str,
    listen: SocketAddr,
    extra_names: &[String],
    policy_text: Option<&str>,
) -> Result<InitOutput> {
    let cluster_name = postern_core::names::parse_cluster_name(cluster)?;
    let config_path = data_dir.join("posternd.toml");
    if keys::ca_dir(data_dir).exists() || config_path.exists() {
        bail!(
            "refusing to overwrite the existing CA in {} (remove the directory first if you really mean to start over)",
            data_dir.display()
        );
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
    keys::create(data_dir, cluster_name.as_str(), &names, now())?;
    keys::write_new(
        &config_path,
        Config::render(cluster_name.as_str(), &listen, &api_url).as_bytes(),
        0o644,
    )?;
    let policy_path = data_dir.join("policy.toml");
    let policy = policy_text.unwrap_or(postern_core::policy::SAMPLE_POLICY);
    Policy::parse(policy, &policy_path.display().to_string())?;
    keys::write_new(&policy_path, policy.as_bytes(), 0o644)?;
    open_audit_key(data_dir, cluster_name.as_str())?;
    let conn = db::open_connection(&data_dir.join("posternd.db"))?;
    db::init_schema(&conn)?;
    audit::append(
        &Tx::sqlite(&conn),
        now(),
        "ca.created",
        "posternd init",
        json!({ "cluster": cluster_name.as_str() }),
    )?;
    let store = keys::load(data_dir)?;
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
fn open_audit_key(data_dir: &Path, cluster: &str) -> Result<audit::AuditPublicKey> {
    let key = keys::audit_key(data_dir, cluster, |key| {
        let conn = db::open_connection(&data_dir.join("posternd.db"))?;
        db::init_schema(&conn)?;
        let tx = conn.unchecked_transaction()?;
        let n = audit::sign_existing(&Tx::sqlite(&tx), key)?;
        tx.commit()?;
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
    let policy = load_policy(&cfg.policy)?;
    let audit_key = open_audit_key(&cfg.data_dir, cfg.cluster.as_str())?;
    let db = db::Db::open(&cfg.data_dir.join("posternd.db"))?;
    tokio::spawn(audit::run_emitter(db.clone(), audit_key));
    let svc = Arc::new(Service {
        cluster: cfg.cluster.clone(),
        gateway: cfg.gateway_public_addr.clone(),
        keys: Arc::clone(&keys),
        db,
        policy: RwLock::new(Arc::new(policy)),
        ghosts: auth::GhostLockout::default(),
        data_dir: cfg.data_dir.clone(),
        upload_slots: Arc::new(tokio::sync::Semaphore::new(crate::recordings::UPLOAD_SLOTS)),
        recordings: crate::recordings::Store::new(
            cfg.recordings_max_bytes,
            cfg.recordings_chunk_bytes,
        ),
        limits: Arc::new(crate::limits::Limits::new(&cfg.limits)),
    });
    crate::recordings::prepare_dir(&cfg.data_dir)?;
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
    tokio::spawn(watch_policy(Arc::clone(&svc), cfg.policy.clone()));
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
                if let Ok(mut slot) = svc.policy.write() {
                    *slot = Arc::new(p);
                }
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
        let out = init(data_dir, "postern.test", listen, &[], Some(&policy))?;
        println!(
            "Initialised a new CA in {} (cluster {}).",
            data_dir.display(),
            out.cluster
        );
    }
    let cfg = Config::load(&config)?;
    let keys = keys::load(&cfg.data_dir)?;
    open_audit_key(&cfg.data_dir, cfg.cluster.as_str())?;
    let pin = keys.pin();
    // Give admin a fresh invite unless it has already enrolled.
    let conn = db::open_connection(&cfg.data_dir.join("posternd.db"))?;
    db::init_schema(&conn)?;
    let tx = Tx::sqlite(&conn);
    let enrolled = store::users::enrolled(&tx, "admin")?;
    let now = now();
    let next = if enrolled == Some(true) {
        "User admin is enrolled already. Log in with:".to_owned()
    } else {
        let (token, hash) = auth::new_invite()?;
        let expires = now + auth::INVITE_SECS;
        if enrolled.is_none() {
            store::users::add_invited(&tx, "admin", &hash, expires, now)?;
            audit::append(
                &tx,
                now,
                "user.added",
                "posternd quickstart",
                json!({ "user": "admin" }),
            )?;
        } else {
            store::users::set_invite(&tx, "admin", &hash, expires)?;
        }
        format!(
            "Enrol user admin (sets a password, shows a TOTP secret for your authenticator app) with the invite\n  {token}\npasted when asked (on the command line every local user could read it):\n  postern enroll --ca {url} --ca-pin {pin} --user admin --invite-stdin\nthen log in:",
            url = cfg.api_url
        )
    };
    drop(conn);
    let banner = format!(
        "\nposternd quickstart is serving {url} (CA pin {pin}).\n\n{next}\n  postern login --ca {url} --ca-pin {pin} --user admin\n\n(From the source tree, `postern` is `cargo run --release --bin postern --`.)\nThe certificate lands in ~/.ssh/postern/{cluster}/. Stop with Ctrl-C.",
        url = cfg.api_url,
        cluster = cfg.cluster
    );
    serve(&config, Some(banner)).await
}
