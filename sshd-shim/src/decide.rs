//! The `AuthorizedPrincipalsCommand` decision: a pure function of the local bundle, sshd's
//! arguments and the time. sshd runs it as `principals %u %k %t %i %s` after it checked the
//! certificate's signature against `TrustedUserCAKeys`; the shim checks again (defence in depth)
//! and prints the login only after a final allow.

use std::ffi::OsStr;

use base64::Engine;
use postern_core::api::Bundle;
use postern_core::cert::CertValidator;
use postern_core::{Login, Username};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, PublicKey};

/// The most bytes of one argument the shim looks at; anything longer is refused.
pub const MAX_ARG: usize = 16 * 1024;

/// The outcome: `Allow(login)` prints the login; `Deny(reason)` prints nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Print this login.
    Allow(Login),
    /// Refuse, with the reason for the log.
    Deny(String),
}

fn text<'a>(arg: &'a OsStr, what: &str) -> Result<&'a str, String> {
    if arg.len() > MAX_ARG {
        return Err(format!("{what} is longer than {MAX_ARG} bytes"));
    }
    arg.to_str().ok_or_else(|| format!("{what} is not UTF-8"))
}

/// The Postern user and session a key id names: `USER` or `USER/SESSION`.
pub fn split_key_id(key_id: &str) -> (&str, Option<&str>) {
    match key_id.split_once('/') {
        Some((u, s)) => (u, Some(s)),
        None => (key_id, None),
    }
}

/// Decides one login. `args` are sshd's `%u %k %t %i %s`.
pub fn decide(bundle: Option<&Bundle>, args: &[&OsStr], now: u64) -> Decision {
    match decide_inner(bundle, args, now) {
        Ok(login) => Decision::Allow(login),
        Err(reason) => Decision::Deny(reason),
    }
}

