//! Outer authentication and routing: the connection stock `ssh -J` makes, authenticated by the
//! user certificate (the check the inner connection repeats), whose `direct-tcpip` channels go
//! to joined servers, each served as an inner connection with a host certificate for its names.

use std::net::SocketAddr;
use std::sync::Arc;

use postern_core::api::{HostCertRequest, Inventory, InventoryEntry};
use postern_core::cert::CertValidator;
use postern_core::Username;
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelOpenFailure};
use ssh_key::certificate::CertType;
use ssh_key::Certificate;

use super::inner::Inner;
use super::{ca_keys, reject, server_config, Gateway};
use crate::limits::{Graced, PerUser, PreAuth, Startup, UserSlot};
use postern_core::clock::now;

/// Serves one client connection: the SSH server over `sock`, the whole pre-authentication
/// phase (banner, key exchange, authentication) under the login grace time, and `startup`
/// counting it among the unauthenticated connections until it authenticates.
pub async fn serve_connection(
    gw: Arc<Gateway>,
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    startup: Startup,
) {
    let pre = PreAuth::new();
    let stream = Graced::new(sock, gw.limits.cfg.login_grace_time, Arc::clone(&pre));
    let handler = Outer::new(Arc::clone(&gw), peer, startup, Arc::clone(&pre));
    match russh::server::run_stream(Arc::clone(&gw.outer), stream, handler).await {
        Ok(s) => {
            if let Err(e) = s.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        Err(e) => tracing::debug!(%peer, error = %e, "handshake failed"),
    }
    if pre.expired() {
        tracing::debug!(%peer, "connection closed: not authenticated within the login grace time");
        gw.limits.grace_expired(Some(peer.ip()));
    }
}

/// Why a user certificate is refused.
#[derive(Debug, PartialEq, Eq)]
enum CertRefusal {
    /// Not a valid user certificate of a user CA of the inventory (or no inventory yet), or
    /// its key id is not a user name.
    Invalid,
    /// It carries critical options, which the gateway does not enforce.
    CriticalOptions {
        key_id: String,
        options: Vec<String>,
    },
    /// Its user is locked, or it is revoked.
    Refused { user: Username, why: String },
}

/// Judges a user certificate against the inventory's user CA keys, strictly, its locks and
/// its revoked certificates: the user and the certificate's principals, or why not.
fn judge_user_cert(
    inv: Option<&Inventory>,
    cert: &Certificate,
    now: u64,
) -> Result<(Username, Vec<String>), CertRefusal> {
    let cas = inv.map(|i| ca_keys(&i.user_ca_keys)).unwrap_or_default();
    let v = CertValidator {
        trusted: &cas,
        cert_type: CertType::User,
    }
    .validate(cert, now)
    .map_err(|_| CertRefusal::Invalid)?;
    // The gateway enforces no critical option (force-command, source-address,
    // verify-required): a certificate that carries one would have its restriction silently
    // dropped here, so it is refused. Postern's user CA sets none.
    if !cert.critical_options().is_empty() {
        return Err(CertRefusal::CriticalOptions {
            key_id: v.key_id.as_str().to_owned(),
            options: cert.critical_options().keys().cloned().collect(),
        });
    }
    let user: Username = v
        .key_id
        .as_str()
        .parse()
        .map_err(|_| CertRefusal::Invalid)?;
    // A locked user, or a revoked certificate, is refused here too; the CA refuses
    // authorization anyway.
    let subject = postern_core::api::LockSubject {
        user: Some(user.as_str()),
        ..Default::default()
    };
    let refused = inv.and_then(|i| {
        postern_core::api::lock_for(&i.locks, &subject, now)
            .map(|l| format!("locked ({} {}): {}", l.target, l.name, l.reason))
            .or_else(|| {
                i.revoked_user_certs
                    .iter()
                    .any(|r| r.serial.get() == cert.serial())
                    .then(|| "its certificate is revoked".to_owned())
            })
    });
    if let Some(why) = refused {
        return Err(CertRefusal::Refused { user, why });
    }
    Ok((user, v.principals.iter().map(|p| p.to_string()).collect()))
}

/// Validates a user certificate against the last inventory (`judge_user_cert`), logging why
/// one is refused.
pub(super) async fn check_user_cert(
    gw: &Gateway,
    cert: &Certificate,
) -> Option<(Username, Vec<String>)> {
    let inv = gw.inventory.read().await;
    match judge_user_cert(inv.as_ref(), cert, now()) {
        Ok(v) => Some(v),
        Err(CertRefusal::Invalid) => None,
        Err(CertRefusal::CriticalOptions { key_id, options }) => {
            tracing::info!(key_id = %key_id, options = ?options, "user certificate refused: it carries critical options the gateway does not enforce");
            None
        }
        Err(CertRefusal::Refused { user, why }) => {
            tracing::info!(%user, "user certificate refused: {why}");
            None
        }
    }
}

/// The joined server that `host:port` names: `NAME.<cluster>` or `NAME` (any case, a final
/// dot ignored) on port 22 or on its address's port, or else its address exactly.
fn route_in<'a>(
    inv: &'a Inventory,
    cluster: &str,
    host: &str,
    port: u32,
) -> Option<&'a InventoryEntry> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let suffix = format!(".{cluster}");
    let name = host.strip_suffix(&suffix).unwrap_or(&host);
    inv.nodes
        .iter()
        .find(|n| {
            n.name.as_str() == name && (port == 22 || n.address.ends_with(&format!(":{port}")))
        })
        .or_else(|| {
            inv.nodes
                .iter()
                .find(|n| n.address == format!("{host}:{port}"))
        })
}

