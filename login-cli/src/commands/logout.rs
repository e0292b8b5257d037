//! `postern logout`: removes the current cluster's key, certificates and ssh configuration.
//! The Include line in `~/.ssh/config` stays: it matches nothing once the files are gone.

use crate::files;
use crate::profile::{self, Layout};

use super::agent;

/// Runs `postern logout`. Logging out twice is not an error.
pub fn run(layout: &Layout) -> anyhow::Result<()> {
    let current = profile::load_current(layout)?;
    let Some(cluster) = current.and_then(|c| c.cluster) else {
        println!("Not logged in; nothing to remove.");
        return Ok(());
    };
    let dir = layout.cluster_dir(&cluster);
    if let Some(p) = profile::load_profile(layout, &cluster)? {
        if p.agent {
            // The key must still exist for ssh-add to know what to delete, so this comes
            // first. The agent may have dropped it already (its lifetime ended): only a warning.
            if let Err(e) = agent::remove(&dir.join(profile::KEY)) {
                eprintln!("postern: warning: {e:#}");
            }
        }
    }
    let removed = files::remove_cluster_files(layout, &cluster, &profile::ALL_FILES)?;
    if removed == 0 {
        println!("Not logged in to {cluster}; nothing to remove.");
    } else {
        println!(
            "Logged out of {cluster}: removed the key, certificates and ssh configuration from {}.",
            dir.display()
        );
    }
    Ok(())
}
