//! Stock sshd as Postern configures it: the drop-in's text and the keywords Postern relies on,
//! `sshd -t` and `sshd -T` (sshd keeps the first value it reads of a keyword, so the effective
//! value is what counts), the check-and-roll-back install of the drop-in that `join` and `sync`
//! share, reloading sshd, and what host certificate it serves.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::state::{write_atomic, StateDir};

/// The unprivileged user sshd runs the principals command as.
pub const COMMAND_USER: &str = "postern-shim";

/// The sshd a joined server runs, and its configuration files.
#[derive(Debug, Clone)]
pub struct SshdFiles {
    /// The sshd binary (for `-t` and `-T`).
    pub bin: PathBuf,
    /// Its main configuration file.
    pub config: PathBuf,
    /// The drop-in directory; Postern's file is `50-postern.conf` in it.
    pub dropin_dir: PathBuf,
}

impl SshdFiles {
    /// Postern's drop-in.
    pub fn dropin(&self) -> PathBuf {
        self.dropin_dir.join("50-postern.conf")
    }
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
    /// A keyword that sshd builds without some features do not know (`GSSAPIAuthentication`):
    /// absent from `sshd -T`, it cannot be a way in either.
    pub may_be_unknown: bool,
}

impl Setting {
    fn one(keyword: &'static str, value: impl Into<String>) -> Setting {
        Setting {
            keyword,
            value: value.into(),
            accumulates: false,
            may_be_unknown: false,
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
            may_be_unknown: false,
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
        // Every other way sshd has to let someone in: authorized_keys files and commands
        // (sss_ssh_authorizedkeys, ec2-instance-connect), passwords, keyboard-interactive,
        // host-based trust (shosts.equiv) and Kerberos.
        out.extend([
            Setting::one("AuthorizedKeysFile", "none"),
            Setting::one("AuthorizedKeysCommand", "none"),
            Setting::one("PasswordAuthentication", "no"),
            Setting::one("KbdInteractiveAuthentication", "no"),
            Setting::one("HostbasedAuthentication", "no"),
            Setting {
                may_be_unknown: true,
                ..Setting::one("GSSAPIAuthentication", "no")
            },
        ]);
    }
    if opts.sshd_has_penalties && !opts.penalty_exempt.is_empty() {
        out.push(Setting::one(
            "PerSourcePenaltyExemptList",
            opts.penalty_exempt.join(","),
        ));
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
            "PerSourcePenaltyExemptList" => continue,
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
    effective_with(sshd, config, &[])
}

/// `sshd -T -f CONFIG -o OPT...`, parsed.
fn effective_with(sshd: &Path, config: &Path, opts: &[String]) -> Result<Vec<(String, String)>> {
    let mut cmd = Command::new(sshd);
    cmd.arg("-T").arg("-f").arg(config);
    for o in opts {
        cmd.arg("-o").arg(o);
    }
    let o = cmd
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
        } else if w.may_be_unknown && values.is_empty() {
            true
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

/// Lines inside `Match` blocks of `config` (and the files it includes) that set a keyword of
/// `wanted` to another value, as "FILE:LINE: text". `sshd -T` without connection parameters
/// does not evaluate Match blocks, and a block after the Include applies to its connections
/// whatever the drop-in says: such a line reopens a way in for some users or addresses.
pub fn match_overrides(config: &Path, wanted: &[Setting]) -> Vec<String> {
    let mut out = Vec::new();
    scan_matches(config, wanted, 0, &mut out);
    out
}

fn scan_matches(file: &Path, wanted: &[Setting], depth: usize, out: &mut Vec<String>) {
    let Ok(text) = fs::read_to_string(file) else {
        return;
    };
    let mut in_match = false;
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (key, rest) = l
            .split_once(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or((l, ""));
        let rest = rest
            .trim_start_matches(|c: char| c.is_whitespace() || c == '=')
            .trim();
        if key.eq_ignore_ascii_case("match") {
            in_match = true;
            continue;
        }
        if key.eq_ignore_ascii_case("include") && depth < 4 {
            for pattern in rest.split_whitespace() {
                // sshd_config(5): relative Include paths are relative to /etc/ssh.
                let p = if pattern.starts_with('/') {
                    PathBuf::from(pattern)
                } else {
                    Path::new("/etc/ssh").join(pattern)
                };
                for f in glob_files(&p) {
                    scan_matches(&f, wanted, depth + 1, out);
                }
            }
            continue;
        }
        if !in_match {
            continue;
        }
        if let Some(w) = wanted.iter().find(|w| w.keyword.eq_ignore_ascii_case(key)) {
            if !w.accumulates && !rest.eq_ignore_ascii_case(&w.value) {
                out.push(format!("{}:{}: {l}", file.display(), n + 1));
            }
        }
    }
}

/// The files a simple Include pattern names: a path, or DIR/PREFIX*SUFFIX, sorted as sshd
/// reads them.
fn glob_files(p: &Path) -> Vec<PathBuf> {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some((pre, suf)) = name.split_once('*') else {
        return vec![p.to_path_buf()];
    };
    let dir = p.parent().unwrap_or(Path::new("/"));
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(pre) && n.ends_with(suf) && !n.starts_with('.'))
        })
        .collect();
    v.sort();
    v
}

