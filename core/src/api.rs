//! Wire types of the HTTPS API (JSON), shared by `posternd` and its clients.
//!
//! Secrets travel in [`Secret`], whose `Debug` hides the value and which is zeroized on drop.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::names::{ClusterName, Login, Username};
use crate::policy::Permit;
use crate::ttl::Ttl;

/// The largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// A secret string (password, one-time code, invite token). Never printed, zeroized on drop.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    /// The value; call sites that use it are the places to audit.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// `GET /v1/ping`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingResponse {
    /// The cluster's name.
    pub cluster: ClusterName,
    /// Server version.
    pub version: String,
}

/// `POST /v1/enroll`: set a password with a one-time invite.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The user.
    pub user: Username,
    /// The invite printed by `posternd users add`.
    pub invite: Secret,
    /// The new password.
    pub password: Secret,
}

/// Answer to an enrolment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    /// `otpauth://totp/...` with the TOTP secret.
    pub otpauth_uri: Secret,
}

/// `POST /v1/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The user.
    pub user: Username,
    /// The password.
    pub password: Secret,
    /// The current TOTP code.
    pub otp: Secret,
    /// The new public key (OpenSSH one-line form; Ed25519).
    pub public_key: String,
    /// Requested certificate lifetime.
    #[serde(default)]
    pub ttl: Option<Ttl>,
}

/// `POST /v1/renew` (mTLS with the current X.509 identity).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// Requested certificate lifetime.
    #[serde(default)]
    pub ttl: Option<Ttl>,
}

/// Answer to a login or renewal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertResponse {
    /// The cluster's name.
    pub cluster: ClusterName,
    /// The user.
    pub user: Username,
    /// The OpenSSH user certificate (one line).
    pub ssh_certificate: String,
    /// The X.509 client certificate for the same key (PEM).
    pub x509_certificate: String,
    /// The service CA (PEM), to pin later connections.
    pub x509_ca: String,
    /// Host CA public keys (OpenSSH one-line form), for `@cert-authority`.
    pub host_ca_keys: Vec<String>,
    /// The gateway's `HOST:PORT`, when the cluster has one.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Principals of the certificate.
    pub principals: Vec<Login>,
    /// Extensions of the certificate.
    pub permits: Vec<Permit>,
    /// `valid_before` of the certificate (Unix seconds).
    pub valid_before: u64,
    /// After this Unix time, `postern renew` is refused and a password login is needed.
    pub renew_until: u64,
    /// The granted lifetime.
    pub ttl: Ttl,
    /// The requested lifetime when it was capped.
    #[serde(default)]
    pub capped_from: Option<Ttl>,
}

/// Every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Public message.
    pub error: String,
    /// Id under which the server logged the details.
    pub request_id: String,
}
