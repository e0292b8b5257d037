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

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

/// The most operations one transaction groups.
const MAX_BATCH: usize = 512;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT,
    totp_secret BLOB,
    last_totp_step INTEGER NOT NULL DEFAULT 0,
    failed_count INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER NOT NULL DEFAULT 0,
    invite_hash TEXT,
    invite_expires INTEGER,
    last_password_login INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS certs (
    serial INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    principals TEXT NOT NULL,
    valid_after INTEGER NOT NULL,
    valid_before INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    key_fingerprint TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS certs_subject ON certs(subject);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
-- Every audit event's (seq, hash) signed with the audit key (DATA/ca/audit.key): added after
-- schema 3, created in older databases by this IF NOT EXISTS (their events are signed once,
-- when the key is created: audit::sign_existing).
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    sig TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    labels TEXT NOT NULL,
    expires INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    name TEXT,
    replace INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    address TEXT,
    labels TEXT NOT NULL,
    joined_at INTEGER NOT NULL,
    last_sync INTEGER,
    host_key TEXT NOT NULL,
    host_cert_expiry INTEGER,
    identity_serial INTEGER NOT NULL,
    egress TEXT,
    seen_from TEXT
);
-- The event ids a gateway's events carry: an event sent again is audited once.
CREATE TABLE IF NOT EXISTS gateway_event_ids (
    gateway TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received INTEGER NOT NULL,
    PRIMARY KEY (gateway, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS locks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    name TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires INTEGER,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gateway_sessions (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    user TEXT NOT NULL,
    login TEXT NOT NULL,
    node TEXT NOT NULL,
    first_authorized INTEGER NOT NULL,
    labels TEXT
);
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    login TEXT NOT NULL,
    node TEXT NOT NULL,
    gateway TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER NOT NULL,
    interrupted INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    stored_at INTEGER NOT NULL,
    node_labels TEXT,
    authorized_at INTEGER
);
CREATE INDEX IF NOT EXISTS recordings_user ON recordings(user, started_at);
CREATE INDEX IF NOT EXISTS recordings_node ON recordings(node, started_at);
CREATE TABLE IF NOT EXISTS recording_uploads (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    received INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
"#;

/// A certificate about to be issued, as the `certs` table records it.
pub struct CertRow<'a> {
    /// `ssh-user`, `ssh-host`, `ssh-node-access`, `x509-client`, `x509-node`.
    pub kind: &'a str,
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
pub fn record_cert(conn: &Connection, row: &CertRow<'_>) -> Result<u64> {
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for _ in 0..8 {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let serial = u64::from_le_bytes(b) >> 1;
        if serial == 0 {
            continue;
        }
        let r = conn.execute(
            "INSERT INTO certs (serial, kind, subject, principals, valid_after, valid_before, issued_at, key_fingerprint) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![i(serial), row.kind, row.subject, row.principals, i(row.valid_after), i(row.valid_before), i(row.issued_at), row.fingerprint],
        );
        match r {
            Ok(_) => return Ok(serial),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation => {}
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("no free certificate serial after 8 random tries")
}

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

/// Columns added after the first schema: (table, column, type). A database made by an older
/// `posternd` gets them at start, NULL in its existing rows (which the code reads as "not
/// known": see `recordings::effective_labels`).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // The server's labels when the CA authorized the session (schema 2).
    ("gateway_sessions", "labels", "TEXT"),
    // The labels `view_recordings` is judged against: the session's, snapshotted when the
    // recording was stored (schema 2).
    ("recordings", "node_labels", "TEXT"),
    // The one name a join token is for, and whether it may replace that name (schema 3). A
    // token from before (NULL name) joins nothing.
    ("tokens", "name", "TEXT"),
    ("tokens", "replace", "INTEGER NOT NULL DEFAULT 0"),
    // A gateway's configured egress addresses (comma-separated) and the address the CA saw it
    // join from (schema 3): servers exempt them from sshd's per-source penalties.
    ("nodes", "egress", "TEXT"),
    ("nodes", "seen_from", "TEXT"),
    // When the CA authorized the recording's session (schema 3): a user's own recordings are
    // those authorized since their user record was made.
    ("recordings", "authorized_at", "INTEGER"),
    // A user locked until `posternd users reset` after repeated login failures (schema 4);
    // `failed_count` now counts every failure since the last success, across locks.
    ("users", "hard_locked", "INTEGER NOT NULL DEFAULT 0"),
];

/// Creates the schema, and brings a database of an older version up to date (idempotent).
pub fn init_schema(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)
        .context("cannot create the database schema")?;
    for (table, column, ty) in ADDED_COLUMNS {
        if !has_column(conn, table, column)? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                .with_context(|| format!("cannot add the column {table}.{column}"))?;
        }
    }
    conn.execute(
        "UPDATE meta SET value = '4' WHERE key = 'schema_version' AND value IN ('1', '2', '3')",
        [],
    )
    .context("cannot record the schema version")?;
    Ok(())
}

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool> {
    let mut st = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = st
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(names.iter().any(|n| n == column))
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

    /// Runs `f` inside a transaction; answers after the commit. An `Err` from `f` rolls back
    /// only `f`'s own changes.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |conn| {
            let r = f(conn);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_an_old_database_gets_the_label_snapshot_columns() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("old.db");
        {
            // The recordings tables as posternd wrote them before schema 2.
            let c = open_connection(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE gateway_sessions (id TEXT PRIMARY KEY, gateway TEXT NOT NULL, user TEXT NOT NULL, login TEXT NOT NULL, node TEXT NOT NULL, first_authorized INTEGER NOT NULL);
                 CREATE TABLE recordings (id TEXT PRIMARY KEY, user TEXT NOT NULL, login TEXT NOT NULL, node TEXT NOT NULL, gateway TEXT NOT NULL, started_at INTEGER NOT NULL, ended_at INTEGER NOT NULL, interrupted INTEGER NOT NULL, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, stored_at INTEGER NOT NULL);
                 INSERT INTO recordings VALUES ('s-old', 'alice', 'root', 'web1', 'gw', 1, 2, 0, 3, 'x', 4);
                 CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('schema_version', '1');",
            )
            .unwrap();
        }
        let c = open_connection(&path).unwrap();
        init_schema(&c).unwrap();
        init_schema(&c).unwrap();
        let old: Option<String> = c
            .query_row(
                "SELECT node_labels FROM recordings WHERE id = 's-old'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, None, "an old row has no snapshot");
        assert!(has_column(&c, "gateway_sessions", "labels").unwrap());
        let v: String = c
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(v, "4");
    }
}
