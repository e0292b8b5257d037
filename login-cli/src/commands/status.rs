//! `postern status`: what the last login or renewal granted, from the local files only.

use serde::Serialize;

use postern_core::{ClusterName, Login, Permit, Username};

use crate::display::when;
use crate::files;
use crate::profile::{self, Layout};
use postern_core::clock::now as now_unix;

/// The `--json` form.
#[derive(Debug, Serialize)]
struct Status {
    logged_in: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Username>,
    /// The first URL, as when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<String>,
    /// Every URL, in the order they are tried.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ca_urls: Vec<String>,
    principals: Vec<Login>,
    permits: Vec<Permit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    renew_until: Option<u64>,
    expired: bool,
    renewable: bool,
    agent: bool,
}

/// Runs `postern status`. Not being logged in is an error (exit 1), so scripts can test it.
pub fn run(layout: &Layout, json: bool) -> anyhow::Result<()> {
    let current = profile::load_current(layout)?;
    let prof = match current.as_ref().and_then(|c| c.cluster.as_ref()) {
        Some(cluster) => profile::load_profile(layout, cluster)?,
        None => None,
    };
    // A profile without its certificate (deleted by hand) is not a usable login.
    let prof = match prof {
        Some(p)
            if files::read_private(&layout.cluster_dir(&p.cluster), profile::CERT, layout)?
                .is_some() =>
        {
            Some(p)
        }
        _ => None,
    };
    let Some(p) = prof else {
        if json {
            let s = Status {
                logged_in: false,
                cluster: None,
                user: None,
                ca: None,
                ca_urls: Vec::new(),
                principals: Vec::new(),
                permits: Vec::new(),
                valid_before: None,
                renew_until: None,
                expired: false,
                renewable: false,
                agent: false,
            };
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        anyhow::bail!("not logged in: run `postern login`");
    };
    let now = now_unix();
    let expired = now >= p.valid_before;
    let renewable = now < p.renew_until;
    if json {
        let s = Status {
            logged_in: true,
            cluster: Some(p.cluster),
            user: Some(p.user),
            ca: Some(p.ca.first().to_string()),
            ca_urls: p.ca.iter().map(ToString::to_string).collect(),
            principals: p.principals,
            permits: p.permits,
            valid_before: Some(p.valid_before),
            renew_until: Some(p.renew_until),
            expired,
            renewable,
            agent: p.agent,
        };
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "(none)".to_owned()
        } else {
            v.join(", ")
        }
    };
    println!("  User:        {}", p.user);
    println!("  Cluster:     {}", p.cluster);
    println!("  CA:          {}", p.ca);
    println!(
        "  Principals:  {}",
        list(p.principals.iter().map(ToString::to_string).collect())
    );
    println!(
        "  Permits:     {}",
        list(p.permits.iter().map(ToString::to_string).collect())
    );
    if expired {
        println!("  Expires:     EXPIRED {}", when(now, p.valid_before));
    } else {
        println!("  Expires:     {}", when(now, p.valid_before));
    }
    if renewable {
        println!(
            "  Renewable:   until {} with `postern renew`",
            when(now, p.renew_until)
        );
    } else {
        println!(
            "  Renewable:   no, the window ended {}; run `postern login`",
            when(now, p.renew_until)
        );
    }
    if expired && renewable {
        println!("The certificate has expired: run `postern renew`.");
    }
    Ok(())
}
