//! The gateway's durable journal of audit events (`STATE/events/`): append-only segment files
//! of JSON lines (`00000000000000000001.jsonl`, ...), each append written and `fdatasync`'d
//! before it is acknowledged, the directory fsync'd when a segment is created. A segment is
//! removed only after the CA acknowledged every event in it.
//!
//! Only the last append of a segment can be cut by a crash (it was never acknowledged): a
//! reader drops such a torn last line, and the journal never appends after it, because every
//! start (and every write failure) begins a new segment.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use postern_core::api::NodeEvent;

/// A segment is closed and a new one begun once it holds this much.
pub const SEGMENT_BYTES: u64 = 1024 * 1024;

/// Why an append was not made durable.
#[derive(Debug)]
pub enum AppendError {
    /// The journal holds `max` bytes already (`[audit] spool_max_bytes`).
    Full {
        /// The configured maximum.
        max: u64,
    },
    /// Writing or syncing failed.
    Io(io::Error),
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppendError::Full { max } => write!(
                f,
                "the audit event spool is full ([audit] spool_max_bytes = {max})"
            ),
            AppendError::Io(e) => write!(f, "cannot write the audit event spool: {e}"),
        }
    }
}

/// The segment being appended to.
struct Open {
    seq: u64,
    file: File,
    /// Bytes written (maybe not yet synced).
    written: u64,
    /// Bytes synced: what readers may read.
    durable: u64,
}

/// The journal directory and its segments.
pub struct Journal {
    dir: PathBuf,
    max_bytes: u64,
    /// Every segment on disk and its length.
    segments: BTreeMap<u64, u64>,
    current: Option<Open>,
    /// The number of the next segment: never one used before in this run, so that the
    /// sender's place in a removed segment cannot be taken for a place in a new one.
    next_seq: u64,
    /// A failed write cut off writes not yet synced: the next `sync` fails, so that nobody
    /// waiting for them is told they are durable.
    lost: bool,
}

/// A segment's file name.
fn file_name(seq: u64) -> String {
    format!("{seq:020}.jsonl")
}

/// Whether a file name is a segment's (for the backlog metric).
pub fn is_segment(name: &str) -> bool {
    parse_name(name).is_some()
}

