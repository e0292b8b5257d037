//! The append-only, hash-chained audit log and its signed checkpoints.
//!
//! Each event's hash covers the previous hash and every field, so an edited event breaks its
//! own hash, a deleted one breaks the sequence and the next event's link, and a truncated tail
//! disagrees with the recorded head. The chain alone is unkeyed: whoever can write the
//! database can rewrite an event and recompute every hash after it and the head. So every
//! event also gets a checkpoint, `(seq, hash)` signed with the audit key (`DATA/ca/audit.key`,
//! outside the database), in `audit_checkpoints`, written in the same transaction as the
//! event: a rewrite cannot be re-signed, and `verify` names the first event whose hash is not
//! the one signed for it. Deleting the tail together with its checkpoints leaves a shorter
//! but valid log, which only a copy kept elsewhere can show: the newest checkpoint is emitted
//! off the host (tracing, syslog/journald, and the nodes' bundles, whose shims log it to
//! their own syslog), and `verify` compares the log with the checkpoints it is given from
//! there.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, Context, Result};
use base64::Engine;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use postern_core::api::AuditCheckpoint;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use crate::store::audit::Event;
use crate::store::{self, Tx};

/// The hash of the (absent) event before the first.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The key that signs checkpoints. Holds key bytes: no `Debug`, zeroized on drop (dalek's
/// `SigningKey` is `ZeroizeOnDrop`).
pub struct AuditKey {
    signing: SigningKey,
}

impl AuditKey {
    /// Wraps a signing key.
    pub fn new(signing: SigningKey) -> AuditKey {
        AuditKey { signing }
    }

    /// The public half, which checks checkpoints.
    pub fn public(&self) -> AuditPublicKey {
        AuditPublicKey(self.signing.verifying_key())
    }

    /// Signs that event `seq` has hash `hash`.
    pub fn sign(&self, seq: u64, hash: &str) -> AuditCheckpoint {
        let sig = self.signing.sign(&AuditCheckpoint::signed_bytes(seq, hash));
        AuditCheckpoint {
            seq,
            hash: hash.to_owned(),
            sig: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        }
    }

    #[cfg(test)]
    fn for_tests(seed: u8) -> AuditKey {
        AuditKey::new(SigningKey::from_bytes(&[seed; 32]))
    }
}

/// The public half of the audit key.
#[derive(Debug, Clone)]
pub struct AuditPublicKey(VerifyingKey);

impl AuditPublicKey {
    /// Wraps a verifying key.
    pub fn new(key: VerifyingKey) -> AuditPublicKey {
        AuditPublicKey(key)
    }

    /// The OpenSSH public key line (for `audit.pub`).
    pub fn to_openssh(&self, cluster: &str) -> Result<String> {
        let data =
            ssh_key::public::KeyData::Ed25519(ssh_key::public::Ed25519PublicKey::from(&self.0));
        Ok(
            ssh_key::PublicKey::new(data, format!("postern audit checkpoint key ({cluster})"))
                .to_openssh()?,
        )
    }

    /// Whether the checkpoint carries this key's signature over its sequence number and hash.
    pub fn checks(&self, cp: &AuditCheckpoint) -> bool {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&cp.sig) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        self.0
            .verify(&AuditCheckpoint::signed_bytes(cp.seq, &cp.hash), &sig)
            .is_ok()
    }
}

/// The daemon's audit key, installed once at start (`init`, `serve`). `append` is called from
/// every module inside their transactions, with only the connection at hand; the key is kept
/// here rather than threaded through each of them.
static KEY: RwLock<Option<Arc<AuditKey>>> = RwLock::new(None);

/// Makes `key` the one every later `append` signs with.
pub fn install_key(key: AuditKey) {
    let mut k = KEY.write().unwrap_or_else(|e| e.into_inner());
    *k = Some(Arc::new(key));
}

fn installed_key() -> Result<Arc<AuditKey>> {
    let k = KEY.read().unwrap_or_else(|e| e.into_inner()).clone();
    match k {
        Some(k) => Ok(k),
        None => no_key(),
    }
}

/// Fail closed: without its key the daemon appends nothing (and so does nothing audited).
#[cfg(not(test))]
fn no_key() -> Result<Arc<AuditKey>> {
    Err(anyhow!(
        "the audit signing key is not loaded: refusing to append an unsigned audit event"
    ))
}

