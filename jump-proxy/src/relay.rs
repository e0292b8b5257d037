//! Bridges one inner session channel (the user's ssh, terminated here) to one upstream
//! channel (the gateway's ssh to the server), recording what the server sends before it
//! reaches the user (strict mode), and closing the session when a lock cuts it.
//!
//! Each direction runs in its own task. One task for both would deadlock under load: while it
//! waits for the client's window it stops draining the client's messages, russh's bounded
//! channel queue fills, and the session can no longer process the window adjustment it waits
//! for (seen as an SFTP download stalling at 32 MB).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use postern_core::policy::{Permit, RecordingMode};
use russh::server::Handle;
use russh::{Channel, ChannelId, ChannelMsg, ChannelWriteHalf};
use tokio::sync::watch;

use crate::observe::{Observer, Op};
use crate::record::Recorder;
use crate::scp::{ScpCommand, ScpObserver, ScpOp};
use crate::sftp::{FileOp, SftpObserver};

/// What the relay needs besides the two channels.
pub struct RelayCtx {
    /// The user's permits.
    pub permits: Vec<Permit>,
    /// Strict or best-effort.
    pub mode: RecordingMode,
    /// Record keystrokes too.
    pub record_input: bool,
    /// Cut signal: `Some(reason)` ends the session.
    pub cut: watch::Receiver<Option<String>>,
    /// Downstream session handle (for exit-signal).
    pub down_handle: Handle,
    /// Where recordings go.
    pub spool: std::path::PathBuf,
    /// Metadata template for this channel's recording.
    pub meta: postern_core::api::RecordingMeta,
    /// Wakes the uploader when a recording is complete.
    pub uploaded: Arc<tokio::sync::Notify>,
    /// Audit events to the CA.
    pub audit: crate::audit::Audit,
}

/// Whether a request is allowed by the user's permits.
pub fn permitted(msg: &ChannelMsg, permits: &[Permit]) -> bool {
    match msg {
        ChannelMsg::RequestPty { .. } => permits.contains(&Permit::Pty),
        ChannelMsg::AgentForward { .. } => permits.contains(&Permit::AgentForwarding),
        ChannelMsg::RequestX11 { .. } => false,
        _ => true,
    }
}

/// State both directions share (short critical sections, never held across an await).
#[derive(Default)]
struct Shared {
    rec: Option<Recorder>,
    rec_failed: bool,
    /// The file transfer followed instead of recorded (scp exec, sftp subsystem).
    observer: Option<Observer>,
    /// What the observed channel runs (`scp -t DIR`, `subsystem sftp`): the title of its
    /// recording if the observer gives up.
    observed: String,
    /// The client asked for a pty: neither an exec nor a subsystem is then taken for a file
    /// transfer.
    pty: bool,
    /// The observer gave up and strict recording could not start: nothing more passes.
    refused: bool,
    /// Requests forwarded with want_reply, in order: the server answers them in order.
    pending: VecDeque<&'static str>,
    size: (u32, u32),
    term: String,
}

type SMsg = russh::server::Msg;
type CMsg = russh::client::Msg;

/// Ends both channels with a message to the user.
async fn abort(
    down_w: &ChannelWriteHalf<SMsg>,
    up_w: &ChannelWriteHalf<CMsg>,
    msg: String,
    status: u32,
) {
    let _ = down_w.extended_data_bytes(1, msg.into_bytes()).await;
    let _ = down_w.exit_status(status).await;
    let _ = down_w.eof().await;
    let _ = up_w.close().await;
    let _ = down_w.close().await;
}

const REFUSED: &str = "postern: cannot record this session; refused (strict recording)\r\n";

/// Appends events to the audit journal before what carries them goes on: in strict mode
/// once they are durable, and otherwise once queued (the journal logs and counts a drop).
/// Returns the user's message when strict mode must end the session because they could not
/// be written.
fn audited(ctx: &RelayCtx, events: Result<(), crate::audit::Unrecorded>) -> Option<String> {
    let e = events.err()?;
    if ctx.mode == RecordingMode::Strict {
        tracing::error!(session = %ctx.meta.id, error = %e, "an audit event could not be written; the session ends (strict recording)");
        return Some(format!(
            "\r\npostern: cannot write the audit log ({e}); the session ends (strict recording)\r\n"
        ));
    }
    tracing::warn!(session = %ctx.meta.id, error = %e, "an audit event could not be written; best-effort mode keeps the session");
    None
}

