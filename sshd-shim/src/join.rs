//! `postern-shim join`: host key, host certificate, node-access CA, mTLS identity and first
//! bundle from posternd; then the sshd drop-in, checked with `sshd -t` and rolled back when
//! the check fails, and a reload of sshd only when it passed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use postern_api_client::{Api, CaPin, CaUrl};
use postern_core::api::{JoinRequest, JoinResponse, Secret};
use postern_core::cert::generate_ed25519;
use postern_core::{Labels, NodeName};
use ssh_key::{LineEnding, PrivateKey};

use crate::state::{write_atomic, Joined, StateDir};
use crate::sync::install_bundle;

/// The unprivileged user sshd runs the principals command as.
pub const COMMAND_USER: &str = "postern-shim";

/// Everything `join` needs.
pub struct JoinArgs {
    /// API URL.
    pub ca: CaUrl,
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

/// What the drop-in says beyond the state directory's files.
#[derive(Debug, Clone, Default)]
pub struct DropInOptions {
    /// Keep sshd's own `authorized_keys` and password logins (`--keep-local-auth`).
    pub keep_local_auth: bool,
    /// Addresses exempt from sshd's `PerSourcePenalties` (the gateways'); written only where
    /// sshd knows the keyword.
    pub penalty_exempt: Vec<String>,
    /// Whether this sshd accepts `PerSourcePenaltyExemptList` (OpenSSH ≥ 9.8).
    pub sshd_has_penalties: bool,
}

/// One keyword Postern relies on, and the value `sshd -T` must print for it. sshd keeps the
/// first value it reads of most keywords (sshd_config(5)), so an earlier line elsewhere wins
/// over the drop-in: `join` compares these with the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The keyword as written in the drop-in.
    pub keyword: &'static str,
    /// The value as written (and as `sshd -T` prints it).
    pub value: String,
    /// Keywords that accumulate (`HostCertificate`): ours must be among the values.
    pub accumulates: bool,
}

impl Setting {
    fn one(keyword: &'static str, value: impl Into<String>) -> Setting {
        Setting {
            keyword,
            value: value.into(),
            accumulates: false,
        }
    }
}

/// The settings Postern's promises rest on, in drop-in order.
pub fn settings(state: &StateDir, shim: &Path, opts: &DropInOptions) -> Vec<Setting> {
    let state_arg = if state.0 == Path::new(crate::state::DEFAULT_STATE_DIR) {
        String::new()
    } else {
        format!(" --state-dir {}", state.0.display())
    };
    let mut out = vec![
        Setting {
            keyword: "HostCertificate",
            value: state.host_cert().display().to_string(),
            accumulates: true,
        },
        Setting::one("TrustedUserCAKeys", state.node_ca().display().to_string()),
        Setting::one("RevokedKeys", state.krl().display().to_string()),
        Setting::one(
            "AuthorizedPrincipalsCommand",
            format!("{} principals{state_arg} %u %k %t %i %s", shim.display()),
        ),
        Setting::one("AuthorizedPrincipalsCommandUser", COMMAND_USER),
        Setting::one("AuthorizedPrincipalsFile", "none"),
    ];
    if !opts.keep_local_auth {
        out.extend([
            Setting::one("AuthorizedKeysFile", "none"),
            Setting::one("PasswordAuthentication", "no"),
            Setting::one("KbdInteractiveAuthentication", "no"),
        ]);
    }
    out
}

/// The drop-in's text.
pub fn drop_in(state: &StateDir, shim: &Path, opts: &DropInOptions) -> String {
    let mut s = String::from(
        "# Written by `postern-shim join`; re-run join rather than editing. See postern-shim(8).\n",
    );
    s.push_str(&format!("HostKey {}\n", state.host_key().display()));
    for set in settings(state, shim, opts) {
        match set.keyword {
            "TrustedUserCAKeys" => s.push_str(
                "# Servers trust only the node-access CA: users reach them through the recording gateway.\n",
            ),
            "AuthorizedKeysFile" => s.push_str(
                "# Postern is the only way in: no ~/.ssh/authorized_keys, no passwords (postern-shim(8),\n\
                 # --keep-local-auth). A planted key or a password would bypass recording, locks and the KRL.\n",
            ),
            _ => {}
        }
        s.push_str(&format!("{} {}\n", set.keyword, set.value));
    }
    if opts.keep_local_auth {
        s.push_str(
            "# --keep-local-auth: sshd's own authorized_keys and password settings are left as they are;\n\
             # logins that use them bypass the gateway, its recordings, locks and the KRL.\n",
        );
    }
    s.push_str(
        "# Every session reaches this server through the gateway: allow more concurrent\n\
         # unauthenticated connections than OpenSSH's default of 10:30:100.\n\
         MaxStartups 100:30:200\n",
    );
    if opts.sshd_has_penalties && !opts.penalty_exempt.is_empty() {
        s.push_str(
            "# Every session comes from a gateway's address: sshd's per-source penalties (OpenSSH >= 9.8)\n\
             # must not lock all users out after a few aborted or failed logins. Kept current by sync.\n",
        );
        s.push_str(&format!(
            "PerSourcePenaltyExemptList {}\n",
            opts.penalty_exempt.join(",")
        ));
    }
    s
}

