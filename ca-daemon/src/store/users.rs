//! Users: invites, enrolment, the login counters and locks, and the admin's listing.

use anyhow::Result;
use postern_core::Username;

use super::{i, Tx};

/// What a login checks. No `Debug`: it holds the password hash and the TOTP secret.
pub struct UserRow {
    /// The argon2 hash (`None`: invited, not enrolled).
    pub password_hash: Option<String>,
    /// The TOTP secret.
    pub totp_secret: Option<Vec<u8>>,
    /// The last TOTP step accepted (a code is used once).
    pub last_totp_step: i64,
    /// Failures since the last success, across locks.
    pub failed_count: i64,
    /// Unix time a timed lock ends (0: none).
    pub locked_until: i64,
    /// Locked until `users reset`.
    pub hard_locked: bool,
    /// Unix time of the last password login.
    pub last_password_login: Option<i64>,
}

/// One line of `users ls`.
pub struct UserLine {
    /// The name as stored.
    pub name: String,
    /// Whether a password is set.
    pub enrolled: bool,
    /// Unix time of the last password login.
    pub last: Option<i64>,
    /// Unix time a timed lock ends (0: none).
    pub locked_until: i64,
    /// Unix time the user was added.
    pub created: i64,
    /// Failures since the last success.
    pub failures: i64,
    /// Locked until `users reset`.
    pub hard_locked: bool,
}

/// An invite as stored: its hash and expiry (both `None` once enrolled).
pub struct InviteRow {
    /// SHA-256 of the invite.
    pub hash: Option<String>,
    /// Unix time it expires.
    pub expires: Option<i64>,
}

/// The user `name`, if it exists.
pub fn get(tx: &Tx<'_>, name: &str) -> Result<Option<UserRow>> {
    tx.query_opt(
            "SELECT password_hash, totp_secret, last_totp_step, failed_count, locked_until, last_password_login, hard_locked FROM users WHERE name = ?1",
            params![name],
            |r| {
                Ok(UserRow {
                    password_hash: r.get(0)?,
                    totp_secret: r.get(1)?,
                    last_totp_step: r.get(2)?,
                    failed_count: r.get(3)?,
                    locked_until: r.get(4)?,
                    last_password_login: r.get(5)?,
                    hard_locked: r.get(6)?,
                })
            },
        )
}

/// Whether a user of that name exists.
pub fn exists(tx: &Tx<'_>, name: &str) -> Result<bool> {
    let one: Option<i64> =
        tx.query_opt("SELECT 1 FROM users WHERE name = ?1", params![name], |r| {
            r.get(0)
        })?;
    Ok(one.is_some())
}

