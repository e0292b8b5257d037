//! The blocking file work of a resumable upload: appending a chunk at an offset to the partial
//! file, and checking and linking the complete file to its final name.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use postern_core::cast::{check_head, MAX_HEADER_BYTES};

use super::files::{
    durable_length, is_no_space, linked, open_partial, remove_partial, sha256_of_path, sync_dir,
};
use super::Outcome;
use crate::service::Refusal;

/// Appends one chunk to a partial upload (blocking). `recorded` is the durable length the
/// database holds (0 for a new upload, whose stale file, if any, is discarded). Answers the
/// new durable length, or a refusal that changed nothing the gateway relies on.
pub(super) fn write_chunk(
    path: &Path,
    id: &str,
    fresh: bool,
    recorded: u64,
    offset: u64,
    bytes: &[u8],
) -> Result<Outcome<u64>> {
    let f = open_partial(path, true).with_context(|| format!("cannot open {}", path.display()))?;
    // A partial file with a second name is a stored recording (a completion died between the
    // link and the removal of the partial name): it is never written or cut.
    if linked(&f).with_context(|| format!("cannot read {}", path.display()))? {
        return Ok(Err(Refusal::Conflict(format!(
            "recording {id} is already stored under its final name; complete it again instead of sending chunks"
        ))));
    }
    if fresh {
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
    }
    let durable = durable_length(&f, if fresh { 0 } else { recorded })
        .with_context(|| format!("cannot read {}", path.display()))?;
    if offset > durable {
        return Ok(Err(beyond(id, offset, durable)));
    }
    let end = offset + bytes.len() as u64;
    // A retried chunk repeats bytes already received: accepted only when they are the same.
    let overlap = usize::try_from(end.min(durable) - offset)?;
    if overlap > 0 {
        let mut have = vec![0u8; overlap];
        f.read_exact_at(&mut have, offset)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if have[..] != bytes[..overlap] {
            return Ok(Err(Refusal::Conflict(format!(
                "the bytes at offset {offset} differ from those already received of recording {id}; nothing was changed (received: {durable})"
            ))));
        }
    }
    if end > durable {
        let written = f
            .write_all_at(&bytes[overlap..], durable)
            .and_then(|()| f.sync_data());
        if let Err(e) = written {
            // Nothing past the durable length is kept: a later chunk starts there again.
            let _ = f.set_len(durable);
            if is_no_space(&e) {
                return Ok(Err(Refusal::InsufficientStorage(format!(
                    "the CA has no room for recording {id} ({e}); it keeps the {durable} bytes received, retry later"
                ))));
            }
            return Err(e).with_context(|| format!("cannot write {}", path.display()));
        }
    }
    Ok(Ok(end.max(durable)))
}

pub(super) fn beyond(id: &str, offset: u64, received: u64) -> Refusal {
    Refusal::Conflict(format!(
        "offset {offset} is beyond the {received} bytes received of recording {id}; resume at {received}"
    ))
}

/// How a completion ended on disk.
pub(super) enum Finished {
    /// The file is at its final name (put there now, or identical and there already).
    Linked,
    /// Refused; the partial upload stays.
    Refused(Refusal),
    /// The received bytes are not the recording the gateway describes: they were deleted,
    /// and the upload starts again from 0.
    Discarded(Refusal),
}

/// Checks a complete partial upload against its size, asciicast header and SHA-256, links it
/// to its final name and removes the partial name (blocking): once linked, the file is never
/// written through the partial name again.
pub(super) fn finish_partial(
    partial: &Path,
    final_path: &Path,
    id: &str,
    recorded: u64,
    bytes: u64,
    sha256: &str,
) -> Result<Finished> {
    // Stored already, by a completion that died before its row was written or by a
    // single-request upload: the same file is fine, another one is never replaced.
    match fs::symlink_metadata(final_path) {
        Ok(_) => {
            if sha256_of_path(final_path)? != sha256 {
                return Ok(Finished::Refused(Refusal::Conflict(format!(
                    "recording {id} is already stored with other content; a recording is never replaced"
                ))));
            }
            remove_partial(partial)?;
            return Ok(Finished::Linked);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", final_path.display())),
    }
    let mut f = match open_partial(partial, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Finished::Refused(incomplete(id, 0, bytes)))
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", partial.display())),
    };
    if linked(&f).with_context(|| format!("cannot read {}", partial.display()))? {
        bail!(
            "{} has another name (not {}); it is left alone",
            partial.display(),
            final_path.display()
        );
    }
    let durable = durable_length(&f, recorded)
        .with_context(|| format!("cannot read {}", partial.display()))?;
    if durable > bytes {
        // More than the whole recording: these bytes are not the recording described.
        drop(f);
        fs::remove_file(partial).with_context(|| format!("cannot remove {}", partial.display()))?;
        return Ok(Finished::Discarded(Refusal::Conflict(format!(
            "{durable} bytes were received of recording {id}, which has {bytes}; they were discarded: upload it again from offset 0"
        ))));
    }
    if durable != bytes {
        return Ok(Finished::Refused(incomplete(id, durable, bytes)));
    }
    let mut head = vec![0u8; usize::try_from(bytes.min(MAX_HEADER_BYTES as u64))?];
    f.read_exact_at(&mut head, 0)
        .with_context(|| format!("cannot read {}", partial.display()))?;
    let header_ok = check_head(&head, bytes);
    let got = postern_core::sha256_hex_of(&mut f)
        .with_context(|| format!("cannot read {}", partial.display()))?;
    if got != sha256 {
        drop(f);
        fs::remove_file(partial).with_context(|| format!("cannot remove {}", partial.display()))?;
        return Ok(Finished::Discarded(Refusal::Conflict(format!(
            "the {bytes} bytes received of recording {id} have sha256 {got}, not {sha256}; they were discarded: upload it again from offset 0"
        ))));
    }
    if let Err(e) = header_ok {
        return Ok(Finished::Refused(Refusal::BadRequest(e)));
    }
    f.sync_all()
        .with_context(|| format!("cannot fsync {}", partial.display()))?;
    drop(f);
    match fs::hard_link(partial, final_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if sha256_of_path(final_path)? != sha256 {
                return Ok(Finished::Refused(Refusal::Conflict(format!(
                    "recording {id} is already stored with other content; a recording is never replaced"
                ))));
            }
        }
        Err(e) if is_no_space(&e) => {
            return Ok(Finished::Refused(Refusal::InsufficientStorage(format!(
                "the CA has no room to store recording {id} ({e}); retry later"
            ))))
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", final_path.display())),
    }
    if let Some(parent) = final_path.parent() {
        sync_dir(parent)?;
    }
    // At once, before the row: nothing may reach the stored file through the partial name.
    remove_partial(partial)?;
    Ok(Finished::Linked)
}

