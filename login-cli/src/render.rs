//! Renders the OpenSSH files `postern login` writes: `known_hosts` with `@cert-authority`
//! lines and the `ssh_config` block. Pure functions of validated inputs.
//!
//! Everything that reaches these files from the server has been parsed first (host CA keys as
//! OpenSSH public keys, the gateway as `HOST:PORT` from a small alphabet, the cluster as a
//! DNS name), so a hostile answer cannot add lines or options to the user's ssh configuration.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use ssh_key::PublicKey;

use postern_core::ClusterName;

/// The gateway's address from a certificate response, `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    host: String,
    port: u16,
}

impl Gateway {
    /// Parses `host:port`, `[v6]:port` or a bare host (port 22).
    pub fn parse(s: &str) -> anyhow::Result<Gateway> {
        let bad = || anyhow::anyhow!("the server sent an invalid gateway address {s:?}");
        if s.is_empty() || s.len() > 260 {
            return Err(bad());
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(bad)?;
            if h.is_empty()
                || !h
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
            {
                return Err(bad());
            }
            let port = match after {
                "" => 22,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(bad)?,
            };
            (h.to_owned(), port)
        } else {
            let (h, port) = match s.rsplit_once(':') {
                Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
                None => (s, 22),
            };
            // A DNS name or IPv4 address: the characters ssh_config and known_hosts take
            // literally, and never a leading '-' that ssh could read as an option.
            if h.is_empty()
                || h.starts_with(['-', '.'])
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            {
                return Err(bad());
            }
            (h.to_owned(), port)
        };
        if port == 0 {
            return Err(bad());
        }
        Ok(Gateway { host, port })
    }

    /// The host, without brackets (what ssh matches `Host` patterns against).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `ProxyJump` argument.
    pub fn jump(&self) -> String {
        match (self.host.contains(':'), self.port) {
            (false, 22) => self.host.clone(),
            (false, p) => format!("{}:{p}", self.host),
            (true, p) => format!("[{}]:{p}", self.host),
        }
    }

    /// The name ssh looks up in known_hosts (sshd(8) SSH_KNOWN_HOSTS FILE FORMAT: a
    /// non-standard port is written `[host]:port`).
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }

    /// The address as the server sent it, normalized.
    pub fn as_string(&self) -> String {
        self.jump()
    }
}

/// A path as an ssh_config argument. ssh_config(5) expands `%` tokens in `IdentityFile`,
/// `CertificateFile` and `UserKnownHostsFile`, so `%` is doubled there; a path with blanks is
/// double-quoted. Paths that cannot be written safely (not UTF-8, quotes, control characters)
/// are refused rather than mangled.
pub fn ssh_path(path: &Path, expands_tokens: bool) -> anyhow::Result<String> {
    let s = path
        .to_str()
        .with_context(|| format!("path {} is not valid UTF-8", path.display()))?;
    if s.chars().any(|c| c.is_control() || c == '"') {
        bail!("path {s:?} contains a quote or control character that ssh_config cannot express");
    }
    let s = if expands_tokens {
        s.replace('%', "%%")
    } else {
        s.to_owned()
    };
    Ok(if s.chars().any(char::is_whitespace) {
        format!("\"{s}\"")
    } else {
        s
    })
}

/// The line `postern login` puts at the top of `~/.ssh/config`.
pub fn include_line(postern_dir: &Path) -> anyhow::Result<String> {
    Ok(format!(
        "Include {}",
        ssh_path(&postern_dir.join("*").join("ssh_config"), false)?
    ))
}

/// A host CA key as written into known_hosts: key type and base64, without the comment.
fn key_line(key: &PublicKey) -> anyhow::Result<String> {
    let mut key = key.clone();
    key.set_comment("");
    Ok(key
        .to_openssh()
        .context("encoding a host CA key")?
        .trim()
        .to_owned())
}

/// `known_hosts` for a cluster: one `@cert-authority *.<cluster>` line per host CA key, plus
/// lines for each gateway's own address (it is reached by its address, which need not be
/// under the cluster's domain, and a non-22 port is looked up as `[host]:port`).
pub fn render_known_hosts(
    cluster: &ClusterName,
    host_ca_keys: &[PublicKey],
    gateways: &[Gateway],
) -> anyhow::Result<String> {
    let mut out = format!(
        "# Written by postern for cluster {cluster}; replaced on every login and renewal.\n"
    );
    let lines = host_ca_keys
        .iter()
        .map(key_line)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for l in &lines {
        let _ = writeln!(out, "@cert-authority *.{cluster} {l}");
    }
    for gw in gateways {
        for l in &lines {
            let _ = writeln!(out, "@cert-authority {} {l}", gw.known_hosts_name());
        }
    }
    Ok(out)
}

