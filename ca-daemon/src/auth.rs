//! Credentials: argon2id passwords, RFC 6238 one-time codes, invites, and the lockout rules.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

/// Failures before an account is locked.
pub const MAX_FAILURES: i64 = 5;
/// How long a lock lasts.
pub const LOCK_SECS: u64 = 15 * 60;
/// How long an invite is valid.
pub const INVITE_SECS: u64 = 24 * 3600;
/// RFC 6238 time step.
const STEP: u64 = 30;

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| anyhow!("no randomness: {e}"))?;
    Ok(b)
}

/// Hashes a password with argon2id (the crate's default, OWASP-recommended parameters).
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&random::<16>()?).map_err(|e| anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow!("argon2: {e}"))?
        .to_string())
}

/// A hash of a random password, used for unknown users so that they cost the same time.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password(&hex::encode(random::<16>().unwrap_or([7; 16])))
            .unwrap_or_else(|_| String::from("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$Vw0Ke+yt0bx2CQ3Q1dZNJPcf2DGRrjA3Pa9KnVS1Qkw"))
    })
}

/// Verifies a password; with no stored hash it verifies against a dummy one and fails, so
/// that unknown users take as long as known ones.
pub fn verify_password(stored: Option<&str>, password: &str) -> bool {
    let hash = stored.unwrap_or_else(|| dummy_hash());
    let ok = PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false);
    ok && stored.is_some()
}

/// A new TOTP secret (160 bits, RFC 4226's recommendation).
pub fn new_totp_secret() -> Result<Vec<u8>> {
    Ok(random::<20>()?.to_vec())
}

fn totp(secret: &[u8], account: &str) -> Result<TOTP> {
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        STEP,
        secret.to_vec(),
        Some("Postern".to_owned()),
        account.replace(':', "_"),
    )
    .map_err(|e| anyhow!("totp: {e}"))
}

/// The `otpauth://` URI for authenticator apps.
pub fn otpauth_uri(secret: &[u8], user: &str, cluster: &str) -> Result<String> {
    Ok(totp(secret, &format!("{user}@{cluster}"))?.get_url())
}

/// The time step a code matches within ±1 step of `now` (RFC 6238 §5.2), if any. Every
/// candidate is compared in constant time.
pub fn match_step(secret: Option<&[u8]>, code: &str, now: u64) -> Option<u64> {
    let fallback = [0u8; 20];
    let t = totp(secret.unwrap_or(&fallback), "x").ok()?;
    let current = now / STEP;
    let mut found = None;
    for step in [current.saturating_sub(1), current, current + 1] {
        let expected = t.generate(step * STEP);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) && found.is_none() {
            found = Some(step);
        }
    }
    found.filter(|_| secret.is_some())
}

/// A new invite token (strict alphabet: lowercase hex) and its stored hash.
pub fn new_invite() -> Result<(String, String)> {
    let token = hex::encode(random::<20>()?);
    let hash = invite_hash(&token);
    Ok((token, hash))
}

/// The stored form of an invite.
pub fn invite_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time comparison of two stored hashes.
pub fn same_hash(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Failure counters for names that are not users, so that they lock exactly like real ones
/// and a caller cannot tell the two apart. Bounded: cleared when it grows past its cap.
#[derive(Default)]
pub struct GhostLockout {
    map: Mutex<HashMap<String, (i64, u64)>>,
}

impl GhostLockout {
    const CAP: usize = 10_000;

    /// Records a failure; returns whether the name is (now or already) locked.
    pub fn fail(&self, name: &str, now: u64) -> bool {
        let Ok(mut map) = self.map.lock() else {
            return false;
        };
        if map.len() >= Self::CAP {
            map.clear();
        }
        let e = map.entry(name.to_owned()).or_insert((0, 0));
        if e.1 > now {
            return true;
        }
        e.0 += 1;
        if e.0 >= MAX_FAILURES {
            *e = (0, now + LOCK_SECS);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_right_password_and_rejects_wrong() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(Some(&h), "correct horse"));
        assert!(!verify_password(Some(&h), "correct horsE"));
        assert!(!verify_password(None, "correct horse"));
        assert!(!verify_password(Some("garbage"), "x"));
    }

    #[test]
    fn accepts_codes_within_one_step_only() {
        let secret = new_totp_secret().unwrap();
        let t = totp(&secret, "a").unwrap();
        let now = 1_800_000_015;
        let step = now / 30;
        for (offset, ok) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
            let s = (step as i64 + offset) as u64;
            let code = t.generate(s * 30);
            assert_eq!(
                match_step(Some(&secret), &code, now) == Some(s),
                ok,
                "offset {offset}"
            );
        }
        assert_eq!(match_step(Some(&secret), "12345", now), None);
        assert_eq!(match_step(Some(&secret), "", now), None);
        assert_eq!(match_step(None, &t.generate(now), now), None);
    }

    #[test]
    fn otpauth_uri_carries_secret_and_issuer() {
        let uri = otpauth_uri(&[1; 20], "alice", "c.test").unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(uri.contains("secret="), "{uri}");
        assert!(uri.contains("issuer=Postern"), "{uri}");
    }

    #[test]
    fn ghost_lockout_locks_after_five() {
        let g = GhostLockout::default();
        for _ in 0..5 {
            assert!(!g.fail("nobody", 100));
        }
        assert!(g.fail("nobody", 101));
        assert!(!g.fail("nobody", 100 + LOCK_SECS + 1));
    }
}