/// The gateway addresses of a bundle as they may enter sshd_config: each parsed again (the
/// CA validated them, but nothing from the network reaches sshd's configuration unparsed: a
/// newline would add lines that `sshd -T` cannot tell from ours).
pub fn exempt_addresses(from_bundle: &[String]) -> Vec<String> {
    from_bundle
        .iter()
        .filter_map(|a| postern_core::names::parse_source_address(a).ok())
        .collect()
}

/// Whether this sshd knows `PerSourcePenaltyExemptList` (OpenSSH ≥ 9.8): its `-T` prints
/// `persourcepenalties`.
pub fn has_penalties(effective: &[(String, String)]) -> bool {
    effective.iter().any(|(k, _)| k == "persourcepenalties")
}

/// The `-o` options of the sshd that runs now (from `/proc/PID/cmdline` of its `PidFile`'s
/// pid): Debian's unit passes `$SSHD_OPTS` from /etc/default/ssh, and an option there wins
/// over every file. An sshd started with another `-f` never reads our drop-in: an error.
/// Nothing known (sshd not running, no /proc) is no options.
pub fn running_options(files: &SshdFiles) -> Result<Vec<String>> {
    let Ok(pid) = pid(files) else {
        return Ok(Vec::new());
    };
    let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return Ok(Vec::new());
    };
    let mut args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // sshd's listener rewrites its process title as "PROGNAME: ARGV... [listener] N of ...":
    // the original arguments are still there, joined by spaces.
    if let [title] = args.as_slice() {
        if let Some((_, rest)) = title
            .split_once(": ")
            .filter(|_| title.contains(" [listener]"))
        {
            let argv = rest.split(" [listener]").next().unwrap_or(rest);
            args = argv.split_whitespace().map(str::to_owned).collect();
        }
    }
    let mut opts = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let (flag, inline) = match a.strip_prefix('-') {
            Some(rest) if !rest.is_empty() => (rest.as_bytes()[0], rest.get(1..).unwrap_or("")),
            _ => continue,
        };
        let value = |it: &mut dyn Iterator<Item = &String>| {
            if inline.is_empty() {
                it.next().cloned().unwrap_or_default()
            } else {
                inline.to_owned()
            }
        };
        match flag {
            b'o' => opts.push(value(&mut it)),
            b'f' => {
                let f = value(&mut it);
                let same = fs::canonicalize(&f).ok() == fs::canonicalize(&files.config).ok();
                if !same {
                    bail!(
                        "the running sshd (pid {pid}) reads {f}, not {}: it never reads Postern's drop-in",
                        files.config.display()
                    );
                }
            }
            _ => {}
        }
    }
    Ok(opts)
}

/// [`sshd_effective`] as the running sshd sees it: with its command line's `-o` options.
pub fn effective_running(files: &SshdFiles) -> Result<Vec<(String, String)>> {
    effective_with(&files.bin, &files.config, &running_options(files)?)
}

/// `sshd -t`: Ok or sshd's message.
pub fn sshd_check(sshd: &Path, config: &Path) -> Result<(), String> {
    match Command::new(sshd).arg("-t").arg("-f").arg(config).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Err(format!("cannot run {}: {e}", sshd.display())),
    }
}

