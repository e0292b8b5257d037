//! The gateway's side of posternd's API: inventory (servers, CA keys, locks), per-login
//! authorization with a node-access certificate, host certificates for the inner connection,
//! and resumable recording uploads. The gateway keeps one async client for its lifetime (one
//! TLS configuration, its connections kept open between calls), made again only when the
//! identity on disk changes (a `join` into the same state directory).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use postern_api_client::{CaPin, CaUrls, Client, ClientIdentity, Resend};
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
    /// API URLs (`--ca`, in order): one string, as in files from before several URLs, or a
    /// list.
    pub ca: CaUrls,
    /// Pin.
    pub ca_pin: String,
    /// The gateway's name.
    pub name: NodeName,
    /// The cluster.
    pub cluster: ClusterName,
    /// The address users are told to use for the gateway, as the CA said at join (the first
    /// of `public_addrs` when it said several); `serve` checks against it when it cannot ask
    /// the CA (see `public.rs`).
    #[serde(default)]
    pub public_addr: Option<String>,
    /// Every address users are told to use, when the CA said several at join.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_addrs: Vec<String>,
}

impl Joined {
    /// Every address users are told to use, as the CA said at join.
    pub fn public_addrs(&self) -> Vec<String> {
        if self.public_addrs.is_empty() {
            self.public_addr.iter().cloned().collect()
        } else {
            self.public_addrs.clone()
        }
    }
}

/// A handle on the CA for the gateway. Clones share one client.
#[derive(Clone)]
pub struct CaClient {
    state: PathBuf,
    joined: Arc<Joined>,
    client: Arc<Mutex<Option<Kept>>>,
}

/// The client in use, and the identity files it was made from.
struct Kept {
    files: IdentityFiles,
    client: Arc<Client>,
}

/// Which identity files are on disk: `join` replaces each by a rename, which changes the
/// inode, and any other write changes the size or the modification time.
#[derive(Clone, Copy, PartialEq, Eq)]
struct IdentityFiles([(u64, u64, u64, i64, i64); 2]);

impl IdentityFiles {
    fn of(state: &Path) -> std::io::Result<IdentityFiles> {
        let stamp = |name: &str| {
            std::fs::metadata(state.join(name))
                .map(|m| (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
        };
        Ok(IdentityFiles([
            stamp("identity.crt")?,
            stamp("identity.key")?,
        ]))
    }
}

/// How [`CaClient::call`] sends a request.
#[derive(Clone, Copy)]
enum Method {
    Get,
    Post(Resend),
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
        let ca = CaClient {
            joined: Arc::new(serde_json::from_str(&text)?),
            state,
            client: Arc::default(),
        };
        // Made now, once; when the identity cannot be read yet, each call tries again and
        // says why it cannot.
        let _ = ca.make_client();
        Ok(ca)
    }

    /// The join record.
    pub fn joined(&self) -> &Joined {
        &self.joined
    }

    /// Reads the identity, makes a client with it and keeps it.
    fn make_client(&self) -> Result<Arc<Client>> {
        // Looked at before reading: a change while reading is seen by the next call.
        let files = IdentityFiles::of(&self.state);
        let identity = ClientIdentity::from_pem(
            &std::fs::read(self.state.join("identity.crt"))?,
            &std::fs::read(self.state.join("identity.key"))?,
        )?;
        let pin: CaPin = self.joined.ca_pin.parse().map_err(anyhow::Error::msg)?;
        let client = Arc::new(Client::new(&self.joined.ca, pin, Some(identity))?);
        if let Ok(files) = files {
            let kept = Kept {
                files,
                client: client.clone(),
            };
            *self.client.lock().unwrap_or_else(PoisonError::into_inner) = Some(kept);
        }
        Ok(client)
    }

    /// The client kept, or a new one when the identity on disk is not the one it was made
    /// from.
    async fn client(&self) -> Result<Arc<Client>, Refused> {
        if let Ok(files) = IdentityFiles::of(&self.state) {
            let kept = self.client.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(k) = kept.as_ref().filter(|k| k.files == files) {
                return Ok(k.client.clone());
            }
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.make_client())
            .await
            .map_err(|e| Refused(format!("internal error: {e}"), None))?
            .map_err(|e| Refused(format!("{e:#}"), None))
    }

    /// A `GET` without a body, or a `POST` of `body` sent again to another CA address as
    /// `resend` allows.
    async fn call<Req, Resp>(
        &self,
        method: Method,
        path: &'static str,
        body: Req,
    ) -> Result<Resp, Refused>
    where
        Req: Serialize,
        Resp: for<'de> Deserialize<'de>,
    {
        let call = match path {
            "/v1/gateway/inventory" => "inventory",
            "/v1/gateway/authorize" => "authorize",
            "/v1/gateway/host-cert" => "host_cert",
            "/v1/gateway/public-addr" => "public_addr",
            "/v1/node/events" => "events",
            _ => "other",
        };
        let api = self.client().await.inspect_err(|_| {
            crate::metrics::get().ca_error(call, None);
        })?;
        let r = match method {
            Method::Get => api.get(path).await,
            Method::Post(resend) => api.post_resend(resend, path, &body, None).await,
        };
        r.map_err(refused(call))
    }

    /// `GET /v1/gateway/inventory`.
    pub async fn inventory(&self) -> Result<Inventory> {
        self.call(Method::Get, "/v1/gateway/inventory", ())
            .await
            .map_err(|e| anyhow!(e.0))
    }

    /// `GET /v1/gateway/public-addr`.
    pub async fn public_addr(&self) -> Result<GatewayPublicAddr, Refused> {
        self.call(Method::Get, "/v1/gateway/public-addr", ()).await
    }

    /// `POST /v1/gateway/authorize`. Another CA address is tried only when the request
    /// reached none: the CA records each authorization of a session id, and a repeat may be
    /// refused as a second one.
    pub async fn authorize(&self, req: AuthorizeRequest) -> Result<AuthorizeResponse, Refused> {
        self.call(Method::Post(Resend::Unsent), "/v1/gateway/authorize", req)
            .await
    }

    /// `POST /v1/gateway/host-cert`. Sent again after a broken-off answer: a repeat only
    /// certifies the same host key for the same names again.
    pub async fn host_cert(&self, req: HostCertRequest) -> Result<HostCertResponse, Refused> {
        self.call(Method::Post(Resend::Always), "/v1/gateway/host-cert", req)
            .await
    }

    /// `POST /v1/node/events`. Another CA address is tried only when the request reached
    /// none: the CA appends every event it receives to the audit log, and the journal sends
    /// what was not acknowledged again on its own schedule.
    pub async fn events(&self, req: postern_core::api::EventsRequest) -> Result<(), Refused> {
        let _: serde_json::Value = self
            .call(Method::Post(Resend::Unsent), "/v1/node/events", req)
            .await?;
        Ok(())
    }

    /// The client for one recording upload.
    pub async fn upload_session(&self) -> Result<UploadSession, Refused> {
        self.client().await.map(|api| UploadSession { api })
    }
}

/// Resumable recording uploads (`/v1/gateway/recordings/ID...`) with the gateway's client.
/// The id must be a session id (`[a-z0-9-]`), which is safe in a URL path as it is.
pub struct UploadSession {
    api: Arc<Client>,
}

/// The error of a call, counted in the metrics under `call`.
fn refused(call: &'static str) -> impl Fn(postern_api_client::ApiError) -> Refused {
    move |e| {
        crate::metrics::get().ca_error(call, e.status());
        Refused(e.to_string(), e.status())
    }
}

impl UploadSession {
    /// `GET /v1/gateway/recordings/ID`: where the upload stands.
    pub async fn status(&self, id: &RecordingId) -> Result<RecordingUploadStatus, Refused> {
        self.api
            .get(&format!("/v1/gateway/recordings/{id}"))
            .await
            .map_err(refused("recordings"))
    }

