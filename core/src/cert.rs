//! OpenSSH certificate issuing and the one strict validator.
//!
//! Issuing follows PROTOCOL.certkeys: a random nonce, a unique serial, a `valid_after`
//! backdated one minute for clock skew. `ssh_key::Certificate::validate` checks only the
//! signature, the CA fingerprint and the validity window; [`CertValidator`] adds everything
//! else a careful sshd checks (type, principals, critical options, CA key shape).
//!
//! Signing needs an approval: [`Signer::sign`] takes a [`ToBeSigned`], which only the three
//! `issue_*` functions here make, each from the approval of its own CA (a
//! [`UserCertApproval`], a [`NodeAccessApproval`], a [`HostCertApproval`]), and those only
//! the policy's decisions make. Signing without one does not compile:
//!
//! ```compile_fail
//! // A ToBeSigned cannot be made outside this module ...
//! fn forge(b: ssh_key::certificate::Builder) -> postern_core::cert::ToBeSigned {
//!     postern_core::cert::ToBeSigned(b)
//! }
//! ```
//!
//! ```compile_fail
//! // ... nor an approval outside the policy's decisions.
//! fn forge(a: &postern_core::UserCertApproval) -> postern_core::UserCertApproval {
//!     postern_core::UserCertApproval { ttl: a.ttl(), ..a.clone() }
//! }
//! ```
//!
//! ```
//! // What does compile: an approval from a decision, signed by the issue function.
//! use postern_core::cert::{generate_ed25519, issue_user_cert, IssueParams, KeySigner};
//! let policy = postern_core::Policy::parse(
//!     "[roles.dev]\nlogins = [\"{user}\"]\nnodes = { \"*\" = \"*\" }\n[users.alice]\nroles = [\"dev\"]\n",
//!     "policy.toml",
//! ).unwrap();
//! let d = policy.decide_login(&"alice".parse().unwrap(), None).unwrap();
//! let ca = KeySigner::new(generate_ed25519("ca").unwrap());
//! let user = generate_ed25519("alice").unwrap();
//! let cert = issue_user_cert(&ca, &d.approval, user.public_key(), IssueParams { serial: 1, now: 1_000_000 }).unwrap();
//! assert_eq!(cert.valid_principals(), ["alice"]);
//! ```

use std::collections::BTreeMap;

use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Certificate, HashAlg, PrivateKey, PublicKey};

use crate::names::{KeyId, Principal};
use crate::policy::{HostCertApproval, NodeAccessApproval, Permit, UserCertApproval};

/// Backdating of `valid_after`, so that a server whose clock is slightly behind accepts a
/// certificate that was just issued.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// The most principals a certificate may carry (sshd caps at 256 too).
pub const MAX_PRINCIPALS: usize = 256;

/// Critical options this code knows (PROTOCOL.certkeys). Callers must enforce those present.
pub const KNOWN_CRITICAL_OPTIONS: [&str; 3] =
    ["force-command", "source-address", "verify-required"];

/// Errors of issuing or validating.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The certificate is of the other type (host vs user).
    #[error("certificate is a {found} certificate, expected a {expected} certificate")]
    WrongType {
        /// Expected type.
        expected: &'static str,
        /// Found type.
        found: &'static str,
    },
    /// The signing key is not one of the trusted CAs.
    #[error("certificate is not signed by a trusted CA (signed by {fingerprint})")]
    UntrustedCa {
        /// SHA-256 fingerprint of the signing key.
        fingerprint: String,
    },
    /// The CA key inside the certificate is itself a certificate.
    #[error("certificate's CA key is itself a certificate")]
    CaIsCertificate,
    /// Signature does not verify.
    #[error("certificate signature is invalid")]
    BadSignature,
    /// `now >= valid_before`.
    #[error("certificate expired (now {now}, valid before {not_after})")]
    Expired {
        /// Unix time of the check.
        now: u64,
        /// `valid_before`.
        not_after: u64,
    },
    /// `now < valid_after`.
    #[error("certificate not yet valid (now {now}, valid after {not_before})")]
    NotYetValid {
        /// Unix time of the check.
        now: u64,
        /// `valid_after`.
        not_before: u64,
    },
    /// No principals: OpenSSH would read that as "valid for anyone".
    #[error("certificate has no principals")]
    NoPrincipals,
    /// More principals than [`MAX_PRINCIPALS`].
    #[error("certificate has {count} principals, more than {MAX_PRINCIPALS}")]
    TooManyPrincipals {
        /// How many.
        count: usize,
    },
    /// A principal that is not a safe name.
    #[error("certificate has an invalid principal: {0}")]
    BadPrincipal(String),
    /// The key id is not a safe name.
    #[error("certificate has an invalid key id: {0}")]
    BadKeyId(String),
    /// A critical option this code does not know (PROTOCOL.certkeys: must refuse).
    #[error("certificate has unknown critical option {name:?}")]
    UnknownCriticalOption {
        /// Option name (truncated).
        name: String,
    },
    /// The ssh-key crate refused to build or sign.
    #[error("certificate encoding failed: {0}")]
    Encoding(String),
}

