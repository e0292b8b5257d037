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
    },
    /// The server answered something this client cannot read.
    BadAnswer {
        /// The URL called.
        url: String,
        /// What went wrong.
        detail: String,
    },
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
            ApiError::Transport { url, detail } => write!(f, "could not reach {url}: {detail}"),
            ApiError::BadAnswer { url, detail } => {
                write!(f, "unexpected answer from {url}: {detail}")
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
