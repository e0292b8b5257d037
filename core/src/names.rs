//! Names that end up in certificates, sshd configuration and shell commands.
//!
//! Every name is a newtype built only through `FromStr`/`TryFrom`, so a value that OpenSSH or a
//! shell would misread (empty, `,`, whitespace, `#`, quotes, control characters, `*`, `?`,
//! over-long) cannot exist in the program. The rules are allow-lists, not deny-lists.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string was refused as a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct NameError {
    /// What kind of name was being parsed (`user name`, `login`, ...).
    pub kind: &'static str,
    /// The refused input, escaped by `{:?}` when displayed.
    pub value: String,
    /// Why it was refused.
    pub reason: &'static str,
}

fn check(
    kind: &'static str,
    s: &str,
    max: usize,
    first: fn(char) -> bool,
    rest: fn(char) -> bool,
) -> Result<(), NameError> {
    let err = |reason| NameError {
        kind,
        // Hostile input may be huge: keep only a prefix in the error.
        value: s.chars().take(80).collect(),
        reason,
    };
    let mut chars = s.chars();
    let Some(c0) = chars.next() else {
        return Err(err("must not be empty"));
    };
    if s.len() > max {
        return Err(err("too long"));
    }
    if !first(c0) {
        return Err(err("starts with a character that is not allowed"));
    }
    if !chars.all(rest) {
        return Err(err(
            "contains a character that is not allowed (only letters, digits and . _ - are)",
        ));
    }
    Ok(())
}

/// A rule on the whole value beyond its characters (a DNS label must not end with `-`).
fn check_whole(
    kind: &'static str,
    s: &str,
    rule: fn(&str) -> Option<&'static str>,
) -> Result<(), NameError> {
    match rule(s) {
        None => Ok(()),
        Some(reason) => Err(NameError {
            kind,
            value: s.chars().take(80).collect(),
            reason,
        }),
    }
}

