//! The HTTPS API: routes, request parsing, and the one place that maps refusals to statuses.
//!
//! Every error answer is `{"error": <public message>, "request_id": <id>}`; the detail goes
//! to the log under the same id. Nothing here reveals whether a user exists.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use postern_core::api::{
    AuthorizeRequest, EnrollRequest, EnrollResponse, ErrorBody, HostCertRequest, LoginRequest,
    PingResponse, RecordingComplete, RecordingUpload, RenewRequest, Secret, MAX_BODY_BYTES,
};
use postern_core::{NodeName, Username};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::authed::{
    AuthedGateway, AuthedNode, AuthedUser, NodeEvents, NodeSync, Recordings, Renewal,
};
use crate::limits::{FailureKind, Source};
use crate::recordings::MAX_RECORDING_BYTES;

use crate::service::{Refusal, Service};

/// The TCP peer's address.
#[derive(Clone, Copy)]
pub struct Remote(pub std::net::SocketAddr);

/// An error answer.
pub struct ApiError {
    status: StatusCode,
    public: String,
    detail: String,
    /// Seconds for `Retry-After` (429 and 503).
    retry_after: Option<u64>,
}

/// The deadlines of one request, from the moment its headers arrived.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// The whole body must have arrived by then (408 otherwise).
    pub body_by: tokio::time::Instant,
    /// The body deadline's length, for the message.
    pub body: std::time::Duration,
    /// The handler must have answered within this (503 otherwise).
    pub handler: std::time::Duration,
}

/// The routes of the gateways' recording uploads: the one kind of request given the longer
/// `upload_timeout`, and only on an mTLS connection (anonymous clients never get it).
fn is_upload(path: &str) -> bool {
    path == "/v1/gateway/recordings" || path.starts_with("/v1/gateway/recordings/")
}

/// The deadlines of a request to `path` on a connection with or without a client certificate.
pub fn deadlines(path: &str, mtls: bool, limits: &crate::config::Limits) -> Deadlines {
    let (body, handler) = if mtls && is_upload(path) {
        (limits.upload_timeout, limits.upload_timeout)
    } else {
        (limits.body_timeout, limits.handler_timeout)
    };
    Deadlines {
        body_by: tokio::time::Instant::now() + body,
        body,
        handler,
    }
}

/// A 503 with `Retry-After` and our error body; `close` ends the connection after it.
fn unavailable(public: String, detail: &str, retry: u64, close: bool) -> Response {
    let id = request_id();
    tracing::warn!(request_id = %id, status = 503, detail, "request refused");
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(ErrorBody {
            error: public,
            request_id: id,
        }),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(retry));
    if close {
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    r
}

/// The answer when a handler missed its deadline (the work it started may still finish).
pub fn handler_timed_out(after: std::time::Duration) -> Response {
    unavailable(
        format!(
            "the server is overloaded: the request did not finish within {} s; try again",
            after.as_secs()
        ),
        "handler deadline passed",
        1,
        true,
    )
}

/// The answer on a connection refused because its pool is full.
pub fn refused_connection(why: &str) -> Response {
    unavailable(
        format!("the server is busy: {why}; try again"),
        why,
        1,
        true,
    )
}

impl ApiError {
    /// A refusal with its public message and the detail that only the log gets.
    pub fn new(status: StatusCode, public: String, detail: String) -> ApiError {
        ApiError {
            status,
            public,
            detail,
            retry_after: None,
        }
    }
}

