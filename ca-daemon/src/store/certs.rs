//! Issued certificates: recording them under random serials, revoking them, and the lookups
//! by serial that renewal, node identities, the gateway and the KRL make.

use anyhow::Result;

use super::{i, u, Tx};
use postern_core::{CertKind, Serial};

/// A certificate about to be issued, as the `certs` table records it.
pub struct CertRow<'a> {
    /// Which CA's certificate it is.
    pub kind: CertKind,
    /// Who it is for (user name, node name, or the gateway's `gateway:NAME/NODE`).
    pub subject: &'a str,
    /// Comma-separated principals.
    pub principals: &'a str,
    /// Validity.
    pub valid_after: u64,
    /// Validity.
    pub valid_before: u64,
    /// When.
    pub issued_at: u64,
    /// SHA-256 fingerprint of the certified key.
    pub fingerprint: &'a str,
}

/// Records a certificate under a fresh random serial (63 random bits, never 0) and returns the
/// serial. Serials are not sequential, so that holding one says nothing about the others:
/// a gateway that knew a user's serial could otherwise walk to other users' certificates.
pub fn record(tx: &Tx<'_>, row: &CertRow<'_>) -> Result<u64> {
    for _ in 0..8 {
        let serial = random_serial()?;
        if serial == 0 {
            continue;
        }
        // A taken serial inserts nothing (and aborts nothing: PostgreSQL would abort the
        // transaction on a constraint error), and the next random one is tried.
        let n = tx.execute(
            INSERT,
            params![
                i(serial),
                row.kind.as_str(),
                row.subject,
                row.principals,
                i(row.valid_after),
                i(row.valid_before),
                i(row.issued_at),
                row.fingerprint
            ],
        )?;
        if n == 1 {
            return Ok(serial);
        }
    }
    anyhow::bail!("no free certificate serial after 8 random tries")
}

const INSERT: &str = "INSERT INTO certs (serial, kind, subject, principals, valid_after, valid_before, issued_at, key_fingerprint) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(serial) DO NOTHING";

/// A random serial below 2^63 (an SQL BIGINT); 0 now and then, which callers skip.
fn random_serial() -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(u64::from_le_bytes(b) >> 1)
}

