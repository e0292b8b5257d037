//! `postern renew`: fresh certificates for the same key, proven by mTLS with the current X.509
//! identity, until the renewal deadline of the last password login.

use anyhow::Context as _;
use ssh_key::PrivateKey;

use postern_core::api::RenewRequest;
use postern_core::Ttl;

use crate::profile::{self, Layout};
use postern_api_client::{Api, ApiError};
use postern_core::clock::now as now_unix;

use super::{agent, read_login_file, signed_in, store, Refused, SignedIn};

/// Flags of `postern renew` (without the timer flags, which `main` dispatches).
#[derive(Debug)]
pub struct Args {
    /// `--ttl`.
    pub ttl: Option<Ttl>,
    /// `--json`.
    pub json: bool,
}

fn renewal_failure(e: ApiError) -> anyhow::Error {
    if e.is_refusal() || e.is_identity_rejected() {
        let mut text = super::refusal_text("renewal", &e.to_string());
        if !text.contains("postern login") {
            text.push_str("; run `postern login` to sign in again");
        }
        anyhow::Error::new(Refused(text))
    } else {
        anyhow::Error::new(e).context("renewal failed")
    }
}

/// Runs `postern renew`.
pub fn run(layout: &Layout, args: Args) -> anyhow::Result<()> {
    let SignedIn {
        profile: prof,
        ca,
        pin,
        identity,
        dir,
    } = signed_in(layout, "renewal window")?;
    let key_pem = zeroize::Zeroizing::new(read_login_file(layout, &dir, profile::KEY)?);
    let key = PrivateKey::from_openssh(&*key_pem)
        .with_context(|| format!("reading {}", dir.join(profile::KEY).display()))?;

    let api = Api::new(&ca, pin, Some(identity))?;
    let resp = api
        .renew(&RenewRequest { ttl: args.ttl })
        .map_err(renewal_failure)?;
    let issued = store::check(resp, &prof.user, key.public_key(), pin)?;
    let now = now_unix();
    store::check_not_expired(&issued, now)?;
    anyhow::ensure!(
        issued.cluster == prof.cluster,
        "the server answered for cluster {} instead of {}",
        issued.cluster,
        prof.cluster
    );

    // The agent holds the old certificate with the old lifetime. ssh-add -d finds it through
    // the certificate file beside the key, so it is removed before that file is replaced;
    // otherwise the old certificate would linger beside the new one.
    let use_agent = prof.agent && std::env::var_os("SSH_AUTH_SOCK").is_some();
    if use_agent {
        let _ = agent::remove(&dir.join(profile::KEY));
    }
    let dir = store::install(layout, &issued, None)?;
    let mut agent_ok = false;
    if use_agent {
        // From a timer there is usually no agent to talk to, which is not a failed renewal;
        // with one, a failure is worth a warning but the new certificates are on disk.
        match agent::add(
            &dir.join(profile::KEY),
            issued.valid_before.saturating_sub(now),
        ) {
            Ok(()) => agent_ok = true,
            Err(e) => eprintln!("postern: warning: {e:#}"),
        }
    }
    store::save_profile(layout, &store::profile_of(&issued, &ca, pin, prof.agent))?;
    store::summary(&issued, &dir, agent_ok).print(
        args.json,
        &format!(
            "Renewed the certificate of {} on {}.",
            issued.user, issued.cluster
        ),
    )
}
