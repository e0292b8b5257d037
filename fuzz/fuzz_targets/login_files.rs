//! Fuzzes what `postern login` writes into the user's ssh configuration from the CA's answer:
//! the gateway addresses (`CertResponse.gateway`/`gateways`, parsed by `Gateway::parse`), the
//! cluster's name and the path of the `postern` binary, rendered into ssh_config (with the
//! `Match exec` probes of several gateways) and known_hosts. Whatever the input, nothing
//! panics, and what renders holds only the lines and options `postern login` means to write:
//! a hostile answer cannot add an ssh option, a host pattern or a shell command.
//! Input: lines; the first is the cluster, the second the binary's path, the rest gateways.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

// The CLI's own renderer, compiled here from its source (the login-cli crate's other
// dependencies, an HTTP client among them, have no part in it).
#[path = "../../login-cli/src/render.rs"]
#[allow(dead_code)]
mod render;

const CA_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILW57FmpCtobbGauJAL/giUn3vQl7CZmTQxaPUL1FZkB";

fn check_config(out: &str, gateways: &[render::Gateway], cluster: &str) {
    let mut probes = 0;
    for line in out.lines() {
        assert!(!line.chars().any(char::is_control), "control character: {line:?}");
        if line.is_empty() || line.starts_with("# ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("    ") {
            let (key, value) = rest.split_once(' ').expect("an option without a value");
            assert!(
                matches!(
                    key,
                    "IdentityFile"
                        | "CertificateFile"
                        | "UserKnownHostsFile"
                        | "IdentitiesOnly"
                        | "ProxyJump"
                ),
                "unexpected option {line:?}"
            );
            if key == "ProxyJump" {
                assert!(
                    value == "none" || gateways.iter().any(|g| g.jump() == value),
                    "ProxyJump to something that is no gateway: {line:?}"
                );
            }
            continue;
        }
        if let Some(hosts) = line.strip_prefix("Host ") {
            for h in hosts.split(' ') {
                assert!(
                    h == format!("*.{cluster}") || gateways.iter().any(|g| g.host() == h),
                    "unexpected host pattern {h:?} in {line:?}"
                );
            }
            continue;
        }
        // Match host "PATTERN" exec "PATH reachable ADDR": four quotes, no other.
        let rest = line
            .strip_prefix("Match host \"")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        assert_eq!(line.matches('"').count(), 4, "{line:?}");
        let (pattern, rest) = rest.split_once("\" exec \"").expect("exec");
        assert!(pattern.starts_with(&format!("*.{cluster}")), "{line:?}");
        let cmd = rest.strip_suffix('"').expect("closing quote");
        let (path, args) = cmd.split_once(" reachable '").expect("reachable");
        // The addresses: the probed one, then the earlier ones with --unless, each
        // single-quoted and a gateway's.
        let mut quoted = vec![];
        let mut rest = args;
        loop {
            let (addr, after) = rest.split_once('\'').expect("closing quote of an address");
            quoted.push(addr);
            match after.strip_prefix(" --unless '") {
                Some(more) => rest = more,
                None => {
                    assert_eq!(after, "", "{line:?}");
                    break;
                }
            }
        }
        assert_eq!(quoted.len(), probes + 1, "{line:?}");
        for a in &quoted {
            assert!(gateways.iter().any(|g| g.jump() == *a), "{line:?}");
        }
        // The shell sees the path as one word: plain, or single-quoted without a quote.
        if let Some(q) = path.strip_prefix('\'') {
            let inner = q.strip_suffix('\'').expect("closing single quote");
            assert!(!inner.contains('\''), "{line:?}");
        } else {
            assert!(!path.contains([' ', '\'', ';', '&', '|', '$', '`', '\\']), "{line:?}");
        }
        probes += 1;
    }
    assert_eq!(probes, gateways.len().saturating_sub(1), "{out}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let (Some(cluster), Some(binary)) = (lines.next(), lines.next()) else {
        return;
    };
    let Ok(cluster) = postern_core::names::parse_cluster_name(cluster) else {
        return;
    };
    let Ok(gateways) = lines
        .take(16)
        .map(render::Gateway::parse)
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let dir = Path::new("/home/u/.ssh/postern/c");
    let (i, c, k) = (dir.join("id"), dir.join("id-cert.pub"), dir.join("kh"));
    let paths = render::ClusterPaths {
        identity: &i,
        certificate: &c,
        known_hosts: &k,
    };
    if let Ok(out) = render::render_ssh_config(&cluster, &paths, &gateways, Path::new(binary)) {
        check_config(&out, &gateways, cluster.as_str());
    }
    let key = ssh_key::PublicKey::from_openssh(CA_KEY).unwrap();
    let kh = render::render_known_hosts(&cluster, &[key], &gateways).unwrap();
    for line in kh.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 4, "{line:?}");
        assert_eq!(fields[0], "@cert-authority", "{line:?}");
    }
});
