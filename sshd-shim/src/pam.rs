//! `postern-shim pam`, run by `pam_exec`: the account stage refuses locked users, logins and
//! nodes; the session stages report open and close to posternd, spooling what cannot be sent
//! now. It never holds up a login for more than two seconds (the caller's watchdog).

use std::fs;

use anyhow::Result;
use base64::Engine;
use postern_core::api::{EventsRequest, NodeEvent};
use ssh_key::Certificate;

use crate::decide::split_key_id;
use crate::state::{write_atomic, StateDir};

fn env(k: &str) -> Option<String> {
    std::env::var(k)
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 16 * 1024)
}

/// The certificate sshd exposes as `SSH_AUTH_INFO_0="publickey <type> <base64>"`.
pub fn auth_cert() -> Option<Certificate> {
    let info = env("SSH_AUTH_INFO_0")?;
    let line = info.lines().find(|l| l.starts_with("publickey "))?;
    let b64 = line.split_whitespace().nth(2)?;
    let blob = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Certificate::from_bytes(&blob).ok()
}

/// Runs one PAM stage; the exit code tells pam_exec the result.
pub fn run(state: &StateDir) -> Result<i32> {
    let now = postern_core::clock::now();
    let stage = env("PAM_TYPE").unwrap_or_default();
    let login = env("PAM_USER").unwrap_or_default();
    let cert = auth_cert();
    let (user, session) = match &cert {
        Some(c) => {
            let (u, s) = split_key_id(c.key_id());
            (Some(u.to_owned()), s.map(str::to_owned))
        }
        None => (None, None),
    };
    match stage.as_str() {
        "account" => {
            let bundle = match state.load_bundle() {
                Ok(b) => b,
                Err(e) => {
                    crate::log::log(
                        true,
                        &format!("account: no valid bundle ({e:#}); refusing {login}"),
                    );
                    return Ok(1);
                }
            };
            let subject = postern_core::api::LockSubject {
                user: user.as_deref(),
                login: Some(login.as_str()),
                node: Some(bundle.node.as_str()),
            };
            if let Some(l) = postern_core::api::lock_for(&bundle.locks, &subject, now) {
                crate::log::log(
                    true,
                    &format!(
                        "account: refusing {login}: locked ({} {}): {}",
                        l.target, l.name, l.reason
                    ),
                );
                return Ok(1);
            }
            Ok(0)
        }
        "open_session" | "close_session" => {
            let event = NodeEvent {
                kind: if stage == "open_session" {
                    "session.open"
                } else {
                    "session.close"
                }
                .into(),
                ts: now,
                login,
                user,
                session,
                serial: cert.as_ref().map(|c| postern_core::Serial::new(c.serial())),
                remote: env("PAM_RHOST"),
                tty: env("PAM_TTY"),
                detail: None,
            };
            let sent = crate::sync::api(state)
                .ok()
                .and_then(|api| {
                    api.post::<_, serde_json::Value>(
                        "/v1/node/events",
                        &EventsRequest {
                            events: vec![event.clone()],
                        },
                    )
                    .ok()
                })
                .is_some();
            if !sent {
                let name = format!("{now:012}-{}-{}.json", std::process::id(), event.kind);
                write_atomic(
                    &state.spool().join(name),
                    &serde_json::to_vec(&event)?,
                    0o600,
                )?;
                crate::log::log(
                    true,
                    "session event spooled: the CA is unreachable; `postern-shim sync` delivers it",
                );
            }
            Ok(0)
        }
        // Other stages (auth, password) are not ours to judge.
        _ => Ok(0),
    }
}

/// Counts spooled events.
pub fn spooled(state: &StateDir) -> usize {
    fs::read_dir(state.spool()).map(|d| d.count()).unwrap_or(0)
}
