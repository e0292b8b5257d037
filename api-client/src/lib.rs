//! The HTTPS client of posternd's API, with the service CA pinned by fingerprint. Shared by
//! `postern`, `postern-shim` and `postern-gate`.
//!
//! There is no system trust store here: the only root is the certificate, among those the
//! server presents, whose SHA-256 equals `--ca-pin`. Everything else about the chain (the
//! signature, validity, the server name) is then checked by rustls' ordinary WebPKI verifier.
//!
//! A client may be given several URLs of one CA (instances sharing its keys, hence the one
//! pin) and fails over between them; see [`Client`].
//!
//! As in reqwest, the client is async at its core ([`Client`], which the gateway keeps for
//! its lifetime) and [`blocking::Client`] wraps it for the CLI and the shim, which know it by
//! its older name [`Api`].

pub mod blocking;
mod client;
mod error;
mod failover;
mod pin;
mod tls;
mod url;

pub use client::Client;
pub use error::{sanitize, ApiError, Resend};
pub use failover::{FIRST_BACKOFF, ROUNDS};
pub use pin::{CaPin, PinnedCaVerifier};
pub use tls::{ed25519_pkcs8_pem, tls_config, ClientIdentity};
pub use url::{CaUrl, CaUrls};

/// The blocking client, under the name the CLI and the shim use.
pub use blocking::Client as Api;
