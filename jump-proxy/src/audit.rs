//! Audit events from the gateway to posternd (`/v1/node/events`): sessions, exec commands,
//! subsystems, SFTP and scp file operations, port forwards, refused destinations. Every event
//! is first appended to the durable journal in the state directory (`journal.rs`, fsync'd by
//! one writer thread with group commit), then sent in batches by one task, which removes a
//! segment only once the CA acknowledged all of its events; what a crash or restart leaves in
//! the journal is sent first. Each event carries a gateway-assigned `event_id` (in its detail)
//! by which the CA drops a batch sent again after a crash between its acknowledgement and the
//! segment's removal.
//!
//! Senders wait when the writer is behind (a bounded queue: back-pressure on the session,
//! never a silent drop); in strict recording the relay also waits until the event is durable
//! before it forwards the bytes or request that carry the operation. An event that cannot be
//! written (the journal at `[audit] spool_max_bytes`, a disk error) is logged with a running
//! count and reported to the CA as `gateway.audit_events_dropped` once the journal takes
//! events again; strict mode ends the session instead of letting the operation through.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use postern_core::api::{EventsRequest, NodeEvent, RecordingMeta};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::ca::CaClient;
use crate::journal::{self, AppendError, Journal};
use crate::observe::Op;
use crate::scp::{ScpOp, ScpPath};
use crate::sftp::FileOp;
use postern_core::batch::{EventBatch, Offer};
use postern_core::clock::now;
use postern_core::SessionId;

/// Appends waiting for the writer, at most; senders wait beyond (back-pressure).
const QUEUE: usize = 1024;
/// Appends written and synced together, at most (group commit).
const GROUP: usize = 256;
/// How long the sender waits for new events before it closes and removes a segment whose
/// events the CA all acknowledged (until then a restart sends them again; the CA drops them).
const IDLE_CLOSE: Duration = Duration::from_secs(5);
/// The wait before events are sent again to a CA that could not take them.
const RETRY: Duration = Duration::from_secs(2);

/// Why an event was not recorded: its operation must not go through in strict mode.
#[derive(Debug)]
pub struct Unrecorded(String);

impl std::fmt::Display for Unrecorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Events to append, and who waits for them to be durable.
struct Append {
    events: Vec<NodeEvent>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// Gateway-assigned event ids: a random prefix per process and a counter.
struct Ids {
    prefix: String,
    next: AtomicU64,
}

impl Ids {
    fn new() -> Ids {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Ids {
            prefix: hex::encode(b),
            next: AtomicU64::new(1),
        }
    }

    /// Puts a new id into the event's detail (`event_id`).
    fn assign(&self, ev: &mut NodeEvent) {
        let id = format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        match ev.detail.as_mut() {
            Some(Value::Object(m)) => {
                m.insert("event_id".into(), json!(id));
            }
            Some(_) => {}
            None => ev.detail = Some(json!({ "event_id": id })),
        }
    }
}

/// A sender of audit events (cheap to clone).
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Append>,
    ids: Arc<Ids>,
}

impl Audit {
    /// Opens the journal in `dir` (at most `max_bytes` on disk) and starts its writer thread
    /// and the task that sends it to the CA.
    pub fn start(ca: CaClient, dir: &Path, max_bytes: u64) -> Result<Audit> {
        let j = Journal::open(dir, max_bytes)
            .with_context(|| format!("cannot open the audit event journal {}", dir.display()))?;
        if j.bytes() > 0 {
            tracing::info!(
                bytes = j.bytes(),
                "audit events the gateway had not delivered before it stopped are sent first"
            );
        }
        let j = Arc::new(Mutex::new(j));
        let wake = Arc::new(Notify::new());
        let ids = Arc::new(Ids::new());
        let (tx, rx) = mpsc::channel(QUEUE);
        {
            let (j, wake, ids) = (Arc::clone(&j), Arc::clone(&wake), Arc::clone(&ids));
            std::thread::Builder::new()
                .name("audit-journal".into())
                .spawn(move || writer(&j, rx, &wake, &ids))
                .context("cannot start the audit journal's writer")?;
        }
        tokio::spawn(sender(ca, j, wake));
        Ok(Audit { tx, ids })
    }