fn request_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let (status, public) = match &r {
            Refusal::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            Refusal::BadCredentials => (StatusCode::UNAUTHORIZED, r.to_string()),
            Refusal::Locked => (StatusCode::LOCKED, r.to_string()),
            Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
            Refusal::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
            Refusal::Conflict(m) => (StatusCode::CONFLICT, m.clone()),
            Refusal::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m.clone()),
            Refusal::InsufficientStorage(m) => (StatusCode::INSUFFICIENT_STORAGE, m.clone()),
            Refusal::Busy(m) => (StatusCode::SERVICE_UNAVAILABLE, m.clone()),
            Refusal::TooMany { message, .. } => (StatusCode::TOO_MANY_REQUESTS, message.clone()),
            Refusal::Internal(e) if e.downcast_ref::<crate::db::Unavailable>().is_some() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the CA's database is not answering; try again in a moment".to_owned(),
            ),
            Refusal::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, r.to_string()),
        };
        if matches!(r, Refusal::Internal(_)) {
            // An internal error is a transaction that failed (a statement, the commit, the
            // database thread): the services do all their work inside one.
            crate::metrics::get().database_error("request");
        }
        let detail = match &r {
            Refusal::Internal(e) => format!("{e:#}"),
            other => other.to_string(),
        };
        let retry_after = match &r {
            Refusal::Busy(_) => Some(1),
            Refusal::Internal(e) if e.downcast_ref::<crate::db::Unavailable>().is_some() => Some(1),
            Refusal::TooMany { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        ApiError {
            status,
            public,
            detail,
            retry_after,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Refusals that tell the client to come back, and when.
        match self.status {
            StatusCode::SERVICE_UNAVAILABLE => {
                return unavailable(
                    self.public,
                    &self.detail,
                    self.retry_after.unwrap_or(1),
                    false,
                );
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let retry = self.retry_after.unwrap_or(60);
                let id = request_id();
                tracing::info!(request_id = %id, status = %self.status, detail = %self.detail, "request refused");
                let mut r = (
                    self.status,
                    Json(ErrorBody {
                        error: self.public,
                        request_id: id,
                    }),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(retry));
                return r;
            }
            _ => {}
        }
        let close = self.status == StatusCode::REQUEST_TIMEOUT;
        let id = request_id();
        if self.status.is_server_error() {
            tracing::error!(request_id = %id, status = %self.status, detail = %self.detail, "request failed");
        } else {
            tracing::info!(request_id = %id, status = %self.status, detail = %self.detail, "request refused");
        }
        let mut r = (
            self.status,
            Json(ErrorBody {
                error: self.public,
                request_id: id,
            }),
        )
            .into_response();
        if close {
            // A body that did not arrive in time: the rest of it is not waited for.
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        r
    }
}

/// A JSON body parsed with our own errors (axum's are plain text).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> JsonBody<T> {
    /// Parses a JSON body of at most `limit` bytes (the route's `DefaultBodyLimit` must allow
    /// as much).
    pub async fn with_limit<S: Send + Sync>(
        req: Request,
        state: &S,
        limit: usize,
    ) -> Result<Self, ApiError> {
        let bytes = body_with_limit(req, state, limit).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        // serde's message names the field and position, never echoes secret values.
        public: format!("malformed request: {e}"),
        detail: e.to_string(),
        retry_after: None,
    })
}

/// A JSON body that holds a password, an invite or a code: parsed from a copy of our own that
/// is zeroized when parsing ends, and the body's buffer is zeroized too when it is ours alone
/// (a body that arrived in one piece shares hyper's read buffer, which hyper reuses).
async fn secret_json<T: DeserializeOwned>(req: Request) -> Result<T, ApiError> {
    let bytes = body_with_limit(req, &(), MAX_BODY_BYTES).await?;
    let copy = zeroize::Zeroizing::new(bytes.to_vec());
    if let Ok(mut own) = bytes.try_into_mut() {
        zeroize::Zeroize::zeroize(own.as_mut());
    }
    parse_json(&copy)
}

/// Takes a token of `kind` for the request's source, or refuses with 429 (counted among the
/// source's failures of that kind).
fn rate_limit(svc: &Service, kind: FailureKind, remote: Remote) -> Result<Source, ApiError> {
    let source = Source::of(remote.0.ip());
    let buckets = match kind {
        FailureKind::Login => &svc.limits.login,
        FailureKind::Enroll => &svc.limits.enroll,
        FailureKind::Join => &svc.limits.join,
    };
    match buckets.take(source, std::time::Instant::now()) {
        Ok(()) => Ok(source),
        Err(wait) => {
            svc.limits
                .failures
                .record(source, kind, "rate limited", None, crate::service::now());
            let secs = wait.as_secs().max(1);
            Err(Refusal::TooMany {
                message: format!(
                    "too many {} requests from your address; try again in {secs} s",
                    kind.as_str()
                ),
                retry_after: secs,
            }
            .into())
        }
    }
}