macro_rules! name_type {
    ($(#[$meta:meta])* $name:ident, $kind:literal, $max:expr, $first:expr, $rest:expr) => {
        name_type!($(#[$meta])* $name, $kind, $max, $first, $rest, |_: &str| None);
    };
    ($(#[$meta:meta])* $name:ident, $kind:literal, $max:expr, $first:expr, $rest:expr, $whole:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The longest value accepted, in bytes.
            pub const MAX_LEN: usize = $max;

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                check($kind, s, $max, $first, $rest)?;
                check_whole($kind, s, $whole)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                check($kind, &s, $max, $first, $rest)?;
                check_whole($kind, &s, $whole)?;
                Ok(Self(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::try_from(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}
fn lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

name_type!(
    /// A Postern user name (the key id of the user's certificates). Letters, digits, `.`, `_`,
    /// `-` and `@` (so e-mail-like names work); starts with a letter or digit; at most 64 bytes.
    Username, "user name", 64, alnum,
    |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')
);

name_type!(
    /// An OS login name on a server (a principal of user certificates). Follows the portable
    /// POSIX user name set: letters, digits, `.`, `_`, `-`; does not start with `-` or `.`;
    /// at most 32 bytes, the limit of utmp and of Debian's `adduser`.
    Login, "login", 32, |c| c.is_ascii_alphabetic() || c == '_',
    |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
);

name_type!(
    /// A certificate principal: a login or a host name. At most 255 bytes.
    Principal, "principal", 255, alnum,
    |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')
);

name_type!(
    /// A certificate key id. sshd logs it verbatim, so it is kept to a quoting-free set.
    KeyId, "key id", 128, alnum,
    |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':' | '/' | '=' | '+')
);

name_type!(
    /// A server's name in the inventory: one DNS label, lowercase, at most 63 bytes.
    NodeName, "node name", 63, lower_alnum,
    |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
    // Every constructor checks it: a name `web-` that parsed here once joined, and then made
    // every gateway's inventory fail.
    |s: &str| s.ends_with('-').then_some("must not end with '-'")
);

name_type!(
    /// A cluster name: a DNS name (lowercase labels joined by dots) used as `Host *.<cluster>`.
    ClusterName, "cluster name", 253, lower_alnum,
    |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.',
    |s: &str| {
        (!s.split('.').all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-')))
            .then_some("each dot-separated label must be 1 to 63 characters and not start or end with '-'")
    }
);

impl NodeName {
    /// Whether the name is a proper DNS label (does not end with `-`).
    fn well_formed(&self) -> bool {
        !self.0.ends_with('-')
    }
}

impl ClusterName {
    fn well_formed(&self) -> bool {
        self.0
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'))
    }
}

/// Parses a node name, also refusing a trailing `-`.
pub fn parse_node_name(s: &str) -> Result<NodeName, NameError> {
    let n: NodeName = s.parse()?;
    if !n.well_formed() {
        return Err(NameError {
            kind: "node name",
            value: s.to_owned(),
            reason: "must not end with '-'",
        });
    }
    Ok(n)
}

/// Parses `HOST:PORT` as a server or gateway is dialled: HOST a DNS name (letters, digits,
/// `-` and `.`, at most 253 characters), an IPv4 address or a bracketed IPv6 address, PORT
/// 1 to 65535. Nothing else (no user@, no spaces, no second colon outside brackets) reaches
/// the inventory or a dial.
pub fn parse_host_port(s: &str) -> Result<(String, u16), NameError> {
    let err = |reason| NameError {
        kind: "address",
        value: s.chars().take(64).collect(),
        reason,
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(|| err("must be HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0 && !port.starts_with('+') && !port.starts_with('0'))
        .ok_or_else(|| err("the port must be 1 to 65535"))?;
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| err("not an IPv6 address"))?;
        return Ok((format!("[{ip}]"), port));
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok((host.to_owned(), port));
    }
    let dns_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !dns_ok {
        return Err(err(
            "the host must be a DNS name, an IPv4 address or [IPv6]",
        ));
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// Parses a source address as sshd's `PerSourcePenaltyExemptList` and the `source-address`
/// critical option take it (sshd_config(5), PROTOCOL.certkeys): an IPv4 or IPv6 address, or
/// one with a prefix length (`10.0.0.0/24`). Returned in canonical form.
pub fn parse_source_address(s: &str) -> Result<String, NameError> {
    let err = |reason| NameError {
        kind: "source address",
        value: s.chars().take(64).collect(),
        reason,
    };
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| err("must be an IP address or IP/prefix"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix {
        None => Ok(ip.to_string()),
        Some(p) => {
            let len: u8 = p
                .parse()
                .ok()
                .filter(|l| *l <= max && p.len() <= 3 && !p.starts_with('+'))
                .ok_or_else(|| err("the prefix length is out of range"))?;
            Ok(format!("{ip}/{len}"))
        }
    }
}

/// The principal a host certificate must carry for stock ssh(1) to accept it at `address`
/// (`HOST`, `HOST:PORT` or `[HOST]:PORT`): ssh lowercases the host name it connects to and
/// compares it with the certificate's principals exactly (sshkey_cert_check_authority), and
/// the port plays no part. So this is the host, lowercased. Refused when the port is not a
/// port or the host cannot be a principal (an IPv6 address: principals have no `:`).
pub fn address_principal(address: &str) -> Result<Principal, NameError> {
    let err = |reason| NameError {
        kind: "address",
        value: address.chars().take(80).collect(),
        reason,
    };
    let (host, port) = match address.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .map(|(h, p)| (h, p.strip_prefix(':').or((!p.is_empty()).then_some(p))))
            .ok_or_else(|| err("has a '[' without a ']'"))?,
        None => match address.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (address, None),
        },
    };
    if let Some(p) = port {
        if !p.parse::<u16>().is_ok_and(|n| n != 0) || p.starts_with('+') {
            return Err(err("must be HOST or HOST:PORT with a port from 1 to 65535"));
        }
    }
    if host.contains(':') {
        return Err(err(
            "has an IPv6 host, which a host certificate cannot name: use a DNS name",
        ));
    }
    host.to_ascii_lowercase().parse::<Principal>().map_err(|_| {
        err("has a host that a host certificate cannot name (letters, digits and . _ - only)")
    })
}

/// Parses a cluster name, also checking that every DNS label is well formed.
pub fn parse_cluster_name(s: &str) -> Result<ClusterName, NameError> {
    let n: ClusterName = s.parse()?;
    if !n.well_formed() {
        return Err(NameError {
            kind: "cluster name",
            value: s.to_owned(),
            reason:
                "each dot-separated label must be 1 to 63 characters and not start or end with '-'",
        });
    }
    Ok(n)
}

impl From<Login> for Principal {
    fn from(l: Login) -> Self {
        // Every login is a valid principal: the login alphabet is a subset.
        Principal(l.0)
    }
}

impl From<&Username> for KeyId {
    fn from(u: &Username) -> Self {
        // The user-name alphabet is a subset of the key-id alphabet and shorter.
        KeyId(u.0.clone())
    }
}

/// Server labels such as `env=prod,team=web`. Keys and values are short tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct Labels(BTreeMap<String, String>);

fn label_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 63
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

fn label_value_ok(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Labels {
    /// The labels as an ordered map.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of one label.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = NameError;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, NameError> {
        if map.len() > 64 {
            return Err(NameError {
                kind: "labels",
                value: String::new(),
                reason: "more than 64 labels",
            });
        }
        for (k, v) in &map {
            if !label_key_ok(k) {
                return Err(NameError {
                    kind: "label key",
                    value: k.chars().take(80).collect(),
                    reason: "must be 1 to 63 letters, digits, '.', '_', '-' or '/'",
                });
            }
            if !label_value_ok(v) {
                return Err(NameError {
                    kind: "label value",
                    value: v.chars().take(80).collect(),
                    reason: "must be at most 63 letters, digits, '.', '_' or '-'",
                });
            }
        }
        Ok(Labels(map))
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(l: Labels) -> Self {
        l.0
    }
}

impl FromStr for Labels {
    type Err = NameError;
    /// Parses `k=v,k2=v2` (the form of `--labels`). An empty string is no labels.
    fn from_str(s: &str) -> Result<Self, NameError> {
        let mut map = BTreeMap::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(NameError {
                    kind: "label",
                    value: part.chars().take(80).collect(),
                    reason: "expected key=value",
                });
            };
            if map.insert(k.to_owned(), v.to_owned()).is_some() {
                return Err(NameError {
                    kind: "label",
                    value: k.chars().take(80).collect(),
                    reason: "given twice",
                });
            }
        }
        Labels::try_from(map)
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_a_node_named_web_dash_joined_and_broke_every_inventory() {
        // FromStr and Deserialize (what the API uses) checked only the characters.
        assert!("web-".parse::<NodeName>().is_err());
        assert!(serde_json::from_str::<NodeName>("\"web-\"").is_err());
        assert!(NodeName::try_from("web-".to_owned()).is_err());
        assert!("web-1".parse::<NodeName>().is_ok());
        assert!("a..b".parse::<ClusterName>().is_err());
        assert!(serde_json::from_str::<ClusterName>("\"a.-b\"").is_err());
    }

    #[test]
    fn addresses_are_host_port_and_nothing_else() {
        for (input, want) in [
            ("127.0.0.1:22", Some(("127.0.0.1", 22))),
            ("web1.example.com:2222", Some(("web1.example.com", 2222))),
            ("WEB1:22", Some(("web1", 22))),
            ("[::1]:22", Some(("[::1]", 22))),
            ("[2001:db8::1]:65535", Some(("[2001:db8::1]", 65535))),
            ("web1", None),
            ("web1:", None),
            ("web1:0", None),
            ("web1:022", None),
            ("web1:65536", None),
            ("web1:+22", None),
            ("::1:22", None),
            ("[::1]", None),
            ("[web1]:22", None),
            ("root@web1:22", None),
            ("web1 :22", None),
            ("-web1:22", None),
            ("web1-.x:22", None),
            ("a..b:22", None),
            ("web1:22\n", None),
            (":22", None),
        ] {
            let got = parse_host_port(input).ok();
            assert_eq!(
                got.as_ref().map(|(h, p)| (h.as_str(), *p)),
                want,
                "{input:?}"
            );
        }
    }

    #[test]
    fn source_addresses_are_ips_or_prefixes_and_nothing_else() {
        for (input, want) in [
            ("127.0.0.1", Some("127.0.0.1")),
            ("10.0.0.0/24", Some("10.0.0.0/24")),
            ("::1", Some("::1")),
            ("2001:db8::/32", Some("2001:db8::/32")),
            ("0:0::1", Some("::1")),
            ("10.0.0.0/33", None),
            ("10.0.0.0/+8", None),
            ("10.0.0.0/", None),
            ("gate.example.com", None),
            ("127.0.0.1,10.0.0.1", None),
            ("127.0.0.1 ", None),
            ("", None),
            ("*", None),
        ] {
            assert_eq!(
                parse_source_address(input).ok().as_deref(),
                want,
                "{input:?}"
            );
        }
    }

    const HOSTILE: &[&str] = &[
        "",
        "a,b",
        "a b",
        "a\tb",
        "a#b",
        "a\"b",
        "a'b",
        "a\nb",
        "a\u{7}b",
        "a*",
        "a?",
        "$(id)",
        "`id`",
        "a;b",
        "-oProxyCommand=x",
        "é",
        "a\0b",
    ];

    #[test]
    fn address_principal_is_the_lowercased_host_without_port() {
        for (addr, want) in [
            ("gate.example.com:3023", "gate.example.com"),
            ("Gate.Example.COM", "gate.example.com"),
            ("127.0.0.1:3023", "127.0.0.1"),
            ("[gw.example.com]:22", "gw.example.com"),
            ("gw", "gw"),
        ] {
            assert_eq!(address_principal(addr).unwrap().as_str(), want, "{addr}");
        }
        for bad in [
            "",
            ":3023",
            "gw:",
            "gw:0",
            "gw:65536",
            "gw:+22",
            "gw:x",
            "[::1]:3023",
            "::1",
            "[gw",
            "[gw]x",
            "gw ProxyCommand:22",
            "-oProxyCommand=x:22",
        ] {
            assert!(address_principal(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_hostile_names_for_every_kind() {
        for s in HOSTILE {
            assert!(s.parse::<Username>().is_err(), "user {s:?}");
            assert!(s.parse::<Login>().is_err(), "login {s:?}");
            assert!(s.parse::<Principal>().is_err(), "principal {s:?}");
            assert!(s.parse::<KeyId>().is_err(), "key id {s:?}");
            assert!(parse_node_name(s).is_err(), "node {s:?}");
            assert!(parse_cluster_name(s).is_err(), "cluster {s:?}");
        }
    }

    #[test]
    fn rejects_over_long_names() {
        assert!("a".repeat(65).parse::<Username>().is_err());
        assert!("a".repeat(64).parse::<Username>().is_ok());
        assert!("a".repeat(33).parse::<Login>().is_err());
        assert!("a".repeat(32).parse::<Login>().is_ok());
        assert!(parse_node_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn accepts_ordinary_names() {
        assert_eq!("alice".parse::<Username>().unwrap().as_str(), "alice");
        assert!("alice.smith@example.com".parse::<Username>().is_ok());
        assert!("deploy".parse::<Login>().is_ok());
        assert!("_apt".parse::<Login>().is_ok());
        assert!(parse_node_name("web-1").is_ok());
        assert!(parse_cluster_name("prod.example.com").is_ok());
    }

    #[test]
    fn rejects_login_with_at_sign_or_leading_digit_or_dash() {
        assert!("alice@corp".parse::<Login>().is_err());
        assert!("1alice".parse::<Login>().is_err());
        assert!("-alice".parse::<Login>().is_err());
    }

    #[test]
    fn rejects_malformed_dns_names() {
        assert!(parse_cluster_name("a..b").is_err());
        assert!(parse_cluster_name(".a").is_err());
        assert!(parse_cluster_name("a-.b").is_err());
        assert!(parse_node_name("web-").is_err());
        assert!(parse_node_name("Web").is_err());
    }

    #[test]
    fn labels_round_trip_and_reject_bad_input() {
        let l: Labels = "env=prod,team=web".parse().unwrap();
        assert_eq!(l.get("env"), Some("prod"));
        assert_eq!(l.to_string(), "env=prod,team=web");
        assert!("env".parse::<Labels>().is_err());
        assert!("env=a b".parse::<Labels>().is_err());
        assert!("env=a,env=b".parse::<Labels>().is_err());
        assert!("=x".parse::<Labels>().is_err());
        assert!("".parse::<Labels>().unwrap().is_empty());
    }

    #[test]
    fn error_message_escapes_and_truncates_hostile_input() {
        let long = format!("{}\n", "x".repeat(10_000));
        let e = long.parse::<Username>().unwrap_err();
        let msg = e.to_string();
        assert!(msg.len() < 300, "{msg}");
        assert!(!msg.contains('\n'));
    }
}
