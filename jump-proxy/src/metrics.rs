//! The gateway's Prometheus metrics: what they count, and their text exposition.
//!
//! One process-wide [`Metrics`], so that the steps that count need no extra state. Labels are
//! `&'static str` from fixed lists: never a user, a login, a server or an address, so that the
//! number of series is bounded and `/metrics` says nothing about who connected where.
//! postern-gate(8) and postern-gate.toml(5) list each metric with its meaning; keep them in
//! step with [`Metrics::new`]. The upload backlog is measured when `/metrics` is read, from
//! the journal's and the spool's directories, so it is what is on disk at that moment.

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels with values from fixed lists.
type Labels<const N: usize> = [(&'static str, &'static str); N];

/// The metrics of this process.
pub struct Metrics {
    registry: Registry,
    sessions_active: Gauge,
    sessions: Family<Labels<1>, Counter>,
    authorize_seconds: Histogram,
    recording_bytes: Counter,
    backlog_event_bytes: Gauge,
    backlog_recordings: Gauge,
    backlog_recording_bytes: Gauge,
    ca_errors: Family<Labels<2>, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// How a CA call failed, from the answer's status: `unreachable` (no answer: connection,
/// TLS, timeout), `refused` (4xx) or `server` (5xx).
pub fn ca_failure(status: Option<u16>) -> &'static str {
    match status {
        None => "unreachable",
        Some(s) if s >= 500 => "server",
        Some(_) => "refused",
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let sessions_active = Gauge::default();
        registry.register(
            "postern_gateway_sessions_active",
            "Sessions running now: authorized by the CA, logged in to the server, not yet ended or cut",
            sessions_active.clone(),
        );
        let sessions = Family::<Labels<1>, Counter>::default();
        registry.register(
            "postern_gateway_sessions",
            "Session attempts (one login on one server) by the CA's authorization: authorized, refused (the CA said no: policy, lock, revoked certificate), error (the CA could not be asked or failed)",
            sessions.clone(),
        );
        let authorize_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 14),
        );
        registry.register(
            "postern_gateway_authorize_duration_seconds",
            "Time the CA took to answer an authorization, as the gateway saw it (round trip), in seconds",
            authorize_seconds.clone(),
        );
        let recording_bytes = Counter::default();
        registry.register(
            "postern_gateway_recording_bytes_written",
            "Bytes of session recordings written to the spool (asciicast headers and events)",
            recording_bytes.clone(),
        );
        let backlog_event_bytes = Gauge::default();
        registry.register(
            "postern_gateway_upload_backlog_event_bytes",
            "Bytes of audit events in the journal (STATE/events) that the CA has not acknowledged yet",
            backlog_event_bytes.clone(),
        );
        let backlog_recordings = Gauge::default();
        registry.register(
            "postern_gateway_upload_backlog_recordings",
            "Finished recordings in the spool waiting for upload to the CA",
            backlog_recordings.clone(),
        );
        let backlog_recording_bytes = Gauge::default();
        registry.register(
            "postern_gateway_upload_backlog_recording_bytes",
            "Bytes of the finished recordings waiting for upload",
            backlog_recording_bytes.clone(),
        );
        let ca_errors = Family::<Labels<2>, Counter>::default();
        registry.register(
            "postern_gateway_ca_request_errors",
            "CA requests that failed, by call (inventory, authorize, host_cert, events, public_addr, recordings) and kind (unreachable, refused, server)",
            ca_errors.clone(),
        );
        // Every series known in advance starts at 0, so that its first increase is seen
        // (Prometheus' rate() needs a sample before it).
        for o in ["authorized", "refused", "error"] {
            drop(sessions.get_or_create(&[("outcome", o)]));
        }
        Metrics {
            registry,
            sessions_active,
            sessions,
            authorize_seconds,
            recording_bytes,
            backlog_event_bytes,
            backlog_recordings,
            backlog_recording_bytes,
            ca_errors,
        }
    }

    /// A session became live.
    pub fn session_started(&self) {
        self.sessions_active.inc();
    }

    /// A live session ended.
    pub fn session_ended(&self) {
        self.sessions_active.dec();
    }

    /// An authorization answered with `outcome` (`authorized`, `refused`, `error`) after
    /// `took`.
    pub fn authorized(&self, outcome: &'static str, took: Duration) {
        self.sessions.get_or_create(&[("outcome", outcome)]).inc();
        self.authorize_seconds.observe(took.as_secs_f64());
    }

    /// Recording bytes written to the spool.
    pub fn recording_bytes(&self, n: usize) {
        self.recording_bytes.inc_by(n as u64);
    }

    /// A CA request of `call` failed with `status` (none: no answer).
    pub fn ca_error(&self, call: &'static str, status: Option<u16>) {
        self.ca_errors
            .get_or_create(&[("call", call), ("kind", ca_failure(status))])
            .inc();
    }

    /// Measures the backlog in `state` (its `events/` journal and `recordings/` spool).
    fn measure_backlog(&self, state: &Path) {
        let events: u64 = std::fs::read_dir(state.join("events"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .is_some_and(crate::journal::is_segment)
                    })
                    .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                    .sum()
            })
            .unwrap_or(0);
        let spool = state.join("recordings");
        // A finished recording is `<id>.cast` beside its `<id>.done.json` marker.
        let done: Vec<u64> = std::fs::read_dir(&spool)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name();
                        let id = name.to_str()?.strip_suffix(".done.json")?.to_owned();
                        std::fs::metadata(spool.join(format!("{id}.cast")))
                            .ok()
                            .map(|m| m.len())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.backlog_event_bytes.set(gauge(events));
        self.backlog_recordings.set(gauge(done.len() as u64));
        self.backlog_recording_bytes.set(gauge(done.iter().sum()));
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric, the backlog measured
    /// in `state` now.
    pub fn render(&self, state: &Path) -> String {
        self.measure_backlog(state);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backlog_is_what_waits_on_disk() {
        let d = tempfile::tempdir().unwrap();
        let spool = d.path().join("recordings");
        let events = d.path().join("events");
        std::fs::create_dir_all(&spool).unwrap();
        std::fs::create_dir_all(&events).unwrap();
        std::fs::write(spool.join("a.cast"), "12345").unwrap();
        std::fs::write(spool.join("a.done.json"), "{}").unwrap();
        // Still being recorded: not waiting for upload.
        std::fs::write(spool.join("b.cast"), "123").unwrap();
        std::fs::write(events.join("00000000000000000001.jsonl"), "0123456789").unwrap();
        std::fs::write(events.join("stray"), "ignored").unwrap();
        let m = Metrics::new();
        m.ca_error("authorize", Some(503));
        m.ca_error("inventory", None);
        let text = m.render(d.path());
        assert!(
            text.contains("postern_gateway_upload_backlog_recordings 1\n"),
            "{text}"
        );
        assert!(
            text.contains("postern_gateway_upload_backlog_recording_bytes 5\n"),
            "{text}"
        );
        assert!(
            text.contains("postern_gateway_upload_backlog_event_bytes 10\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "postern_gateway_ca_request_errors_total{call=\"authorize\",kind=\"server\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "postern_gateway_ca_request_errors_total{call=\"inventory\",kind=\"unreachable\"} 1\n"
            ),
            "{text}"
        );
    }
}
