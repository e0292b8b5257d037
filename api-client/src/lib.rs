//! The HTTPS client of posternd's API, with the service CA pinned by fingerprint. Shared by
//! `postern`, `postern-shim` and `postern-gate`.
//!
//! There is no system trust store here: the only root is the certificate, among those the
//! server presents, whose SHA-256 equals `--ca-pin`. Everything else about the chain (the
//! signature, validity, the server name) is then checked by rustls' ordinary WebPKI verifier.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, OtherError,
    RootCertStore, SignatureScheme,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use postern_core::api::{
    CertResponse, EnrollRequest, EnrollResponse, ErrorBody, LoginRequest, PingResponse,
    RenewRequest,
};

/// The largest answer read from the server; a certificate response is a few kilobytes.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// The SHA-256 pin of the service CA certificate (`sha256:<64 hex>`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CaPin([u8; 32]);

impl CaPin {
    /// The pin of a DER certificate.
    pub fn of_der(der: &[u8]) -> CaPin {
        CaPin(Sha256::digest(der).into())
    }
}

impl FromStr for CaPin {
    type Err = String;
    fn from_str(s: &str) -> Result<CaPin, String> {
        postern_core::parse_ca_pin(s.trim()).map(CaPin)
    }
}

impl fmt::Display for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The base URL of posternd's API: `https://host[:port][/prefix]`, without a trailing `/`.
#[derive(Clone, PartialEq, Eq)]
pub struct CaUrl(String);

impl CaUrl {
    /// The URL as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CaUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<CaUrl, String> {
        let url = reqwest::Url::parse(s.trim()).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
        if url.scheme() != "https" {
            return Err(format!(
                "the CA URL must start with https:// (got {:?})",
                url.scheme()
            ));
        }
        if url.host_str().is_none() {
            return Err("the CA URL has no host".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the CA URL must not contain a user name or password".to_owned());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("the CA URL must not contain ? or #".to_owned());
        }
        Ok(CaUrl(url.as_str().trim_end_matches('/').to_owned()))
    }
}

impl fmt::Display for CaUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CaUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The pinned CA was not among the certificates the server presented.
#[derive(Debug, thiserror::Error)]
#[error(
    "certificate pin mismatch: the server did not present the service CA with pin {pin} \
     (wrong --ca-pin, wrong URL, or someone is intercepting the connection)"
)]
struct PinMismatch {
    pin: CaPin,
}

/// Trusts exactly the presented certificate whose SHA-256 equals the pin, then lets WebPKI
/// check that the server's certificate chains to it and names the host.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: CaPin,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    /// A verifier for `pin` using `provider`'s signature algorithms.
    pub fn new(pin: CaPin, provider: Arc<CryptoProvider>) -> Self {
        PinnedCaVerifier { pin, provider }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchor = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|c| CaPin::of_der(c.as_ref()) == self.pin)
            .ok_or_else(|| {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    PinMismatch { pin: self.pin },
                ))))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| {
                    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                        Arc::new(e),
                    )))
                })?;
        webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client identity (mTLS for `/v1/renew`): certificate chain and private key.
pub struct ClientIdentity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// Reads a PEM certificate chain and a PEM private key (PKCS#8).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Self> {
        let certs = rustls_pemfile::certs(&mut &cert_pem[..])
            .collect::<Result<Vec<_>, _>>()
            .context("reading the TLS client certificate")?;
        if certs.is_empty() {
            bail!("the TLS client certificate file holds no certificate");
        }
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .context("reading the TLS client key")?
            .context("the TLS client key file holds no private key")?;
        Ok(ClientIdentity { certs, key })
    }
}

/// The client's TLS configuration: aws-lc-rs, the pinned verifier, and optionally an identity.
pub fn tls_config(pin: CaPin, identity: Option<ClientIdentity>) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(PinnedCaVerifier::new(pin, provider.clone()));
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("configuring TLS")?
        // Not a weakening: the custom verifier is stricter than the default one, since it
        // trusts a single pinned CA instead of a system store.
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Ok(match identity {
        Some(id) => builder
            .with_client_auth_cert(id.certs, id.key)
            .context("loading the TLS client certificate and key")?,
        None => builder.with_no_client_auth(),
    })
}

