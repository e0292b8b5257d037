//! Why an API call failed: `ApiError`, built from reqwest's and rustls' errors and from the
//! server's error body, with messages that say what to do; and `sanitize`, which makes
//! server-supplied text safe for a terminal.

use std::fmt;

use rustls::{AlertDescription, CertificateError};

use postern_core::api::ErrorBody;

/// Why an API call failed.
#[derive(Debug)]
pub enum ApiError {
    /// The server answered with a non-2xx status.
    Status {
        /// HTTP status.
        status: u16,
        /// The server's public message (sanitized).
        message: String,
        /// The id under which the server logged the details.
        request_id: Option<String>,
    },
    /// The TLS handshake failed (pin, certificate, or the server refused our identity).
    Tls {
        /// The URL called.
        url: String,
        /// What rustls reported.
        error: rustls::Error,
    },
    /// The server could not be reached or the connection broke.
    Transport {
        /// The URL called.
        url: String,
        /// What went wrong.
        detail: String,
        /// Whether the request may have reached the server: false when the failure came
        /// while connecting (DNS, TCP, the TLS handshake), before a byte of it was sent.
        maybe_sent: bool,
    },
    /// The server answered something this client cannot read.
    BadAnswer {
        /// The URL called.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// None of several CA addresses answered: each one's failure, from the last round of
    /// tries (see [`crate::Client`]).
    Unavailable {
        /// Each address (its URL, and the IP address when a name resolved to several) with
        /// its failure, in the order tried.
        tried: Vec<(String, ApiError)>,
        /// How many rounds over the addresses were tried.
        rounds: u32,
    },
}

/// Whether a request may be sent again, to the same CA address or another, after it may
/// have reached one (see [`crate::Client`] for when a client fails over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Only when it certainly reached no server: the failure came while connecting. For a
    /// request that spends something once (a one-time code, an invite, a join token) or that
    /// the CA records each time it arrives (an authorization, audit events): a broken-off
    /// answer or a 502/503/504 does not say the first instance did nothing (a handler past
    /// its deadline is answered 503 while its work may still commit), and a second
    /// instance would spend or record it again, or refuse it as already spent.
    Unsent,
    /// Also after a broken-off answer or an answer of 502, 503 or 504: the CA does the same
    /// for a repeat as for the first request, or nothing more (reads, renewals, resumable
    /// uploads).
    Always,
}

impl ApiError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the server refused on purpose: bad credentials (401), policy (403), lock (423).
    pub fn is_refusal(&self) -> bool {
        matches!(self.status(), Some(401 | 403 | 423))
    }

    /// Whether this failure says that the instance is gone, so that a request `resend` allows
    /// goes to the next CA address: no connection (refused, timed out, reset during the
    /// handshake), or, when resending is always safe, a connection broken before the answer
    /// or an answer of 502, 503 or 504. Any other answer (a 4xx above all) and any verdict of
    /// TLS (the pin, the identity) is an answer, the same from every instance.
    pub fn fails_over(&self, resend: Resend) -> bool {
        match self {
            ApiError::Transport { maybe_sent, .. } => !maybe_sent || resend == Resend::Always,
            ApiError::Status { status, .. } => {
                matches!(status, 502..=504) && resend == Resend::Always
            }
            ApiError::Tls { .. } | ApiError::BadAnswer { .. } | ApiError::Unavailable { .. } => {
                false
            }
        }
    }

    /// Whether the server rejected our TLS client identity during the handshake (expired,
    /// revoked or unknown certificate). Under TLS 1.3 this arrives as an alert after the
    /// client thought the handshake was done.
    pub fn is_identity_rejected(&self) -> bool {
        matches!(
            self,
            ApiError::Tls {
                error: rustls::Error::AlertReceived(
                    AlertDescription::BadCertificate
                        | AlertDescription::CertificateExpired
                        | AlertDescription::CertificateRevoked
                        | AlertDescription::CertificateUnknown
                        | AlertDescription::UnsupportedCertificate
                        | AlertDescription::UnknownCA
                        | AlertDescription::AccessDenied
                        | AlertDescription::CertificateRequired
                        | AlertDescription::HandshakeFailure
                ),
                ..
            }
        )
    }
}

