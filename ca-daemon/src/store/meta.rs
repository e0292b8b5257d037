//! The installation's own facts in `meta`: which CA a database belongs to.

use anyhow::{bail, Result};

use super::Tx;

/// The service CA pin (and cluster) the database belongs to, if one has claimed it.
pub fn ca(tx: &Tx<'_>) -> Result<Option<(String, String)>> {
    let pin: Option<String> = tx.query_opt(
        "SELECT value FROM meta WHERE key = 'ca_pin'",
        params![],
        |r| r.get(0),
    )?;
    let cluster: Option<String> = tx.query_opt(
        "SELECT value FROM meta WHERE key = 'cluster'",
        params![],
        |r| r.get(0),
    )?;
    Ok(pin.map(|p| (p, cluster.unwrap_or_default())))
}

/// Binds the database to this CA (the first time), or checks that it is bound to it: every
/// instance on one database must hold the same keys, or they would sign with different CAs.
pub fn claim_ca(tx: &Tx<'_>, pin: &str, cluster: &str) -> Result<()> {
    match ca(tx)? {
        Some((p, c)) if p == pin && c == cluster => Ok(()),
        Some((p, c)) => bail!(
            "the database belongs to the CA of cluster {c:?} with pin {p}, and this instance holds the keys of cluster {cluster:?} with pin {pin}: every instance on one database must hold the same keys (make it with `posternd init --keys-from DIR` of an instance of that CA)"
        ),
        None => {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('ca_pin', ?1), ('cluster', ?2)",
                params![pin, cluster],
            )?;
            Ok(())
        }
    }
}

/// The KRL's version for a build at `now`: never less than one given before, by any
/// instance (their clocks may differ), so that a server's KRL version only grows.
pub fn krl_version(tx: &Tx<'_>, now: u64) -> Result<u64> {
    let stored: Option<String> = tx.query_opt(
        "SELECT value FROM meta WHERE key = 'krl_version'",
        params![],
        |r| r.get(0),
    )?;
    let stored: u64 = stored.and_then(|s| s.parse().ok()).unwrap_or(0);
    if now <= stored {
        return Ok(stored);
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('krl_version', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![now.to_string()],
    )?;
    Ok(now)
}

/// Takes (or keeps) the lease `name` for `holder` until `until`, unless another holder's lease
/// is still running at `now`; returns whether `holder` holds it. PostgreSQL only (one
/// instance on SQLite holds every lease).
pub fn take_lease(tx: &Tx<'_>, name: &str, holder: &str, now: u64, until: u64) -> Result<bool> {
    let n = tx.execute(
        "INSERT INTO leases (name, holder, until) VALUES (?1, ?2, ?3) \
         ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
         WHERE leases.holder = excluded.holder OR leases.until < ?4",
        params![name, holder, super::i(until), super::i(now)],
    )?;
    Ok(n == 1)
}
