//! `postern`, the login CLI: turns a password and a one-time code into an OpenSSH key,
//! certificate, known_hosts and ssh_config block under `~/.ssh`, so that stock `ssh` works.

mod cast;
mod commands;
mod display;
mod files;
mod profile;
mod prompt;
mod render;
mod sys;
mod timer;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};

use postern_core::api::Secret;
use postern_core::{NodeName, Ttl, Username};

use crate::commands::Refused;
use crate::profile::Layout;
use postern_api_client::{CaPin, CaUrl};

/// Exit status of an operational error.
const EXIT_ERROR: u8 = 1;
/// Exit status when the server refused (credentials, policy, lock, renewal window over).
const EXIT_REFUSED: u8 = 3;

const TOP_HELP: &str = "\
EXAMPLES:
  First time, with the invite your administrator gave you:
    postern enroll --ca https://ca.example.com:3080 --ca-pin sha256:4f1c… \\
        --user alice --invite 7Q2X-…
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
  Set your password (asked twice) and get your TOTP secret:
    postern enroll --ca https://ca.example.com:3080 \\
        --ca-pin sha256:4f1c0a…e9 --user alice --invite 7Q2X-…
  In a script, password on standard input, JSON out:
    printf '%s\\n' \"$PW\" | postern enroll --ca https://ca.example.com:3080 \\
        --ca-pin sha256:4f1c0a…e9 --user alice --invite 7Q2X-… --password-stdin --json

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

Lists the sessions the gateway recorded for you (newest first), using the identity of the
last `postern login`. For now everyone sees only their own sessions.";

const PLAY_HELP: &str = "\
EXAMPLES:
    postern play s-5f3a9c
    postern play s-5f3a9c --speed 4
    postern play s-5f3a9c > session.txt

Replays the output of one of your recorded sessions (see `postern recordings ls`) with its
original timing divided by --speed; pauses longer than 2 seconds are shortened to 2 seconds.
When standard output is not a terminal, the output is written at once, without timing. What
you typed is not replayed. The recording is an asciicast v2 file: `asciinema play` plays it
too.";

#[derive(Debug, Parser)]
#[command(
    name = "postern",
    version,
    about = "Sign in to a Postern cluster and use stock ssh with a short-lived certificate",
    after_help = TOP_HELP,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Your recorded sessions
    #[command(subcommand, after_help = RECORDINGS_HELP)]
    Recordings(RecordingsCommand),
    /// Replay one of your recorded sessions in the terminal
    #[command(after_help = PLAY_HELP)]
    Play(PlayArgs),
}

#[derive(Debug, Subcommand)]
enum RecordingsCommand {
    /// List your recorded sessions, newest first
    #[command(after_help = RECORDINGS_HELP)]
    Ls(RecordingsLsArgs),
}

#[derive(Debug, Args)]
struct RecordingsLsArgs {
    /// Only this user's sessions (yourself: nobody may list others' yet)
    #[arg(long, value_name = "USER")]
    user: Option<Username>,
    /// Only sessions on this server
    #[arg(long, value_name = "NODE")]
    node: Option<NodeName>,
    /// How many
    #[arg(short = 'n', long, value_name = "N", default_value_t = 100)]
    limit: u32,
    /// Print a JSON array instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PlayArgs {
    /// The recording's id (from `postern recordings ls`)
    #[arg(value_name = "ID")]
    id: String,
    /// Playback speed: 2 plays twice as fast, 0.5 half as fast
    #[arg(long, value_name = "X", default_value_t = 1.0, value_parser = parse_speed)]
    speed: f64,
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x <= 1000.0 => Ok(x),
        _ => Err(format!(
            "{s:?} is not a speed: expected a number above 0 and at most 1000, like 2 or 0.5"
        )),
    }
}

