//! Servers and gateways: join tokens, joining, the per-node bundle (policy slice, locks,
//! KRL, CA keys), host-certificate renewal, session events, locks, and the admin's
//! break-glass signer. Each operation is one transaction with its audit events.

mod bundle;
mod events;
mod inventory;
mod join;
mod locks;
mod sign;
mod tokens;

use ssh_key::PublicKey;

use crate::service::Refusal;

pub(crate) use join::{host_cert_as, host_principals};
pub use locks::{active_locks, locked_logins};

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A key the host CA may certify: Ed25519 only (what postern-shim and postern-gate generate;
/// no DSA, no short RSA, nothing weaker than ssh-keygen's default).
pub(crate) fn parse_host_key(line: &str, what: &str) -> std::result::Result<PublicKey, Refusal> {
    let k = parse_key(line, what)?;
    if k.algorithm() != ssh_key::Algorithm::Ed25519 {
        return Err(Refusal::BadRequest(format!(
            "{what} must be an Ed25519 key (the host CA signs no {})",
            k.algorithm().as_str()
        )));
    }
    Ok(k)
}

pub(crate) fn parse_key(line: &str, what: &str) -> std::result::Result<PublicKey, Refusal> {
    if line.len() > 8192 {
        return Err(Refusal::BadRequest(format!("{what} is too long")));
    }
    PublicKey::from_openssh(line.trim())
        .map_err(|_| Refusal::BadRequest(format!("{what} is not an OpenSSH public key")))
}
