//! The storage layer: every SQL statement of the daemon, as typed functions grouped by
//! subject, over one transaction handle [`Tx`].
//!
//! Services compose these functions inside one [`crate::db::Db::run`] closure, which is one
//! transaction (a savepoint of the writer's group commit), and never see SQL or untyped rows.
//! Two backends sit behind [`Tx`]: the embedded SQLite file, and PostgreSQL for several
//! instances (`store::pg`). Statements are written once, in the subset both dialects share
//! (`?N` placeholders, `ON CONFLICT`, `RETURNING`, `CAST`, `"user"` quoted); the few places
//! where they differ ask [`Tx::dialect`]. See ARCHITECTURE.md.

/// The values bound to a statement's placeholders, in order: `params![a, b]`.
macro_rules! params {
    () => { &[] as &[$crate::store::Val<'_>] };
    ($($e:expr),+ $(,)?) => { &[$($crate::store::AsVal::as_val(&$e)),+] as &[$crate::store::Val<'_>] };
}

pub mod audit;
pub mod certs;
pub mod copy;
pub mod locks;
pub mod meta;
pub mod migrations;
pub mod nodes;
pub mod pg;
pub mod policies;
pub mod recordings;
#[cfg(test)]
mod tests;
pub mod tokens;
pub mod users;
mod value;

use anyhow::{anyhow, Context, Result};
use rusqlite::Connection;

pub use value::{AsVal, Cell, FromCell, Val};

/// Which SQL dialect a [`Tx`] speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// The embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server shared by several instances.
    Postgres,
}

/// One transaction of the store, the only handle services get: the SQLite connection of the
/// writer thread inside the savepoint `Db::run` opened (or, for `init` and `quickstart`, a
/// connection of their own), or a PostgreSQL transaction (savepoint) of this instance's
/// writer. The SQL it runs lives in this module only.
pub struct Tx<'a> {
    inner: Inner<'a>,
}

enum Inner<'a> {
    Sqlite(&'a Connection),
    Postgres { s: &'a pg::Session },
}

/// One row of a query's answer, whichever backend gave it.
pub struct Row<'r> {
    inner: RowInner<'r>,
}

enum RowInner<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r tokio_postgres::Row),
}

impl Row<'_> {
    /// Column `idx`, converted to `T`; a stored value of another type is an error.
    pub fn get<T: FromCell>(&self, idx: usize) -> Result<T> {
        let cell = match &self.inner {
            RowInner::Sqlite(r) => Cell::from(r.get_ref(idx)?),
            RowInner::Postgres(r) => r
                .try_get::<_, Cell>(idx)
                .with_context(|| format!("column {idx}"))?,
        };
        T::from_cell(cell).map_err(|e| anyhow!("column {idx}: {e}"))
    }
}

impl<'a> Tx<'a> {
    /// The store over an SQLite connection, inside whatever transaction the caller opened.
    pub fn sqlite(conn: &'a Connection) -> Tx<'a> {
        Tx {
            inner: Inner::Sqlite(conn),
        }
    }

    /// The store over the transaction (savepoint) a PostgreSQL session is in.
    pub fn postgres(s: &'a pg::Session) -> Tx<'a> {
        Tx {
            inner: Inner::Postgres { s },
        }
    }

    /// The dialect of the backend.
    pub fn dialect(&self) -> Dialect {
        match self.inner {
            Inner::Sqlite(_) => Dialect::Sqlite,
            Inner::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// Runs a statement; returns how many rows it changed.
    fn execute(&self, sql: &str, params: &[Val<'_>]) -> Result<usize> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params))?),
            Inner::Postgres { s } => {
                Ok(usize::try_from(s.execute(sql, params)?).unwrap_or(usize::MAX))
            }
        }
    }

    /// Runs statements that do not depend on each other's results: in one round trip on
    /// PostgreSQL (pipelined), one after another on SQLite. Returns how many rows each
    /// changed.
    fn execute_all(&self, stmts: &[(&str, &[Val<'_>])]) -> Result<Vec<u64>> {
        match &self.inner {
            Inner::Sqlite(_) => stmts
                .iter()
                .map(|(sql, params)| Ok(u64::try_from(self.execute(sql, params)?)?))
                .collect(),
            Inner::Postgres { s } => s.execute_all(stmts),
        }
    }

    /// The audit head this PostgreSQL transaction wrote last, while it holds the writer
    /// lock (see `pg::Session`); always `None` on SQLite, whose reads cost no round trip.
    fn written_audit_head(&self) -> Option<(i64, String)> {
        match &self.inner {
            Inner::Sqlite(_) => None,
            Inner::Postgres { s } => s.written_audit_head(),
        }
    }

    /// Remembers the audit head just written (PostgreSQL).
    fn wrote_audit_head(&self, seq: i64, hash: &str) {
        if let Inner::Postgres { s } = &self.inner {
            s.wrote_audit_head(seq, hash);
        }
    }

    /// Every row of a query, each through `f`.
    fn query_map<T>(
        &self,
        sql: &str,
        params: &[Val<'_>],
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        match &self.inner {
            Inner::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(params))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(f(&Row {
                        inner: RowInner::Sqlite(r),
                    })?);
                }
                Ok(out)
            }
            Inner::Postgres { s } => {
                let rows = s.query(sql, params)?;
                rows.iter()
                    .map(|r| {
                        f(&Row {
                            inner: RowInner::Postgres(r),
                        })
                    })
                    .collect()
            }
        }
    }

    /// The first row of a query through `f`, if it has one.
    fn query_opt<T>(
        &self,
        sql: &str,
        params: &[Val<'_>],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut f = Some(f);
        let mut out = None;
        self.query_map(sql, params, |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row of a query through `f`; no row is an error.
    fn query_row<T>(
        &self,
        sql: &str,
        params: &[Val<'_>],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.query_opt(sql, params, f)?
            .ok_or_else(|| anyhow!("the query returned no row"))
    }

    /// A fragment that turns the JSON array of strings bound to `param` (say `?4`) into a
    /// one-column table whose column is `value`.
    fn json_strings(&self, param: &str) -> String {
        match self.dialect() {
            Dialect::Sqlite => format!("json_each({param})"),
            Dialect::Postgres => format!("json_array_elements_text(CAST({param} AS json))"),
        }
    }
}

#[cfg(test)]
impl Tx<'_> {
    /// The connection, for unit tests that set up or inspect rows with raw SQL; the daemon's
    /// code has no way to it (ARCHITECTURE.md's invariant: no SQL outside `store/`).
    pub fn conn(&self) -> &Connection {
        match self.inner {
            Inner::Sqlite(c) => c,
            Inner::Postgres { .. } => panic!("not an SQLite store"),
        }
    }
}

/// Column `idx` of a row, parsed from its stored text (a kind, an id): a value this binary
/// cannot parse is an error, not a guess.
fn parsed<T>(r: &Row<'_>, idx: usize) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s: String = r.get(idx)?;
    s.parse::<T>()
        .with_context(|| format!("column {idx}: cannot parse {s:?}"))
}

/// Unix seconds as the store keeps them (saturating: no time reaches `i64::MAX`).
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored integer as Unix seconds or a count (negative values, never written, read as 0).
fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
