//! `CaUrl`: the base URL of posternd's API, checked once where it is parsed; and `CaUrls`,
//! the non-empty list of them a client fails over between, which state files store as one
//! string (as before there were several) or as a list.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The base URL of posternd's API: `https://host[:port][/prefix]`, without a trailing `/`.
#[derive(Clone, PartialEq, Eq)]
pub struct CaUrl(String);

impl CaUrl {
    /// The URL as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host as a DNS name, or `None` when it is an IP address (which needs no lookup).
    pub(crate) fn dns_name(&self) -> Option<String> {
        let url = reqwest::Url::parse(&self.0).ok()?;
        let host = url.host_str()?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<std::net::IpAddr>()
            .is_err()
            .then(|| host.to_owned())
    }

    /// The port, explicit or the default of https.
    pub(crate) fn port(&self) -> u16 {
        reqwest::Url::parse(&self.0)
            .ok()
            .and_then(|u| u.port_or_known_default())
            .unwrap_or(443)
    }
}

impl FromStr for CaUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<CaUrl, String> {
        let url = reqwest::Url::parse(s.trim()).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
        if url.scheme() != "https" {
            return Err(format!(
                "the CA URL must start with https:// (got {:?})",
                url.scheme()
            ));
        }
        if url.host_str().is_none() {
            return Err("the CA URL has no host".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the CA URL must not contain a user name or password".to_owned());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("the CA URL must not contain ? or #".to_owned());
        }
        Ok(CaUrl(url.as_str().trim_end_matches('/').to_owned()))
    }
}

impl fmt::Display for CaUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CaUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The CA URLs a client tries, in order: at least one, without repeats. They must all be
/// instances of one CA, since they share the one pin.
#[derive(Clone, PartialEq, Eq)]
pub struct CaUrls(Vec<CaUrl>);

impl CaUrls {
    /// The list, keeping the first of any repeated URL; `None` when it is empty.
    pub fn new(urls: impl IntoIterator<Item = CaUrl>) -> Option<CaUrls> {
        let mut out: Vec<CaUrl> = Vec::new();
        for u in urls {
            if !out.contains(&u) {
                out.push(u);
            }
        }
        (!out.is_empty()).then_some(CaUrls(out))
    }

    /// The URLs in order.
    pub fn iter(&self) -> impl Iterator<Item = &CaUrl> {
        self.0.iter()
    }

    /// The first URL.
    pub fn first(&self) -> &CaUrl {
        // Never empty: `new` and deserialization refuse an empty list.
        &self.0[0]
    }

    /// Whether `url` is one of them.
    pub fn contains(&self, url: &CaUrl) -> bool {
        self.0.contains(url)
    }
}

impl From<CaUrl> for CaUrls {
    fn from(u: CaUrl) -> CaUrls {
        CaUrls(vec![u])
    }
}

impl From<&CaUrl> for CaUrls {
    fn from(u: &CaUrl) -> CaUrls {
        CaUrls(vec![u.clone()])
    }
}

impl From<&CaUrls> for CaUrls {
    fn from(u: &CaUrls) -> CaUrls {
        u.clone()
    }
}

/// Comma-separated, as in messages: `https://a:3080, https://b:3080`.
impl fmt::Display for CaUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, u) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(u.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for CaUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

/// One URL is written as a string, the form of state files from before several URLs, so
/// that an older version still reads a state file with one URL; several as a list.
impl Serialize for CaUrls {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one.as_str()),
            many => many
                .iter()
                .map(CaUrl::as_str)
                .collect::<Vec<_>>()
                .serialize(s),
        }
    }
}

/// A string (one URL, as every state file before several URLs) or a non-empty list.
impl<'de> Deserialize<'de> for CaUrls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CaUrls, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let strings = match Raw::deserialize(d)? {
            Raw::One(s) => vec![s],
            Raw::Many(v) => v,
        };
        let urls = strings
            .iter()
            .map(|s| s.parse::<CaUrl>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(serde::de::Error::custom)?;
        CaUrls::new(urls).ok_or_else(|| serde::de::Error::custom("the list of CA URLs is empty"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_urls_read_one_string_or_a_list_and_write_one_as_a_string() {
        let one: CaUrls = serde_json::from_str(r#""https://a:3080/""#).unwrap();
        assert_eq!(serde_json::to_string(&one).unwrap(), r#""https://a:3080""#);
        let two: CaUrls =
            serde_json::from_str(r#"["https://a:3080", "https://b:3080", "https://a:3080"]"#)
                .unwrap();
        assert_eq!(
            serde_json::to_string(&two).unwrap(),
            r#"["https://a:3080","https://b:3080"]"#
        );
        assert_eq!(two.to_string(), "https://a:3080, https://b:3080");
        assert!(serde_json::from_str::<CaUrls>("[]").is_err());
        let e = serde_json::from_str::<CaUrls>(r#"["https://a", "http://b"]"#).unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
    }

    #[test]
    fn dns_names_are_told_from_addresses() {
        let name: CaUrl = "https://ca.example:3080".parse().unwrap();
        assert_eq!(name.dns_name().as_deref(), Some("ca.example"));
        assert_eq!(name.port(), 3080);
        let ip: CaUrl = "https://127.0.0.1".parse().unwrap();
        assert_eq!(ip.dns_name(), None);
        assert_eq!(ip.port(), 443);
        assert_eq!("https://[::1]:9".parse::<CaUrl>().unwrap().dns_name(), None);
    }

    #[test]
    fn ca_url_requires_https_and_drops_trailing_slash() {
        let u: CaUrl = "https://127.0.0.1:3080/".parse().unwrap();
        assert_eq!(u.as_str(), "https://127.0.0.1:3080");
        assert!("http://127.0.0.1:3080".parse::<CaUrl>().is_err());
        assert!("https://u:p@host".parse::<CaUrl>().is_err());
        assert!("https://host/?x=1".parse::<CaUrl>().is_err());
        assert!("not a url".parse::<CaUrl>().is_err());
    }
}