/// Unit tests of other modules append through services that run without `serve`.
#[cfg(test)]
fn no_key() -> Result<Arc<AuditKey>> {
    Ok(Arc::new(AuditKey::for_tests(7)))
}

/// The public half of the installed key.
pub fn installed_public_key() -> Result<AuditPublicKey> {
    Ok(installed_key()?.public())
}

/// Loads a checkpoint key written by [`generate_key_pem`]: an OpenSSH Ed25519 private key.
pub fn key_from_openssh(text: &str, what: &Path) -> Result<AuditKey> {
    let key =
        ssh_key::PrivateKey::from_openssh(text).map_err(|e| anyhow!("{}: {e}", what.display()))?;
    if key.is_encrypted() {
        anyhow::bail!(
            "{} is encrypted; posternd needs an unencrypted key",
            what.display()
        );
    }
    let pair = key
        .key_data()
        .ed25519()
        .ok_or_else(|| anyhow!("{} is not an Ed25519 key", what.display()))?;
    let signing = SigningKey::try_from(pair)
        .map_err(|e| anyhow!("{}: not a valid Ed25519 key: {e}", what.display()))?;
    Ok(AuditKey::new(signing))
}

/// A new checkpoint key as OpenSSH private and public key text (the form of the CA's other
/// keys, so `ssh-keygen -l -f audit.pub` shows its fingerprint).
pub fn generate_key_pem(cluster: &str) -> Result<(zeroize::Zeroizing<String>, String)> {
    let key =
        postern_core::cert::generate_ed25519(&format!("postern audit checkpoint key ({cluster})"))?;
    let private = key.to_openssh(ssh_key::LineEnding::LF)?;
    let public = key.public_key().to_openssh()?;
    Ok((zeroize::Zeroizing::new(private.to_string()), public))
}

/// Reads the public key file `audit.pub` (`ssh-ed25519 BASE64 comment`).
pub fn public_key_from_openssh(text: &str, what: &Path) -> Result<AuditPublicKey> {
    let key = ssh_key::PublicKey::from_openssh(text.trim())
        .map_err(|e| anyhow!("{}: {e}", what.display()))?;
    let pk = key
        .key_data()
        .ed25519()
        .ok_or_else(|| anyhow!("{} is not an Ed25519 key", what.display()))?;
    let vk = VerifyingKey::try_from(pk)
        .map_err(|e| anyhow!("{}: not a valid Ed25519 key: {e}", what.display()))?;
    Ok(AuditPublicKey::new(vk))
}