/// Reads a body of at most `limit` bytes (the route's `DefaultBodyLimit` must allow as much).
pub async fn body_with_limit<S: Send + Sync>(
    req: Request,
    state: &S,
    limit: usize,
) -> Result<Bytes, ApiError> {
    // Refuse by Content-Length before the body is touched: a client that sent
    // `Expect: 100-continue` then gets the 413 without uploading anything.
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            public: format!("request body is larger than {limit} bytes"),
            detail: format!("content-length {declared:?}"),
            retry_after: None,
        });
    }
    // The body deadline runs from the request's headers (tls.rs sets it on every request):
    // a body sent a byte at a time cannot hold the connection longer.
    let deadline = req.extensions().get::<Deadlines>().copied();
    let read = Bytes::from_request(req, state);
    let read = match deadline {
        Some(d) => match tokio::time::timeout_at(d.body_by, read).await {
            Ok(r) => r,
            Err(_) => {
                return Err(ApiError {
                    status: StatusCode::REQUEST_TIMEOUT,
                    public: format!(
                        "the request body did not arrive within {} s",
                        d.body.as_secs()
                    ),
                    detail: "body deadline passed".into(),
                    retry_after: None,
                })
            }
        },
        None => read.await,
    };
    read.map_err(|e| {
        let status = e.status();
        ApiError {
            status: if status == StatusCode::PAYLOAD_TOO_LARGE {
                status
            } else {
                StatusCode::BAD_REQUEST
            },
            public: if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("request body is larger than {limit} bytes")
            } else {
                "cannot read request body".into()
            },
            detail: e.to_string(),
            retry_after: None,
        }
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Self::with_limit(req, state, MAX_BODY_BYTES).await
    }
}

