//! Fuzzes the KRL encoder against OpenSSH: a KRL encoded from the revocations in the input
//! (serials, ranges near the boundaries of PROTOCOL.krl's encodings, key ids, explicit keys,
//! three CAs) is written to a file, and `ssh-keygen -Q` must report exactly the expected
//! certificates of a set signed at start-up as revoked, in one run per input.
#![no_main]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use postern_core::krl::{CaRevocations, Krl};
use std::ffi::OsStr;

/// Serials of the certificates: 0 (never revocable), both ends of u32 and u64, and the
/// neighbourhoods of 64 (a bitmap word) and of a run of 3 (where a list becomes a range).
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
const KEY_IDS: [&str; 6] = ["alice", "bob", "alice/s-1", "", "web1", "gate:x/y=z"];

struct Cert {
    path: PathBuf,
    ca: usize,
    subject: usize,
    serial: u64,
    key_id: &'static str,
}

struct Setup {
    dir: tempfile::TempDir,
    /// The CAs' public key blobs.
    cas: Vec<Vec<u8>>,
    /// The subjects' public key blobs.
    subjects: Vec<Vec<u8>>,
    certs: Vec<Cert>,
}

fn keygen(args: &[&OsStr]) {
    let out = Command::new("ssh-keygen").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn blob(path: &std::path::Path) -> Vec<u8> {
    use base64::Engine;
    let line = std::fs::read_to_string(path).unwrap();
    let b64 = line.split_whitespace().nth(1).unwrap().to_owned();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// CAs (ECDSA P-256, RSA, ECDSA P-384: OpenSSL checks their signatures several times faster
/// than OpenSSH's own Ed25519, and ssh-keygen -Q checks every certificate's) and certificates,
/// all made by ssh-keygen once per process.
fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = |n: &str| dir.path().join(n);
        let kinds: [&[&str]; 3] = [
            &["-t", "ecdsa"],
            &["-t", "rsa", "-b", "2048"],
            &["-t", "ecdsa", "-b", "384"],
        ];
        let mut cas = Vec::new();
        for (ci, kind) in kinds.iter().enumerate() {
            let p = d(&format!("ca{ci}"));
            let mut args: Vec<&OsStr> = kind.iter().map(OsStr::new).collect();
            args.extend(["-q", "-N", "", "-f"].map(OsStr::new));
            args.push(p.as_os_str());
            keygen(&args);
            cas.push(p);
        }
        let mut subjects = Vec::new();
        for i in 0..2 {
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
            subjects.push(p.with_extension("pub"));
        }
        let mut certs = Vec::new();
        for (ci, ca) in cas.iter().enumerate() {
            for (si, &serial) in SERIALS.iter().enumerate() {
                let key_id = KEY_IDS[(si + ci) % KEY_IDS.len()];
                let subject = (si / 2 + ci) % 2;
                let key = d(&format!("c{ci}_{si}.pub"));
                std::fs::copy(&subjects[subject], &key).unwrap();
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
                certs.push(Cert {
                    path: d(&format!("c{ci}_{si}-cert.pub")),
                    ca: ci,
                    subject,
                    serial,
                    key_id,
                });
            }
        }
        Setup {
            cas: cas.iter().map(|p| blob(&p.with_extension("pub"))).collect(),
            subjects: subjects.iter().map(|p| blob(p)).collect(),
            certs,
            dir,
        }
    })
}

#[derive(Debug, Arbitrary)]
enum Serials {
    /// One of `SERIALS`.
    Known(u8),
    /// One of `SERIALS` moved by a little (wrapping).
    Near(u8, i8),
    /// `lo..=lo+len` (at most 1,024 more), saturating at `u64::MAX`.
    Range(u64, u16),
    /// A run around one of `SERIALS`: `s-before..=s+after`.
    Around(u8, u8, u8),
    /// Every `step`th serial from one of `SERIALS`, `count` of them (a sparse set, which
    /// ssh-keygen encodes as a bitmap).
    Every(u8, u8, u8),
}

