//! The async client of posternd's API, on which the blocking one is built: one
//! `reqwest::Client` (its connection pool and one TLS configuration holding the pin and the
//! identity), built once and cloned cheaply, and every endpoint's logic.

use std::time::Duration;

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde::Serialize;

use postern_core::api::{
    CertResponse, EnrollRequest, EnrollResponse, LoginRequest, PingResponse, RenewRequest,
};

use crate::error::{status_error, transport_error, ApiError};
use crate::pin::CaPin;
use crate::tls::{tls_config, ClientIdentity};
use crate::url::CaUrl;

/// The largest answer read from the server; a certificate response is a few kilobytes.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// How long an idle connection stays in the pool. Shorter than posternd's 10 s between
/// requests, so that the client never picks a connection the server is closing.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// A connection pool to posternd's API. Clones share the pool and the TLS configuration.
#[derive(Clone)]
pub struct Client {
    base: CaUrl,
    http: reqwest::Client,
}

impl Client {
    /// A client for `base`, trusting only the CA with `pin`, presenting `identity` if given.
    pub fn new(
        base: &CaUrl,
        pin: CaPin,
        identity: Option<ClientIdentity>,
    ) -> anyhow::Result<Client> {
        let tls = tls_config(pin, identity)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            // A redirect would leave the pinned origin's path; the API never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(POOL_IDLE)
            .user_agent(concat!("postern/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTPS client")?;
        Ok(Client {
            base: base.clone(),
            http,
        })
    }

    /// `GET /v1/ping`.
    pub async fn ping(&self) -> Result<PingResponse, ApiError> {
        self.get("/v1/ping").await
    }

    /// `POST /v1/enroll`.
    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ApiError> {
        self.post("/v1/enroll", req).await
    }

    /// `POST /v1/login`.
    pub async fn login(&self, req: &LoginRequest) -> Result<CertResponse, ApiError> {
        self.post("/v1/login", req).await
    }

    /// `POST /v1/renew` (needs a client identity).
    pub async fn renew(&self, req: &RenewRequest) -> Result<CertResponse, ApiError> {
        self.post("/v1/renew", req).await
    }

    /// `POST` a JSON body to `path` and read the JSON answer.
    pub async fn post<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, ApiError> {
        let url = self.url(path);
        call(&url, self.http.post(&url).json(body)).await
    }

    /// `PUT` raw bytes to `path` (with its query string) and read the JSON answer. The
    /// timeout is longer than other calls': a chunk of a recording may be megabytes.
    pub async fn put_bytes<Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Resp, ApiError> {
        let url = self.url(path);
        let req = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(Duration::from_secs(600))
            .body(body);
        call(&url, req).await
    }

    /// `POST` a JSON body to `path` and read the JSON answer, waiting up to `timeout` for it
    /// (a call the server may work on for long, such as hashing a large recording).
    pub async fn post_with_timeout<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, ApiError> {
        let url = self.url(path);
        call(&url, self.http.post(&url).json(body).timeout(timeout)).await
    }

    /// `GET` `path` (with its query string) and read the JSON answer.
    pub async fn get<Resp: DeserializeOwned>(&self, path: &str) -> Result<Resp, ApiError> {
        let url = self.url(path);
        call(&url, self.http.get(&url)).await
    }

    /// `GET` `path` and hand the answer's body to `each` piece by piece as it arrives, so
    /// that an answer of any size (a recording) takes bounded memory. Only the connection
    /// has a deadline, not the whole download. A refusal or failure of the server is an
    /// [`ApiError`] (converted into `E`), as for the other calls.
    pub async fn get_streamed<E: From<ApiError>>(
        &self,
        path: &str,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        const NO_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);
        let url = self.url(path);
        let mut resp = self
            .http
            .get(&url)
            .timeout(NO_DEADLINE)
            .send()
            .await
            .map_err(|e| transport_error(&url, e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = read_body(&url, resp).await?;
            return Err(status_error(status, &body).into());
        }
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&url, e))? {
            each(&chunk)?;
        }
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
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
