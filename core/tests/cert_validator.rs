//! The strict validator against certificates made by real `ssh-keygen` (fixtures/gen.sh),
//! and certificates we issue checked by `ssh-keygen -L`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use postern_core::cert::{
    issue_user_cert, CertError, CertValidator, IssueParams, KeySigner, Signer, CLOCK_SKEW_SECS,
};
use postern_core::{Policy, Username};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, PrivateKey, PublicKey};

/// 2030-01-01T00:00:00Z, inside every fixture's window except expired/not_yet.
const NOW: u64 = 1_893_456_000;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn cert(name: &str) -> Certificate {
    Certificate::read_file(&fixture(&format!("{name}.cert"))).unwrap()
}

fn ca() -> PublicKey {
    PublicKey::read_openssh_file(fixture("ca.pub")).unwrap()
}

fn user_validator(cas: &[PublicKey]) -> CertValidator<'_> {
    CertValidator {
        trusted: cas,
        cert_type: CertType::User,
    }
}

#[test]
fn accepts_valid_user_cert_from_ssh_keygen() {
    let cas = [ca()];
    let v = user_validator(&cas).validate(&cert("valid"), NOW).unwrap();
    let p: Vec<_> = v.principals.iter().map(|p| p.as_str()).collect();
    assert_eq!(p, ["alice", "deploy"]);
    assert_eq!(v.key_id.as_str(), "alice");
    assert_eq!(v.cert.serial(), 7);
    // ssh-keygen's default extensions all map to permits.
    assert_eq!(v.permits.len(), 5);
}

#[test]
fn rejects_expired() {
    let cas = [ca()];
    let e = user_validator(&cas)
        .validate(&cert("expired"), NOW)
        .unwrap_err();
    assert!(matches!(e, CertError::Expired { .. }), "{e}");
}

#[test]
fn rejects_at_exact_valid_before() {
    let cas = [ca()];
    let c = cert("valid");
    let e = user_validator(&cas)
        .validate(&c, c.valid_before())
        .unwrap_err();
    assert!(matches!(e, CertError::Expired { .. }), "{e}");
    assert!(user_validator(&cas)
        .validate(&c, c.valid_before() - 1)
        .is_ok());
}

#[test]
fn rejects_not_yet_valid() {
    let cas = [ca()];
    let e = user_validator(&cas)
        .validate(&cert("not_yet"), NOW)
        .unwrap_err();
    assert!(matches!(e, CertError::NotYetValid { .. }), "{e}");
}

#[test]
fn rejects_host_cert_as_user_cert() {
    let cas = [ca()];
    let e = user_validator(&cas)
        .validate(&cert("host"), NOW)
        .unwrap_err();
    assert!(matches!(e, CertError::WrongType { .. }), "{e}");
}

#[test]
fn accepts_host_cert_as_host_cert() {
    let cas = [ca()];
    let v = CertValidator {
        trusted: &cas,
        cert_type: CertType::Host,
    };
    assert!(v.validate(&cert("host"), NOW).is_ok());
    let e = v.validate(&cert("valid"), NOW).unwrap_err();
    assert!(matches!(e, CertError::WrongType { .. }), "{e}");
}

#[test]
fn rejects_empty_principals() {
    let cas = [ca()];
    let e = user_validator(&cas)
        .validate(&cert("no_principals"), NOW)
        .unwrap_err();
    assert_eq!(e, CertError::NoPrincipals);
}

#[test]
fn rejects_wrong_ca() {
    let cas = [ca()];
    let e = user_validator(&cas)
        .validate(&cert("wrong_ca"), NOW)
        .unwrap_err();
    assert!(matches!(e, CertError::UntrustedCa { .. }), "{e}");
    // And with no trusted CA at all.
    let e = user_validator(&[])
        .validate(&cert("valid"), NOW)
        .unwrap_err();
    assert!(matches!(e, CertError::UntrustedCa { .. }), "{e}");
}

#[test]
fn rejects_unknown_critical_option() {
    let cas = [ca()];
    let e = user_validator(&cas)
        .validate(&cert("unknown_crit"), NOW)
        .unwrap_err();
    assert!(matches!(e, CertError::UnknownCriticalOption { .. }), "{e}");
}

#[test]
fn accepts_known_critical_option_and_reports_it() {
    let cas = [ca()];
    let v = user_validator(&cas)
        .validate(&cert("force_cmd"), NOW)
        .unwrap();
    assert_eq!(
        v.critical_options.get("force-command").map(String::as_str),
        Some("/bin/true")
    );
}

