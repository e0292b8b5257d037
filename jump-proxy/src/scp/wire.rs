//! The rcp protocol's framing as OpenSSH's `scp.c` reads it (`sink()`, `response()`): responses
//! and statuses, record lines, and the fields of `C`, `D` and `T` records.
//!
//! The protocol, as `scp.c` speaks it. The sender (the client for `-t`, the server for `-f`)
//! sends records, each answered by one response from the receiver before the sender goes on:
//! `T<mtime> 0 <atime> 0\n` (times of the next entry), `C<mode> <size> <name>\n` (a file:
//! after an OK response, `size` bytes and one status), `D<mode> 0 <name>\n` (enter a directory),
//! `E\n` (leave it), or `\x01message\n` (an error, not answered). A response or status is `\0`
//! (OK), `\x01message\n` (error) or `\x02message\n` (fatal: the reader exits). The receiver
//! speaks first: one response before the first record.

/// Longest record line or status message, newline included: `sink()` and `response()` read
/// into 2,048-byte buffers and split anything longer, so we would no longer see what they see.
pub(super) const MAX_LINE: usize = 2047;

/// Bytes of the stream as text (invalid UTF-8 replaced), for events.
pub(super) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A response or status: `\0`, or `\x01`/`\x02` and a message (`response()` in scp.c).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resp {
    Ok,
    Error(String),
    Fatal(String),
}

/// What a parser made of the bytes so far.
pub(super) enum Feed<T> {
    More,
    Done(T),
    Bad(&'static str),
}

/// Reassembles one response or status from a byte stream.
#[derive(Default)]
pub(super) struct Response {
    kind: Option<u8>,
    msg: Vec<u8>,
}

impl Response {
    /// The message held so far (tests check that memory is given back).
    #[cfg(test)]
    pub(super) fn msg(&self) -> &Vec<u8> {
        &self.msg
    }

    /// Consumes bytes from `data` up to the end of one response.
    pub(super) fn feed(&mut self, data: &mut &[u8]) -> Feed<Resp> {
        let kind = match self.kind {
            Some(k) => k,
            None => {
                let Some((&b, rest)) = data.split_first() else {
                    return Feed::More;
                };
                *data = rest;
                match b {
                    0 => return Feed::Done(Resp::Ok),
                    1 | 2 => {
                        self.kind = Some(b);
                        b
                    }
                    // `response()` takes any other byte as the start of a fatal message: seen
                    // when a shell start-up file prints to standard output.
                    _ => return Feed::Bad("unexpected status byte"),
                }
            }
        };
        match feed_line(&mut self.msg, data) {
            Feed::More => Feed::More,
            Feed::Bad(_) => Feed::Bad("status message too long"),
            Feed::Done(msg) => {
                self.kind = None;
                let msg = text(&msg);
                Feed::Done(if kind == 1 {
                    Resp::Error(msg)
                } else {
                    Resp::Fatal(msg)
                })
            }
        }
    }
}

/// Appends bytes from `data` to `buf` up to a newline; returns the line without it.
pub(super) fn feed_line(buf: &mut Vec<u8>, data: &mut &[u8]) -> Feed<Vec<u8>> {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => {
            if buf.len() + i + 1 > MAX_LINE {
                return Feed::Bad("line too long");
            }
            let (head, rest) = data.split_at(i);
            buf.extend_from_slice(head);
            *data = rest.get(1..).unwrap_or_default();
            Feed::Done(std::mem::take(buf))
        }
        None => {
            if buf.len() + data.len() >= MAX_LINE {
                return Feed::Bad("line too long");
            }
            buf.extend_from_slice(data);
            *data = &[];
            Feed::More
        }
    }
}

/// Parses what follows `C` or `D` exactly as `sink()` does: four octal digits, a space, a
/// decimal size that fits an off_t, a space, and a name that is one path component.
pub(super) fn parse_entry(rest: &[u8]) -> Result<(u32, u64, &[u8]), &'static str> {
    let digits = rest.get(..4).ok_or("bad mode")?;
    let mut mode = 0u32;
    for &b in digits {
        if !(b'0'..=b'7').contains(&b) {
            return Err("bad mode");
        }
        mode = (mode << 3) | u32::from(b - b'0');
    }
    let rest = rest
        .get(4..)
        .and_then(|r| r.strip_prefix(b" "))
        .ok_or("mode not delimited")?;
    let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 {
        return Err("size not present");
    }
    let (digits, rest) = rest.split_at(n);
    let size = parse_u64(digits)
        .filter(|&s| s <= i64::MAX as u64)
        .ok_or("size out of range")?;
    let name = rest.strip_prefix(b" ").ok_or("size not delimited")?;
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        return Err("unexpected filename");
    }
    Ok((mode, size, name))
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &b| {
        acc.checked_mul(10)?
            .checked_add(u64::from(b.checked_sub(b'0')?))
    })
}