/// Absolute paths of one cluster's files, as referenced from its ssh_config.
#[derive(Debug, Clone)]
pub struct ClusterPaths<'a> {
    /// The private key.
    pub identity: &'a Path,
    /// The certificate.
    pub certificate: &'a Path,
    /// The cluster's known_hosts.
    pub known_hosts: &'a Path,
}

/// The command ssh runs (`Match exec`) to learn whether the gateway at `gw` answers while
/// none of `earlier` does: `postern reachable`, by the absolute path of the binary that
/// writes the file. ssh expands `%` tokens in it and hands it to the user's shell, so `%` is
/// doubled, the path is single-quoted when it needs to be (a path with a quote is refused),
/// and every address is single-quoted (`[::1]:3023` is a glob to the shell).
fn probe_command(postern: &Path, gw: &Gateway, earlier: &[Gateway]) -> anyhow::Result<String> {
    let s = postern
        .to_str()
        .with_context(|| format!("path {} is not valid UTF-8", postern.display()))?;
    if s.chars()
        .any(|c| c.is_control() || c == '"' || c == '\'' || c == '\\')
    {
        bail!("path {s:?} contains a quote or control character that ssh_config cannot express");
    }
    let s = s.replace('%', "%%");
    let plain = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_' | '+'));
    let path = if plain { s } else { format!("'{s}'") };
    let mut cmd = format!("{path} reachable '{}'", gw.jump());
    for e in earlier {
        let _ = write!(cmd, " --unless '{}'", e.jump());
    }
    Ok(cmd)
}

