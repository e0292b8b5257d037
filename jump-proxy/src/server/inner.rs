//! The inner connection: the user's real SSH session to one server, terminated at the gateway.
//! Its authentication (the user certificate again, then `dial`), its channels (sessions to
//! `relay`, port forwards bridged) and the channel requests, answered here.

use std::sync::{Arc, Mutex};

use postern_core::api::{InventoryEntry, RecordingMeta};
use postern_core::cut::LiveSession;
use postern_core::policy::{Permit, RecordingMode};
use postern_core::{Login, RecordingId, SessionId, Username};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use ssh_key::Certificate;
use tokio::sync::watch;

use super::agent::AgentBridge;
use super::dial::{dial, Dialed};
use super::live::{bridge, disconnect_when_cut};
use super::outer::check_user_cert;
use super::upstream::Upstream;
use super::{reject, Gateway};
use crate::limits::{PerUser, PreAuth, UserSlot};
use crate::relay::{relay, RelayCtx};
use postern_core::clock::now;

struct SessionCtx {
    id: SessionId,
    login: Login,
    permits: Vec<Permit>,
    mode: RecordingMode,
    record_input: bool,
    cut: watch::Receiver<Option<String>>,
}

/// The inner connection: the user's real SSH session to `node`, terminated here.
pub(super) struct Inner {
    gw: Arc<Gateway>,
    node: InventoryEntry,
    user: Username,
    outer_cert: Certificate,
    upstream: Option<russh::client::Handle<Upstream>>,
    ctx: Option<SessionCtx>,
    channels: usize,
    /// Whether the task that ends the whole connection on a lock runs.
    watching: bool,
    /// Set once the user asked for agent forwarding and the permits allow it; the upstream
    /// handler bridges the server's agent channels to the client through it.
    agent: Arc<Mutex<Option<AgentBridge>>>,
    /// Why the server could not be reached after the user was authenticated and authorized:
    /// told on the first session channel (an authentication failure can carry no text, and
    /// "Permission denied" would send the user looking in the wrong place).
    refused: Option<String>,
    /// One of the user's connections to servers (`max_inner_connections_per_user`).
    slot: Option<UserSlot>,
    /// Told when the inner authentication is accepted (the login grace time).
    pre: Arc<PreAuth>,
}

impl Inner {
    /// The inner connection of `user`, authenticated outside by `outer_cert`, to `node`;
    /// `slot` is one of the user's connections to servers, `pre` is told when the inner
    /// authentication is accepted.
    pub(super) fn new(
        gw: Arc<Gateway>,
        node: InventoryEntry,
        user: Username,
        outer_cert: Certificate,
        slot: UserSlot,
        pre: Arc<PreAuth>,
    ) -> Inner {
        Inner {
            gw,
            node,
            user,
            outer_cert,
            upstream: None,
            ctx: None,
            channels: 0,
            watching: false,
            agent: Arc::new(Mutex::new(None)),
            refused: None,
            slot: Some(slot),
            pre,
        }
    }

    /// One more channel of the user's (`max_channels_per_user`), or the refusal's message
    /// (logged and audited).
    async fn channel_slot(&self) -> Result<UserSlot, String> {
        match self
            .gw
            .limits
            .for_user(PerUser::Channels, self.user.as_str())
        {
            Ok(s) => Ok(s),
            Err(r) => Err(self
                .gw
                .refuse_for_user(&self.user, self.node.name.as_str(), r)
                .await),
        }
    }

    /// The user is authenticated and the CA authorized the session, but the server cannot
    /// be used: accept the inner authentication, so that the first session channel can say
    /// why, and forward nothing (there is no upstream and no session context).
    fn refuse_after_auth(&mut self, why: String) -> Auth {
        tracing::info!(user = %self.user, node = %self.node.name, reason = %why, "session refused after authentication");
        self.refused = Some(why);
        self.pre.authenticated();
        Auth::Accept
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Given back before "session ended" is logged, so that whoever reads that line may
        // count on the slot being free.
        self.slot = None;
        if let Some(c) = &self.ctx {
            self.gw.unregister(&c.id);
            tracing::info!(session = %c.id, user = %self.user, node = %self.node.name, "session ended");
        }
    }
}