impl Gateway {
    /// Resolves `NAME.<cluster>`, `NAME`, or a joined server's address.
    pub async fn route(&self, host: &str, port: u32) -> Option<InventoryEntry> {
        let inv = self.inventory.read().await;
        route_in(inv.as_ref()?, self.cluster.as_str(), host, port).cloned()
    }

    /// The inner connection's host certificate for `node`'s names: the cached one while it
    /// has more than ten minutes left, else a new one from the CA.
    async fn host_cert_for(&self, node: &InventoryEntry) -> Result<Certificate, String> {
        let now = now();
        if let Ok(c) = self.host_certs.lock() {
            if let Some((cert, vb)) = c.get(node.name.as_str()) {
                if *vb > now + 600 {
                    return Ok(cert.clone());
                }
            }
        }
        let resp = self
            .ca
            .host_cert(HostCertRequest {
                node: node.name.clone(),
                public_key: self
                    .inner_key
                    .public_key()
                    .to_openssh()
                    .map_err(|e| e.to_string())?,
            })
            .await
            .map_err(|e| e.0)?;
        let cert = Certificate::from_openssh(resp.certificate.trim()).map_err(|e| e.to_string())?;
        if let Ok(mut c) = self.host_certs.lock() {
            c.insert(node.name.to_string(), (cert.clone(), resp.valid_before));
        }
        Ok(cert)
    }
}

/// The outer connection: authenticated by the user certificate; opens inner sessions.
pub struct Outer {
    /// Shared state.
    pub gw: Arc<Gateway>,
    /// Peer address.
    pub peer: SocketAddr,
    user: Option<(Username, Certificate)>,
    /// Counts this connection among the unauthenticated ones until it authenticates.
    startup: Option<Startup>,
    /// Told when it authenticates, so that the login grace time no longer applies.
    pre: Arc<PreAuth>,
    /// This connection among its user's (`max_connections_per_user`), once authenticated.
    slot: Option<UserSlot>,
}

impl Outer {
    /// A new connection.
    pub fn new(gw: Arc<Gateway>, peer: SocketAddr, startup: Startup, pre: Arc<PreAuth>) -> Outer {
        Outer {
            gw,
            peer,
            user: None,
            startup: Some(startup),
            pre,
            slot: None,
        }
    }
}