fn type_name(t: CertType) -> &'static str {
    match t {
        CertType::User => "user",
        CertType::Host => "host",
    }
}

/// A certificate ready for a CA's signature. Only this module's `issue_*` functions make one,
/// each from an approval, so that whatever holds a [`Signer`] signs only what the policy
/// decided.
pub struct ToBeSigned(Builder);

impl ToBeSigned {
    /// Signs with a private key: for [`Signer`] implementations (an HSM or agent backend).
    pub fn sign_with(self, key: &PrivateKey) -> Result<Certificate, CertError> {
        self.0
            .sign(key)
            .map_err(|e| CertError::Encoding(e.to_string()))
    }
}

/// Signs certificates with a CA key. One trait so that an HSM or agent backend can come later.
pub trait Signer: Send + Sync {
    /// The CA's public key.
    fn public_key(&self) -> &PublicKey;
    /// Signs a certificate that an `issue_*` function prepared from an approval.
    fn sign(&self, tbs: ToBeSigned) -> Result<Certificate, CertError>;
}

/// A CA key held in memory.
pub struct KeySigner {
    key: PrivateKey,
    public: PublicKey,
}

impl KeySigner {
    /// Wraps a private key.
    pub fn new(key: PrivateKey) -> Self {
        let public = key.public_key().clone();
        KeySigner { key, public }
    }
}

impl Signer for KeySigner {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }
    fn sign(&self, tbs: ToBeSigned) -> Result<Certificate, CertError> {
        tbs.sign_with(&self.key)
    }
}

/// Generates an Ed25519 key pair from 32 random bytes from the operating system.
pub fn generate_ed25519(comment: &str) -> Result<PrivateKey, CertError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| CertError::Encoding(e.to_string()))?;
    let kp = ssh_key::private::Ed25519Keypair::from_seed(&seed);
    seed.iter_mut().for_each(|b| *b = 0);
    let mut key = PrivateKey::from(kp);
    key.set_comment(comment);
    Ok(key)
}

fn nonce() -> Result<[u8; 32], CertError> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).map_err(|e| CertError::Encoding(e.to_string()))?;
    Ok(n)
}

/// What identifies one issued certificate.
#[derive(Debug, Clone, Copy)]
pub struct IssueParams {
    /// Unique, non-zero serial (allocated by the caller's durable store).
    pub serial: u64,
    /// Unix time of issuing.
    pub now: u64,
}

/// The fields every certificate has: a random nonce, the subject key, the validity window
/// (backdated by [`CLOCK_SKEW_SECS`]), serial, type and key id.
fn builder(
    subject: &PublicKey,
    ttl_secs: u64,
    cert_type: CertType,
    key_id: &KeyId,
    p: IssueParams,
) -> Result<Builder, CertError> {
    let mut b = Builder::new(
        nonce()?.to_vec(),
        subject.key_data().clone(),
        p.now.saturating_sub(CLOCK_SKEW_SECS),
        p.now.saturating_add(ttl_secs),
    )
    .map_err(enc)?;
    b.serial(p.serial).map_err(enc)?;
    b.cert_type(cert_type).map_err(enc)?;
    b.key_id(key_id.as_str()).map_err(enc)?;
    Ok(b)
}

fn enc(e: ssh_key::Error) -> CertError {
    CertError::Encoding(e.to_string())
}

/// Issues a user certificate exactly as the policy approved it: principals = logins,
/// key id = the user name, extensions = the permits.
pub fn issue_user_cert(
    signer: &dyn Signer,
    approval: &UserCertApproval,
    subject: &PublicKey,
    p: IssueParams,
) -> Result<Certificate, CertError> {
    let key_id = KeyId::from(approval.user());
    let mut b = builder(
        subject,
        approval.ttl().as_secs(),
        CertType::User,
        &key_id,
        p,
    )?;
    for l in approval.logins() {
        b.valid_principal(l.as_str()).map_err(enc)?;
    }
    for permit in approval.permits() {
        b.extension(permit.extension(), "").map_err(enc)?;
    }
    signer.sign(ToBeSigned(b))
}

