//! `postern login`: password + one-time code for a fresh key's SSH and X.509 certificates.

use anyhow::{bail, Context as _};

use postern_core::api::LoginRequest;
use postern_core::{Ttl, Username};

use crate::files::{self, IncludeOutcome};
use crate::profile::{self, Current, Layout};
use crate::prompt;
use postern_api_client::{Api, CaPin, CaUrls};
use postern_core::clock::now as now_unix;

use super::{agent, api_failure, store};

/// Flags of `postern login`.
#[derive(Debug)]
pub struct Args {
    /// `--ca`, in order; `None` when not given.
    pub ca: Option<CaUrls>,
    /// `--ca-pin`.
    pub ca_pin: Option<CaPin>,
    /// `--user`.
    pub user: Option<Username>,
    /// `--ttl`.
    pub ttl: Option<Ttl>,
    /// `--password-stdin`.
    pub password_stdin: bool,
    /// `--otp`.
    pub otp: Option<String>,
    /// `--agent`.
    pub agent: bool,
    /// `--json`.
    pub json: bool,
}

/// CA URLs, pin and user from the flags, falling back to `current.json`. A remembered pin
/// (and user) is used only when every URL given is among those it was remembered with.
fn resolve(args: &Args, current: Option<&Current>) -> anyhow::Result<(CaUrls, CaPin, Username)> {
    let remembered_ca = current.map(|c| c.ca.clone());
    let ca = match (&args.ca, &remembered_ca) {
        (Some(ca), _) => ca.clone(),
        (None, Some(ca)) => ca.clone(),
        (None, None) => bail!(
            "--ca URL is required for the first login (for example --ca https://ca.example.com:3080)"
        ),
    };
    let same_ca = remembered_ca
        .as_ref()
        .is_some_and(|r| ca.iter().all(|u| r.contains(u)));
    let pin = match (args.ca_pin, current.filter(|_| same_ca)) {
        (Some(p), _) => p,
        (None, Some(c)) => c
            .ca_pin
            .parse()
            .map_err(|e| anyhow::anyhow!("current.json: {e}"))?,
        (None, None) => bail!(
            "--ca-pin is required for {ca}: ask your administrator for the sha256:… pin that \
             `posternd init` printed"
        ),
    };
    let user = match (&args.user, current.filter(|_| same_ca)) {
        (Some(u), _) => u.clone(),
        (None, Some(c)) => c.user.clone(),
        (None, None) => bail!("--user NAME is required for the first login"),
    };
    Ok((ca, pin, user))
}

