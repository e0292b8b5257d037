//! Copying every table from one backend to another (`posternd storage migrate`), and the
//! digest that verifies a copy: rows as they are stored, hashes of the audit chain included.

use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

use super::{Cell, Dialect, Tx, Val};

/// Every table, parents first (foreign keys), with the columns of today's schema.
pub const TABLES: &[(&str, &[&str])] = &[
    ("meta", &["key", "value"]),
    (
        "users",
        &[
            "name",
            "password_hash",
            "totp_secret",
            "last_totp_step",
            "failed_count",
            "locked_until",
            "invite_hash",
            "invite_expires",
            "last_password_login",
            "created_at",
            "hard_locked",
        ],
    ),
    (
        "certs",
        &[
            "serial",
            "kind",
            "subject",
            "principals",
            "valid_after",
            "valid_before",
            "issued_at",
            "key_fingerprint",
            "revoked",
        ],
    ),
    (
        "audit",
        &["seq", "ts", "kind", "actor", "detail", "prev_hash", "hash"],
    ),
    ("audit_head", &["id", "seq", "hash"]),
    ("audit_checkpoints", &["seq", "hash", "sig"]),
    (
        "tokens",
        &[
            "id",
            "hash",
            "kind",
            "labels",
            "expires",
            "created_at",
            "name",
            "replace",
        ],
    ),
    (
        "nodes",
        &[
            "name",
            "kind",
            "address",
            "labels",
            "joined_at",
            "last_sync",
            "host_key",
            "host_cert_expiry",
            "identity_serial",
            "egress",
            "seen_from",
        ],
    ),
    (
        "locks",
        &[
            "id",
            "target",
            "name",
            "reason",
            "created_at",
            "expires",
            "created_by",
        ],
    ),
    (
        "gateway_sessions",
        &[
            "id",
            "gateway",
            "user",
            "login",
            "node",
            "first_authorized",
            "labels",
        ],
    ),
    (
        "recordings",
        &[
            "id",
            "user",
            "login",
            "node",
            "gateway",
            "started_at",
            "ended_at",
            "interrupted",
            "bytes",
            "sha256",
            "stored_at",
            "node_labels",
            "authorized_at",
        ],
    ),
    (
        "recording_uploads",
        &["id", "gateway", "received", "started_at", "updated_at"],
    ),
    ("gateway_event_ids", &["gateway", "event_id", "received"]),
];

fn columns(cols: &[&str]) -> String {
    cols.iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every row of `table`, as stored.
pub fn rows(tx: &Tx<'_>, table: &str, cols: &[&str]) -> Result<Vec<Vec<Cell>>> {
    let sql = format!("SELECT {} FROM {table}", columns(cols));
    tx.query_map(&sql, &[], |r| {
        (0..cols.len())
            .map(|i| r.get::<CellOf>(i).map(|c| c.0))
            .collect()
    })
}

struct CellOf(Cell);

impl super::FromCell for CellOf {
    fn from_cell(c: Cell) -> Result<Self, String> {
        Ok(CellOf(c))
    }
}

/// Whether the database holds anything a migration would overwrite: a CA, a user, an event.
pub fn is_empty(tx: &Tx<'_>) -> Result<bool> {
    let n: i64 = tx.query_row(
        "SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM audit) + (SELECT COUNT(*) FROM certs) + (SELECT COUNT(*) FROM meta WHERE key = 'ca_pin')",
        params![],
        |r| r.get(0),
    )?;
    Ok(n == 0)
}

/// Inserts `rows` into `table` (the schema's own `meta.schema_version` is the target's).
pub fn insert(tx: &Tx<'_>, table: &str, cols: &[&str], rows: &[Vec<Cell>]) -> Result<()> {
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES ({}){}",
        columns(cols),
        marks.join(", "),
        if table == "meta" {
            " ON CONFLICT(key) DO NOTHING"
        } else {
            ""
        }
    );
    for row in rows {
        let vals: Vec<Val<'_>> = row
            .iter()
            .map(|c| match c {
                Cell::Null => Val::Null,
                Cell::Int(v) => Val::Int(*v),
                Cell::Text(s) => Val::Text(s),
                Cell::Blob(b) => Val::Blob(b),
            })
            .collect();
        tx.execute(&sql, &vals)?;
    }
    if table == "locks" && tx.dialect() == Dialect::Postgres {
        // The identity goes on after the ids copied.
        tx.query_row(
            "SELECT setval(pg_get_serial_sequence('locks', 'id'), COALESCE((SELECT MAX(id) FROM locks), 0) + 1, false)",
            params![],
            |r| r.get::<i64>(0),
        )?;
    }
    Ok(())
}

/// The rows' count and a digest that does not depend on their order (each row hashed, the
/// hashes sorted and hashed): equal on both sides when every value was copied as it was.
pub fn digest(rows: &[Vec<Cell>]) -> (usize, String) {
    let mut each: Vec<[u8; 32]> = rows
        .iter()
        .map(|row| {
            let mut h = Sha256::new();
            for c in row {
                match c {
                    Cell::Null => h.update([0u8]),
                    Cell::Int(v) => {
                        h.update([1u8]);
                        h.update(v.to_be_bytes());
                    }
                    Cell::Text(s) => {
                        h.update([2u8]);
                        h.update((s.len() as u64).to_be_bytes());
                        h.update(s.as_bytes());
                    }
                    Cell::Blob(b) => {
                        h.update([3u8]);
                        h.update((b.len() as u64).to_be_bytes());
                        h.update(b);
                    }
                }
            }
            h.finalize().into()
        })
        .collect();
    each.sort_unstable();
    let mut all = Sha256::new();
    for e in &each {
        all.update(e);
    }
    (rows.len(), hex::encode(all.finalize()))
}

/// Refuses a table whose rows differ between the two digests.
pub fn check(table: &str, from: &(usize, String), to: &(usize, String)) -> Result<()> {
    if from != to {
        bail!(
            "the copy of {table} differs: {} rows (digest {}) in SQLite, {} rows (digest {}) in PostgreSQL",
            from.0, &from.1[..16], to.0, &to.1[..16]
        );
    }
    Ok(())
}