/// Checks what follows `T` as `sink()` does: `mtime usec atime usec`, microseconds below 10^6.
pub(super) fn times_ok(rest: &[u8]) -> bool {
    let fields: Vec<&[u8]> = rest.split(|&b| b == b' ').collect();
    let [m, mu, a, au] = fields.as_slice() else {
        return false;
    };
    let digits = |f: &[u8]| !f.is_empty() && f.iter().all(u8::is_ascii_digit);
    let usec = |f: &[u8]| digits(f) && parse_u64(f).is_some_and(|u| u <= 999_999);
    digits(m) && usec(mu) && digits(a) && usec(au)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` one after the other; the last must complete the response.
    fn response(pieces: &[&[u8]]) -> Result<Resp, &'static str> {
        let mut r = Response::default();
        for (i, piece) in pieces.iter().enumerate() {
            let mut data = *piece;
            match r.feed(&mut data) {
                Feed::More => assert!(data.is_empty(), "bytes left after More"),
                Feed::Done(resp) => {
                    assert_eq!(i, pieces.len() - 1, "done before the last piece");
                    assert!(data.is_empty(), "bytes left after the response");
                    return Ok(resp);
                }
                Feed::Bad(why) => return Err(why),
            }
        }
        Err("not complete")
    }

    #[test]
    fn reads_responses_however_they_are_cut() {
        assert_eq!(response(&[b"\0"]), Ok(Resp::Ok));
        assert_eq!(
            response(&[b"\x01scp: /x: Permission", b" denied\n"]),
            Ok(Resp::Error("scp: /x: Permission denied".into()))
        );
        assert_eq!(
            response(&[b"\x02", b"", b"gone\n"]),
            Ok(Resp::Fatal("gone".into()))
        );
        // Any other first byte is not a response: `response()` would read it as a fatal message.
        assert_eq!(response(&[b"Hello\n"]), Err("unexpected status byte"));
        assert_eq!(
            response(&[b"\x01", &[b'e'; MAX_LINE]]),
            Err("status message too long")
        );
        // What follows a response is left for the next reader.
        let mut r = Response::default();
        let mut data: &[u8] = b"\0C0644 1 x\n";
        assert!(matches!(r.feed(&mut data), Feed::Done(Resp::Ok)));
        assert_eq!(data, b"C0644 1 x\n");
    }

    #[test]
    fn a_line_is_at_most_what_sink_reads_whole() {
        let mut buf = Vec::new();
        let longest = [b'a'; MAX_LINE - 1];
        let mut data: &[u8] = &longest;
        assert!(matches!(feed_line(&mut buf, &mut data), Feed::More));
        let mut data: &[u8] = b"\nrest";
        assert!(matches!(feed_line(&mut buf, &mut data), Feed::Done(l) if l == longest));
        assert_eq!(data, b"rest");
        let one_more = [b'a'; MAX_LINE];
        let mut data: &[u8] = &one_more;
        assert!(matches!(
            feed_line(&mut Vec::new(), &mut data),
            Feed::Bad(_)
        ));
        let mut with_newline = one_more.to_vec();
        with_newline.push(b'\n');
        let mut data: &[u8] = &with_newline;
        assert!(matches!(
            feed_line(&mut Vec::new(), &mut data),
            Feed::Bad(_)
        ));
    }

    #[test]
    fn parses_entries_as_sink_does() {
        assert_eq!(parse_entry(b"0644 5 a.txt"), Ok((0o644, 5, &b"a.txt"[..])));
        assert_eq!(
            parse_entry(b"0755 0 dir name"),
            Ok((0o755, 0, &b"dir name"[..]))
        );
        assert_eq!(
            parse_entry(b"0600 9223372036854775807 big"),
            Ok((0o600, i64::MAX as u64, &b"big"[..]))
        );
        for (bad, why) in [
            (&b"0648 5 x"[..], "bad mode"),
            (b"064", "bad mode"),
            (b"06445 5 x", "mode not delimited"),
            (b"0644 x", "size not present"),
            (b"0644 9223372036854775808 x", "size out of range"),
            (b"0644 5x", "size not delimited"),
            (b"0644 5 ", "unexpected filename"),
            (b"0644 5 .", "unexpected filename"),
            (b"0644 5 ..", "unexpected filename"),
            (b"0644 5 a/b", "unexpected filename"),
        ] {
            assert_eq!(
                parse_entry(bad),
                Err(why),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn checks_times_as_sink_does() {
        assert!(times_ok(b"1700000000 0 1700000001 0"));
        assert!(times_ok(b"1 999999 2 999999"));
        for bad in [
            &b"1 1000000 1 0"[..],
            b"1 0 1",
            b"1 0 1 0 1",
            b"x 0 1 0",
            b"1  0 1 0",
            b"-1 0 1 0",
            b"",
        ] {
            assert!(!times_ok(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