/// Writes the drop-in for `opts` and keeps it only when `sshd -t` passes and `sshd -T` shows
/// Postern's value for every keyword in [`settings`]; otherwise the previous file (or none) is
/// put back and the error names what sshd said or which keywords are overridden. The exempt
/// list is written only where this sshd knows the keyword (OpenSSH 9.8 and later), which
/// `sshd -T` tells. Returns whether the file changed.
pub fn apply_drop_in(
    files: &SshdFiles,
    state: &StateDir,
    shim: &Path,
    opts: &DropInOptions,
) -> Result<bool> {
    fs::create_dir_all(&files.dropin_dir)?;
    let path = files.dropin();
    let previous = fs::read(&path).ok();
    let restore = || -> Result<()> {
        match &previous {
            Some(old) => write_atomic(&path, old, 0o644)?,
            None => {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(())
    };
    let mut opts = opts.clone();
    opts.sshd_has_penalties = false;
    loop {
        let text = drop_in(state, shim, &opts);
        write_atomic(&path, text.as_bytes(), 0o644)?;
        if let Err(msg) = sshd_check(&files.bin, &files.config) {
            restore()?;
            bail!("sshd -t rejected the new configuration, so it was removed again:\n{msg}");
        }
        // sshd keeps the first value it reads of a keyword: a line in sshd_config before the
        // Include, or an earlier drop-in, silently wins over ours. Compare what sshd will use.
        let effective = match effective_running(files) {
            Ok(e) => e,
            Err(e) => {
                restore()?;
                return Err(e);
            }
        };
        if !opts.sshd_has_penalties && has_penalties(&effective) && !opts.penalty_exempt.is_empty()
        {
            opts.sshd_has_penalties = true;
            continue;
        }
        let wanted = settings(state, shim, &opts);
        let mut bad = overridden(&effective, &wanted);
        bad.extend(
            match_overrides(&files.config, &wanted)
                .into_iter()
                .map(|l| format!("in a Match block, {l}")),
        );
        if !bad.is_empty() {
            restore()?;
            bail!(
                "sshd's effective configuration (sshd -T -f {}) overrides what Postern relies on, so the drop-in {} was removed again:\n  {}\n\
                 sshd keeps the first value it reads of each keyword: remove or change these lines in {} or in a drop-in read before 50-postern.conf, then run join again",
                files.config.display(),
                path.display(),
                bad.join("\n  "),
                files.config.display()
            );
        }
        return Ok(previous.as_deref() != Some(text.as_bytes()));
    }
}

/// The pid in sshd's effective `PidFile`.
pub fn pid(files: &SshdFiles) -> Result<i32> {
    let effective = sshd_effective(&files.bin, &files.config)?;
    let pidfile = effective
        .iter()
        .find(|(k, _)| k == "pidfile")
        .map(|(_, v)| v.clone())
        .filter(|v| v != "none")
        .context("sshd has no PidFile (sshd -T says none); reload sshd by hand")?;
    let text = fs::read_to_string(&pidfile)
        .with_context(|| format!("sshd is not running: cannot read its PidFile {pidfile}"))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 1)
        .with_context(|| format!("{pidfile} holds no pid"))
}

/// Whether systemd runs the sshd whose pid is `pid`, as which unit.
fn systemd_unit_of(pid: i32) -> Option<&'static str> {
    if !Path::new("/run/systemd/system").exists() {
        return None;
    }
    ["ssh.service", "sshd.service"].into_iter().find(|unit| {
        Command::new("systemctl")
            .args(["show", "-p", "MainPID", "--value", unit])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<i32>()
                    .ok()
            })
            == Some(pid)
    })
}