    /// Appends events to the journal, waiting while the writer is behind; with `durable`,
    /// until they were synced to disk (or could not be: the error says why).
    pub async fn send(&self, mut events: Vec<NodeEvent>, durable: bool) -> Result<(), Unrecorded> {
        if events.is_empty() {
            return Ok(());
        }
        for ev in &mut events {
            self.ids.assign(ev);
        }
        let stopped = || Unrecorded("the audit journal's writer stopped".into());
        let (done, wait) = if durable {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        self.tx
            .send(Append { events, done })
            .await
            .map_err(|_| stopped())?;
        match wait {
            Some(r) => r.await.map_err(|_| stopped())?.map_err(Unrecorded),
            None => Ok(()),
        }
    }

    /// One event about a session.
    pub async fn event(
        &self,
        m: &RecordingMeta,
        kind: &str,
        detail: Value,
        durable: bool,
    ) -> Result<(), Unrecorded> {
        self.send(vec![session_event(m, kind, detail)], durable)
            .await
    }

    /// The events of a file-transfer observer.
    pub async fn observed(
        &self,
        m: &RecordingMeta,
        ops: Vec<Op>,
        durable: bool,
    ) -> Result<(), Unrecorded> {
        let events = ops
            .into_iter()
            .map(|op| match op {
                Op::Scp(op) => scp_op(m, op),
                Op::Sftp(op) => file_op(m, op),
            })
            .collect();
        self.send(events, durable).await
    }

    /// A port forward through a session, allowed or refused by permits.
    pub async fn forward(
        &self,
        user: &str,
        node: &str,
        host: &str,
        port: u32,
        allowed: bool,
        durable: bool,
    ) -> Result<(), Unrecorded> {
        let kind = if allowed {
            "gateway.port_forward"
        } else {
            "gateway.port_forward_refused"
        };
        let host: String = host.chars().take(255).collect();
        let ev = user_event(
            kind,
            user,
            None,
            json!({ "node": node, "host": host, "port": port }),
        );
        self.send(vec![ev], durable).await
    }

    /// Agent forwarding of a session: requested (allowed or refused) or a channel used.
    pub async fn agent(&self, user: &str, node: &str, session: &SessionId, kind: &str) {
        let ev = user_event(kind, user, Some(session.as_str()), json!({ "node": node }));
        let _ = self.send(vec![ev], false).await;
    }

    /// A live session cut (`gateway.session_cut`), with the reason and what the user read.
    /// Called with the live-session table held, so the event is queued by a task of its own
    /// (one per cut session at most).
    pub fn session_cut(
        &self,
        s: &postern_core::cut::LiveSession,
        session: &SessionId,
        cut: &postern_core::cut::Cut,
        message: &str,
    ) {
        let mut detail = json!({
            "node": s.node.as_str(),
            "reason": cut.audit_reason(),
            "message": message,
            "user_cert_serial": s.user_cert_serial,
            "user_cert_valid_before": s.user_cert_valid_before,
        });
        if let postern_core::cut::Cut::Locked { id, .. } = cut {
            detail["lock"] = json!(id);
        }
        let ev = NodeEvent {
            kind: "gateway.session_cut".into(),
            ts: now(),
            login: s.login.to_string(),
            user: Some(s.user.to_string()),
            session: Some(session.to_string()),
            serial: Some(s.user_cert_serial),
            remote: None,
            tty: None,
            detail: Some(detail),
        };
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.send(vec![ev], false).await;
        });
    }

    /// An event without a session (a refused destination).
    pub async fn refused(&self, user: &str, detail: Value) {
        let ev = user_event("gateway.refused", user, None, detail);
        let _ = self.send(vec![ev], false).await;
    }
}

/// One event about a session.
pub fn session_event(m: &RecordingMeta, kind: &str, detail: Value) -> NodeEvent {
    NodeEvent {
        kind: kind.into(),
        ts: now(),
        login: m.login.to_string(),
        user: Some(m.user.to_string()),
        session: Some(m.id.to_string()),
        serial: None,
        remote: None,
        tty: None,
        detail: Some(json!({ "node": m.node, "extra": detail })),
    }
}

/// An event of a Postern user outside a session's recording metadata.
fn user_event(kind: &str, user: &str, session: Option<&str>, detail: Value) -> NodeEvent {
    NodeEvent {
        kind: kind.into(),
        ts: now(),
        login: String::new(),
        user: Some(user.into()),
        session: session.map(str::to_owned),
        serial: None,
        remote: None,
        tty: None,
        detail: Some(detail),
    }
}

