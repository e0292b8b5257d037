//! The HTTPS listener: rustls with optional client certificates (verified against the service
//! CA), one hyper connection per TLS stream, with handshake, header, body and handler
//! deadlines, and connection pools per class (anonymous clients cannot take the capacity kept
//! for mTLS peers), so that slow or hostile clients cost bounded resources.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::api::Remote;
use crate::authed::Peer;
use crate::config::Limits;
use crate::keys::KeyStore;
use crate::limits::{PerSource, Source};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Between requests of a connection too: an idle connection is closed after this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A refused connection's request must arrive within this, then it is answered 503.
const REFUSAL_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds the server TLS configuration.
pub fn server_config(keys: &KeyStore) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(keys.service.cert_der.clone()))
        .context("service CA certificate")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| anyhow!("client verifier: {e}"))?;
    let mut chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut keys.api_cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    chain.push(CertificateDer::from(keys.service.cert_der.clone()));
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut keys.api_key_pem.as_bytes())?
            .ok_or_else(|| anyhow!("no private key in api.key"))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Why a connection was refused, counted and logged once a minute per class.
struct RefusalLog {
    class: &'static str,
    window: Mutex<(Instant, u64)>,
}

impl RefusalLog {
    fn new(class: &'static str) -> RefusalLog {
        RefusalLog {
            class,
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Counts a refusal; logs the first of each minute, and the count of the minute before.
    fn refused(&self, addr: SocketAddr, why: &str) {
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        if w.0.elapsed() >= Duration::from_secs(60) {
            if w.1 > 0 {
                tracing::warn!(
                    class = self.class,
                    refused = w.1,
                    "refused {} {} connections in the last minute: {why}",
                    w.1,
                    self.class
                );
            }
            *w = (Instant::now(), 0);
        }
        if w.1 == 0 {
            tracing::warn!(%addr, class = self.class, "refusing {} connection: {why}; further refusals are counted and logged once a minute", self.class);
        }
        w.1 += 1;
    }
}

/// The connection pools: handshakes in progress, established connections, and among those
/// the anonymous ones (no client certificate). Anonymous traffic can never take more than
/// `max_anonymous_connections`, so `max_connections` minus that is always kept for mTLS
/// peers (renewals, servers, gateways). Handshakes come before anyone knows a connection's
/// class, so that pool is shared; one source address (IPv6: one /64) may hold only
/// `per_source_max_handshakes` of it, and `per_source_max_anonymous_connections` of the
/// anonymous pool, so that one client cannot take either from everybody else.
struct Pools {
    handshakes: Arc<Semaphore>,
    all: Arc<Semaphore>,
    anonymous: Arc<Semaphore>,
    source_handshakes: Arc<PerSource>,
    source_anonymous: Arc<PerSource>,
    limits: Limits,
    refused_handshakes: RefusalLog,
    refused_anonymous: RefusalLog,
    refused_peers: RefusalLog,
}

/// Accepts connections until the task is dropped. The accept loop never waits for a slot:
/// a connection that finds its pool full is refused at once (with a 503 when it got as far
/// as TLS), so that a full pool of one class never stops the others from being accepted.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    limits: Limits,
) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let pools = Arc::new(Pools {
        handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
        all: Arc::new(Semaphore::new(limits.max_connections)),
        anonymous: Arc::new(Semaphore::new(limits.max_anonymous_connections)),
        source_handshakes: PerSource::new(limits.per_source_max_handshakes),
        source_anonymous: PerSource::new(limits.per_source_max_anonymous_connections),
        limits,
        refused_handshakes: RefusalLog::new("new"),
        refused_anonymous: RefusalLog::new("anonymous"),
        refused_peers: RefusalLog::new("mTLS"),
    });
    loop {
        let (sock, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let source = Source::of(addr.ip());
        let Some(source_handshake) = pools.source_handshakes.try_take(source) else {
            pools.refused_handshakes.refused(
                addr,
                &format!(
                    "{source} has {} handshakes in progress (per_source_max_handshakes)",
                    pools.limits.per_source_max_handshakes
                ),
            );
            drop(sock);
            continue;
        };
        let Ok(handshake) = Arc::clone(&pools.handshakes).try_acquire_owned() else {
            pools.refused_handshakes.refused(
                addr,
                &format!(
                    "all {} handshake slots are taken (max_handshakes)",
                    pools.limits.max_handshakes
                ),
            );
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let pools = Arc::clone(&pools);
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "TLS handshake timed out");
                    return;
                }
            };
            let peer = Peer(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| Arc::new(c.to_vec())),
            );
            // The class is known now: a verified client certificate, or none.
            let slots = if peer.0.is_some() {
                match Arc::clone(&pools.all).try_acquire_owned() {
                    Ok(p) => Ok((p, None)),
                    Err(_) => {
                        let why = format!(
                            "all {} connections are taken (max_connections)",
                            pools.limits.max_connections
                        );
                        pools.refused_peers.refused(addr, &why);
                        Err(why)
                    }
                }
            } else if let Some(mine) = pools.source_anonymous.try_take(source) {
                match Arc::clone(&pools.anonymous).try_acquire_owned() {
                    Ok(anon) => match Arc::clone(&pools.all).try_acquire_owned() {
                        Ok(p) => Ok((p, Some((anon, mine)))),
                        Err(_) => {
                            let why = format!(
                                "all {} connections are taken (max_connections)",
                                pools.limits.max_connections
                            );
                            pools.refused_anonymous.refused(addr, &why);
                            Err(why)
                        }
                    },
                    Err(_) => {
                        let why = format!(
                            "all {} connections without a client certificate are taken (max_anonymous_connections)",
                            pools.limits.max_anonymous_connections
                        );
                        pools.refused_anonymous.refused(addr, &why);
                        Err(why)
                    }
                }
            } else {
                let why = format!(
                    "{source} has {} connections without a client certificate (per_source_max_anonymous_connections)",
                    pools.limits.per_source_max_anonymous_connections
                );
                pools.refused_anonymous.refused(addr, &why);
                Err(why)
            };
            let _slots = match slots {
                Ok(s) => {
                    drop(handshake);
                    drop(source_handshake);
                    s
                }
                Err(why) => {
                    // Answered under the handshake slot, with a short deadline for the
                    // request's headers: the client hears why instead of a reset.
                    refuse(tls, addr, why).await;
                    drop(handshake);
                    drop(source_handshake);
                    return;
                }
            };
            let limits = pools.limits.clone();
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let deadlines =
                        crate::api::deadlines(req.uri().path(), peer.0.is_some(), &limits);
                    req.extensions_mut().insert(peer.clone());
                    req.extensions_mut().insert(Remote(addr));
                    req.extensions_mut().insert(deadlines);
                    let app = app.clone();
                    async move {
                        match tokio::time::timeout(
                            deadlines.handler,
                            app.oneshot(req.map(axum::body::Body::new)),
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(_) => Ok(crate::api::handler_timed_out(deadlines.handler)),
                        }
                    }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Answers the connection's first request with 503 and `Retry-After`, then closes it.
async fn refuse(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    addr: SocketAddr,
    why: String,
) {
    let svc = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
        let r = crate::api::refused_connection(&why);
        async move { Ok::<_, std::convert::Infallible>(r) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(tls), svc);
    if let Err(e) = conn.await {
        tracing::debug!(%addr, error = %e, "refused connection ended with an error");
    }
}
