//! `postern-shim`: joins a server to a Postern cluster and teaches its stock sshd the cluster's
//! policy, as sshd's `AuthorizedPrincipalsCommand` and a `pam_exec` helper.

mod decide;
mod join;
mod log;
mod pam;
mod sshd;
mod state;
mod sync;

use std::process::ExitCode;
use std::time::Duration;

use postern_core::clock::now;

use clap::Parser;
use postern_core::api::Secret;
// The command line lives in the library (src/cli.rs) so that man/ can render it.
use postern_shim::cli::{Cli, Cmd};

use crate::state::StateDir;

/// sshd has no timeout for its helpers: whatever happens, answer within two seconds (an
/// answer with no output and exit 1 is a refusal).
fn watchdog(what: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1800));
        crate::log::log(true, &format!("{what}: deadline reached, refusing"));
        std::process::exit(1);
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postern-shim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Principals { state_dir, args } => {
            watchdog("principals");
            let state = StateDir(state_dir);
            // Why the bundle could not be read goes into the denial: "no valid policy bundle"
            // alone does not tell a missing file from one the command's user cannot read.
            let (bundle, load_error) = match state.load_bundle() {
                Ok(b) => (Some(b), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
            let login_arg = args
                .first()
                .map(|a| a.to_string_lossy().chars().take(40).collect::<String>())
                .unwrap_or_default();
            match decide::decide(bundle.as_ref(), &refs, now()) {
                decide::Decision::Allow(login) => {
                    log::log(false, &format!("allow login {login}"));
                    println!("{login}");
                    Ok(ExitCode::SUCCESS)
                }
                decide::Decision::Deny(why) => {
                    let why = match (&bundle, load_error) {
                        (None, Some(e)) if why.starts_with("no valid policy bundle") => {
                            format!("{why}: {e}")
                        }
                        _ => why,
                    };
                    log::log(true, &format!("deny login {login_arg:?}: {why}"));
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Cmd::Pam { state_dir } => {
            watchdog("pam");
            let code = pam::run(&StateDir(state_dir))?;
            Ok(if code == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Join {
            ca,
            ca_pin,
            token,
            name,
            address,
            labels,
            state_dir,
            sshd_config,
            sshd_config_dir,
            shim_path,
            no_reload,
            pam,
            pam_file,
            sshd,
            keep_local_auth,
        } => {
            let resp = join::join(join::JoinArgs {
                ca: postern_api_client::CaUrls::new(
                    ca.iter()
                        .map(|u| u.parse())
                        .collect::<Result<Vec<_>, String>>()
                        .map_err(anyhow::Error::msg)?,
                )
                .ok_or_else(|| anyhow::anyhow!("--ca is required"))?,
                pin: ca_pin.parse().map_err(anyhow::Error::msg)?,
                token: Secret::new(token),
                name: postern_core::names::parse_node_name(&name)?,
                address,
                labels: labels.parse()?,
                state: StateDir(state_dir),
                sshd_config,
                sshd_config_dir,
                shim_path,
                no_reload,
                pam_file: pam.then_some(pam_file),
                sshd_bin: sshd,
                keep_local_auth,
            })?;
            println!(
                "Joined cluster {} as {} ({}), labels {}.",
                resp.cluster, name, resp.kind, resp.labels
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sync {
            state_dir,
            renew,
            no_reload,
        } => {
            let msg = sync::sync(&StateDir(state_dir), sync::SyncOptions { renew, no_reload })?;
            println!("{msg}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { state_dir, json } => {
            let state = StateDir(state_dir);
            let j = state.joined()?;
            let bundle = state.load_bundle().ok();
            let cert = std::fs::read_to_string(state.host_cert())
                .ok()
                .and_then(|t| ssh_key::Certificate::from_openssh(t.trim()).ok());
            let now = now();
            let v = serde_json::json!({
                "name": j.name, "cluster": j.cluster, "ca": j.ca.first().as_str(),
                "ca_urls": j.ca.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
                "labels": bundle.as_ref().map(|b| b.labels.to_string()),
                "bundle_age_secs": bundle.as_ref().map(|b| now.saturating_sub(b.generated_at)),
                "bundle_stale": bundle.as_ref().map(|b| now.saturating_sub(b.generated_at) > b.max_bundle_age.as_secs()),
                "locks": bundle.as_ref().map(|b| b.locks.len()),
                "host_cert_valid_before": cert.as_ref().map(|c| c.valid_before()),
                "spooled_events": pam::spooled(&state),
                "keep_local_auth": j.keep_local_auth,
            });
            if json {
                println!("{v}");
            } else {
                println!("node:          {} (cluster {})", j.name, j.cluster);
                println!("CA:            {}", j.ca);
                println!("labels:        {}", v["labels"].as_str().unwrap_or("-"));
                match &bundle {
                    Some(b) => println!(
                        "bundle:        {}s old (max {}){}",
                        now.saturating_sub(b.generated_at),
                        b.max_bundle_age,
                        if v["bundle_stale"] == true {
                            " STALE: logins are denied"
                        } else {
                            ""
                        }
                    ),
                    None => println!("bundle:        missing or corrupt: logins are denied"),
                }
                match &cert {
                    Some(c) => println!(
                        "host cert:     expires in {}s",
                        c.valid_before().saturating_sub(now)
                    ),
                    None => println!("host cert:     missing"),
                }
                println!("spooled:       {} events", v["spooled_events"]);
                if j.keep_local_auth {
                    println!("local auth:    KEPT (--keep-local-auth): authorized_keys and passwords bypass the gateway, recordings, locks and the KRL");
                } else {
                    println!("local auth:    refused (AuthorizedKeysFile none, PasswordAuthentication no)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