/// The segment number of a file name, if it is one.
fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".jsonl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Journal {
    /// Opens (creating it 0700) the journal in `dir`. The segments found there are closed:
    /// whatever comes next goes to a new one.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Journal> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut segments = BTreeMap::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            if let Some(seq) = e.file_name().to_str().and_then(parse_name) {
                segments.insert(seq, e.metadata()?.len());
            }
        }
        let next_seq = segments.keys().next_back().map_or(1, |s| s + 1);
        Ok(Journal {
            dir: dir.to_owned(),
            max_bytes,
            segments,
            current: None,
            next_seq,
            lost: false,
        })
    }

    /// The bytes the journal holds on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.values().sum()
    }

    /// The oldest segment, and whether it is still being appended to (then its durable
    /// length: readers stop there).
    pub fn oldest(&self) -> Option<(u64, Option<u64>)> {
        let (&seq, _) = self.segments.iter().next()?;
        let open = self
            .current
            .as_ref()
            .filter(|c| c.seq == seq)
            .map(|c| c.durable);
        Some((seq, open))
    }

    /// The path of segment `seq`.
    pub fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(file_name(seq))
    }

    /// Writes lines (each a JSON value without its newline) after the others, not yet synced:
    /// [`Journal::sync`] makes every write since the last sync durable at once (group commit).
    /// All of them or none are written.
    pub fn write(&mut self, lines: &[Vec<u8>]) -> Result<(), AppendError> {
        let size: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        if self.bytes().saturating_add(size) > self.max_bytes {
            return Err(AppendError::Full {
                max: self.max_bytes,
            });
        }
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.written >= SEGMENT_BYTES && c.written == c.durable)
        {
            self.current = None;
        }
        if self.current.is_none() {
            self.begin().map_err(AppendError::Io)?;
        }
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        for l in lines {
            buf.extend_from_slice(l);
            buf.push(b'\n');
        }
        let Some(c) = self.current.as_mut() else {
            return Err(AppendError::Io(io::Error::other("no open segment")));
        };
        if let Err(e) = c.file.write_all(&buf) {
            self.abandon();
            return Err(AppendError::Io(e));
        }
        c.written += size;
        self.segments.insert(c.seq, c.written);
        Ok(())
    }

    /// Makes every write durable (`fdatasync`). On failure the writes since the last sync are
    /// cut off as far as possible and the segment is closed, so that nothing is appended
    /// after a line that may be torn.
    /// It fails too when an earlier failed write cut off writes that were not synced yet
    /// (regression: they were reported durable, and a strict operation went ahead without
    /// its event).
    pub fn sync(&mut self) -> io::Result<()> {
        let r = self.sync_current();
        if std::mem::take(&mut self.lost) {
            r?;
            return Err(io::Error::other(
                "events written since the last sync were lost with a failed write",
            ));
        }
        r
    }

    fn sync_current(&mut self) -> io::Result<()> {
        let Some(c) = self.current.as_mut() else {
            return Ok(());
        };
        if c.written == c.durable {
            return Ok(());
        }
        match c.file.sync_data() {
            Ok(()) => {
                c.durable = c.written;
                Ok(())
            }
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    /// After a failed write or sync: cuts the segment back to its durable length (when that
    /// fails, a reader drops the torn tail) and closes it.
    fn abandon(&mut self) {
        if let Some(c) = self.current.take() {
            if c.written > c.durable {
                self.lost = true;
            }
            let len = match c.file.set_len(c.durable) {
                Ok(()) => c.durable,
                Err(_) => c.written,
            };
            self.segments.insert(c.seq, len);
            tracing::warn!(
                segment = c.seq,
                "audit journal segment closed after a write failure"
            );
        }
    }

    /// Begins a new segment after the last one, and makes its name durable.
    fn begin(&mut self) -> io::Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = self.path(seq);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        self.segments.insert(seq, 0);
        self.current = Some(Open {
            seq,
            file,
            written: 0,
            durable: 0,
        });
        Ok(())
    }

    /// Removes segment `seq` once the CA acknowledged all of it: a closed segment whatever its
    /// length, the open one only when `acked` is all it holds (it is closed then; the next
    /// write begins a new one). Returns whether it was removed.
    pub fn remove_acked(&mut self, seq: u64, acked: u64) -> io::Result<bool> {
        if let Some(c) = self.current.as_ref().filter(|c| c.seq == seq) {
            if c.written != acked || c.durable != acked {
                return Ok(false);
            }
            self.current = None;
        } else if self.segments.get(&seq).is_some_and(|len| *len > acked) {
            return Ok(false);
        }
        if self.segments.remove(&seq).is_none() {
            return Ok(false);
        }
        match fs::remove_file(self.path(seq)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// Complete lines read from a segment.
#[derive(Default)]
pub struct Lines {
    /// Each event and the offset just after its line.
    pub events: Vec<(u64, NodeEvent)>,
    /// Where reading stopped (the next read starts there).
    pub end: u64,
    /// Bytes of a torn last line that were dropped (a closed segment only).
    pub torn: u64,
    /// Lines that are not an event (logged and skipped).
    pub bad: usize,
}

/// Reads the complete lines of segment file `path` from `from`: up to `durable` for the open
/// segment, to the end of the file for a closed one, whose unterminated last line (cut by a
/// crash before it was acknowledged) is dropped.
pub fn read(path: &Path, from: u64, durable: Option<u64>) -> io::Result<Lines> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    match durable {
        Some(to) => {
            f.take(to.saturating_sub(from)).read_to_end(&mut buf)?;
        }
        None => {
            f.read_to_end(&mut buf)?;
        }
    }
    let mut out = Lines {
        end: from,
        ..Lines::default()
    };
    let mut start = 0usize;
    while let Some(n) = buf[start..].iter().position(|b| *b == b'\n') {
        let line = &buf[start..start + n];
        start += n + 1;
        out.end = from + start as u64;
        match serde_json::from_slice::<NodeEvent>(line) {
            Ok(ev) => out.events.push((out.end, ev)),
            Err(_) => out.bad += 1,
        }
    }
    let rest = (buf.len() - start) as u64;
    if rest > 0 && durable.is_none() {
        out.torn = rest;
        out.end += rest;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(i: usize) -> NodeEvent {
        NodeEvent {
            kind: "sftp.open".into(),
            ts: 1,
            login: "deploy".into(),
            user: Some("alice".into()),
            session: Some(format!("s-{i}")),
            serial: None,
            remote: None,
            tty: None,
            detail: Some(json!({ "path": format!("/srv/{i}") })),
        }
    }

    fn line(i: usize) -> Vec<u8> {
        serde_json::to_vec(&ev(i)).unwrap()
    }

    fn sessions(l: &Lines) -> Vec<String> {
        l.events
            .iter()
            .map(|(_, e)| e.session.clone().unwrap())
            .collect()
    }

    #[test]
    fn regression_a_failed_write_does_not_report_the_unsynced_writes_before_it_durable() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(d.path(), u64::MAX).unwrap();
        j.write(&[line(1)]).unwrap();
        j.sync().unwrap();
        // A written, not yet synced; then the disk refuses B (a read-only handle stands in
        // for a full disk).
        j.write(&[line(2)]).unwrap();
        let c = j.current.as_mut().unwrap();
        c.file = File::open(j.dir.join(file_name(c.seq))).unwrap();
        assert!(j.write(&[line(3)]).is_err());
        // The group's sync must not tell A's waiter that A is durable.
        assert!(
            j.sync().is_err(),
            "an append cut off by a failed write was reported durable"
        );
        // Once reported, the journal goes on in a new segment.
        j.write(&[line(4)]).unwrap();
        j.sync().unwrap();
    }

    #[test]
    fn appends_are_read_back_only_once_durable() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(d.path(), u64::MAX).unwrap();
        j.write(&[line(1), line(2)]).unwrap();
        let (seq, durable) = j.oldest().unwrap();
        assert_eq!(durable, Some(0), "nothing synced yet");
        j.sync().unwrap();
        let (seq2, durable) = j.oldest().unwrap();
        assert_eq!(seq, seq2);
        let l = read(&j.path(seq), 0, durable).unwrap();
        assert_eq!(sessions(&l), ["s-1", "s-2"]);
        assert_eq!(Some(l.end), durable);
        // From where the last read stopped.
        j.write(&[line(3)]).unwrap();
        j.sync().unwrap();
        let l = read(&j.path(seq), l.end, j.oldest().unwrap().1).unwrap();
        assert_eq!(sessions(&l), ["s-3"]);
    }

    #[test]
    fn a_torn_last_line_is_dropped_after_a_crash_and_nothing_follows_it() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(d.path(), u64::MAX).unwrap();
        j.write(&[line(1)]).unwrap();
        j.sync().unwrap();
        let seq = j.oldest().unwrap().0;
        drop(j);
        // The crash cut the next append.
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.path().join(file_name(seq)))
            .unwrap();
        f.write_all(&line(2)[..20]).unwrap();
        let mut j = Journal::open(d.path(), u64::MAX).unwrap();
        j.write(&[line(3)]).unwrap();
        j.sync().unwrap();
        let (first, open) = j.oldest().unwrap();
        assert_eq!((first, open), (seq, None), "the crashed segment is closed");
        let l = read(&j.path(seq), 0, None).unwrap();
        assert_eq!(sessions(&l), ["s-1"]);
        assert_eq!(l.torn, 20);
        assert_eq!(l.end, fs::metadata(j.path(seq)).unwrap().len());
        // The new event went to a new segment.
        let l = read(&j.path(seq + 1), 0, None).unwrap();
        assert_eq!(sessions(&l), ["s-3"]);
        assert_eq!(l.torn, 0);
    }

    #[test]
    fn a_line_that_is_not_an_event_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(file_name(1));
        let mut text = line(1);
        text.extend_from_slice(b"\n\0\0\0\n");
        text.extend_from_slice(&line(2));
        text.push(b'\n');
        fs::write(&p, &text).unwrap();
        let l = read(&p, 0, None).unwrap();
        assert_eq!(sessions(&l), ["s-1", "s-2"]);
        assert_eq!((l.bad, l.torn), (1, 0));
    }

    #[test]
    fn segments_roll_over_and_are_read_and_removed_in_order() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(d.path(), u64::MAX).unwrap();
        // Lines of one length, 100 per sync.
        let per = line(10_000).len() as u64 + 1;
        let n = usize::try_from((SEGMENT_BYTES / per / 100 + 2) * 100).unwrap();
        for k in 0..n / 100 {
            let lines: Vec<Vec<u8>> = (0..100).map(|i| line(10_000 + k * 100 + i)).collect();
            j.write(&lines).unwrap();
            j.sync().unwrap();
        }
        assert_eq!(j.segments.len(), 2, "{:?}", j.segments);
        let (first, open) = j.oldest().unwrap();
        assert_eq!(open, None, "the full segment is closed");
        let l = read(&j.path(first), 0, None).unwrap();
        assert!(l.end >= SEGMENT_BYTES);
        assert!(j.remove_acked(first, l.end).unwrap());
        assert!(!j.path(first).exists());
        let (second, open) = j.oldest().unwrap();
        assert_eq!(second, first + 1);
        let rest = read(&j.path(second), 0, open).unwrap();
        assert_eq!(l.events.len() + rest.events.len(), n);
        let last = format!("s-{}", 10_000 + n - 1);
        assert_eq!(
            rest.events.last().unwrap().1.session.as_deref(),
            Some(&*last)
        );
    }

    #[test]
    fn the_open_segment_is_removed_only_when_all_of_it_was_acknowledged() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(d.path(), u64::MAX).unwrap();
        j.write(&[line(1)]).unwrap();
        j.sync().unwrap();
        let (seq, open) = j.oldest().unwrap();
        let acked = open.unwrap();
        j.write(&[line(2)]).unwrap();
        j.sync().unwrap();
        assert!(!j.remove_acked(seq, acked).unwrap(), "an event came after");
        assert!(j.path(seq).exists());
        let all = j.oldest().unwrap().1.unwrap();
        assert!(j.remove_acked(seq, all).unwrap());
        assert!(j.oldest().is_none() && !j.path(seq).exists());
        // The next event begins a new segment, after the removed one.
        j.write(&[line(3)]).unwrap();
        j.sync().unwrap();
        assert_eq!(j.oldest().unwrap().0, seq + 1);
    }

    #[test]
    fn a_restart_finds_the_unacknowledged_segments() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(d.path(), u64::MAX).unwrap();
        j.write(&[line(1)]).unwrap();
        j.sync().unwrap();
        drop(j);
        let mut j = Journal::open(d.path(), u64::MAX).unwrap();
        j.write(&[line(2)]).unwrap();
        j.sync().unwrap();
        drop(j);
        let j = Journal::open(d.path(), u64::MAX).unwrap();
        let seqs: Vec<u64> = j.segments.keys().copied().collect();
        assert_eq!(seqs.len(), 2);
        let all: Vec<String> = seqs
            .iter()
            .flat_map(|s| sessions(&read(&j.path(*s), 0, None).unwrap()))
            .collect();
        assert_eq!(all, ["s-1", "s-2"]);
        assert_eq!(j.oldest().unwrap(), (seqs[0], None));
        // Other files in the directory are not segments.
        fs::write(d.path().join("notes.txt"), "x").unwrap();
        fs::write(d.path().join("1.jsonl"), "x").unwrap();
        assert_eq!(Journal::open(d.path(), u64::MAX).unwrap().segments.len(), 2);
    }

    #[test]
    fn a_full_journal_refuses_the_append_whole() {
        let d = tempfile::tempdir().unwrap();
        let per = line(1).len() as u64 + 1;
        let mut j = Journal::open(d.path(), 2 * per).unwrap();
        j.write(&[line(1)]).unwrap();
        let e = j.write(&[line(2), line(3)]).unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "the audit event spool is full ([audit] spool_max_bytes = {})",
                2 * per
            )),
            "{e}"
        );
        j.write(&[line(2)]).unwrap();
        j.sync().unwrap();
        assert_eq!(j.bytes(), 2 * per);
        assert!(matches!(j.write(&[line(4)]), Err(AppendError::Full { .. })));
        let l = read(&j.path(1), 0, j.oldest().unwrap().1).unwrap();
        assert_eq!(sessions(&l), ["s-1", "s-2"]);
    }
}
