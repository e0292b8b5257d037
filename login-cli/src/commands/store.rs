//! Checks a certificate response from posternd and writes it into the cluster directory.
//!
//! The response is parsed before anything is written: the SSH certificate must be a user
//! certificate for our own key and user, the service CA must be the pinned one, and host CA
//! keys and the gateway must parse, so that the files written are well-formed OpenSSH input.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context as _};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, LineEnding, PrivateKey, PublicKey};

use postern_core::api::CertResponse;
use postern_core::{ClusterName, Login, Permit, Ttl, Username};

use crate::files;
use crate::profile::{self, Layout, Profile};
use crate::render::{self, ClusterPaths, Gateway};
use postern_api_client::{CaPin, CaUrls};

use super::Summary;

/// A certificate response that passed every check. Holds no secret: certificates and
/// public keys only.
#[derive(Debug)]
pub struct Issued {
    /// The cluster (a well-formed DNS name).
    pub cluster: ClusterName,
    /// The user.
    pub user: Username,
    /// The SSH certificate, re-encoded as one line.
    ssh_certificate: String,
    /// The X.509 client certificate (PEM).
    x509_certificate: String,
    /// The service CA (PEM).
    x509_ca: String,
    /// Host CA keys.
    host_ca_keys: Vec<PublicKey>,
    /// The gateways, in order (none, one, or the cluster's several).
    pub gateways: Vec<Gateway>,
    /// Principals.
    pub principals: Vec<Login>,
    /// Permits.
    pub permits: Vec<Permit>,
    /// The certificate's `valid_before`.
    pub valid_before: u64,
    /// Renewal deadline.
    pub renew_until: u64,
    /// Granted lifetime.
    pub ttl: Ttl,
    /// Requested lifetime, when capped.
    pub capped_from: Option<Ttl>,
}

fn pem_certs(pem: &str, what: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the server sent an unreadable {what}"))?;
    ensure!(!certs.is_empty(), "the server sent no {what}");
    Ok(certs)
}

/// Checks `resp` against what was asked: `user`, our `key`, the `pin`.
pub fn check(
    resp: CertResponse,
    user: &Username,
    key: &PublicKey,
    pin: CaPin,
) -> anyhow::Result<Issued> {
    let cluster = postern_core::names::parse_cluster_name(resp.cluster.as_str())
        .context("the server sent an invalid cluster name")?;
    ensure!(
        &resp.user == user,
        "the server issued a certificate for user {} instead of {user}",
        resp.user
    );
    let cert = Certificate::from_openssh(resp.ssh_certificate.trim())
        .context("the server sent an unreadable SSH certificate")?;
    ensure!(
        cert.cert_type() == CertType::User,
        "the server sent a host certificate instead of a user certificate"
    );
    ensure!(
        cert.public_key() == key.key_data(),
        "the server sent a certificate for a different key"
    );
    cert.verify_signature()
        .context("the SSH certificate's signature does not verify")?;
    let ssh_certificate = cert.to_openssh().context("encoding the SSH certificate")?;

    pem_certs(&resp.x509_certificate, "X.509 client certificate")?;
    let ca_ders = pem_certs(&resp.x509_ca, "service CA certificate")?;
    ensure!(
        ca_ders.iter().any(|d| CaPin::of_der(d) == pin),
        "the server sent a service CA certificate that does not match the pin {pin}"
    );

    // The comment of a key line is free text; a line break in it would be read by ssh as
    // another known_hosts line, so such a key is refused outright (and comments are dropped
    // when rendering anyway).
    ensure!(
        !resp
            .host_ca_keys
            .iter()
            .any(|k| k.trim().chars().any(char::is_control)),
        "the server sent a host CA key with control characters"
    );
    let host_ca_keys = resp
        .host_ca_keys
        .iter()
        .map(|k| PublicKey::from_openssh(k.trim()))
        .collect::<Result<Vec<_>, _>>()
        .context("the server sent an unreadable host CA key")?;
    ensure!(
        !host_ca_keys.is_empty(),
        "the server sent no host CA key, so servers could not be authenticated"
    );
    // `gateways` lists them all when the cluster has several; `gateway` is the first (and
    // the only one a CA of an earlier version sends).
    ensure!(
        resp.gateways.len() <= MAX_GATEWAYS,
        "the server sent {} gateway addresses, more than the {MAX_GATEWAYS} postern writes",
        resp.gateways.len()
    );
    let gateways = if resp.gateways.is_empty() {
        resp.gateway
            .iter()
            .map(|g| Gateway::parse(g))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        resp.gateways
            .iter()
            .map(|g| Gateway::parse(g))
            .collect::<Result<Vec<_>, _>>()?
    };

    Ok(Issued {
        cluster,
        user: resp.user,
        ssh_certificate,
        x509_certificate: resp.x509_certificate,
        x509_ca: resp.x509_ca,
        host_ca_keys,
        gateways,
        principals: resp.principals,
        permits: resp.permits,
        valid_before: cert.valid_before(),
        renew_until: resp.renew_until,
        ttl: resp.ttl,
        capped_from: resp.capped_from,
    })
}

