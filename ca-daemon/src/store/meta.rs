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
