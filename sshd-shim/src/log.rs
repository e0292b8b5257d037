//! Logging to syslog (sshd discards the principals command's stderr); stderr as well when it
//! is a terminal or when syslog is unreachable, so an admin running the shim by hand sees it.

use std::io::IsTerminal;

/// Logs one line at info (allow) or warning (deny, failure) level.
pub fn log(warn: bool, msg: &str) {
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_AUTH,
        hostname: None,
        process: "postern-shim".into(),
        pid: std::process::id(),
    };
    let sent = match syslog::unix(formatter) {
        Ok(mut w) => if warn { w.warning(msg) } else { w.info(msg) }.is_ok(),
        Err(_) => false,
    };
    if !sent || std::io::stderr().is_terminal() {
        eprintln!("postern-shim: {msg}");
    }
}
