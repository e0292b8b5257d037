//! The gateway's side of posternd's API: inventory (servers, CA keys, locks), per-login
//! authorization with a node-access certificate, host certificates for the inner connection,
//! and resumable recording uploads. Calls run on blocking threads: the shared client is
//! synchronous.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use postern_api_client::{Api, CaPin, CaUrl, ClientIdentity};
use postern_core::api::{
    AuthorizeRequest, AuthorizeResponse, GatewayPublicAddr, HostCertRequest, HostCertResponse,
    Inventory, RecordingComplete, RecordingMeta, RecordingUploadStatus,
};
use postern_core::{ClusterName, NodeName, RecordingId};
use serde::{Deserialize, Serialize};

/// What `join` remembers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Joined {
    /// API URL.
    pub ca: String,
    /// Pin.
    pub ca_pin: String,
    /// The gateway's name.
    pub name: NodeName,
    /// The cluster.
    pub cluster: ClusterName,
    /// The address users are told to use for the gateway, as the CA said at join; `serve`
    /// checks against it when it cannot ask the CA (see `public.rs`).
    #[serde(default)]
    pub public_addr: Option<String>,
}

/// A handle on the CA for the gateway.
#[derive(Clone)]
pub struct CaClient {
    state: PathBuf,
    joined: Arc<Joined>,
}

/// A CA refusal or failure, with the text to show the user.
#[derive(Debug)]
pub struct Refused(pub String, pub Option<u16>);

impl CaClient {
    /// Loads the join record of a state directory.
    pub fn load(state: PathBuf) -> Result<CaClient> {
        let p = state.join("joined.json");
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "this gateway has not joined a cluster ({} is missing); run `postern-gate join`",
                p.display()
            )
        })?;
        Ok(CaClient {
            joined: Arc::new(serde_json::from_str(&text)?),
            state,
        })
    }

    /// The join record.
    pub fn joined(&self) -> &Joined {
        &self.joined
    }

    fn api(&self) -> Result<Api> {
        let identity = ClientIdentity::from_pem(
            &std::fs::read(self.state.join("identity.crt"))?,
            &std::fs::read(self.state.join("identity.key"))?,
        )?;
        let url: CaUrl = self.joined.ca.parse().map_err(anyhow::Error::msg)?;
        let pin: CaPin = self.joined.ca_pin.parse().map_err(anyhow::Error::msg)?;
        Api::new(&url, pin, Some(identity))
    }

    async fn call<Req, Resp>(
        &self,
        method: &'static str,
        path: &'static str,
        body: Req,
    ) -> Result<Resp, Refused>
    where
        Req: Serialize + Send + 'static,
        Resp: for<'de> Deserialize<'de> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let api = me.api().map_err(|e| Refused(format!("{e:#}"), None))?;
            let r = if method == "GET" {
                api.get(path)
            } else {
                api.post(path, &body)
            };
            r.map_err(|e| Refused(e.to_string(), e.status()))
        })
        .await
        .map_err(|e| Refused(format!("internal error: {e}"), None))?
    }

    /// `GET /v1/gateway/inventory`.
    pub async fn inventory(&self) -> Result<Inventory> {
        self.call("GET", "/v1/gateway/inventory", ())
            .await
            .map_err(|e| anyhow!(e.0))
    }

    /// `GET /v1/gateway/public-addr`.
    pub async fn public_addr(&self) -> Result<GatewayPublicAddr, Refused> {
        self.call("GET", "/v1/gateway/public-addr", ()).await
    }

    /// `POST /v1/gateway/authorize`.
    pub async fn authorize(&self, req: AuthorizeRequest) -> Result<AuthorizeResponse, Refused> {
        self.call("POST", "/v1/gateway/authorize", req).await
    }

    /// `POST /v1/gateway/host-cert`.
    pub async fn host_cert(&self, req: HostCertRequest) -> Result<HostCertResponse, Refused> {
        self.call("POST", "/v1/gateway/host-cert", req).await
    }

    /// `POST /v1/node/events`.
    pub async fn events(&self, req: postern_core::api::EventsRequest) -> Result<(), Refused> {
        let _: serde_json::Value = self.call("POST", "/v1/node/events", req).await?;
        Ok(())
    }

    /// A connection for one recording upload, whose calls block: run it on a blocking thread.
    pub fn upload_session(&self) -> Result<UploadSession, Refused> {
        self.api()
            .map(|api| UploadSession { api })
            .map_err(|e| Refused(format!("{e:#}"), None))
    }
}

/// Resumable recording uploads (`/v1/gateway/recordings/ID...`) over one connection. The id
/// must be a session id (`[a-z0-9-]`), which is safe in a URL path as it is.
pub struct UploadSession {
    api: Api,
}

fn refused(e: postern_api_client::ApiError) -> Refused {
    Refused(e.to_string(), e.status())
}

impl UploadSession {
    /// `GET /v1/gateway/recordings/ID`: where the upload stands.
    pub fn status(&self, id: &RecordingId) -> Result<RecordingUploadStatus, Refused> {
        self.api
            .get(&format!("/v1/gateway/recordings/{id}"))
            .map_err(refused)
    }

    /// `PUT /v1/gateway/recordings/ID/chunks?offset=N`: one chunk.
    pub fn chunk(
        &self,
        id: &RecordingId,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<RecordingUploadStatus, Refused> {
        self.api
            .put_bytes(
                &format!("/v1/gateway/recordings/{id}/chunks?offset={offset}"),
                bytes,
            )
            .map_err(refused)
    }

    /// `POST /v1/gateway/recordings/ID/complete`: makes the recording visible. The CA reads
    /// the whole file to check its SHA-256 first: the wait grows with the size (a minute,
    /// plus a second per 20 MB).
    pub fn complete(
        &self,
        id: &RecordingId,
        req: &RecordingComplete,
    ) -> Result<RecordingMeta, Refused> {
        let wait = Duration::from_secs(60 + req.meta.bytes / 20_000_000);
        self.api
            .post_with_timeout(&format!("/v1/gateway/recordings/{id}/complete"), req, wait)
            .map_err(refused)
    }
}
