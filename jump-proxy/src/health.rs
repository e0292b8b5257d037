//! The gateway's plain-HTTP listeners: `[health]` (`/healthz`, `/readyz`, for load
//! balancers) and `[metrics]` (Prometheus `/metrics`, and the two probes), each off unless
//! gate.toml sets its `listen`; one listener serves both when they name the same address.
//!
//! Ready means the gateway can start a session now: its SSH listener is up and it holds an
//! inventory the CA gave it within [`FRESH`] (the inventory is asked for every second; without a
//! current one the gateway knows neither the servers nor the locks, and the CA that would
//! authorize a session is not answering it). Requests are answered from memory (the
//! metrics also list two directories), no body is read, and each connection is hyper's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use postern_gate::config::GateConfig;

/// How old the last inventory may be for the gateway to be ready: five polls.
pub const FRESH: Duration = Duration::from_secs(10);

/// What readiness is judged by.
#[derive(Default)]
pub struct Readiness {
    ssh_listening: AtomicBool,
    inventory_at: Mutex<Option<Instant>>,
}

impl Readiness {
    /// The SSH listener is bound.
    pub fn ssh_listening(&self) {
        self.ssh_listening.store(true, Ordering::Relaxed);
    }

    /// A fresh inventory arrived from the CA.
    pub fn inventory_fetched(&self) {
        *self
            .inventory_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Why the gateway is not ready, or `None`.
    fn not_ready(&self) -> Option<String> {
        if !self.ssh_listening.load(Ordering::Relaxed) {
            return Some("the SSH listener is not up yet".into());
        }
        let at = *self
            .inventory_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match at {
            None => Some("no inventory from the CA yet".into()),
            Some(t) if t.elapsed() > FRESH => Some(format!(
                "the last inventory from the CA is {} s old (the CA has not answered since)",
                t.elapsed().as_secs()
            )),
            Some(_) => None,
        }
    }
}

#[derive(Clone)]
struct Probe {
    ready: Arc<Readiness>,
    state: PathBuf,
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".into())
}

async fn readyz(State(p): State<Probe>) -> Response {
    match p.ready.not_ready() {
        None => text(StatusCode::OK, "ok\n".into()),
        Some(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(p): State<Probe>) -> Response {
    let body = tokio::task::spawn_blocking(move || crate::metrics::get().render(&p.state))
        .await
        .unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

fn router(probe: Probe, with_metrics: bool) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if with_metrics {
        r = r.route("/metrics", get(metrics));
    }
    r.fallback(|| async { text(StatusCode::NOT_FOUND, "no such endpoint\n".into()) })
        .with_state(probe)
}

/// Binds the listeners gate.toml asks for (an error when an address is taken, before the
/// gateway says it is ready) and serves them in the background.
pub async fn start(cfg: &GateConfig, ready: Arc<Readiness>, state: PathBuf) -> Result<()> {
    let probe = Probe { ready, state };
    let (health, metrics) = (cfg.health.listen, cfg.metrics.listen);
    let mut listeners: Vec<(SocketAddr, &str, bool)> = Vec::new();
    match (health, metrics) {
        (Some(h), Some(m)) if h == m => listeners.push((m, "metrics", true)),
        _ => {
            if let Some(h) = health {
                listeners.push((h, "health", false));
            }
            if let Some(m) = metrics {
                listeners.push((m, "metrics", true));
            }
        }
    }
    for (addr, table, with_metrics) in listeners {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ([{table}] listen)"))?;
        tracing::info!("{table} on http://{}", l.local_addr()?);
        let app = router(probe.clone(), with_metrics);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(error = %e, "the [{table}] listener stopped");
            }
        });
    }
    Ok(())
}
