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
use clap::Parser;

use crate::commands::Refused;
use crate::profile::Layout;
// The command line lives in the library (src/cli.rs) so that man/ can render it.
use postern::cli::{Cli, Command, RecordingsCommand};
use postern_api_client::CaUrls;

/// Exit status of an operational error.
const EXIT_ERROR: u8 = 1;
/// Exit status when the server refused (credentials, policy, lock, renewal window over).
const EXIT_REFUSED: u8 = 3;

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
                // Clap requires at least one.
                ca: CaUrls::new(a.ca).context("--ca is required")?,
                ca_pin: a.ca_pin,
                user: a.user,
                invite: match a.invite {
                    Some(i) if !a.invite_stdin => commands::enroll::Invite::Given(i),
                    _ => commands::enroll::Invite::Stdin,
                },
                password_stdin: a.password_stdin,
                json: a.json,
            },
        ),
        Command::Login(a) => commands::login::run(
            &layout,
            commands::login::Args {
                ca: CaUrls::new(a.ca),
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
        Command::Reachable(_) => unreachable!("answered in main"),
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
    // Quiet, and never a refusal: ssh_config's `Match exec` reads only the status.
    if let Command::Reachable(a) = &cli.command {
        let timeout = std::time::Duration::from_millis(a.timeout_ms);
        return if commands::reachable::answers_unless(&a.address, &a.unless, timeout) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
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
