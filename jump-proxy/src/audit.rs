//! Audit events from the gateway to posternd (`/v1/node/events`): sessions, exec commands,
//! subsystems, SFTP and scp file operations, port forwards, refused destinations. Sent in
//! batches by one task; kept in memory (bounded) and retried while the CA is unreachable.

use std::collections::VecDeque;
use std::time::Duration;

use postern_core::api::{EventsRequest, NodeEvent, RecordingMeta};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::ca::CaClient;
use crate::observe::Op;
use crate::record::now;
use crate::scp::{ScpOp, ScpPath};
use crate::sftp::FileOp;

/// Events held while the CA is down, at most.
const MAX_PENDING: usize = 100_000;

/// A sender of audit events (cheap to clone).
#[derive(Clone)]
pub struct Audit(mpsc::UnboundedSender<NodeEvent>);

impl Audit {
    /// Starts the sending task.
    pub fn start(ca: CaClient) -> Audit {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(sender(ca, rx));
        Audit(tx)
    }

    /// One event about a session.
    pub fn event(&self, m: &RecordingMeta, kind: &str, detail: Value) {
        let _ = self.0.send(NodeEvent {
            kind: kind.into(),
            ts: now(),
            login: m.login.to_string(),
            user: Some(m.user.to_string()),
            session: Some(m.id.clone()),
            serial: None,
            remote: None,
            tty: None,
            detail: Some(json!({ "node": m.node, "extra": detail })),
        });
    }

    /// An event of a file-transfer observer.
    pub fn observed(&self, m: &RecordingMeta, op: Op) {
        match op {
            Op::Scp(op) => self.scp_op(m, op),
            Op::Sftp(op) => self.file_op(m, op),
        }
    }

    /// A file operation seen in SFTP (`sftp.open`, ...), or the end of the observation
    /// (`gateway.sftp.observer_gave_up`, named like scp's).
    pub fn file_op(&self, m: &RecordingMeta, op: FileOp) {
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
        self.event(m, kind, detail);
    }

    /// A file operation seen in legacy scp (`gateway.scp.open`, `gateway.scp.close`, ...), shaped
    /// like SFTP's; `mode` is octal text as scp sends it (`"0644"`). Under `gateway.` because the
    /// CA takes only `gateway.*` and `sftp.*` kinds from a gateway and refuses a whole batch
    /// that holds another.
    pub fn scp_op(&self, m: &RecordingMeta, op: ScpOp) {
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
        self.event(m, kind, detail);
    }

    /// A port forward through a session, allowed or refused by permits.
    pub fn forward(&self, user: &str, node: &str, host: &str, port: u32, allowed: bool) {
        let kind = if allowed {
            "gateway.port_forward"
        } else {
            "gateway.port_forward_refused"
        };
        let host: String = host.chars().take(255).collect();
        self.user_event(
            kind,
            user,
            None,
            json!({ "node": node, "host": host, "port": port }),
        );
    }

    /// Agent forwarding of a session: requested (allowed or refused) or a channel used.
    pub fn agent(&self, user: &str, node: &str, session: &str, kind: &str) {
        self.user_event(kind, user, Some(session), json!({ "node": node }));
    }

    /// A live session cut (`gateway.session_cut`), with the reason and what the user read.
    pub fn session_cut(
        &self,
        s: &postern_core::cut::LiveSession,
        session: &str,
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
        let _ = self.0.send(NodeEvent {
            kind: "gateway.session_cut".into(),
            ts: now(),
            login: s.login.to_string(),
            user: Some(s.user.to_string()),
            session: Some(session.to_owned()),
            serial: Some(s.user_cert_serial),
            remote: None,
            tty: None,
            detail: Some(detail),
        });
    }

    /// An event without a session (a refused destination).
    pub fn refused(&self, user: &str, detail: Value) {
        self.user_event("gateway.refused", user, None, detail);
    }

    /// An event of a Postern user outside a session's recording metadata.
    fn user_event(&self, kind: &str, user: &str, session: Option<&str>, detail: Value) {
        let _ = self.0.send(NodeEvent {
            kind: kind.into(),
            ts: now(),
            login: String::new(),
            user: Some(user.into()),
            session: session.map(str::to_owned),
            serial: None,
            remote: None,
            tty: None,
            detail: Some(detail),
        });
    }
}

/// The longest run of events from the front whose request fits the CA's body limit.
pub fn size_batch(pending: &VecDeque<NodeEvent>) -> Vec<NodeEvent> {
    // Room for `{"events":[...]}` and commas.
    let budget = postern_core::api::MAX_BODY_BYTES - 64;
    let mut used = 0;
    let mut out = Vec::new();
    for ev in pending {
        let len = serde_json::to_vec(ev)
            .map(|v| v.len() + 1)
            .unwrap_or(usize::MAX);
        if used + len > budget {
            break;
        }
        used += len;
        out.push(ev.clone());
    }
    out
}

async fn sender(ca: CaClient, mut rx: mpsc::UnboundedReceiver<NodeEvent>) {
    let mut pending: VecDeque<NodeEvent> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(e) => pending.push_back(e),
                None => return,
            }
        }
        while let Ok(e) = rx.try_recv() {
            if pending.len() >= MAX_PENDING {
                pending.pop_front();
            }
            pending.push_back(e);
        }
        let batch = size_batch(&pending);
        let n = batch.len();
        if n == 0 {
            // One event alone is larger than the CA takes: log it here and move on.
            if let Some(ev) = pending.pop_front() {
                tracing::error!(kind = %ev.kind, user = ?ev.user, "audit event too large for the CA; logged here only");
            }
            continue;
        }
        match ca.events(EventsRequest { events: batch }).await {
            Ok(()) => {
                pending.drain(..n);
            }
            Err(e)
                if e.1
                    .is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429) =>
            {
                // The CA will never take this batch: log it here rather than retry forever.
                for ev in pending.drain(..n) {
                    tracing::error!(kind = %ev.kind, user = ?ev.user, detail = ?ev.detail, error = %e.0, "audit event refused by the CA");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.0, pending = pending.len(), "audit events not delivered; will retry");
                tokio::time::sleep(Duration::from_secs(2)).await;
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
        let batch = size_batch(&pending);
        assert!(!batch.is_empty() && batch.len() < 500);
        let body = serde_json::to_vec(&EventsRequest { events: batch }).unwrap();
        assert!(
            body.len() <= postern_core::api::MAX_BODY_BYTES,
            "{}",
            body.len()
        );
    }
}