pub(super) fn incomplete(id: &str, received: u64, bytes: u64) -> Refusal {
    Refusal::Conflict(format!(
        "{received} of the {bytes} bytes of recording {id} were received; resume at {received}"
    ))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::super::fixtures::{sha, CAST};
    use super::*;

    fn conflict(o: Outcome<u64>) -> String {
        match o {
            Err(Refusal::Conflict(m)) => m,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn chunks_append_at_the_received_length_and_retries_change_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s1.part");
        assert_eq!(
            write_chunk(&p, "s1", true, 0, 0, b"hello ")
                .unwrap()
                .unwrap(),
            6
        );
        assert_eq!(
            write_chunk(&p, "s1", false, 6, 6, b"world")
                .unwrap()
                .unwrap(),
            11
        );
        // The same chunk again (its answer was lost): accepted, nothing changes.
        assert_eq!(
            write_chunk(&p, "s1", false, 11, 6, b"world")
                .unwrap()
                .unwrap(),
            11
        );
        // Overlapping the end: the known part must match, the rest is appended.
        assert_eq!(
            write_chunk(&p, "s1", false, 11, 9, b"ld!")
                .unwrap()
                .unwrap(),
            12
        );
        assert_eq!(fs::read(&p).unwrap(), b"hello world!");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Other bytes at a received offset: refused, file unchanged.
        let m = conflict(write_chunk(&p, "s1", false, 12, 0, b"HELLO").unwrap());
        assert!(m.contains("differ"), "{m}");
        // Beyond the end: refused with where to resume.
        let m = conflict(write_chunk(&p, "s1", false, 12, 13, b"x").unwrap());
        assert!(m.contains("resume at 12"), "{m}");
        assert_eq!(fs::read(&p).unwrap(), b"hello world!");
    }

    #[test]
    fn a_tail_the_database_never_recorded_is_cut_before_the_next_chunk() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s2.part");
        write_chunk(&p, "s2", true, 0, 0, b"abc").unwrap().unwrap();
        // A request died after writing but before the row said so.
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"torn")
            .unwrap();
        assert_eq!(
            write_chunk(&p, "s2", false, 3, 3, b"def").unwrap().unwrap(),
            6
        );
        assert_eq!(fs::read(&p).unwrap(), b"abcdef");
        // A stale file under a new upload's name is discarded.
        assert_eq!(
            write_chunk(&p, "s2", true, 0, 0, b"xy").unwrap().unwrap(),
            2
        );
        assert_eq!(fs::read(&p).unwrap(), b"xy");
        // The file lost bytes the database recorded: resume where the file ends.
        let m = conflict(write_chunk(&p, "s2", false, 10, 10, b"z").unwrap());
        assert!(m.contains("resume at 2"), "{m}");
    }

    #[test]
    fn a_partial_upload_is_never_read_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("elsewhere");
        fs::write(&target, b"keep").unwrap();
        let p = d.path().join("s3.part");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        assert!(write_chunk(&p, "s3", true, 0, 0, b"evil").is_err());
        assert!(finish_partial(&p, &d.path().join("s3.cast"), "s3", 4, 4, &sha(b"keep")).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn completion_links_only_the_whole_file_with_the_right_sha256() {
        let d = tempfile::tempdir().unwrap();
        let (p, f) = (d.path().join("s4.part"), d.path().join("s4.cast"));
        write_chunk(&p, "s4", true, 0, 0, &CAST[..10])
            .unwrap()
            .unwrap();
        let n = CAST.len() as u64;
        // Not all bytes yet.
        match finish_partial(&p, &f, "s4", 10, n, &sha(CAST)).unwrap() {
            Finished::Refused(Refusal::Conflict(m)) => assert!(m.contains("resume at 10"), "{m}"),
            _ => panic!("an incomplete upload was completed"),
        }
        // Fewer bytes than received: not this recording, discarded.
        match finish_partial(&p, &f, "s4", 10, 5, &sha(&CAST[..5])).unwrap() {
            Finished::Discarded(Refusal::Conflict(m)) => assert!(m.contains("offset 0"), "{m}"),
            _ => panic!("a longer upload was completed"),
        }
        assert!(!p.exists() && !f.exists());
        write_chunk(&p, "s4", true, 0, 0, &CAST[..10])
            .unwrap()
            .unwrap();
        write_chunk(&p, "s4", false, 10, 10, &CAST[10..])
            .unwrap()
            .unwrap();
        // Wrong sha256: the bytes are discarded, nothing is stored.
        match finish_partial(&p, &f, "s4", n, n, &sha(b"other")).unwrap() {
            Finished::Discarded(Refusal::Conflict(m)) => assert!(m.contains("offset 0"), "{m}"),
            _ => panic!("a wrong sha256 was accepted"),
        }
        assert!(!p.exists() && !f.exists());
        write_chunk(&p, "s4", true, 0, 0, CAST).unwrap().unwrap();
        assert!(matches!(
            finish_partial(&p, &f, "s4", n, n, &sha(CAST)).unwrap(),
            Finished::Linked
        ));
        assert_eq!(fs::read(&f).unwrap(), CAST);
        // Completing again with the same file is fine; a final file with other content is
        // never replaced.
        assert!(matches!(
            finish_partial(&p, &f, "s4", n, n, &sha(CAST)).unwrap(),
            Finished::Linked
        ));
        fs::remove_file(&f).unwrap();
        fs::write(&f, b"{\"version\": 2}\n").unwrap();
        assert!(matches!(
            finish_partial(&p, &f, "s4", n, n, &sha(CAST)).unwrap(),
            Finished::Refused(Refusal::Conflict(_))
        ));
        assert_eq!(fs::read(&f).unwrap(), b"{\"version\": 2}\n");
    }

    #[test]
    fn completion_refuses_what_is_not_asciicast_v2() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("s5.cast");
        let long_header = format!("{{\"version\": 2, \"x\": \"{}\"}}\n", "a".repeat(70_000));
        for bad in [
            &b"not a cast\n"[..],
            b"{\"version\": 1}\n",
            b"\xff\xfe\n",
            long_header.as_bytes(),
        ] {
            let p = d.path().join("s5.part");
            write_chunk(&p, "s5", true, 0, 0, bad).unwrap().unwrap();
            let n = bad.len() as u64;
            assert!(
                matches!(
                    finish_partial(&p, &f, "s5", n, n, &sha(bad)).unwrap(),
                    Finished::Refused(Refusal::BadRequest(_))
                ),
                "{:?}",
                String::from_utf8_lossy(&bad[..bad.len().min(40)])
            );
            assert!(!f.exists());
        }
    }

    /// Finding 4: a partial file linked to its final name (same inode) must never be written
    /// or cut through the partial name, or the stored recording changes.
    #[test]
    fn regression_a_linked_partial_file_is_never_written_or_cut() {
        let d = tempfile::tempdir().unwrap();
        let (p, f) = (d.path().join("s6.part"), d.path().join("s6.cast"));
        let n = CAST.len() as u64;
        write_chunk(&p, "s6", true, 0, 0, CAST).unwrap().unwrap();
        // A completion linked it and died before it removed the partial name.
        fs::hard_link(&p, &f).unwrap();
        // A writer that trusts fewer bytes than the file holds would cut it: refused.
        let m = conflict(write_chunk(&p, "s6", false, 5, 5, b"xxxxxxxxxx").unwrap());
        assert!(m.contains("already stored"), "{m}");
        let m = conflict(write_chunk(&p, "s6", true, 0, 0, b"x").unwrap());
        assert!(m.contains("already stored"), "{m}");
        assert_eq!(fs::read(&f).unwrap(), CAST);
        // Completing again accepts the stored file and removes the partial name.
        assert!(matches!(
            finish_partial(&p, &f, "s6", n, n, &sha(CAST)).unwrap(),
            Finished::Linked
        ));
        assert!(!p.exists());
        assert_eq!(fs::read(&f).unwrap(), CAST);
        // A completion leaves no partial name behind.
        let (p, f) = (d.path().join("s7.part"), d.path().join("s7.cast"));
        write_chunk(&p, "s7", true, 0, 0, CAST).unwrap().unwrap();
        assert!(matches!(
            finish_partial(&p, &f, "s7", n, n, &sha(CAST)).unwrap(),
            Finished::Linked
        ));
        assert!(!p.exists());
        assert_eq!(fs::metadata(&f).unwrap().nlink(), 1);
    }
}
