//! Fuzzes the shim's principals decision (sshd's `%u %k %t %i %s`) with a fixed bundle: it
//! must not panic, and it allows only a login the bundle allows the certificate's user, named
//! in the certificate, by a certificate of the node-access CA valid now and matching `%i` and
//! `%s`. Input: byte 0 even: the arguments as they are, split at NUL bytes; odd: a
//! certificate described by `CertSpec` (signed here) and its arguments.
#![no_main]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use postern_core::api::{Bundle, LockEntry};
use postern_core::cert::CertValidator;
use postern_fuzz::decide::{decide, split_key_id, Decision};
use postern_fuzz::{fixture_ca, CertSpec, NOW};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, PublicKey};

fn bundle() -> Bundle {
    let mut allowed = BTreeMap::new();
    allowed.insert(
        "alice".parse().unwrap(),
        vec!["alice".parse().unwrap(), "deploy".parse().unwrap()],
    );
    allowed.insert("bob".parse().unwrap(), vec!["root".parse().unwrap()]);
    allowed.insert("mallory".parse().unwrap(), vec!["mallory".parse().unwrap()]);
    let lock = |id, target: &str, name: &str| LockEntry {
        id,
        target: target.into(),
        name: name.into(),
        expires: None,
        reason: "fuzz".into(),
    };
    Bundle {
        cluster: "c.test".parse().unwrap(),
        node: "web1".parse().unwrap(),
        labels: "env=dev".parse().unwrap(),
        generated_at: NOW - 10,
        max_bundle_age: "1h".parse().unwrap(),
        allowed,
        locks: vec![lock(1, "user", "mallory"), lock(2, "login", "root")],
        krl: String::new(),
        user_ca_keys: vec![],
        host_ca_keys: vec![],
        node_access_ca_keys: vec![fixture_ca().public_key().to_openssh().unwrap()],
        gateway_addresses: vec![],
        audit_checkpoint: None,
    }
}

#[derive(Debug, Arbitrary)]
struct Signed {
    cert: CertSpec,
    user: String,
    /// Key type: the certificate's own, or this text.
    key_type: Option<String>,
    /// `%i`: the certificate's own, or this text.
    key_id: Option<String>,
    /// `%s`: the certificate's own, or this number.
    serial: Option<u64>,
}

/// What must hold of every allow, checked apart from `decide`.
fn check_allow(login: &str, args: &[&OsStr]) {
    let bundle = bundle();
    assert_eq!(args.len(), 5);
    assert_eq!(
        args[0].as_bytes(),
        login.as_bytes(),
        "allowed another login"
    );
    let blob = base64::engine::general_purpose::STANDARD
        .decode(args[1].as_bytes())
        .expect("allowed a key that is not base64");
    let cert = Certificate::from_bytes(&blob).expect("allowed a key that is no certificate");
    let cas = [PublicKey::from_openssh(&bundle.node_access_ca_keys[0]).unwrap()];
    let valid = CertValidator {
        trusted: &cas,
        cert_type: CertType::User,
    }
    .validate(&cert, NOW)
    .expect("allowed a certificate the validator refuses");
    assert!(args[2].as_bytes().ends_with(b"-cert-v01@openssh.com"));
    assert_eq!(args[3].as_bytes(), cert.key_id().as_bytes());
    assert_eq!(args[4].as_bytes(), cert.serial().to_string().as_bytes());
    assert!(valid.principals.iter().any(|p| p.as_str() == login));
    let (user, _) = split_key_id(cert.key_id());
    assert_ne!(user, "mallory", "allowed a locked user");
    assert_ne!(login, "root", "allowed a locked login");
    let allowed = bundle
        .allowed
        .iter()
        .find(|(u, _)| u.as_str() == user)
        .expect("allowed a user the bundle does not name");
    assert!(allowed.1.iter().any(|l| l.as_str() == login));
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bundle = bundle();
    let owned: Vec<Vec<u8>>;
    if mode % 2 == 0 {
        owned = rest.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
    } else {
        let Ok(s) = Signed::arbitrary(&mut Unstructured::new(rest)) else {
            return;
        };
        let Some(cert) = s.cert.sign() else {
            return;
        };
        let blob = base64::engine::general_purpose::STANDARD.encode(cert.to_bytes().unwrap());
        owned = vec![
            s.user.into_bytes(),
            blob.into_bytes(),
            s.key_type
                .unwrap_or_else(|| "ssh-ed25519-cert-v01@openssh.com".into())
                .into_bytes(),
            s.key_id
                .unwrap_or_else(|| cert.key_id().to_owned())
                .into_bytes(),
            s.serial.unwrap_or(cert.serial()).to_string().into_bytes(),
        ];
    }
    let args: Vec<&OsStr> = owned.iter().map(|a| OsStr::from_bytes(a)).collect();
    match decide(Some(&bundle), &args, NOW) {
        Decision::Allow(login) => check_allow(login.as_str(), &args),
        Decision::Deny(why) => assert!(!why.is_empty()),
    }
    // Without a bundle, or with a stale one, nothing is allowed.
    assert!(matches!(decide(None, &args, NOW), Decision::Deny(_)));
    assert!(matches!(
        decide(Some(&bundle), &args, NOW + 3601),
        Decision::Deny(_)
    ));
});
