//! The CA's authorization of one session: the only maker of the [`AuthorizedTarget`] that
//! dialing a server needs, so that no code path reaches a server's sshd without the CA having
//! said yes to exactly this user, login and server, for this session id and key.

use anyhow::{anyhow, Result};
use postern_core::api::{AuthorizeRequest, AuthorizeResponse, InventoryEntry};
use postern_core::cert::generate_ed25519;
use postern_core::{Login, SessionId, Username};
use ssh_key::{Certificate, PrivateKey, PublicKey};

use super::Gateway;

/// What the CA authorized: a session id, the login, the server as the CA answered for it
/// (its address and the host key it certified at join), and the key and node-access
/// certificate to log in with. Its fields are private to this module, and only
/// [`authorize`] makes one.
pub(super) struct AuthorizedTarget {
    id: SessionId,
    login: Login,
    key: PrivateKey,
    certificate: Certificate,
    response: AuthorizeResponse,
}

impl AuthorizedTarget {
    /// The login the CA authorized.
    pub(super) fn login(&self) -> &Login {
        &self.login
    }

    /// The CA's answer (the server, permits, recording mode).
    pub(super) fn response(&self) -> &AuthorizeResponse {
        &self.response
    }

    /// The host key the CA certified when the server joined, from this authorization (not
    /// the cached inventory), so that a removed or replaced server's old certificate is
    /// refused from the next session on.
    pub(super) fn pinned_host_key(&self) -> Option<PublicKey> {
        self.response
            .node
            .host_key
            .as_deref()
            .and_then(|k| PublicKey::from_openssh(k).ok())
    }

    /// The session id, the key and its node-access certificate, and the CA's answer.
    pub(super) fn into_parts(self) -> (SessionId, PrivateKey, Certificate, AuthorizeResponse) {
        (self.id, self.key, self.certificate, self.response)
    }
}

/// Asks the CA to authorize `user` (authenticated by `cert`) as `login` on `node`, with a new
/// session id and a new key.
///
/// `Ok(Err(why))` when the CA refused (`why` is for the user: they are authenticated, so they
/// read the CA's reason rather than "Permission denied"); `Err` is a failure of the gateway
/// itself.
pub(super) async fn authorize(
    gw: &Gateway,
    node: &InventoryEntry,
    user: &Username,
    login: &Login,
    cert: &Certificate,
) -> Result<Result<AuthorizedTarget, String>> {
    let id = SessionId::random().map_err(|e| anyhow!("no randomness for a session id: {e}"))?;
    let key = generate_ed25519("postern-gate session key")?;
    let asked = std::time::Instant::now();
    let answer = gw
        .ca
        .authorize(AuthorizeRequest {
            user: user.clone(),
            user_certificate: cert.to_openssh()?,
            login: login.clone(),
            node: node.name.clone(),
            session_id: id.clone(),
            public_key: key.public_key().to_openssh()?,
        })
        .await;
    let outcome = match &answer {
        Ok(_) => "authorized",
        Err(e) if crate::metrics::ca_failure(e.1) == "refused" => "refused",
        Err(_) => "error",
    };
    crate::metrics::get().authorized(outcome, asked.elapsed());
    let response = match answer {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(%user, %login, node = %node.name, reason = %e.0, "authorization refused");
            return Ok(Err(format!("postern-gate: refused: {}", e.0)));
        }
    };
    if response.node.name != node.name {
        // The CA answers for the server it was asked about; anything else is not dialed.
        tracing::error!(asked = %node.name, answered = %response.node.name, "the CA authorized another server");
        return Ok(Err(format!(
            "postern-gate: refused: the CA's authorization for {} named another server",
            node.name
        )));
    }
    let certificate = Certificate::from_openssh(response.certificate.trim())?;
    Ok(Ok(AuthorizedTarget {
        id,
        login: login.clone(),
        key,
        certificate,
        response,
    }))
}
