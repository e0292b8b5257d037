//! The subcommands, one module each, and what they share: the server-refusal error that
//! maps to exit code 3, and the summary printed after a login or renewal.

pub mod enroll;
pub mod login;
pub mod logout;
pub mod reachable;
pub mod recordings;
pub mod renew;
pub mod status;

mod agent;
mod store;

use serde::Serialize;

use postern_core::{ClusterName, Login, Permit, Username};

use crate::display::{short_duration, when};
use postern_api_client::ApiError;
use postern_core::clock::now as now_unix;

/// The server (or the renewal window) refused: bad credentials, policy, lock. `main` turns
/// this into exit code 3, distinct from operational errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// `<action> refused: <detail>`, without saying "refused" twice when the server's message
/// already does.
fn refusal_text(action: &str, detail: &str) -> String {
    let prefix = format!("{action} refused");
    if detail.starts_with(&prefix) {
        detail.to_owned()
    } else {
        format!("{prefix}: {detail}")
    }
}

/// An API failure of `action` ("login", "enrolment") as an error for the user.
fn api_failure(action: &str, e: ApiError) -> anyhow::Error {
    if e.is_refusal() {
        anyhow::Error::new(Refused(refusal_text(action, &e.to_string())))
    } else {
        anyhow::Error::new(e).context(format!("{action} failed"))
    }
}

/// What a login or renewal granted, as printed (and as the `--json` object).
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The cluster.
    pub cluster: ClusterName,
    /// The user.
    pub user: Username,
    /// OS logins the certificate is valid for.
    pub principals: Vec<Login>,
    /// Certificate extensions.
    pub permits: Vec<Permit>,
    /// Certificate expiry, Unix seconds.
    pub valid_before: u64,
    /// Renewal deadline, Unix seconds.
    pub renew_until: u64,
    /// The granted lifetime.
    pub ttl: String,
    /// The requested lifetime when policy capped it.
    pub capped_from: Option<String>,
    /// The cluster's ssh_config.
    pub ssh_config: String,
    /// The private key (the certificate is beside it).
    pub identity_file: String,
    /// Whether the key was added to ssh-agent.
    pub agent: bool,
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "(none)".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Summary {
    /// Prints the summary, as JSON or for people. `headline` opens the human form.
    pub fn print(&self, json: bool, headline: &str) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
            return Ok(());
        }
        let now = now_unix();
        println!("{headline}");
        println!("  User:        {}", self.user);
        println!("  Cluster:     {}", self.cluster);
        println!("  Principals:  {}", join(&self.principals));
        println!("  Permits:     {}", join(&self.permits));
        println!("  Expires:     {}", when(now, self.valid_before));
        println!(
            "  Renewable:   until {} with `postern renew`",
            when(now, self.renew_until)
        );
        if let Some(from) = &self.capped_from {
            println!(
                "Note: requested TTL {from} was capped to {} by policy.",
                self.ttl
            );
        }
        if self.agent {
            println!(
                "The key and certificate are in ssh-agent for {}.",
                short_duration(self.valid_before.saturating_sub(now))
            );
        }
        if let Some(login) = self.principals.first() {
            println!("Connect with: ssh {login}@<server>.{}", self.cluster);
        }
        Ok(())
    }
}

/// The current login's profile, CA, pin and mTLS identity, for the commands that need no
/// password (`renew`, `recordings`, `play`).
pub struct SignedIn {
    /// The remembered profile.
    pub profile: crate::profile::Profile,
    /// The CA's URLs.
    pub ca: postern_api_client::CaUrls,
    /// Its pin.
    pub pin: postern_api_client::CaPin,
    /// The X.509 identity of the last login.
    pub identity: postern_api_client::ClientIdentity,
    /// The cluster folder, for reading other files of the login.
    pub dir: std::path::PathBuf,
}

/// Reads a private file of the login, or says to log in again.
pub fn read_login_file(
    layout: &crate::profile::Layout,
    dir: &std::path::Path,
    name: &str,
) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    crate::files::read_private(dir, name, layout)?.with_context(|| {
        format!(
            "{} is missing; run `postern login`",
            dir.join(name).display()
        )
    })
}

/// Loads the current login; refused once its renewal window (`what` names it) has ended.
pub fn signed_in(layout: &crate::profile::Layout, what: &str) -> anyhow::Result<SignedIn> {
    let (_, prof) = crate::profile::current_profile(layout)?;
    if now_unix() >= prof.renew_until {
        return Err(Refused(format!(
            "the {what} of the last login ended at {}; run `postern login` to sign in again",
            crate::display::local_time(prof.renew_until)
        ))
        .into());
    }
    let ca = prof.ca.clone();
    let pin = prof
        .ca_pin
        .parse()
        .map_err(|e| anyhow::anyhow!("profile.json: {e}"))?;
    let dir = layout.cluster_dir(&prof.cluster);
    let tls_key = zeroize::Zeroizing::new(read_login_file(layout, &dir, crate::profile::TLS_KEY)?);
    let identity = postern_api_client::ClientIdentity::from_pem(
        &read_login_file(layout, &dir, crate::profile::TLS_CRT)?,
        &tls_key,
    )?;
    Ok(SignedIn {
        profile: prof,
        ca,
        pin,
        identity,
        dir,
    })
}