pub use postern_api_client::ed25519_pkcs8_pem as pkcs8_pem;

/// Writes the certificates, known_hosts and ssh_config of `issued`, and with `key` (a login,
/// not a renewal) the private key, its public half and its PKCS#8 form. Returns the cluster
/// directory. The profile is written separately, last, by [`save_profile`].
pub fn install(
    layout: &Layout,
    issued: &Issued,
    key: Option<&PrivateKey>,
) -> anyhow::Result<PathBuf> {
    let dir = files::ensure_cluster_dir(layout, &issued.cluster)?;
    if let Some(key) = key {
        let openssh = key
            .to_openssh(LineEnding::LF)
            .context("encoding the private key")?;
        files::write_atomic(&dir, profile::KEY, openssh.as_bytes(), 0o600)?;
        let public = key
            .public_key()
            .to_openssh()
            .context("encoding the public key")?;
        files::write_atomic(&dir, profile::PUB, format!("{public}\n").as_bytes(), 0o644)?;
        files::write_atomic(&dir, profile::TLS_KEY, pkcs8_pem(key)?.as_bytes(), 0o600)?;
    }
    let line = |s: &str| {
        let mut s = s.trim_end().to_owned();
        s.push('\n');
        s
    };
    files::write_atomic(
        &dir,
        profile::CERT,
        line(&issued.ssh_certificate).as_bytes(),
        0o644,
    )?;
    files::write_atomic(
        &dir,
        profile::TLS_CRT,
        line(&issued.x509_certificate).as_bytes(),
        0o644,
    )?;
    files::write_atomic(
        &dir,
        profile::CA_CRT,
        line(&issued.x509_ca).as_bytes(),
        0o644,
    )?;
    let known_hosts =
        render::render_known_hosts(&issued.cluster, &issued.host_ca_keys, &issued.gateways)?;
    files::write_atomic(&dir, profile::KNOWN_HOSTS, known_hosts.as_bytes(), 0o644)?;
    let (identity, certificate, kh) = (
        dir.join(profile::KEY),
        dir.join(profile::CERT),
        dir.join(profile::KNOWN_HOSTS),
    );
    let config = render::render_ssh_config(
        &issued.cluster,
        &ClusterPaths {
            identity: &identity,
            certificate: &certificate,
            known_hosts: &kh,
        },
        &issued.gateways,
        // Only several gateways' ssh_config runs it.
        &if issued.gateways.len() > 1 {
            postern_binary()?
        } else {
            PathBuf::new()
        },
    )?;
    files::write_atomic(&dir, profile::SSH_CONFIG, config.as_bytes(), 0o644)?;
    Ok(dir)
}

/// The profile recording `issued`.
pub fn profile_of(issued: &Issued, ca: &CaUrls, pin: CaPin, agent: bool) -> Profile {
    Profile {
        ca: ca.clone(),
        ca_pin: pin.to_string(),
        user: issued.user.clone(),
        cluster: issued.cluster.clone(),
        valid_before: issued.valid_before,
        renew_until: issued.renew_until,
        principals: issued.principals.clone(),
        permits: issued.permits.clone(),
        agent,
        gateway: issued.gateways.first().map(Gateway::as_string),
        gateways: if issued.gateways.len() > 1 {
            issued.gateways.iter().map(Gateway::as_string).collect()
        } else {
            Vec::new()
        },
    }
}

/// The most gateway addresses a login writes (ssh runs the probe of each but the last before
/// every connection; one that finds an earlier gateway up answers at once).
const MAX_GATEWAYS: usize = 16;

/// The running binary, which the ssh_config of a cluster with several gateways runs as
/// `postern reachable`.
fn postern_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the path of the postern binary")
}

