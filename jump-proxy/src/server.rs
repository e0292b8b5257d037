//! The gateway's SSH side: the outer server that stock `ssh -J` talks to, and, for every
//! `direct-tcpip` channel to a joined server, an inner SSH server over that channel (the user's
//! real session, terminated here) bridged to a client connection to the server's sshd.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use postern_core::api::{
    AuthorizeRequest, HostCertRequest, Inventory, InventoryEntry, RecordingMeta,
};
use postern_core::cert::{generate_ed25519, CertValidator};
use postern_core::cut::{cut_by_inventory, expired, Cut, LiveSession};
use postern_core::policy::{Permit, RecordingMode};
use postern_core::{Login, Username};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, PrivateKey, PublicKey};
use tokio::sync::{watch, Notify, RwLock};

use crate::ca::CaClient;
use crate::limits::{Graced, Limits, PerUser, PreAuth, Startup, UserRefusal, UserSlot};
use crate::record::now;
use crate::relay::{relay, RelayCtx};

/// A live session, for cuts (locks, revoked certificates, removed servers, the end of the
/// user certificate) to end.
struct Live {
    session: LiveSession,
    /// `Some(what the user reads)` once cut; the relays, forwards, agent channels and the
    /// connection's watcher all wait on it.
    cut: watch::Sender<Option<String>>,
}

impl Live {
    /// Delivers a cut unless the session was cut already (the first reason is the one the
    /// user reads and the audit log keeps), and audits it once.
    fn deliver(&self, id: &str, cut: &Cut, audit: &crate::audit::Audit) {
        let msg = cut.message(&self.session);
        let first = self.cut.send_if_modified(|v| {
            if v.is_some() {
                return false;
            }
            *v = Some(msg.clone());
            true
        });
        if first {
            tracing::info!(session = %id, user = %self.session.user, node = %self.session.node, reason = %cut.audit_reason(), "cutting the live session: {msg}");
            audit.session_cut(&self.session, id, cut, &msg);
        }
    }
}

/// State shared by every connection.
pub struct Gateway {
    /// The CA.
    pub ca: CaClient,
    /// Cluster name.
    pub cluster: String,
    /// The gateway's name.
    pub name: String,
    /// The last inventory.
    pub inventory: RwLock<Option<Inventory>>,
    /// The outer server's config.
    pub outer: Arc<russh::server::Config>,
    /// The inner host key (certified per server by the CA).
    pub inner_key: PrivateKey,
    /// Host certificates for the inner connection, per server name.
    host_certs: Mutex<HashMap<String, (Certificate, u64)>>,
    live: Mutex<HashMap<String, Live>>,
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

fn session_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    format!("s-{}", hex::encode(b))
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

    /// Refreshes the inventory and cuts the live sessions it covers (`cut_by_inventory`).
    ///
    /// The inventory is stored before the table is read, and `register` inserts before it
    /// reads the inventory: a session registering meanwhile is judged by one of the two.
    pub async fn refresh(&self) -> Result<()> {
        let fresh = self.ca.inventory().await?;
        *self.inventory.write().await = Some(fresh);
        let inv = self.inventory.read().await;
        let Some(inv) = inv.as_ref() else {
            return Ok(());
        };
        let now = now();
        if let Ok(live) = self.live.lock() {
            for (id, l) in live.iter() {
                if let Some(cut) =
                    cut_by_inventory(&l.session, inv, now, self.disconnect_expired_cert)
                {
                    l.deliver(id, &cut, &self.audit);
                }
            }
        }
        Ok(())
    }

    /// Cuts one live session, if it is still live.
    fn cut_live(&self, id: &str, cut: &Cut) {
        if let Ok(live) = self.live.lock() {
            if let Some(l) = live.get(id) {
                l.deliver(id, cut, &self.audit);
            }
        }
    }