fn decide_inner(bundle: Option<&Bundle>, args: &[&OsStr], now: u64) -> Result<Login, String> {
    let [user, key, key_type, key_id, serial] = args else {
        return Err(format!(
            "expected 5 arguments (%u %k %t %i %s), got {}",
            args.len()
        ));
    };
    let bundle = bundle.ok_or("no valid policy bundle (run `postern-shim sync`)")?;
    let age = now.saturating_sub(bundle.generated_at);
    if age > bundle.max_bundle_age.as_secs() {
        return Err(format!(
            "policy bundle is {age}s old, older than max_bundle_age {}; is `postern-shim sync` running?",
            bundle.max_bundle_age
        ));
    }
    let login: Login = text(user, "user")?.parse().map_err(|e| format!("{e}"))?;
    let key_type = text(key_type, "key type")?;
    if !key_type.ends_with("-cert-v01@openssh.com") {
        return Err(format!("key type {key_type:?} is not a certificate"));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(text(key, "key")?)
        .map_err(|_| "key is not base64".to_owned())?;
    let cert =
        Certificate::from_bytes(&blob).map_err(|e| format!("certificate does not parse: {e}"))?;
    let cas = bundle
        .node_access_ca_keys
        .iter()
        .filter_map(|l| PublicKey::from_openssh(l).ok())
        .collect::<Vec<_>>();
    let valid = CertValidator {
        trusted: &cas,
        cert_type: CertType::User,
    }
    .validate(&cert, now)
    .map_err(|e| format!("certificate refused: {e}"))?;
    // sshd's %i and %s must be the certificate's own.
    if text(key_id, "key id")? != cert.key_id() {
        return Err("key id argument does not match the certificate".into());
    }
    if text(serial, "serial")?.parse::<u64>().ok() != Some(cert.serial()) {
        return Err("serial argument does not match the certificate".into());
    }
    let (user_part, _session) = split_key_id(valid.key_id.as_str());
    let pu: Username = user_part.parse().map_err(|e| format!("{e}"))?;
    let subject = postern_core::api::LockSubject {
        user: Some(pu.as_str()),
        login: Some(login.as_str()),
        node: Some(bundle.node.as_str()),
    };
    if let Some(lock) = postern_core::api::lock_for(&bundle.locks, &subject, now) {
        return Err(format!(
            "locked ({} {}): {}",
            lock.target, lock.name, lock.reason
        ));
    }
    if !valid
        .principals
        .iter()
        .any(|p| p.as_str() == login.as_str())
    {
        return Err(format!("certificate does not carry login {login}"));
    }
    let allowed = bundle
        .allowed
        .get(&pu)
        .ok_or_else(|| format!("user {pu} may not log in to this server"))?;
    if !allowed.contains(&login) {
        return Err(format!(
            "user {pu} may not log in as {login} on this server (labels {})",
            bundle.labels
        ));
    }
    Ok(login)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    use postern_core::api::LockEntry;
    use postern_core::cert::{generate_ed25519, issue_user_cert, IssueParams, KeySigner, Signer};
    use postern_core::Policy;

    const NOW: u64 = 1_800_000_000;

    struct Fixture {
        bundle: Bundle,
        cert: Certificate,
    }

    fn fixture(key_id_user: &str, logins: &[&str]) -> Fixture {
        let ca = KeySigner::new(generate_ed25519("ca").unwrap());
        let key = generate_ed25519("k").unwrap();
        let policy = Policy::parse("[defaults]\n", "p").unwrap();
        let d = policy
            .decide_admin_signing(
                &key_id_user.parse().unwrap(),
                logins.iter().map(|l| l.parse().unwrap()).collect(),
                None,
            )
            .unwrap();
        let cert = issue_user_cert(
            &ca,
            &d.approval,
            key.public_key(),
            IssueParams {
                serial: 77,
                now: NOW,
            },
        )
        .unwrap();
        let mut allowed = BTreeMap::new();
        allowed.insert("alice".parse().unwrap(), vec!["deploy".parse().unwrap()]);
        let bundle = Bundle {
            cluster: "c.test".parse().unwrap(),
            node: "web1".parse().unwrap(),
            labels: "env=dev".parse().unwrap(),
            generated_at: NOW - 10,
            max_bundle_age: "1h".parse().unwrap(),
            allowed,
            locks: vec![],
            krl: String::new(),
            user_ca_keys: vec![],
            host_ca_keys: vec![],
            node_access_ca_keys: vec![ca.public_key().to_openssh().unwrap()],
            gateway_addresses: vec![],
            audit_checkpoint: None,
        };
        Fixture { bundle, cert }
    }

    fn args(f: &Fixture, user: &str) -> Vec<OsString> {
        let blob = base64::engine::general_purpose::STANDARD.encode(f.cert.to_bytes().unwrap());
        vec![
            user.into(),
            blob.into(),
            "ssh-ed25519-cert-v01@openssh.com".into(),
            f.cert.key_id().into(),
            f.cert.serial().to_string().into(),
        ]
    }

    fn run(b: Option<&Bundle>, a: &[OsString], now: u64) -> Decision {
        let refs: Vec<&OsStr> = a.iter().map(|s| s.as_os_str()).collect();
        decide(b, &refs, now)
    }

    #[test]
    fn accepts_allowed_login() {
        let f = fixture("alice", &["deploy"]);
        assert_eq!(
            run(Some(&f.bundle), &args(&f, "deploy"), NOW),
            Decision::Allow("deploy".parse().unwrap())
        );
    }

    #[test]
    fn rejects_login_not_in_the_slice_or_not_in_the_cert() {
        let f = fixture("alice", &["deploy", "root"]);
        assert!(matches!(
            run(Some(&f.bundle), &args(&f, "root"), NOW),
            Decision::Deny(_)
        ));
        let f = fixture("alice", &["other"]);
        assert!(matches!(
            run(Some(&f.bundle), &args(&f, "deploy"), NOW),
            Decision::Deny(_)
        ));
        let f = fixture("bob", &["deploy"]);
        assert!(matches!(
            run(Some(&f.bundle), &args(&f, "deploy"), NOW),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn rejects_missing_or_stale_bundle() {
        let f = fixture("alice", &["deploy"]);
        assert!(matches!(
            run(None, &args(&f, "deploy"), NOW),
            Decision::Deny(_)
        ));
        let Decision::Deny(why) = run(Some(&f.bundle), &args(&f, "deploy"), NOW + 7200) else {
            panic!()
        };
        assert!(why.contains("max_bundle_age"), "{why}");
    }

    #[test]
    fn rejects_locked_user_login_and_node() {
        for (target, name) in [
            ("user", "alice"),
            ("login", "deploy"),
            ("node", "web1"),
            ("mystery", "x"),
        ] {
            let mut f = fixture("alice", &["deploy"]);
            f.bundle.locks.push(LockEntry {
                id: 1,
                target: target.into(),
                name: name.into(),
                expires: None,
                reason: "r".into(),
            });
            assert!(
                matches!(
                    run(Some(&f.bundle), &args(&f, "deploy"), NOW),
                    Decision::Deny(_)
                ),
                "{target}"
            );
        }
        // An expired lock no longer applies.
        let mut f = fixture("alice", &["deploy"]);
        f.bundle.locks.push(LockEntry {
            id: 1,
            target: "user".into(),
            name: "alice".into(),
            expires: Some(NOW - 1),
            reason: "r".into(),
        });
        assert!(matches!(
            run(Some(&f.bundle), &args(&f, "deploy"), NOW),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn accepts_key_id_with_session_suffix() {
        let f = fixture("alice", &["deploy"]);
        assert_eq!(split_key_id("alice/s-123"), ("alice", Some("s-123")));
        assert!(matches!(
            run(Some(&f.bundle), &args(&f, "deploy"), NOW),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn rejects_hostile_arguments_without_panicking() {
        let f = fixture("alice", &["deploy"]);
        let good = args(&f, "deploy");
        let hostile: Vec<OsString> = vec![
            "deploy root".into(),
            "'deploy'".into(),
            "$(id)".into(),
            "deploy\nroot".into(),
            "\"".into(),
            OsString::from_vec(vec![0xff, 0xfe, b'a']),
            "a".repeat(64 * 1024).into(),
            "".into(),
        ];
        for h in &hostile {
            for pos in 0..5 {
                let mut a = good.clone();
                a[pos] = h.clone();
                assert!(
                    matches!(run(Some(&f.bundle), &a, NOW), Decision::Deny(_)),
                    "pos {pos} {h:?}"
                );
            }
        }
        for n in [0, 4, 6] {
            let mut a = good.clone();
            a.resize(n, "x".into());
            assert!(matches!(run(Some(&f.bundle), &a, NOW), Decision::Deny(_)));
        }
    }

    #[test]
    fn rejects_certificate_from_another_ca() {
        let f = fixture("alice", &["deploy"]);
        let mut other = fixture("alice", &["deploy"]);
        other.bundle.node_access_ca_keys = f.bundle.node_access_ca_keys.clone();
        let Decision::Deny(why) = run(Some(&other.bundle), &args(&other, "deploy"), NOW) else {
            panic!()
        };
        assert!(why.contains("trusted CA"), "{why}");
    }
}