#[derive(Debug, Arbitrary)]
enum KeyId {
    Known(u8),
    Text(String),
}

#[derive(Debug, Arbitrary)]
struct CaInput {
    serials: Vec<Serials>,
    key_ids: Vec<KeyId>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    version: u64,
    generated: u64,
    comment: String,
    cas: [Option<CaInput>; 3],
    /// Bit i: the plain key of subject i is revoked.
    keys: u8,
    /// The certificates asked about (indexes; ssh-keygen takes about a millisecond each):
    /// at most 16, and when none, every 5th.
    check: Vec<u8>,
}

fn known(i: u8) -> u64 {
    SERIALS[usize::from(i) % SERIALS.len()]
}

fn revocations(input: &CaInput) -> CaRevocations {
    let mut rev = CaRevocations::default();
    for s in input.serials.iter().take(16) {
        match *s {
            Serials::Known(i) => {
                rev.serials.insert(known(i));
            }
            Serials::Near(i, d) => {
                rev.serials
                    .insert(known(i).wrapping_add_signed(i64::from(d)));
            }
            Serials::Range(lo, len) => {
                let hi = lo.saturating_add(u64::from(len % 1025));
                rev.serials.extend(lo..=hi);
            }
            Serials::Around(i, before, after) => {
                let s = known(i);
                rev.serials.extend(
                    s.saturating_sub(u64::from(before))..=s.saturating_add(u64::from(after)),
                );
            }
            Serials::Every(i, step, count) => {
                let step = u64::from(step.max(2));
                let mut s = known(i);
                for _ in 0..count {
                    rev.serials.insert(s);
                    match s.checked_add(step) {
                        Some(n) => s = n,
                        None => break,
                    }
                }
            }
        }
    }
    for k in input.key_ids.iter().take(8) {
        rev.key_ids.insert(match k {
            KeyId::Known(i) => KEY_IDS[usize::from(*i) % KEY_IDS.len()].to_owned(),
            KeyId::Text(t) => t.clone(),
        });
    }
    rev
}

fuzz_target!(|input: Input| {
    let s = setup();
    let mut krl = Krl {
        version: input.version,
        generated: input.generated,
        comment: input.comment.clone(),
        ..Default::default()
    };
    let mut revs: Vec<Option<CaRevocations>> = Vec::new();
    for (ci, ca) in input.cas.iter().enumerate() {
        let rev = ca.as_ref().map(revocations);
        if let Some(r) = &rev {
            krl.certs.insert(s.cas[ci].clone(), r.clone());
        }
        revs.push(rev);
    }
    let mut keys = BTreeSet::new();
    for (i, subject) in s.subjects.iter().enumerate() {
        if input.keys & (1 << i) != 0 {
            keys.insert(i);
            krl.keys.insert(subject.clone());
        }
    }
    let mut asked: Vec<&Cert> = input
        .check
        .iter()
        .take(16)
        .map(|i| &s.certs[usize::from(*i) % s.certs.len()])
        .collect();
    if asked.is_empty() {
        asked = s.certs.iter().step_by(5).collect();
    }
    let file = s.dir.path().join("fuzz.krl");
    std::fs::write(&file, krl.encode().unwrap()).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(&file)
        .args(asked.iter().map(|c| &c.path))
        .output()
        .expect("ssh-keygen runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim().is_empty(),
        "ssh-keygen -Q complains about our KRL: {err} (input {input:?})"
    );
    for c in asked {
        let name = c.path.display().to_string();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no answer for {name}: {text} {err}"));
        let revoked = line.ends_with("REVOKED");
        let expected = keys.contains(&c.subject)
            || revs[c.ca].as_ref().is_some_and(|r| {
                (c.serial != 0 && r.serials.contains(&c.serial)) || r.key_ids.contains(c.key_id)
            });
        assert_eq!(
            revoked, expected,
            "ssh-keygen says {line:?} for ca {} serial {} key id {:?} subject {} (input {input:?})",
            c.ca, c.serial, c.key_id, c.subject
        );
    }
});
