//! The service X.509 CA (rcgen): the API's TLS certificate and short-lived mTLS client
//! identities for users, bound to the same Ed25519 key as their SSH certificate.

use anyhow::{anyhow, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, PKCS_ED25519,
};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// The service CA: its certificate and key.
pub struct ServiceCa {
    /// The CA certificate (DER).
    pub cert_der: Vec<u8>,
    /// The CA certificate (PEM).
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ts(unix: u64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(i64::try_from(unix)?).context("timestamp out of range")
}

/// Generates a new service CA (ECDSA P-256), valid ten years from `now`: the certificate's
/// PEM and the key's, which is wiped from memory when dropped.
pub fn generate_ca(cluster: &str, now: u64) -> Result<(String, Zeroizing<String>)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Postern service CA ({cluster})"),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Postern");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = ts(now.saturating_sub(3600))?;
    params.not_after = ts(now + 10 * 365 * 86_400)?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
}

impl ServiceCa {
    /// Loads the CA from its PEM certificate and PKCS#8 key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<ServiceCa> {
        let key = KeyPair::from_pem(key_pem).context("service CA key")?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).context("service CA certificate")?;
        let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .ok_or_else(|| anyhow!("no certificate in service CA file"))??;
        Ok(ServiceCa {
            cert_der: der.to_vec(),
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// Issues the API's server certificate for the given DNS names and IP addresses.
    /// The key's PEM is wiped from memory when dropped.
    pub fn issue_server_cert(
        &self,
        names: &[String],
        now: u64,
    ) -> Result<(String, Zeroizing<String>)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for n in names {
            params
                .subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(n.clone().try_into()?),
                });
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "posternd API");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = ts(now.saturating_sub(3600))?;
        params.not_after = ts(now + 2 * 365 * 86_400)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
    }

    /// Issues a client identity for an Ed25519 key (the user's SSH key): CN = the subject
    /// name, the given serial and validity window.
    pub fn issue_client_cert(
        &self,
        subject: &str,
        ed25519_public: &[u8; 32],
        serial: u64,
        not_before: u64,
        not_after: u64,
    ) -> Result<String> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, subject);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = ts(not_before)?;
        params.not_after = ts(not_after)?;
        let cert = params.signed_by(&Ed25519Public(*ed25519_public), &self.issuer)?;
        Ok(cert.pem())
    }
}

/// A raw Ed25519 public key as rcgen's subject key.
struct Ed25519Public([u8; 32]);

impl PublicKeyData for Ed25519Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ED25519
    }
}

/// What the API needs from a client certificate that rustls already verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate's serial.
    pub serial: u64,
    /// The subject CN.
    pub subject: String,
    /// The Ed25519 public key.
    pub ed25519: [u8; 32],
}

/// Reads serial, CN and the Ed25519 key from a DER client certificate.
pub fn parse_client_cert(der: &[u8]) -> Result<ClientIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("client certificate does not parse: {e}"))?;
    let raw = cert.raw_serial();
    if raw.len() > 9 || (raw.len() == 9 && raw[0] != 0) {
        return Err(anyhow!("client certificate serial is not one of ours"));
    }
    let serial = raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let subject = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| anyhow!("client certificate has no common name"))?
        .to_owned();
    let spki = &cert.tbs_certificate.subject_pki;
    // 1.3.101.112 is id-Ed25519 (RFC 8410).
    if spki.algorithm.algorithm.to_id_string() != "1.3.101.112" {
        return Err(anyhow!("client certificate key is not Ed25519"));
    }
    let ed25519: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| anyhow!("client certificate key has the wrong length"))?;
    Ok(ClientIdentity {
        serial,
        subject,
        ed25519,
    })
}
