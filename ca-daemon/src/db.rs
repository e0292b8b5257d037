//! The store's writer thread with group commit, over the embedded SQLite file or a
//! PostgreSQL database shared by several instances.
//!
//! Every operation is a closure run on one thread. Closures that arrive together share one
//! transaction (each in its own savepoint, so one failure does not undo the others), and
//! nobody hears back before that transaction is committed (SQLite with `synchronous=FULL`,
//! PostgreSQL with its default `synchronous_commit`): an answer the API gives is durable.
//! Group commit is what lets issuance reach thousands per second with an fsync per commit. On
//! PostgreSQL each transaction first takes the writer lock (`store::pg`), so that the
//! transactions of every instance run one after another as SQLite's do.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use anyhow::{Context, Result};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::config::Storage;
use crate::store::{pg, Tx};

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&Tx<'_>) -> (bool, Reply) + Send>;

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

/// The database did not answer (PostgreSQL down or unreachable, a connection lost before the
/// commit, or the writer gone): the API answers 503 with Retry-After, so that clients try
/// again or another instance, and `/readyz` says so.
#[derive(Debug, thiserror::Error)]
#[error("the database is not answering: {0}")]
pub struct Unavailable(pub String);

/// After a failed connection, how long batches fail at once instead of each waiting for a
/// connection attempt of its own: a database that is down gives quick answers.
const FAIL_FAST: std::time::Duration = std::time::Duration::from_secs(1);

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Db {
    tx: mpsc::Sender<Job>,
    shared: bool,
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
        Ok(Db { tx, shared: false })
    }

    /// Opens the storage a config names: the SQLite file, or a pool to PostgreSQL (whose
    /// schema is created or checked first). Must be called inside the daemon's runtime.
    pub async fn open_storage(storage: &Storage) -> Result<Db> {
        match storage {
            Storage::Sqlite(path) => Db::open(path),
            Storage::Postgres(settings) => {
                let pool = pg::pool(settings)?;
                pg::init_schema(&pool).await.with_context(|| {
                    format!("cannot open the PostgreSQL database {}", settings.url)
                })?;
                let rt = tokio::runtime::Handle::current();
                let (tx, rx) = mpsc::channel::<Job>();
                thread::Builder::new()
                    .name("posternd-db".into())
                    .spawn(move || pg_writer(pool, rt, rx))
                    .context("cannot start the database thread")?;
                Ok(Db { tx, shared: true })
            }
        }
    }

    /// Whether this instance holds the lease `name` for `ttl` from now: background work that
    /// one instance of many does at a time. Always on SQLite (one instance).
    pub async fn lease(&self, name: &'static str, ttl: std::time::Duration) -> Result<bool> {
        if !self.shared {
            return Ok(true);
        }
        let now = crate::service::now();
        let until = now + ttl.as_secs();
        let holder = instance_id().to_owned();
        self.run(move |tx| crate::store::meta::take_lease(tx, name, &holder, now, until))
            .await
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
        let job: Job = Box::new(move |tx| {
            let r = f(tx);
            let ok = r.is_ok();
            let reply: Reply = Box::new(move |commit| {
                let out = match (r, commit) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(Unavailable(format!("the commit failed: {e}")).into()),
                };
                let _ = done_tx.send(out);
            });
            (ok, reply)
        });
        self.tx
            .send(job)
            .map_err(|_| Unavailable("the database thread has stopped".into()))?;
        // A job dropped unrun: its batch's transaction failed before it.
        done_rx
            .await
            .map_err(|_| Unavailable("its transaction could not be started".into()))?
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
                let (ok, reply) = job(&Tx::sqlite(&sp));
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

/// The writer over PostgreSQL: one transaction per batch, under the writer lock, each
/// closure in its own savepoint. A connection lost fails the batch (its callers hear the
/// error) and the next batch takes a new one from the pool.
fn pg_writer(pool: deadpool_postgres::Pool, rt: tokio::runtime::Handle, rx: mpsc::Receiver<Job>) {
    let mut failed_at: Option<std::time::Instant> = None;
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
            let e = |e: tokio_postgres::Error| pg::error(e).to_string();
            if failed_at.is_some_and(|t| t.elapsed() < FAIL_FAST) {
                return Err("PostgreSQL did not answer a moment ago".into());
            }
            let mut client = rt.block_on(pool.get()).map_err(|e| {
                failed_at = Some(std::time::Instant::now());
                format!("cannot reach PostgreSQL: {e}")
            })?;
            failed_at = None;
            let mut tx = rt.block_on(client.transaction()).map_err(e)?;
            rt.block_on(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&pg::WRITER_LOCK]))
                .map_err(e)?;
            for job in jobs.drain(..) {
                let sp = rt.block_on(tx.savepoint("job")).map_err(e)?;
                let (ok, reply) = job(&Tx::postgres(&sp, &rt));
                if ok {
                    rt.block_on(sp.commit()).map_err(e)?;
                } else {
                    rt.block_on(sp.rollback()).map_err(e)?;
                }
                replies.push(reply);
            }
            rt.block_on(tx.commit()).map_err(e)
        })();
        if let Err(e) = &commit {
            tracing::error!(error = %e, "database transaction failed");
        }
        drop(jobs);
        for r in replies {
            r(commit.clone());
        }
    }
}

/// Runs `f` in one transaction of `storage`, from code that is not a task of the daemon's
/// runtime (`init`, `quickstart`, the first start's signing of old events): the SQLite file
/// directly, or PostgreSQL under the writer lock.
pub fn with_tx<T>(storage: &Storage, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
    match storage {
        Storage::Sqlite(path) => {
            let conn = open_connection(path)?;
            init_schema(&conn)?;
            let tx = conn.unchecked_transaction()?;
            let out = f(&Tx::sqlite(&tx))?;
            tx.commit()?;
            Ok(out)
        }
        Storage::Postgres(settings) => {
            let run = |rt: &tokio::runtime::Handle| -> Result<T> {
                let pool = pg::pool(settings)?;
                rt.block_on(pg::init_schema(&pool)).with_context(|| {
                    format!("cannot open the PostgreSQL database {}", settings.url)
                })?;
                let mut client = rt
                    .block_on(pool.get())
                    .context("cannot connect to PostgreSQL")?;
                let tx = rt.block_on(client.transaction()).map_err(pg::error)?;
                rt.block_on(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&pg::WRITER_LOCK]))
                    .map_err(pg::error)?;
                let out = f(&Tx::postgres(&tx, rt))?;
                rt.block_on(tx.commit()).map_err(pg::error)?;
                Ok(out)
            };
            match tokio::runtime::Handle::try_current() {
                Ok(h) => tokio::task::block_in_place(|| run(&h)),
                Err(_) => {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all()
                        .build()
                        .context("cannot start a runtime for the database")?;
                    let h = rt.handle().clone();
                    run(&h)
                }
            }
        }
    }
}

/// This process's id as a lease holder (random, per start).
pub fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        format!("posternd-{}-{}", std::process::id(), hex::encode(b))
    })
}
