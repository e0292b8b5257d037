//! Puts the key and certificate into ssh-agent (and takes them out) with stock `ssh-add`.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// `ssh-add -t <lifetime> <key>`: ssh-add(1) loads `<key>-cert.pub` beside the key too, and
/// the agent forgets both when the certificate expires.
pub fn add(key: &Path, lifetime_secs: u64) -> anyhow::Result<()> {
    if lifetime_secs == 0 {
        bail!("the certificate has already expired; not adding it to ssh-agent");
    }
    run(Command::new("ssh-add")
        .arg("-t")
        .arg(lifetime_secs.to_string())
        .arg(key))
    .context("adding the key to ssh-agent (is an agent running? check SSH_AUTH_SOCK)")
}

/// `ssh-add -d <key>`: removes the key and its certificate from the agent.
pub fn remove(key: &Path) -> anyhow::Result<()> {
    run(Command::new("ssh-add").arg("-d").arg(key)).context("removing the key from ssh-agent")
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running ssh-add")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        bail!(
            "ssh-add failed: {}",
            if err.is_empty() {
                out.status.to_string()
            } else {
                err.to_owned()
            }
        );
    }
    Ok(())
}