#[test]
fn rejects_unsafe_principal() {
    let cas = [ca()];
    let e = user_validator(&cas)
        .validate(&cert("bad_principal"), NOW)
        .unwrap_err();
    assert!(matches!(e, CertError::BadPrincipal(_)), "{e}");
}

#[test]
fn accepts_256_principals() {
    let cas = [ca()];
    let v = user_validator(&cas)
        .validate(&cert("max_principals"), NOW)
        .unwrap();
    assert_eq!(v.principals.len(), 256);
}

#[test]
fn rejects_tampered_signature() {
    let cas = [ca()];
    let mut bytes = cert("valid").to_bytes().unwrap();
    // Flip a bit inside the key id ("alice"), which the signature covers.
    let pos = bytes.windows(5).position(|w| w == b"alice").unwrap();
    bytes[pos] ^= 0x01;
    let tampered = Certificate::from_bytes(&bytes).unwrap();
    let e = user_validator(&cas).validate(&tampered, NOW).unwrap_err();
    assert_eq!(e, CertError::BadSignature);
}

#[test]
fn rejects_ca_key_that_is_a_certificate() {
    // Replace the signature key of a valid certificate by a whole certificate blob.
    let valid = cert("valid");
    let ca_blob = ca().to_bytes().unwrap();
    let host_blob = cert("host").to_bytes().unwrap();
    let bytes = valid.to_bytes().unwrap();
    let mut framed_ca = (ca_blob.len() as u32).to_be_bytes().to_vec();
    framed_ca.extend_from_slice(&ca_blob);
    let pos = bytes
        .windows(framed_ca.len())
        .rposition(|w| w == framed_ca.as_slice())
        .unwrap();
    let mut crafted = bytes[..pos].to_vec();
    crafted.extend_from_slice(&(host_blob.len() as u32).to_be_bytes());
    crafted.extend_from_slice(&host_blob);
    crafted.extend_from_slice(&bytes[pos + framed_ca.len()..]);
    let cas = [ca()];
    match Certificate::from_bytes(&crafted) {
        // Refusing to decode it at all is as good as refusing it.
        Err(_) => {}
        Ok(c) => {
            let e = user_validator(&cas).validate(&c, NOW).unwrap_err();
            assert_eq!(e, CertError::CaIsCertificate);
        }
    }
}

fn issue(policy: &str, user: &str) -> (Certificate, PublicKey, u64) {
    let ca_key = PrivateKey::read_openssh_file(fixture("ca")).unwrap();
    let signer = KeySigner::new(ca_key);
    let subject = PublicKey::read_openssh_file(fixture("subject.pub")).unwrap();
    let policy = Policy::parse(policy, "p").unwrap();
    let decision = policy
        .decide_login(&user.parse::<Username>().unwrap(), None)
        .unwrap();
    let now = 1_800_000_000;
    let c = issue_user_cert(
        &signer,
        &decision.approval,
        &subject,
        IssueParams { serial: 42, now },
    )
    .unwrap();
    (c, signer.public_key().clone(), now)
}

const POLICY: &str = r#"
[defaults]
user_cert_ttl = "2h"
[roles.dev]
logins = ["{user}", "deploy"]
permit = ["pty"]
[users.alice]
roles = ["dev"]
"#;

#[test]
fn issued_cert_carries_what_the_policy_approved() {
    let (c, ca_pub, now) = issue(POLICY, "alice");
    assert_eq!(c.serial(), 42);
    assert_eq!(c.key_id(), "alice");
    assert_eq!(c.valid_principals(), ["alice", "deploy"]);
    assert_eq!(c.valid_after(), now - CLOCK_SKEW_SECS);
    assert_eq!(c.valid_before(), now + 7200);
    assert!(c.extensions().contains_key("permit-pty"));
    assert!(!c.extensions().contains_key("permit-port-forwarding"));
    let cas = [ca_pub];
    user_validator(&cas).validate(&c, now).unwrap();
}

#[test]
fn issued_cert_is_read_by_ssh_keygen() {
    let (c, _, _) = issue(POLICY, "alice");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id-cert.pub");
    std::fs::write(&path, c.to_openssh().unwrap()).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("ssh-keygen is installed (scripts/test installs openssh-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
        "{text}"
    );
    assert!(text.contains("Key ID: \"alice\""), "{text}");
    assert!(text.contains("Serial: 42"), "{text}");
    assert!(text.contains("permit-pty"), "{text}");
    let principals: Vec<_> = text
        .lines()
        .skip_while(|l| !l.contains("Principals:"))
        .skip(1)
        .take_while(|l| !l.contains("Critical Options:"))
        .map(str::trim)
        .collect();
    assert_eq!(principals, ["alice", "deploy"]);
}
