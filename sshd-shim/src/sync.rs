//! `postern-shim sync`: fetch the bundle over mTLS, install it and the KRL atomically, renew the
//! host certificate when a third of its life is left (or on `--renew`), keep the drop-in's
//! gateway addresses current, reload sshd and check that it serves the renewed certificate,
//! deliver spooled session events.

use std::fs;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use postern_api_client::{Api, CaPin, ClientIdentity, Resend};
use postern_core::api::{Bundle, EventsRequest, NodeEvent, SyncRequest, SyncResponse};
use postern_core::batch::{EventBatch, Offer};
use ssh_key::Certificate;

use crate::sshd::{apply_drop_in, drop_in, DropInOptions, SshdFiles};
use crate::state::{write_atomic, StateDir};

/// Installs a bundle: the KRL and the node-access CA key first, the bundle last (so that its
/// age never vouches for files that were not written).
pub fn install_bundle(state: &StateDir, b: &Bundle) -> Result<()> {
    let krl = base64::engine::general_purpose::STANDARD
        .decode(&b.krl)
        .context("the bundle's KRL is not base64")?;
    anyhow::ensure!(
        krl.starts_with(b"SSHKRL\n\0"),
        "the bundle's KRL is not a KRL"
    );
    write_atomic(&state.krl(), &krl, 0o644)?;
    let mut cas = b.node_access_ca_keys.join("\n");
    cas.push('\n');
    write_atomic(&state.node_ca(), cas.as_bytes(), 0o644)?;
    // The bundle says who may log in as what and why users are locked: readable by root and
    // by the principals command's group only, not by every account on the server.
    let gid = crate::state::group_id(crate::sshd::COMMAND_USER)?;
    crate::state::write_atomic_owned(
        &state.bundle(),
        serde_json::to_string_pretty(b)?.as_bytes(),
        0o640,
        gid,
    )?;
    Ok(())
}

/// A client with the node's identity.
pub fn api(state: &StateDir) -> Result<Api> {
    let j = state.joined()?;
    let identity = ClientIdentity::from_pem(
        &fs::read(state.path("identity.crt"))?,
        &fs::read(state.path("identity.key"))?,
    )?;
    let pin: CaPin = j.ca_pin.parse().map_err(anyhow::Error::msg)?;
    Api::new(&j.ca, pin, Some(identity))
}

/// Delivers spooled events; returns how many were delivered.
pub fn deliver_spool(state: &StateDir, api: &Api) -> Result<usize> {
    let mut files: Vec<_> = fs::read_dir(state.spool())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut n = 0;
    let mut i = 0;
    while i < files.len() {
        // Take files while the request stays within what the CA takes (`postern_core::batch`).
        let mut events = Vec::new();
        let mut batch = EventBatch::new();
        let start = i;
        while i < files.len() {
            let p = &files[i];
            match fs::read(p)
                .ok()
                .and_then(|b| serde_json::from_slice::<NodeEvent>(&b).ok())
            {
                Some(e) => match batch.offer(&e) {
                    Offer::Taken => events.push(e),
                    Offer::Full => break,
                    Offer::TooLarge => {
                        // The CA would refuse it however it is sent: keep it here, aside.
                        crate::log::log(
                            true,
                            &format!(
                                "sync: event {} is larger than the CA takes; kept as {}",
                                p.display(),
                                p.with_extension("toolarge").display()
                            ),
                        );
                        let _ = fs::rename(p, p.with_extension("toolarge"));
                    }
                },
                None => {
                    // A corrupt spool file would block delivery forever: set it aside.
                    let _ = fs::rename(p, p.with_extension("corrupt"));
                }
            }
            i += 1;
        }
        let count = events.len();
        if count > 0 {
            let _: serde_json::Value = api.post("/v1/node/events", &EventsRequest { events })?;
        }
        for p in &files[start..i] {
            let _ = fs::remove_file(p);
        }
        n += count;
    }
    Ok(n)
}

/// What `sync` may do beyond fetching.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncOptions {
    /// Renew the host certificate now, whatever its age.
    pub renew: bool,
    /// Do not reload sshd after changing what it reads only at start.
    pub no_reload: bool,
}

