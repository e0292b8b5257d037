//! `CaUrl`: the base URL of posternd's API, checked once where it is parsed.

use std::fmt;
use std::str::FromStr;

/// The base URL of posternd's API: `https://host[:port][/prefix]`, without a trailing `/`.
#[derive(Clone, PartialEq, Eq)]
pub struct CaUrl(String);

impl CaUrl {
    /// The URL as a string.
    pub fn as_str(&self) -> &str {
        &self.0
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

#[cfg(test)]
mod tests {
    use super::*;

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