/// Whether the user has set a password (`None`: no such user).
pub fn enrolled(tx: &Tx<'_>, name: &str) -> Result<Option<bool>> {
    tx.query_opt(
        "SELECT password_hash IS NOT NULL FROM users WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )
}

/// Whether the user is hard-locked (`None`: no such user).
pub fn hard_locked(tx: &Tx<'_>, name: &str) -> Result<Option<bool>> {
    tx.query_opt(
        "SELECT hard_locked FROM users WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )
}

/// The user's invite (`None`: no such user).
pub fn invite(tx: &Tx<'_>, name: &Username) -> Result<Option<InviteRow>> {
    tx.query_opt(
        "SELECT invite_hash, invite_expires FROM users WHERE name = ?1",
        params![name.as_str()],
        |r| {
            Ok(InviteRow {
                hash: r.get(0)?,
                expires: r.get(1)?,
            })
        },
    )
}

/// Adds an invited user.
pub fn add_invited(
    tx: &Tx<'_>,
    name: &str,
    invite_hash: &str,
    expires: u64,
    now: u64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO users (name, invite_hash, invite_expires, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![name, invite_hash, expires as i64, now as i64],
    )?;
    Ok(())
}

/// Gives an existing user a new invite, leaving the rest (quickstart's admin).
pub fn set_invite(tx: &Tx<'_>, name: &str, invite_hash: &str, expires: u64) -> Result<()> {
    tx.execute(
        "UPDATE users SET invite_hash = ?2, invite_expires = ?3 WHERE name = ?1",
        params![name, invite_hash, expires as i64],
    )?;
    Ok(())
}

/// Enrolment: the password and TOTP secret set, counters and locks cleared, the invite spent.
pub fn enroll(tx: &Tx<'_>, name: &Username, password_hash: &str, totp_secret: &[u8]) -> Result<()> {
    tx.execute(
        "UPDATE users SET password_hash = ?2, totp_secret = ?3, last_totp_step = 0, failed_count = 0, locked_until = 0, hard_locked = 0, invite_hash = NULL, invite_expires = NULL WHERE name = ?1",
        params![name.as_str(), password_hash, totp_secret],
    )?;
    Ok(())
}

/// `users reset`: credentials, counters and locks cleared and a new invite set. Returns
/// whether the user existed.
pub fn reset(tx: &Tx<'_>, name: &Username, invite_hash: &str, expires: u64) -> Result<bool> {
    let n = tx.execute(
        "UPDATE users SET password_hash = NULL, totp_secret = NULL, last_totp_step = 0, failed_count = 0, locked_until = 0, hard_locked = 0, last_password_login = NULL, invite_hash = ?2, invite_expires = ?3 WHERE name = ?1",
        params![name.as_str(), invite_hash, expires as i64],
    )?;
    Ok(n > 0)
}

/// `users rm`. Returns whether the user existed.
pub fn remove(tx: &Tx<'_>, name: &Username) -> Result<bool> {
    Ok(tx.execute("DELETE FROM users WHERE name = ?1", params![name.as_str()])? > 0)
}

/// Every user, by name.
pub fn list(tx: &Tx<'_>) -> Result<Vec<UserLine>> {
    let rows = tx.query_map("SELECT name, password_hash IS NOT NULL, last_password_login, locked_until, created_at, failed_count, hard_locked FROM users ORDER BY name", params![], |r| {
            Ok(UserLine {
                name: r.get(0)?,
                enrolled: r.get(1)?,
                last: r.get(2)?,
                locked_until: r.get(3)?,
                created: r.get(4)?,
                failures: r.get(5)?,
                hard_locked: r.get(6)?,
            })
        })?;
    Ok(rows)
}

/// A failed login: the count of failures since the last success.
pub fn set_failures(tx: &Tx<'_>, name: &Username, failures: i64) -> Result<()> {
    tx.execute(
        "UPDATE users SET failed_count = ?2 WHERE name = ?1",
        params![name.as_str(), failures],
    )?;
    Ok(())
}

/// A timed lock until `until`.
pub fn lock_until(tx: &Tx<'_>, name: &Username, until: u64) -> Result<()> {
    tx.execute(
        "UPDATE users SET locked_until = ?2 WHERE name = ?1",
        params![name.as_str(), i(until)],
    )?;
    Ok(())
}

/// The hard lock, which only `users reset` lifts.
pub fn hard_lock(tx: &Tx<'_>, name: &Username) -> Result<()> {
    tx.execute(
        "UPDATE users SET hard_locked = 1 WHERE name = ?1",
        params![name.as_str()],
    )?;
    Ok(())
}

/// A successful password login: counters cleared, the TOTP step used, the time kept (the
/// renewal window runs from it).
pub fn login_succeeded(tx: &Tx<'_>, name: &Username, totp_step: u64, now: u64) -> Result<()> {
    tx.execute(
        "UPDATE users SET failed_count = 0, locked_until = 0, last_totp_step = ?2, last_password_login = ?3 WHERE name = ?1",
        params![name.as_str(), i(totp_step), i(now)],
    )?;
    Ok(())
}

/// A login for a name that is no user writes as a real user's failure does (so that it takes
/// as long): the time of the last one.
pub fn note_unknown_login(tx: &Tx<'_>, now: u64) -> Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('unknown_login_at', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![now.to_string()],
    )?;
    Ok(())
}