/// One sync.
pub fn sync(state: &StateDir, opts: SyncOptions) -> Result<String> {
    let api = api(state)?;
    let joined = state.joined()?;
    let window = fs::read_to_string(state.host_cert())
        .ok()
        .and_then(|t| Certificate::from_openssh(t.trim()).ok())
        .map(|c| (c.valid_after(), c.valid_before()));
    let host_public_key = fs::read_to_string(state.path("ssh_host_ed25519_key.pub"))
        .ok()
        .map(|s| s.trim().to_owned());
    // Sent again to another instance after a broken-off answer: a sync changes nothing but
    // the host certificate, and a repeat only certifies the same host key again.
    let resp: SyncResponse = api.post_resend(
        Resend::Always,
        "/v1/node/sync",
        &SyncRequest {
            host_cert_window: window,
            host_public_key,
            renew: opts.renew,
            audit_checkpoint: true,
        },
        None,
    )?;
    let previous = state.load_bundle().ok().and_then(|b| b.audit_checkpoint);
    install_bundle(state, &resp.bundle)?;
    // A copy of the CA's newest signed audit checkpoint in this server's syslog, off the CA's
    // host: `posternd audit verify --checkpoints` finds a truncated audit log by it.
    if let Some(cp) = &resp.bundle.audit_checkpoint {
        if previous.as_ref() != Some(cp) {
            crate::log::log(false, &cp.line());
        }
    }
    let mut msg = format!(
        "bundle installed ({} users, {} locks)",
        resp.bundle.allowed.len(),
        resp.bundle.locks.len()
    );
    let renewed = resp.host_certificate.clone();
    if let Some(cert) = &renewed {
        write_atomic(&state.host_cert(), format!("{cert}\n").as_bytes(), 0o644)?;
        msg.push_str("; host certificate renewed");
    } else if opts.renew {
        bail!("the CA did not renew the host certificate (its host key is not the one it certified at join?)");
    }
    // Spooled session events first: nothing below (a reload, its check) may hold them up.
    match deliver_spool(state, &api) {
        Ok(0) => {}
        Ok(n) => msg.push_str(&format!("; {n} spooled events delivered")),
        Err(e) => msg.push_str(&format!("; spooled events not delivered: {e:#}")),
    }
    // The gateways' addresses may have changed: keep sshd's penalty exemptions current.
    let js = joined.sshd.clone().unwrap_or_default();
    let files = SshdFiles {
        bin: js.bin,
        config: js.config,
        dropin_dir: js.dropin_dir,
    };
    let current = fs::read_to_string(files.dropin()).ok();
    // Whether this sshd knows penalties decides what the drop-in should say (9.2 does not).
    let knows_penalties = current.is_some()
        && crate::sshd::sshd_effective(&files.bin, &files.config)
            .map(|e| crate::sshd::has_penalties(&e))
            .unwrap_or(true);
    let dopts = DropInOptions {
        keep_local_auth: joined.keep_local_auth,
        penalty_exempt: crate::sshd::exempt_addresses(&resp.bundle.gateway_addresses),
        sshd_has_penalties: knows_penalties,
    };
    let mut dropin_changed = false;
    if current.is_some() && current.as_deref() != Some(drop_in(state, &js.shim, &dopts).as_str()) {
        dropin_changed = apply_drop_in(&files, state, &js.shim, &dopts)?;
        if dropin_changed {
            msg.push_str("; sshd drop-in updated (gateway addresses)");
        }
    }
    // Something edited after join (a config line, a package's drop-in sorting before ours, a
    // Match block) can reopen a way around the gateway: check every sync, and say so loudly.
    let mut drift = Vec::new();
    if current.is_some() {
        let checked = crate::sshd::effective_running(&files);
        if let Err(e) = &checked {
            drift.push(format!("{e:#}"));
        }
        if let Ok(effective) = checked {
            let mut o = dopts.clone();
            o.sshd_has_penalties = crate::sshd::has_penalties(&effective);
            let wanted = crate::sshd::settings(state, &js.shim, &o);
            drift = crate::sshd::overridden(&effective, &wanted);
            drift.extend(
                crate::sshd::match_overrides(&files.config, &wanted)
                    .into_iter()
                    .map(|l| format!("in a Match block, {l}")),
            );
        }
    }
    // OpenSSH 9.8 and later read HostCertificate (and the drop-in) only when sshd starts or
    // reloads: without a reload a renewed certificate is not served and, once the old one
    // expires, every session fails the gateway's host check.
    if (renewed.is_some() || dropin_changed) && !opts.no_reload {
        match crate::sshd::reload(&files) {
            Ok(how) => {
                msg.push_str(&format!("; {how}"));
                if let Some(cert) = &renewed {
                    let address = joined.address.as_deref().unwrap_or("127.0.0.1:22");
                    crate::sshd::wait_served(address, cert, Duration::from_secs(15))?;
                    msg.push_str(&format!("; {address} serves the renewed certificate"));
                }
            }
            Err(e) if !sshd_running(&files) => {
                msg.push_str(&format!("; sshd is not running, not reloaded ({e:#})"));
            }
            Err(e) => {
                return Err(e.context("the renewed files are installed but sshd was not reloaded"))
            }
        }
    }
    if !drift.is_empty() {
        crate::log::log(
            true,
            &format!(
                "sync: sshd's configuration overrides Postern's: {}",
                drift.join("; ")
            ),
        );
        bail!(
            "{msg}\nbut sshd's effective configuration no longer is what Postern relies on (logins may bypass the gateway):\n  {}\nfix these lines, then run `postern-shim sync` again",
            drift.join("\n  ")
        );
    }
    Ok(msg)
}

/// Whether sshd's `PidFile` names a live process.
fn sshd_running(files: &SshdFiles) -> bool {
    crate::sshd::pid(files)
        .map(|p| Path::new(&format!("/proc/{p}")).exists())
        .unwrap_or(false)
}
