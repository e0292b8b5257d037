//! `Committed`: what a database transaction that ran to its end produced.

use crate::service::Refusal;

/// The answer of a `Db::run` closure that reached its end: the transaction commits either way.
///
/// `Refused` is a refusal whose audit rows (written in the same transaction) must still commit;
/// an `Err` around it (`anyhow::Result<Committed<T>>`) is a fault, and rolls everything back.
/// A named type, so the two cannot be confused the way `Ok(Err(..))` and `Err(..)` could.
#[must_use]
#[derive(Debug)]
pub enum Committed<T> {
    /// The request was done.
    Done(T),
    /// The request was refused; what the transaction wrote (its audit rows) is kept.
    Refused(Refusal),
}

impl<T> Committed<T> {
    /// Applies `f` to a done value; a refusal stays as it is.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Committed<U> {
        match self {
            Committed::Done(v) => Committed::Done(f(v)),
            Committed::Refused(r) => Committed::Refused(r),
        }
    }

    /// The refusal as an `Err`, for `?` in the service and the HTTP layer.
    pub fn into_result(self) -> Result<T, Refusal> {
        match self {
            Committed::Done(v) => Ok(v),
            Committed::Refused(r) => Err(r),
        }
    }
}

impl<T> From<Committed<T>> for Result<T, Refusal> {
    fn from(c: Committed<T>) -> Self {
        c.into_result()
    }
}

impl<T> From<Refusal> for Committed<T> {
    fn from(r: Refusal) -> Self {
        Committed::Refused(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;
    use anyhow::{anyhow, Result};

    async fn rows(db: &Db) -> i64 {
        db.run(|c| {
            Ok(c.conn()
                .query_row("SELECT COUNT(*) FROM probe", [], |r| r.get(0))?)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_refusal_commits_its_audit_row_and_an_error_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        db.run(|c| Ok(c.conn().execute_batch("CREATE TABLE probe (x INTEGER)")?))
            .await
            .unwrap();

        let refused = db
            .run(|c| -> Result<Committed<()>> {
                c.conn().execute("INSERT INTO probe VALUES (1)", [])?;
                Ok(Committed::Refused(Refusal::Forbidden("no".into())))
            })
            .await
            .unwrap();
        assert!(matches!(refused.into_result(), Err(Refusal::Forbidden(m)) if m == "no"));
        assert_eq!(rows(&db).await, 1, "the refusal's row committed");

        let failed = db
            .run(|c| -> Result<Committed<()>> {
                c.conn().execute("INSERT INTO probe VALUES (2)", [])?;
                Err(anyhow!("disk on fire"))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(rows(&db).await, 1, "the error's row was rolled back");

        let done = db
            .run(|c| -> Result<Committed<i64>> {
                c.conn().execute("INSERT INTO probe VALUES (3)", [])?;
                Ok(Committed::Done(7))
            })
            .await
            .unwrap();
        assert_eq!(done.into_result().unwrap(), 7);
        assert_eq!(rows(&db).await, 2);
    }
}