impl RelayCtx {
    /// Whether the relay waits for events to be durable before it forwards what carries them.
    fn strict(&self) -> bool {
        self.mode == RecordingMode::Strict
    }
}

/// Feeds bytes to the channel's file-transfer observer, if it has one. When it gives up (the
/// bytes are not rcp or SFTP, or came where the protocol sends none, such as standard error),
/// the channel is recorded from these bytes on, like any exec: the caller records them
/// before forwarding them. Returns the events, and false when the recording cannot start in
/// strict mode (the session must end).
fn observe(
    ctx: &RelayCtx,
    s: &mut Shared,
    feed: impl FnOnce(&mut Observer) -> Vec<Op>,
) -> (Vec<Op>, bool) {
    if s.refused {
        return (Vec::new(), false);
    }
    let Some(o) = s.observer.as_mut() else {
        return (Vec::new(), true);
    };
    let ops = feed(o);
    if !ops.iter().any(Op::gave_up) {
        return (ops, true);
    }
    s.observer = None;
    let cmd = std::mem::take(&mut s.observed);
    let ok = s.rec.is_some() || open_recorder(ctx, s, Some(&cmd));
    // The other direction's task must not forward anything either until the channel closes.
    s.refused = !ok;
    (ops, ok)
}

/// Runs until either side closes.
pub async fn relay(down: Channel<SMsg>, up: Channel<CMsg>, ctx: RelayCtx) {
    let down_id: ChannelId = down.id();
    let (down_r, down_w) = down.split();
    let (up_r, up_w) = up.split();
    let (down_w, up_w) = (Arc::new(down_w), Arc::new(up_w));
    let shared = Arc::new(Mutex::new(Shared {
        size: (80, 24),
        term: "xterm".into(),
        ..Default::default()
    }));
    let ctx = Arc::new(ctx);
    let out = tokio::spawn(server_to_client(
        up_r,
        Arc::clone(&down_w),
        Arc::clone(&up_w),
        Arc::clone(&shared),
        Arc::clone(&ctx),
        down_id,
    ));
    let inp = tokio::spawn(client_to_server(
        down_r,
        Arc::clone(&down_w),
        Arc::clone(&up_w),
        Arc::clone(&shared),
        Arc::clone(&ctx),
    ));
    let _ = out.await;
    inp.abort();
    let end = shared
        .lock()
        .ok()
        .and_then(|mut s| s.observer.take())
        .map(|mut o| o.finish())
        .unwrap_or_default();
    let done = ctx.audit.observed(&ctx.meta, end, ctx.strict()).await;
    if let Err(e) = done {
        tracing::error!(session = %ctx.meta.id, error = %e, "the last audit events of a channel could not be written");
    }
    let rec = shared.lock().ok().and_then(|mut s| s.rec.take());
    if let Some(r) = rec {
        match r.finish() {
            Ok(()) => ctx.uploaded.notify_one(),
            Err(e) => {
                tracing::error!(session = %ctx.meta.id, error = %e, "cannot complete the recording")
            }
        }
    }
}

