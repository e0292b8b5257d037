//! The asciicast v2 header: the one model the gateway writes, the CA checks before it
//! stores a recording a gateway sent (a pure function of the bytes, so that it can be fuzzed)
//! and `postern play` reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::RecordingId;
use crate::names::{Login, NodeName, Username};

/// The longest asciicast header line accepted (the header is a small JSON object).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The first line of an asciicast v2 recording. Fields are in the order the gateway has
/// always written them (alphabetical); other fields a recording may carry are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The command run, `null` for a login shell.
    #[serde(default)]
    pub command: Option<String>,
    /// The recorded environment (`TERM`, `SHELL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Terminal rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// What Postern knows of the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postern: Option<PosternHeader>,
    /// Unix start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// A title for players.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Always 2.
    pub version: u64,
    /// Terminal columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
}

/// The `postern` object of a header the gateway wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosternHeader {
    /// The gateway that recorded it.
    pub gateway: String,
    /// The OS login.
    pub login: Login,
    /// The server.
    pub node: NodeName,
    /// The recording's id.
    pub session: RecordingId,
    /// The Postern user.
    pub user: Username,
}

/// Why a line is not an asciicast v2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Not a JSON object of the header's shape.
    NotJson(String),
    /// A header of another version.
    NotVersion2,
}

impl Header {
    /// Reads a header line.
    pub fn parse(line: &str) -> Result<Header, HeaderError> {
        let h: Header =
            serde_json::from_str(line).map_err(|e| HeaderError::NotJson(e.to_string()))?;
        if h.version != 2 {
            return Err(HeaderError::NotVersion2);
        }
        Ok(h)
    }

    /// The header as its line (without the newline).
    pub fn to_line(&self) -> String {
        // A struct of strings and numbers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Checks the first line of an asciicast: a header with `"version": 2`.
pub fn check_cast(cast: &str) -> Result<(), String> {
    let header = cast.split('\n').next().unwrap_or_default();
    match Header::parse(header) {
        Ok(_) => Ok(()),
        Err(HeaderError::NotJson(e)) => {
            Err(format!("the cast's first line is not a JSON header: {e}"))
        }
        Err(HeaderError::NotVersion2) => {
            Err("the cast's header does not say \"version\": 2 (asciicast v2)".into())
        }
    }
}

/// Checks the beginning of a recording of `bytes` bytes: `head` is its first
/// `min(bytes, MAX_HEADER_BYTES)` bytes, which must hold the whole header line, in UTF-8.
pub fn check_head(head: &[u8], bytes: u64) -> Result<(), String> {
    match head.iter().position(|b| *b == b'\n') {
        Some(n) => std::str::from_utf8(&head[..n])
            .map_err(|_| "the cast's first line is not UTF-8".to_owned())
            .and_then(check_cast),
        None if bytes <= MAX_HEADER_BYTES as u64 => std::str::from_utf8(head)
            .map_err(|_| "the cast's first line is not UTF-8".to_owned())
            .and_then(check_cast),
        None => Err(format!(
            "the cast's first line is longer than {MAX_HEADER_BYTES} bytes"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn headers_of_version_2_are_read_and_others_refused_with_the_reason() {
        assert!(check_cast("{\"version\": 2, \"width\": 80}\n[0.1, \"o\", \"hi\"]\n").is_ok());
        assert!(check_cast("{\"version\": 2, \"theme\": {\"fg\": \"#fff\"}}").is_ok());
        let e = check_cast("{\"version\": 1}\n").unwrap_err();
        assert!(e.contains("version"), "{e}");
        let e = check_cast("[0.1, \"o\", \"hi\"]\n").unwrap_err();
        assert!(e.contains("not a JSON header"), "{e}");
        assert!(check_cast("").is_err());
        assert!(check_cast("{\"version\": 2, \"width\": \"wide\"}").is_err());
    }

    #[test]
    fn the_gateways_header_reads_back_as_written() {
        let h = Header {
            command: None,
            env: Some(BTreeMap::from([("TERM".into(), "xterm".into())])),
            height: Some(24),
            postern: Some(PosternHeader {
                gateway: "gw".into(),
                login: "root".parse().unwrap(),
                node: "web1".parse().unwrap(),
                session: "s-1".parse().unwrap(),
                user: "alice".parse().unwrap(),
            }),
            timestamp: Some(7),
            title: Some("t".into()),
            version: 2,
            width: Some(80),
        };
        let line = h.to_line();
        assert!(
            line.starts_with("{\"command\":null,\"env\":{\"TERM\":\"xterm\"},\"height\":24,"),
            "{line}"
        );
        assert_eq!(Header::parse(&line).unwrap(), h);
    }

    #[test]
    fn a_header_must_arrive_whole_within_its_limit() {
        assert!(check_head(b"{\"version\": 2}\n[", 100).is_ok());
        assert!(check_head(b"{\"version\": 2}", 15).is_ok());
        let long = vec![b' '; MAX_HEADER_BYTES];
        let e = check_head(&long, MAX_HEADER_BYTES as u64 + 1).unwrap_err();
        assert!(e.contains("longer than"), "{e}");
        assert!(check_head(b"{\"version\": 2, \"title\": \"\xff\"}\n", 100).is_err());
    }
}