/// A file operation seen in SFTP (`sftp.open`, ...), or the end of the observation
/// (`gateway.sftp.observer_gave_up`, named like scp's).
pub fn file_op(m: &RecordingMeta, op: FileOp) -> NodeEvent {
    let (kind, detail) = match op {
        FileOp::Open { path, flags } => ("sftp.open", json!({ "path": path, "flags": flags })),
        FileOp::Close {
            path,
            read,
            written,
        } => (
            "sftp.close",
            json!({ "path": path, "read": read, "written": written }),
        ),
        FileOp::Remove { path } => ("sftp.remove", json!({ "path": path })),
        FileOp::Rename { from, to } => ("sftp.rename", json!({ "from": from, "to": to })),
        FileOp::Mkdir { path } => ("sftp.mkdir", json!({ "path": path })),
        FileOp::Rmdir { path } => ("sftp.rmdir", json!({ "path": path })),
        FileOp::GaveUp { reason } => (
            "gateway.sftp.observer_gave_up",
            json!({ "message": "sftp observer gave up", "reason": reason }),
        ),
    };
    session_event(m, kind, detail)
}

/// A file operation seen in legacy scp (`gateway.scp.open`, `gateway.scp.close`, ...), shaped
/// like SFTP's; `mode` is octal text as scp sends it (`"0644"`). Under `gateway.` because the
/// CA takes only `gateway.*` and `sftp.*` kinds from a gateway and refuses a whole batch
/// that holds another.
pub fn scp_op(m: &RecordingMeta, op: ScpOp) -> NodeEvent {
    let with_path = |mut detail: Value, p: ScpPath| {
        detail["path"] = json!(p.path);
        if let Some(d) = p.if_target_is_dir {
            detail["path_if_target_is_dir"] = json!(d);
        }
        detail
    };
    let (kind, detail) = match op {
        ScpOp::Open {
            path,
            mode,
            size,
            direction,
        } => (
            "gateway.scp.open",
            with_path(
                json!({ "mode": format!("{mode:04o}"), "size": size, "direction": direction.as_str() }),
                path,
            ),
        ),
        ScpOp::Close {
            path,
            read,
            written,
            error,
        } => {
            let mut d = json!({ "read": read, "written": written, "ok": error.is_none() });
            if let Some(e) = error {
                d["error"] = json!(e.chars().take(1024).collect::<String>());
            }
            ("gateway.scp.close", with_path(d, path))
        }
        ScpOp::Mkdir { path, mode } => (
            "gateway.scp.mkdir",
            with_path(json!({ "mode": format!("{mode:04o}") }), path),
        ),
        ScpOp::OpenDir { path, mode } => (
            "gateway.scp.opendir",
            with_path(json!({ "mode": format!("{mode:04o}") }), path),
        ),
        ScpOp::Error {
            from,
            path,
            message,
        } => {
            let d = json!({ "from": from.as_str(), "message": message.chars().take(1024).collect::<String>() });
            let d = match path {
                Some(p) => with_path(d, p),
                None => d,
            };
            ("gateway.scp.error", d)
        }
        ScpOp::ErrorsSuppressed { reported } => (
            "gateway.scp.errors_suppressed",
            json!({ "message": "too many scp error messages; the rest are not reported", "reported": reported }),
        ),
        ScpOp::GaveUp { reason } => (
            "gateway.scp.observer_gave_up",
            json!({ "message": "scp observer gave up", "reason": reason }),
        ),
    };
    session_event(m, kind, detail)
}

/// The events from the front of the queue one request carries (`postern_core::batch`);
/// `None` when the first is larger than any request can be.
fn next_batch<'a>(pending: impl IntoIterator<Item = &'a NodeEvent>) -> Option<Vec<NodeEvent>> {
    let mut batch = EventBatch::new();
    let mut out = Vec::new();
    for ev in pending {
        match batch.offer(ev) {
            Offer::Taken => out.push(ev.clone()),
            Offer::Full => break,
            Offer::TooLarge => return None,
        }
    }
    Some(out)
}

/// Logs an event that could not be recorded, with the running count.
fn log_drop(ev: &NodeEvent, why: &str, dropped_total: u64) {
    tracing::error!(kind = %ev.kind, user = ?ev.user, session = ?ev.session, detail = ?ev.detail, dropped_total, "audit event dropped: {why}");
}

