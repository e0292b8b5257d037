//! Shared pieces of the fuzz targets: the parsers that live in binary crates, compiled here from
//! their own source files, and the fixtures (CA keys of `core/tests/fixtures`) and input
//! decoding that several targets use.
//!
//! The gateway's scp and SFTP observers and the shim's principals decision depend on nothing of
//! their crates but `std`, `postern-core`, `ssh-key`, `ssh-encoding` and `base64`, so they are
//! compiled from their files (`#[path]`) rather than through the binaries' library targets:
//! that keeps the instrumented build to `postern-core`'s dependencies (not russh, tokio,
//! reqwest and aws-lc), which is what makes the fuzz step of `scripts/test` cheap. A module
//! that starts needing its crate (`crate::...`) fails this build, which `scripts/test` runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// `jump-proxy/src/scp/`: the exec command allowlist and the rcp observer (a `#[path]` file is
/// read as a `mod.rs`, so its `command`, `observer` and `wire` come from that directory).
#[allow(dead_code)]
#[path = "../../jump-proxy/src/scp/mod.rs"]
pub mod scp;

/// `jump-proxy/src/sftp.rs`: the SFTP observer.
#[allow(dead_code)]
#[path = "../../jump-proxy/src/sftp.rs"]
pub mod sftp;

/// `sshd-shim/src/decide.rs`: the principals command's decision.
#[allow(dead_code)]
#[path = "../../sshd-shim/src/decide.rs"]
pub mod decide;

/// `login-cli/src/cast.rs`: the asciicast reader of `postern play`.
#[allow(dead_code)]
#[path = "../../login-cli/src/cast.rs"]
pub mod cast;

use ssh_key::{PrivateKey, PublicKey};

use std::sync::OnceLock;

/// The fixture CA (`core/tests/fixtures/ca`, made by `gen.sh` with ssh-keygen).
pub fn fixture_ca() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| {
        PrivateKey::from_openssh(include_str!("../../core/tests/fixtures/ca")).unwrap()
    })
}

/// The second fixture CA.
pub fn fixture_other_ca() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| {
        PrivateKey::from_openssh(include_str!("../../core/tests/fixtures/other_ca")).unwrap()
    })
}

/// The fixture subject key.
pub fn fixture_subject() -> &'static PublicKey {
    static K: OnceLock<PublicKey> = OnceLock::new();
    K.get_or_init(|| {
        PublicKey::from_openssh(include_str!("../../core/tests/fixtures/subject.pub")).unwrap()
    })
}

/// Splits an observer input into steps: each is one tag byte (its low two bits: 0 bytes from
/// the client, 1 from the server's standard output, 2 from its standard error, 3 the end of
/// the channel), a big-endian u16 length and that many bytes (fewer at the end of the input).
pub fn steps(data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&tag, r)) = rest.split_first() {
        let (len, r) = match r {
            [a, b, r @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), r),
            _ => (0, &[][..]),
        };
        let n = len.min(r.len());
        out.push((tag & 3, &r[..n]));
        rest = &r[n..];
    }
    out
}

/// The same stream with consecutive bytes of one kind joined into one chunk: observers must
/// see a stream the same way however it is cut into chunks.
pub fn merged<'a>(steps: &[(u8, &'a [u8])]) -> Vec<(u8, Vec<u8>)> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    for &(tag, bytes) in steps {
        match out.last_mut() {
            Some((t, b)) if *t == tag && tag < 2 => b.extend_from_slice(bytes),
            _ => out.push((tag, bytes.to_vec())),
        }
    }
    out
}

/// A certificate described field by field, signed in the target: mutations of a signed blob
/// only ever reach the signature check, these reach everything after it.
#[derive(Debug, arbitrary::Arbitrary)]
pub struct CertSpec {
    /// Which CA signs: the fixture CA, the other one, or (odd values above) a key of its own.
    pub signer: u8,
    /// Host certificate instead of a user one.
    pub host: bool,
    /// Serial.
    pub serial: u64,
    /// Key id.
    pub key_id: String,
    /// Principals (none: valid for every principal).
    pub principals: Vec<String>,
    /// Validity window, relative to `NOW` in seconds.
    pub valid_after: i32,
    /// Validity window end, relative to `NOW`.
    pub valid_before: i32,
    /// Critical options.
    pub critical: Vec<(String, String)>,
    /// Extensions.
    pub extensions: Vec<(String, String)>,
}

/// The time the targets judge certificates at (2030-01-01, inside the fixtures' windows).
pub const NOW: u64 = 1_893_456_000;

fn rel(d: i32) -> u64 {
    NOW.saturating_add_signed(i64::from(d))
}

impl CertSpec {
    /// Signs it; `None` when ssh-key refuses the fields (duplicates, too long).
    pub fn sign(&self) -> Option<ssh_key::Certificate> {
        use ssh_key::certificate::{Builder, CertType};
        let own;
        let signer = match self.signer % 3 {
            0 => fixture_ca(),
            1 => fixture_other_ca(),
            _ => {
                own = PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(
                    &[self.signer; 32],
                ));
                &own
            }
        };
        let mut b = Builder::new(
            vec![7u8; 32],
            fixture_subject().key_data().clone(),
            rel(self.valid_after),
            rel(self.valid_before),
        )
        .ok()?;
        b.serial(self.serial).ok()?;
        b.cert_type(if self.host {
            CertType::Host
        } else {
            CertType::User
        })
        .ok()?;
        b.key_id(self.key_id.clone()).ok()?;
        if self.principals.is_empty() {
            b.all_principals_valid().ok()?;
        }
        for p in self.principals.iter().take(300) {
            b.valid_principal(p.clone()).ok()?;
        }
        for (k, v) in self.critical.iter().take(8) {
            b.critical_option(k.clone(), v.clone()).ok()?;
        }
        for (k, v) in self.extensions.iter().take(8) {
            b.extension(k.clone(), v.clone()).ok()?;
        }
        b.sign(signer).ok()
    }
}
