//! The client's TLS configuration: aws-lc-rs, the pinned verifier, and the mTLS identity
//! (with the PKCS#8 form of an Ed25519 key that the identity is loaded from).

use std::sync::Arc;

use anyhow::{bail, Context as _};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ClientConfig;

use crate::pin::{CaPin, PinnedCaVerifier};

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
///
/// Sessions are not resumed: every new connection checks the pin and presents the identity
/// in a full handshake, as when each call built its own configuration. A client saves
/// handshakes by keeping its connections open instead (see [`crate::Client`]).
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
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.certs, id.key)
            .context("loading the TLS client certificate and key")?,
        None => builder.with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    Ok(config)
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

    const CA: &[u8] = include_bytes!("../testdata/ca.der");

    #[test]
    fn config_builds_without_identity() {
        tls_config(CaPin::of_der(CA), None).unwrap();
    }
}
