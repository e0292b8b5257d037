//! `postern`'s command line: every subcommand and flag with its help and examples. It is a
//! library module so that `man/` renders postern(1) from the very definitions the CLI parses.

use clap::{Args, CommandFactory, Parser, Subcommand};

use postern_api_client::{CaPin, CaUrl};
use postern_core::api::Secret;
use postern_core::{NodeName, Ttl, Username};

/// The command line as a `clap::Command` (for the man page).
pub fn command() -> clap::Command {
    Cli::command()
}

const TOP_HELP: &str = "\
EXAMPLES:
  First time, with the invite your administrator gave you:
    postern enroll --ca https://ca.example.com:3080 --ca-pin sha256:4f1c… \\
        --user alice --invite-stdin        # paste the invite when asked
    postern login
  Every day (or let a timer do it):
    postern login             # password + one-time code
    ssh alice@web1.example.com
    postern renew --install-timer
  Look and leave:
    postern status
    postern logout
  Your recorded sessions:
    postern recordings ls
    postern play s-5f3a9c

FILES:
  ~/.ssh/postern/current.json        CA, pin and user that `postern login` reuses
  ~/.ssh/postern/<cluster>/          key, certificates, known_hosts, ssh_config
  ~/.ssh/config                      starts with: Include ~/.ssh/postern/*/ssh_config

EXIT STATUS:
  0  success
  1  error (network, files, bad answer)
  2  usage error (unknown flag, invalid value)
  3  refused: wrong password or code, account locked, denied by policy, or the renewal
     window is over (run `postern login`)";

const ENROLL_HELP: &str = "\
EXAMPLES:
  Paste the invite when asked (hidden), set your password (asked twice) and get your
  TOTP secret:
    postern enroll --ca https://ca.example.com:3080 \\
        --ca-pin sha256:4f1c0a…e9 --user alice --invite-stdin
  In a script, invite and password as two lines on standard input, JSON out:
    printf '%s\\n%s\\n' \"$INVITE\" \"$PW\" | postern enroll --ca https://ca.example.com:3080 \\
        --ca-pin sha256:4f1c0a…e9 --user alice --invite-stdin --password-stdin --json

An invite given with --invite is visible to every local user (ps, /proc) while enroll runs:
prefer --invite-stdin.

Scan the QR code (shown when the output is a terminal) or paste the otpauth:// URI into an
authenticator app. The CA, pin and user are remembered for `postern login`.";

const LOGIN_HELP: &str = "\
EXAMPLES:
  First login (afterwards plain `postern login` is enough):
    postern login --ca https://ca.example.com:3080 --ca-pin sha256:4f1c0a…e9 --user alice
  Longer certificate (capped by policy) and put it into ssh-agent:
    postern login --ttl 24h --agent
  Non-interactive:
    printf '%s\\n' \"$PW\" | postern login --password-stdin --otp \"$(oathtool --totp -b \"$SEED\")\"

Writes ~/.ssh/postern/<cluster>/ (id_ed25519, id_ed25519-cert.pub, known_hosts, ssh_config,
tls.crt, tls.key, ca.crt, profile.json) and makes ~/.ssh/config start with an Include line,
so that `ssh <login>@<server>.<cluster>` uses the certificate and the gateway.";

const STATUS_HELP: &str = "\
EXAMPLES:
    postern status
    postern status --json | jq .valid_before

Reads only local files. Exits 1 when not logged in.";

const RENEW_HELP: &str = "\
EXAMPLES:
  Fresh certificates for the same key, without password, until the renewal deadline:
    postern renew
    postern renew --ttl 8h --json
  Renew every day automatically (systemd user timer, or cron without systemd):
    postern renew --install-timer
    postern renew --uninstall-timer

When the renewal deadline has passed or the server refuses this device, run `postern login`
(exit status 3).";

const LOGOUT_HELP: &str = "\
EXAMPLES:
    postern logout

Removes the current cluster's key, certificates and ssh_config (and the key from ssh-agent
when `postern login --agent` put it there). The Include line in ~/.ssh/config stays.";

const RECORDINGS_HELP: &str = "\
EXAMPLES:
    postern recordings ls
    postern recordings ls --node web1 --json
    postern recordings ls --user bob

Lists the recorded sessions you may see (newest first), using the identity of the last
`postern login`: your own, and other users' sessions on the servers that a role of yours
selects with `view_recordings` in the policy. Asking for another user's sessions without
any `view_recordings` is refused (exit status 3).";

const PLAY_HELP: &str = "\
EXAMPLES:
    postern play s-5f3a9c
    postern play s-5f3a9c --speed 4
    postern play s-5f3a9c > session.txt

Replays the output of a recorded session you may see (see `postern recordings ls`) with its
original timing divided by --speed; pauses longer than 2 seconds are shortened to 2 seconds.
When standard output is not a terminal, the output is written at once, without timing. What
you typed is not replayed. Playing another user's session is audited. The recording is an
asciicast v2 file: `asciinema play` plays it too.";

const REACHABLE_HELP: &str = "\
Exit status 0 when an SSH server's banner arrives from HOST:PORT within the
timeout (every address of a name is tried at once), 1 otherwise; it prints
nothing. With --unless, it says 1 without asking HOST:PORT when one of those
answers first (within the same timeout).

A cluster with several gateways ([gateway] public_addr in posternd.toml lists
them) gets an ssh_config from `postern login` that runs this before each ssh:
stock ssh then jumps through the first gateway that answers, and through the
last one when none of the others does.

EXAMPLES:
  postern reachable gate1.example.com:3023 && echo up
  postern reachable gate2.example.com:3023 --unless gate1.example.com:3023
  postern reachable --timeout-ms 300 '[2001:db8::7]:3023'";

#[derive(Debug, Parser)]
#[command(
    name = "postern",
    version,
    about = "Sign in to a Postern cluster and use stock ssh with a short-lived certificate",
    after_help = TOP_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Redeem an invite: set your password and get your TOTP secret
    #[command(after_help = ENROLL_HELP)]
    Enroll(EnrollArgs),
    /// Sign in with password and one-time code; write key, certificate and ssh config
    #[command(after_help = LOGIN_HELP)]
    Login(LoginArgs),
    /// Show the current login: user, principals, expiry, renewal deadline
    #[command(after_help = STATUS_HELP)]
    Status(StatusArgs),
    /// Renew the certificates without a password, or install a daily renewal timer
    #[command(after_help = RENEW_HELP)]
    Renew(RenewArgs),
    /// Remove the current cluster's key, certificates and ssh config
    #[command(after_help = LOGOUT_HELP)]
    Logout,
    /// Recorded sessions: yours, and others' where the policy lets you see them
    #[command(subcommand, after_help = RECORDINGS_HELP)]
    Recordings(RecordingsCommand),
    /// Replay a recorded session in the terminal
    #[command(after_help = PLAY_HELP)]
    Play(PlayArgs),
    /// Whether a gateway answers (the ssh_config of several gateways runs this)
    #[command(after_help = REACHABLE_HELP)]
    Reachable(ReachableArgs),
}

#[derive(Debug, Args)]
pub struct ReachableArgs {
    /// The gateway, as ssh_config's ProxyJump names it: HOST:PORT, [V6]:PORT or HOST
    #[arg(value_name = "HOST:PORT")]
    pub address: String,
    /// How long to wait for the banner, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout_ms: u64,
    /// Say no at once when this earlier gateway answers (may be repeated)
    #[arg(long, value_name = "HOST:PORT")]
    pub unless: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum RecordingsCommand {
    /// List the recorded sessions you may see, newest first
    #[command(after_help = RECORDINGS_HELP)]
    Ls(RecordingsLsArgs),
}

#[derive(Debug, Args)]
pub struct RecordingsLsArgs {
    /// Only this user's sessions (another user's needs `view_recordings` in the policy)
    #[arg(long, value_name = "USER")]
    pub user: Option<Username>,
    /// Only sessions on this server
    #[arg(long, value_name = "NODE")]
    pub node: Option<NodeName>,
    /// How many
    #[arg(short = 'n', long, value_name = "N", default_value_t = 100)]
    pub limit: u32,
    /// Print a JSON array instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PlayArgs {
    /// The recording's id (from `postern recordings ls`)
    #[arg(value_name = "ID")]
    pub id: String,
    /// Playback speed: 2 plays twice as fast, 0.5 half as fast
    #[arg(long, value_name = "X", default_value_t = 1.0, value_parser = parse_speed)]
    pub speed: f64,
}

/// Parses a user name without repeating a refused value: a password typed into the user field
/// by mistake must not be echoed to the terminal (or a shared screen, or a CI log).
#[derive(Clone, Copy)]
struct QuietUsername;

impl clap::builder::TypedValueParser for QuietUsername {
    type Value = Username;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Username, clap::Error> {
        let refuse = |reason: &str| {
            let arg = arg.map_or_else(|| "--user".to_owned(), ToString::to_string);
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "invalid value for '{arg}': not a user name ({reason}); the value is not \
                     repeated here in case it was a password\n"
                ),
            )
            .with_cmd(cmd)
        };
        let s = value.to_str().ok_or_else(|| refuse("not valid UTF-8"))?;
        s.parse::<Username>().map_err(|e| refuse(e.reason))
    }
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x <= 1000.0 => Ok(x),
        _ => Err(format!(
            "{s:?} is not a speed: expected a number above 0 and at most 1000, like 2 or 0.5"
        )),
    }
}

/// `--invite`'s value, held as a [`Secret`] from the start so that `Debug` never shows it.
fn secret_arg(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(s.to_owned()))
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Base URL of the Postern CA; repeat it for several instances of the CA, tried in order
    /// (a name may also resolve to several addresses). Remembered for `postern login`
    #[arg(long, value_name = "URL", required = true)]
    pub ca: Vec<CaUrl>,
    /// SHA-256 pin of the service CA certificate, as printed by `posternd init`
    #[arg(long, value_name = "PIN")]
    pub ca_pin: CaPin,
    /// Your Postern user name
    #[arg(long, value_name = "NAME", value_parser = QuietUsername)]
    pub user: Username,
    /// The one-time invite from `posternd users add`; visible to every local user in `ps`
    /// while enroll runs: prefer --invite-stdin
    #[arg(long, value_name = "TOKEN", required_unless_present = "invite_stdin",
          value_parser = secret_arg)]
    pub invite: Option<Secret>,
    /// Read the invite from standard input (one line; asked without echo on a terminal). With
    /// --password-stdin, the invite is the first line and the password the second
    #[arg(long, conflicts_with = "invite")]
    pub invite_stdin: bool,
    /// Read the new password as one line from standard input instead of prompting
    #[arg(long)]
    pub password_stdin: bool,
    /// Print one JSON object ({"otpauth_uri": …}) instead of text and QR code
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Base URL of the Postern CA (default: those of the last login); repeat it for several
    /// instances of the CA, tried in order (a name may also resolve to several addresses).
    /// Remembered, so that `postern renew` and the other commands fail over too
    #[arg(long, value_name = "URL")]
    pub ca: Vec<CaUrl>,
    /// SHA-256 pin of the service CA certificate (default: remembered with --ca)
    #[arg(long, value_name = "PIN")]
    pub ca_pin: Option<CaPin>,
    /// Your Postern user name (default: the one of the last login)
    #[arg(long, value_name = "NAME", value_parser = QuietUsername)]
    pub user: Option<Username>,
    /// Requested certificate lifetime, e.g. 8h or 1d (policy may cap it)
    #[arg(long, value_name = "DUR")]
    pub ttl: Option<Ttl>,
    /// Read the password as one line from standard input instead of prompting
    #[arg(long)]
    pub password_stdin: bool,
    /// The current one-time code (prompted when missing)
    #[arg(long, value_name = "CODE")]
    pub otp: Option<String>,
    /// Also add the key and certificate to ssh-agent until the certificate expires
    #[arg(long)]
    pub agent: bool,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// Requested certificate lifetime, e.g. 8h (policy may cap it)
    #[arg(long, value_name = "DUR", conflicts_with_all = ["install_timer", "uninstall_timer"])]
    pub ttl: Option<Ttl>,
    /// Print one JSON object instead of text
    #[arg(long, conflicts_with_all = ["install_timer", "uninstall_timer"])]
    pub json: bool,
    /// Install a daily `postern renew` (systemd user timer, or a crontab line)
    #[arg(long, conflicts_with = "uninstall_timer")]
    pub install_timer: bool,
    /// Remove the daily renewal installed by --install-timer
    #[arg(long)]
    pub uninstall_timer: bool,
}
