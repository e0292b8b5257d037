//! Bridges one inner session channel (the user's ssh, terminated here) to one upstream
//! channel (the gateway's ssh to the server), recording what the server sends before it
//! reaches the user (strict mode), and closing the session when a lock cuts it.

use russh::server::Handle;
use russh::{Channel, ChannelId, ChannelMsg};
use tokio::sync::watch;

use postern_core::policy::{Permit, RecordingMode};

use crate::record::Recorder;
use crate::sftp::SftpObserver;

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
    /// Where recordings go, and their metadata.
    pub spool: std::path::PathBuf,
    /// Metadata template for this channel's recording.
    pub meta: postern_core::api::RecordingMeta,
    /// Wakes the uploader when a recording is complete.
    pub uploaded: std::sync::Arc<tokio::sync::Notify>,
    /// Audit events to the CA.
    pub audit: crate::audit::Audit,
}

/// Whether a request is allowed by the user's permits.
pub fn permitted(msg: &ChannelMsg, permits: &[Permit]) -> bool {
    match msg {
        ChannelMsg::RequestPty { .. } => permits.contains(&Permit::Pty),
        ChannelMsg::AgentForward { .. } | ChannelMsg::RequestX11 { .. } => false,
        _ => true,
    }
}

/// Runs until either side closes.
pub async fn relay(
    down: Channel<russh::server::Msg>,
    up: Channel<russh::client::Msg>,
    mut ctx: RelayCtx,
) {
    let down_id: ChannelId = down.id();
    let (mut down_r, down_w) = down.split();
    let (mut up_r, up_w) = up.split();
    let mut size = (80u32, 24u32);
    let mut term = String::from("xterm");
    let mut rec: Option<Recorder> = None;
    let mut rec_failed = false;
    let mut sftp: Option<SftpObserver> = None;
    loop {
        tokio::select! {
            biased;
            changed = ctx.cut.changed() => {
                let reason = ctx.cut.borrow().clone();
                if changed.is_err() || reason.is_some() {
                    let msg = format!("\r\npostern: session closed: {}\r\n", reason.unwrap_or_else(|| "gateway stopping".into()));
                    let _ = down_w.extended_data_bytes(1, msg.into_bytes()).await;
                    let _ = up_w.close().await;
                    let _ = down_w.exit_status(255).await;
                    let _ = down_w.eof().await;
                    let _ = down_w.close().await;
                    break;
                }
            }
            m = up_r.wait() => {
                let Some(m) = m else { let _ = down_w.close().await; break };
                match m {
                    ChannelMsg::Data { ref data } | ChannelMsg::ExtendedData { ref data, .. } if rec.is_some() && !rec_failed => {
                        if let Some(r) = rec.as_mut() {
                            if let Err(e) = r.event("o", data) {
                                rec_failed = true;
                                if ctx.mode == RecordingMode::Strict {
                                    let msg = format!("\r\npostern: recording failed ({e}); the session ends (strict recording)\r\n");
                                    let _ = down_w.extended_data_bytes(1, msg.into_bytes()).await;
                                    let _ = up_w.close().await;
                                    let _ = down_w.close().await;
                                    break;
                                }
                                tracing::warn!(session = %ctx.meta.id, error = %e, "recording failed; best-effort mode keeps the session");
                            }
                        }
                        forward_out(&down_w, m).await;
                    }
                    ChannelMsg::Data { ref data } => {
                        if let Some(o) = sftp.as_mut() { o.server_bytes(data); }
                        forward_out(&down_w, m).await
                    }
                    ChannelMsg::ExtendedData { .. } => forward_out(&down_w, m).await,
                    ChannelMsg::ExitStatus { exit_status } => { let _ = down_w.exit_status(exit_status).await; }
                    ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag } => {
                        let _ = ctx.down_handle.exit_signal_request(down_id, signal_name, core_dumped, error_message, lang_tag).await;
                    }
                    ChannelMsg::Eof => { let _ = down_w.eof().await; }
                    ChannelMsg::Close => { let _ = down_w.close().await; break; }
                    _ => {}
                }
            }
            m = down_r.wait() => {
                let Some(m) = m else { let _ = up_w.close().await; break };
                if !permitted(&m, &ctx.permits) {
                    continue;
                }
                match m {
                    ChannelMsg::Data { data } => {
                        if ctx.record_input {
                            if let Some(r) = rec.as_mut() { let _ = r.event("i", &data); }
                        }
                        if let Some(o) = sftp.as_mut() {
                            for op in o.client_bytes(&data) {
                                ctx.audit.file_op(&ctx.meta, op);
                            }
                        }
                        if up_w.data_bytes(data).await.is_err() { break; }
                    }
                    ChannelMsg::ExtendedData { data, ext } => { let _ = up_w.extended_data_bytes(ext, data).await; }
                    ChannelMsg::Eof => { let _ = up_w.eof().await; }
                    ChannelMsg::Close => { let _ = up_w.close().await; break; }
                    ChannelMsg::RequestPty { term: t, col_width, row_height, pix_width, pix_height, terminal_modes, .. } => {
                        // A zero-size pty (some clients) falls back to 80x24.
                        size = if col_width == 0 || row_height == 0 { (80, 24) } else { (col_width, row_height) };
                        term = t.clone();
                        let _ = up_w.request_pty(false, &t, size.0, size.1, pix_width, pix_height, &terminal_modes).await;
                    }
                    ChannelMsg::SetEnv { variable_name, variable_value, .. } => { let _ = up_w.set_env(false, variable_name, variable_value).await; }
                    ChannelMsg::RequestShell { .. } => {
                        rec = open_recorder(&ctx, size, &term, None, &mut rec_failed);
                            if rec.is_none() && ctx.mode == RecordingMode::Strict {
                                let _ = down_w.extended_data_bytes(1, b"postern: cannot record this session; refused (strict recording)\r\n".to_vec()).await;
                                let _ = down_w.exit_status(255).await;
                                let _ = up_w.close().await;
                                let _ = down_w.close().await;
                                break;
                            }
                        let _ = up_w.request_shell(false).await;
                    }
                    ChannelMsg::Exec { command, .. } => {
                        let cmd = String::from_utf8_lossy(&command).into_owned();
                        // Legacy scp is a file transfer, not a terminal: its bytes are not a cast.
                        if !cmd.starts_with("scp ") {
                            rec = open_recorder(&ctx, size, &term, Some(&cmd), &mut rec_failed);
                            if rec.is_none() && ctx.mode == RecordingMode::Strict {
                                let _ = down_w.extended_data_bytes(1, b"postern: cannot record this session; refused (strict recording)\r\n".to_vec()).await;
                                let _ = down_w.exit_status(255).await;
                                let _ = up_w.close().await;
                                let _ = down_w.close().await;
                                break;
                            }
                        }
                        tracing::info!(session = %ctx.meta.id, user = %ctx.meta.user, login = %ctx.meta.login, node = %ctx.meta.node, command = %cmd.chars().take(200).collect::<String>(), "exec");
                        ctx.audit.event(&ctx.meta, "gateway.exec", serde_json::json!({ "command": cmd.chars().take(4096).collect::<String>() }));
                        let _ = up_w.exec(false, command).await;
                    }
                    ChannelMsg::RequestSubsystem { name, .. } => {
                        tracing::info!(session = %ctx.meta.id, subsystem = %name, "subsystem");
                        if name == "sftp" {
                            sftp = Some(SftpObserver::default());
                        }
                        ctx.audit.event(&ctx.meta, "gateway.subsystem", serde_json::json!({ "name": name }));
                        let _ = up_w.request_subsystem(false, name).await;
                    }
                    ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
                        if let Some(r) = rec.as_mut() { let _ = r.resize(col_width, row_height); }
                        let _ = up_w.window_change(col_width, row_height, pix_width, pix_height).await;
                    }
                    ChannelMsg::Signal { signal } => { let _ = up_w.signal(signal).await; }
                    _ => {}
                }
            }
        }
    }
    if let Some(r) = rec {
        match r.finish() {
            Ok(()) => ctx.uploaded.notify_one(),
            Err(e) => {
                tracing::error!(session = %ctx.meta.id, error = %e, "cannot complete the recording")
            }
        }
    }
}

async fn forward_out(down_w: &russh::ChannelWriteHalf<russh::server::Msg>, m: ChannelMsg) {
    match m {
        ChannelMsg::Data { data } => {
            let _ = down_w.data_bytes(data).await;
        }
        ChannelMsg::ExtendedData { data, ext } => {
            let _ = down_w.extended_data_bytes(ext, data).await;
        }
        _ => {}
    }
}

fn open_recorder(
    ctx: &RelayCtx,
    size: (u32, u32),
    term: &str,
    cmd: Option<&str>,
    failed: &mut bool,
) -> Option<Recorder> {
    let mut meta = ctx.meta.clone();
    meta.started_at = crate::record::now();
    match Recorder::create(&ctx.spool, meta, size.0, size.1, term, cmd) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(session = %ctx.meta.id, error = %e, "cannot start the recording");
            *failed = true;
            None
        }
    }
}
