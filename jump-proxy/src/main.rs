//! `postern-gate`: the recording ProxyJump gateway. Stock `ssh -J` connects here; the gateway
//! checks policy, terminates the inner SSH connection, logs in to the server with a short-lived
//! node-access certificate, and records the session.

mod audit;
mod ca;
mod health;
mod journal;
mod limits;
mod metrics;
mod observe;
mod public;
mod record;
mod relay;
mod scp;
mod server;
mod sftp;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use postern_api_client::{Api, CaPin, CaUrl, CaUrls, ClientIdentity};
use postern_core::api::{GatewayPublicAddr, JoinRequest, JoinResponse, Secret};
use postern_core::cert::generate_ed25519;
use ssh_key::{Certificate, LineEnding, PrivateKey};
use tokio::sync::Semaphore;

// The command line and gate.toml live in the library (src/lib.rs) so that man/ can render
// and check them.
use postern_gate::cli::{Cli, Cmd};
use postern_gate::config::GateConfig;

/// How often the gateway asks the CA for its inventory (servers, keys, locks, revocations).
const INVENTORY_EVERY: Duration = Duration::from_secs(1);

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    Ok(postern_core::atomic::write_atomic(path, bytes, mode)?)
}

fn join(
    ca: Vec<String>,
    ca_pin: String,
    token: String,
    name: String,
    state: PathBuf,
    address: Option<String>,
    egress: Vec<String>,
) -> Result<()> {
    std::fs::create_dir_all(&state)?;
    let name = postern_core::names::parse_node_name(&name)?;
    let hk_path = state.join("host_key");
    let host_key = match std::fs::read_to_string(&hk_path) {
        Ok(t) => PrivateKey::from_openssh(&t)?,
        Err(_) => {
            let k = generate_ed25519(&format!("postern-gate {name}"))?;
            write(&hk_path, k.to_openssh(LineEnding::LF)?.as_bytes(), 0o600)?;
            k
        }
    };
    let identity = generate_ed25519(&format!("postern-gate identity {name}"))?;
    let url = CaUrls::new(
        ca.iter()
            .map(|u| u.parse::<CaUrl>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?,
    )
    .ok_or_else(|| anyhow::anyhow!("--ca is required"))?;
    let pin: CaPin = ca_pin.parse().map_err(anyhow::Error::msg)?;
    let api = Api::new(&url, pin, None)?;
    let resp: JoinResponse = api.post(
        "/v1/join",
        &JoinRequest {
            token: Secret::new(token),
            name: name.clone(),
            address: address.clone(),
            labels: Default::default(),
            host_public_key: host_key.public_key().to_openssh()?,
            identity_public_key: identity.public_key().to_openssh()?,
            egress_addresses: egress,
        },
    )?;
    anyhow::ensure!(
        resp.kind == postern_core::NodeKind::Gateway,
        "the token is for a {}, not a gateway",
        resp.kind
    );
    write(
        &state.join("host_key-cert.pub"),
        format!("{}\n", resp.host_certificate).as_bytes(),
        0o644,
    )?;
    let identity_pem = postern_api_client::ed25519_pkcs8_pem(&identity)?;
    write(&state.join("identity.key"), identity_pem.as_bytes(), 0o600)?;
    write(
        &state.join("identity.crt"),
        resp.x509_certificate.as_bytes(),
        0o644,
    )?;
    write(&state.join("ca.crt"), resp.x509_ca.as_bytes(), 0o644)?;
    // The address users are told to use has one source, the CA's configuration: ask for it
    // with the identity just issued. A CA too old to know the route answers 404.
    let public_addrs = ClientIdentity::from_pem(
        resp.x509_certificate.as_bytes(),
        identity_pem.as_bytes(),
    )
    .and_then(|id| Api::new(&url, pin, Some(id)))
    .map_err(|e| e.to_string())
    .and_then(
        |api| match api.get::<GatewayPublicAddr>("/v1/gateway/public-addr") {
            Ok(r) => Ok(r.all()),
            Err(e) if e.status() == Some(404) => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        },
    )
    .unwrap_or_else(|e| {
        eprintln!("postern-gate: warning: cannot ask the CA for the gateway's public address: {e}");
        Vec::new()
    });
    let host_cert = Certificate::from_openssh(resp.host_certificate.trim())
        .context("the CA sent a host certificate that does not parse")?;
    warn_about_address(
        name.as_str(),
        host_cert.valid_principals(),
        address.as_deref(),
        &public_addrs,
    );
    let users_reach = match public_addrs.as_slice() {
        [] => String::new(),
        [one] => format!(" (users reach it at {one})"),
        several => format!(
            " (users reach the cluster's gateways at {})",
            several.join(", ")
        ),
    };
    let joined = ca::Joined {
        ca: url,
        ca_pin: pin.to_string(),
        name: name.clone(),
        cluster: resp.cluster.clone(),
        public_addr: public_addrs.first().cloned(),
        public_addrs: if public_addrs.len() > 1 {
            public_addrs
        } else {
            Vec::new()
        },
    };
    write(
        &state.join("joined.json"),
        serde_json::to_string_pretty(&joined)?.as_bytes(),
        0o644,
    )?;
    println!(
        "Joined cluster {} as gateway {name}{users_reach}. Start it with: postern-gate serve --state-dir {}",
        resp.cluster,
        state.display()
    );
    Ok(())
}

/// What `join` tells the admin about the address users will use: the CA's `[gateway]
/// public_addr` wins over `--address` (the certificate names both), a certificate that does not
/// name it (from a CA of an earlier version) is the error `serve` will refuse to start with, and
/// without one `postern login` sends nobody to this gateway.
fn warn_about_address(
    name: &str,
    principals: &[String],
    address: Option<&str>,
    public_addrs: &[String],
) {
    match public_addrs {
        [] => eprintln!(
            "postern-gate: warning: the CA has no [gateway] public_addr, so `postern login` \
             writes no ProxyJump and sends nobody to this gateway: set it in posternd.toml to \
             HOST:PORT with a HOST its host certificate names ({}) and restart posternd",
            principals.join(", ")
        ),
        several @ [_, _, ..] => {
            if let Some(why) = public::mismatch(principals, several) {
                eprintln!(
                    "postern-gate: warning: {why}; `serve` will refuse to start: {}",
                    public::fix(name)
                );
            } else if address.is_some_and(|a| !several.iter().any(|p| p == a)) {
                eprintln!(
                    "postern-gate: warning: --address {} is none of the addresses users are \
                     told to use, {} (posternd.toml's [gateway] public_addr, which `postern \
                     login` writes); the host certificate names them all",
                    address.unwrap_or_default(),
                    several.join(", ")
                );
            }
        }
        [p] => {
            if let Some(why) = public::mismatch(principals, public_addrs) {
                eprintln!(
                    "postern-gate: warning: {why}; `serve` will refuse to start: {}",
                    public::fix(name)
                );
            } else if let Some(a) = address.filter(|a| *a != p) {
                eprintln!(
                    "postern-gate: warning: --address {a} is not the address users are told to \
                     use, {p} (posternd.toml's [gateway] public_addr, which `postern login` \
                     writes as ProxyJump); the host certificate names both, and users go to {p}"
                );
            }
        }
    }
}

async fn serve(state: PathBuf, config: Option<PathBuf>, listen: Option<String>) -> Result<()> {
    let cfg: GateConfig = match &config {
        Some(p) => toml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        )
        .with_context(|| format!("{}", p.display()))?,
        None => GateConfig::default(),
    };
    let named = config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the defaults".into());
    let limits = limits::Limits::new(cfg.limits().map_err(|e| anyhow::anyhow!("{named}: {e}"))?);
    let listen = listen
        .or(cfg.listen.clone())
        .unwrap_or_else(|| "0.0.0.0:3023".into());
    let ca = ca::CaClient::load(state.clone())?;
    // The probes listen from now on, so that a load balancer hears "not ready" and why
    // while the gateway starts.
    let ready = Arc::new(health::Readiness::default());
    health::start(&cfg, Arc::clone(&ready), state.clone()).await?;
    let host_key = PrivateKey::from_openssh(&std::fs::read_to_string(state.join("host_key"))?)?;
    let cert_path = state.join("host_key-cert.pub");
    let host_cert = Certificate::from_openssh(std::fs::read_to_string(&cert_path)?.trim())?;
    // Refuse to start rather than serve a certificate that every user's ssh refuses at the
    // address `postern login` sent them to.
    match public::learn(&ca).await {
        (addrs, source) if !addrs.is_empty() => {
            let said = match source {
                public::Source::Ca => "as the CA says now",
                public::Source::Join => "as the CA said at join; it cannot be asked now",
            };
            if let Some(why) = public::mismatch(host_cert.valid_principals(), &addrs) {
                anyhow::bail!(
                    "refusing to start: {why} ({said}; certificate {}). To fix it, {}",
                    cert_path.display(),
                    public::fix(ca.joined().name.as_str())
                );
            }
            let unnamed = public::unnamed(host_cert.valid_principals(), &addrs);
            if !unnamed.is_empty() {
                tracing::warn!(
                    unnamed = %unnamed.join(", "),
                    "the host certificate does not name every address users are told to use ({said}): users who reach this gateway at one of these fail \"Host key verification failed\"; to fix it, {}",
                    public::fix(ca.joined().name.as_str())
                );
            }
        }
        _ => tracing::warn!(
            "the CA has no [gateway] public_addr: `postern login` writes no ProxyJump, so users' ssh does not come through this gateway"
        ),
    }
    let spool = state.join("recordings");
    std::fs::create_dir_all(&spool)?;
    let recovered = record::recover(&spool)?;
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "completed recordings of sessions interrupted by a crash"
        );
    }
    let outer = server::server_config(vec![host_key], vec![host_cert]);
    let disconnect_expired_cert = cfg.sessions.disconnect_expired_cert();
    if !disconnect_expired_cert {
        tracing::warn!("[sessions] disconnect_expired_cert = false: live sessions outlive the user certificate they were authenticated with");
    }
    // Audit events are durable in the state directory before they go to the CA; what an
    // earlier run did not deliver is sent first.
    let audit = audit::Audit::start(
        ca.clone(),
        &state.join("events"),
        cfg.audit.spool_max_bytes()?,
    )?;
    let gw = Arc::new(server::Gateway::new(
        ca.clone(),
        outer,
        spool.clone(),
        audit,
        disconnect_expired_cert,
        Arc::clone(&limits),
    )?);
    match gw.refresh().await {
        Ok(()) => ready.inventory_fetched(),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot fetch the inventory yet; retrying")
        }
    }
    {
        let gw = Arc::clone(&gw);
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            loop {
                // A lock taken at any CA instance cuts live sessions here within about a
                // second (issue 12): the inventory carries the locks.
                tokio::time::sleep(INVENTORY_EVERY).await;
                match gw.refresh().await {
                    Ok(()) => ready.inventory_fetched(),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "inventory refresh failed")
                    }
                }
            }
        });
    }
    tokio::spawn(record::uploader(spool, ca, Arc::clone(&gw.uploaded)));
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    ready.ssh_listening();
    tracing::info!(
        "postern-gate ready: {} listening on {}",
        gw.name,
        listener.local_addr()?
    );
    let l = &limits.cfg;
    tracing::info!(
        max_connections = l.max_connections,
        login_grace_time = ?l.login_grace_time,
        max_startups = %l.max_startups,
        per_source_max_startups = l.per_source_max_startups,
        max_inner_connections_per_user = l.max_inner_connections_per_user,
        max_channels_per_user = l.max_channels_per_user,
        "limits"
    );
    limits.report();
    let slots = Arc::new(Semaphore::new(l.max_connections));
    loop {
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Refused before a byte is sent, as sshd refuses beyond MaxStartups: the socket is
        // closed, and the refusal counted for the summary in the log.
        let Ok(startup) = limits.admit(peer.ip()) else {
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let gw = Arc::clone(&gw);
        tokio::spawn(async move {
            let _permit = permit;
            server::serve_connection(gw, sock, peer, startup).await;
        });
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let r = match cli.cmd {
        Cmd::Join {
            ca,
            ca_pin,
            token,
            name,
            state_dir,
            address,
            egress_address,
        } => join(ca, ca_pin, token, name, state_dir, address, egress_address),
        Cmd::Serve {
            state_dir,
            config,
            listen,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(serve(state_dir, config, listen))),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern-gate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