    /// `PUT /v1/gateway/recordings/ID/chunks?offset=N`: one chunk.
    pub async fn chunk(
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
            .await
            .map_err(refused("recordings"))
    }

    /// `POST /v1/gateway/recordings/ID/complete`: makes the recording visible. The CA reads
    /// the whole file to check its SHA-256 first: the wait grows with the size (a minute,
    /// plus a second per 20 MB).
    pub async fn complete(
        &self,
        id: &RecordingId,
        req: &RecordingComplete,
    ) -> Result<RecordingMeta, Refused> {
        let wait = Duration::from_secs(60 + req.meta.bytes / 20_000_000);
        // Sent again after a broken-off answer: the CA answers a repeated completion with
        // what it stored.
        self.api
            .post_resend(
                Resend::Always,
                &format!("/v1/gateway/recordings/{id}/complete"),
                req,
                Some(wait),
            )
            .await
            .map_err(refused("recordings"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a new identity as `join` does: each file replaced by a rename.
    fn write_identity(state: &Path) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gate".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        for (name, text) in [
            ("identity.key", key.serialize_pem()),
            ("identity.crt", cert.pem()),
        ] {
            let tmp = state.join(format!("{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, state.join(name)).unwrap();
        }
    }

    fn joined(state: &Path) {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let j = format!(
            r#"{{"ca": "https://127.0.0.1:9", "ca_pin": "{pin}", "name": "gate", "cluster": "test"}}"#
        );
        std::fs::write(state.join("joined.json"), j).unwrap();
    }

    #[tokio::test]
    async fn keeps_one_client_until_the_identity_on_disk_changes() {
        let d = tempfile::tempdir().unwrap();
        joined(d.path());
        write_identity(d.path());
        let ca = CaClient::load(d.path().to_owned()).unwrap();
        let first = ca.client().await.unwrap();
        for _ in 0..3 {
            assert!(Arc::ptr_eq(&first, &ca.client().await.unwrap()));
        }
        // Clones (the audit sender, the uploader, each session) share it.
        let other = ca.clone();
        assert!(Arc::ptr_eq(&first, &other.client().await.unwrap()));
        assert!(Arc::ptr_eq(&first, &ca.upload_session().await.unwrap().api));

        // A join into the same state directory: the next call uses the new identity.
        write_identity(d.path());
        let second = ca.client().await.unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&second, &other.client().await.unwrap()));
    }

    #[tokio::test]
    async fn a_missing_identity_is_reported_by_each_call_until_it_appears() {
        let d = tempfile::tempdir().unwrap();
        joined(d.path());
        let ca = CaClient::load(d.path().to_owned()).unwrap();
        for _ in 0..2 {
            let Err(e) = ca.client().await else {
                panic!("a client without an identity");
            };
            assert!(e.0.contains("No such file or directory"), "{}", e.0);
            assert_eq!(e.1, None);
        }
        write_identity(d.path());
        let made = ca.client().await.unwrap();
        assert!(Arc::ptr_eq(&made, &ca.client().await.unwrap()));
    }
}