/// The writer thread: appends what the senders queue, several appends per sync (group
/// commit), and answers each waiting sender once its events are durable or cannot be.
fn writer(journal: &Mutex<Journal>, mut rx: mpsc::Receiver<Append>, wake: &Notify, ids: &Ids) {
    let mut dropped_total: u64 = 0;
    // Drops not yet reported to the CA.
    let mut unreported: u64 = 0;
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        let Ok(mut j) = journal.lock() else {
            for a in group {
                if let Some(d) = a.done {
                    let _ = d.send(Err("the audit journal is unusable".into()));
                }
            }
            return;
        };
        let mut reporting = 0;
        if unreported > 0 {
            let mut ev = NodeEvent {
                kind: "gateway.audit_events_dropped".into(),
                ts: now(),
                login: String::new(),
                user: None,
                session: None,
                serial: None,
                remote: None,
                tty: None,
                detail: Some(json!({
                    "message": "audit events were dropped: the gateway could not write them to its journal (see its log)",
                    "dropped": unreported,
                    "dropped_total": dropped_total,
                })),
            };
            ids.assign(&mut ev);
            if let Ok(line) = serde_json::to_vec(&ev) {
                if j.write(&[line]).is_ok() {
                    reporting = unreported;
                }
            }
        }
        let mut written = Vec::new();
        for a in group {
            let lines: Result<Vec<Vec<u8>>, _> = a.events.iter().map(serde_json::to_vec).collect();
            let r = match lines {
                Ok(lines) => j.write(&lines).map_err(|e| e.to_string()),
                Err(e) => Err(format!("cannot encode the event: {e}")),
            };
            match r {
                Ok(()) => written.push(a),
                Err(why) => {
                    for ev in &a.events {
                        dropped_total += 1;
                        unreported += 1;
                        log_drop(ev, &why, dropped_total);
                    }
                    if let Some(d) = a.done {
                        let _ = d.send(Err(why));
                    }
                }
            }
        }
        match j.sync() {
            Ok(()) => {
                unreported -= reporting;
                for a in written {
                    if let Some(d) = a.done {
                        let _ = d.send(Ok(()));
                    }
                }
                drop(j);
                wake.notify_one();
            }
            Err(e) => {
                let why = AppendError::Io(e).to_string();
                for a in written {
                    for ev in &a.events {
                        dropped_total += 1;
                        unreported += 1;
                        log_drop(ev, &why, dropped_total);
                    }
                    if let Some(d) = a.done {
                        let _ = d.send(Err(why.clone()));
                    }
                }
            }
        }
    }
}

/// Where the sender stands in the oldest segment.
#[derive(Default)]
struct Cursor {
    seq: u64,
    /// Where the next read starts.
    read: u64,
    /// Everything before this offset was acknowledged by the CA (or dropped with a log line).
    acked: u64,
    /// The segment is still being appended to.
    open: bool,
    /// Events read and not yet acknowledged, each with the offset after its line.
    queue: VecDeque<(u64, NodeEvent)>,
}