impl russh::server::Handler for Outer {
    type Error = anyhow::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(reject())
    }

    async fn auth_openssh_certificate(
        &mut self,
        _user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        match check_user_cert(&self.gw, cert).await {
            Some((user, _)) => {
                // One certificate holder must not hold every connection of the gateway. The
                // refusal is an authentication failure (ssh prints "Permission denied"; the
                // reason is in the gateway's log and the CA's audit log): accepting to explain
                // would let the connection stay.
                let slot = match self.gw.limits.for_user(PerUser::Outer, user.as_str()) {
                    Ok(s) => s,
                    Err(r) => {
                        self.gw.refuse_for_user(&user, "", r).await;
                        return Ok(reject());
                    }
                };
                self.slot = Some(slot);
                tracing::info!(peer = %self.peer, %user, serial = cert.serial(), "outer connection authenticated");
                self.user = Some((user, cert.clone()));
                // Authenticated: off the grace time, and no longer among the connections
                // that max_startups counts.
                self.pre.authenticated();
                self.startup = None;
                Ok(Auth::Accept)
            }
            None => {
                tracing::info!(peer = %self.peer, "outer certificate refused");
                Ok(reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        _c: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::Other {
                code: 1,
                reason: "postern-gate is a jump host: use `ssh -J` (ProxyJump) to reach a server"
                    .into(),
            })
            .await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _oa: &str,
        _op: u32,
        reply: russh::server::ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((user, cert)) = self.user.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let Some(node) = self.gw.route(host, port).await else {
            tracing::warn!(peer = %self.peer, %user, host = %host.chars().take(100).collect::<String>(), port, "destination refused: not a joined server");
            self.gw.audit.refused(user.as_str(), serde_json::json!({ "host": host.chars().take(255).collect::<String>(), "port": port, "peer": self.peer.to_string(), "reason": "not a joined server" })).await;
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 1,
                    reason: format!(
                        "{} is not a server of cluster {}",
                        host.chars().take(100).collect::<String>(),
                        self.gw.cluster
                    ),
                })
                .await;
            return Ok(());
        };
        // Before anything that costs the CA or a server: the user's connections to servers.
        let slot = match self.gw.limits.for_user(PerUser::Inner, user.as_str()) {
            Ok(s) => s,
            Err(r) => {
                let msg = self.gw.refuse_for_user(&user, node.name.as_str(), r).await;
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: 1,
                        reason: msg,
                    })
                    .await;
                return Ok(());
            }
        };
        let cert_for_node = match self.gw.host_cert_for(&node).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(node = %node.name, error = %e, "no host certificate for the inner connection");
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: 2,
                        reason: "gateway cannot reach the CA".into(),
                    })
                    .await;
                return Ok(());
            }
        };
        reply.accept().await;
        let gw = Arc::clone(&self.gw);
        let cfg = Arc::new(server_config(
            vec![gw.inner_key.clone()],
            vec![cert_for_node],
        ));
        let grace = gw.limits.cfg.login_grace_time;
        let pre = PreAuth::new();
        let inner = Inner::new(gw, node, user, cert, slot, Arc::clone(&pre));
        // The inner connection's own pre-authentication phase is under the grace time too.
        let stream = Graced::new(channel.into_stream(), grace, pre);
        tokio::spawn(async move {
            match russh::server::run_stream(cfg, stream, inner).await {
                Ok(running) => {
                    if let Err(e) = running.await {
                        tracing::debug!(error = %e, "inner session ended with an error");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "inner handshake failed"),
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::cert::generate_ed25519;
    use ssh_key::certificate::Builder;
    use ssh_key::PrivateKey;

    const NOW: u64 = 1_700_000_000;

    fn inventory(user_cas: &[&PrivateKey], extra: serde_json::Value) -> Inventory {
        let mut v = serde_json::json!({
            "cluster": "postern.test",
            "generated_at": NOW,
            "nodes": [
                { "name": "web1", "address": "10.0.0.5:22", "labels": {} },
                { "name": "db", "address": "db.internal:2222", "labels": {} },
            ],
            "user_ca_keys": user_cas
                .iter()
                .map(|k| k.public_key().to_openssh().unwrap())
                .collect::<Vec<_>>(),
            "host_ca_keys": [],
            "locks": [],
        });
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            v.extend(extra.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    fn user_cert(
        ca: &PrivateKey,
        cert_type: CertType,
        key_id: &str,
        critical: &[&str],
        valid_before: u64,
    ) -> Certificate {
        let subject = generate_ed25519("subject").unwrap();
        let mut b = Builder::new(
            [7u8; 32].to_vec(),
            subject.public_key().key_data().clone(),
            NOW - 60,
            valid_before,
        )
        .unwrap();
        b.serial(42).unwrap();
        b.cert_type(cert_type).unwrap();
        b.key_id(key_id).unwrap();
        b.valid_principal("alice").unwrap();
        b.valid_principal("deploy").unwrap();
        for name in critical {
            b.critical_option(*name, "").unwrap();
        }
        b.sign(ca).unwrap()
    }

    fn good(ca: &PrivateKey) -> Certificate {
        user_cert(ca, CertType::User, "alice", &[], NOW + 3600)
    }

    #[test]
    fn accepts_a_user_certificate_of_a_user_ca() {
        let ca = generate_ed25519("user ca").unwrap();
        let other = generate_ed25519("other ca").unwrap();
        let inv = inventory(&[&other, &ca], serde_json::json!({}));
        let (user, principals) = judge_user_cert(Some(&inv), &good(&ca), NOW).unwrap();
        assert_eq!(user.as_str(), "alice");
        assert_eq!(principals, ["alice", "deploy"]);
    }

    #[test]
    fn rejects_certificates_that_are_not_valid_user_certificates() {
        let ca = generate_ed25519("user ca").unwrap();
        let other = generate_ed25519("other ca").unwrap();
        let inv = inventory(&[&ca], serde_json::json!({}));
        for (what, cert, now) in [
            ("another CA", good(&other), NOW),
            (
                "a host certificate",
                user_cert(&ca, CertType::Host, "alice", &[], NOW + 3600),
                NOW,
            ),
            ("expired", good(&ca), NOW + 3600),
            ("not yet valid", good(&ca), NOW - 61),
            (
                "a key id that is no user",
                user_cert(&ca, CertType::User, "alice/s-1", &[], NOW + 3600),
                NOW,
            ),
            (
                "an unknown critical option",
                user_cert(&ca, CertType::User, "alice", &["x-custom"], NOW + 3600),
                NOW,
            ),
        ] {
            assert_eq!(
                judge_user_cert(Some(&inv), &cert, now),
                Err(CertRefusal::Invalid),
                "{what}"
            );
        }
        // Before the first inventory, no CA is trusted.
        assert_eq!(
            judge_user_cert(None, &good(&ca), NOW),
            Err(CertRefusal::Invalid)
        );
    }

    #[test]
    fn rejects_critical_options_the_gateway_would_drop() {
        let ca = generate_ed25519("user ca").unwrap();
        let inv = inventory(&[&ca], serde_json::json!({}));
        let cert = user_cert(
            &ca,
            CertType::User,
            "alice",
            &["force-command", "source-address"],
            NOW + 3600,
        );
        assert_eq!(
            judge_user_cert(Some(&inv), &cert, NOW),
            Err(CertRefusal::CriticalOptions {
                key_id: "alice".into(),
                options: vec!["force-command".into(), "source-address".into()],
            })
        );
    }

    #[test]
    fn rejects_a_locked_user_and_a_revoked_certificate() {
        let ca = generate_ed25519("user ca").unwrap();
        let refused = |extra: serde_json::Value| {
            let inv = inventory(&[&ca], extra);
            match judge_user_cert(Some(&inv), &good(&ca), NOW) {
                Ok(_) => None,
                Err(CertRefusal::Refused { user, why }) => {
                    assert_eq!(user.as_str(), "alice");
                    Some(why)
                }
                Err(other) => panic!("{other:?}"),
            }
        };
        let lock = |target: &str, name: &str, expires: Option<u64>| {
            serde_json::json!({ "locks": [
                { "id": 1, "target": target, "name": name, "expires": expires, "reason": "offboarding" }
            ] })
        };
        assert_eq!(
            refused(lock("user", "alice", None)).as_deref(),
            Some("locked (user alice): offboarding")
        );
        assert_eq!(refused(lock("user", "bob", None)), None);
        assert_eq!(refused(lock("user", "alice", Some(NOW - 1))), None);
        // A login or server lock is judged per session, when the login and server are known.
        assert_eq!(refused(lock("login", "alice", None)), None);
        // A kind this version does not know locks everyone (fail closed).
        assert_eq!(
            refused(lock("team", "ops", None)).as_deref(),
            Some("locked (team ops): offboarding")
        );
        let revoked = |serial: u64| {
            serde_json::json!({ "revoked_user_certs": [
                { "serial": serial, "user": "alice", "reason": "user reset" }
            ] })
        };
        assert_eq!(
            refused(revoked(42)).as_deref(),
            Some("its certificate is revoked")
        );
        assert_eq!(refused(revoked(43)), None);
    }

    #[test]
    fn routes_a_name_in_the_cluster_or_an_address_to_a_joined_server() {
        let inv = inventory(&[], serde_json::json!({}));
        let route = |host: &str, port: u32| {
            route_in(&inv, "postern.test", host, port).map(|n| n.name.as_str().to_owned())
        };
        for (host, port, want) in [
            ("web1", 22, Some("web1")),
            ("web1.postern.test", 22, Some("web1")),
            ("WEB1.Postern.Test.", 22, Some("web1")),
            // `ssh -J gw db` asks for port 22 whatever port db's sshd listens on.
            ("db", 22, Some("db")),
            ("db", 2222, Some("db")),
            ("web1", 2222, None),
            ("10.0.0.5", 22, Some("web1")),
            ("db.internal", 2222, Some("db")),
            ("db.internal", 22, None),
            ("web1.other.test", 22, None),
            ("web2", 22, None),
            ("postern.test", 22, None),
            ("", 22, None),
        ] {
            assert_eq!(route(host, port).as_deref(), want, "{host}:{port}");
        }
    }
}
