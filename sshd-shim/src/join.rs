//! `postern-shim join`: host key, host certificate, node-access CA, mTLS identity and first
//! bundle from posternd; then the sshd drop-in, checked with `sshd -t` and rolled back when
//! the check fails, and a reload of sshd only when it passed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use postern_api_client::{Api, CaPin, CaUrls};
use postern_core::api::{JoinRequest, JoinResponse, Secret};
use postern_core::cert::generate_ed25519;
use postern_core::{Labels, NodeName};
use ssh_key::{LineEnding, PrivateKey};

use crate::sshd::{apply_drop_in, DropInOptions, SshdFiles};
use crate::state::{write_atomic, Joined, StateDir};
use crate::sync::install_bundle;

pub use crate::sshd::COMMAND_USER;

/// Everything `join` needs.
pub struct JoinArgs {
    /// API URLs, in order.
    pub ca: CaUrls,
    /// Pin.
    pub pin: CaPin,
    /// Token.
    pub token: Secret,
    /// Node name.
    pub name: NodeName,
    /// HOST:PORT of sshd.
    pub address: Option<String>,
    /// Labels asked for.
    pub labels: Labels,
    /// State directory.
    pub state: StateDir,
    /// Main sshd_config (for `sshd -t -f`).
    pub sshd_config: PathBuf,
    /// Drop-in directory.
    pub sshd_config_dir: PathBuf,
    /// Path of the shim as sshd will run it.
    pub shim_path: PathBuf,
    /// Skip the reload.
    pub no_reload: bool,
    /// PAM file to add the pam_exec lines to, if any.
    pub pam_file: Option<PathBuf>,
    /// The sshd binary for `-t` and `-T`.
    pub sshd_bin: PathBuf,
    /// Keep sshd's `authorized_keys` and password logins.
    pub keep_local_auth: bool,
}

/// The two pam_exec lines.
pub fn pam_lines(state: &StateDir, shim: &Path) -> [String; 2] {
    let arg = if state.0 == Path::new(crate::state::DEFAULT_STATE_DIR) {
        String::new()
    } else {
        format!(" --state-dir {}", state.0.display())
    };
    [
        format!(
            "account required pam_exec.so quiet {} pam{arg}",
            shim.display()
        ),
        format!(
            "session optional pam_exec.so quiet {} pam{arg}",
            shim.display()
        ),
    ]
}