fn event_hash(prev: &str, seq: i64, ts: i64, kind: &str, actor: &str, detail: &str) -> String {
    let mut h = Sha256::new();
    for part in [prev, &seq.to_string(), &ts.to_string(), kind, actor, detail] {
        // Length-prefixed so that no two field splits hash alike.
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Appends one event and its signed checkpoint; must run inside the caller's transaction.
pub fn append(conn: &Tx<'_>, ts: u64, kind: &str, actor: &str, detail: Value) -> Result<()> {
    let key = installed_key()?;
    append_with(conn, &key, ts, kind, actor, detail)
}

fn append_with(
    tx: &Tx<'_>,
    key: &AuditKey,
    ts: u64,
    kind: &str,
    actor: &str,
    detail: Value,
) -> Result<()> {
    let (prev_seq, prev_hash) = store::audit::head(tx)?.unwrap_or((0, GENESIS.to_owned()));
    let seq = prev_seq + 1;
    let ts = i64::try_from(ts)?;
    let detail = detail.to_string();
    let hash = event_hash(&prev_hash, seq, ts, kind, actor, &detail);
    let cp = key.sign(u64::try_from(seq)?, &hash);
    store::audit::insert_event_with_checkpoint(
        tx,
        &store::audit::StoredEvent {
            seq,
            ts,
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            detail,
            prev_hash,
            hash,
            cp_hash: None,
            cp_sig: None,
        },
        &cp.hash,
        &cp.sig,
    )
    .with_context(|| format!("cannot record audit event {seq} and its checkpoint"))?;
    Ok(())
}

/// Signs every event that has no valid checkpoint under `key`. Run only when the audit key is
/// created (first start of an installation older than checkpoints): that is the one moment
/// the daemon vouches for events it did not just append. Returns how many it signed.
pub fn sign_existing(tx: &Tx<'_>, key: &AuditKey) -> Result<u64> {
    let pk = key.public();
    let rows = store::audit::hashes_with_checkpoints(tx)?;
    // Checkpoints signed by another key mean the audit key was lost or deleted: a new key
    // must not vouch for the history the old one signed (whoever deleted it may have edited
    // that history). Only an installation older than checkpoints, or one whose signing with
    // this same key was interrupted, is signed here.
    let foreign = rows
        .iter()
        .filter(
            |store::audit::HashRow {
                 seq,
                 cp_hash,
                 cp_sig,
                 ..
             }| match (cp_hash, cp_sig, u64::try_from(*seq)) {
                (Some(h), Some(sig), Ok(seq)) => !pk.checks(&AuditCheckpoint {
                    seq,
                    hash: h.clone(),
                    sig: sig.clone(),
                }),
                _ => false,
            },
        )
        .count();
    if foreign > 0 {
        anyhow::bail!(
            "the audit log holds {foreign} checkpoint(s) signed by another audit key, and DATA/ca/audit.key is missing: restore audit.key (and audit.pub) from a backup; a new key would vouch for history the lost one signed"
        );
    }
    let mut signed = 0;
    for store::audit::HashRow {
        seq,
        hash,
        cp_hash,
        cp_sig,
    } in rows
    {
        let seq = u64::try_from(seq)?;
        let valid = match (cp_hash, cp_sig) {
            (Some(h), Some(sig)) => h == hash && pk.checks(&AuditCheckpoint { seq, hash: h, sig }),
            _ => false,
        };
        if !valid {
            let cp = key.sign(seq, &hash);
            store::audit::replace_checkpoint(tx, i64::try_from(seq)?, &cp.hash, &cp.sig)?;
            signed += 1;
        }
    }
    Ok(signed)
}

/// The checkpoint of the newest event, as the database holds it (unchecked).
pub fn newest_checkpoint(tx: &Tx<'_>) -> Result<Option<AuditCheckpoint>> {
    store::audit::newest_checkpoint(tx)
}

/// The last `n` events, oldest first.
pub fn tail(tx: &Tx<'_>, n: u32) -> Result<Vec<Event>> {
    store::audit::tail(tx, n)
}

/// The outcome of `audit verify`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    /// Events checked.
    pub events: i64,
    /// Problems found, each naming the event; the first names the first bad event.
    pub problems: Vec<String>,
    /// Events whose signed checkpoint matches.
    pub signed: i64,
    /// The newest off-host checkpoint given that carries the audit key's signature.
    pub offhost_newest: Option<u64>,
}

/// Why an event's checkpoint does not vouch for it, if it does not.
fn checkpoint_problem(
    key: &AuditPublicKey,
    seq: i64,
    hash: &str,
    cp_hash: Option<String>,
    cp_sig: Option<String>,
) -> Result<Option<&'static str>> {
    let (Some(cp_hash), Some(sig)) = (cp_hash, cp_sig) else {
        return Ok(Some(
            "has no signed checkpoint (its checkpoint was deleted)",
        ));
    };
    let cp = AuditCheckpoint {
        seq: u64::try_from(seq)?,
        hash: cp_hash,
        sig,
    };
    Ok(if !key.checks(&cp) {
        Some("has a checkpoint whose signature is not valid (forged, or moved from another event)")
    } else if cp.hash != hash {
        Some("was rewritten: its hash is not the one the audit key signed for it")
    } else {
        None
    })
}

