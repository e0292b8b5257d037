//! The async client of posternd's API, on which the blocking one is built: the CA's
//! addresses (each with its connection pool, all with the one TLS configuration holding the
//! pin and the identity), built once and cloned cheaply, and every endpoint's logic.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use postern_core::api::{
    CertResponse, EnrollRequest, EnrollResponse, LoginRequest, PingResponse, RenewRequest,
};

use crate::error::{status_error, transport_error, ApiError, Resend};
use crate::failover::Endpoints;
use crate::pin::CaPin;
use crate::tls::{tls_config, ClientIdentity};
use crate::url::CaUrls;

/// The largest answer read from the server; a certificate response is a few kilobytes.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A client of posternd's API at one or several URLs (instances of one CA, sharing the pin).
/// Clones share the connection pools and which address answered last.
///
/// A request goes to the address that answered last. When its failure says that the
/// instance is gone ([`ApiError::fails_over`]), it goes to the next address, in up to
/// [`crate::ROUNDS`] rounds over all of them with backoff between rounds
/// ([`crate::FIRST_BACKOFF`]); whether it may be sent again after it may have reached an
/// instance depends on the request ([`Resend`]). An answer, a refusal above all, is never
/// sent on to another address. A URL whose name resolves to several IP addresses counts as
/// one address per IP address. With one address there is one try, as before.
#[derive(Clone)]
pub struct Client {
    endpoints: Arc<Endpoints>,
}

impl Client {
    /// A client for `bases`, trusting only the CA with `pin`, presenting `identity` if given.
    pub fn new(
        bases: impl Into<CaUrls>,
        pin: CaPin,
        identity: Option<ClientIdentity>,
    ) -> anyhow::Result<Client> {
        let tls = tls_config(pin, identity)?;
        Ok(Client {
            endpoints: Arc::new(Endpoints::new(bases.into(), tls)?),
        })
    }

    /// The CA's URLs, in the order given.
    pub fn urls(&self) -> &CaUrls {
        self.endpoints.urls()
    }

    /// `GET /v1/ping`.
    pub async fn ping(&self) -> Result<PingResponse, ApiError> {
        self.get("/v1/ping").await
    }

    /// `POST /v1/enroll`. The invite is spent by the first instance that takes it.
    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ApiError> {
        self.post("/v1/enroll", req).await
    }

    /// `POST /v1/login`. The one-time code's time step is spent by the first instance that
    /// takes it, and a code refused as spent counts towards the lockout.
    pub async fn login(&self, req: &LoginRequest) -> Result<CertResponse, ApiError> {
        self.post("/v1/login", req).await
    }

    /// `POST /v1/renew` (needs a client identity). Sent again after a broken-off answer: a
    /// renewal spends nothing, and a repeat only certifies the same key again, for the same
    /// user and deadline; the CLI installs the certificate it was answered.
    pub async fn renew(&self, req: &RenewRequest) -> Result<CertResponse, ApiError> {
        self.post_resend(Resend::Always, "/v1/renew", req, None)
            .await
    }

    /// `POST` a JSON body to `path` and read the JSON answer. Sent to another address only
    /// when it reached no server ([`Resend::Unsent`]); see [`Client::post_resend`].
    pub async fn post<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, ApiError> {
        self.post_resend(Resend::Unsent, path, body, None).await
    }

    /// `POST` a JSON body to `path` and read the JSON answer, sent again as `resend` allows,
    /// waiting up to `timeout` for the answer when given (a call the server may work on for
    /// long, such as hashing a large recording) and 60 s otherwise.
    pub async fn post_resend<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        resend: Resend,
        path: &str,
        body: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, ApiError> {
        // Serialized once: every try sends the same bytes.
        let body = serde_json::to_vec(body).map_err(|e| ApiError::BadAnswer {
            url: path.to_owned(),
            detail: format!("the request cannot be encoded: {e}"),
        })?;
        self.endpoints
            .run(path, resend, |ep| {
                let mut req = ep
                    .http
                    .post(ep.url(path))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
                if let Some(t) = timeout {
                    req = req.timeout(t);
                }
                let label = ep.label(path);
                async move { call(&label, req).await }
            })
            .await
    }

    /// `PUT` raw bytes to `path` (with its query string) and read the JSON answer. The
    /// timeout is longer than other calls': a chunk of a recording may be megabytes. Sent
    /// again after a broken-off answer, as PUT is idempotent (RFC 9110, section 9.2.2): the
    /// CA accepts a chunk again whose bytes equal what it holds.
    pub async fn put_bytes<Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Resp, ApiError> {
        self.endpoints
            .run(path, Resend::Always, |ep| {
                let req = ep
                    .http
                    .put(ep.url(path))
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .timeout(Duration::from_secs(600))
                    .body(body.clone());
                let label = ep.label(path);
                async move { call(&label, req).await }
            })
            .await
    }

    /// `POST` a JSON body to `path` and read the JSON answer, waiting up to `timeout` for it
    /// (a call the server may work on for long, such as hashing a large recording). Sent to
    /// another address only when it reached no server, as [`Client::post`].
    pub async fn post_with_timeout<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, ApiError> {
        self.post_resend(Resend::Unsent, path, body, Some(timeout))
            .await
    }

    /// `GET` `path` (with its query string) and read the JSON answer.
    pub async fn get<Resp: DeserializeOwned>(&self, path: &str) -> Result<Resp, ApiError> {
        self.endpoints
            .run(path, Resend::Always, |ep| {
                let req = ep.http.get(ep.url(path));
                let label = ep.label(path);
                async move { call(&label, req).await }
            })
            .await
    }

    /// `GET` `path` and hand the answer's body to `each` piece by piece as it arrives, so
    /// that an answer of any size (a recording) takes bounded memory. Only the connection
    /// has a deadline, not the whole download. A refusal or failure of the server is an
    /// [`ApiError`] (converted into `E`), as for the other calls. Another address is tried
    /// only until an answer's head arrived: `each` may have been given part of the body.
    pub async fn get_streamed<E: From<ApiError>>(
        &self,
        path: &str,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        const NO_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);
        let (label, mut resp) = self
            .endpoints
            .run(path, Resend::Always, |ep| {
                let req = ep.http.get(ep.url(path)).timeout(NO_DEADLINE);
                let label = ep.label(path);
                async move {
                    let resp = req.send().await.map_err(|e| transport_error(&label, e))?;
                    if !resp.status().is_success() {
                        let status = resp.status();
                        let body = read_body(&label, resp).await?;
                        return Err(status_error(status, &body));
                    }
                    Ok((label, resp))
                }
            })
            .await?;
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&label, e))? {
            each(&chunk)?;
        }
        Ok(())
    }
}

/// Sends one request and reads its JSON answer.
async fn call<Resp: DeserializeOwned>(
    url: &str,
    req: reqwest::RequestBuilder,
) -> Result<Resp, ApiError> {
    let resp = req.send().await.map_err(|e| transport_error(url, e))?;
    read_answer(url, resp).await
}

async fn read_body(url: &str, mut resp: reqwest::Response) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(url, e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ApiError::BadAnswer {
                url: url.to_owned(),
                detail: format!("answer larger than {MAX_RESPONSE_BYTES} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn read_answer<T: DeserializeOwned>(
    url: &str,
    resp: reqwest::Response,
) -> Result<T, ApiError> {
    let status = resp.status();
    let body = read_body(url, resp).await?;
    if !status.is_success() {
        return Err(status_error(status, &body));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::BadAnswer {
        url: url.to_owned(),
        detail: e.to_string(),
    })
}