/// Writes `profile.json` of the profile's cluster.
pub fn save_profile(layout: &Layout, p: &Profile) -> anyhow::Result<()> {
    let dir = files::ensure_cluster_dir(layout, &p.cluster)?;
    let mut json = serde_json::to_vec_pretty(p).context("encoding profile.json")?;
    json.push(b'\n');
    files::write_atomic(&dir, profile::PROFILE, &json, 0o600)
}

/// The summary of `issued`, written to `dir`.
pub fn summary(issued: &Issued, dir: &std::path::Path, agent: bool) -> Summary {
    Summary {
        cluster: issued.cluster.clone(),
        user: issued.user.clone(),
        principals: issued.principals.clone(),
        permits: issued.permits.clone(),
        valid_before: issued.valid_before,
        renew_until: issued.renew_until,
        ttl: crate::display::ttl(issued.ttl),
        capped_from: issued.capped_from.map(crate::display::ttl),
        ssh_config: dir.join(profile::SSH_CONFIG).display().to_string(),
        identity_file: dir.join(profile::KEY).display().to_string(),
        agent,
    }
}

/// Refuses to go on when a certificate is already past `valid_before` on arrival (a clock
/// problem on one side; ssh would refuse it anyway).
pub fn check_not_expired(issued: &Issued, now: u64) -> anyhow::Result<()> {
    if issued.valid_before <= now {
        bail!(
            "the server issued a certificate that is already expired (valid before {}, now {}); \
             check this computer's clock",
            issued.valid_before,
            now
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::certificate::Builder;

    const CA_PEM: &str = include_str!("../../../api-client/testdata/ca.pem");
    const OTHER_CA_PEM: &str = include_str!("../../../api-client/testdata/other-ca.pem");
    const HOST_CA: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILW57FmpCtobbGauJAL/giUn3vQl7CZmTQxaPUL1FZkB host-ca";

    fn cert_for(key: &PublicKey, cert_type: CertType) -> String {
        let ca = postern_core::cert::generate_ed25519("user-ca").unwrap();
        let mut b = Builder::new([0u8; 32], key.key_data().clone(), 1_000, 4_000_000_000).unwrap();
        b.serial(1).unwrap();
        b.cert_type(cert_type).unwrap();
        b.key_id("alice").unwrap();
        b.valid_principal("alice").unwrap();
        b.sign(&ca).unwrap().to_openssh().unwrap()
    }

    fn response(ssh_certificate: String) -> CertResponse {
        CertResponse {
            cluster: "example.com".parse().unwrap(),
            user: "alice".parse().unwrap(),
            ssh_certificate,
            x509_certificate: CA_PEM.to_owned(),
            x509_ca: CA_PEM.to_owned(),
            host_ca_keys: vec![HOST_CA.to_owned()],
            gateway: Some("127.0.0.1:3023".to_owned()),
            gateways: Vec::new(),
            principals: vec!["alice".parse().unwrap()],
            permits: vec![Permit::Pty],
            valid_before: 4_000_000_000,
            renew_until: 4_000_000_000,
            ttl: "12h".parse().unwrap(),
            capped_from: None,
        }
    }

    fn setup() -> (PrivateKey, Username, CaPin) {
        let key = postern_core::cert::generate_ed25519("t").unwrap();
        let pin = postern_core::ca_pin(include_bytes!("../../../api-client/testdata/ca.der"));
        (key, "alice".parse().unwrap(), pin.parse().unwrap())
    }

    #[test]
    fn accepts_user_certificate_for_our_key() {
        let (key, user, pin) = setup();
        let resp = response(cert_for(key.public_key(), CertType::User));
        let issued = check(resp, &user, key.public_key(), pin).unwrap();
        assert_eq!(issued.valid_before, 4_000_000_000);
        assert_eq!(issued.gateways[0].jump(), "127.0.0.1:3023");
    }

    #[test]
    fn rejects_certificate_for_another_key() {
        let (key, user, pin) = setup();
        let other = postern_core::cert::generate_ed25519("other").unwrap();
        let resp = response(cert_for(other.public_key(), CertType::User));
        let e = check(resp, &user, key.public_key(), pin).unwrap_err();
        assert!(e.to_string().contains("different key"), "{e}");
    }

    #[test]
    fn rejects_host_certificate() {
        let (key, user, pin) = setup();
        let resp = response(cert_for(key.public_key(), CertType::Host));
        let e = check(resp, &user, key.public_key(), pin).unwrap_err();
        assert!(e.to_string().contains("host certificate"), "{e}");
    }

    #[test]
    fn rejects_other_user_service_ca_and_hostile_fields() {
        let (key, user, pin) = setup();
        let good = || response(cert_for(key.public_key(), CertType::User));

        let mut r = good();
        r.user = "mallory".parse().unwrap();
        assert!(check(r, &user, key.public_key(), pin).is_err());

        let mut r = good();
        r.x509_ca = OTHER_CA_PEM.to_owned();
        let e = check(r, &user, key.public_key(), pin).unwrap_err();
        assert!(e.to_string().contains("does not match the pin"), "{e}");

        let mut r = good();
        r.host_ca_keys = vec![format!("{HOST_CA}\n@cert-authority * ssh-ed25519 AAAA")];
        assert!(check(r, &user, key.public_key(), pin).is_err());

        let mut r = good();
        r.host_ca_keys = Vec::new();
        assert!(check(r, &user, key.public_key(), pin).is_err());

        let mut r = good();
        r.gateway = Some("gw\n  ProxyCommand sh -c evil".to_owned());
        assert!(check(r, &user, key.public_key(), pin).is_err());

        // Every one of several gateways is checked, and their number is bounded.
        let mut r = good();
        r.gateways = vec![
            "127.0.0.1:3023".into(),
            "gw2\n  ProxyCommand sh -c evil".into(),
        ];
        assert!(check(r, &user, key.public_key(), pin).is_err());
        let mut r = good();
        r.gateways = (0..=MAX_GATEWAYS).map(|i| format!("gw{i}:22")).collect();
        let e = check(r, &user, key.public_key(), pin).unwrap_err();
        assert!(
            e.to_string().contains("gateway addresses, more than"),
            "{e}"
        );
        let mut r = good();
        r.gateways = vec!["127.0.0.1:3023".into(), "127.0.0.2:3023".into()];
        let issued = check(r, &user, key.public_key(), pin).unwrap();
        assert_eq!(issued.gateways.len(), 2);

        let mut r = good();
        r.ssh_certificate = "ssh-ed25519-cert-v01@openssh.com AAAA".to_owned();
        assert!(check(r, &user, key.public_key(), pin).is_err());
    }

    #[test]
    fn install_writes_every_file_with_its_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let t = tempfile::tempdir().unwrap();
        let layout = Layout::new(t.path().to_path_buf());
        let (key, user, pin) = setup();
        let resp = response(cert_for(key.public_key(), CertType::User));
        let issued = check(resp, &user, key.public_key(), pin).unwrap();
        let dir = install(&layout, &issued, Some(&key)).unwrap();
        save_profile(
            &layout,
            &profile_of(
                &issued,
                &"https://ca"
                    .parse::<postern_api_client::CaUrl>()
                    .unwrap()
                    .into(),
                pin,
                false,
            ),
        )
        .unwrap();
        for (name, mode) in [
            (profile::KEY, 0o600),
            (profile::TLS_KEY, 0o600),
            (profile::PROFILE, 0o600),
            (profile::PUB, 0o644),
            (profile::CERT, 0o644),
            (profile::SSH_CONFIG, 0o644),
        ] {
            let m = std::fs::metadata(dir.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, mode, "{name}");
        }
        let back = PrivateKey::read_openssh_file(dir.join(profile::KEY)).unwrap();
        assert_eq!(back.public_key().key_data(), key.public_key().key_data());
        let cert = std::fs::read_to_string(dir.join(profile::CERT)).unwrap();
        assert_eq!(cert.lines().count(), 1);
        let p = profile::load_profile(&layout, &issued.cluster)
            .unwrap()
            .unwrap();
        assert_eq!(p.gateway.as_deref(), Some("127.0.0.1:3023"));
    }

    #[test]
    fn pkcs8_key_loads_in_the_tls_provider() {
        let key = postern_core::cert::generate_ed25519("t").unwrap();
        let pem = pkcs8_pem(&key).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let der = rustls_pemfile::private_key(&mut pem.as_bytes())
            .unwrap()
            .unwrap();
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.key_provider.load_private_key(der).unwrap();
        // The same key: the PKCS#8 form decodes to the OpenSSH key's seed.
        use ed25519_dalek::pkcs8::DecodePrivateKey as _;
        let sk = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(
            sk.verifying_key().to_bytes(),
            key.public_key().key_data().ed25519().unwrap().0
        );
    }
}
