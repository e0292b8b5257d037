//! Differential tests of the KRL encoder: for many generated cases, the KRL we encode and the
//! KRL `ssh-keygen -k` builds from the same revocations must give `ssh-keygen -Q` the same
//! answer for every certificate, and that answer must be the expected one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use postern_core::krl::{CaRevocations, Krl};
use ssh_key::certificate::{Builder, CertType};
use ssh_key::{PrivateKey, PublicKey};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A small deterministic generator (xorshift64*), so that failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const KEY_IDS: [&str; 5] = ["alice", "bob", "carol", "web1", "gate:x/y=z"];

struct Signed {
    path: PathBuf,
    ca: usize,
    serial: u64,
    key_id: &'static str,
}

/// `ssh-keygen -Q` on every file: true where it says REVOKED.
fn query(krl: &Path, certs: &[Signed]) -> Vec<bool> {
    let out = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .args(certs.iter().map(|c| &c.path))
        .output()
        .expect("ssh-keygen is installed (scripts/test installs openssh-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("Invalid KRL") && !err.contains("parse"),
        "ssh-keygen: {err}"
    );
    certs
        .iter()
        .map(|c| {
            let name = c.path.display().to_string();
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}:")))
                .unwrap_or_else(|| panic!("no answer for {name}: {text} {err}"));
            line.ends_with("REVOKED")
        })
        .collect()
}

#[test]
fn encoder_agrees_with_ssh_keygen_over_generated_cases() {
    let cas = [
        PrivateKey::read_openssh_file(fixture("ca")).unwrap(),
        PrivateKey::read_openssh_file(fixture("other_ca")).unwrap(),
    ];
    let subject = PublicKey::read_openssh_file(fixture("subject.pub")).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Certificates: both CAs, serials 0..=40 and a few large ones, each key id.
    let mut certs = Vec::new();
    let mut serials: Vec<u64> = (0..=40).collect();
    serials.extend([1 << 32, u64::MAX - 1, u64::MAX]);
    for (ci, ca) in cas.iter().enumerate() {
        for &serial in &serials {
            let key_id = KEY_IDS[((serial % 1000) as usize + ci) % KEY_IDS.len()];
            let mut b =
                Builder::new(vec![7u8; 32], subject.key_data().clone(), 0, u64::MAX - 1).unwrap();
            b.serial(serial).unwrap();
            b.cert_type(CertType::User).unwrap();
            b.key_id(key_id).unwrap();
            b.valid_principal("p").unwrap();
            let cert = b.sign(ca).unwrap();
            let path = dir.path().join(format!("c{ci}_{serial}-cert.pub"));
            std::fs::write(&path, cert.to_openssh().unwrap()).unwrap();
            certs.push(Signed {
                path,
                ca: ci,
                serial,
                key_id,
            });
        }
    }

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..40 {
        let mut krl = Krl {
            version: case,
            generated: 1_700_000_000,
            comment: format!("case {case}"),
            ..Default::default()
        };
        let mut specs = [String::new(), String::new()];
        for (ci, ca) in cas.iter().enumerate() {
            if rng.below(4) == 0 {
                continue; // this CA revokes nothing
            }
            let mut rev = CaRevocations::default();
            // A few runs of consecutive serials and some singles.
            for _ in 0..rng.below(4) {
                let lo = 1 + rng.below(38);
                let len = 1 + rng.below(6);
                for s in lo..(lo + len).min(41) {
                    rev.serials.insert(s);
                }
            }
            if rng.below(3) == 0 {
                rev.serials.insert(u64::MAX);
                rev.serials.insert(1 << 32);
            }
            for id in KEY_IDS {
                if rng.below(5) == 0 {
                    rev.key_ids.insert(id.to_owned());
                }
            }
            for s in &rev.serials {
                specs[ci].push_str(&format!("serial: {s}\n"));
            }
            for id in &rev.key_ids {
                specs[ci].push_str(&format!("id: {id}\n"));
            }
            krl.certs.insert(ca.public_key().to_bytes().unwrap(), rev);
        }
        let revoke_subject = case % 7 == 3;
        if revoke_subject {
            krl.keys.insert(subject.to_bytes().unwrap());
        }
        let ours = dir.path().join(format!("ours{case}.krl"));
        std::fs::write(&ours, krl.encode()).unwrap();

        // The same revocations through ssh-keygen -k (one CA per invocation, -u to update).
        let theirs = dir.path().join(format!("theirs{case}.krl"));
        let mut first = true;
        for (ci, spec) in specs.iter().enumerate() {
            let mut spec = spec.clone();
            if revoke_subject && ci == 0 {
                spec.push_str(&format!("key: {}\n", subject.to_openssh().unwrap()));
            }
            if spec.is_empty() {
                continue;
            }
            let sp = dir.path().join(format!("spec{case}_{ci}"));
            std::fs::write(&sp, &spec).unwrap();
            let mut cmd = Command::new("ssh-keygen");
            cmd.arg("-k").arg("-f").arg(&theirs);
            if !first {
                cmd.arg("-u");
            }
            let out = cmd
                .arg("-s")
                .arg(fixture(if ci == 0 { "ca.pub" } else { "other_ca.pub" }))
                .arg(&sp)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ssh-keygen -k: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            first = false;
        }
        if first {
            let out = Command::new("ssh-keygen")
                .arg("-k")
                .arg("-f")
                .arg(&theirs)
                .output()
                .unwrap();
            assert!(out.status.success());
        }

        let a = query(&ours, &certs);
        let b = query(&theirs, &certs);
        for (i, c) in certs.iter().enumerate() {
            let rev = krl.certs.get(&cas[c.ca].public_key().to_bytes().unwrap());
            let expected = revoke_subject
                || rev.is_some_and(|r| {
                    (c.serial != 0 && r.serials.contains(&c.serial)) || r.key_ids.contains(c.key_id)
                });
            assert_eq!(
                a[i], expected,
                "case {case}: ours says {} for ca {} serial {} id {}",
                a[i], c.ca, c.serial, c.key_id
            );
            assert_eq!(
                a[i], b[i],
                "case {case}: ours and ssh-keygen's disagree on ca {} serial {} id {}",
                c.ca, c.serial, c.key_id
            );
        }
    }
}

#[test]
fn ssh_keygen_lists_what_we_encoded() {
    let ca = PublicKey::read_openssh_file(fixture("ca.pub")).unwrap();
    let mut rev = CaRevocations::default();
    rev.serials.extend([1, 2, 3, 4, 9]);
    rev.key_ids.insert("mallory".into());
    let krl = Krl {
        version: 42,
        generated: 1_700_000_000,
        comment: "postern".into(),
        certs: [(ca.to_bytes().unwrap(), rev)].into_iter().collect(),
        keys: BTreeSet::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.krl");
    std::fs::write(&p, krl.encode()).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-l")
        .arg("-f")
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("# KRL version 42"), "{text}");
    assert!(text.contains("serial: 1-4"), "{text}");
    assert!(text.contains("serial: 9"), "{text}");
    assert!(text.contains("id: mallory"), "{text}");
}