/// Runs `postern login`.
pub fn run(layout: &Layout, args: Args) -> anyhow::Result<()> {
    let current = profile::load_current(layout)?;
    let (ca, pin, user) = resolve(&args, current.as_ref())?;

    // Reach the server (and check the pin) before asking for secrets: a one-time code typed
    // for a wrong URL is wasted, and a pin mismatch should not look like a password error.
    let api = Api::new(&ca, pin, None)?;
    let ping = api.ping().context("cannot reach the CA")?;
    let cluster = postern_core::names::parse_cluster_name(ping.cluster.as_str())
        .context("the server sent an invalid cluster name")?;
    files::preflight(layout, &cluster, &profile::ALL_FILES)?;

    let password = if args.password_stdin {
        prompt::stdin_secret("password")?
    } else {
        prompt::hidden(&format!("Password for {user}: "))?
    };
    let otp = prompt::otp(args.otp.clone(), user.as_str())?;

    // The private key is made here and never leaves this computer; only its public half is
    // sent to be certified.
    let key = postern_core::cert::generate_ed25519(&format!("{user}@postern"))
        .context("generating a key")?;
    let public_key = key
        .public_key()
        .to_openssh()
        .context("encoding the public key")?;

    let resp = api
        .login(&LoginRequest {
            user: user.clone(),
            password,
            otp,
            public_key,
            ttl: args.ttl,
        })
        .map_err(|e| api_failure("login", e))?;
    let issued = store::check(resp, &user, key.public_key(), pin)?;
    let now = now_unix();
    store::check_not_expired(&issued, now)?;

    let dir = store::install(layout, &issued, Some(&key))?;
    let mut prof = store::profile_of(&issued, &ca, pin, false);
    store::save_profile(layout, &prof)?;
    profile::save_current(
        layout,
        &Current {
            ca: ca.clone(),
            ca_pin: pin.to_string(),
            user: user.clone(),
            cluster: Some(issued.cluster.clone()),
        },
    )?;
    match files::ensure_include(layout)? {
        IncludeOutcome::SkippedSymlink(line) => eprintln!(
            "postern: {} is a symbolic link and was left alone; add this line at its top for \
             ssh to use the certificate:\n  {line}",
            layout.ssh_config().display()
        ),
        IncludeOutcome::Added => eprintln!(
            "postern: added the Include line at the top of {} (previous version: {})",
            layout.ssh_config().display(),
            layout.ssh_dir().join("config.postern-backup").display()
        ),
        IncludeOutcome::Created | IncludeOutcome::Present => {}
    }

    if args.agent {
        agent::add(
            &dir.join(profile::KEY),
            issued.valid_before.saturating_sub(now),
        )?;
        prof.agent = true;
        store::save_profile(layout, &prof)?;
    }

    store::summary(&issued, &dir, args.agent).print(
        args.json,
        &format!("Logged in to {} as {}.", issued.cluster, issued.user),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn args() -> Args {
        Args {
            ca: None,
            ca_pin: None,
            user: None,
            ttl: None,
            password_stdin: false,
            otp: None,
            agent: false,
            json: false,
        }
    }

    fn current() -> Current {
        Current {
            ca: "https://ca.example.com:3080"
                .parse::<postern_api_client::CaUrl>()
                .unwrap()
                .into(),
            ca_pin: PIN.into(),
            user: "alice".parse().unwrap(),
            cluster: None,
        }
    }

    #[test]
    fn second_login_needs_no_flags() {
        let (ca, pin, user) = resolve(&args(), Some(&current())).unwrap();
        assert_eq!(ca.to_string(), "https://ca.example.com:3080");
        assert_eq!(pin.to_string(), PIN);
        assert_eq!(user.as_str(), "alice");
    }

    #[test]
    fn first_login_needs_ca_pin_and_user() {
        let e = resolve(&args(), None).unwrap_err();
        assert!(e.to_string().contains("--ca"), "{e}");
        let mut a = args();
        a.ca = Some(urls(&["https://ca.example.com"]));
        assert!(resolve(&a, None)
            .unwrap_err()
            .to_string()
            .contains("--ca-pin"));
        a.ca_pin = Some(PIN.parse().unwrap());
        assert!(resolve(&a, None)
            .unwrap_err()
            .to_string()
            .contains("--user"));
    }

    #[test]
    fn remembered_pin_is_not_used_for_another_ca() {
        let mut a = args();
        a.ca = Some(urls(&["https://other.example.com"]));
        let e = resolve(&a, Some(&current())).unwrap_err();
        assert!(e.to_string().contains("--ca-pin"), "{e}");
        // Nor for a list with a URL it was not remembered with.
        a.ca = Some(urls(&[
            "https://ca.example.com:3080",
            "https://other.example.com",
        ]));
        let e = resolve(&a, Some(&current())).unwrap_err();
        assert!(e.to_string().contains("--ca-pin"), "{e}");
    }

    fn urls(list: &[&str]) -> CaUrls {
        CaUrls::new(list.iter().map(|u| u.parse().unwrap())).unwrap()
    }

    #[test]
    fn several_remembered_urls_are_used_and_their_pin_with_any_of_them() {
        let mut c = current();
        c.ca = urls(&["https://a.example.com", "https://b.example.com"]);
        let (ca, pin, _) = resolve(&args(), Some(&c)).unwrap();
        assert_eq!(ca, c.ca);
        assert_eq!(pin.to_string(), PIN);
        let mut a = args();
        a.ca = Some(urls(&["https://b.example.com"]));
        let (ca, pin, _) = resolve(&a, Some(&c)).unwrap();
        assert_eq!(ca.to_string(), "https://b.example.com");
        assert_eq!(pin.to_string(), PIN);
    }
}
