//! The gateway's SSH side: the outer server that stock `ssh -J` talks to, and, for every
//! `direct-tcpip` channel to a joined server, an inner SSH server over that channel (the user's
//! real session, terminated here) bridged to a client connection to the server's sshd.
//!
//! One file per step: `outer` (the user certificate, routing a channel to a joined server),
//! `inner` (the user's session there), `authorize` (the CA's authorization: the only maker
//! of the `AuthorizedTarget` that dialing needs), `dial` (the connection to the server's sshd
//! and the login there), `upstream` (the gateway as that sshd's client), `live`
//! (live sessions and their cuts) and `agent` (agent channels back to the user). Here: the
//! state they share.

mod agent;
mod authorize;
mod dial;
mod inner;
mod live;
mod outer;
mod upstream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use postern_core::api::Inventory;
use postern_core::cert::generate_ed25519;
use postern_core::{ClusterName, NodeName, SessionId, Username};
use russh::server::Auth;
use ssh_key::{Certificate, PrivateKey, PublicKey};
use tokio::sync::{Notify, RwLock};

use crate::ca::CaClient;
use crate::limits::{Limits, UserRefusal};

pub use outer::serve_connection;

/// State shared by every connection.
pub struct Gateway {
    /// The CA.
    pub ca: CaClient,
    /// Cluster name.
    pub cluster: ClusterName,
    /// The gateway's name.
    pub name: NodeName,
    /// The last inventory.
    pub inventory: RwLock<Option<Inventory>>,
    /// The outer server's config.
    pub outer: Arc<russh::server::Config>,
    /// The inner host key (certified per server by the CA).
    pub inner_key: PrivateKey,
    /// Host certificates for the inner connection, per server name.
    host_certs: Mutex<HashMap<String, (Certificate, u64)>>,
    live: Mutex<HashMap<SessionId, live::Live>>,
    /// Recording spool.
    pub spool: PathBuf,
    /// Wakes the uploader.
    pub uploaded: Arc<Notify>,
    /// Audit events to the CA.
    pub audit: crate::audit::Audit,
    /// `[sessions] disconnect_expired_cert` of gate.toml.
    disconnect_expired_cert: bool,
    /// `max_connections` and `[limits]` of gate.toml, and what each holds.
    pub limits: Arc<Limits>,
}

fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: None,
        partial_success: false,
    }
}

/// The CA keys of an inventory's list (`user_ca_keys`, `host_ca_keys`) that parse.
fn ca_keys(lines: &[String]) -> Vec<PublicKey> {
    lines
        .iter()
        .filter_map(|k| PublicKey::from_openssh(k).ok())
        .collect()
}

/// Base server config: constant-time rejections handled by `auth_rejection_time`, no delay
/// for OpenSSH's initial "none" probe, bounded buffers.
pub fn server_config(
    keys: Vec<PrivateKey>,
    certificates: Vec<Certificate>,
) -> russh::server::Config {
    russh::server::Config {
        keys,
        certificates,
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        max_auth_attempts: 6,
        nodelay: true,
        ..Default::default()
    }
}

impl Gateway {
    /// Builds the gateway state; its audit events go to `audit` (the journal `serve` opened).
    pub fn new(
        ca: CaClient,
        outer: russh::server::Config,
        spool: PathBuf,
        audit: crate::audit::Audit,
        disconnect_expired_cert: bool,
        limits: Arc<Limits>,
    ) -> Result<Gateway> {
        let j = ca.joined().clone();
        Ok(Gateway {
            ca: ca.clone(),
            cluster: j.cluster,
            name: j.name,
            inventory: RwLock::new(None),
            outer: Arc::new(outer),
            inner_key: generate_ed25519("postern-gate inner host key")?,
            host_certs: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            spool,
            uploaded: Arc::new(Notify::new()),
            audit,
            disconnect_expired_cert,
            limits,
        })
    }

    /// A per-user refusal: logged, audited with the limit as reason, and the user's message
    /// returned for the channel's refusal.
    async fn refuse_for_user(&self, user: &Username, node: &str, r: UserRefusal) -> String {
        tracing::info!(%user, node, limit = r.which.key(), value = r.limit, "refused by [limits]: {}", r.message);
        self.audit.refused(
            user.as_str(),
            serde_json::json!({ "node": node, "reason": r.which.key(), "limit": r.limit, "message": r.message }),
        ).await;
        r.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_keys_skips_lines_that_are_no_key() {
        let key = generate_ed25519("ca").unwrap().public_key().clone();
        let lines = [
            key.to_openssh().unwrap(),
            "not a key".to_owned(),
            String::new(),
        ];
        let parsed: Vec<_> = ca_keys(&lines)
            .iter()
            .map(|k| k.key_data().clone())
            .collect();
        assert_eq!(parsed, [key.key_data().clone()]);
        assert!(ca_keys(&[]).is_empty());
    }

    /// What the doc promises: every rejection takes the same time, OpenSSH's first "none"
    /// probe none, and idle connections end.
    #[test]
    fn server_config_keeps_rejections_constant_time_and_buffers_bounded() {
        let c = server_config(Vec::new(), Vec::new());
        assert_eq!(c.auth_rejection_time, Duration::from_millis(300));
        assert_eq!(c.auth_rejection_time_initial, Some(Duration::ZERO));
        assert_eq!(c.max_auth_attempts, 6);
        assert_eq!(c.inactivity_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(c.keepalive_interval, Some(Duration::from_secs(30)));
        assert!(c.nodelay);
    }
}
