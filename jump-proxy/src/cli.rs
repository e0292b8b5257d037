//! `postern-gate`'s command line: every subcommand and flag with its help and examples. It is
//! a library module so that `man/` renders postern-gate(8) from the very definitions the
//! gateway parses.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

/// The command line as a `clap::Command` (for the man page).
pub fn command() -> clap::Command {
    Cli::command()
}

const EXAMPLES: &str = "\
Examples:
  Join (token from `posternd tokens add --kind gateway --name gate1`), then serve; the host
  certificate names posternd.toml's [gateway] public_addr, which users are sent to:
    POSTERN_JOIN_TOKEN=T postern-gate join --ca https://ca.example.com:3080 --ca-pin sha256:... \\
        --name gate1 --state-dir /var/lib/postern-gate
    postern-gate serve --state-dir /var/lib/postern-gate

  Users need nothing but the ssh_config that `postern login` writes:
    ssh web1.prod.example.com        (ProxyJump through the gateway)

Exit status: 0 success, 1 error, 2 usage error.";

/// Postern's recording ProxyJump gateway.
#[derive(Parser)]
#[command(name = "postern-gate", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Join the cluster as a gateway: host certificate and mTLS identity.
    Join {
        /// posternd's API URL. Repeat it for several instances of the CA: the gateway tries
        /// them in order and fails over when one is down (inventory, authorization, events,
        /// recordings); a name may also resolve to several addresses.
        #[arg(long, value_name = "URL", required = true)]
        ca: Vec<String>,
        /// The CA pin (sha256:...).
        #[arg(long, value_name = "PIN")]
        ca_pin: String,
        /// A single-use token of kind `gateway`. Prefer the environment variable: on the
        /// command line every local user can read it (ps, /proc).
        #[arg(
            long,
            value_name = "T",
            env = "POSTERN_JOIN_TOKEN",
            hide_env_values = true
        )]
        token: String,
        /// The gateway's name.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// State directory.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/postern-gate")]
        state_dir: PathBuf,
        /// A further address the host certificate names (its host). Users are sent to the CA's
        /// [gateway] public_addr, which the certificate always names; join warns when this
        /// differs from it.
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
        /// An address this gateway dials servers from (IP or IP/prefix; repeat for several).
        /// Servers exempt it from sshd's PerSourcePenalties, and node-access certificates are
        /// bound to these addresses (source-address). Without it, the CA takes the address it
        /// sees this join come from for the exemption, and binds no source address.
        #[arg(long, value_name = "IP[/LEN]")]
        egress_address: Vec<String>,
    },
    /// Serve SSH for `ssh -J`. Refuses to start when the host certificate does not name the
    /// host of the CA's [gateway] public_addr (what users' ssh checks).
    Serve {
        /// State directory (from `join`).
        #[arg(long, value_name = "DIR", default_value = "/var/lib/postern-gate")]
        state_dir: PathBuf,
        /// Optional configuration file (`gate.toml`).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Listen address.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
}