/// Walks the whole chain: sequence, links, hashes, every event's signed checkpoint, the head,
/// checkpoints beyond the last event, and the checkpoints emitted off the host (`offhost`).
pub fn verify_with(
    tx: &Tx<'_>,
    key: &AuditPublicKey,
    offhost: &[AuditCheckpoint],
) -> Result<Verification> {
    let mut problems = Vec::new();
    let mut expected_seq = 1i64;
    let mut prev_hash = GENESIS.to_owned();
    let mut events = 0;
    let mut signed = 0;
    // After the first event that fails its checkpoint, the others are counted, not listed: a
    // rewrite that recomputed the chain makes every later event fail too.
    let mut first_unsigned: Option<i64> = None;
    let mut later_unsigned = (0u64, 0i64);
    store::audit::for_each_event(tx, |e| {
        events += 1;
        let store::audit::StoredEvent {
            seq,
            ts,
            kind,
            actor,
            detail,
            prev_hash: stored_prev,
            hash,
            cp_hash,
            cp_sig,
        } = e;
        if seq != expected_seq {
            if seq > expected_seq {
                problems.push(format!(
                    "event {expected_seq}{} deleted",
                    if seq - 1 > expected_seq {
                        format!(" to {}", seq - 1)
                    } else {
                        String::new()
                    }
                ));
            } else {
                problems.push(format!("event {seq} out of order"));
            }
        } else if stored_prev != prev_hash {
            problems.push(format!("event {seq} does not link to event {}", seq - 1));
        }
        if event_hash(&stored_prev, seq, ts, &kind, &actor, &detail) != hash {
            problems.push(format!(
                "event {seq} was edited (its hash does not match its content)"
            ));
        }
        match checkpoint_problem(key, seq, &hash, cp_hash, cp_sig)? {
            None => signed += 1,
            Some(why) if first_unsigned.is_none() => {
                first_unsigned = Some(seq);
                problems.push(format!("event {seq} ({kind}) {why}"));
            }
            Some(_) => later_unsigned = (later_unsigned.0 + 1, seq),
        }
        expected_seq = seq + 1;
        prev_hash = hash;
        Ok(())
    })?;
    if let (Some(first), (n @ 1.., last)) = (first_unsigned, later_unsigned) {
        problems.push(format!(
            "{n} later event{} after event {first} (up to event {last}) fail their signed checkpoints too",
            if n == 1 { "" } else { "s" }
        ));
    }
    let last_seq = expected_seq - 1;
    if let Some((hseq, hhash)) = store::audit::head(tx)? {
        if hseq >= expected_seq {
            problems.push(format!(
                "events {expected_seq} to {hseq} deleted from the end of the log"
            ));
        } else if hseq == expected_seq - 1 && hhash != prev_hash {
            problems.push(format!("event {hseq} was replaced (head hash differs)"));
        }
    }
    problems.extend(beyond_the_end(tx, key, last_seq)?);
    let (offhost_newest, found) = against_offhost(tx, key, offhost, last_seq)?;
    problems.extend(found);
    Ok(Verification {
        events,
        problems,
        signed,
        offhost_newest,
    })
}

/// Checkpoint rows of events that are gone from the end of the log.
fn beyond_the_end(tx: &Tx<'_>, key: &AuditPublicKey, last_seq: i64) -> Result<Vec<String>> {
    let mut newest_signed = None;
    let mut forged = 0;
    for cp in store::audit::checkpoints_after(tx, last_seq)? {
        if key.checks(&cp) {
            newest_signed = newest_signed.max(Some(cp.seq));
        } else {
            forged += 1;
        }
    }
    let mut problems = Vec::new();
    if let Some(n) = newest_signed {
        problems.push(format!(
            "the log ends at event {last_seq} but the audit key signed event {n}: events {} to {n} were deleted from the end",
            last_seq + 1
        ));
    }
    if forged > 0 {
        problems.push(format!(
            "{forged} checkpoint row(s) after the end of the log carry no valid signature"
        ));
    }
    Ok(problems)
}

/// The log against the checkpoints emitted off the host: the newest one that carries the
/// audit key's signature, and the problems found.
fn against_offhost(
    tx: &Tx<'_>,
    key: &AuditPublicKey,
    offhost: &[AuditCheckpoint],
    last_seq: i64,
) -> Result<(Option<u64>, Vec<String>)> {
    let mut problems = Vec::new();
    let mut newest = None;
    let mut forged = Vec::new();
    for cp in offhost {
        if !key.checks(cp) {
            forged.push(cp.seq);
            continue;
        }
        newest = newest.max(Some(cp.seq));
        let seq = i64::try_from(cp.seq)?;
        if seq > last_seq {
            continue;
        }
        if let Some((hash, kind)) = store::audit::hash_and_kind(tx, seq)? {
            if hash != cp.hash {
                problems.push(format!(
                    "event {seq} ({kind}) differs from its checkpoint emitted off the host: rewritten"
                ));
            }
        }
    }
    if let Some(n) = newest {
        if i64::try_from(n)? > last_seq {
            problems.push(format!(
                "the log ends at event {last_seq} but a checkpoint emitted off the host names event {n}: events {} to {n} were deleted from the end",
                last_seq + 1
            ));
        }
    }
    if let Some(first) = forged.first() {
        problems.push(format!(
            "{} off-host checkpoint(s) do not carry the audit key's signature (first: seq={first})",
            forged.len()
        ));
    }
    Ok((newest, problems))
}

