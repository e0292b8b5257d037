//! The blocking client for the CLI and the shim, as `reqwest::blocking` is built: it owns a
//! current-thread runtime, made once per client, and runs the async client's calls on it.
//! Each endpoint's logic lives once, in [`crate::Client`].

use std::time::Duration;

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde::Serialize;

use postern_core::api::{
    CertResponse, EnrollRequest, EnrollResponse, LoginRequest, PingResponse, RenewRequest,
};

use crate::error::{ApiError, Resend};
use crate::pin::CaPin;
use crate::tls::ClientIdentity;
use crate::url::CaUrls;

/// A connection to posternd's API whose calls block. Must not be used (or dropped) inside an
/// async runtime: code that runs on one uses [`crate::Client`].
pub struct Client {
    // Dropped before the runtime whose tasks its connections belong to.
    inner: crate::Client,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// A client for `bases`, trusting only the CA with `pin`, presenting `identity` if given;
    /// see [`crate::Client`] for how it fails over between several.
    pub fn new(
        bases: impl Into<CaUrls>,
        pin: CaPin,
        identity: Option<ClientIdentity>,
    ) -> anyhow::Result<Client> {
        // One request at a time: a single-threaded runtime is enough and starts no threads.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let inner = {
            let _guard = rt.enter();
            crate::Client::new(bases, pin, identity)?
        };
        Ok(Client { inner, rt })
    }

    /// The CA's URLs, in the order given.
    pub fn urls(&self) -> &CaUrls {
        self.inner.urls()
    }

    /// `GET /v1/ping`.
    pub fn ping(&self) -> Result<PingResponse, ApiError> {
        self.rt.block_on(self.inner.ping())
    }

    /// `POST /v1/enroll`.
    pub fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ApiError> {
        self.rt.block_on(self.inner.enroll(req))
    }

    /// `POST /v1/login`.
    pub fn login(&self, req: &LoginRequest) -> Result<CertResponse, ApiError> {
        self.rt.block_on(self.inner.login(req))
    }

    /// `POST /v1/renew` (needs a client identity).
    pub fn renew(&self, req: &RenewRequest) -> Result<CertResponse, ApiError> {
        self.rt.block_on(self.inner.renew(req))
    }

    /// `POST` a JSON body to `path` and read the JSON answer.
    pub fn post<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, ApiError> {
        self.rt.block_on(self.inner.post(path, body))
    }

    /// `POST`, sent again as `resend` allows; see [`crate::Client::post_resend`].
    pub fn post_resend<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        resend: Resend,
        path: &str,
        body: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, ApiError> {
        self.rt
            .block_on(self.inner.post_resend(resend, path, body, timeout))
    }

    /// `PUT` raw bytes to `path`; see [`crate::Client::put_bytes`].
    pub fn put_bytes<Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Resp, ApiError> {
        self.rt.block_on(self.inner.put_bytes(path, body))
    }

    /// `POST` with its own deadline; see [`crate::Client::post_with_timeout`].
    pub fn post_with_timeout<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, ApiError> {
        self.rt
            .block_on(self.inner.post_with_timeout(path, body, timeout))
    }

    /// `GET` `path` (with its query string) and read the JSON answer.
    pub fn get<Resp: DeserializeOwned>(&self, path: &str) -> Result<Resp, ApiError> {
        self.rt.block_on(self.inner.get(path))
    }

    /// `GET` an answer of any size piece by piece; see [`crate::Client::get_streamed`].
    pub fn get_streamed<E: From<ApiError>>(
        &self,
        path: &str,
        each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.rt.block_on(self.inner.get_streamed(path, each))
    }
}
