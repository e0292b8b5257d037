//! `postern renew --install-timer` / `--uninstall-timer`: a daily systemd user timer, or a
//! crontab line where no systemd user manager answers.
//!
//! The unit and crontab texts are pure functions; only [`install`] and [`uninstall`] run
//! `systemctl` and `crontab`.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use crate::files;

/// Marks the crontab line this program owns.
pub const CRON_MARK: &str = "# postern-renew";
/// The systemd unit names.
pub const SERVICE: &str = "postern-renew.service";
/// The timer unit.
pub const TIMER: &str = "postern-renew.timer";
/// Setting this to `1` skips systemd and uses cron (for tests and systemd-less setups).
pub const FORCE_CRON_ENV: &str = "POSTERN_FORCE_CRON";

/// The path of the executable as a systemd `ExecStart` word (systemd.service(5) "Command
/// lines": `%` starts a specifier and `$` a variable, so both are doubled; quotes keep blanks).
fn systemd_word(exe: &Path) -> anyhow::Result<String> {
    let s = exe
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", exe.display()))?;
    if !exe.is_absolute() || s.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        bail!("cannot write {s:?} into a systemd unit");
    }
    Ok(format!("\"{}\"", s.replace('%', "%%").replace('$', "$$")))
}

/// `postern-renew.service`.
pub fn service_unit(exe: &Path) -> anyhow::Result<String> {
    Ok(format!(
        "# Installed by `postern renew --install-timer`; removed by --uninstall-timer.\n\
         [Unit]\n\
         Description=Renew the Postern SSH certificate\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={} renew\n",
        systemd_word(exe)?
    ))
}

/// `postern-renew.timer`: daily, caught up after the machine was off (`Persistent`), spread
/// over an hour so that a fleet of laptops does not renew at the same second.
pub fn timer_unit() -> String {
    "# Installed by `postern renew --install-timer`; removed by --uninstall-timer.\n\
     [Unit]\n\
     Description=Daily renewal of the Postern SSH certificate\n\
     \n\
     [Timer]\n\
     OnCalendar=daily\n\
     Persistent=true\n\
     RandomizedDelaySec=1h\n\
     \n\
     [Install]\n\
     WantedBy=timers.target\n"
        .to_owned()
}

/// The executable as a word of a crontab command: crontab(5) passes the command to `sh` and
/// turns an unescaped `%` into a newline, so the path is single-quoted and `%` escaped.
fn cron_word(exe: &Path) -> anyhow::Result<String> {
    let s = exe
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", exe.display()))?;
    if !exe.is_absolute() || s.chars().any(char::is_control) {
        bail!("cannot write {s:?} into a crontab");
    }
    Ok(format!(
        "'{}'",
        s.replace('\'', "'\\''").replace('%', "\\%")
    ))
}

/// The crontab line: daily at `hour:minute`.
pub fn cron_line(exe: &Path, minute: u8, hour: u8) -> anyhow::Result<String> {
    Ok(format!(
        "{} {} * * * {} renew >/dev/null {CRON_MARK}",
        minute % 60,
        hour % 24,
        cron_word(exe)?
    ))
}

fn is_ours(line: &str) -> bool {
    line.trim_end().ends_with(CRON_MARK)
}

