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

    /// Opens the storage a config names: the SQLite file, or a connection to PostgreSQL
    /// (whose schema is created or checked first).
    pub async fn open_storage(storage: &Storage) -> Result<Db> {
        match storage {
            Storage::Sqlite(path) => Db::open(path),
            Storage::Postgres(settings) => {
                let (tx, rx) = mpsc::channel::<Job>();
                let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
                let settings = settings.clone();
                thread::Builder::new()
                    .name("posternd-db".into())
                    .spawn(move || {
                        let first = pg::Session::connect(&settings).and_then(|s| {
                            pg::init_schema(&s)?;
                            Ok(s)
                        });
                        match first {
                            Ok(s) => {
                                let _ = ready_tx.send(Ok(()));
                                pg_writer(&settings, Some(s), rx);
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e.context(format!(
                                    "cannot open the PostgreSQL database {}",
                                    settings.url
                                ))));
                            }
                        }
                    })
                    .context("cannot start the database thread")?;
                ready_rx
                    .await
                    .map_err(|_| anyhow::anyhow!("the database thread stopped"))??;
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
/// closure in its own savepoint (the statements between closures go in one round trip). A
/// connection lost fails the batch (its callers hear the error) and the next batch connects
/// again.
fn pg_writer(settings: &pg::Settings, mut session: Option<pg::Session>, rx: mpsc::Receiver<Job>) {
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
        if session.as_ref().is_some_and(pg::Session::is_closed) {
            session = None;
        }
        let commit = (|| -> Result<(), String> {
            if session.is_none() {
                if failed_at.is_some_and(|t| t.elapsed() < FAIL_FAST) {
                    return Err("PostgreSQL did not answer a moment ago".into());
                }
                match pg::Session::connect(settings) {
                    Ok(s) => session = Some(s),
                    Err(e) => {
                        failed_at = Some(std::time::Instant::now());
                        return Err(format!("cannot reach PostgreSQL: {e:#}"));
                    }
                }
            }
            failed_at = None;
            let e = |e: anyhow::Error| format!("{e:#}");
            let begin = format!(
                "BEGIN; SELECT pg_advisory_xact_lock({}); SAVEPOINT job",
                pg::WRITER_LOCK
            );
            // A connection that died while idle (PostgreSQL restarted) is found out by its
            // first statement; nothing has run yet, so a new connection takes the batch.
            if let Some(s) = session.as_ref() {
                if s.batch(&begin).is_err() {
                    session = None;
                }
            }
            if session.is_none() {
                let s = pg::Session::connect(settings).map_err(|e| {
                    failed_at = Some(std::time::Instant::now());
                    format!("cannot reach PostgreSQL: {e:#}")
                })?;
                s.batch(&begin).map_err(e)?;
                session = Some(s);
            }
            let Some(s) = session.as_ref() else {
                return Err("no connection".into());
            };
            let n = jobs.len();
            for (k, job) in jobs.drain(..).enumerate() {
                let (ok, reply) = job(&Tx::postgres(s));
                replies.push(reply);
                let end = if ok {
                    "RELEASE SAVEPOINT job"
                } else {
                    "ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job"
                };
                let next = if k + 1 < n {
                    "; SAVEPOINT job"
                } else {
                    "; COMMIT"
                };
                s.batch(&format!("{end}{next}")).map_err(e)?;
            }
            Ok(())
        })();
        if let Err(e) = &commit {
            tracing::error!(error = %e, "database transaction failed");
            if let Some(s) = session.as_ref() {
                if s.is_closed() || s.batch("ROLLBACK").is_err() {
                    session = None;
                }
            }
        }
        drop(jobs);
        for r in replies {
            r(commit.clone());
        }
    }
}

/// Runs `f` in one transaction of `storage`, from code that is not a task of the daemon's
/// runtime (`init`, `quickstart`, the first start's signing of old events): the SQLite file
/// directly, or PostgreSQL under the writer lock (on a thread of its own, which its session
/// needs).
pub fn with_tx<T: Send>(
    storage: &Storage,
    f: impl FnOnce(&Tx<'_>) -> Result<T> + Send,
) -> Result<T> {
    match storage {
        Storage::Sqlite(path) => {
            let conn = open_connection(path)?;
            init_schema(&conn)?;
            let tx = conn.unchecked_transaction()?;
            let out = f(&Tx::sqlite(&tx))?;
            tx.commit()?;
            Ok(out)
        }
        Storage::Postgres(settings) => std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let s = pg::Session::connect(settings)?;
                    pg::init_schema(&s).with_context(|| {
                        format!("cannot open the PostgreSQL database {}", settings.url)
                    })?;
                    s.transaction(f)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the database thread panicked"))?
        }),
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
