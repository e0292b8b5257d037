//! Postern's domain: names, policy, certificate issuing and strict validation, API wire types.
//!
//! This crate does no network or database access, and its rules take time as an argument
//! (`clock` is the one place the binaries read the clock from), so every rule here is
//! testable without a running system.

pub mod api;
pub mod atomic;
pub mod batch;
pub mod cast;
pub mod cert;
pub mod clock;
pub mod cut;
pub mod ids;
pub mod krl;
pub mod names;
pub mod policy;
pub mod ttl;

pub use ids::{CertKind, LockTarget, NodeKind, RecordingId, Serial, SessionId};
pub use names::{ClusterName, KeyId, Labels, Login, NameError, NodeName, Principal, Username};
pub use policy::{
    Deny, HostCertApproval, LoginDecision, NodeAccessApproval, Permit, Policy, PolicyError,
    UserCertApproval,
};
pub use ttl::Ttl;

/// The `sha256:<64 hex>` pin of a DER certificate (the service CA).
pub fn ca_pin(der: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(der)))
}

/// Parses a pin; returns the 32 digest bytes.
pub fn parse_ca_pin(s: &str) -> Result<[u8; 32], String> {
    let hexpart = s
        .strip_prefix("sha256:")
        .ok_or_else(|| "a CA pin looks like sha256:<64 hex digits>".to_owned())?;
    let mut out = [0u8; 32];
    if hexpart.len() != 64 {
        return Err("a CA pin looks like sha256:<64 hex digits>".to_owned());
    }
    hex::decode_to_slice(hexpart.to_ascii_lowercase(), &mut out)
        .map_err(|_| "a CA pin looks like sha256:<64 hex digits>".to_owned())?;
    Ok(out)
}

/// The SHA-256 (lowercase hex) of everything `r` yields, read in 1 MiB pieces (for files of
/// any size, such as recordings).
pub fn sha256_hex_of(mut r: impl std::io::Read) -> std::io::Result<String> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(h.finalize()))
}
