//! The embedded SQLite store and its single writer thread with group commit.
//!
//! Every operation is a closure run on one thread that owns the connection. Closures that
//! arrive together share one transaction (each in its own savepoint, so one failure does not
//! undo the others), and nobody hears back before that transaction is committed with
//! `synchronous=FULL`: an answer the API gives is durable. Group commit is what lets issuance
//! reach thousands per second with an fsync per commit.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use anyhow::{anyhow, Context, Result};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::store::Tx;

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

/// The most operations one transaction groups.
const MAX_BATCH: usize = 512;

/// Opens a connection with the pragmas every connection needs.
pub fn open_connection(path: &Path) -> Result<Connection> {
    // The database holds password hashes and TOTP secrets: create it private. SQLite gives
    // the -wal and -shm files the database file's mode.
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // WAL lets readers run beside the writer; FULL makes every commit durable (fsync of the
    // WAL), which issuance and audit require.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// Brings the schema of an opened database to this binary's version
/// (`store::migrations`); refuses a database written by a newer `posternd`.
pub fn init_schema(conn: &Connection) -> Result<()> {
    crate::store::migrations::run(conn)
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Db {
    tx: mpsc::Sender<Job>,
}

impl Db {
    /// Opens the database file and starts the writer thread.
    pub fn open(path: &Path) -> Result<Db> {
        let conn = open_connection(path)?;
        init_schema(&conn)?;
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("posternd-db".into())
            .spawn(move || writer(conn, rx))
            .context("cannot start the database thread")?;
        Ok(Db { tx })
    }

    /// Runs `f` inside a transaction (one savepoint of the group commit), handing it the
    /// store; answers after the commit. An `Err` from `f` rolls back
    /// only `f`'s own changes.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T> + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |conn| {
            let r = f(&Tx::sqlite(conn));
            let ok = r.is_ok();
            let reply: Reply = Box::new(move |commit| {
                let out = match (r, commit) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(anyhow!("database commit failed: {e}")),
                };
                let _ = done_tx.send(out);
            });
            (ok, reply)
        });
        self.tx
            .send(job)
            .map_err(|_| anyhow!("database thread has stopped"))?;
        done_rx
            .await
            .map_err(|_| anyhow!("database thread has stopped"))?
    }
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(jobs.len());
        let commit = (|| -> Result<(), String> {
            let mut tx = conn.transaction().map_err(|e| e.to_string())?;
            for job in jobs.drain(..) {
                let mut sp = tx.savepoint().map_err(|e| e.to_string())?;
                let (ok, reply) = job(&sp);
                if ok {
                    sp.commit().map_err(|e| e.to_string())?;
                } else {
                    sp.rollback().map_err(|e| e.to_string())?;
                }
                replies.push(reply);
            }
            tx.commit().map_err(|e| e.to_string())
        })();
        if let Err(e) = &commit {
            tracing::error!(error = %e, "database transaction failed");
        }
        // Jobs that never ran (the transaction failed before them) are dropped: their callers
        // see "database thread has stopped"-like errors through the closed oneshot.
        drop(jobs);
        for r in replies {
            r(commit.clone());
        }
    }
}
