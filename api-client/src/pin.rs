//! The CA pin and the verifier built on it: the only trust root is the presented certificate
//! whose SHA-256 equals the pin; everything else about the chain is ordinary WebPKI.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// The SHA-256 pin of the service CA certificate (`sha256:<64 hex>`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CaPin(pub(crate) [u8; 32]);

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::describe_tls;

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
}