/// The most off-host checkpoints one `verify` request carries (the admin socket reads 64 KiB).
pub const MAX_OFFHOST: usize = 64;

/// Reads checkpoint lines from log files (any prefix before the tag: syslog, journalctl) and
/// keeps those that carry `key`'s signature: the newest [`MAX_OFFHOST`] distinct ones, so
/// that a flood of lines written by anyone who may log on a node cannot push the real newest
/// out. Returns them and how many checkpoint lines did not carry the signature.
pub fn read_offhost(
    files: &[std::path::PathBuf],
    key: &AuditPublicKey,
) -> Result<(Vec<AuditCheckpoint>, usize)> {
    let mut valid = std::collections::BTreeMap::new();
    let mut ignored = 0;
    for f in files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        for line in String::from_utf8_lossy(&bytes).lines() {
            if !line.contains(AuditCheckpoint::TAG) {
                continue;
            }
            match AuditCheckpoint::find_in_line(line) {
                Some(cp) if key.checks(&cp) => {
                    valid.insert((cp.seq, cp.hash.clone()), cp);
                }
                _ => ignored += 1,
            }
        }
    }
    let newest = valid.into_values().rev().take(MAX_OFFHOST).collect();
    Ok((newest, ignored))
}

/// What the emitter does with the newest checkpoint the database shows.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing new.
    Same,
    /// A newer event was signed: emit its checkpoint.
    Emit,
    /// The newest checkpoint is older than one already emitted: events and their checkpoints
    /// were deleted (or an older checkpoint row put in place of the newest).
    WentBack {
        /// The newest seq emitted before.
        from: u64,
        /// The newest seq now.
        to: u64,
    },
    /// The newest checkpoint row carries no valid signature.
    Forged,
}

/// The emitter's memory: the newest seq it emitted.
#[derive(Debug, Default)]
pub struct Emitter {
    last: Option<u64>,
}

impl Emitter {
    /// Judges the newest checkpoint of the database (`None`: no events).
    pub fn step(&mut self, key: &AuditPublicKey, newest: Option<&AuditCheckpoint>) -> Step {
        let Some(cp) = newest else {
            return match self.last {
                Some(from) => Step::WentBack { from, to: 0 },
                None => Step::Same,
            };
        };
        if !key.checks(cp) {
            return Step::Forged;
        }
        match self.last {
            Some(last) if cp.seq == last => Step::Same,
            Some(last) if cp.seq < last => Step::WentBack {
                from: last,
                to: cp.seq,
            },
            _ => {
                self.last = Some(cp.seq);
                Step::Emit
            }
        }
    }
}

/// How often the emitter looks at the newest checkpoint: a truncation of the log is visible
/// off the host for every event older than this when it happened.
pub const EMIT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Emits the newest checkpoint through tracing and to syslog (journald's `/dev/log` on a
/// systemd host) whenever a newer event was signed; logs an error when the log went back.
pub async fn run_emitter(db: crate::db::Db, key: AuditPublicKey) {
    let mut emitter = Emitter::default();
    let mut syslog_ok = true;
    let mut tick = tokio::time::interval(EMIT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let newest = match db.run(newest_checkpoint).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read the newest audit checkpoint");
                continue;
            }
        };
        match (emitter.step(&key, newest.as_ref()), &newest) {
            (Step::Emit, Some(cp)) => {
                let line = cp.line();
                tracing::info!("{line}");
                match to_syslog(None, &line) {
                    Ok(()) => syslog_ok = true,
                    Err(e) if syslog_ok => {
                        syslog_ok = false;
                        tracing::warn!(error = %e, "cannot write the audit checkpoint to syslog; it is in this log only");
                    }
                    Err(_) => {}
                }
            }
            (Step::WentBack { from, to }, _) => tracing::error!(
                "the audit log went back from event {from} to event {to}: events and their checkpoints were deleted from the database"
            ),
            (Step::Forged, _) => tracing::error!(
                "the newest audit checkpoint in the database carries no valid signature: the database was written behind posternd's back"
            ),
            _ => {}
        }
    }
}

