//! Dialing a server for an inner connection: the CA's authorization of exactly this login
//! (and the node-access certificate it signs for it), the connection to the server's sshd
//! (whose host certificate `upstream` judges), and the login there.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use postern_core::api::{AuthorizeResponse, InventoryEntry};
use postern_core::{Login, SessionId, Username};
use ssh_key::Certificate;

use super::agent::AgentBridge;
use super::authorize::{authorize, AuthorizedTarget};
use super::upstream::Upstream;
use super::{ca_keys, Gateway};

/// A session the CA authorized, logged in on the server.
pub(super) struct Dialed {
    /// The session id the CA authorized.
    pub(super) id: SessionId,
    /// The connection to the server's sshd, authenticated as the login.
    pub(super) upstream: russh::client::Handle<Upstream>,
    /// The CA's answer: permits, recording mode, the server with its certified host key.
    pub(super) authorized: AuthorizeResponse,
}

/// Asks the CA to authorize `user` (authenticated by `cert`) as `login` on `node`, connects to
/// the server's sshd and logs in there with the node-access certificate the CA signed.
///
/// `Ok(Err(why))` when the server cannot be used after all (the CA refused, the server is
/// unreachable, its host certificate or its login refused): `why` is for the user. `Err` is a
/// failure of the gateway itself, which ends the inner connection.
pub(super) async fn dial(
    gw: &Gateway,
    node: &InventoryEntry,
    user: &Username,
    login: &Login,
    cert: &Certificate,
    agent: &Arc<Mutex<Option<AgentBridge>>>,
) -> Result<Result<Dialed, String>> {
    let target = match authorize(gw, node, user, login, cert).await? {
        Ok(t) => t,
        Err(why) => return Ok(Err(why)),
    };
    connect_authorized(gw, target, agent).await
}

/// Connects to the server an authorization names, at the address and with the host key
/// that authorization gives, and logs in as its login with its certificate: the only way
/// the gateway reaches a server.
async fn connect_authorized(
    gw: &Gateway,
    target: AuthorizedTarget,
    agent: &Arc<Mutex<Option<AgentBridge>>>,
) -> Result<Result<Dialed, String>> {
    let host_cas = gw
        .inventory
        .read()
        .await
        .as_ref()
        .map(|i| ca_keys(&i.host_ca_keys))
        .unwrap_or_default();
    let node = &target.response().node;
    let up = Upstream::new(
        host_cas,
        node.name.to_string(),
        target.pinned_host_key(),
        Arc::clone(agent),
    );
    let mut handle = match connect(node, &node.address, up).await {
        Ok(h) => h,
        Err(why) => return Ok(Err(why)),
    };
    let login = target.login().clone();
    let name = node.name.clone();
    let (id, key, na_cert, resp) = target.into_parts();
    let ok = handle
        .authenticate_openssh_cert(login.as_str(), Arc::new(key), na_cert)
        .await?;
    if !ok.success() {
        tracing::warn!(node = %name, %login, "the server refused the node-access certificate");
        return Ok(Err(format!(
            "postern-gate: {name}'s sshd refused the gateway's login as {login} (its policy bundle, locks or KRL; `postern-shim status` and sshd's log on {name} say why)"
        )));
    }
    Ok(Ok(Dialed {
        id,
        upstream: handle,
        authorized: resp,
    }))
}

/// The gateway's SSH client settings: it accepts only Ed25519 host certificates.
fn client_config() -> russh::client::Config {
    let mut ccfg = russh::client::Config {
        nodelay: true,
        inactivity_timeout: Some(Duration::from_secs(3600)),
        ..Default::default()
    };
    ccfg.preferred.host_key_certificates =
        std::borrow::Cow::Borrowed(&[ssh_key::Algorithm::Ed25519]);
    ccfg
}

/// Connects to the server's sshd at `address` and completes the key exchange (the host
/// certificate judged by `up`), or says why not, for the user.
async fn connect(
    node: &InventoryEntry,
    address: &str,
    up: Upstream,
) -> Result<russh::client::Handle<Upstream>, String> {
    let ccfg = Arc::new(client_config());
    // sshd drops handshakes beyond MaxStartups; a dropped handshake is retried.
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let connect = tokio::net::TcpStream::connect(address);
        let Ok(Ok(tcp)) = tokio::time::timeout(Duration::from_secs(10), connect).await else {
            tracing::warn!(node = %node.name, address = %address, "cannot reach the server");
            return Err(format!(
                "postern-gate: cannot reach {}'s sshd at {} (connection refused or timed out)",
                node.name, address
            ));
        };
        match russh::client::connect_stream(Arc::clone(&ccfg), tcp, up.clone()).await {
            Ok(h) => return Ok(h),
            Err(e) if attempt < 4 && dropped_handshake(&e) => {
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => {
                tracing::warn!(node = %node.name, error = %e, "SSH to the server failed");
                return Err(ssh_refusal(node.name.as_str(), &e));
            }
        }
    }
}

/// Whether sshd closed the connection during the handshake, as it does beyond MaxStartups.
fn dropped_handshake(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<russh::Error>(),
        Some(russh::Error::Disconnect)
    )
}

/// What the user is told when SSH to server `name` failed before authentication.
fn ssh_refusal(name: &str, e: &anyhow::Error) -> String {
    match e.downcast_ref::<russh::Error>() {
        Some(russh::Error::UnknownKey) => format!(
            "postern-gate: {name}'s host certificate was refused (not the host key the CA certified for {name}, or not a valid certificate for that name); the gateway's log says which"
        ),
        _ => format!(
            "postern-gate: {name}'s sshd closed the connection before authentication. sshd refuses new connections beyond MaxStartups and, on OpenSSH 9.8 and later, from addresses it penalises (PerSourcePenalties): check that {name} ran `postern-shim sync` with this gateway's address in PerSourcePenaltyExemptList, and sshd's log there"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dropped_handshake_is_retried() {
        assert!(dropped_handshake(&russh::Error::Disconnect.into()));
        assert!(!dropped_handshake(&russh::Error::UnknownKey.into()));
        assert!(!dropped_handshake(&anyhow::anyhow!("connection reset")));
    }

    #[test]
    fn a_refused_host_certificate_is_told_apart_from_a_closed_connection() {
        let refused = ssh_refusal("web1", &russh::Error::UnknownKey.into());
        assert!(
            refused.starts_with("postern-gate: web1's host certificate was refused"),
            "{refused}"
        );
        for e in [russh::Error::Disconnect.into(), anyhow::anyhow!("eof")] {
            let closed = ssh_refusal("web1", &e);
            assert!(
                closed.starts_with(
                    "postern-gate: web1's sshd closed the connection before authentication"
                ),
                "{closed}"
            );
            assert!(closed.contains("PerSourcePenaltyExemptList"), "{closed}");
        }
    }

    #[test]
    fn the_client_accepts_only_ed25519_host_certificates() {
        assert_eq!(
            &client_config().preferred.host_key_certificates[..],
            [ssh_key::Algorithm::Ed25519]
        );
    }
}