/// Why an API call failed.
#[derive(Debug)]
pub enum ApiError {
    /// The server answered with a non-2xx status.
    Status {
        /// HTTP status.
        status: u16,
        /// The server's public message (sanitized).
        message: String,
        /// The id under which the server logged the details.
        request_id: Option<String>,
    },
    /// The TLS handshake failed (pin, certificate, or the server refused our identity).
    Tls {
        /// The URL called.
        url: String,
        /// What rustls reported.
        error: rustls::Error,
    },
    /// The server could not be reached or the connection broke.
    Transport {
        /// The URL called.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The server answered something this client cannot read.
    BadAnswer {
        /// The URL called.
        url: String,
        /// What went wrong.
        detail: String,
    },
}

impl ApiError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the server refused on purpose: bad credentials (401), policy (403), lock (423).
    pub fn is_refusal(&self) -> bool {
        matches!(self.status(), Some(401 | 403 | 423))
    }

    /// Whether the server rejected our TLS client identity during the handshake (expired,
    /// revoked or unknown certificate). Under TLS 1.3 this arrives as an alert after the
    /// client thought the handshake was done.
    pub fn is_identity_rejected(&self) -> bool {
        matches!(
            self,
            ApiError::Tls {
                error: rustls::Error::AlertReceived(
                    AlertDescription::BadCertificate
                        | AlertDescription::CertificateExpired
                        | AlertDescription::CertificateRevoked
                        | AlertDescription::CertificateUnknown
                        | AlertDescription::UnsupportedCertificate
                        | AlertDescription::UnknownCA
                        | AlertDescription::AccessDenied
                        | AlertDescription::CertificateRequired
                        | AlertDescription::HandshakeFailure
                ),
                ..
            }
        )
    }
}

fn describe_tls(e: &rustls::Error) -> String {
    match e {
        // Our own verifier errors carry a full sentence already.
        rustls::Error::InvalidCertificate(CertificateError::Other(o)) => o.0.to_string(),
        rustls::Error::InvalidCertificate(c) => format!("the server's certificate is invalid: {c}"),
        rustls::Error::AlertReceived(
            a @ (AlertDescription::BadCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired),
        ) => format!("the server did not accept this device's certificate ({a:?})"),
        rustls::Error::AlertReceived(a) => format!("the server refused the connection ({a:?})"),
        other => other.to_string(),
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Status {
                status,
                message,
                request_id,
            } => match request_id {
                Some(id) => write!(f, "{message} (request id {id})"),
                None => write!(f, "{message} (HTTP {status})"),
            },
            ApiError::Tls { url, error } => {
                write!(f, "TLS connection to {url} failed: {}", describe_tls(error))
            }
            ApiError::Transport { url, detail } => write!(f, "could not reach {url}: {detail}"),
            ApiError::BadAnswer { url, detail } => {
                write!(f, "unexpected answer from {url}: {detail}")
            }
        }
    }
}

impl std::error::Error for ApiError {}

/// Finds the rustls error in a transport error's chain. `io::Error::source` skips the error it
/// wraps, so wrapped errors are unpacked by hand.
fn find_tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            cur = Some(inner);
            continue;
        }
        cur = err.source();
    }
    None
}

fn transport_error(url: &str, e: reqwest::Error) -> ApiError {
    if let Some(t) = find_tls_error(&e) {
        return ApiError::Tls {
            url: url.to_owned(),
            error: t.clone(),
        };
    }
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    let detail = if e.is_timeout() {
        "timed out".to_owned()
    } else if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    };
    ApiError::Transport {
        url: url.to_owned(),
        detail,
    }
}