async fn server_to_client(
    mut up_r: russh::ChannelReadHalf,
    down_w: Arc<ChannelWriteHalf<SMsg>>,
    up_w: Arc<ChannelWriteHalf<CMsg>>,
    shared: Arc<Mutex<Shared>>,
    ctx: Arc<RelayCtx>,
    down_id: ChannelId,
) {
    let mut cut = ctx.cut.clone();
    loop {
        let m = tokio::select! {
            biased;
            changed = cut.changed() => {
                let reason = cut.borrow().clone();
                if changed.is_err() || reason.is_some() {
                    let why = reason.unwrap_or_else(|| "gateway stopping".into());
                    abort(&down_w, &up_w, format!("\r\npostern: session closed: {why}\r\n"), 255).await;
                    return;
                }
                continue;
            }
            m = up_r.wait() => m,
        };
        let Some(m) = m else {
            let _ = down_w.close().await;
            return;
        };
        match m {
            ChannelMsg::Data { ref data } | ChannelMsg::ExtendedData { ref data, .. } => {
                // Record first; forward only what was recorded (strict mode).
                let mut observed = Vec::new();
                let refused: bool;
                let failure = match shared.lock() {
                    Ok(mut s) => {
                        let stderr = !matches!(m, ChannelMsg::Data { .. });
                        let (ops, ok) = observe(&ctx, &mut s, |o| o.server_bytes(data, stderr));
                        observed = ops;
                        refused = !ok;
                        let failed = s.rec_failed || refused;
                        let r = match s.rec.as_mut() {
                            Some(r) if !failed => r.event("o", data).err(),
                            _ => None,
                        };
                        if r.is_some() {
                            s.rec_failed = true;
                        }
                        r
                    }
                    // A panic while the state was held: nothing is known to be recorded, so
                    // nothing is forwarded (fail closed).
                    Err(_) => {
                        refused = true;
                        None
                    }
                };
                // The operation's events are durable before its bytes reach the user.
                let logged = ctx.audit.observed(&ctx.meta, observed, ctx.strict()).await;
                if let Some(msg) = audited(&ctx, logged) {
                    abort(&down_w, &up_w, msg, 255).await;
                    return;
                }
                if refused {
                    abort(&down_w, &up_w, format!("\r\n{REFUSED}"), 255).await;
                    return;
                }
                if let Some(e) = failure {
                    if ctx.mode == RecordingMode::Strict {
                        abort(&down_w, &up_w, format!("\r\npostern: recording failed ({e}); the session ends (strict recording)\r\n"), 255).await;
                        return;
                    }
                    tracing::warn!(session = %ctx.meta.id, error = %e, "recording failed; best-effort mode keeps the session");
                    let _ = ctx
                        .audit
                        .event(
                            &ctx.meta,
                            "gateway.recording_failed",
                            serde_json::json!({ "error": e.to_string() }),
                            false,
                        )
                        .await;
                }
                let sent = match m {
                    ChannelMsg::Data { data } => down_w.data_bytes(data).await,
                    ChannelMsg::ExtendedData { data, ext } => {
                        down_w.extended_data_bytes(ext, data).await
                    }
                    _ => Ok(()),
                };
                if sent.is_err() {
                    let _ = up_w.close().await;
                    return;
                }
            }
            ChannelMsg::ExitStatus { exit_status } => {
                let _ = down_w.exit_status(exit_status).await;
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                let _ = ctx
                    .down_handle
                    .exit_signal_request(down_id, signal_name, core_dumped, error_message, lang_tag)
                    .await;
            }
            ChannelMsg::Eof => {
                let _ = down_w.eof().await;
            }
            ChannelMsg::Close => {
                let _ = down_w.close().await;
                return;
            }
            ChannelMsg::Success => {
                if let Ok(mut s) = shared.lock() {
                    s.pending.pop_front();
                }
            }
            ChannelMsg::Failure => {
                // The user was told "success" at once (russh needs the reply in the handler);
                // when the server refuses what would start a program, say so and end the
                // channel rather than leave the client waiting.
                let what = shared
                    .lock()
                    .ok()
                    .and_then(|mut s| s.pending.pop_front())
                    .unwrap_or("request");
                if what != "pty" {
                    abort(
                        &down_w,
                        &up_w,
                        format!("postern: the server refused the {what} request\r\n"),
                        1,
                    )
                    .await;
                    return;
                }
            }
            _ => {}
        }
    }
}

fn open_recorder(ctx: &RelayCtx, s: &mut Shared, cmd: Option<&str>) -> bool {
    let mut meta = ctx.meta.clone();
    meta.started_at = postern_core::clock::now();
    match Recorder::create(&ctx.spool, meta, s.size.0, s.size.1, &s.term, cmd) {
        Ok(r) => {
            s.rec = Some(r);
            true
        }
        Err(e) => {
            tracing::error!(session = %ctx.meta.id, error = %e, "cannot start the recording");
            s.rec_failed = true;
            ctx.mode != RecordingMode::Strict
        }
    }
}