/// Issues a node-access certificate exactly as the policy approved it: its one login as the
/// only principal, the approved permits, and a key id that names the user and the session
/// (`USER/SESSION`, which the shim's PAM helper reports). `source_address` (the gateway's
/// egress addresses) becomes the `source-address` critical option: sshd then accepts the
/// certificate only from them, so a copy is useless elsewhere.
pub fn issue_node_access_cert(
    signer: &dyn Signer,
    approval: &NodeAccessApproval,
    key_id: &KeyId,
    subject: &PublicKey,
    source_address: Option<&str>,
    p: IssueParams,
) -> Result<Certificate, CertError> {
    let mut b = builder(subject, approval.ttl().as_secs(), CertType::User, key_id, p)?;
    b.valid_principal(approval.login().as_str()).map_err(enc)?;
    for permit in approval.permits() {
        b.extension(permit.extension(), "").map_err(enc)?;
    }
    if let Some(s) = source_address {
        b.critical_option("source-address", s).map_err(enc)?;
    }
    signer.sign(ToBeSigned(b))
}

/// Issues a host certificate with the approved names and lifetime.
pub fn issue_host_cert(
    signer: &dyn Signer,
    approval: &HostCertApproval,
    subject: &PublicKey,
    p: IssueParams,
) -> Result<Certificate, CertError> {
    let ttl = approval.ttl().as_secs();
    let mut b = builder(subject, ttl, CertType::Host, approval.key_id(), p)?;
    for pr in approval.principals() {
        b.valid_principal(pr.as_str()).map_err(enc)?;
    }
    signer.sign(ToBeSigned(b))
}

/// A certificate that passed [`CertValidator::validate`].
#[derive(Debug, Clone)]
pub struct ValidCert {
    /// The certificate itself.
    pub cert: Certificate,
    /// Parsed principals.
    pub principals: Vec<Principal>,
    /// Parsed key id.
    pub key_id: KeyId,
    /// Known extensions mapped to permits (unknown extensions are ignored, as sshd does).
    pub permits: Vec<Permit>,
    /// Critical options present (all known); the caller must enforce them.
    pub critical_options: BTreeMap<String, String>,
}

/// The one strict validator, used everywhere a certificate is accepted.
pub struct CertValidator<'a> {
    /// The CAs trusted for this purpose.
    pub trusted: &'a [PublicKey],
    /// The expected certificate type.
    pub cert_type: CertType,
}

impl CertValidator<'_> {
    /// Validates at Unix time `now`.
    pub fn validate(&self, cert: &Certificate, now: u64) -> Result<ValidCert, CertError> {
        if cert.cert_type() != self.cert_type {
            return Err(CertError::WrongType {
                expected: type_name(self.cert_type),
                found: type_name(cert.cert_type()),
            });
        }
        // A CA key encoded as a certificate (`*-cert-v01@openssh.com`) is refused outright, as
        // sshd does (sshkey_certify refuses it too).
        if cert.signature_key().is_certificate()
            || cert.signature_key().algorithm().as_str().contains("-cert-")
        {
            return Err(CertError::CaIsCertificate);
        }
        let fp = cert.signature_key().fingerprint(HashAlg::Sha256);
        if !self
            .trusted
            .iter()
            .any(|ca| ca.key_data().fingerprint(HashAlg::Sha256) == fp)
        {
            return Err(CertError::UntrustedCa {
                fingerprint: fp.to_string(),
            });
        }
        if cert.verify_signature().is_err() {
            return Err(CertError::BadSignature);
        }
        // PROTOCOL.certkeys: valid after <= current time < valid before.
        if now < cert.valid_after() {
            return Err(CertError::NotYetValid {
                now,
                not_before: cert.valid_after(),
            });
        }
        if now >= cert.valid_before() {
            return Err(CertError::Expired {
                now,
                not_after: cert.valid_before(),
            });
        }
        // Belt and braces: the library's own check must agree.
        cert.validate_at(now, [&fp])
            .map_err(|_| CertError::BadSignature)?;
        let names = cert.valid_principals();
        if names.is_empty() {
            return Err(CertError::NoPrincipals);
        }
        if names.len() > MAX_PRINCIPALS {
            return Err(CertError::TooManyPrincipals { count: names.len() });
        }
        let principals = names
            .iter()
            .map(|p| {
                p.parse::<Principal>()
                    .map_err(|e| CertError::BadPrincipal(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let key_id: KeyId = cert
            .key_id()
            .parse()
            .map_err(|e: crate::names::NameError| CertError::BadKeyId(e.to_string()))?;
        let mut critical_options = BTreeMap::new();
        for (name, value) in cert.critical_options().iter() {
            let known =
                self.cert_type == CertType::User && KNOWN_CRITICAL_OPTIONS.contains(&name.as_str());
            if !known {
                return Err(CertError::UnknownCriticalOption {
                    name: name.chars().take(64).collect(),
                });
            }
            critical_options.insert(name.clone(), value.clone());
        }
        let permits = cert
            .extensions()
            .keys()
            .filter_map(|k| Permit::from_extension(k))
            .collect();
        Ok(ValidCert {
            cert: cert.clone(),
            principals,
            key_id,
            permits,
            critical_options,
        })
    }
}
