//! The schema as numbered steps: `meta.schema_version` says which steps a database has had;
//! opening it runs every later step in order, each in its own transaction that also records
//! its number. A database of a version this binary does not know (written by a newer
//! `posternd`) is refused rather than used.
//!
//! Every step is idempotent (`CREATE ... IF NOT EXISTS`, a column added only when missing):
//! before numbered steps, versions 1 and 3 were each written by several releases that added
//! tables or columns without raising the version, and those upgrades were not atomic. So each
//! step holds everything a database claiming the version before it may lack.

use anyhow::{anyhow, bail, Context, Result};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

/// One step: the SQL that brings a database from `version - 1` to `version`, then the columns
/// it adds to tables that may already exist, as (table, column, type).
struct Step {
    version: u32,
    sql: &'static str,
    columns: &'static [(&'static str, &'static str, &'static str)],
}

/// The steps, in order; the last one's number is [`CURRENT`].
const STEPS: &[Step] = &[
    // 1: the first schema: users, certificates, the audit chain.
    Step {
        version: 1,
        sql: r#"
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
"#,
        columns: &[],
    },
    // 2: servers, gateways and recordings (their tables came while the version still said
    // 1), and the labels snapshot `view_recordings` judges recordings by.
    Step {
        version: 2,
        sql: r#"
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    labels TEXT NOT NULL,
    expires INTEGER NOT NULL,
    created_at INTEGER NOT NULL
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
    identity_serial INTEGER NOT NULL
);
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
    first_authorized INTEGER NOT NULL
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
    stored_at INTEGER NOT NULL
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
"#,
        columns: &[
            // The server's labels when the CA authorized the session. NULL in older rows,
            // which the code reads as "not known" (see `store::recordings`).
            ("gateway_sessions", "labels", "TEXT"),
            // The labels `view_recordings` is judged against: the session's, snapshotted
            // when the recording was stored.
            ("recordings", "node_labels", "TEXT"),
        ],
    },
    // 3: the one name a join token is for, and whether it may replace that name. A token
    // from before (NULL name) joins nothing.
    Step {
        version: 3,
        sql: "",
        columns: &[
            ("tokens", "name", "TEXT"),
            ("tokens", "replace", "INTEGER NOT NULL DEFAULT 0"),
        ],
    },
    // 4: the hard lock after repeated login failures (`failed_count` now counts every
    // failure since the last success, across locks), and what came while the version still
    // said 3: gateways' egress addresses, recordings' authorization time, the event ids of
    // gateways' events and the signed checkpoints of the audit log.
    Step {
        version: 4,
        sql: r#"
-- The event ids a gateway's events carry: an event sent again is audited once.
CREATE TABLE IF NOT EXISTS gateway_event_ids (
    gateway TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received INTEGER NOT NULL,
    PRIMARY KEY (gateway, event_id)
) WITHOUT ROWID;
-- Every audit event's (seq, hash) signed with the audit key (DATA/ca/audit.key). The events
-- of an older database are signed once, when the key is created: audit::sign_existing.
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    sig TEXT NOT NULL
);
"#,
        columns: &[
            // A gateway's configured egress addresses (comma-separated) and the address the
            // CA saw it join from: servers exempt them from sshd's per-source penalties.
            ("nodes", "egress", "TEXT"),
            ("nodes", "seen_from", "TEXT"),
            // When the CA authorized the recording's session: a user's own recordings are
            // those authorized since their user record was made.
            ("recordings", "authorized_at", "INTEGER"),
            // A user locked until `posternd users reset`.
            ("users", "hard_locked", "INTEGER NOT NULL DEFAULT 0"),
        ],
    },
];

/// The schema version this binary writes and reads.
pub const CURRENT: u32 = 4;

/// The version a database has had the steps of (0: none, a new file).
pub fn version(conn: &Connection) -> Result<u32> {
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
        [],
        |r| r.get(0),
    )?;
    if !has_meta {
        return Ok(0);
    }
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match v {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| anyhow!("the database's schema_version {v:?} is not a number")),
    }
}

/// Brings the database to [`CURRENT`]: every step above its version, in order, each in a
/// transaction with the record of its number. Refuses a database newer than this binary.
///
/// The last step is asserted again on a database that already says [`CURRENT`]: builds of
/// the lockout work wrote version 4 before the audit checkpoints and the gateways' event ids
/// had their tables, and the code before numbered steps repaired that at every start. On a
/// complete database this writes nothing (every statement is `IF NOT EXISTS` or a column
/// added only when missing).
pub fn run(conn: &Connection) -> Result<()> {
    let from = version(conn).context("cannot read the database's schema version")?;
    if from > CURRENT {
        bail!(
            "the database has schema version {from}, newer than this posternd knows ({CURRENT}): it was written by a newer posternd; run that version, or restore a backup made before the upgrade"
        );
    }
    if from == CURRENT {
        if let Some(last) = STEPS.last() {
            let tx = conn.unchecked_transaction()?;
            apply(&tx, last).context("cannot complete the database schema")?;
            tx.commit().context("cannot commit the completed schema")?;
        }
        return Ok(());
    }
    for step in STEPS.iter().filter(|s| s.version > from) {
        let v = step.version;
        // Immediate: the version is read again under the write lock, so that two processes
        // opening an old database at once apply each step once.
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        if version(&tx)? >= v {
            continue;
        }
        apply(&tx, step)
            .with_context(|| format!("cannot bring the database schema to version {v}"))?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [v.to_string()],
        )
        .context("cannot record the schema version")?;
        tx.commit()
            .with_context(|| format!("cannot commit schema version {v}"))?;
    }
    Ok(())
}

