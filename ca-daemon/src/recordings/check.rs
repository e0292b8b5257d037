//! The checks of what a gateway sends before anything is stored: the metadata, the id, the
//! SHA-256's form, and (through postern-core's `cast`) the asciicast v2 header.

use postern_core::api::{RecordingMeta, RecordingUpload};
use postern_core::cast::check_cast;

use super::Outcome;
use crate::gateway::valid_session_id;
use crate::service::Refusal;

/// Checks the metadata every upload carries.
pub(super) fn check_meta(m: &RecordingMeta) -> Outcome<()> {
    if !valid_session_id(&m.id) {
        return Err(Refusal::BadRequest(
            "meta.id must be 1 to 64 characters of a-z, 0-9 and -".into(),
        ));
    }
    if m.ended_at < m.started_at {
        return Err(Refusal::BadRequest(
            "meta.ended_at is before meta.started_at".into(),
        ));
    }
    Ok(())
}

pub(super) fn check_upload(up: &RecordingUpload) -> Outcome<()> {
    let m = &up.meta;
    check_meta(m)?;
    if m.bytes != up.cast.len() as u64 {
        return Err(Refusal::BadRequest(format!(
            "meta.bytes is {} but the cast has {} bytes",
            m.bytes,
            up.cast.len()
        )));
    }
    check_cast(&up.cast).map_err(Refusal::BadRequest)
}

/// Whether `s` is a SHA-256 in lowercase hex.
pub(super) fn valid_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(super) fn bad_id() -> Refusal {
    Refusal::BadRequest("a recording id is 1 to 64 characters of a-z, 0-9 and -".into())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::sha;
    use super::*;

    #[test]
    fn accepts_only_asciicast_v2_headers() {
        assert!(check_cast("{\"version\": 2, \"width\": 80}\n[0.1, \"o\", \"hi\"]\n").is_ok());
        assert!(check_cast("{\"version\": 2}").is_ok());
        assert!(check_cast("{\"version\": 1}\n").is_err());
        assert!(check_cast("[0.1, \"o\", \"hi\"]\n").is_err());
        assert!(check_cast("").is_err());
    }

    #[test]
    fn recording_ids_and_hashes_are_checked() {
        assert!(valid_sha256(&sha(b"x")));
        assert!(!valid_sha256(&sha(b"x").to_uppercase()));
        assert!(!valid_sha256("abc"));
        assert!(!valid_sha256(&"g".repeat(64)));
        for bad in ["", "../etc/passwd", "a/b", "A", "a.cast", &"a".repeat(65)] {
            assert!(!valid_session_id(bad), "{bad:?}");
        }
    }
}