/// The API's routes.
pub fn router(svc: Arc<Service>) -> Router {
    let chunk_limit = usize::try_from(svc.recordings.chunk_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/v1/ping", get(ping))
        // For load balancers: no body, no rate bucket (`health.rs`).
        .route("/healthz", get(crate::health::healthz))
        .route("/readyz", get(crate::health::readyz))
        .route("/v1/enroll", post(enroll))
        .route("/v1/login", post(login))
        .route("/v1/renew", post(renew))
        .route("/v1/join", post(join))
        .route("/v1/node/sync", post(node_sync))
        .route("/v1/node/events", post(node_events))
        .route("/v1/gateway/inventory", get(gateway_inventory))
        .route("/v1/gateway/authorize", post(gateway_authorize))
        .route("/v1/gateway/host-cert", post(gateway_host_cert))
        .route("/v1/gateway/public-addr", get(gateway_public_addr))
        // Recordings are the one large body: this route's own limit replaces the global one.
        .route(
            "/v1/gateway/recordings",
            post(gateway_recording).layer(DefaultBodyLimit::max(MAX_RECORDING_BYTES)),
        )
        // Resumable uploads: where an upload stands, chunks (bounded by `[recordings]
        // chunk_bytes`), and the completion that makes a recording visible.
        .route("/v1/gateway/recordings/{id}", get(gateway_recording_status))
        .route(
            "/v1/gateway/recordings/{id}/chunks",
            put(gateway_recording_chunk).layer(DefaultBodyLimit::max(chunk_limit)),
        )
        .route(
            "/v1/gateway/recordings/{id}/complete",
            post(gateway_recording_complete),
        )
        .route("/v1/recordings", get(recordings_ls))
        .route("/v1/recordings/{id}", get(recording_get))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                public: "no such endpoint".into(),
                detail: "not found".into(),
                retry_after: None,
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(svc)
}

async fn ping(State(svc): State<Arc<Service>>) -> Json<PingResponse> {
    Json(PingResponse {
        cluster: svc.cluster.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn enroll(
    State(svc): State<Arc<Service>>,
    Extension(remote): Extension<Remote>,
    req: Request,
) -> Result<Json<EnrollResponse>, ApiError> {
    let source = rate_limit(&svc, FailureKind::Enroll, remote)?;
    let req: EnrollRequest = secret_json(req).await?;
    let uri = svc.enroll(req, source).await?;
    Ok(Json(EnrollResponse {
        otpauth_uri: Secret::new(uri),
    }))
}

async fn login(
    State(svc): State<Arc<Service>>,
    Extension(remote): Extension<Remote>,
    req: Request,
) -> Result<Response, ApiError> {
    let answer = async {
        // The rate first: a source over its limit costs neither its body nor argon2.
        let source = rate_limit(&svc, FailureKind::Login, remote)?;
        let req: LoginRequest = secret_json(req).await?;
        Ok(Json(svc.login(req, source).await?).into_response())
    }
    .await;
    crate::metrics::get().login(status_of(&answer));
    answer
}

/// The status an answer will have, for the metrics.
fn status_of(answer: &Result<Response, ApiError>) -> StatusCode {
    match answer {
        Ok(r) => r.status(),
        Err(e) => e.status,
    }
}

async fn join(
    State(svc): State<Arc<Service>>,
    Extension(remote): Extension<Remote>,
    req: Request,
) -> Result<Response, ApiError> {
    let source = rate_limit(&svc, FailureKind::Join, remote)?;
    let req: postern_core::api::JoinRequest = secret_json(req).await?;
    // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d; servers see a.b.c.d.
    let answer = svc
        .join(req, remote.0.ip().to_canonical().to_string(), source)
        .await?;
    crate::metrics::get().issued(postern_core::CertKind::SshHost);
    crate::metrics::get().issued(postern_core::CertKind::X509Node);
    Ok(Json(answer).into_response())
}

// Sync, events and renewal read their body before the caller's identity, as they always
// have: a malformed body is answered as such, with or without a client certificate.
async fn node_sync(
    State(svc): State<Arc<Service>>,
    id: Result<AuthedNode<NodeSync>, ApiError>,
    JsonBody(req): JsonBody<postern_core::api::SyncRequest>,
) -> Result<Response, ApiError> {
    let id = id?;
    let answer = svc.node_sync(id, req).await?;
    if answer.host_certificate.is_some() {
        crate::metrics::get().issued(postern_core::CertKind::SshHost);
    }
    Ok(Json(answer).into_response())
}

async fn node_events(
    State(svc): State<Arc<Service>>,
    id: Result<AuthedNode<NodeEvents>, ApiError>,
    JsonBody(req): JsonBody<postern_core::api::EventsRequest>,
) -> Result<Response, ApiError> {
    let id = id?;
    let n = svc.node_events(id, req.events).await?;
    Ok(Json(serde_json::json!({ "accepted": n })).into_response())
}

async fn renew(
    State(svc): State<Arc<Service>>,
    identity: Result<AuthedUser<Renewal>, ApiError>,
    JsonBody(req): JsonBody<RenewRequest>,
) -> Result<Response, ApiError> {
    let answer = async { Ok(Json(svc.renew(identity?, req.ttl).await?).into_response()) }.await;
    crate::metrics::get().renewal(status_of(&answer));
    answer
}

async fn gateway_inventory(
    State(svc): State<Arc<Service>>,
    id: AuthedGateway,
) -> Result<Response, ApiError> {
    Ok(Json(svc.gateway_inventory(id).await?).into_response())
}

async fn gateway_authorize(
    State(svc): State<Arc<Service>>,
    id: AuthedGateway,
    body: Result<JsonBody<AuthorizeRequest>, ApiError>,
) -> Result<Response, ApiError> {
    // The caller first (the extractor): a client without an identity hears that, whatever
    // it sent.
    let started = std::time::Instant::now();
    let answer = async {
        let JsonBody(req) = body?;
        Ok(Json(svc.gateway_authorize(id, req).await?).into_response())
    }
    .await;
    crate::metrics::get().authorize(status_of(&answer), started.elapsed());
    answer
}

async fn gateway_host_cert(
    State(svc): State<Arc<Service>>,
    id: AuthedGateway,
    body: Result<JsonBody<HostCertRequest>, ApiError>,
) -> Result<Response, ApiError> {
    // The caller first (the extractor): a client without an identity hears that, whatever
    // it sent.
    let JsonBody(req) = body?;
    let answer = svc.gateway_host_cert(id, req).await?;
    crate::metrics::get().issued(postern_core::CertKind::SshHost);
    Ok(Json(answer).into_response())
}

async fn gateway_public_addr(
    State(svc): State<Arc<Service>>,
    id: AuthedGateway,
) -> Result<Response, ApiError> {
    Ok(Json(svc.gateway_public_addr(id).await?).into_response())
}

/// The caller is checked, and an upload slot taken, before the (large) body is read, so that
/// nobody but a gateway can make the daemon buffer a recording.
async fn gateway_recording(
    State(svc): State<Arc<Service>>,
    id: AuthedGateway,
    req: Request,
) -> Result<Response, ApiError> {
    let gateway = svc.authenticate_gateway(id).await?;
    let slot = Arc::clone(&svc.upload_slots)
        .acquire_owned()
        .await
        .map_err(|e| Refusal::Internal(anyhow::anyhow!(e)))?;
    let JsonBody(upload) = JsonBody::<RecordingUpload>::with_limit(req, &(), MAX_RECORDING_BYTES)
        .await
        .map_err(|mut e| {
            if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                e.public = format!(
                    "a recording upload is at most {} MiB",
                    MAX_RECORDING_BYTES >> 20
                );
            }
            e
        })?;
    let n = upload.cast.len() as u64;
    let answer = svc.recording_store(gateway, upload, slot).await?;
    crate::metrics::get().recording_bytes(n);
    Ok(Json(answer).into_response())
}

/// Query of `GET /v1/recordings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordingsQuery {
    user: Option<Username>,
    node: Option<NodeName>,
    limit: Option<u32>,
}

async fn recordings_ls(
    State(svc): State<Arc<Service>>,
    id: AuthedUser<Recordings>,
    query: Result<Query<RecordingsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        public: format!("malformed query: {}", e.body_text()),
        detail: e.to_string(),
        retry_after: None,
    })?;
    Ok(Json(svc.recordings_of_user(id, q.user, q.node, q.limit).await?).into_response())
}

