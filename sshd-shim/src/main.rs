//! `postern-shim`: joins a server to a Postern cluster and teaches its stock sshd the cluster's
//! policy, as sshd's `AuthorizedPrincipalsCommand` and a `pam_exec` helper.

mod decide;
mod join;
mod log;
mod pam;
mod state;
mod sync;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use postern_core::api::Secret;

use crate::state::{StateDir, DEFAULT_STATE_DIR};

const EXAMPLES: &str = "\
Examples:
  Join this server (token from `posternd tokens add --kind node`):
    postern-shim join --ca https://ca.example.com:3080 --ca-pin sha256:... --token TOKEN --name web1 --pam

  Refresh policy, locks, KRL and the host certificate (the package's timer runs this):
    postern-shim sync

  What sshd runs for every certificate login (see 50-postern.conf):
    postern-shim principals %u %k %t %i %s

Exit status: 0 success (principals: allowed), 1 error or denied, 2 usage error.";

/// Postern's server helper for stock sshd.
#[derive(Parser)]
#[command(name = "postern-shim", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Cmd {
    /// Join this server: host certificate, node-access CA, KRL, policy bundle, sshd drop-in.
    #[command(
        after_help = "Example:\n  postern-shim join --ca https://ca:3080 --ca-pin sha256:... --token T --name web1 --labels env=prod --pam\n\nThe drop-in is checked with `sshd -t`; when the check fails it is removed again and sshd keeps its old configuration. Running join again (with a new token) is safe."
    )]
    Join {
        /// posternd's API URL.
        #[arg(long, value_name = "URL")]
        ca: String,
        /// The CA pin printed by `posternd init` (sha256:...).
        #[arg(long, value_name = "PIN")]
        ca_pin: String,
        /// A single-use token from `posternd tokens add --kind node`.
        #[arg(
            long,
            value_name = "T",
            env = "POSTERN_JOIN_TOKEN",
            hide_env_values = true
        )]
        token: String,
        /// This server's name (one DNS label); users reach it as NAME.<cluster>.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// HOST:PORT where sshd listens, as the gateway should dial it.
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
        /// Labels to ask for (the token's labels win).
        #[arg(long, value_name = "K=V,...", default_value = "")]
        labels: String,
        /// State directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// sshd's main configuration file (for `sshd -t -f`).
        #[arg(long, value_name = "FILE", default_value = "/etc/ssh/sshd_config")]
        sshd_config: PathBuf,
        /// sshd's drop-in directory.
        #[arg(long, value_name = "DIR", default_value = "/etc/ssh/sshd_config.d")]
        sshd_config_dir: PathBuf,
        /// The shim as sshd runs it (root-owned path, no writable parent).
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/usr/libexec/postern/postern-shim"
        )]
        shim_path: PathBuf,
        /// Do not reload sshd.
        #[arg(long)]
        no_reload: bool,
        /// Add the pam_exec lines to sshd's PAM file.
        #[arg(long)]
        pam: bool,
        /// sshd's PAM file (with --pam).
        #[arg(long, value_name = "FILE", default_value = "/etc/pam.d/sshd")]
        pam_file: PathBuf,
        /// The sshd binary used for `sshd -t`.
        #[arg(long, value_name = "PATH", default_value = "/usr/sbin/sshd")]
        sshd: PathBuf,
    },
    /// sshd's AuthorizedPrincipalsCommand: prints USER iff the bundle allows this certificate.
    #[command(
        after_help = "sshd runs: postern-shim principals %u %k %t %i %s\nIt reads local files only, answers within 2 seconds, and logs each decision to syslog."
    )]
    Principals {
        /// State directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// %u %k %t %i %s
        #[arg(num_args = 0.., allow_hyphen_values = true, trailing_var_arg = true)]
        args: Vec<OsString>,
    },
    /// pam_exec helper: locks in the account stage, audit events on session open and close.
    Pam {
        /// State directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Fetch policy, locks and KRL; renew the host certificate; deliver spooled events.
    #[command(after_help = "Example:\n  postern-shim sync --state-dir /var/lib/postern-shim")]
    Sync {
        /// State directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Show this node's identity, labels, bundle age and certificate expiry.
    Status {
        /// State directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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
            let bundle = state.load_bundle().ok();
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
        } => {
            let resp = join::join(join::JoinArgs {
                ca: ca.parse().map_err(anyhow::Error::msg)?,
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
            })?;
            println!(
                "Joined cluster {} as {} ({}), labels {}.",
                resp.cluster, name, resp.kind, resp.labels
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sync { state_dir } => {
            let msg = sync::sync(&StateDir(state_dir))?;
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
                "name": j.name, "cluster": j.cluster, "ca": j.ca,
                "labels": bundle.as_ref().map(|b| b.labels.to_string()),
                "bundle_age_secs": bundle.as_ref().map(|b| now.saturating_sub(b.generated_at)),
                "bundle_stale": bundle.as_ref().map(|b| now.saturating_sub(b.generated_at) > b.max_bundle_age.as_secs()),
                "locks": bundle.as_ref().map(|b| b.locks.len()),
                "host_cert_valid_before": cert.as_ref().map(|c| c.valid_before()),
                "spooled_events": pam::spooled(&state),
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
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