    /// The user CA keys of the inventory.
    async fn user_cas(&self) -> Vec<PublicKey> {
        self.inventory
            .read()
            .await
            .as_ref()
            .map(|i| {
                i.user_ca_keys
                    .iter()
                    .filter_map(|k| PublicKey::from_openssh(k).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Resolves `NAME.<cluster>`, `NAME`, or a joined server's address.
    pub async fn route(&self, host: &str, port: u32) -> Option<InventoryEntry> {
        let inv = self.inventory.read().await;
        let inv = inv.as_ref()?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let suffix = format!(".{}", self.cluster);
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
            .cloned()
    }

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

    /// Makes a session live: from now on every fresh inventory judges it, and it is judged
    /// at once by the last one, so that nothing that changed between the CA's authorization
    /// and this moment (a lock, `users rm`, `nodes rm`) lets it run. When the expiry cut is on,
    /// a timer ends it at its certificate's end without asking the CA.
    async fn register(
        self: &Arc<Self>,
        id: &str,
        session: LiveSession,
    ) -> watch::Receiver<Option<String>> {
        let (tx, rx) = watch::channel(None);
        match self.live.lock() {
            Ok(mut l) => {
                l.insert(
                    id.to_owned(),
                    Live {
                        session: session.clone(),
                        cut: tx,
                    },
                );
            }
            Err(_) => {
                // A session no cut could reach must not run.
                let _ = tx.send(Some("the gateway cannot track this session".into()));
                return rx;
            }
        }
        let first =
            self.inventory.read().await.as_ref().and_then(|inv| {
                cut_by_inventory(&session, inv, now(), self.disconnect_expired_cert)
            });
        match first {
            Some(cut) => self.cut_live(id, &cut),
            None if self.disconnect_expired_cert => self.expire_at_end(id, rx.clone()),
            None => {}
        }
        rx
    }

    /// The expiry timer of one session: sleeps in steps of at most a minute (the certificate's
    /// end is wall-clock time, the sleep is monotonic: a suspended or stepped clock is caught
    /// up with), and ends when the session does.
    fn expire_at_end(self: &Arc<Self>, id: &str, mut cut: watch::Receiver<Option<String>>) {
        let gw = Arc::clone(self);
        let id = id.to_owned();
        tokio::spawn(async move {
            loop {
                let session = gw
                    .live
                    .lock()
                    .ok()
                    .and_then(|l| l.get(&id).map(|l| l.session.clone()));
                let Some(session) = session else { return };
                let now = now();
                if let Some(c) = expired(&session, now) {
                    gw.cut_live(&id, &c);
                    return;
                }
                let left = session.user_cert_valid_before.saturating_sub(now).min(60);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(left)) => {}
                    changed = cut.changed() => {
                        // Unregistered (the sender is gone) or cut for another reason.
                        if changed.is_err() || cut.borrow().is_some() {
                            return;
                        }
                    }
                }
            }
        });
    }

    fn unregister(&self, id: &str) {
        if let Ok(mut l) = self.live.lock() {
            l.remove(id);
        }
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

/// Validates a user certificate against the user CA keys, strictly.
async fn check_user_cert(gw: &Gateway, cert: &Certificate) -> Option<(Username, Vec<String>)> {
    let cas = gw.user_cas().await;
    let v = CertValidator {
        trusted: &cas,
        cert_type: CertType::User,
    }
    .validate(cert, now())
    .ok()?;
    // The gateway enforces no critical option (force-command, source-address,
    // verify-required): a certificate that carries one would have its restriction silently
    // dropped here, so it is refused. Postern's user CA sets none.
    if !cert.critical_options().is_empty() {
        let names: Vec<&str> = cert.critical_options().keys().map(|k| k.as_str()).collect();
        tracing::info!(key_id = %v.key_id.as_str(), options = ?names, "user certificate refused: it carries critical options the gateway does not enforce");
        return None;
    }
    let user: Username = v.key_id.as_str().parse().ok()?;
    // A locked user, or a revoked certificate, is refused here too; the CA refuses
    // authorization anyway.
    let inv = gw.inventory.read().await;
    let subject = postern_core::api::LockSubject {
        user: Some(user.as_str()),
        ..Default::default()
    };
    let refused = inv.as_ref().and_then(|i| {
        postern_core::api::lock_for(&i.locks, &subject, now())
            .map(|l| format!("locked ({} {}): {}", l.target, l.name, l.reason))
            .or_else(|| {
                i.revoked_user_certs
                    .iter()
                    .any(|r| r.serial == cert.serial())
                    .then(|| "its certificate is revoked".to_owned())
            })
    });
    if let Some(why) = refused {
        tracing::info!(%user, "user certificate refused: {why}");
        return None;
    }
    Some((user, v.principals.iter().map(|p| p.to_string()).collect()))
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
        let inner = Inner {
            gw,
            node,
            user,
            outer_cert: cert,
            upstream: None,
            ctx: None,
            channels: 0,
            watching: false,
            agent: Arc::new(Mutex::new(None)),
            refused: None,
            slot: Some(slot),
            pre: Arc::clone(&pre),
        };
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

struct SessionCtx {
    id: String,
    login: Login,
    permits: Vec<Permit>,
    mode: RecordingMode,
    record_input: bool,
    cut: watch::Receiver<Option<String>>,
}

/// The inner connection: the user's real SSH session to `node`, terminated here.
struct Inner {
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

/// Where the server's agent channels go: back to the user's ssh client.
#[derive(Clone)]
struct AgentBridge {
    down: russh::server::Handle,
    audit: crate::audit::Audit,
    session: String,
    user: String,
    node: String,
    cut: watch::Receiver<Option<String>>,
}

/// Returns once the session is cut by a lock (or its gateway-side state is gone).
async fn until_cut(mut cut: watch::Receiver<Option<String>>) {
    loop {
        if cut.borrow_and_update().is_some() {
            return;
        }
        if cut.changed().await.is_err() {
            return;
        }
    }
}

/// Copies both ways until either side ends or the session is cut.
async fn bridge<A, B>(mut a: A, mut b: B, cut: watch::Receiver<Option<String>>)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
        _ = until_cut(cut) => {}
    }
}

impl Inner {
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
        let id = session_id();
        let key = generate_ed25519("postern-gate session key")?;
        let resp = match self
            .gw
            .ca
            .authorize(AuthorizeRequest {
                user: user.clone(),
                user_certificate: cert.to_openssh()?,
                login: login.clone(),
                node: self.node.name.clone(),
                session_id: id.clone(),
                public_key: key.public_key().to_openssh()?,
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(%user, %login, node = %self.node.name, reason = %e.0, "authorization refused");
                // The CA's public reason (policy, lock, unknown server): the user is
                // authenticated, so say it instead of "Permission denied".
                return Ok(self.refuse_after_auth(format!("postern-gate: refused: {}", e.0)));
            }
        };
        let na_cert = Certificate::from_openssh(resp.certificate.trim())?;
        let host_cas: Vec<PublicKey> = self
            .gw
            .inventory
            .read()
            .await
            .as_ref()
            .map(|i| {
                i.host_ca_keys
                    .iter()
                    .filter_map(|k| PublicKey::from_openssh(k).ok())
                    .collect()
            })
            .unwrap_or_default();
        // The host key the CA certified when the server joined, from this authorization (not
        // the cached inventory), so that a removed or replaced server's old certificate is
        // refused from the next session on.
        let pinned = resp
            .node
            .host_key
            .as_deref()
            .and_then(|k| PublicKey::from_openssh(k).ok());
        let up = Upstream {
            host_cas,
            name: self.node.name.to_string(),
            pinned,
            agent: Arc::clone(&self.agent),
        };
        let mut ccfg = russh::client::Config {
            nodelay: true,
            inactivity_timeout: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        ccfg.preferred.host_key_certificates =
            std::borrow::Cow::Borrowed(&[ssh_key::Algorithm::Ed25519]);
        let ccfg = Arc::new(ccfg);
        // sshd drops handshakes beyond MaxStartups; a dropped handshake is retried.
        let mut attempt = 0u64;
        let mut handle = loop {
            attempt += 1;
            let connect = tokio::net::TcpStream::connect(&resp.node.address);
            let Ok(Ok(tcp)) = tokio::time::timeout(Duration::from_secs(10), connect).await else {
                tracing::warn!(node = %self.node.name, address = %resp.node.address, "cannot reach the server");
                return Ok(self.refuse_after_auth(format!(
                    "postern-gate: cannot reach {}'s sshd at {} (connection refused or timed out)",
                    self.node.name, resp.node.address
                )));
            };
            match russh::client::connect_stream(Arc::clone(&ccfg), tcp, up.clone()).await {
                Ok(h) => break h,
                Err(e)
                    if attempt < 4
                        && matches!(
                            e.downcast_ref::<russh::Error>(),
                            Some(russh::Error::Disconnect)
                        ) =>
                {
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => {
                    tracing::warn!(node = %self.node.name, error = %e, "SSH to the server failed");
                    let why = match e.downcast_ref::<russh::Error>() {
                        Some(russh::Error::UnknownKey) => format!(
                            "postern-gate: {}'s host certificate was refused (not the host key the CA certified for {}, or not a valid certificate for that name); the gateway's log says which",
                            self.node.name, self.node.name
                        ),
                        _ => format!(
                            "postern-gate: {}'s sshd closed the connection before authentication. sshd refuses new connections beyond MaxStartups and, on OpenSSH 9.8 and later, from addresses it penalises (PerSourcePenalties): check that {} ran `postern-shim sync` with this gateway's address in PerSourcePenaltyExemptList, and sshd's log there",
                            self.node.name, self.node.name
                        ),
                    };
                    return Ok(self.refuse_after_auth(why));
                }
            }
        };
        let ok = handle
            .authenticate_openssh_cert(login.as_str(), Arc::new(key), na_cert)
            .await?;
        if !ok.success() {
            tracing::warn!(node = %self.node.name, %login, "the server refused the node-access certificate");
            return Ok(self.refuse_after_auth(format!(
                "postern-gate: {}'s sshd refused the gateway's login as {login} (its policy bundle, locks or KRL; `postern-shim status` and sshd's log on {} say why)",
                self.node.name, self.node.name
            )));
        }
        // The certificate this inner connection was authenticated with, the one the CA
        // authorized: its serial is what a revocation names, its end what the expiry cut waits for.
        let live = LiveSession {
            user: user.clone(),
            login: login.clone(),
            node: self.node.name.clone(),
            user_cert_serial: cert.serial(),
            user_cert_valid_before: cert.valid_before(),
            host_key: resp.node.host_key.clone(),
        };
        let cut = self.gw.register(&id, live).await;
        tracing::info!(session = %id, %user, %login, node = %self.node.name, serial = cert.serial(), outer_serial = self.outer_cert.serial(), valid_before = cert.valid_before(), "session started");
        self.upstream = Some(handle);
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
        let id = if self.channels == 1 {
            ctx.id.clone()
        } else {
            format!("{}-{}", ctx.id, self.channels)
        };
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
                gateway: self.gw.name.clone(),
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
                user: self.user.to_string(),
                node: self.node.name.to_string(),
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
    /// (port forwards and agent channels too, not only the session channels that the relay
    /// closes with a message), after a moment that lets the relays deliver their message.
    fn watch_cut(&mut self, session: &Session) {
        let Some(ctx) = self.ctx.as_ref() else {
            return;
        };
        if self.watching {
            return;
        }
        self.watching = true;
        let mut cut = ctx.cut.clone();
        let handle = session.handle();
        let id = ctx.id.clone();
        tokio::spawn(async move {
            let why = loop {
                if let Some(why) = cut.borrow_and_update().clone() {
                    break why;
                }
                if cut.changed().await.is_err() {
                    return;
                }
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
            tracing::info!(session = %id, reason = %why, "disconnecting the cut session");
            let _ = handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    format!("postern: session closed: {why}"),
                    String::new(),
                )
                .await;
        });
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

/// The gateway as a client of a server's sshd: accepts only a host certificate from the host
/// CA naming the server.
#[derive(Clone)]
struct Upstream {
    host_cas: Vec<PublicKey>,
    name: String,
    /// The server's host key as the CA certified it; `None` (a CA that does not say) refuses.
    pinned: Option<PublicKey>,
    agent: Arc<Mutex<Option<AgentBridge>>>,
}

impl russh::client::Handler for Upstream {
    type Error = anyhow::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::Certificate(cert) = key else {
            tracing::warn!(server = %self.name, "server presented a plain host key, not a host certificate");
            return Ok(false);
        };
        let why = match (CertValidator {
            trusted: &self.host_cas,
            cert_type: CertType::Host,
        })
        .validate(cert, now())
        {
            Err(e) => Some(e.to_string()),
            // The CA issues a server's certificate with key id = its name; a certificate for
            // another key id (a gateway's inner certificate, another server's) is not this
            // server's, whatever principals it carries.
            Ok(v) if v.key_id.as_str() != self.name => Some(format!(
                "its key id is {:?}, not the server's name",
                v.key_id.as_str()
            )),
            Ok(v) if !v.principals.iter().any(|p| p.as_str() == self.name) => {
                Some("it does not name the server".into())
            }
            Ok(_) => match &self.pinned {
                None => Some("the CA gave no host key for the server".into()),
                Some(k) if k.key_data() != cert.public_key() => {
                    Some("its key is not the host key the CA certified when the server joined (a removed or replaced machine?)".into())
                }
                Some(_) => None,
            },
        };
        if let Some(why) = &why {
            tracing::warn!(server = %self.name, reason = %why, "server's host certificate refused");
        }
        Ok(why.is_none())
    }

    /// sshd opens an agent channel when a program on the server uses the forwarded agent:
    /// only after the user asked for forwarding and the permits allowed it, and then
    /// bridged to an agent channel opened on the user's own ssh client.
    async fn server_channel_open_agent_forward(
        &mut self,
        channel: Channel<russh::client::Msg>,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut russh::client::Session,
    ) -> Result<(), Self::Error> {
        let found = self.agent.lock().ok().and_then(|a| a.clone());
        let Some(b) = found.filter(|b| b.cut.borrow().is_none()) else {
            tracing::warn!(server = %self.name, "server opened an agent channel that was never requested (or after a lock); refused");
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        tokio::spawn(async move {
            match b.down.channel_open_agent().await {
                Ok(down) => {
                    reply.accept().await;
                    b.audit
                        .agent(&b.user, &b.node, &b.session, "gateway.agent_channel")
                        .await;
                    bridge(down.into_stream(), channel.into_stream(), b.cut).await;
                }
                Err(e) => {
                    tracing::info!(session = %b.session, error = %e, "the client refused the agent channel");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                }
            }
        });
        Ok(())
    }
}
