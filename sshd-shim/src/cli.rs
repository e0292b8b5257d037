//! `postern-shim`'s command line: every subcommand and flag with its help and examples. It is a
//! library module so that `man/` renders postern-shim(8) from the very definitions the shim
//! parses.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

/// Default state directory (DESIGN.md).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/postern-shim";

/// The command line as a `clap::Command` (for the man page).
pub fn command() -> clap::Command {
    Cli::command()
}

const EXAMPLES: &str = "\
Examples:
  Join this server (token from `posternd tokens add --kind node --name web1`, given in the
  environment: on the command line every local user could read it):
    POSTERN_JOIN_TOKEN=TOKEN postern-shim join --ca https://ca.example.com:3080 --ca-pin sha256:... --name web1 --pam

  Refresh policy, locks, KRL and the host certificate (the package's timer runs this):
    postern-shim sync

  What sshd runs for every certificate login (see 50-postern.conf):
    postern-shim principals %u %k %t %i %s

Exit status: 0 success (principals: allowed), 1 error or denied, 2 usage error.";

/// Postern's server helper for stock sshd.
#[derive(Parser)]
#[command(name = "postern-shim", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Cmd {
    /// Join this server: host certificate, node-access CA, KRL, policy bundle, sshd drop-in.
    #[command(
        after_help = "Example:\n  POSTERN_JOIN_TOKEN=T postern-shim join --ca https://ca:3080 --ca-pin sha256:... --name web1 --labels env=prod --pam\n\nThe drop-in sets AuthorizedKeysFile none, PasswordAuthentication no and KbdInteractiveAuthentication no (unless --keep-local-auth), so that the gateway is the only way in. It is checked with `sshd -t`, then `sshd -T` must show Postern's value for every keyword Postern relies on (sshd keeps the first value it reads, so an earlier line in sshd_config wins); when either check fails the drop-in is removed again and sshd keeps its old configuration. Running join again (with a new token) is safe."
    )]
    Join {
        /// posternd's API URL. Repeat it for several instances of the CA: `join` and `sync`
        /// (and the PAM events) try them in order and fail over when one is down; a name may
        /// also resolve to several addresses.
        #[arg(long, value_name = "URL", required = true)]
        ca: Vec<String>,
        /// The CA pin printed by `posternd init` (sha256:...).
        #[arg(long, value_name = "PIN")]
        ca_pin: String,
        /// A single-use token from `posternd tokens add --kind node`. Prefer the environment
        /// variable: on the command line every local user can read it (ps, /proc).
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
        /// Labels this server expects. The token sets the complete label set; a join asking
        /// for a label the token does not give is refused.
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
        /// The sshd binary used for `sshd -t` and `sshd -T`.
        #[arg(long, value_name = "PATH", default_value = "/usr/sbin/sshd")]
        sshd: PathBuf,
        /// Keep sshd's own ~/.ssh/authorized_keys and password logins (they bypass the gateway).
        #[arg(long)]
        keep_local_auth: bool,
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
    #[command(
        after_help = "Examples:\n  postern-shim sync\n  postern-shim sync --renew\n\nThe host certificate is renewed when a third of its life is left, or now with --renew. After installing a renewed certificate (or new gateway addresses in the drop-in), sync reloads sshd (systemctl reload where systemd runs it, SIGHUP to the pid in sshd's PidFile otherwise) and checks with ssh-keyscan that sshd serves the new certificate: OpenSSH 9.8 and later read HostCertificate only when they start or reload."
    )]
    Sync {
        /// State directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Renew the host certificate now, whatever its age.
        #[arg(long)]
        renew: bool,
        /// Do not reload sshd (it then serves a renewed host certificate only after its next
        /// reload or restart).
        #[arg(long)]
        no_reload: bool,
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
