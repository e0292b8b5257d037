//! Health for load balancers (`/healthz`, `/readyz` on the API) and the `[metrics]` listener.
//!
//! Both probes are answered before any body is read and take no token of the per-source
//! buckets (those are login's, enroll's and join's), so a load balancer probing often is never
//! told 429; they are as cheap as `/v1/ping`. They do go through the connection pools like any
//! anonymous client: an instance whose pools are full cannot take more clients, and a 503
//! then is the truth. `/readyz` runs one no-op transaction on the database, and at most one at
//! a time until the database answers it: probes that arrive while one waits are told so
//! within the same deadline instead of queueing more work for a database that does not
//! answer.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::Semaphore;

use crate::db::Db;
use crate::service::Service;

/// How long `/readyz` waits for the database.
pub const READY_DEADLINE: Duration = Duration::from_secs(1);

impl Db {
    /// Runs an empty transaction through the database's writer and waits for its commit: it
    /// answers only once every transaction queued before it has committed, so a database
    /// that takes no writes (locked by another process, a stalled disk) does not answer it.
    pub async fn ping(&self) -> Result<()> {
        self.run(|_tx| Ok(())).await
    }
}

/// The one readiness check in flight: its permit is held until the database answers it, so
/// that a database that does not answer is asked once, however often it is probed.
static PINGS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(1)));

/// Why the database is not ready, or `None` when it answered within [`READY_DEADLINE`].
pub async fn not_ready(db: &Db) -> Option<String> {
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    let secs = READY_DEADLINE.as_secs();
    let Ok(Ok(slot)) = tokio::time::timeout_at(deadline, Arc::clone(&PINGS).acquire_owned()).await
    else {
        return Some(format!(
            "the database did not answer within {secs} s (an earlier check is still waiting)"
        ));
    };
    let db = db.clone();
    let ping = tokio::spawn(async move {
        let answer = db.ping().await;
        drop(slot);
        answer
    });
    match tokio::time::timeout_at(deadline, ping).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(format!(
            "the database failed: {}",
            one_line(&format!("{e:#}"))
        )),
        Ok(Err(e)) => Some(format!("the readiness check failed: {e}")),
        Err(_) => Some(format!("the database did not answer within {secs} s")),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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

/// `GET /healthz`: the process serves requests.
pub async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".into())
}

/// `GET /readyz`: 200 when the database answered within a second, else 503 with why.
pub async fn readyz(State(svc): State<Arc<Service>>) -> Response {
    match not_ready(&svc.db).await {
        None => text(StatusCode::OK, "ok\n".into()),
        Some(why) => {
            crate::metrics::get().database_error("readiness");
            tracing::warn!(reason = %why, "not ready");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            )
        }
    }
}

/// Binds `[metrics] listen`; done before the daemon says it is ready, so that a taken port
/// is an error at start.
pub async fn bind_metrics(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ([metrics] listen)"))
}

/// Serves `GET /metrics` (Prometheus text format) in plain HTTP on `listener`.
pub async fn serve_metrics(listener: tokio::net::TcpListener) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async {
            text(
                StatusCode::NOT_FOUND,
                "only /metrics is served here\n".into(),
            )
        });
    axum::serve(listener, app)
        .await
        .context("the metrics listener failed")
}

async fn metrics() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::get().render(),
    )
        .into_response()
}
