//! An encoder for OpenSSH key revocation lists (PROTOCOL.krl), which no maintained crate
//! provides. sshd reads the result as `RevokedKeys`; tests compare it with `ssh-keygen -Q`.
//!
//! Only what Postern revokes is encoded: certificate serials and key ids per CA, and explicit
//! public keys. Unsigned (sshd ignores KRL signatures).

use std::collections::{BTreeMap, BTreeSet};

use ssh_encoding::{Encode, Error};

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

/// A section or subsection: its type byte, then its body as an SSH string (PROTOCOL.krl §2).
fn put_section(out: &mut Vec<u8>, kind: u8, body: &[u8]) -> Result<(), Error> {
    kind.encode(out)?;
    body.encode(out)
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
    /// The binary KRL. SSH wire integers and strings are written by `ssh-encoding`; it fails
    /// only on a string of 4 GiB or more, which no KRL built from database rows holds.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        KRL_MAGIC.encode(&mut out)?;
        KRL_FORMAT_VERSION.encode(&mut out)?;
        self.version.encode(&mut out)?;
        self.generated.encode(&mut out)?;
        0u64.encode(&mut out)?; // flags
        b"".as_slice().encode(&mut out)?; // reserved
                                          // OpenSSH reads the comment as a C string (sshbuf_get_cstring): a NUL in it would make
                                          // the whole KRL invalid, and sshd then refuses every key. Found by fuzz/ (krl).
        let comment: Vec<u8> = self.comment.bytes().filter(|b| *b != 0).collect();
        comment.encode(&mut out)?;

        for (ca, rev) in &self.certs {
            if rev.serials.iter().all(|s| *s == 0) && rev.key_ids.iter().all(|id| id.contains('\0'))
            {
                continue;
            }
            let mut body = Vec::new();
            ca.encode(&mut body)?;
            b"".as_slice().encode(&mut body)?; // reserved
            let mut list = Vec::new();
            for (lo, hi) in runs(&rev.serials) {
                if hi - lo + 1 >= MIN_RANGE {
                    let mut r = Vec::new();
                    lo.encode(&mut r)?;
                    hi.encode(&mut r)?;
                    put_section(&mut body, CERT_SERIAL_RANGE, &r)?;
                } else {
                    for s in lo..=hi {
                        s.encode(&mut list)?;
                    }
                }
            }
            if !list.is_empty() {
                put_section(&mut body, CERT_SERIAL_LIST, &list)?;
            }
            // Key ids are C strings to OpenSSH too, in the KRL and in a certificate (which does
            // not parse with a NUL in its key id): such an id revokes nothing that could log
            // in, and written out it would make the whole KRL invalid. Found by fuzz/ (krl).
            let ids: Vec<&String> = rev.key_ids.iter().filter(|id| !id.contains('\0')).collect();
            if !ids.is_empty() {
                let mut section = Vec::new();
                for id in ids {
                    id.encode(&mut section)?;
                }
                put_section(&mut body, CERT_KEY_ID, &section)?;
            }
            put_section(&mut out, SECTION_CERTIFICATES, &body)?;
        }

        if !self.keys.is_empty() {
            let mut body = Vec::new();
            for k in &self.keys {
                k.encode(&mut body)?;
            }
            put_section(&mut out, SECTION_EXPLICIT_KEY, &body)?;
        }
        Ok(out)
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
        let b = k.encode().unwrap();
        assert_eq!(&b[..8], b"SSHKRL\n\0");
        assert_eq!(b.len(), 8 + 4 + 8 + 8 + 8 + 4 + 4 + 1);
    }

    #[test]
    fn runs_split_and_drop_serial_zero() {
        let s: BTreeSet<u64> = [0, 1, 2, 3, 5, 7, 8, u64::MAX].into_iter().collect();
        assert_eq!(runs(&s), [(1, 3), (5, 5), (7, 8), (u64::MAX, u64::MAX)]);
    }

    /// The bytes of the hand-written encoder this one replaced, for a KRL with every kind of
    /// section: ssh-encoding must write the same wire integers and strings.
    #[test]
    fn encodes_byte_for_byte_as_before() {
        let mut k = Krl {
            version: 7,
            generated: 1_700_000_000,
            comment: "c\0x".into(),
            ..Default::default()
        };
        k.certs.insert(
            b"CA-ONE".to_vec(),
            CaRevocations {
                serials: [0, 1, 2, 3, 5, 7, 8, u64::MAX].into_iter().collect(),
                key_ids: ["alice/1".to_owned(), "bad\0id".to_owned()]
                    .into_iter()
                    .collect(),
            },
        );
        k.certs.insert(
            b"CA-TWO".to_vec(),
            CaRevocations {
                serials: [0].into_iter().collect(),
                key_ids: ["x\0".to_owned()].into_iter().collect(),
            },
        );
        k.keys = [b"K1".to_vec(), b"K22".to_vec()].into_iter().collect();
        let expected = concat!(
            "5353484b524c0a00000000010000000000000007000000006553f1000000000000000000",
            "0000000000000002637801000000580000000643412d4f4e450000000021000000100000",
            "000000000001000000000000000320000000200000000000000005000000000000000700",
            "00000000000008ffffffffffffffff230000000b00000007616c6963652f31020000000d",
            "000000024b31000000034b3232",
        );
        assert_eq!(hex::encode(k.encode().unwrap()), expected);
    }
}