/// The effective global configuration, as `sshd -T -f CONFIG` prints it: lowercase keyword,
/// value. Keywords that accumulate appear once per value.
pub fn sshd_effective(sshd: &Path, config: &Path) -> Result<Vec<(String, String)>> {
    let o = Command::new(sshd)
        .arg("-T")
        .arg("-f")
        .arg(config)
        .output()
        .with_context(|| format!("cannot run {} -T", sshd.display()))?;
    if !o.status.success() {
        bail!(
            "{} -T failed: {}",
            sshd.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(parse_effective(&String::from_utf8_lossy(&o.stdout)))
}

/// Parses `sshd -T` output.
pub fn parse_effective(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (!k.is_empty()).then(|| (k.to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect()
}

/// The settings whose effective value is not Postern's, each as "Keyword: effective X, Postern
/// needs Y".
pub fn overridden(effective: &[(String, String)], wanted: &[Setting]) -> Vec<String> {
    let mut out = Vec::new();
    for w in wanted {
        let key = w.keyword.to_ascii_lowercase();
        let values: Vec<&str> = effective
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        let ok = if w.accumulates {
            values.contains(&w.value.as_str())
        } else {
            values.len() == 1 && values[0] == w.value
        };
        if !ok {
            let have = if values.is_empty() {
                "(not set)".to_owned()
            } else {
                values.join(" ")
            };
            out.push(format!(
                "{}: effective value {have:?}, Postern needs {:?}",
                w.keyword, w.value
            ));
        }
    }
    out
}

/// Whether this sshd knows `PerSourcePenaltyExemptList` (OpenSSH ≥ 9.8): its `-T` prints
/// `persourcepenalties`.
#[allow(dead_code)] // the exempt list comes with the gateways' addresses in the bundle
pub fn has_penalties(effective: &[(String, String)]) -> bool {
    effective.iter().any(|(k, _)| k == "persourcepenalties")
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

/// `sshd -t`: Ok or sshd's message.
pub fn sshd_check(sshd: &Path, config: &Path) -> Result<(), String> {
    match Command::new(sshd).arg("-t").arg("-f").arg(config).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Err(format!("cannot run {}: {e}", sshd.display())),
    }
}

fn reload_sshd() -> Result<()> {
    for unit in ["ssh", "sshd"] {
        if let Ok(o) = Command::new("systemctl").args(["reload", unit]).output() {
            if o.status.success() {
                return Ok(());
            }
        }
    }
    let pid = fs::read_to_string("/run/sshd.pid").context(
        "sshd is not managed by systemd and /run/sshd.pid is missing; reload sshd by hand",
    )?;
    let out = Command::new("kill").args(["-HUP", pid.trim()]).output()?;
    if !out.status.success() {
        bail!(
            "cannot signal sshd (pid {}): {}",
            pid.trim(),
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
    };
    let resp: JoinResponse = api
        .post("/v1/join", &req)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
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
    install_bundle(&a.state, &resp.bundle)?;
    let joined = Joined {
        ca: a.ca.to_string(),
        ca_pin: a.pin.to_string(),
        name: a.name.to_string(),
        cluster: resp.cluster.to_string(),
        address: a.address,
        keep_local_auth: a.keep_local_auth,
    };
    write_atomic(
        &a.state.path("joined.json"),
        serde_json::to_string_pretty(&joined)?.as_bytes(),
        0o644,
    )?;

    ensure_command_user()?;
    fs::create_dir_all(&a.sshd_config_dir)?;
    let path = a.sshd_config_dir.join("50-postern.conf");
    let previous = fs::read(&path).ok();
    let opts = DropInOptions {
        keep_local_auth: a.keep_local_auth,
        penalty_exempt: Vec::new(),
        sshd_has_penalties: false,
    };
    write_atomic(
        &path,
        drop_in(&a.state, &a.shim_path, &opts).as_bytes(),
        0o644,
    )?;
    // Leave sshd's configuration exactly as it was when the result cannot be used.
    let restore = || -> Result<()> {
        match &previous {
            Some(old) => write_atomic(&path, old, 0o644)?,
            None => fs::remove_file(&path)?,
        }
        Ok(())
    };
    if let Err(msg) = sshd_check(&a.sshd_bin, &a.sshd_config) {
        restore()?;
        bail!("sshd -t rejected the new configuration, so it was removed again:\n{msg}");
    }
    // sshd keeps the first value it reads of a keyword: a line in sshd_config before the
    // Include, or an earlier drop-in, silently wins over ours. Compare what sshd will use.
    let wanted = settings(&a.state, &a.shim_path, &opts);
    let bad = match sshd_effective(&a.sshd_bin, &a.sshd_config) {
        Ok(effective) => overridden(&effective, &wanted),
        Err(e) => vec![format!("{e:#}")],
    };
    if !bad.is_empty() {
        restore()?;
        bail!(
            "sshd's effective configuration (sshd -T -f {}) overrides what Postern relies on, so the drop-in {} was removed again:\n  {}\n\
             sshd keeps the first value it reads of each keyword: remove or change these lines in {} or in a drop-in read before 50-postern.conf, then run join again",
            a.sshd_config.display(),
            path.display(),
            bad.join("\n  "),
            a.sshd_config.display()
        );
    }
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
        reload_sshd()?;
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_in_names_every_file_and_the_state_dir() {
        let s = StateDir(PathBuf::from("/tmp/st"));
        let d = drop_in(
            &s,
            Path::new("/usr/libexec/postern/postern-shim"),
            &DropInOptions::default(),
        );
        assert!(d.contains("AuthorizedPrincipalsCommand /usr/libexec/postern/postern-shim principals --state-dir /tmp/st %u %k %t %i %s\n"), "{d}");
        assert!(d.contains("RevokedKeys /tmp/st/revoked_keys.krl\n"));
        let d = drop_in(
            &StateDir(PathBuf::from(crate::state::DEFAULT_STATE_DIR)),
            Path::new("/s"),
            &DropInOptions::default(),
        );
        assert!(d.contains("/s principals %u"), "{d}");
    }

    #[test]
    fn drop_in_refuses_local_auth_unless_kept() {
        let s = StateDir(PathBuf::from("/tmp/st"));
        let d = drop_in(&s, Path::new("/s"), &DropInOptions::default());
        for line in [
            "AuthorizedKeysFile none\n",
            "PasswordAuthentication no\n",
            "KbdInteractiveAuthentication no\n",
            "AuthorizedPrincipalsFile none\n",
        ] {
            assert!(d.contains(line), "{line} missing:\n{d}");
        }
        let kept = DropInOptions {
            keep_local_auth: true,
            ..DropInOptions::default()
        };
        let d = drop_in(&s, Path::new("/s"), &kept);
        assert!(!d.contains("AuthorizedKeysFile"), "{d}");
        assert!(!d.contains("PasswordAuthentication"), "{d}");
    }

    #[test]
    fn effective_values_that_are_not_posterns_are_named() {
        let s = StateDir(PathBuf::from("/st"));
        let wanted = settings(&s, Path::new("/s"), &DropInOptions::default());
        // What `sshd -T` prints when sshd_config says `PasswordAuthentication yes` and
        // `AuthorizedKeysFile .ssh/authorized_keys` before its Include line.
        let text = "port 22\nhostcertificate /etc/ssh/other-cert.pub\nhostcertificate /st/ssh_host_ed25519_key-cert.pub\n\
                    trustedusercakeys /st/node_access_ca.pub\nrevokedkeys /st/revoked_keys.krl\n\
                    authorizedprincipalscommand /s principals --state-dir /st %u %k %t %i %s\n\
                    authorizedprincipalscommanduser postern-shim\nauthorizedprincipalsfile none\n\
                    authorizedkeysfile .ssh/authorized_keys\npasswordauthentication yes\n\
                    kbdinteractiveauthentication no\n";
        let bad = overridden(&parse_effective(text), &wanted);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(
            bad[0].starts_with("AuthorizedKeysFile: effective value \".ssh/authorized_keys\""),
            "{bad:?}"
        );
        assert!(
            bad[1].starts_with("PasswordAuthentication: effective value \"yes\""),
            "{bad:?}"
        );
        // A keyword missing altogether is as bad as a wrong value.
        let bad = overridden(&parse_effective("port 22\n"), &wanted);
        assert_eq!(bad.len(), wanted.len());
    }

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