/// Adds the pam_exec lines once (backup kept as `FILE.postern-backup`).
pub fn add_pam_lines(file: &Path, lines: &[String; 2]) -> Result<bool> {
    let old =
        fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let missing: Vec<&String> = lines
        .iter()
        .filter(|l| !old.lines().any(|x| x.trim() == l.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    let backup = file.with_extension("postern-backup");
    if !backup.exists() {
        fs::copy(file, &backup)?;
    }
    let mut new = old.clone();
    if !new.ends_with('\n') && !new.is_empty() {
        new.push('\n');
    }
    new.push_str("# Added by postern-shim join: locks and session audit events.\n");
    for l in missing {
        new.push_str(l);
        new.push('\n');
    }
    write_atomic(file, new.as_bytes(), 0o644)?;
    Ok(true)
}

fn command_user_exists() -> bool {
    Command::new("id")
        .arg(COMMAND_USER)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ensure_command_user() -> Result<()> {
    // Another join running at the same moment may create the account (or hold the lock on
    // /etc/passwd): what matters is that it exists afterwards.
    for attempt in 0..5 {
        if command_user_exists() {
            return Ok(());
        }
        match add_command_user() {
            Ok(()) => return Ok(()),
            Err(e) if attempt == 4 && !command_user_exists() => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
    Ok(())
}

fn add_command_user() -> Result<()> {
    let out = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            COMMAND_USER,
        ])
        .output()
        .context("cannot run useradd")?;
    if !out.status.success() {
        bail!(
            "cannot create user {COMMAND_USER}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// sshd runs the principals command as an unprivileged user, which must reach the state
/// directory: every ancestor needs the search bit for others. Otherwise every login would be
/// denied with "no valid policy bundle", which is hard to trace back.
pub fn check_reachable_by_others(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let abs = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()?.join(dir)
    };
    for anc in abs.ancestors().skip(1) {
        let mode = fs::metadata(anc)
            .with_context(|| format!("cannot read {}", anc.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            bail!(
                "the state directory {} is not reachable by the unprivileged user sshd runs the principals command as ({COMMAND_USER}): {} has mode {:04o}; choose another --state-dir or chmod o+x {}",
                abs.display(),
                anc.display(),
                mode & 0o7777,
                anc.display()
            );
        }
    }
    Ok(())
}

/// Runs the join.
pub fn join(a: JoinArgs) -> Result<JoinResponse> {
    check_reachable_by_others(&a.state.0)?;
    a.state.create()?;
    // Keep an existing host key: clients that pinned it keep working after a re-join.
    let host_key = match fs::read_to_string(a.state.host_key()) {
        Ok(text) => PrivateKey::from_openssh(&text).context("existing host key is unreadable")?,
        Err(_) => {
            let k = generate_ed25519(&format!("postern host key of {}", a.name))?;
            write_atomic(
                &a.state.host_key(),
                k.to_openssh(LineEnding::LF)?.as_bytes(),
                0o600,
            )?;
            write_atomic(
                &a.state.path("ssh_host_ed25519_key.pub"),
                format!("{}\n", k.public_key().to_openssh()?).as_bytes(),
                0o644,
            )?;
            k
        }
    };
    let identity = generate_ed25519(&format!("postern identity of {}", a.name))?;
    let api = Api::new(&a.ca, a.pin, None)?;
    let req = JoinRequest {
        token: a.token,
        name: a.name.clone(),
        address: a.address.clone(),
        labels: a.labels,
        host_public_key: host_key.public_key().to_openssh()?,
        identity_public_key: identity.public_key().to_openssh()?,
        egress_addresses: Vec::new(),
    };
    let resp: JoinResponse = api.post("/v1/join", &req)?;
    write_atomic(
        &a.state.host_cert(),
        format!("{}\n", resp.host_certificate).as_bytes(),
        0o644,
    )?;
    write_atomic(
        &a.state.path("identity.key"),
        postern_api_client::ed25519_pkcs8_pem(&identity)?.as_bytes(),
        0o600,
    )?;
    write_atomic(
        &a.state.path("identity.crt"),
        resp.x509_certificate.as_bytes(),
        0o644,
    )?;
    write_atomic(&a.state.path("ca.crt"), resp.x509_ca.as_bytes(), 0o644)?;
    // The bundle is readable by the principals command's group: the user must exist first.
    ensure_command_user()?;
    install_bundle(&a.state, &resp.bundle)?;
    let joined = Joined {
        ca: a.ca.clone(),
        ca_pin: a.pin.to_string(),
        name: a.name.clone(),
        cluster: resp.cluster.clone(),
        address: a.address,
        keep_local_auth: a.keep_local_auth,
        sshd: Some(crate::state::JoinedSshd {
            bin: a.sshd_bin.clone(),
            config: a.sshd_config.clone(),
            dropin_dir: a.sshd_config_dir.clone(),
            shim: a.shim_path.clone(),
        }),
    };
    write_atomic(
        &a.state.path("joined.json"),
        serde_json::to_string_pretty(&joined)?.as_bytes(),
        0o644,
    )?;

    let files = SshdFiles {
        bin: a.sshd_bin.clone(),
        config: a.sshd_config.clone(),
        dropin_dir: a.sshd_config_dir.clone(),
    };
    let opts = DropInOptions {
        keep_local_auth: a.keep_local_auth,
        penalty_exempt: crate::sshd::exempt_addresses(&resp.bundle.gateway_addresses),
        sshd_has_penalties: false,
    };
    apply_drop_in(&files, &a.state, &a.shim_path, &opts)?;
    if a.keep_local_auth {
        eprintln!(
            "postern-shim: warning: --keep-local-auth: sshd still accepts ~/.ssh/authorized_keys and passwords as configured; \
             such logins bypass the gateway, its recordings, locks and the KRL"
        );
    }
    let [acct, sess] = pam_lines(&a.state, &a.shim_path);
    match &a.pam_file {
        Some(f) => {
            if add_pam_lines(f, &[acct.clone(), sess.clone()])? {
                println!("Added the pam_exec lines to {}.", f.display());
            }
        }
        None => println!(
            "For lock checks and session audit events, add to sshd's PAM file (or re-run with --pam):\n  {acct}\n  {sess}"
        ),
    }
    if a.no_reload {
        println!("Not reloading sshd (--no-reload).");
    } else {
        let how = crate::sshd::reload(&files)?;
        println!("Reloaded sshd ({how}).");
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_state_dir_under_private_parent_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        fs::create_dir(&private).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        let e = check_reachable_by_others(&private.join("state"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mode 0700"), "{e}");
        fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        check_reachable_by_others(&private.join("state")).unwrap();
    }

    #[test]
    fn pam_lines_are_added_once_with_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sshd");
        fs::write(&f, "@include common-account\n").unwrap();
        let lines = pam_lines(&StateDir(PathBuf::from("/st")), Path::new("/shim"));
        assert!(add_pam_lines(&f, &lines).unwrap());
        assert!(!add_pam_lines(&f, &lines).unwrap());
        let text = fs::read_to_string(&f).unwrap();
        assert!(text.starts_with("@include common-account\n"));
        assert_eq!(text.matches("pam_exec.so").count(), 2);
        assert_eq!(
            fs::read_to_string(dir.path().join("sshd.postern-backup")).unwrap(),
            "@include common-account\n"
        );
    }
}
