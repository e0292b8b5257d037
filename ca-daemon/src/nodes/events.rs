//! Events that servers and gateways report: what each may report, the times they are logged
//! at, and a gateway's duplicates dropped.

use crate::committed::Committed;
use crate::store::Tx;
use anyhow::Result;
use postern_core::api::NodeEvent;
use postern_core::NodeKind;
use serde_json::json;

use crate::audit;
use crate::authed::{AuthedNode, JoinedNode, NodeEvents};
use crate::service::{now, Refusal, Service};

/// How far before its arrival a reported event's time may lie: a server's spool or a
/// gateway's journal delivers events late after an outage, but not by more than this.
pub const REPORTED_TS_WINDOW: u64 = 24 * 3600;

/// The time an event reported by a node or gateway is logged at: the reported time clamped to
/// `[arrival - REPORTED_TS_WINDOW, arrival]`, so a reporter can neither date events into the
/// future nor bury them in the past (the reported time stays in the detail).
pub fn clamp_reported_ts(reported: u64, arrival: u64) -> u64 {
    reported.clamp(arrival.saturating_sub(REPORTED_TS_WINDOW), arrival)
}

impl Service {
    /// `POST /v1/node/events`.
    pub async fn node_events(
        &self,
        id: AuthedNode<NodeEvents>,
        events: Vec<NodeEvent>,
    ) -> std::result::Result<usize, Refusal> {
        if events.len() > postern_core::batch::MAX_EVENTS_PER_REQUEST {
            return Err(Refusal::BadRequest(
                "at most 1000 events per request".into(),
            ));
        }
        let now = now();
        self.db
            .run(move |c| -> Result<Committed<usize>> {
                let Some(JoinedNode { name, kind, .. }) = id.check(c)? else {
                    return Ok(Committed::Refused(Refusal::Forbidden(
                        "this node's identity is not valid".into(),
                    )));
                };
                if let Some(e) = events.iter().find(|e| !reportable(kind, &e.kind)) {
                    return Ok(Committed::Refused(Refusal::BadRequest(format!(
                        "unknown event kind {:?}",
                        e.kind.chars().take(40).collect::<String>()
                    ))));
                }
                // The actor is who reported the event, from its mTLS identity; the user it
                // names is only its claim and stays in the detail (`user`), with the reported
                // time (`ts`). Events are logged in the order they arrived.
                let actor = format!("{kind}:{name}");
                for e in &events {
                    // A gateway sends its journal again after a crash between our answer
                    // and its removal of the segment: an event id seen before is dropped.
                    if kind == NodeKind::Gateway && !first_report(c, name.as_str(), e, now)? {
                        continue;
                    }
                    let mut detail = serde_json::to_value(e)?;
                    if let Some(m) = detail.as_object_mut() {
                        // Who reported it: a server's events name the server, a gateway's
                        // carry the server inside their own detail.
                        m.insert(kind.to_string(), json!(name.as_str()));
                        m.insert("received".into(), json!(now));
                    }
                    audit::append(c, clamp_reported_ts(e.ts, now), &e.kind, &actor, detail)?;
                }
                Ok(Committed::Done(events.len()))
            })
            .await?
            .into_result()
    }
}

/// Whether this is the first report of a gateway's event: its `event_id` (gateways of this
/// version put one in every event's detail) had not been seen from that gateway. Events
/// without one (servers, older gateways) are always new.
pub(super) fn first_report(c: &Tx<'_>, gateway: &str, e: &NodeEvent, now: u64) -> Result<bool> {
    let Some(id) = e
        .detail
        .as_ref()
        .and_then(|d| d.get("event_id"))
        .and_then(|v| v.as_str())
        .filter(|id| id.len() <= 64)
    else {
        return Ok(true);
    };
    crate::store::audit::first_report(c, gateway, id, now)
}

/// Whether a node of `reporter` kind may report events of `kind`. Servers report PAM session
/// events; gateways also report what they saw inside sessions (`gateway.*` such as exec,
/// subsystem, port forwards and refused destinations, and `sftp.*` file operations), but
/// never a kind the CA itself writes.
pub(super) fn reportable(reporter: NodeKind, kind: &str) -> bool {
    if kind == "session.open" || kind == "session.close" {
        return true;
    }
    let well_formed = kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
    reporter == NodeKind::Gateway
        && well_formed
        && (kind.starts_with("gateway.") || kind.starts_with("sftp."))
        && kind != "gateway.authorized"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_times_are_clamped_to_the_window_before_arrival() {
        let arrival = 1_000_000;
        assert_eq!(clamp_reported_ts(arrival - 5, arrival), arrival - 5);
        assert_eq!(clamp_reported_ts(u64::MAX, arrival), arrival);
        assert_eq!(clamp_reported_ts(arrival + 1, arrival), arrival);
        assert_eq!(clamp_reported_ts(0, arrival), arrival - REPORTED_TS_WINDOW);
        assert_eq!(clamp_reported_ts(0, 10), 0);
    }

    #[test]
    fn servers_report_sessions_and_gateways_also_what_they_saw() {
        for k in ["session.open", "session.close"] {
            assert!(
                reportable(NodeKind::Node, k) && reportable(NodeKind::Gateway, k),
                "{k}"
            );
        }
        for k in [
            "gateway.exec",
            "gateway.port_forward_refused",
            "sftp.open",
            "sftp.rename",
        ] {
            assert!(reportable(NodeKind::Gateway, k), "{k}");
            assert!(!reportable(NodeKind::Node, k), "{k}");
        }
        for k in [
            "gateway.authorized",
            "login.success",
            "lock.added",
            "sftp.Open",
            "sftp.a b",
            "",
        ] {
            assert!(!reportable(NodeKind::Gateway, k), "{k:?}");
        }
        assert!(!reportable(
            NodeKind::Gateway,
            &format!("sftp.{}", "x".repeat(64))
        ));
    }
}