/// Reads what follows in the journal (blocking): the rest of the oldest segment, removing
/// the closed segments whose events were all acknowledged on the way.
fn refill(journal: &Mutex<Journal>, mut cur: Cursor) -> Result<Cursor> {
    loop {
        let (seq, open, path) = {
            let j = journal
                .lock()
                .map_err(|_| anyhow::anyhow!("the audit journal is unusable"))?;
            match j.oldest() {
                Some((seq, open)) => (seq, open, j.path(seq)),
                None => return Ok(Cursor::default()),
            }
        };
        if seq != cur.seq {
            cur = Cursor {
                seq,
                ..Cursor::default()
            };
        }
        cur.open = open.is_some();
        let lines = match journal::read(&path, cur.read, open) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && open.is_none() => {
                tracing::warn!(segment = %path.display(), "audit journal segment removed by someone else");
                journal::Lines {
                    end: cur.read,
                    ..Default::default()
                }
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if lines.torn > 0 {
            tracing::warn!(segment = %path.display(), bytes = lines.torn, "dropped the torn last line of an audit journal segment: the gateway stopped while writing it, before the event was acknowledged");
        }
        if lines.bad > 0 {
            tracing::error!(segment = %path.display(), lines = lines.bad, "skipped lines of the audit journal that are not events");
        }
        cur.read = lines.end;
        cur.queue.extend(lines.events);
        if !cur.queue.is_empty() {
            return Ok(cur);
        }
        cur.acked = cur.read;
        if cur.open {
            return Ok(cur);
        }
        let mut j = journal
            .lock()
            .map_err(|_| anyhow::anyhow!("the audit journal is unusable"))?;
        j.remove_acked(seq, cur.acked)
            .with_context(|| format!("cannot remove {}", path.display()))?;
    }
}

/// Sends the journal to the CA, oldest first, until the process ends.
async fn sender(ca: CaClient, journal: Arc<Mutex<Journal>>, wake: Arc<Notify>) {
    let mut cur = Cursor::default();
    loop {
        if cur.queue.is_empty() {
            let j = Arc::clone(&journal);
            let taken = std::mem::take(&mut cur);
            match tokio::task::spawn_blocking(move || refill(&j, taken)).await {
                Ok(Ok(c)) => cur = c,
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot read the audit event journal; will retry");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit journal reader failed; will retry");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        if cur.queue.is_empty() {
            // Caught up: wait for more; when none comes for a while, close and remove the
            // open segment if the CA acknowledged all of it.
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(IDLE_CLOSE) => {
                    if cur.open {
                        let (j, seq, acked) = (Arc::clone(&journal), cur.seq, cur.acked);
                        let removed = tokio::task::spawn_blocking(move || {
                            j.lock().map_err(|_| std::io::Error::other("the audit journal is unusable"))?.remove_acked(seq, acked)
                        })
                        .await;
                        if let Ok(Err(e)) = removed {
                            tracing::warn!(error = %e, "cannot remove an acknowledged audit journal segment");
                        }
                    }
                }
            }
            continue;
        }
        let Some(batch) = next_batch(cur.queue.iter().map(|(_, e)| e)) else {
            // One event alone is larger than the CA takes: log it here and move on.
            if let Some((end, ev)) = cur.queue.pop_front() {
                tracing::error!(kind = %ev.kind, user = ?ev.user, detail = ?ev.detail, "audit event too large for the CA; logged here only");
                cur.acked = end;
            }
            continue;
        };
        let n = batch.len();
        match ca.events(EventsRequest { events: batch }).await {
            Ok(()) => {
                if let Some((end, _)) = cur.queue.drain(..n).next_back() {
                    cur.acked = end;
                }
            }
            Err(e)
                if e.1
                    .is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429) =>
            {
                // The CA will never take this batch: log it here rather than retry forever.
                for (end, ev) in cur.queue.drain(..n) {
                    tracing::error!(kind = %ev.kind, user = ?ev.user, detail = ?ev.detail, error = %e.0, "audit event refused by the CA");
                    cur.acked = end;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.0, pending = cur.queue.len(), "audit events not delivered; will retry");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_event_batches_fit_the_cas_body_limit() {
        let ev = |i: usize| NodeEvent {
            kind: "sftp.open".into(),
            ts: 1,
            login: "deploy".into(),
            user: Some("alice".into()),
            session: Some(format!("s-{i}")),
            serial: None,
            remote: None,
            tty: None,
            detail: Some(json!({ "path": "/srv/".repeat(20) })),
        };
        let pending: VecDeque<NodeEvent> = (0..500).map(ev).collect();
        let batch = next_batch(&pending).unwrap();
        assert!(!batch.is_empty() && batch.len() < 500);
        let body = serde_json::to_vec(&EventsRequest { events: batch }).unwrap();
        assert!(
            body.len() <= postern_core::api::MAX_BODY_BYTES,
            "{}",
            body.len()
        );
        let huge = NodeEvent {
            detail: Some(json!({ "path": "/".repeat(postern_core::api::MAX_BODY_BYTES) })),
            ..ev(0)
        };
        assert!(next_batch([&huge, &ev(1)]).is_none());
    }

    #[test]
    fn every_event_gets_an_id_of_its_own() {
        let ids = Ids::new();
        let meta = RecordingMeta {
            id: "s-1".parse().unwrap(),
            user: "alice".parse().unwrap(),
            login: "deploy".parse().unwrap(),
            node: "web1".parse().unwrap(),
            gateway: "gate".into(),
            started_at: 1,
            ended_at: 0,
            interrupted: false,
            bytes: 0,
        };
        let mut a = session_event(&meta, "gateway.exec", json!({ "command": "id" }));
        let mut b = user_event("gateway.refused", "alice", None, json!({}));
        let mut c = a.clone();
        c.detail = None;
        for e in [&mut a, &mut b, &mut c] {
            ids.assign(e);
        }
        let id = |e: &NodeEvent| {
            e.detail.as_ref().unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let all = [id(&a), id(&b), id(&c)];
        assert!(
            all[0] != all[1] && all[1] != all[2] && all[0] != all[2],
            "{all:?}"
        );
        assert!(all
            .iter()
            .all(|i| i.len() <= 64 && i.starts_with(&ids.prefix)));
        assert_eq!(a.detail.unwrap()["extra"]["command"], "id");
    }
}
