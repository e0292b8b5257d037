//! An encoder for OpenSSH key revocation lists (PROTOCOL.krl), which no maintained crate
//! provides. sshd reads the result as `RevokedKeys`; tests compare it with `ssh-keygen -Q`.
//!
//! Only what Postern revokes is encoded: certificate serials and key ids per CA, and explicit
//! public keys. Unsigned (sshd ignores KRL signatures).

use std::collections::{BTreeMap, BTreeSet};

/// "SSHKRL\n\0" (PROTOCOL.krl §1).
const KRL_MAGIC: u64 = 0x5353_484b_524c_0a00;
const KRL_FORMAT_VERSION: u32 = 1;
const SECTION_CERTIFICATES: u8 = 1;
const SECTION_EXPLICIT_KEY: u8 = 2;
const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_SERIAL_RANGE: u8 = 0x21;
const CERT_KEY_ID: u8 = 0x23;

/// A run of consecutive serials at least this long is written as a range subsection.
const MIN_RANGE: u64 = 3;

/// What one CA's certificates are revoked by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaRevocations {
    /// Revoked serials. Serial 0 cannot be revoked (OpenSSH ignores it), so it is dropped.
    pub serials: BTreeSet<u64>,
    /// Revoked key ids.
    pub key_ids: BTreeSet<String>,
}

/// A key revocation list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Krl {
    /// Increases with every change.
    pub version: u64,
    /// Unix time of generation.
    pub generated: u64,
    /// Free text.
    pub comment: String,
    /// Per CA (its public key blob, the SSH wire encoding): revoked certificates.
    pub certs: BTreeMap<Vec<u8>, CaRevocations>,
    /// Explicitly revoked public keys (wire blobs).
    pub keys: BTreeSet<Vec<u8>>,
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    // Every length here is far below 4 GiB (KRLs are built from database rows).
    put_u32(out, u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(s);
}
fn put_section(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(kind);
    put_string(out, body);
}

/// Splits sorted serials into runs `(first, last)`.
fn runs(serials: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in serials.iter().filter(|s| **s != 0) {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(s) => *hi = s,
            _ => out.push((s, s)),
        }
    }
    out
}

impl Krl {
    /// The binary KRL.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_u64(&mut out, KRL_MAGIC);
        put_u32(&mut out, KRL_FORMAT_VERSION);
        put_u64(&mut out, self.version);
        put_u64(&mut out, self.generated);
        put_u64(&mut out, 0); // flags
        put_string(&mut out, b""); // reserved
                                   // OpenSSH reads the comment as a C string (sshbuf_get_cstring): a NUL in it would make
                                   // the whole KRL invalid, and sshd then refuses every key. Found by fuzz/ (krl).
        let comment: Vec<u8> = self.comment.bytes().filter(|b| *b != 0).collect();
        put_string(&mut out, &comment);

        for (ca, rev) in &self.certs {
            if rev.serials.iter().all(|s| *s == 0) && rev.key_ids.iter().all(|id| id.contains('\0'))
            {
                continue;
            }
            let mut body = Vec::new();
            put_string(&mut body, ca);
            put_string(&mut body, b""); // reserved
            let mut list = Vec::new();
            for (lo, hi) in runs(&rev.serials) {
                if hi - lo + 1 >= MIN_RANGE {
                    let mut r = Vec::new();
                    put_u64(&mut r, lo);
                    put_u64(&mut r, hi);
                    put_section(&mut body, CERT_SERIAL_RANGE, &r);
                } else {
                    for s in lo..=hi {
                        put_u64(&mut list, s);
                    }
                }
            }
            if !list.is_empty() {
                put_section(&mut body, CERT_SERIAL_LIST, &list);
            }
            // Key ids are C strings to OpenSSH too, in the KRL and in a certificate (which does
            // not parse with a NUL in its key id): such an id revokes nothing that could log
            // in, and written out it would make the whole KRL invalid. Found by fuzz/ (krl).
            let ids: Vec<&String> = rev.key_ids.iter().filter(|id| !id.contains('\0')).collect();
            if !ids.is_empty() {
                let mut section = Vec::new();
                for id in ids {
                    put_string(&mut section, id.as_bytes());
                }
                put_section(&mut body, CERT_KEY_ID, &section);
            }
            put_section(&mut out, SECTION_CERTIFICATES, &body);
        }

        if !self.keys.is_empty() {
            let mut body = Vec::new();
            for k in &self.keys {
                put_string(&mut body, k);
            }
            put_section(&mut out, SECTION_EXPLICIT_KEY, &body);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_krl_is_just_the_header() {
        let k = Krl {
            version: 7,
            generated: 1,
            comment: "c".into(),
            ..Default::default()
        };
        let b = k.encode();
        assert_eq!(&b[..8], b"SSHKRL\n\0");
        assert_eq!(b.len(), 8 + 4 + 8 + 8 + 8 + 4 + 4 + 1);
    }

    #[test]
    fn runs_split_and_drop_serial_zero() {
        let s: BTreeSet<u64> = [0, 1, 2, 3, 5, 7, 8, u64::MAX].into_iter().collect();
        assert_eq!(runs(&s), [(1, 3), (5, 5), (7, 8), (u64::MAX, u64::MAX)]);
    }
}