impl russh::server::Handler for Inner {
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
        login: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        if self.ctx.is_some() || self.refused.is_some() {
            return Ok(reject());
        }
        // The inner authentication must be by the same user as the outer one.
        let Some((user, principals)) = check_user_cert(&self.gw, cert).await else {
            return Ok(reject());
        };
        let Ok(login) = login.parse::<Login>() else {
            return Ok(reject());
        };
        if user != self.user || !principals.iter().any(|p| p == login.as_str()) {
            tracing::info!(%user, %login, "inner authentication refused: other user or login not in the certificate");
            return Ok(reject());
        }
        let dialed = match dial(&self.gw, &self.node, &user, &login, cert, &self.agent).await? {
            Ok(d) => d,
            Err(why) => return Ok(self.refuse_after_auth(why)),
        };
        let Dialed {
            id,
            upstream,
            authorized: resp,
        } = dialed;
        // The certificate this inner connection was authenticated with, the one the CA
        // authorized: its serial is what a revocation names, its end what the expiry cut waits for.
        let live = LiveSession {
            user: user.clone(),
            login: login.clone(),
            node: self.node.name.clone(),
            user_cert_serial: cert.serial().into(),
            user_cert_valid_before: cert.valid_before(),
            host_key: resp.node.host_key.clone(),
        };
        let cut = self.gw.register(&id, live).await;
        tracing::info!(session = %id, %user, %login, node = %self.node.name, serial = cert.serial(), outer_serial = self.outer_cert.serial(), valid_before = cert.valid_before(), "session started");
        self.upstream = Some(upstream);
        self.ctx = Some(SessionCtx {
            id,
            login,
            permits: resp.permits,
            mode: resp.recording,
            record_input: resp.record_input,
            cut,
        });
        self.pre.authenticated();
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(msg) = self.refused.clone() {
            // Nothing reaches a server from here: the channel only carries the reason (a
            // few times at most: a client that keeps opening channels learns nothing new).
            self.channels += 1;
            if self.channels > 4 {
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return Ok(());
            }
            reply.accept().await;
            tokio::spawn(async move {
                let _ = channel
                    .extended_data_bytes(1, format!("{msg}\r\n").into_bytes())
                    .await;
                let _ = channel.exit_status(255).await;
                let _ = channel.eof().await;
                let _ = channel.close().await;
            });
            return Ok(());
        }
        self.watch_cut(session);
        let (Some(up), Some(ctx), None) = (self.upstream.as_ref(), self.ctx.as_ref(), self.cut())
        else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let slot = match self.channel_slot().await {
            Ok(s) => s,
            Err(msg) => {
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: 1,
                        reason: msg,
                    })
                    .await;
                return Ok(());
            }
        };
        // The first session channel is recorded under the session's id, `<id>-2`, `<id>-3`,
        // ... after it (the CA takes these as the session's too).
        let Ok(id) = RecordingId::of_channel(&ctx.id, self.channels + 1) else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        let up_ch = match up.channel_open_session().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "server refused a session channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        reply.accept().await;
        self.channels += 1;
        let rctx = RelayCtx {
            permits: ctx.permits.clone(),
            mode: ctx.mode,
            record_input: ctx.record_input,
            cut: ctx.cut.clone(),
            down_handle: session.handle(),
            spool: self.gw.spool.clone(),
            meta: RecordingMeta {
                id,
                user: self.user.clone(),
                login: ctx.login.clone(),
                node: self.node.name.clone(),
                gateway: self.gw.name.to_string(),
                started_at: now(),
                ended_at: 0,
                interrupted: false,
                bytes: 0,
            },
            uploaded: Arc::clone(&self.gw.uploaded),
            audit: self.gw.audit.clone(),
        };
        tokio::spawn(async move {
            // The channel counts against the user's limit until its relay ends.
            let _slot = slot;
            relay(channel, up_ch, rctx).await
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        oa: &str,
        op: u32,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(msg) = self.refused.clone() {
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 2,
                    reason: msg,
                })
                .await;
            return Ok(());
        }
        self.watch_cut(session);
        if let Some(why) = self.cut() {
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 1,
                    reason: format!("session closed: {why}"),
                })
                .await;
            return Ok(());
        }
        let allowed = self
            .ctx
            .as_ref()
            .is_some_and(|c| c.permits.contains(&Permit::PortForwarding));
        let (Some(up), Some(cut), true) = (
            self.upstream.as_ref(),
            self.ctx.as_ref().map(|c| c.cut.clone()),
            allowed,
        ) else {
            tracing::info!(user = %self.user, host = %host.chars().take(100).collect::<String>(), port, "port forwarding refused by permits");
            let _ = self
                .gw
                .audit
                .forward(
                    self.user.as_str(),
                    self.node.name.as_str(),
                    host,
                    port,
                    false,
                    false,
                )
                .await;
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 1,
                    reason: "port forwarding is not permitted by your roles".into(),
                })
                .await;
            return Ok(());
        };
        let slot = match self.channel_slot().await {
            Ok(s) => s,
            Err(msg) => {
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: 1,
                        reason: msg,
                    })
                    .await;
                return Ok(());
            }
        };
        match up
            .channel_open_direct_tcpip(host.to_owned(), port, oa.to_owned(), op)
            .await
        {
            Ok(up_ch) => {
                // In strict mode the forward is in the audit log before a byte goes through.
                let strict = self
                    .ctx
                    .as_ref()
                    .is_none_or(|c| c.mode == RecordingMode::Strict);
                let logged = self
                    .gw
                    .audit
                    .forward(
                        self.user.as_str(),
                        self.node.name.as_str(),
                        host,
                        port,
                        true,
                        strict,
                    )
                    .await;
                if let Err(e) = logged {
                    if strict {
                        tracing::error!(user = %self.user, error = %e, "port forward refused: its audit event could not be written (strict recording)");
                        let _ = up_ch.close().await;
                        reply
                            .reject(ChannelOpenFailure::Other {
                                code: 1,
                                reason: format!("cannot write the audit log ({e}); port forward refused (strict recording)"),
                            })
                            .await;
                        return Ok(());
                    }
                }
                reply.accept().await;
                tracing::info!(user = %self.user, node = %self.node.name, host = %host, port, "port forward opened");
                tokio::spawn(async move {
                    let _slot = slot;
                    bridge(channel.into_stream(), up_ch.into_stream(), cut).await;
                });
            }
            Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
        }
        Ok(())
    }

    // Requests are answered here, in the handler that received them; the relay forwards them.
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _t: &str,
        _c: u32,
        _r: u32,
        _pw: u32,
        _ph: u32,
        _m: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, Permit::Pty, session)
    }
    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(session.channel_success(channel)?)
    }
    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _d: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(session.channel_success(channel)?)
    }
    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _n: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(session.channel_success(channel)?)
    }
    async fn env_request(
        &mut self,
        channel: ChannelId,
        _k: &str,
        _v: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(session.channel_success(channel)?)
    }
    // The relay forwards the request to the server; the server's agent channels come back
    // through `Upstream::server_channel_open_agent_forward`.
    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(ctx) = self.ctx.as_ref() else {
            return Ok(false);
        };
        let allowed = ctx.permits.contains(&Permit::AgentForwarding);
        self.gw
            .audit
            .agent(
                self.user.as_str(),
                self.node.name.as_str(),
                &ctx.id,
                if allowed {
                    "gateway.agent_forward"
                } else {
                    "gateway.agent_forward_refused"
                },
            )
            .await;
        if !allowed {
            tracing::info!(session = %ctx.id, user = %self.user, "agent forwarding refused by permits");
            return Ok(false);
        }
        tracing::info!(session = %ctx.id, user = %self.user, node = %self.node.name, "agent forwarding");
        if let Ok(mut a) = self.agent.lock() {
            *a = Some(AgentBridge {
                down: session.handle(),
                audit: self.gw.audit.clone(),
                session: ctx.id.clone(),
                user: self.user.clone(),
                node: self.node.name.clone(),
                cut: ctx.cut.clone(),
            });
        }
        Ok(true)
    }
}

impl Inner {
    /// The lock reason once this session was cut.
    fn cut(&self) -> Option<String> {
        self.ctx.as_ref().and_then(|c| c.cut.borrow().clone())
    }

    /// Once per connection: when a lock cuts the session, end the whole inner connection
    /// (`disconnect_when_cut`).
    fn watch_cut(&mut self, session: &Session) {
        let Some(ctx) = self.ctx.as_ref() else {
            return;
        };
        if self.watching {
            return;
        }
        self.watching = true;
        disconnect_when_cut(ctx.cut.clone(), session.handle(), ctx.id.clone());
    }

    fn answer(
        &self,
        channel: ChannelId,
        p: Permit,
        session: &mut Session,
    ) -> Result<(), anyhow::Error> {
        if self.ctx.as_ref().is_some_and(|c| c.permits.contains(&p)) {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn further_session_channels_are_recorded_under_the_sessions_id() {
        let s: SessionId = "s-0123456789abcdef".parse().unwrap();
        let id = |n| RecordingId::of_channel(&s, n).unwrap().to_string();
        assert_eq!(id(1), "s-0123456789abcdef");
        assert_eq!(id(2), "s-0123456789abcdef-2");
        assert_eq!(id(11), "s-0123456789abcdef-11");
    }
}
