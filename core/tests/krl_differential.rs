//! Differential tests of the KRL encoder: for many generated cases, the KRL we encode and the
//! KRL `ssh-keygen -k` builds from the same revocations must give `ssh-keygen -Q` the same
//! answer for every certificate, and that answer must be the expected one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use postern_core::krl::{CaRevocations, Krl};
use ssh_key::PublicKey;

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

/// Key ids of the certificates: plain names, a node-access `USER/SESSION` and punctuation.
const KEY_IDS: [&str; 6] = ["alice", "bob", "carol", "alice/s-1", "web1", "gate:x/y=z"];

/// Serials of the certificates: 0 (never revocable), both ends of u32 and u64, and the
/// neighbourhoods of 64 (a word of PROTOCOL.krl's bitmap) and of runs of 2 and 3 (where our
/// encoder switches from a list to a range).
const SERIALS: [u64; 24] = [
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    63,
    64,
    65,
    127,
    128,
    129,
    1000,
    1001,
    1002,
    (1 << 32) - 1,
    1 << 32,
    (1 << 32) + 1,
    1 << 63,
    u64::MAX - 3,
    u64::MAX - 2,
    u64::MAX - 1,
    u64::MAX,
];

/// Generated cases, each checked with ssh-keygen (issue 10 asks for at least 1,000).
const CASES: u64 = 1000;

