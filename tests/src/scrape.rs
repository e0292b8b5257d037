//! The daemons' plain-HTTP side as a load balancer and Prometheus see it: a GET with `curl`,
//! the value of one series in the Prometheus text format, and the TCP ports a process
//! listens on (to show that a listener is off).

use std::process::Command;

use crate::util::{run, split_status, text};

/// `GET url` in plain HTTP with `curl`: (status, body); status 0 when nothing answered.
pub fn http_get(url: &str) -> (u16, String) {
    split_status(&run(Command::new("curl").args([
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        url,
    ])))
}

/// The value of `series` (a metric name with its labels exactly as exposed, such as
/// `postern_logins_total{outcome="ok"}`) in Prometheus text `exposition`; 0 when the series
/// is absent (a counter not yet incremented). Panics on a malformed line of that series.
pub fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| {
                value
                    .parse::<f64>()
                    .unwrap_or_else(|e| panic!("{l:?}: {e}"))
            })
        })
        .unwrap_or(0.0)
}

/// The TCP ports process `pid` listens on (`ss -ltnp`), sorted.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let out = run(Command::new("ss").args(["-H", "-ltnp"]));
    assert!(out.status.success(), "ss: {}", text(&out));
    let mine = format!("pid={pid},");
    let mut ports: Vec<u16> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&mine))
        .filter_map(|l| {
            // State Recv-Q Send-Q Local:Port Peer:Port Process
            let local = l.split_whitespace().nth(3)?;
            local.rsplit_once(':')?.1.parse().ok()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}