/// The crontab with `line` in it, or `None` when it is already there. A marked line that
/// differs (an older path of the executable) is replaced; other lines are kept as they are.
pub fn crontab_with(existing: &str, line: &str) -> Option<String> {
    if existing.lines().any(|l| l.trim_end() == line)
        && existing.lines().filter(|l| is_ours(l)).count() == 1
    {
        return None;
    }
    let mut out = String::new();
    for l in existing.lines().filter(|l| !is_ours(l)) {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(line);
    out.push('\n');
    Some(out)
}

/// The crontab without the marked line, or `None` when it has none.
pub fn crontab_without(existing: &str) -> Option<String> {
    if !existing.lines().any(is_ours) {
        return None;
    }
    let mut out = String::new();
    for l in existing.lines().filter(|l| !is_ours(l)) {
        out.push_str(l);
        out.push('\n');
    }
    Some(out)
}

fn force_cron() -> bool {
    std::env::var(FORCE_CRON_ENV).is_ok_and(|v| v == "1")
}

/// Whether a systemd user manager answers (`is-system-running` exits 0, or says `degraded`,
/// which exits non-zero but still runs timers).
fn systemd_user_available() -> bool {
    let Ok(out) = Command::new("systemctl")
        .args(["--user", "is-system-running"])
        .stdin(Stdio::null())
        .output()
    else {
        return false;
    };
    let state = String::from_utf8_lossy(&out.stdout);
    out.status.success() || matches!(state.trim(), "running" | "degraded")
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("systemctl")
        .arg("--user")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running systemctl")?;
    if !out.status.success() {
        bail!(
            "`systemctl --user {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `$XDG_CONFIG_HOME/systemd/user`, by default `~/.config/systemd/user` (systemd.unit(5)).
fn unit_dir(home: &Path) -> PathBuf {
    match std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p.join("systemd/user"),
        _ => home.join(".config/systemd/user"),
    }
}

/// The current crontab; `Ok(None)` when the `crontab` program is missing.
fn read_crontab() -> anyhow::Result<Option<String>> {
    let out = match Command::new("crontab")
        .arg("-l")
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("running `crontab -l`"),
    };
    if out.status.success() {
        return Ok(Some(
            String::from_utf8(out.stdout).context("the crontab is not valid UTF-8")?,
        ));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    // Only "no crontab for <user>" means empty; on any other failure, writing a crontab
    // would replace one that could not be read.
    if err.to_ascii_lowercase().contains("no crontab") {
        return Ok(Some(String::new()));
    }
    bail!("`crontab -l` failed: {}", err.trim())
}

fn write_crontab(content: &str) -> anyhow::Result<()> {
    let mut child = Command::new("crontab")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `crontab -`")?;
    child
        .stdin
        .take()
        .context("opening the input of `crontab -`")?
        .write_all(content.as_bytes())
        .context("writing to `crontab -`")?;
    let out = child
        .wait_with_output()
        .context("waiting for `crontab -`")?;
    if !out.status.success() {
        bail!(
            "`crontab -` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn random_time() -> (u8, u8) {
    let mut b = [0u8; 2];
    // Spreading the load is nice to have; a fixed time is still correct.
    let _ = getrandom::fill(&mut b);
    // Working hours, when a laptop is likely to be on: cron does not catch up missed runs.
    (b[0] % 60, 9 + b[1] % 9)
}

/// Installs the daily renewal. Returns a sentence for the user.
pub fn install(home: &Path, exe: &Path) -> anyhow::Result<String> {
    if !force_cron() && systemd_user_available() {
        let dir = unit_dir(home);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        files::write_atomic(&dir, SERVICE, service_unit(exe)?.as_bytes(), 0o644)?;
        files::write_atomic(&dir, TIMER, timer_unit().as_bytes(), 0o644)?;
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", TIMER])?;
        return Ok(format!(
            "Installed the systemd user timer {TIMER} in {}: `postern renew` runs daily.",
            dir.display()
        ));
    }
    let Some(existing) = read_crontab()? else {
        bail!(
            "cannot install a renewal timer: no systemd user manager answers and there is no \
             `crontab` program"
        );
    };
    let (minute, hour) = existing
        .lines()
        .find(|l| is_ours(l))
        .and_then(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .unwrap_or_else(random_time);
    let line = cron_line(exe, minute, hour)?;
    match crontab_with(&existing, &line) {
        Some(new) => {
            write_crontab(&new)?;
            Ok(format!(
                "Added a crontab entry: `postern renew` runs daily at {hour:02}:{minute:02}."
            ))
        }
        None => Ok(format!(
            "The crontab entry is already installed: `postern renew` runs daily at \
             {hour:02}:{minute:02}."
        )),
    }
}

/// Removes the daily renewal, whichever way it was installed. Returns a sentence.
pub fn uninstall(home: &Path) -> anyhow::Result<String> {
    let mut done = Vec::new();
    if !force_cron() {
        let dir = unit_dir(home);
        let timer = dir.join(TIMER);
        let service = dir.join(SERVICE);
        if timer.exists() || service.exists() {
            if systemd_user_available() {
                // The unit may already be disabled; its files are removed either way.
                let _ = systemctl(&["disable", "--now", TIMER]);
            }
            for p in [&timer, &service] {
                match fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
                }
            }
            if systemd_user_available() {
                let _ = systemctl(&["daemon-reload"]);
            }
            done.push(format!("removed the systemd user timer {TIMER}"));
        }
    }
    if let Some(existing) = read_crontab()? {
        if let Some(new) = crontab_without(&existing) {
            write_crontab(&new)?;
            done.push("removed the crontab entry".to_owned());
        }
    }
    Ok(if done.is_empty() {
        "No renewal timer was installed.".to_owned()
    } else {
        let mut s = done.join(" and ");
        if let Some(c) = s.get(..1) {
            s = format!("{}{}.", c.to_uppercase(), &s[1..]);
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXE: &str = "/usr/local/bin/postern";

    #[test]
    fn cron_line_is_marked_and_quoted() {
        assert_eq!(
            cron_line(Path::new(EXE), 7, 10).unwrap(),
            "7 10 * * * '/usr/local/bin/postern' renew >/dev/null # postern-renew"
        );
        assert_eq!(
            cron_line(Path::new("/o'k/50%/postern"), 0, 9).unwrap(),
            "0 9 * * * '/o'\\''k/50\\%/postern' renew >/dev/null # postern-renew"
        );
        assert!(cron_line(Path::new("relative/postern"), 0, 9).is_err());
        assert!(cron_line(Path::new("/a\nb"), 0, 9).is_err());
    }

    #[test]
    fn crontab_add_is_idempotent_and_keeps_other_lines() {
        let line = cron_line(Path::new(EXE), 7, 10).unwrap();
        let existing = "MAILTO=me\n0 * * * * backup\n";
        let added = crontab_with(existing, &line).unwrap();
        assert_eq!(added, format!("{existing}{line}\n"));
        assert_eq!(crontab_with(&added, &line), None);
        assert_eq!(crontab_with("", &line).unwrap(), format!("{line}\n"));
        // A missing final newline is repaired rather than gluing two lines together.
        assert_eq!(
            crontab_with("0 * * * * backup", &line).unwrap(),
            format!("0 * * * * backup\n{line}\n")
        );
    }

    #[test]
    fn crontab_add_replaces_an_outdated_marked_line() {
        let old = cron_line(Path::new("/old/postern"), 7, 10).unwrap();
        let new = cron_line(Path::new(EXE), 7, 10).unwrap();
        let out = crontab_with(&format!("x\n{old}\n"), &new).unwrap();
        assert_eq!(out, format!("x\n{new}\n"));
    }

    #[test]
    fn crontab_remove_is_idempotent_and_keeps_other_lines() {
        let line = cron_line(Path::new(EXE), 7, 10).unwrap();
        let with = format!("MAILTO=me\n{line}\n0 * * * * backup\n");
        let without = crontab_without(&with).unwrap();
        assert_eq!(without, "MAILTO=me\n0 * * * * backup\n");
        assert_eq!(crontab_without(&without), None);
        assert_eq!(crontab_without(""), None);
    }

    #[test]
    fn units_run_renew_daily() {
        let s = service_unit(Path::new("/opt/my apps/postern")).unwrap();
        assert!(
            s.contains("\nExecStart=\"/opt/my apps/postern\" renew\n"),
            "{s}"
        );
        assert!(s.contains("\nType=oneshot\n"));
        let s = service_unit(Path::new("/x/100%/$HOME/postern")).unwrap();
        assert!(
            s.contains("ExecStart=\"/x/100%%/$$HOME/postern\" renew"),
            "{s}"
        );
        assert!(service_unit(Path::new("/x/\"/postern")).is_err());
        let t = timer_unit();
        for l in [
            "OnCalendar=daily",
            "Persistent=true",
            "RandomizedDelaySec=1h",
            "WantedBy=timers.target",
        ] {
            assert!(t.lines().any(|x| x == l), "{l}");
        }
    }
}
