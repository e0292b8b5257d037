//! posternd's Prometheus metrics: what they count, and their text exposition.
//!
//! Every metric lives in one process-wide [`Metrics`], registered once, so that the handlers
//! that count need no extra state. Labels are `&'static str` from the fixed lists below:
//! never a user name, a server name or an address, so that the number of series is bounded
//! and `/metrics` tells nobody who logged in. posternd(8) and posternd.toml(5) list each
//! metric with its meaning; keep them in step with [`Metrics::new`].

use std::sync::LazyLock;
use std::time::Duration;

use axum::http::StatusCode;
use postern_core::CertKind;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// One label with a value from a fixed list.
type Label = [(&'static str, &'static str); 1];

/// The latency buckets of authorization, in seconds (1 ms to about 8 s).
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 14)
}

/// The metrics of this process.
pub struct Metrics {
    registry: Registry,
    logins: Family<Label, Counter>,
    renewals: Family<Label, Counter>,
    certificates: Family<Label, Counter>,
    authorize: Family<Label, Counter>,
    authorize_seconds: Histogram,
    database_errors: Family<Label, Counter>,
    recording_bytes: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// The outcome label of an API answer's status: the refusals a client can get, by kind.
pub fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        400 | 408 | 413 => "bad_request",
        401 => "bad_credentials",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        423 => "locked",
        429 => "rate_limited",
        503 => "busy",
        500..=599 => "error",
        _ => "refused",
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let logins = Family::<Label, Counter>::default();
        registry.register(
            "postern_logins",
            "Password logins (POST /v1/login) by outcome: ok (certificates issued), bad_credentials, locked, forbidden (the policy refused), rate_limited, bad_request, busy, error",
            logins.clone(),
        );
        let renewals = Family::<Label, Counter>::default();
        registry.register(
            "postern_renewals",
            "Renewals (POST /v1/renew, mTLS) by outcome: ok (certificates issued), forbidden (identity unknown, revoked, expired, locked or past renew_until), bad_request, busy, error",
            renewals.clone(),
        );
        let certificates = Family::<Label, Counter>::default();
        registry.register(
            "postern_certificates_issued",
            "Certificates issued through the API by kind: ssh-user and x509-client (login, renewal), ssh-node-access (gateway authorization), ssh-host (joins, host-certificate renewals at sync, gateway inner host certificates), x509-node (joins)",
            certificates.clone(),
        );
        let authorize = Family::<Label, Counter>::default();
        registry.register(
            "postern_authorize_requests",
            "Gateway authorizations of one login on one server (POST /v1/gateway/authorize) by outcome: ok, forbidden (policy, lock, revoked or expired certificate), bad_request, not_found, busy, error",
            authorize.clone(),
        );
        let authorize_seconds = Histogram::new(latency_buckets());
        registry.register(
            "postern_authorize_duration_seconds",
            "Time posternd took to answer a gateway authorization, from its headers to its answer, in seconds",
            authorize_seconds.clone(),
        );
        let database_errors = Family::<Label, Counter>::default();
        registry.register(
            "postern_database_errors",
            "Database failures: source=request counts requests answered 500 because their transaction failed (a statement, the commit, the database thread), source=readiness counts /readyz checks the database did not answer within 1 s or failed",
            database_errors.clone(),
        );
        let recording_bytes = Counter::default();
        registry.register(
            "postern_recording_bytes_received",
            "Bytes of session recordings accepted from gateways (resumable chunks and single-request uploads)",
            recording_bytes.clone(),
        );
        // Every series known in advance starts at 0, so that its first increase is seen
        // (Prometheus' rate() needs a sample before it).
        for o in [
            "ok",
            "bad_credentials",
            "locked",
            "forbidden",
            "rate_limited",
            "error",
        ] {
            drop(logins.get_or_create(&[("outcome", o)]));
        }
        for o in ["ok", "forbidden", "error"] {
            drop(renewals.get_or_create(&[("outcome", o)]));
            drop(authorize.get_or_create(&[("outcome", o)]));
        }
        for k in CertKind::ALL {
            drop(certificates.get_or_create(&[("kind", k.as_str())]));
        }
        for s in ["request", "readiness"] {
            drop(database_errors.get_or_create(&[("source", s)]));
        }
        Metrics {
            registry,
            logins,
            renewals,
            certificates,
            authorize,
            authorize_seconds,
            database_errors,
            recording_bytes,
        }
    }

    /// Counts a login answered with `status`.
    pub fn login(&self, status: StatusCode) {
        self.logins
            .get_or_create(&[("outcome", outcome(status))])
            .inc();
        if status.is_success() {
            self.issued(CertKind::SshUser);
            self.issued(CertKind::X509Client);
        }
    }

    /// Counts a renewal answered with `status`.
    pub fn renewal(&self, status: StatusCode) {
        self.renewals
            .get_or_create(&[("outcome", outcome(status))])
            .inc();
        if status.is_success() {
            self.issued(CertKind::SshUser);
            self.issued(CertKind::X509Client);
        }
    }

    /// Counts an authorization answered with `status` after `took`.
    pub fn authorize(&self, status: StatusCode, took: Duration) {
        self.authorize
            .get_or_create(&[("outcome", outcome(status))])
            .inc();
        self.authorize_seconds.observe(took.as_secs_f64());
        if status.is_success() {
            self.issued(CertKind::SshNodeAccess);
        }
    }

    /// Counts one certificate of `kind` issued.
    pub fn issued(&self, kind: CertKind) {
        self.certificates
            .get_or_create(&[("kind", kind.as_str())])
            .inc();
    }

    /// Counts one database failure seen by `source` (`request` or `readiness`).
    pub fn database_error(&self, source: &'static str) {
        self.database_errors
            .get_or_create(&[("source", source)])
            .inc();
    }

    /// Counts recording bytes accepted from a gateway.
    pub fn recording_bytes(&self, n: u64) {
        self.recording_bytes.inc_by(n);
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
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
    fn every_metric_has_help_and_counts_by_fixed_labels() {
        let m = Metrics::new();
        m.login(StatusCode::OK);
        m.login(StatusCode::UNAUTHORIZED);
        m.authorize(StatusCode::FORBIDDEN, Duration::from_millis(3));
        m.recording_bytes(10);
        let text = m.render();
        for name in [
            "postern_logins_total",
            "postern_renewals_total",
            "postern_certificates_issued_total",
            "postern_authorize_requests_total",
            "postern_authorize_duration_seconds",
            "postern_database_errors_total",
            "postern_recording_bytes_received_total",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        }
        assert!(
            text.contains("postern_logins_total{outcome=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("postern_logins_total{outcome=\"bad_credentials\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("postern_certificates_issued_total{kind=\"ssh-user\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("postern_authorize_duration_seconds_count 1\n"),
            "{text}"
        );
        assert!(
            text.contains("postern_recording_bytes_received_total 10\n"),
            "{text}"
        );
    }

    #[test]
    fn outcomes_name_each_refusal() {
        assert_eq!(outcome(StatusCode::LOCKED), "locked");
        assert_eq!(outcome(StatusCode::TOO_MANY_REQUESTS), "rate_limited");
        assert_eq!(outcome(StatusCode::INTERNAL_SERVER_ERROR), "error");
        assert_eq!(outcome(StatusCode::SERVICE_UNAVAILABLE), "busy");
    }
}
