//! Fuzzes certificate parsing and `CertValidator`, the one strict validator: whatever it
//! accepts has the expected type, a trusted CA that is not itself a certificate, a valid
//! signature, a window holding now, 1 to 256 principals and only known critical options.
//! Input: byte 0 modulo 3: 0 a certificate blob, 1 OpenSSH text, 2 a `CertSpec` (signed here);
//! bit 2 of byte 0: validate as a host certificate.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use postern_core::cert::CertValidator;
use postern_fuzz::{fixture_ca, fixture_other_ca, CertSpec, NOW};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, HashAlg};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let cert = match mode % 3 {
        0 => Certificate::from_bytes(rest).ok(),
        1 => std::str::from_utf8(rest)
            .ok()
            .and_then(|t| Certificate::from_openssh(t).ok()),
        _ => CertSpec::arbitrary(&mut Unstructured::new(rest))
            .ok()
            .and_then(|s| s.sign()),
    };
    let Some(cert) = cert else {
        return;
    };
    let cert_type = if mode & 4 != 0 {
        CertType::Host
    } else {
        CertType::User
    };
    let trusted = [fixture_ca().public_key().clone()];
    let v = CertValidator {
        trusted: &trusted,
        cert_type,
    };
    for now in [NOW, cert.valid_after(), cert.valid_before()] {
        let Ok(valid) = v.validate(&cert, now) else {
            continue;
        };
        assert_eq!(cert.cert_type(), cert_type);
        assert!(!cert.signature_key().is_certificate());
        assert_eq!(
            cert.signature_key().fingerprint(HashAlg::Sha256),
            trusted[0].fingerprint(HashAlg::Sha256)
        );
        assert!(cert.valid_after() <= now && now < cert.valid_before());
        assert!((1..=256).contains(&valid.principals.len()));
        assert_eq!(valid.principals.len(), cert.valid_principals().len());
        assert_eq!(valid.key_id.as_str(), cert.key_id());
        for name in valid.critical_options.keys() {
            assert_eq!(cert_type, CertType::User);
            assert!(["force-command", "source-address", "verify-required"].contains(&name.as_str()));
        }
    }
    // Another CA's certificates are never accepted.
    let other = [fixture_other_ca().public_key().clone()];
    if cert.signature_key().fingerprint(HashAlg::Sha256) != other[0].fingerprint(HashAlg::Sha256) {
        assert!(CertValidator {
            trusted: &other,
            cert_type,
        }
        .validate(&cert, NOW)
        .is_err());
    }
});
