//! Join tokens, stored by the SHA-256 of the token (never the token itself).

use anyhow::Result;

use super::{i, parsed, Tx};
use postern_core::NodeKind;

/// A token about to be stored.
pub struct NewToken<'a> {
    /// The public id (a prefix of the hash).
    pub id: &'a str,
    /// SHA-256 of the token.
    pub hash: &'a str,
    /// `node` or `gateway`.
    pub kind: NodeKind,
    /// The node's complete label set.
    pub labels: &'a str,
    /// The one name it joins.
    pub name: &'a str,
    /// Whether it may replace a node of that name.
    pub replace: bool,
    /// Unix time it expires.
    pub expires: u64,
    /// Unix time it was made.
    pub created_at: u64,
}

/// A stored token, as a join reads it.
pub struct TokenRow {
    /// `node` or `gateway`.
    pub kind: NodeKind,
    /// The node's complete label set, as stored.
    pub labels: String,
    /// Unix time it expires.
    pub expires: i64,
    /// The one name it joins (`None`: made before names, joins nothing).
    pub name: Option<String>,
    /// Whether it may replace a node of that name.
    pub replace: bool,
}

/// One line of `tokens ls`.
pub struct TokenLine {
    /// The public id.
    pub id: String,
    /// `node` or `gateway`.
    pub kind: NodeKind,
    /// The labels, as stored.
    pub labels: String,
    /// Unix time it expires.
    pub expires: i64,
    /// The one name it joins.
    pub name: Option<String>,
    /// Whether it may replace a node of that name.
    pub replace: bool,
}

/// Stores a new token.
pub fn add(tx: &Tx<'_>, t: &NewToken<'_>) -> Result<()> {
    tx.execute(
        "INSERT INTO tokens (id, hash, kind, labels, expires, created_at, name, replace) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![t.id, t.hash, t.kind.as_str(), t.labels, i(t.expires), i(t.created_at), t.name, t.replace],
    )?;
    Ok(())
}

/// The tokens not expired at `now`, oldest first.
pub fn list_live(tx: &Tx<'_>, now: u64) -> Result<Vec<TokenLine>> {
    let rows = tx.query_map("SELECT id, kind, labels, expires, name, replace FROM tokens WHERE expires > ?1 ORDER BY created_at", params![i(now)], |r| {
            Ok(TokenLine {
                id: r.get(0)?,
                kind: parsed(r, 1)?,
                labels: r.get(2)?,
                expires: r.get(3)?,
                name: r.get(4)?,
                replace: r.get(5)?,
            })
        })?;
    Ok(rows)
}

/// Removes the token of that hash or that id; returns how many were removed.
pub fn remove(tx: &Tx<'_>, hash: &str, id: &str) -> Result<usize> {
    tx.execute(
        "DELETE FROM tokens WHERE hash = ?1 OR id = ?2",
        params![hash, id],
    )
}

/// The token of that hash, if stored.
pub fn find(tx: &Tx<'_>, hash: &str) -> Result<Option<TokenRow>> {
    tx.query_opt(
        "SELECT kind, labels, expires, name, replace FROM tokens WHERE hash = ?1",
        params![hash],
        |r| {
            Ok(TokenRow {
                kind: parsed(r, 0)?,
                labels: r.get(1)?,
                expires: r.get(2)?,
                name: r.get(3)?,
                replace: r.get(4)?,
            })
        },
    )
}

/// Spends the token of that hash (a join used it).
pub fn spend(tx: &Tx<'_>, hash: &str) -> Result<()> {
    tx.execute("DELETE FROM tokens WHERE hash = ?1", params![hash])?;
    Ok(())
}