async fn recording_get(
    State(svc): State<Arc<Service>>,
    // The path before the caller, as it always was: a path that does not decode is
    // answered as such first.
    Path(rid): Path<String>,
    id: AuthedUser<Recordings>,
) -> Result<Response, ApiError> {
    let (file, len) = svc.recording_cast(id, rid).await?;
    // Streamed from the file: a recording may be far larger than the daemon's memory.
    let body =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-asciicast".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

/// The recording id of a gateway route's path; checked again by the service.
fn recording_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        public: "malformed recording id in the path".into(),
        detail: e.to_string(),
        retry_after: None,
    })
}

async fn gateway_recording_status(
    State(svc): State<Arc<Service>>,
    id: AuthedGateway,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let rid = recording_id(path)?;
    let gateway = svc.authenticate_gateway(id).await?;
    Ok(Json(svc.recording_upload_status(gateway, rid).await?).into_response())
}

/// Query of `PUT /v1/gateway/recordings/ID/chunks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunkQuery {
    offset: u64,
}

/// The caller is checked, and an upload slot taken, before the body is read.
async fn gateway_recording_chunk(
    State(svc): State<Arc<Service>>,
    id: AuthedGateway,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ChunkQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let rid = recording_id(path)?;
    let Query(q) = query.map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        public: format!(
            "malformed query: {} (expected ?offset=N, N a byte offset)",
            e.body_text()
        ),
        detail: e.to_string(),
        retry_after: None,
    })?;
    let gateway = svc.authenticate_gateway(id).await?;
    let slot = Arc::clone(&svc.upload_slots)
        .acquire_owned()
        .await
        .map_err(|e| Refusal::Internal(anyhow::anyhow!(e)))?;
    let limit = usize::try_from(svc.recordings.chunk_bytes).unwrap_or(usize::MAX);
    let bytes = body_with_limit(req, &(), limit).await.map_err(|mut e| {
        if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            e.public = format!("a chunk is at most {limit} bytes ([recordings] chunk_bytes)");
        }
        e
    })?;
    let n = bytes.len() as u64;
    let answer = svc
        .recording_chunk(gateway, rid, q.offset, bytes, slot)
        .await?;
    crate::metrics::get().recording_bytes(n);
    Ok(Json(answer).into_response())
}

async fn gateway_recording_complete(
    State(svc): State<Arc<Service>>,
    id: AuthedGateway,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<RecordingComplete>, ApiError>,
) -> Result<Response, ApiError> {
    // The caller first (the extractor): a client without an identity hears that, whatever
    // it sent.
    let rid = recording_id(path)?;
    let JsonBody(req) = body?;
    let gateway = svc.authenticate_gateway(id).await?;
    Ok(Json(svc.recording_complete(gateway, rid, req).await?).into_response())
}