/// A connection to posternd's API.
pub struct Api {
    base: CaUrl,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Api {
    /// A client for `base`, trusting only the CA with `pin`, presenting `identity` if given.
    pub fn new(base: &CaUrl, pin: CaPin, identity: Option<ClientIdentity>) -> anyhow::Result<Api> {
        let tls = tls_config(pin, identity)?;
        // One request at a time: a single-threaded runtime is enough and starts no threads.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let _guard = rt.enter();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            // A redirect would leave the pinned origin's path; the API never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("postern/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTPS client")?;
        Ok(Api {
            base: base.clone(),
            http,
            rt,
        })
    }

    /// `GET /v1/ping`.
    pub fn ping(&self) -> Result<PingResponse, ApiError> {
        self.get("/v1/ping")
    }

    /// `POST /v1/enroll`.
    pub fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ApiError> {
        self.post("/v1/enroll", req)
    }

    /// `POST /v1/login`.
    pub fn login(&self, req: &LoginRequest) -> Result<CertResponse, ApiError> {
        self.post("/v1/login", req)
    }

    /// `POST /v1/renew` (needs a client identity).
    pub fn renew(&self, req: &RenewRequest) -> Result<CertResponse, ApiError> {
        self.post("/v1/renew", req)
    }

    /// `POST` a JSON body to `path` and read the JSON answer.
    pub fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, ApiError> {
        let url = self.url(path);
        self.call(&url, self.http.post(&url).json(body))
    }

    /// `PUT` raw bytes to `path` (with its query string) and read the JSON answer. The
    /// timeout is longer than other calls': a chunk of a recording may be megabytes.
    pub fn put_bytes<Resp: DeserializeOwned>(
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
        self.call(&url, req)
    }

    /// `POST` a JSON body to `path` and read the JSON answer, waiting up to `timeout` for it
    /// (a call the server may work on for long, such as hashing a large recording).
    pub fn post_with_timeout<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, ApiError> {
        let url = self.url(path);
        self.call(&url, self.http.post(&url).json(body).timeout(timeout))
    }

    /// `GET` `path` (with its query string) and read the JSON answer.
    pub fn get<Resp: DeserializeOwned>(&self, path: &str) -> Result<Resp, ApiError> {
        let url = self.url(path);
        self.call(&url, self.http.get(&url))
    }

    /// `GET` `path` and hand the answer's body to `each` piece by piece as it arrives, so
    /// that an answer of any size (a recording) takes bounded memory. Only the connection
    /// has a deadline, not the whole download. A refusal or failure of the server is an
    /// [`ApiError`] (converted into `E`), as for the other calls.
    pub fn get_streamed<E: From<ApiError>>(
        &self,
        path: &str,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        const NO_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);
        let url = self.url(path);
        self.rt.block_on(async {
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
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one request and reads its JSON answer.
    fn call<Resp: DeserializeOwned>(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Resp, ApiError> {
        self.rt.block_on(async {
            let resp = req.send().await.map_err(|e| transport_error(url, e))?;
            read_answer(url, resp).await
        })
    }
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

/// The error of a non-2xx answer: the server's JSON error body, or its status and text.
fn status_error(status: reqwest::StatusCode, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ApiError::Status {
            status: status.as_u16(),
            message: sanitize(&e.error),
            request_id: Some(sanitize(&e.request_id)),
        },
        Err(_) => ApiError::Status {
            status: status.as_u16(),
            message: format!(
                "the server answered {status}{}",
                if body.is_empty() {
                    String::new()
                } else {
                    format!(": {}", sanitize(&String::from_utf8_lossy(body)))
                }
            ),
            request_id: None,
        },
    }
}

/// Server-supplied text made safe for a terminal: control characters (which could move the
/// cursor or rewrite earlier lines) are escaped, and the length is bounded.
pub fn sanitize(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= 300 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The private key as PKCS#8 PEM, the form the TLS client loads.
pub fn ed25519_pkcs8_pem(key: &ssh_key::PrivateKey) -> anyhow::Result<zeroize::Zeroizing<String>> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let kp = key
        .key_data()
        .ed25519()
        .context("the key is not an Ed25519 key")?;
    let seed = zeroize::Zeroizing::new(kp.private.to_bytes());
    let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
    sk.to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the key as PKCS#8: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixtures from testdata/gen.sh (stock openssl, Ed25519, valid for 100 years from 2026).
    const CA: &[u8] = include_bytes!("../testdata/ca.der");
    const LEAF: &[u8] = include_bytes!("../testdata/leaf.der");
    const OTHER_CA: &[u8] = include_bytes!("../testdata/other-ca.der");
    const OTHER_LEAF: &[u8] = include_bytes!("../testdata/other-leaf.der");
    /// 2030-01-01T00:00:00Z, inside every fixture's validity window.
    const NOW: u64 = 1_893_456_000;

    fn verify(pin: CaPin, leaf: &[u8], chain: &[&[u8]], host: &str) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let v = PinnedCaVerifier::new(pin, provider);
        let leaf = CertificateDer::from(leaf.to_vec());
        let chain: Vec<CertificateDer<'static>> = chain
            .iter()
            .map(|c| CertificateDer::from(c.to_vec()))
            .collect();
        let name = ServerName::try_from(host.to_owned()).unwrap();
        v.verify_server_cert(
            &leaf,
            &chain,
            &name,
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(NOW)),
        )
        .map(|_| ())
    }

    #[test]
    fn accepts_chain_to_pinned_ca() {
        verify(CaPin::of_der(CA), LEAF, &[CA], "127.0.0.1").unwrap();
        verify(CaPin::of_der(CA), LEAF, &[CA], "localhost").unwrap();
    }

    #[test]
    fn rejects_wrong_pin() {
        let e = verify(CaPin::of_der(OTHER_CA), LEAF, &[CA], "127.0.0.1").unwrap_err();
        assert!(describe_tls(&e).contains("certificate pin mismatch"), "{e}");
        let e = verify(CaPin([7; 32]), LEAF, &[CA], "127.0.0.1").unwrap_err();
        assert!(describe_tls(&e).contains("certificate pin mismatch"), "{e}");
    }

    #[test]
    fn rejects_pinned_ca_that_did_not_sign_the_leaf() {
        // The attacker presents the real CA beside a leaf of their own CA.
        let e = verify(CaPin::of_der(CA), OTHER_LEAF, &[CA, OTHER_CA], "127.0.0.1").unwrap_err();
        assert!(!describe_tls(&e).contains("pin mismatch"), "{e}");
    }

    #[test]
    fn rejects_pin_of_the_leaf_itself() {
        verify(CaPin::of_der(LEAF), LEAF, &[CA], "127.0.0.1").unwrap_err();
    }

    #[test]
    fn rejects_wrong_host_name() {
        let e = verify(CaPin::of_der(CA), LEAF, &[CA], "example.com").unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");
    }

    #[test]
    fn rejects_garbage_certificates() {
        verify(CaPin([0; 32]), b"not a certificate", &[], "127.0.0.1").unwrap_err();
        // Garbage whose hash is pinned still has to parse and chain.
        verify(CaPin::of_der(b"junk"), LEAF, &[b"junk"], "127.0.0.1").unwrap_err();
    }

    #[test]
    fn pin_parses_and_displays_lowercase() {
        let pin = postern_core::ca_pin(CA);
        let p: CaPin = pin
            .to_uppercase()
            .replace("SHA256:", "sha256:")
            .parse()
            .unwrap();
        assert_eq!(p.to_string(), pin);
        assert_eq!(p, CaPin::of_der(CA));
        assert!("sha256:abcd".parse::<CaPin>().is_err());
        assert!("md5:00".parse::<CaPin>().is_err());
        assert!(format!("sha256:{}", "g".repeat(64))
            .parse::<CaPin>()
            .is_err());
    }

    #[test]
    fn ca_url_requires_https_and_drops_trailing_slash() {
        let u: CaUrl = "https://127.0.0.1:3080/".parse().unwrap();
        assert_eq!(u.as_str(), "https://127.0.0.1:3080");
        assert!("http://127.0.0.1:3080".parse::<CaUrl>().is_err());
        assert!("https://u:p@host".parse::<CaUrl>().is_err());
        assert!("https://host/?x=1".parse::<CaUrl>().is_err());
        assert!("not a url".parse::<CaUrl>().is_err());
    }

    #[test]
    fn config_builds_without_identity() {
        tls_config(CaPin::of_der(CA), None).unwrap();
    }

    #[test]
    fn identity_rejection_is_recognised_from_alerts_only() {
        let tls = |a| ApiError::Tls {
            url: "u".into(),
            error: rustls::Error::AlertReceived(a),
        };
        assert!(tls(AlertDescription::CertificateExpired).is_identity_rejected());
        assert!(tls(AlertDescription::CertificateRevoked).is_identity_rejected());
        assert!(!tls(AlertDescription::InternalError).is_identity_rejected());
        let status = ApiError::Status {
            status: 403,
            message: "m".into(),
            request_id: None,
        };
        assert!(status.is_refusal() && !status.is_identity_rejected());
    }

    #[test]
    fn sanitize_escapes_terminal_controls_and_truncates() {
        assert_eq!(sanitize("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert!(sanitize(&"x".repeat(10_000)).chars().count() <= 301);
    }
}
