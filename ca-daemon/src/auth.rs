//! Credentials: argon2id passwords, RFC 6238 one-time codes, invites, and the lockout rules.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

/// Failures that start each lock (see [`after_failure`]).
pub const MAX_FAILURES: i64 = 5;
/// How long the first lock lasts; each next one lasts twice as long.
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

/// What one more failed login does to an account (a user's row, or an unknown name's entry in
/// [`GhostLockout`]: both follow this one rule, so that a caller cannot tell them apart).
///
/// Failures count from the last successful login and are not forgotten when a lock ends:
/// every [`MAX_FAILURES`]-th failure starts a lock, the first [`LOCK_SECS`] long and each next
/// one twice as long as the one before (15 min, 30 min, 1 h, 2 h, 4 h), and the
/// [`HARD_LOCK_AT`]-th lock (30 failures without a success) is hard: it lasts until
/// `posternd users reset`. Attempts during a lock are refused unchecked and count nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterFailure {
    /// Failures since the last successful login, this one included.
    pub failures: i64,
    /// The lock this failure starts, if any.
    pub lock: Option<Lock>,
}

/// A lock started by a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// The `nth` lock since the last success, in force until `until` (Unix seconds).
    Until {
        /// 1 for the first lock.
        nth: i64,
        /// When it ends.
        until: u64,
    },
    /// Locked until an administrator runs `posternd users reset`.
    Hard,
}

/// The lock that is hard.
pub const HARD_LOCK_AT: i64 = 6;

/// How long the `nth` (1-based) timed lock lasts: [`LOCK_SECS`] doubled for each lock before it.
pub fn lock_secs(nth: i64) -> u64 {
    let shift = u32::try_from((nth - 1).clamp(0, 20)).unwrap_or(20);
    LOCK_SECS << shift
}

/// The one lockout rule: the state after one more failure, given the failures since the last
/// success before it.
pub fn after_failure(failures_before: i64, now: u64) -> AfterFailure {
    let failures = failures_before.max(0).saturating_add(1);
    let lock = if failures >= MAX_FAILURES * HARD_LOCK_AT {
        // Fail closed: a count past the hard lock (never written by this version) is hard too.
        Some(Lock::Hard)
    } else if failures % MAX_FAILURES == 0 {
        let nth = failures / MAX_FAILURES;
        Some(Lock::Until {
            nth,
            until: now.saturating_add(lock_secs(nth)),
        })
    } else {
        None
    };
    AfterFailure { failures, lock }
}