pub(crate) fn describe_tls(e: &rustls::Error) -> String {
    match e {
        // Our own verifier errors carry a full sentence already.
        rustls::Error::InvalidCertificate(CertificateError::Other(o)) => o.0.to_string(),
        rustls::Error::InvalidCertificate(c) => format!("the server's certificate is invalid: {c}"),
        rustls::Error::AlertReceived(
            a @ (AlertDescription::BadCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired),
        ) => format!("the server did not accept this device's certificate ({a:?})"),
        rustls::Error::AlertReceived(a) => format!("the server refused the connection ({a:?})"),
        other => other.to_string(),
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Status {
                status,
                message,
                request_id,
            } => match request_id {
                Some(id) => write!(f, "{message} (request id {id})"),
                None => write!(f, "{message} (HTTP {status})"),
            },
            ApiError::Tls { url, error } => {
                write!(f, "TLS connection to {url} failed: {}", describe_tls(error))
            }
            ApiError::Transport { url, detail, .. } => write!(f, "could not reach {url}: {detail}"),
            ApiError::BadAnswer { url, detail } => {
                write!(f, "unexpected answer from {url}: {detail}")
            }
            ApiError::Unavailable { tried, rounds } => {
                write!(f, "no CA address answered")?;
                if *rounds > 1 {
                    write!(f, " in {rounds} rounds")?;
                }
                for (i, (at, e)) in tried.iter().enumerate() {
                    f.write_str(if i == 0 { ": " } else { "; " })?;
                    match e {
                        // The others name the URL they called.
                        ApiError::Status { .. } => write!(f, "{at} answered: {e}")?,
                        _ => write!(f, "{e}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ApiError {}

/// Finds the rustls error in a transport error's chain. `io::Error::source` skips the error it
/// wraps, so wrapped errors are unpacked by hand.
fn find_tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            cur = Some(inner);
            continue;
        }
        cur = err.source();
    }
    None
}

pub(crate) fn transport_error(url: &str, e: reqwest::Error) -> ApiError {
    if let Some(t) = find_tls_error(&e) {
        return ApiError::Tls {
            url: url.to_owned(),
            error: t.clone(),
        };
    }
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    let detail = if e.is_timeout() {
        "timed out".to_owned()
    } else if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    };
    ApiError::Transport {
        url: url.to_owned(),
        detail,
        // reqwest's connector makes the TCP connection and the TLS handshake; hyper sends
        // nothing of a request before the connector has given it a connection.
        maybe_sent: !e.is_connect(),
    }
}

/// The error of a non-2xx answer: the server's JSON error body, or its status and text.
pub(crate) fn status_error(status: reqwest::StatusCode, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ApiError::Status {
            status: status.as_u16(),
            message: sanitize(&e.error),
            request_id: Some(sanitize(&e.request_id)),
        },
        Err(_) => ApiError::Status {
            status: status.as_u16(),
            message: format!(
                "the server answered {status}{}",
                if body.is_empty() {
                    String::new()
                } else {
                    format!(": {}", sanitize(&String::from_utf8_lossy(body)))
                }
            ),
            request_id: None,
        },
    }
}

/// Server-supplied text made safe for a terminal: control characters (which could move the
/// cursor or rewrite earlier lines) are escaped, and the length is bounded.
pub fn sanitize(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= 300 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_rejection_is_recognised_from_alerts_only() {
        let tls = |a| ApiError::Tls {
            url: "u".into(),
            error: rustls::Error::AlertReceived(a),
        };
        assert!(tls(AlertDescription::CertificateExpired).is_identity_rejected());
        assert!(tls(AlertDescription::CertificateRevoked).is_identity_rejected());
        assert!(!tls(AlertDescription::InternalError).is_identity_rejected());
        let status = ApiError::Status {
            status: 403,
            message: "m".into(),
            request_id: None,
        };
        assert!(status.is_refusal() && !status.is_identity_rejected());
    }

    #[test]
    fn sanitize_escapes_terminal_controls_and_truncates() {
        assert_eq!(sanitize("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert!(sanitize(&"x".repeat(10_000)).chars().count() <= 301);
    }
}