#[derive(Debug, Args)]
struct EnrollArgs {
    /// Base URL of the Postern CA
    #[arg(long, value_name = "URL")]
    ca: CaUrl,
    /// SHA-256 pin of the service CA certificate, as printed by `posternd init`
    #[arg(long, value_name = "PIN")]
    ca_pin: CaPin,
    /// Your Postern user name
    #[arg(long, value_name = "NAME")]
    user: Username,
    /// The one-time invite from `posternd users add`
    #[arg(long, value_name = "TOKEN")]
    invite: String,
    /// Read the new password as one line from standard input instead of prompting
    #[arg(long)]
    password_stdin: bool,
    /// Print one JSON object ({"otpauth_uri": …}) instead of text and QR code
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct LoginArgs {
    /// Base URL of the Postern CA (default: the one of the last login)
    #[arg(long, value_name = "URL")]
    ca: Option<CaUrl>,
    /// SHA-256 pin of the service CA certificate (default: remembered with --ca)
    #[arg(long, value_name = "PIN")]
    ca_pin: Option<CaPin>,
    /// Your Postern user name (default: the one of the last login)
    #[arg(long, value_name = "NAME")]
    user: Option<Username>,
    /// Requested certificate lifetime, e.g. 8h or 1d (policy may cap it)
    #[arg(long, value_name = "DUR")]
    ttl: Option<Ttl>,
    /// Read the password as one line from standard input instead of prompting
    #[arg(long)]
    password_stdin: bool,
    /// The current one-time code (prompted when missing)
    #[arg(long, value_name = "CODE")]
    otp: Option<String>,
    /// Also add the key and certificate to ssh-agent until the certificate expires
    #[arg(long)]
    agent: bool,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RenewArgs {
    /// Requested certificate lifetime, e.g. 8h (policy may cap it)
    #[arg(long, value_name = "DUR", conflicts_with_all = ["install_timer", "uninstall_timer"])]
    ttl: Option<Ttl>,
    /// Print one JSON object instead of text
    #[arg(long, conflicts_with_all = ["install_timer", "uninstall_timer"])]
    json: bool,
    /// Install a daily `postern renew` (systemd user timer, or a crontab line)
    #[arg(long, conflicts_with = "uninstall_timer")]
    install_timer: bool,
    /// Remove the daily renewal installed by --install-timer
    #[arg(long)]
    uninstall_timer: bool,
}

/// `$HOME`, or the passwd home when HOME is unset. Not a flag: tests set HOME.
fn home() -> anyhow::Result<PathBuf> {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => {
            let p = PathBuf::from(h);
            if !p.is_absolute() {
                bail!("HOME={} is not an absolute path", p.display());
            }
            Ok(p)
        }
        _ => sys::passwd_home()
            .context("HOME is not set and the passwd database has no home for this user"),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let layout = Layout::new(home()?);
    match cli.command {
        Command::Enroll(a) => commands::enroll::run(
            &layout,
            commands::enroll::Args {
                ca: a.ca,
                ca_pin: a.ca_pin,
                user: a.user,
                invite: Secret::new(a.invite),
                password_stdin: a.password_stdin,
                json: a.json,
            },
        ),
        Command::Login(a) => commands::login::run(
            &layout,
            commands::login::Args {
                ca: a.ca,
                ca_pin: a.ca_pin,
                user: a.user,
                ttl: a.ttl,
                password_stdin: a.password_stdin,
                otp: a.otp,
                agent: a.agent,
                json: a.json,
            },
        ),
        Command::Status(a) => commands::status::run(&layout, a.json),
        Command::Renew(a) if a.install_timer => {
            let exe = std::env::current_exe().context("finding this program's path")?;
            println!("{}", timer::install(layout.home(), &exe)?);
            Ok(())
        }
        Command::Renew(a) if a.uninstall_timer => {
            println!("{}", timer::uninstall(layout.home())?);
            Ok(())
        }
        Command::Renew(a) => commands::renew::run(
            &layout,
            commands::renew::Args {
                ttl: a.ttl,
                json: a.json,
            },
        ),
        Command::Logout => commands::logout::run(&layout),
        Command::Recordings(RecordingsCommand::Ls(a)) => commands::recordings::ls(
            &layout,
            commands::recordings::LsArgs {
                user: a.user,
                node: a.node,
                limit: a.limit,
                json: a.json,
            },
        ),
        Command::Play(a) => commands::recordings::play(
            &layout,
            commands::recordings::PlayArgs {
                id: a.id,
                speed: a.speed,
            },
        ),
    }
}

fn main() -> ExitCode {
    // clap exits with status 2 on a usage error and 0 for --help and --version.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern: {e:#}");
            if e.chain().any(|c| c.is::<Refused>()) {
                ExitCode::from(EXIT_REFUSED)
            } else {
                ExitCode::from(EXIT_ERROR)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_examples() {
        let mut cmd = Cli::command();
        assert!(cmd.render_long_help().to_string().contains("EXAMPLES:"));
        assert!(cmd.render_long_help().to_string().contains("EXIT STATUS:"));
        for sub in cmd.get_subcommands_mut().filter(|s| s.get_name() != "help") {
            let help = sub.render_long_help().to_string();
            assert!(help.contains("EXAMPLES:"), "{}", sub.get_name());
        }
    }

    #[test]
    fn timer_flags_exclude_each_other_and_ttl() {
        assert!(
            Cli::try_parse_from(["postern", "renew", "--install-timer", "--uninstall-timer"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from(["postern", "renew", "--install-timer", "--ttl", "1h"]).is_err()
        );
        assert!(Cli::try_parse_from(["postern", "renew", "--ttl", "1h", "--json"]).is_ok());
    }

    #[test]
    fn flags_are_parsed_into_types() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        assert!(Cli::try_parse_from([
            "postern",
            "login",
            "--ca",
            "https://127.0.0.1:3080",
            "--ca-pin",
            &pin,
            "--user",
            "alice",
            "--ttl",
            "12h",
            "--otp",
            "123456",
            "--agent",
            "--json",
            "--password-stdin"
        ])
        .is_ok());
        assert!(Cli::try_parse_from(["postern", "login", "--ca-pin", "sha256:xyz"]).is_err());
        assert!(Cli::try_parse_from(["postern", "login", "--ca", "http://x"]).is_err());
        assert!(Cli::try_parse_from(["postern", "login", "--user", "a b"]).is_err());
        assert!(Cli::try_parse_from(["postern", "login", "--ttl", "12"]).is_err());
    }

    #[test]
    fn play_speed_must_be_a_positive_number() {
        assert!(Cli::try_parse_from(["postern", "play", "s-1", "--speed", "2.5"]).is_ok());
        for bad in ["0", "-1", "nan", "inf", "fast"] {
            assert!(
                Cli::try_parse_from(["postern", "play", "s-1", "--speed", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Cli::try_parse_from(["postern", "recordings", "ls", "--node", "Web 1"]).is_err());
    }

    #[test]
    fn refusal_is_found_through_context() {
        let e = anyhow::Error::new(Refused("login refused".into())).context("outer");
        assert!(e.chain().any(|c| c.is::<Refused>()));
    }
}