/// [`record`] for several certificates at once: one round trip on PostgreSQL (pipelined),
/// and [`record`] again for any whose random serial was taken. Returns the serials in order.
pub fn record_all(tx: &Tx<'_>, rows: &[CertRow<'_>]) -> Result<Vec<u64>> {
    let mut serials = Vec::with_capacity(rows.len());
    for _ in rows {
        // Distinct among themselves as well: a repeat would be the second row's conflict.
        let mut s = 0;
        while s == 0 || serials.contains(&s) {
            s = random_serial()?;
        }
        serials.push(s);
    }
    let values: Vec<_> = rows
        .iter()
        .zip(&serials)
        .map(|(row, &serial)| {
            (
                i(serial),
                row.kind.as_str(),
                i(row.valid_after),
                i(row.valid_before),
                i(row.issued_at),
            )
        })
        .collect();
    let bound: Vec<Vec<super::Val<'_>>> = rows
        .iter()
        .zip(&values)
        .map(|(row, (serial, kind, after, before, issued))| {
            use super::AsVal as _;
            vec![
                serial.as_val(),
                kind.as_val(),
                row.subject.as_val(),
                row.principals.as_val(),
                after.as_val(),
                before.as_val(),
                issued.as_val(),
                row.fingerprint.as_val(),
            ]
        })
        .collect();
    let stmts: Vec<(&str, &[super::Val<'_>])> =
        bound.iter().map(|v| (INSERT, v.as_slice())).collect();
    let counts = tx.execute_all(&stmts)?;
    for (k, n) in counts.into_iter().enumerate() {
        if n != 1 {
            serials[k] = record(tx, &rows[k])?;
        }
    }
    Ok(serials)
}

/// Revokes every unrevoked certificate of a user (`users rm`, `users reset`); returns how many.
pub fn revoke_subject(tx: &Tx<'_>, subject: &str) -> Result<usize> {
    tx.execute(
        "UPDATE certs SET revoked = 1 WHERE subject = ?1 AND revoked = 0",
        params![subject],
    )
}

/// Revokes a node's host certificates and identity, and a gateway's host certificates for
/// servers' names (`gateway:NAME/...`); returns how many were not revoked before.
pub fn revoke_node(tx: &Tx<'_>, name: &str) -> Result<usize> {
    Ok(tx.execute(
        "UPDATE certs SET revoked = 1 WHERE subject = ?1 AND kind IN ('ssh-host', 'x509-node') AND revoked = 0",
        params![name],
    )? + tx.execute(
        "UPDATE certs SET revoked = 1 WHERE kind = 'ssh-host' AND subject LIKE 'gateway:' || ?1 || '/%' AND revoked = 0",
        params![name],
    )?)
}

/// A certificate as a lookup by serial finds it.
pub struct Issued {
    /// Who it is for.
    pub subject: String,
    /// Revoked.
    pub revoked: bool,
    /// End of validity.
    pub valid_before: u64,
    /// SHA-256 fingerprint of the certified key.
    pub fingerprint: String,
}

/// The certificate of `kind` under `serial`, if there is one.
pub fn by_serial(tx: &Tx<'_>, kind: CertKind, serial: u64) -> Result<Option<Issued>> {
    tx.query_opt(
            "SELECT subject, revoked, valid_before, key_fingerprint FROM certs WHERE serial = ?1 AND kind = ?2",
            params![i(serial), kind.as_str()],
            |r| {
                Ok(Issued {
                    subject: r.get(0)?,
                    revoked: r.get(1)?,
                    valid_before: u(r.get(2)?),
                    fingerprint: r.get(3)?,
                })
            },
        )
}

/// One line of `certs ls`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertLine {
    /// The serial.
    pub serial: i64,
    /// The kind.
    pub kind: String,
    /// Who it is for.
    pub subject: String,
    /// Comma-separated principals.
    pub principals: String,
    /// Validity.
    pub valid_after: i64,
    /// Validity.
    pub valid_before: i64,
    /// When.
    pub issued_at: i64,
    /// Revoked.
    pub revoked: bool,
}

/// The `limit` certificates of the highest serials.
pub fn list(tx: &Tx<'_>, limit: u32) -> Result<Vec<CertLine>> {
    let rows = tx.query_map("SELECT serial, kind, subject, principals, valid_after, valid_before, issued_at, revoked FROM certs ORDER BY serial DESC LIMIT ?1", params![limit], |r| {
            Ok(CertLine {
                serial: r.get(0)?,
                kind: r.get(1)?,
                subject: r.get(2)?,
                principals: r.get(3)?,
                valid_after: r.get(4)?,
                valid_before: r.get(5)?,
                issued_at: r.get(6)?,
                revoked: r.get(7)?,
            })
        })?;
    Ok(rows)
}

/// An SSH certificate still valid at some time, as the KRL judges it.
pub struct LiveSsh {
    /// The serial.
    pub serial: u64,
    /// Which CA's certificate it is (`None`: a kind this binary does not know, which the KRL
    /// skips as it always did).
    pub kind: Option<CertKind>,
    /// Who it is for.
    pub subject: String,
    /// Revoked.
    pub revoked: bool,
}

/// Every SSH certificate valid after `now`.
pub fn live_ssh(tx: &Tx<'_>, now: u64) -> Result<Vec<LiveSsh>> {
    let rows = tx.query_map(
        "SELECT serial, kind, subject, revoked FROM certs WHERE valid_before > ?1 AND kind LIKE 'ssh-%'",
        params![i(now)], |r| {
            Ok(LiveSsh {
                serial: u(r.get(0)?),
                kind: r.get::<String>(1)?.parse().ok(),
                subject: r.get(2)?,
                revoked: r.get(3)?,
            })
        })?;
    Ok(rows)
}

/// A revoked user certificate and whether its subject is still a user.
pub struct RevokedUser {
    /// The serial.
    pub serial: Serial,
    /// The subject as stored.
    pub subject: String,
    /// Whether a user of that name exists.
    pub user_exists: bool,
}

/// The revoked user certificates valid after `since`, by serial.
pub fn revoked_user_certs(tx: &Tx<'_>, since: u64) -> Result<Vec<RevokedUser>> {
    let rows = tx.query_map(
        "SELECT serial, subject, EXISTS (SELECT 1 FROM users WHERE users.name = certs.subject) \
         FROM certs WHERE kind = 'ssh-user' AND revoked = 1 AND valid_before > ?1 ORDER BY serial",
        params![i(since)],
        |r| {
            Ok(RevokedUser {
                serial: u(r.get(0)?).into(),
                subject: r.get(1)?,
                user_exists: r.get(2)?,
            })
        },
    )?;
    Ok(rows)
}
