//! The append-only, hash-chained audit log.
//!
//! Each event's hash covers the previous hash and every field, so an edited event breaks its
//! own hash, a deleted one breaks the sequence and the next event's link, and a truncated tail
//! disagrees with the recorded head.

use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The hash of the (absent) event before the first.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn event_hash(prev: &str, seq: i64, ts: i64, kind: &str, actor: &str, detail: &str) -> String {
    let mut h = Sha256::new();
    for part in [prev, &seq.to_string(), &ts.to_string(), kind, actor, detail] {
        // Length-prefixed so that no two field splits hash alike.
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Appends one event; must run inside the caller's transaction.
pub fn append(conn: &Connection, ts: u64, kind: &str, actor: &str, detail: Value) -> Result<()> {
    let head: Option<(i64, String)> = conn
        .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let (prev_seq, prev_hash) = head.unwrap_or((0, GENESIS.to_owned()));
    let seq = prev_seq + 1;
    let ts = i64::try_from(ts)?;
    let detail = detail.to_string();
    let hash = event_hash(&prev_hash, seq, ts, kind, actor, &detail);
    conn.execute(
        "INSERT INTO audit (seq, ts, kind, actor, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![seq, ts, kind, actor, detail, prev_hash, hash],
    )?;
    conn.execute(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        params![seq, hash],
    )?;
    Ok(())
}

/// One event as shown by `audit tail`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Sequence number, from 1.
    pub seq: i64,
    /// Unix time.
    pub ts: i64,
    /// Event kind (`login.success`, `cert.issued`, ...).
    pub kind: String,
    /// Who caused it.
    pub actor: String,
    /// Details.
    pub detail: Value,
}

/// The last `n` events, oldest first.
pub fn tail(conn: &Connection, n: u32) -> Result<Vec<Event>> {
    let mut st = conn.prepare(
        "SELECT seq, ts, kind, actor, detail FROM (SELECT * FROM audit ORDER BY seq DESC LIMIT ?1) ORDER BY seq",
    )?;
    let rows = st.query_map([n], |r| {
        let detail: String = r.get(4)?;
        Ok(Event {
            seq: r.get(0)?,
            ts: r.get(1)?,
            kind: r.get(2)?,
            actor: r.get(3)?,
            detail: serde_json::from_str(&detail).unwrap_or(Value::String(detail)),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The outcome of `audit verify`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verification {
    /// Events checked.
    pub events: i64,
    /// Problems found, each naming the event.
    pub problems: Vec<String>,
}

/// Walks the whole chain.
pub fn verify(conn: &Connection) -> Result<Verification> {
    let mut st = conn
        .prepare("SELECT seq, ts, kind, actor, detail, prev_hash, hash FROM audit ORDER BY seq")?;
    let mut rows = st.query([])?;
    let mut problems = Vec::new();
    let mut expected_seq = 1i64;
    let mut prev_hash = GENESIS.to_owned();
    let mut events = 0;
    while let Some(r) = rows.next()? {
        events += 1;
        let seq: i64 = r.get(0)?;
        let ts: i64 = r.get(1)?;
        let kind: String = r.get(2)?;
        let actor: String = r.get(3)?;
        let detail: String = r.get(4)?;
        let stored_prev: String = r.get(5)?;
        let hash: String = r.get(6)?;
        if seq != expected_seq {
            if seq > expected_seq {
                problems.push(format!(
                    "event {expected_seq}{} deleted",
                    if seq - 1 > expected_seq {
                        format!(" to {}", seq - 1)
                    } else {
                        String::new()
                    }
                ));
            } else {
                problems.push(format!("event {seq} out of order"));
            }
        } else if stored_prev != prev_hash {
            problems.push(format!("event {seq} does not link to event {}", seq - 1));
        }
        if event_hash(&stored_prev, seq, ts, &kind, &actor, &detail) != hash {
            problems.push(format!(
                "event {seq} was edited (its hash does not match its content)"
            ));
        }
        expected_seq = seq + 1;
        prev_hash = hash;
    }
    let head: Option<(i64, String)> = conn
        .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if let Some((hseq, hhash)) = head {
        if hseq >= expected_seq {
            problems.push(format!(
                "events {expected_seq} to {hseq} deleted from the end of the log"
            ));
        } else if hseq == expected_seq - 1 && hhash != prev_hash {
            problems.push(format!("event {hseq} was replaced (head hash differs)"));
        }
    }
    Ok(Verification { events, problems })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        crate::db::init_schema(&c).unwrap();
        for i in 0..5 {
            append(&c, 100 + i, "test", "tester", json!({ "i": i })).unwrap();
        }
        c
    }

    #[test]
    fn accepts_untouched_chain() {
        let v = verify(&db()).unwrap();
        assert_eq!(v.events, 5);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
    }

    #[test]
    fn rejects_edited_event() {
        let c = db();
        c.execute("UPDATE audit SET detail = '{\"i\":99}' WHERE seq = 3", [])
            .unwrap();
        let v = verify(&c).unwrap();
        assert_eq!(
            v.problems,
            ["event 3 was edited (its hash does not match its content)"]
        );
    }

    #[test]
    fn rejects_deleted_event() {
        let c = db();
        c.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
        let v = verify(&c).unwrap();
        assert_eq!(v.problems, ["event 2 deleted"]);
    }

    #[test]
    fn rejects_truncated_tail() {
        let c = db();
        c.execute("DELETE FROM audit WHERE seq >= 4", []).unwrap();
        let v = verify(&c).unwrap();
        assert_eq!(
            v.problems,
            ["events 4 to 5 deleted from the end of the log"]
        );
    }

    #[test]
    fn rejects_rehashed_edit_by_the_next_link() {
        // An attacker who edits event 3 and recomputes its hash still breaks event 4's link.
        let c = db();
        let prev: String = c
            .query_row("SELECT prev_hash FROM audit WHERE seq = 3", [], |r| {
                r.get(0)
            })
            .unwrap();
        let h = event_hash(&prev, 3, 102, "test", "tester", "{\"i\":99}");
        c.execute(
            "UPDATE audit SET detail = '{\"i\":99}', hash = ?1 WHERE seq = 3",
            [h],
        )
        .unwrap();
        let v = verify(&c).unwrap();
        assert_eq!(v.problems, ["event 4 does not link to event 3"]);
    }
}