fn apply(conn: &Connection, step: &Step) -> Result<()> {
    conn.execute_batch(step.sql)?;
    for (table, column, ty) in step.columns {
        if !has_column(conn, table, column)? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                .with_context(|| format!("cannot add the column {table}.{column}"))?;
        }
    }
    Ok(())
}

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool> {
    let mut st = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = st
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(names.iter().any(|n| n == column))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_are_numbered_from_one_to_current() {
        let numbers: Vec<u32> = STEPS.iter().map(|s| s.version).collect();
        assert_eq!(numbers, (1..=CURRENT).collect::<Vec<_>>());
    }

    fn open(d: &tempfile::TempDir) -> Connection {
        crate::db::open_connection(&d.path().join("db")).unwrap()
    }

    /// Every table with its columns (name and declared type), sorted: what code can rely on.
    fn shape(c: &Connection) -> Vec<(String, Vec<(String, String)>)> {
        let mut st = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap();
        let tables: Vec<String> = st
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        tables
            .into_iter()
            .map(|t| {
                let mut st = c.prepare(&format!("PRAGMA table_info({t})")).unwrap();
                let mut cols: Vec<(String, String)> = st
                    .query_map([], |r| Ok((r.get(1)?, r.get(2)?)))
                    .unwrap()
                    .collect::<rusqlite::Result<_>>()
                    .unwrap();
                cols.sort();
                (t, cols)
            })
            .collect()
    }

    fn fresh_shape() -> Vec<(String, Vec<(String, String)>)> {
        let d = tempfile::tempdir().unwrap();
        let c = open(&d);
        run(&c).unwrap();
        shape(&c)
    }

    /// A database as an older posternd left it: the steps up to `v` (exactly what those
    /// versions created), with `v` recorded, and one row the upgrade must keep.
    fn at_version(d: &tempfile::TempDir, v: u32) -> Connection {
        let c = open(d);
        for s in STEPS.iter().filter(|s| s.version <= v) {
            apply(&c, s).unwrap();
        }
        c.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
            [v.to_string()],
        )
        .unwrap();
        c.execute(
            "INSERT INTO users (name, created_at) VALUES ('alice', 5)",
            [],
        )
        .unwrap();
        c
    }

    #[test]
    fn a_fresh_database_gets_every_step() {
        let d = tempfile::tempdir().unwrap();
        let c = open(&d);
        assert_eq!(version(&c).unwrap(), 0);
        run(&c).unwrap();
        assert_eq!(version(&c).unwrap(), CURRENT);
        let tables: Vec<String> = shape(&c).into_iter().map(|(t, _)| t).collect();
        for t in [
            "audit",
            "audit_checkpoints",
            "audit_head",
            "certs",
            "gateway_event_ids",
            "gateway_sessions",
            "locks",
            "meta",
            "nodes",
            "recording_uploads",
            "recordings",
            "tokens",
            "users",
        ] {
            assert!(tables.iter().any(|x| x == t), "{t} missing from {tables:?}");
        }
        assert!(has_column(&c, "users", "hard_locked").unwrap());
    }

    #[test]
    fn a_database_at_each_older_version_is_brought_to_the_current_one() {
        let fresh = fresh_shape();
        for v in 1..CURRENT {
            let d = tempfile::tempdir().unwrap();
            let c = at_version(&d, v);
            run(&c).unwrap();
            assert_eq!(version(&c).unwrap(), CURRENT, "from version {v}");
            assert_eq!(shape(&c), fresh, "from version {v}");
            let created: i64 = c
                .query_row(
                    "SELECT created_at FROM users WHERE name = 'alice'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(created, 5, "from version {v}: rows are kept");
        }
    }

    /// Versions 1 and 3 were written by releases with and without later tables: a version 3
    /// database made before gateways' egress, event ids and audit checkpoints, and a version 1
    /// database holding only the first schema, upgrade like any other.
    #[test]
    fn regression_databases_of_releases_that_added_tables_without_a_new_version() {
        let fresh = fresh_shape();
        let d = tempfile::tempdir().unwrap();
        let c = open(&d);
        apply(&c, &STEPS[0]).unwrap();
        c.execute_batch(
            "INSERT INTO meta VALUES ('schema_version', '1');
             INSERT INTO users (name, created_at) VALUES ('alice', 5);",
        )
        .unwrap();
        run(&c).unwrap();
        assert_eq!(shape(&c), fresh);

        // Version 1 with the recordings tables of the last release before version 2 (beside
        // the first schema, which every version 1 database has).
        let d = tempfile::tempdir().unwrap();
        let c = open(&d);
        apply(&c, &STEPS[0]).unwrap();
        c.execute_batch(
            "CREATE TABLE gateway_sessions (id TEXT PRIMARY KEY, gateway TEXT NOT NULL, user TEXT NOT NULL, login TEXT NOT NULL, node TEXT NOT NULL, first_authorized INTEGER NOT NULL);
             CREATE TABLE recordings (id TEXT PRIMARY KEY, user TEXT NOT NULL, login TEXT NOT NULL, node TEXT NOT NULL, gateway TEXT NOT NULL, started_at INTEGER NOT NULL, ended_at INTEGER NOT NULL, interrupted INTEGER NOT NULL, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, stored_at INTEGER NOT NULL);
             INSERT INTO recordings VALUES ('s-old', 'alice', 'root', 'web1', 'gw', 1, 2, 0, 3, 'x', 4);
             INSERT INTO meta VALUES ('schema_version', '1');",
        )
        .unwrap();
        run(&c).unwrap();
        run(&c).unwrap();
        let old: Option<String> = c
            .query_row(
                "SELECT node_labels FROM recordings WHERE id = 's-old'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, None, "an old row has no snapshot");
        assert_eq!(version(&c).unwrap(), CURRENT);
        assert_eq!(shape(&c), fresh);

        // Version 3 as e913c75..20ea397 left it: egress columns and event ids came later.
        let d = tempfile::tempdir().unwrap();
        let c = open(&d);
        for s in &STEPS[..3] {
            apply(&c, s).unwrap();
        }
        c.execute("INSERT INTO meta VALUES ('schema_version', '3')", [])
            .unwrap();
        run(&c).unwrap();
        assert_eq!(shape(&c), fresh);
    }

    /// A half-done upgrade of the code before numbered steps (columns added, version not
    /// recorded) finishes without "duplicate column".
    #[test]
    fn regression_an_upgrade_interrupted_before_its_version_was_recorded() {
        let d = tempfile::tempdir().unwrap();
        let c = at_version(&d, 3);
        apply(&c, &STEPS[3]).unwrap();
        run(&c).unwrap();
        assert_eq!(version(&c).unwrap(), CURRENT);
        assert_eq!(shape(&c), fresh_shape());
    }

    #[test]
    fn a_database_at_the_current_version_opens_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let c = at_version(&d, CURRENT);
        let before = shape(&c);
        let changes = c.total_changes();
        run(&c).unwrap();
        assert_eq!(c.total_changes(), changes, "nothing was written");
        assert_eq!(shape(&c), before);
        assert_eq!(version(&c).unwrap(), CURRENT);
    }

    /// Builds of the lockout work wrote version 4 before the checkpoint and event-id tables
    /// existed; the code before numbered steps created them at the next start, and so must
    /// the steps.
    #[test]
    fn regression_a_version_4_database_without_the_checkpoint_tables() {
        let d = tempfile::tempdir().unwrap();
        let c = at_version(&d, CURRENT);
        c.execute_batch("DROP TABLE audit_checkpoints; DROP TABLE gateway_event_ids;")
            .unwrap();
        run(&c).unwrap();
        assert_eq!(shape(&c), fresh_shape());
        assert_eq!(version(&c).unwrap(), CURRENT);
        let alice: i64 = c
            .query_row(
                "SELECT created_at FROM users WHERE name = 'alice'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(alice, 5);
    }

    /// A database made by the code before numbered steps (today's installations) has the
    /// shape the steps make and opens without a single write.
    #[test]
    fn a_database_made_before_numbered_steps_opens_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let c = open(&d);
        c.execute_batch(include_str!("schema-before-steps.sql"))
            .unwrap();
        assert_eq!(shape(&c), fresh_shape());
        let changes = c.total_changes();
        run(&c).unwrap();
        assert_eq!(c.total_changes(), changes, "nothing was written");
        assert_eq!(version(&c).unwrap(), CURRENT);
    }

    #[test]
    fn rejects_a_database_from_a_newer_posternd() {
        let d = tempfile::tempdir().unwrap();
        let c = at_version(&d, CURRENT);
        c.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
            [(CURRENT + 1).to_string()],
        )
        .unwrap();
        let before = shape(&c);
        let e = format!("{:#}", run(&c).unwrap_err());
        assert!(
            e.contains(&format!(
                "schema version {}, newer than this posternd knows ({CURRENT})",
                CURRENT + 1
            )),
            "{e}"
        );
        assert_eq!(shape(&c), before, "nothing was changed");
        assert_eq!(version(&c).unwrap(), CURRENT + 1);
    }

    #[test]
    fn rejects_a_schema_version_that_is_not_a_number() {
        let d = tempfile::tempdir().unwrap();
        let c = at_version(&d, CURRENT);
        c.execute(
            "UPDATE meta SET value = 'x' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        let e = format!("{:#}", run(&c).unwrap_err());
        assert!(e.contains("is not a number"), "{e}");
    }
}