async fn client_to_server(
    mut down_r: russh::ChannelReadHalf,
    down_w: Arc<ChannelWriteHalf<SMsg>>,
    up_w: Arc<ChannelWriteHalf<CMsg>>,
    shared: Arc<Mutex<Shared>>,
    ctx: Arc<RelayCtx>,
) {
    let push = |what: &'static str| {
        if let Ok(mut s) = shared.lock() {
            s.pending.push_back(what);
        }
    };
    while let Some(m) = down_r.wait().await {
        if matches!(m, ChannelMsg::RequestPty { .. }) {
            if let Ok(mut s) = shared.lock() {
                s.pty = true;
            }
        }
        if !permitted(&m, &ctx.permits) {
            continue;
        }
        match m {
            ChannelMsg::Data { data } => {
                let (ops, ok) = match shared.lock() {
                    Ok(mut s) => {
                        // First, so that bytes the observer gives up on are recorded.
                        let (ops, ok) = observe(&ctx, &mut s, |o| o.client_bytes(&data));
                        if ctx.record_input {
                            if let Some(r) = s.rec.as_mut() {
                                let _ = r.event("i", &data);
                            }
                        }
                        (ops, ok)
                    }
                    // As for server output: an unknown state forwards nothing.
                    Err(_) => (Vec::new(), false),
                };
                // The operation's events are durable before its bytes reach the server.
                let logged = ctx.audit.observed(&ctx.meta, ops, ctx.strict()).await;
                if let Some(msg) = audited(&ctx, logged) {
                    abort(&down_w, &up_w, msg, 255).await;
                    return;
                }
                if !ok {
                    abort(&down_w, &up_w, REFUSED.into(), 255).await;
                    return;
                }
                if up_w.data_bytes(data).await.is_err() {
                    return;
                }
            }
            ChannelMsg::ExtendedData { data, ext } => {
                let _ = up_w.extended_data_bytes(ext, data).await;
            }
            ChannelMsg::Eof => {
                let _ = up_w.eof().await;
            }
            ChannelMsg::Close => {
                let _ = up_w.close().await;
                return;
            }
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } => {
                // A zero-size pty (some clients) falls back to 80x24.
                let size = if col_width == 0 || row_height == 0 {
                    (80, 24)
                } else {
                    (col_width, row_height)
                };
                if let Ok(mut s) = shared.lock() {
                    s.size = size;
                    s.term = term.clone();
                }
                if up_w
                    .request_pty(
                        true,
                        &term,
                        size.0,
                        size.1,
                        pix_width,
                        pix_height,
                        &terminal_modes,
                    )
                    .await
                    .is_ok()
                {
                    push("pty");
                }
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => {
                let _ = up_w.set_env(false, variable_name, variable_value).await;
            }
            ChannelMsg::RequestShell { .. } => {
                let ok = shared
                    .lock()
                    .map(|mut s| open_recorder(&ctx, &mut s, None))
                    .unwrap_or(false);
                if !ok {
                    abort(
                        &down_w,
                        &up_w,
                        "postern: cannot record this session; refused (strict recording)\r\n"
                            .into(),
                        255,
                    )
                    .await;
                    return;
                }
                let logged = ctx
                    .audit
                    .event(
                        &ctx.meta,
                        "gateway.shell",
                        serde_json::json!({}),
                        ctx.strict(),
                    )
                    .await;
                if let Some(msg) = audited(&ctx, logged) {
                    abort(&down_w, &up_w, msg, 255).await;
                    return;
                }
                if up_w.request_shell(true).await.is_ok() {
                    push("shell");
                }
            }
            ChannelMsg::Exec { command, .. } => {
                let cmd = String::from_utf8_lossy(&command).into_owned();
                // Legacy scp is a file transfer, not a terminal: its bytes are not a cast but
                // file-operation events. Only the exact form stock scp sends is trusted (see
                // `ScpCommand::parse`), never after a pty request or with bytes that are not
                // UTF-8; anything else is recorded like any other command, and so is the rest
                // of the channel as soon as the observer sees something that is not rcp.
                let pty = shared.lock().map(|s| s.pty).unwrap_or(true);
                let scp = match std::str::from_utf8(&command) {
                    Ok(c) => ScpCommand::parse(c),
                    Err(_) => ScpCommand::parse(&cmd).map(|_| Err("not UTF-8")),
                };
                let scp = match scp {
                    Some(Ok(_)) if pty => Some(Err("a pty was requested")),
                    other => other,
                };
                let observed = matches!(scp, Some(Ok(_)));
                if !observed {
                    let ok = shared
                        .lock()
                        .map(|mut s| open_recorder(&ctx, &mut s, Some(&cmd)))
                        .unwrap_or(false);
                    if !ok {
                        abort(&down_w, &up_w, REFUSED.into(), 255).await;
                        return;
                    }
                }
                tracing::info!(session = %ctx.meta.id, user = %ctx.meta.user, login = %ctx.meta.login, node = %ctx.meta.node, command = %cmd.chars().take(200).collect::<String>(), "exec");
                let mut events = vec![crate::audit::session_event(
                    &ctx.meta,
                    "gateway.exec",
                    serde_json::json!({ "command": cmd.chars().take(crate::scp::MAX_COMMAND).collect::<String>() }),
                )];
                match scp {
                    Some(Ok(c)) => {
                        if let Ok(mut s) = shared.lock() {
                            s.observer = Some(Observer::Scp(ScpObserver::new(c)));
                            s.observed = cmd;
                        }
                    }
                    Some(Err(reason)) => events.push(crate::audit::scp_op(
                        &ctx.meta,
                        ScpOp::GaveUp {
                            reason: format!("unsupported scp command: {reason}"),
                        },
                    )),
                    None => {}
                }
                // The command is in the audit log before the server runs it.
                let logged = ctx.audit.send(events, ctx.strict()).await;
                if let Some(msg) = audited(&ctx, logged) {
                    abort(&down_w, &up_w, msg, 255).await;
                    return;
                }
                if up_w.exec(true, command).await.is_ok() {
                    push("exec");
                }
            }
            ChannelMsg::RequestSubsystem { name, .. } => {
                tracing::info!(session = %ctx.meta.id, subsystem = %name, "subsystem");
                // sshd runs a subsystem's command through the login's shell, which the
                // login's ~/.bashrc can turn into anything, so no subsystem is trusted to be
                // what its name says. sftp without a pty is followed as SFTP and recorded
                // from the first byte that is not (see `observe`); every other subsystem is
                // recorded from the start, like an exec.
                let title = format!("subsystem {name}");
                let pty = shared.lock().map(|s| s.pty).unwrap_or(true);
                let observed = name == "sftp" && !pty;
                if !observed {
                    let ok = shared
                        .lock()
                        .map(|mut s| open_recorder(&ctx, &mut s, Some(&title)))
                        .unwrap_or(false);
                    if !ok {
                        abort(&down_w, &up_w, REFUSED.into(), 255).await;
                        return;
                    }
                }
                let mut events = vec![crate::audit::session_event(
                    &ctx.meta,
                    "gateway.subsystem",
                    serde_json::json!({ "name": name }),
                )];
                if observed {
                    if let Ok(mut s) = shared.lock() {
                        s.observer = Some(Observer::Sftp(SftpObserver::default()));
                        s.observed = title;
                    }
                } else if name == "sftp" {
                    events.push(crate::audit::file_op(
                        &ctx.meta,
                        FileOp::GaveUp {
                            reason: "a pty was requested".into(),
                        },
                    ));
                }
                let logged = ctx.audit.send(events, ctx.strict()).await;
                if let Some(msg) = audited(&ctx, logged) {
                    abort(&down_w, &up_w, msg, 255).await;
                    return;
                }
                if up_w.request_subsystem(true, name).await.is_ok() {
                    push("subsystem");
                }
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                if let Ok(mut s) = shared.lock() {
                    if let Some(r) = s.rec.as_mut() {
                        let _ = r.resize(col_width, row_height);
                    }
                }
                let _ = up_w
                    .window_change(col_width, row_height, pix_width, pix_height)
                    .await;
            }
            ChannelMsg::Signal { signal } => {
                let _ = up_w.signal(signal).await;
            }
            // Answered to the client by the inner handler; sshd's agent channels come back
            // through the upstream handler.
            ChannelMsg::AgentForward { .. } => {
                let _ = up_w.agent_forward(false).await;
            }
            _ => {}
        }
    }
    let _ = up_w.close().await;
}
