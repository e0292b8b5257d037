//! The storage layer: every SQL statement of the daemon, as typed functions grouped by
//! subject, over one transaction handle [`Tx`].
//!
//! Services compose these functions inside one [`crate::db::Db::run`] closure, which is one
//! transaction (a savepoint of the writer's group commit), and never see SQL or untyped rows.
//! This is the seam a second backend plugs into: see ARCHITECTURE.md.

pub mod audit;
pub mod certs;
pub mod locks;
pub mod migrations;
pub mod nodes;
pub mod recordings;
pub mod tokens;
pub mod users;

use rusqlite::Connection;

/// One transaction of the store, the only handle services get. Today it wraps the SQLite
/// connection of the writer thread inside the savepoint `Db::run` opened (or, for `init` and
/// `quickstart`, a connection of their own); the SQL it runs lives in this module only.
pub struct Tx<'a> {
    conn: &'a Connection,
}

impl<'a> Tx<'a> {
    /// The store over an SQLite connection, inside whatever transaction the caller opened.
    pub fn sqlite(conn: &'a Connection) -> Tx<'a> {
        Tx { conn }
    }
}

#[cfg(test)]
impl Tx<'_> {
    /// The connection, for unit tests that set up or inspect rows with raw SQL; the daemon's
    /// code has no way to it (ARCHITECTURE.md's invariant: no SQL outside `store/`).
    pub fn conn(&self) -> &Connection {
        self.conn
    }
}

/// Column `idx` of a row, parsed from its stored text (a kind, an id): a value this binary
/// cannot parse is an error, not a guess.
fn parsed<T>(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s: String = r.get(idx)?;
    s.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Unix seconds as SQLite stores them (saturating: no time reaches `i64::MAX`).
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored integer as Unix seconds or a count (negative values, never written, read as 0).
fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