/// Reloads sshd so that it reads its configuration and host certificate again: `systemctl
/// reload` when systemd runs it, SIGHUP to the process in its `PidFile` otherwise (which is
/// what the unit's reload does). sshd re-executes itself on SIGHUP; connections it already
/// accepted are not affected. Returns how.
pub fn reload(files: &SshdFiles) -> Result<String> {
    // sshd re-executes itself on SIGHUP and exits if its configuration is broken by then.
    if let Err(msg) = sshd_check(&files.bin, &files.config) {
        bail!("not reloading sshd: sshd -t fails: {msg}");
    }
    let pid = pid(files)?;
    if let Some(unit) = systemd_unit_of(pid) {
        let out = Command::new("systemctl").args(["reload", unit]).output()?;
        if !out.status.success() {
            bail!(
                "systemctl reload {unit} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        return Ok(format!("systemctl reload {unit}"));
    }
    let out = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .output()
        .context("cannot run kill")?;
    if !out.status.success() {
        bail!(
            "cannot signal sshd (pid {pid}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(format!("SIGHUP to sshd (pid {pid})"))
}

/// The host certificates sshd at `address` (HOST:PORT) serves, as `ssh-keyscan -c` prints
/// them: (type, base64).
pub fn served_host_certs(address: &str) -> Result<Vec<(String, String)>> {
    let (host, port) = address
        .rsplit_once(':')
        .map(|(h, p)| (h.trim_start_matches('[').trim_end_matches(']'), p))
        .unwrap_or((address, "22"));
    let out = Command::new("ssh-keyscan")
        .args(["-c", "-T", "5", "-t", "ed25519", "-p", port, "--", host])
        .output()
        .context("cannot run ssh-keyscan (openssh-client)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            // `ssh-keyscan -c` prints "TYPE BASE64" (no host field, unlike without -c).
            let mut f = l
                .split_whitespace()
                .skip_while(|w| !w.ends_with("-cert-v01@openssh.com"));
            Some((f.next()?.to_owned(), f.next()?.to_owned()))
        })
        .collect())
}

/// Waits until sshd at `address` serves `cert` (an OpenSSH certificate line), for at most
/// `limit`: sshd re-executes itself after SIGHUP and is briefly not listening.
pub fn wait_served(address: &str, cert: &str, limit: Duration) -> Result<()> {
    let want = cert
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let deadline = Instant::now() + limit;
    let mut last = Vec::new();
    loop {
        if let Ok(served) = served_host_certs(address) {
            if served.iter().any(|(_, b)| *b == want) {
                return Ok(());
            }
            last = served;
        }
        if Instant::now() >= deadline {
            bail!(
                "sshd at {address} still serves {} instead of the renewed host certificate; reload sshd (systemctl reload ssh) and check its HostCertificate",
                if last.is_empty() { "no host certificate".to_owned() } else { "an older host certificate".to_owned() }
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
                    authorizedkeysfile .ssh/authorized_keys\nauthorizedkeyscommand none\n\
                    hostbasedauthentication no\npasswordauthentication yes\n\
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
        // A keyword missing altogether is as bad as a wrong value, except one this sshd may
        // be built without (GSSAPI): absent, it is no way in; present, it must be ours.
        let bad = overridden(&parse_effective("port 22\n"), &wanted);
        assert_eq!(
            bad.len(),
            wanted.iter().filter(|w| !w.may_be_unknown).count()
        );
        let with_gss = format!("{text}gssapiauthentication yes\n");
        let bad = overridden(&parse_effective(&with_gss), &wanted);
        assert!(
            bad.iter()
                .any(|b| b.starts_with("GSSAPIAuthentication: effective value \"yes\"")),
            "{bad:?}"
        );
    }

    #[test]
    fn the_exempt_list_is_written_and_checked_only_where_sshd_knows_it() {
        let s = StateDir(PathBuf::from("/st"));
        let mut opts = DropInOptions {
            penalty_exempt: vec!["127.0.0.1".into(), "10.0.0.0/24".into()],
            ..DropInOptions::default()
        };
        assert!(!drop_in(&s, Path::new("/s"), &opts).contains("PerSourcePenalty"));
        opts.sshd_has_penalties = true;
        let d = drop_in(&s, Path::new("/s"), &opts);
        assert!(
            d.contains("\nPerSourcePenaltyExemptList 127.0.0.1,10.0.0.0/24\n"),
            "{d}"
        );
        let wanted = settings(&s, Path::new("/s"), &opts);
        assert_eq!(
            wanted.last().map(|w| (w.keyword, w.value.as_str())),
            Some(("PerSourcePenaltyExemptList", "127.0.0.1,10.0.0.0/24"))
        );
        assert!(has_penalties(&parse_effective(
            "persourcepenalties crash:90s\n"
        )));
        assert!(!has_penalties(&parse_effective("port 22\n")));
    }
}