/// A short keyed hash of a name that is not a user, for audit rows: repeated tries of one name
/// can be told apart from many names, but the name itself (perhaps a password typed into the
/// user field) is never stored. The key is random per daemon process and never written down,
/// so the tag cannot be reversed by guessing names offline.
pub fn unknown_name_tag(name: &str) -> String {
    static KEY: OnceLock<Option<[u8; 32]>> = OnceLock::new();
    // Without randomness there is no secret key, and a tag could be reversed: none then.
    let Some(key) = KEY.get_or_init(|| random::<32>().ok()) else {
        return "untagged".to_owned();
    };
    let mut h = Sha256::new();
    h.update(key);
    h.update(name.as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// How a name that is not a user appears in the failure summaries' `users`: `<unknown> TAG`
/// (no user name contains `<` or a space, so it cannot be taken for one).
pub fn unknown_name_label(name: &str) -> String {
    format!("<unknown> {}", unknown_name_tag(name))
}

struct Ghost {
    failures: i64,
    locked_until: u64,
    hard: bool,
    /// Position in `GhostTable::order` (larger is more recent).
    seq: u64,
}

impl Ghost {
    fn locked(&self, now: u64) -> bool {
        self.hard || self.locked_until > now
    }
}

#[derive(Default)]
struct GhostTable {
    map: HashMap<String, Ghost>,
    /// Names by their last attempt, oldest first.
    order: BTreeMap<u64, String>,
    next: u64,
}

/// Failure counters for names that are not users, so that they lock exactly like real ones
/// (the same [`after_failure`] escalation, up to the hard lock) and a caller cannot tell the
/// two apart. Bounded at [`GhostLockout::CAP`] names: a new name then evicts the one whose
/// last attempt is oldest among those not locked, or the oldest of all when every name is
/// locked, so that the entries an attacker is working on stay, and evicting a given locked
/// name takes 10,000 newer locked ones (50,000 failures).
#[derive(Default)]
pub struct GhostLockout {
    table: Mutex<GhostTable>,
}

impl GhostLockout {
    /// The most names remembered.
    pub const CAP: usize = 10_000;

    /// Records an attempt; returns whether the name is locked (then nothing was counted, as
    /// for a real user). The attempt that starts a lock is itself refused as a bad credential.
    pub fn fail(&self, name: &str, now: u64) -> bool {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let seq = t.next;
        t.next += 1;
        if !t.map.contains_key(name) && t.map.len() >= Self::CAP {
            t.evict(now);
        }
        let entry = t.map.entry(name.to_owned()).or_insert(Ghost {
            failures: 0,
            locked_until: 0,
            hard: false,
            seq,
        });
        let old_seq = std::mem::replace(&mut entry.seq, seq);
        let locked = entry.locked(now);
        if !locked {
            let next = after_failure(entry.failures, now);
            entry.failures = next.failures;
            match next.lock {
                Some(Lock::Until { until, .. }) => entry.locked_until = until,
                Some(Lock::Hard) => entry.hard = true,
                None => {}
            }
        }
        t.order.remove(&old_seq);
        t.order.insert(seq, name.to_owned());
        locked
    }

    /// How many names are remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }
}

impl GhostTable {
    /// Removes the name with the oldest last attempt among those not locked at `now`, or the
    /// oldest of all when every name is locked.
    fn evict(&mut self, now: u64) {
        let victim = self
            .order
            .iter()
            .find(|(_, name)| self.map.get(*name).is_none_or(|g| !g.locked(now)))
            .or_else(|| self.order.iter().next())
            .map(|(seq, name)| (*seq, name.clone()));
        if let Some((seq, name)) = victim {
            self.order.remove(&seq);
            self.map.remove(&name);
        }
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

    #[test]
    fn each_fifth_failure_locks_twice_as_long_and_the_sixth_lock_is_hard() {
        let now = 1_000_000;
        let mut failures = 0;
        let mut locks = Vec::new();
        for _ in 0..30 {
            let next = after_failure(failures, now);
            assert_eq!(next.failures, failures + 1);
            failures = next.failures;
            if let Some(l) = next.lock {
                locks.push((failures, l));
            }
        }
        let min = 60;
        assert_eq!(
            locks,
            [
                (
                    5,
                    Lock::Until {
                        nth: 1,
                        until: now + 15 * min
                    }
                ),
                (
                    10,
                    Lock::Until {
                        nth: 2,
                        until: now + 30 * min
                    }
                ),
                (
                    15,
                    Lock::Until {
                        nth: 3,
                        until: now + 60 * min
                    }
                ),
                (
                    20,
                    Lock::Until {
                        nth: 4,
                        until: now + 120 * min
                    }
                ),
                (
                    25,
                    Lock::Until {
                        nth: 5,
                        until: now + 240 * min
                    }
                ),
                (30, Lock::Hard),
            ]
        );
        // A count beyond the hard lock (never written) is hard, not a fresh start.
        assert_eq!(after_failure(31, now).lock, Some(Lock::Hard));
        assert_eq!(after_failure(-7, now).failures, 1);
        assert_eq!(lock_secs(1_000_000), LOCK_SECS << 20);
    }

    /// The figure the documentation gives: an attacker who knows the password and tries a
    /// code whenever the account is not locked gets 30 tries in 7 h 45 min, then none.
    #[test]
    fn a_patient_attacker_gets_thirty_tries_before_the_hard_lock() {
        let g = GhostLockout::default();
        let start = 1_000_000;
        let mut now = start;
        let mut tries = 0;
        let mut last_try = now;
        while now < start + 8 * 3600 {
            if !g.fail("target", now) {
                tries += 1;
                last_try = now;
            }
            now += 1;
        }
        assert_eq!(tries, 30);
        // 15 + 30 + 60 + 120 + 240 minutes of locks, and six rounds of five tries a second
        // apart (each lock starts at its round's fifth try).
        assert_eq!(last_try - start, 465 * 60 + 6 * 4);
        assert!(
            g.fail("target", start + 10 * 365 * 86_400),
            "hard lock ended"
        );
    }

    #[test]
    fn unknown_names_escalate_like_users() {
        let g = GhostLockout::default();
        let mut now = 5_000;
        for nth in 1..=5 {
            for _ in 0..5 {
                assert!(!g.fail("ghost", now), "lock {nth}");
            }
            let until = now + lock_secs(nth);
            assert!(g.fail("ghost", until - 1), "lock {nth} ended early");
            now = until;
        }
        for _ in 0..5 {
            assert!(!g.fail("ghost", now));
        }
        assert!(
            g.fail("ghost", now + 365 * 86_400),
            "the sixth lock is hard"
        );
    }

    #[test]
    fn regression_a_full_table_evicts_the_oldest_name_not_every_lock() {
        let g = GhostLockout::default();
        assert!(!g.fail("oldest", 1_000));
        for _ in 0..5 {
            assert!(!g.fail("locked", 1_001));
        }
        for i in 0..GhostLockout::CAP - 2 {
            assert!(!g.fail(&format!("filler{i}"), 1_002));
        }
        assert_eq!(g.len(), GhostLockout::CAP);
        // One name more: the oldest unlocked name goes, the table stays full.
        assert!(!g.fail("newcomer", 1_003));
        assert_eq!(g.len(), GhostLockout::CAP);
        assert!(g.fail("locked", 1_004), "a recent lock was forgotten");
        // "oldest" starts over: four failures more do not lock it (five would, remembered).
        for _ in 0..4 {
            assert!(!g.fail("oldest", 1_005));
        }
        assert!(!g.fail("oldest", 1_005), "the oldest name was not evicted");
    }

    #[test]
    fn a_table_full_of_locks_evicts_the_oldest_lock() {
        let g = GhostLockout::default();
        for i in 0..GhostLockout::CAP {
            for _ in 0..5 {
                g.fail(&format!("n{i}"), 2_000);
            }
        }
        let now = 2_001;
        assert!(g.fail("n0", now) && g.fail("n1", now + 1));
        // n0 and n1 were just touched; n2 is now the oldest and goes.
        assert!(!g.fail("fresh", now + 2));
        assert_eq!(g.len(), GhostLockout::CAP);
        assert!(g.fail("n3", now + 3), "a newer lock was evicted");
        assert!(!g.fail("n2", now + 4), "the oldest lock was kept");
    }

    #[test]
    fn unknown_name_tags_are_stable_short_and_not_the_name() {
        let a = unknown_name_tag("Tr0ub4dor3");
        assert_eq!(a, unknown_name_tag("Tr0ub4dor3"));
        assert_ne!(a, unknown_name_tag("Tr0ub4dor4"));
        assert_eq!(a.len(), 16);
        assert!(!a.contains("Tr0ub4dor3"));
    }
}