/// Sends one line to syslog at `path` (`None`: the system's `/dev/log`), facility auth.
pub fn to_syslog(path: Option<&Path>, line: &str) -> std::result::Result<(), String> {
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_AUTH,
        hostname: None,
        process: "posternd".into(),
        pid: std::process::id(),
    };
    let mut w = match path {
        Some(p) => syslog::unix_custom(formatter, p),
        None => syslog::unix(formatter),
    }
    .map_err(|e| e.to_string())?;
    w.notice(line).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{params, Connection};
    use serde_json::json;

    fn key() -> AuditKey {
        AuditKey::for_tests(1)
    }

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        crate::db::init_schema(&c).unwrap();
        for i in 0..5 {
            append_with(
                &Tx::sqlite(&c),
                &key(),
                100 + i,
                "test",
                "tester",
                json!({ "i": i }),
            )
            .unwrap();
        }
        c
    }

    fn check(c: &Connection) -> Verification {
        verify_with(&Tx::sqlite(c), &key().public(), &[]).unwrap()
    }

    /// The attack: edit event `seq`'s detail and recompute every hash after it and the head,
    /// exactly as `append` does, without the audit key.
    fn rewrite_and_rehash(c: &Connection, seq: i64, detail: &str) {
        c.execute(
            "UPDATE audit SET detail = ?1 WHERE seq = ?2",
            params![detail, seq],
        )
        .unwrap();
        let rows: Vec<(i64, i64, String, String, String)> = c
            .prepare("SELECT seq, ts, kind, actor, detail FROM audit ORDER BY seq")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let mut prev = GENESIS.to_owned();
        for (s, ts, kind, actor, detail) in rows {
            let h = event_hash(&prev, s, ts, &kind, &actor, &detail);
            c.execute(
                "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
                params![prev, h, s],
            )
            .unwrap();
            c.execute("UPDATE audit_head SET seq = ?1, hash = ?2", params![s, h])
                .unwrap();
            prev = h;
        }
    }

    fn checkpoint(c: &Connection, seq: i64) -> AuditCheckpoint {
        c.query_row(
            "SELECT seq, hash, sig FROM audit_checkpoints WHERE seq = ?1",
            [seq],
            |r| {
                Ok(AuditCheckpoint {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: r.get(1)?,
                    sig: r.get(2)?,
                })
            },
        )
        .unwrap()
    }

    #[test]
    fn accepts_untouched_chain() {
        let c = db();
        let v = check(&c);
        assert_eq!(v.events, 5);
        assert_eq!(v.signed, 5);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let newest = checkpoint(&c, 5);
        let v = verify_with(&Tx::sqlite(&c), &key().public(), &[newest]).unwrap();
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert_eq!(v.offhost_newest, Some(5));
    }

    #[test]
    fn rejects_edited_event() {
        let c = db();
        c.execute("UPDATE audit SET detail = '{\"i\":99}' WHERE seq = 3", [])
            .unwrap();
        let v = check(&c);
        assert_eq!(
            v.problems,
            ["event 3 was edited (its hash does not match its content)"]
        );
    }

    #[test]
    fn rejects_deleted_event() {
        let c = db();
        c.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
        let v = check(&c);
        assert_eq!(v.problems, ["event 2 deleted"]);
    }

    #[test]
    fn rejects_truncated_tail() {
        let c = db();
        c.execute("DELETE FROM audit WHERE seq >= 4", []).unwrap();
        let v = check(&c);
        assert_eq!(
            v.problems,
            [
                "events 4 to 5 deleted from the end of the log",
                "the log ends at event 3 but the audit key signed event 5: events 4 to 5 were deleted from the end"
            ]
        );
    }

    #[test]
    fn rejects_rehashed_edit_by_the_next_link() {
        // An attacker who edits event 3 and recomputes its hash still breaks event 4's link,
        // and cannot sign the new hash.
        let c = db();
        let prev: String = c
            .query_row("SELECT prev_hash FROM audit WHERE seq = 3", [], |r| {
                r.get(0)
            })
            .unwrap();
        let h = event_hash(&prev, 3, 102, "test", "tester", "{\"i\":99}");
        c.execute(
            "UPDATE audit SET detail = '{\"i\":99}', hash = ?1 WHERE seq = 3",
            [h],
        )
        .unwrap();
        let v = check(&c);
        assert_eq!(
            v.problems,
            [
                "event 3 (test) was rewritten: its hash is not the one the audit key signed for it",
                "event 4 does not link to event 3"
            ]
        );
    }

    #[test]
    fn rejects_edit_with_the_whole_chain_recomputed_and_names_the_first_bad_event() {
        let c = db();
        rewrite_and_rehash(&c, 3, "{\"i\":99}");
        // The unkeyed chain alone is fooled: no hash, link or head problem.
        let v = check(&c);
        assert_eq!(
            v.problems,
            [
                "event 3 (test) was rewritten: its hash is not the one the audit key signed for it",
                "2 later events after event 3 (up to event 5) fail their signed checkpoints too"
            ]
        );
        assert_eq!(v.signed, 2);
    }

    #[test]
    fn rejects_a_rewrite_whose_checkpoints_were_deleted() {
        let c = db();
        rewrite_and_rehash(&c, 4, "{\"i\":99}");
        c.execute("DELETE FROM audit_checkpoints WHERE seq >= 4", [])
            .unwrap();
        let v = check(&c);
        assert_eq!(
            v.problems,
            [
                "event 4 (test) has no signed checkpoint (its checkpoint was deleted)",
                "1 later event after event 4 (up to event 5) fail their signed checkpoints too"
            ]
        );
    }

    #[test]
    fn rejects_an_older_checkpoint_put_in_place_of_the_newest() {
        let c = db();
        let old = checkpoint(&c, 3);
        c.execute(
            "UPDATE audit_checkpoints SET hash = ?1, sig = ?2 WHERE seq = 5",
            params![old.hash, old.sig],
        )
        .unwrap();
        let v = check(&c);
        assert_eq!(
            v.problems,
            ["event 5 (test) has a checkpoint whose signature is not valid (forged, or moved from another event)"]
        );
    }

    #[test]
    fn truncation_with_its_checkpoints_is_caught_only_by_the_offhost_copy() {
        let c = db();
        let emitted = checkpoint(&c, 5);
        c.execute("DELETE FROM audit WHERE seq >= 4", []).unwrap();
        c.execute("DELETE FROM audit_checkpoints WHERE seq >= 4", [])
            .unwrap();
        let h3: String = c
            .query_row("SELECT hash FROM audit WHERE seq = 3", [], |r| r.get(0))
            .unwrap();
        c.execute("UPDATE audit_head SET seq = 3, hash = ?1", [h3])
            .unwrap();
        // The limit: what is left is a valid, shorter log.
        assert!(check(&c).problems.is_empty());
        let v = verify_with(&Tx::sqlite(&c), &key().public(), &[emitted]).unwrap();
        assert_eq!(
            v.problems,
            ["the log ends at event 3 but a checkpoint emitted off the host names event 5: events 4 to 5 were deleted from the end"]
        );
    }

    #[test]
    fn rejects_an_offhost_checkpoint_of_another_key_or_of_a_rewritten_event() {
        let c = db();
        let foreign = AuditKey::for_tests(2).sign(9, &checkpoint(&c, 5).hash);
        let v = verify_with(&Tx::sqlite(&c), &key().public(), &[foreign]).unwrap();
        assert_eq!(
            v.problems,
            ["1 off-host checkpoint(s) do not carry the audit key's signature (first: seq=9)"]
        );
        let emitted = checkpoint(&c, 4);
        rewrite_and_rehash(&c, 2, "{\"i\":99}");
        let v = verify_with(&Tx::sqlite(&c), &key().public(), &[emitted]).unwrap();
        assert_eq!(
            v.problems[0],
            "event 2 (test) was rewritten: its hash is not the one the audit key signed for it"
        );
        assert!(
            v.problems.contains(
                &"event 4 (test) differs from its checkpoint emitted off the host: rewritten"
                    .to_owned()
            ),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn checkpoint_lines_round_trip_and_need_the_key() {
        let cp = key().sign(12, &"ab".repeat(32));
        let line = format!("Dec  2 05:00:00 ca posternd[1]: {}", cp.line());
        let back = AuditCheckpoint::find_in_line(&line).unwrap();
        assert_eq!(back, cp);
        assert!(key().public().checks(&back));
        let moved = AuditCheckpoint {
            seq: 13,
            ..back.clone()
        };
        assert!(!key().public().checks(&moved));
        assert!(!AuditKey::for_tests(2).public().checks(&back));
        assert_eq!(
            AuditCheckpoint::find_in_line("postern-audit-checkpoint seq=x hash=00 sig=AA"),
            None
        );
    }

    #[test]
    fn existing_events_are_signed_once_when_the_key_is_created() {
        let c = Connection::open_in_memory().unwrap();
        crate::db::init_schema(&c).unwrap();
        for i in 0..3 {
            append_with(
                &Tx::sqlite(&c),
                &key(),
                100 + i,
                "test",
                "tester",
                json!({ "i": i }),
            )
            .unwrap();
        }
        // An installation older than checkpoints had none.
        c.execute("DELETE FROM audit_checkpoints", []).unwrap();
        let new = AuditKey::for_tests(3);
        assert_eq!(
            verify_with(&Tx::sqlite(&c), &new.public(), &[])
                .unwrap()
                .signed,
            0
        );
        assert_eq!(sign_existing(&Tx::sqlite(&c), &new).unwrap(), 3);
        assert_eq!(sign_existing(&Tx::sqlite(&c), &new).unwrap(), 0);
        let v = verify_with(&Tx::sqlite(&c), &new.public(), &[]).unwrap();
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert_eq!(v.signed, 3);
    }

    #[test]
    fn regression_a_deleted_audit_key_is_not_replaced_by_one_that_signs_the_old_history() {
        let c = Connection::open_in_memory().unwrap();
        crate::db::init_schema(&c).unwrap();
        for i in 0..3 {
            append_with(
                &Tx::sqlite(&c),
                &key(),
                100 + i,
                "test",
                "tester",
                json!({ "i": i }),
            )
            .unwrap();
        }
        // The key was deleted (and the history perhaps edited): a new key refuses to sign.
        let e = sign_existing(&Tx::sqlite(&c), &AuditKey::for_tests(4)).unwrap_err();
        assert!(
            format!("{e:#}").contains("signed by another audit key"),
            "{e:#}"
        );
        // The key that signed them finds nothing to do.
        assert_eq!(sign_existing(&Tx::sqlite(&c), &key()).unwrap(), 0);
    }

    #[test]
    fn an_appended_event_over_a_planted_checkpoint_fails() {
        let c = db();
        c.execute(
            "INSERT INTO audit_checkpoints (seq, hash, sig) VALUES (6, 'x', 'y')",
            [],
        )
        .unwrap();
        let e = append_with(&Tx::sqlite(&c), &key(), 200, "test", "tester", json!({})).unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot record audit event 6 and its checkpoint"),
            "{e:#}"
        );
    }

    #[test]
    fn emitter_emits_new_checkpoints_and_sees_the_log_go_back() {
        let c = db();
        let pk = key().public();
        let mut em = Emitter::default();
        assert_eq!(em.step(&pk, Some(&checkpoint(&c, 4))), Step::Emit);
        assert_eq!(em.step(&pk, Some(&checkpoint(&c, 4))), Step::Same);
        assert_eq!(em.step(&pk, Some(&checkpoint(&c, 5))), Step::Emit);
        assert_eq!(
            em.step(&pk, Some(&checkpoint(&c, 3))),
            Step::WentBack { from: 5, to: 3 }
        );
        let forged = AuditCheckpoint {
            seq: 9,
            ..checkpoint(&c, 5)
        };
        assert_eq!(em.step(&pk, Some(&forged)), Step::Forged);
        assert_eq!(em.step(&pk, None), Step::WentBack { from: 5, to: 0 });
    }

    #[test]
    fn checkpoints_reach_a_syslog_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("log");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let line = key().sign(5, &"cd".repeat(32)).line();
        to_syslog(Some(&path), &line).unwrap();
        let mut buf = [0u8; 2048];
        let n = sock.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]);
        // RFC 3164: <PRI> with facility auth (4) and severity notice (5) = 37.
        assert!(got.starts_with("<37>"), "{got}");
        assert!(got.contains("posternd["), "{got}");
        assert_eq!(
            AuditCheckpoint::find_in_line(&got),
            AuditCheckpoint::find_in_line(&line)
        );
    }

    #[test]
    fn append_signs_with_the_installed_key() {
        // In unit tests a fixed key stands in for the one `serve` installs; in the daemon
        // `append` refuses without one.
        let c = Connection::open_in_memory().unwrap();
        crate::db::init_schema(&c).unwrap();
        append(&Tx::sqlite(&c), 1, "test", "tester", json!({})).unwrap();
        let v = verify_with(&Tx::sqlite(&c), &installed_public_key().unwrap(), &[]).unwrap();
        assert!(v.problems.is_empty(), "{:?}", v.problems);
    }
}