struct Signed {
    path: PathBuf,
    ca: usize,
    subject: usize,
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
    assert!(err.trim().is_empty(), "ssh-keygen -Q: {err}");
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

/// One CA's revocations for a case: runs of 1 to 4 serials around the boundaries, sparse
/// sets (every 2nd to 9th serial), dense blocks of about a bitmap word with holes, single
/// boundary serials, and key ids.
fn generate(rng: &mut Rng) -> CaRevocations {
    let mut rev = CaRevocations::default();
    let pick = |rng: &mut Rng| SERIALS[rng.below(SERIALS.len() as u64) as usize];
    for _ in 0..rng.below(5) {
        let b = pick(rng);
        match rng.below(5) {
            0 => {
                let lo = b.saturating_sub(rng.below(3));
                let len = 1 + rng.below(4);
                rev.serials
                    .extend((0..len).filter_map(|i| lo.checked_add(i)));
            }
            1 => {
                let step = 2 + rng.below(8);
                let count = 2 + rng.below(19);
                rev.serials
                    .extend((0..count).filter_map(|i| b.checked_add(i * step)));
            }
            2 => {
                let lo = b.saturating_sub(rng.below(70));
                let len = 60 + rng.below(80);
                for i in 0..len {
                    if rng.below(8) != 0 {
                        rev.serials.extend(lo.checked_add(i));
                    }
                }
            }
            3 => {
                rev.serials.insert(b);
            }
            _ => {
                // A run ending at u64::MAX or starting at 1.
                let len = 1 + rng.below(5);
                if rng.below(2) == 0 {
                    rev.serials.extend((0..len).map(|i| u64::MAX - i));
                } else {
                    rev.serials.extend(1..=len);
                }
            }
        }
    }
    for id in KEY_IDS {
        if rng.below(6) == 0 {
            rev.key_ids.insert(id.to_owned());
        }
    }
    rev
}

/// The same revocations as an `ssh-keygen -k` specification (ranges as `serial: LO-HI`).
fn spec_of(rev: &CaRevocations) -> String {
    let mut spec = String::new();
    let mut serials = rev.serials.iter().copied().filter(|s| *s != 0).peekable();
    while let Some(lo) = serials.next() {
        let mut hi = lo;
        while serials
            .peek()
            .is_some_and(|n| hi.checked_add(1) == Some(*n))
        {
            hi = serials.next().unwrap_or(hi);
        }
        if lo == hi {
            spec.push_str(&format!("serial: {lo}\n"));
        } else {
            spec.push_str(&format!("serial: {lo}-{hi}\n"));
        }
    }
    for id in &rev.key_ids {
        spec.push_str(&format!("id: {id}\n"));
    }
    spec
}

/// Runs ssh-keygen, which must succeed.
fn keygen(args: &[&std::ffi::OsStr]) {
    let out = Command::new("ssh-keygen").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The wire blob of an OpenSSH public key (or certificate) line.
fn blob(line: &str) -> Vec<u8> {
    use base64::Engine;
    let b64 = line.split_whitespace().nth(1).unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[test]
fn encoder_agrees_with_ssh_keygen_over_generated_cases() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    // Three CAs of three kinds, made and used by ssh-keygen: ECDSA and RSA signatures are
    // checked by OpenSSL, several times faster than OpenSSH's own Ed25519, which keeps
    // 1,000 cases of 72 certificates within a minute.
    let kinds: [&[&str]; 3] = [
        &["-t", "ecdsa"],
        &["-t", "rsa", "-b", "2048"],
        &["-t", "ecdsa", "-b", "384"],
    ];
    let mut cas = Vec::new();
    for (ci, kind) in kinds.iter().enumerate() {
        let p = d(&format!("ca{ci}"));
        let mut args: Vec<&std::ffi::OsStr> = kind.iter().map(|a| a.as_ref()).collect();
        args.extend(["-q", "-N", "", "-f"].map(std::ffi::OsStr::new));
        args.push(p.as_os_str());
        keygen(&args);
        cas.push(p);
    }
    let ca_pubs: Vec<PathBuf> = cas.iter().map(|p| p.with_extension("pub")).collect();
    let subjects: Vec<String> = (0..2)
        .map(|i| {
            let p = d(&format!("subject{i}"));
            keygen(&[
                "-q".as_ref(),
                "-t".as_ref(),
                "ed25519".as_ref(),
                "-N".as_ref(),
                "".as_ref(),
                "-f".as_ref(),
                p.as_os_str(),
            ]);
            std::fs::read_to_string(p.with_extension("pub")).unwrap()
        })
        .collect();

    // Certificates: every CA, every boundary serial, key ids and subjects in turn.
    let mut certs = Vec::new();
    for (ci, ca) in cas.iter().enumerate() {
        for (si, &serial) in SERIALS.iter().enumerate() {
            let key_id = KEY_IDS[(si + ci) % KEY_IDS.len()];
            let subject = (si / 2 + ci) % 2;
            let key = d(&format!("c{ci}_{si}.pub"));
            std::fs::write(&key, &subjects[subject]).unwrap();
            let serial_arg = serial.to_string();
            keygen(&[
                "-q".as_ref(),
                "-s".as_ref(),
                ca.as_os_str(),
                "-I".as_ref(),
                key_id.as_ref(),
                "-n".as_ref(),
                "p".as_ref(),
                "-z".as_ref(),
                serial_arg.as_ref(),
                key.as_os_str(),
            ]);
            certs.push(Signed {
                path: d(&format!("c{ci}_{si}-cert.pub")),
                ca: ci,
                subject,
                serial,
                key_id,
            });
        }
    }
    let ca_blobs: Vec<Vec<u8>> = ca_pubs
        .iter()
        .map(|p| blob(&std::fs::read_to_string(p).unwrap()))
        .collect();

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut revoked_seen = 0usize;
    for case in 0..CASES {
        let mut krl = Krl {
            version: case,
            generated: 1_700_000_000,
            comment: format!("case {case}"),
            ..Default::default()
        };
        let mut specs = vec![String::new(); cas.len()];
        let mut revs: Vec<Option<CaRevocations>> = vec![None; cas.len()];
        for (ci, ca) in ca_blobs.iter().enumerate() {
            if rng.below(4) == 0 {
                continue; // this CA revokes nothing
            }
            let rev = generate(&mut rng);
            specs[ci] = spec_of(&rev);
            krl.certs.insert(ca.clone(), rev.clone());
            revs[ci] = Some(rev);
        }
        let mut keys = String::new();
        let mut revoked_keys = [false; 2];
        for (i, subject) in subjects.iter().enumerate() {
            if rng.below(12) == 0 {
                revoked_keys[i] = true;
                krl.keys.insert(blob(subject));
                keys.push_str(&format!("key: {}", subject));
            }
        }
        let ours = dir.path().join("ours.krl");
        std::fs::write(&ours, krl.encode().unwrap()).unwrap();

        let a = query(&ours, &certs);
        for (i, c) in certs.iter().enumerate() {
            let expected = revoked_keys[c.subject]
                || revs[c.ca].as_ref().is_some_and(|r| {
                    (c.serial != 0 && r.serials.contains(&c.serial)) || r.key_ids.contains(c.key_id)
                });
            assert_eq!(
                a[i], expected,
                "case {case}: ours says {} for ca {} serial {} id {} subject {}",
                a[i], c.ca, c.serial, c.key_id, c.subject
            );
            revoked_seen += usize::from(expected);
        }
        // Every 4th case, the same revocations through ssh-keygen -k must give the same
        // answers: the expectation above is OpenSSH's reading too (and ssh-keygen encodes
        // sparse sets as bitmaps, so its reading of those is checked as well).
        if case % 4 != 0 {
            continue;
        }
        // One CA per invocation, -u to update.
        let theirs = dir.path().join("theirs.krl");
        let _ = std::fs::remove_file(&theirs);
        let mut first = true;
        for (ci, spec) in specs.iter().enumerate() {
            let mut spec = spec.clone();
            if first {
                spec.push_str(&keys);
            }
            if spec.is_empty() {
                continue;
            }
            let sp = dir.path().join("spec");
            std::fs::write(&sp, &spec).unwrap();
            let mut cmd = Command::new("ssh-keygen");
            cmd.arg("-k").arg("-f").arg(&theirs);
            if !first {
                cmd.arg("-u");
            }
            let out = cmd.arg("-s").arg(&ca_pubs[ci]).arg(&sp).output().unwrap();
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

        let b = query(&theirs, &certs);
        for (i, c) in certs.iter().enumerate() {
            assert_eq!(
                a[i], b[i],
                "case {case}: ours and ssh-keygen's disagree on ca {} serial {} id {}",
                c.ca, c.serial, c.key_id
            );
        }
    }
    // The generator is not degenerate: both answers came up often.
    let total = certs.len() * CASES as usize;
    assert!(
        revoked_seen > total / 20 && revoked_seen < total * 19 / 20,
        "{revoked_seen} of {total} revoked"
    );
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
    std::fs::write(&p, krl.encode().unwrap()).unwrap();
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

/// Found by the `krl` fuzz target: OpenSSH reads a KRL's comment and its key ids as C strings,
/// so one NUL byte made the whole file invalid, and sshd refuses every key when its
/// `RevokedKeys` cannot be read.
#[test]
fn a_nul_in_the_comment_or_a_key_id_does_not_make_the_krl_unreadable() {
    let ca = PublicKey::read_openssh_file(fixture("ca.pub")).unwrap();
    let mut rev = CaRevocations::default();
    rev.key_ids.insert("x\0y".into());
    rev.key_ids.insert("alice".into());
    let krl = Krl {
        version: 1,
        generated: 1_700_000_000,
        comment: "postern\0 krl".into(),
        certs: [(ca.to_bytes().unwrap(), rev)].into_iter().collect(),
        keys: BTreeSet::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.krl");
    std::fs::write(&p, krl.encode().unwrap()).unwrap();
    // valid.cert: signed by the fixture CA, key id alice.
    let out = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(&p)
        .arg(fixture("valid.cert"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim().is_empty(), "ssh-keygen -Q: {err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.trim_end().ends_with("REVOKED"), "{text}");
}
