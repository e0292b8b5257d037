//! Agent forwarding: sshd's `auth-agent@openssh.com` channels are taken only after the user
//! asked for forwarding and the permits allowed it, each bridged to an agent channel opened on
//! the user's own ssh client.

use std::sync::Mutex;

use postern_core::{NodeName, SessionId, Username};
use russh::{Channel, ChannelOpenFailure};
use tokio::sync::watch;

use super::live::bridge;

/// Where the server's agent channels go: back to the user's ssh client. Set by the inner
/// handler's `agent_request`.
#[derive(Clone)]
pub(super) struct AgentBridge {
    pub(super) down: russh::server::Handle,
    pub(super) audit: crate::audit::Audit,
    pub(super) session: SessionId,
    pub(super) user: Username,
    pub(super) node: NodeName,
    pub(super) cut: watch::Receiver<Option<String>>,
}

/// sshd opened an agent channel (a program on `server` uses the forwarded agent): refused
/// unless the user's agent was bridged and the session is not cut; otherwise an agent channel
/// is opened to the user's client and the two are bridged (audited as
/// `gateway.agent_channel`).
pub(super) async fn open_agent_channel(
    agent: &Mutex<Option<AgentBridge>>,
    server: &str,
    channel: Channel<russh::client::Msg>,
    reply: russh::client::ChannelOpenHandle,
) {
    let found = agent.lock().ok().and_then(|a| a.clone());
    let Some(b) = found.filter(|b| b.cut.borrow().is_none()) else {
        tracing::warn!(server = %server, "server opened an agent channel that was never requested (or after a lock); refused");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        return;
    };
    tokio::spawn(async move {
        match b.down.channel_open_agent().await {
            Ok(down) => {
                reply.accept().await;
                b.audit
                    .agent(
                        b.user.as_str(),
                        b.node.as_str(),
                        &b.session,
                        "gateway.agent_channel",
                    )
                    .await;
                bridge(down.into_stream(), channel.into_stream(), b.cut).await;
            }
            Err(e) => {
                tracing::info!(session = %b.session, error = %e, "the client refused the agent channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
    });
}