/// The ssh_config of one cluster. Paths are absolute because the user's `$HOME` may differ
/// from the passwd home that ssh would expand `~` to.
///
/// With several gateways, stock ssh jumps through the first that answers: ssh keeps the first
/// `ProxyJump` it obtains, so each gateway but the last has a `Match ... exec` block that
/// applies only when `postern reachable` (the binary at `postern`) hears that gateway's SSH
/// banner, and the last one is the unconditional fallback. A cluster with one gateway name
/// for several addresses (DNS) needs none of that: ssh tries each address itself.
pub fn render_ssh_config(
    cluster: &ClusterName,
    paths: &ClusterPaths<'_>,
    gateways: &[Gateway],
    postern: &Path,
) -> anyhow::Result<String> {
    let identity = ssh_path(paths.identity, true)?;
    let certificate = ssh_path(paths.certificate, true)?;
    let known_hosts = ssh_path(paths.known_hosts, true)?;
    let common = format!(
        "    IdentityFile {identity}\n    CertificateFile {certificate}\n    \
         UserKnownHostsFile {known_hosts}\n    IdentitiesOnly yes\n"
    );
    let mut out = format!(
        "# Written by postern for cluster {cluster}; replaced on every login and renewal.\n"
    );
    let mut hosts: Vec<&str> = Vec::new();
    for gw in gateways {
        if !hosts.contains(&gw.host()) {
            hosts.push(gw.host());
        }
    }
    if !hosts.is_empty() {
        // The jump connection to a gateway is a second ssh run that matches the gateway's
        // own address, not `*.<cluster>`: it needs the certificate and known_hosts too, and
        // `ProxyJump none` stops a gateway named under the cluster's domain from jumping
        // through itself. This block comes first because ssh_config keeps the first value.
        let _ = write!(
            out,
            "\nHost {}\n    ProxyJump none\n{common}",
            hosts.join(" ")
        );
    }
    let _ = write!(out, "\nHost *.{cluster}\n{common}");
    if let Some((last, first)) = gateways.split_last() {
        if first.is_empty() {
            let _ = writeln!(out, "    ProxyJump {}", last.jump());
        } else {
            // The gateways' own names are left out, so that their jump connections (already
            // `ProxyJump none`) run no probe.
            let mut pattern = format!("*.{cluster}");
            for h in &hosts {
                let _ = write!(pattern, ",!{h}");
            }
            for (k, gw) in first.iter().enumerate() {
                let _ = write!(
                    out,
                    "\n# The first gateway that answers; `postern reachable` hears its banner.\n\
                     Match host \"{pattern}\" exec \"{}\"\n    ProxyJump {}\n",
                    probe_command(postern, gw, &first[..k])?,
                    gw.jump()
                );
            }
            let _ = write!(
                out,
                "\n# When no other gateway answers.\nHost *.{cluster}\n    ProxyJump {}\n",
                last.jump()
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const CA_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILW57FmpCtobbGauJAL/giUn3vQl7CZmTQxaPUL1FZkB host-ca@test";

    fn cluster() -> ClusterName {
        postern_core::names::parse_cluster_name("example.com").unwrap()
    }

    #[test]
    fn known_hosts_has_one_cert_authority_line_per_key() {
        let k = PublicKey::from_openssh(CA_KEY).unwrap();
        let out = render_known_hosts(&cluster(), &[k.clone(), k], &[]).unwrap();
        let lines: Vec<_> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 2);
        for l in lines {
            assert_eq!(
                l,
                "@cert-authority *.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILW57FmpCtobbGauJAL/giUn3vQl7CZmTQxaPUL1FZkB"
            );
        }
    }

    #[test]
    fn known_hosts_names_gateway_with_port_in_brackets() {
        let k = PublicKey::from_openssh(CA_KEY).unwrap();
        let gw = Gateway::parse("127.0.0.1:3023").unwrap();
        let out = render_known_hosts(&cluster(), &[k], std::slice::from_ref(&gw)).unwrap();
        assert!(
            out.contains("\n@cert-authority [127.0.0.1]:3023 ssh-ed25519 "),
            "{out}"
        );
        let gw22 = Gateway::parse("gate.example.net").unwrap();
        let k = PublicKey::from_openssh(CA_KEY).unwrap();
        let out = render_known_hosts(&cluster(), &[k], &[gw22]).unwrap();
        assert!(
            out.contains("\n@cert-authority gate.example.net ssh-ed25519 "),
            "{out}"
        );
    }

    fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        (
            dir.join("id_ed25519"),
            dir.join("id_ed25519-cert.pub"),
            dir.join("known_hosts"),
        )
    }

    #[test]
    fn ssh_config_has_absolute_paths_and_proxyjump() {
        let (i, c, k) = paths(Path::new("/home/al/.ssh/postern/example.com"));
        let p = ClusterPaths {
            identity: &i,
            certificate: &c,
            known_hosts: &k,
        };
        let gw = Gateway::parse("gate.example.com:3023").unwrap();
        let out = render_ssh_config(&cluster(), &p, &[gw], Path::new("/usr/bin/postern")).unwrap();
        let block = out.split("Host *.example.com\n").nth(1).unwrap();
        assert_eq!(
            block,
            "    IdentityFile /home/al/.ssh/postern/example.com/id_ed25519\n    \
             CertificateFile /home/al/.ssh/postern/example.com/id_ed25519-cert.pub\n    \
             UserKnownHostsFile /home/al/.ssh/postern/example.com/known_hosts\n    \
             IdentitiesOnly yes\n    ProxyJump gate.example.com:3023\n"
        );
        // The gateway's own block comes first and does not jump through itself.
        let gw_at = out
            .find("Host gate.example.com\n    ProxyJump none\n")
            .unwrap();
        assert!(gw_at < out.find("Host *.example.com").unwrap());
    }

    #[test]
    fn ssh_config_with_several_gateways_jumps_through_the_first_that_answers() {
        let (i, c, k) = paths(Path::new("/h/.ssh/postern/example.com"));
        let p = ClusterPaths {
            identity: &i,
            certificate: &c,
            known_hosts: &k,
        };
        let gws: Vec<Gateway> = ["127.0.0.1:3023", "gate2.example.com:3023", "[::1]:3023"]
            .iter()
            .map(|g| Gateway::parse(g).unwrap())
            .collect();
        let out =
            render_ssh_config(&cluster(), &p, &gws, Path::new("/opt/my tools/postern%1")).unwrap();
        // All gateways' own connections jump nowhere, before anything else.
        assert!(
            out.contains("\nHost 127.0.0.1 gate2.example.com ::1\n    ProxyJump none\n"),
            "{out}"
        );
        let pattern = "\"*.example.com,!127.0.0.1,!gate2.example.com,!::1\"";
        let first = format!(
            "Match host {pattern} exec \"'/opt/my tools/postern%%1' reachable '127.0.0.1:3023'\"\n    \
             ProxyJump 127.0.0.1:3023\n"
        );
        let second = format!(
            "Match host {pattern} exec \"'/opt/my tools/postern%%1' reachable \
             'gate2.example.com:3023' --unless '127.0.0.1:3023'\"\n    \
             ProxyJump gate2.example.com:3023\n"
        );
        let last = "Host *.example.com\n    ProxyJump [::1]:3023\n";
        let (a, b, c) = (
            out.find(&first).unwrap(),
            out.find(&second).unwrap(),
            out.find(last).unwrap(),
        );
        assert!(a < b && b < c, "{out}");
        assert_eq!(out.matches("ProxyJump ").count(), 4, "{out}");
        // A path that ssh_config and the shell cannot both take literally is refused.
        for bad in ["/opt/it's/postern", "/opt/a\"b/postern", "/opt/a\\b"] {
            assert!(render_ssh_config(&cluster(), &p, &gws, Path::new(bad)).is_err());
        }
        let kh = render_known_hosts(
            &cluster(),
            &[PublicKey::from_openssh(CA_KEY).unwrap()],
            &gws,
        )
        .unwrap();
        for name in ["[127.0.0.1]:3023", "[gate2.example.com]:3023", "[::1]:3023"] {
            assert!(
                kh.contains(&format!("\n@cert-authority {name} ssh-ed25519 ")),
                "{kh}"
            );
        }
    }

    #[test]
    fn ssh_config_without_gateway_has_no_proxyjump() {
        let (i, c, k) = paths(Path::new("/h/.ssh/postern/example.com"));
        let p = ClusterPaths {
            identity: &i,
            certificate: &c,
            known_hosts: &k,
        };
        let out = render_ssh_config(&cluster(), &p, &[], Path::new("/usr/bin/postern")).unwrap();
        assert!(!out.contains("ProxyJump"), "{out}");
        assert!(
            out.contains("\nHost *.example.com\n    IdentityFile /h/"),
            "{out}"
        );
    }

    #[test]
    fn ssh_config_quotes_blanks_and_escapes_percent() {
        let (i, c, k) = paths(Path::new("/home/a b%d/.ssh/postern/example.com"));
        let p = ClusterPaths {
            identity: &i,
            certificate: &c,
            known_hosts: &k,
        };
        let out = render_ssh_config(&cluster(), &p, &[], Path::new("/usr/bin/postern")).unwrap();
        assert!(
            out.contains("IdentityFile \"/home/a b%%d/.ssh/postern/example.com/id_ed25519\"\n"),
            "{out}"
        );
        let (i, c, k) = paths(Path::new("/home/a\"\n/x"));
        let p = ClusterPaths {
            identity: &i,
            certificate: &c,
            known_hosts: &k,
        };
        render_ssh_config(&cluster(), &p, &[], Path::new("/usr/bin/postern")).unwrap_err();
    }

    #[test]
    fn gateway_parsing_accepts_addresses_and_rejects_injection() {
        assert_eq!(
            Gateway::parse("gw.example.com").unwrap().jump(),
            "gw.example.com"
        );
        assert_eq!(Gateway::parse("gw:22").unwrap().jump(), "gw");
        assert_eq!(
            Gateway::parse("127.0.0.1:3023").unwrap().jump(),
            "127.0.0.1:3023"
        );
        let v6 = Gateway::parse("[::1]:3023").unwrap();
        assert_eq!((v6.host(), v6.jump()), ("::1", "[::1]:3023".to_owned()));
        assert_eq!(v6.known_hosts_name(), "[::1]:3023");
        for bad in [
            "",
            "gw:0",
            "gw:99999",
            "gw:x",
            "gw\n    ProxyCommand sh",
            "gw ProxyCommand",
            "-oProxyCommand=x",
            "a@gw",
            "gw,other",
            "[::1",
            "[::1]x",
            "gw:22:33",
            "*.example.com",
        ] {
            assert!(Gateway::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn include_line_uses_absolute_glob() {
        assert_eq!(
            include_line(Path::new("/home/al/.ssh/postern")).unwrap(),
            "Include /home/al/.ssh/postern/*/ssh_config"
        );
    }
}
