//! Watches an SFTP stream (draft-ietf-secsh-filexfer-02, what OpenSSH speaks) passing through
//! the gateway and turns it into file-operation events: open (path, flags), bytes read and
//! written per file, close, remove, rename, mkdir, rmdir. It follows the protocol strictly:
//! the first thing that is not SFTP as OpenSSH speaks it (a length no packet has, a type the
//! direction does not send, a request before INIT, a response to no request, a truncated
//! field the observer reads) ends the observation with one `GaveUp`, upon which the relay
//! records the channel from those bytes on. Memory is bounded by the packet-size cap and the
//! caps on open handles and requests in flight.

use std::collections::{HashMap, HashSet};

use ssh_encoding::Decode as _;

/// Packets larger than this are not SFTP (OpenSSH's own limit is 256 KiB).
const MAX_PACKET: usize = 256 * 1024 + 1024;
/// Open handles tracked at most.
const MAX_HANDLES: usize = 4096;
/// Requests awaiting their response at most (OpenSSH's sftp keeps 64 in flight by default).
const MAX_IN_FLIGHT: usize = 16 * 1024;

const FXP_INIT: u8 = 1;
const FXP_VERSION: u8 = 2;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_RENAME: u8 = 18;
const FXP_SYMLINK: u8 = 20;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
const FXP_ATTRS: u8 = 105;
const FXP_EXTENDED: u8 = 200;
const FXP_EXTENDED_REPLY: u8 = 201;

/// One file operation, or the end of the observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    /// A file was opened.
    Open {
        /// Path as the client sent it.
        path: String,
        /// SSH_FXF_* flags.
        flags: u32,
    },
    /// A file was closed, with the bytes moved through its handle.
    Close {
        /// Path.
        path: String,
        /// Bytes the client read.
        read: u64,
        /// Bytes the client wrote.
        written: u64,
    },
    /// `rm`.
    Remove {
        /// Path.
        path: String,
    },
    /// `rename`.
    Rename {
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// `mkdir`.
    Mkdir {
        /// Path.
        path: String,
    },
    /// `rmdir`.
    Rmdir {
        /// Path.
        path: String,
    },
    /// The stream stopped being SFTP (or the server wrote to standard error): nothing more is
    /// reported, and the channel must be recorded from the bytes that caused it.
    GaveUp {
        /// Why.
        reason: String,
    },
}

/// The rest of a packet, read as SSH wire data (draft-ietf-secsh-filexfer-02 §3 uses RFC 4251's
/// `uint32`, `uint64` and `string`) through `ssh-encoding`; every read answers `None` when
/// the packet ends too early.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        u8::decode(&mut self.0).ok()
    }
    fn u32(&mut self) -> Option<u32> {
        u32::decode(&mut self.0).ok()
    }
    fn u64(&mut self) -> Option<u64> {
        u64::decode(&mut self.0).ok()
    }
    /// A string, borrowed from the packet (ssh-encoding's readers copy).
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        if self.0.len() < n {
            return None;
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(s)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).chars().take(4096).collect()
}

/// Why the observation ends.
type Bad = String;

/// Reassembles length-prefixed packets from a byte stream.
#[derive(Default)]
struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// Appends bytes and hands every packet (without its length) to `each`: complete ones
    /// with `true`, and what has come of the last one with `false`, so that bytes which can
    /// no longer start an SFTP packet are refused in the chunk that brought them rather than
    /// passed on while the packet is incomplete. The first length no SFTP packet has, or the
    /// first error of `each`, is returned.
    fn push(
        &mut self,
        data: &[u8],
        mut each: impl FnMut(&[u8], bool) -> Result<(), Bad>,
    ) -> Result<(), Bad> {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        let result = loop {
            let rest = self.buf.get(at..).unwrap_or_default();
            if rest.len() < 4 {
                // The smallest length these bytes can still begin.
                let mut b = [0u8; 4];
                b[..rest.len()].copy_from_slice(rest);
                let least = u32::from_be_bytes(b) as usize;
                if least > MAX_PACKET {
                    break Err(format!("packet length {least} is not SFTP"));
                }
                break Ok(());
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            // Every packet holds at least its type byte.
            if len == 0 || len > MAX_PACKET {
                break Err(format!("packet length {len} is not SFTP"));
            }
            let Some(packet) = rest.get(4..4 + len) else {
                break each(&rest[4..], false);
            };
            if let Err(e) = each(packet, true) {
                break Err(e);
            }
            at += 4 + len;
        };
        self.buf.drain(..at);
        result
    }
}

/// What the observer knows of the session (apart from the framing).
#[derive(Default)]
struct State {
    /// The client's INIT and the server's VERSION were seen.
    init: bool,
    version: bool,
    /// Ids of requests the server has not answered.
    in_flight: HashSet<u32>,
    /// request id → path and flags of a pending OPEN.
    pending_open: HashMap<u32, (String, u32)>,
    /// request id → handle of a pending READ (bytes counted when DATA answers).
    pending_read: HashMap<u32, Vec<u8>>,
    /// handle → (path, read, written).
    handles: HashMap<Vec<u8>, (String, u64, u64)>,
}

fn truncated(what: &str) -> Bad {
    format!("truncated {what}")
}

impl State {
    /// Whether a client's packet of this type may come now.
    fn request_type(&self, kind: u8) -> Result<(), Bad> {
        if kind == FXP_INIT {
            // INIT opens the session, once.
            return match self.init {
                true => Err("a second INIT".into()),
                false => Ok(()),
            };
        }
        // OPEN (3) to SYMLINK (20), and EXTENDED: every request version 3 has.
        if !(FXP_OPEN..=FXP_SYMLINK).contains(&kind) && kind != FXP_EXTENDED {
            return Err(format!("packet type {kind} is no SFTP request"));
        }
        if !self.init {
            return Err("a request before INIT".into());
        }
        Ok(())
    }

    /// Whether a server's packet of this type, whose id begins with `id` (all of it, or as
    /// much as has come), may come now.
    fn response_header(&self, kind: u8, id: &[u8]) -> Result<(), Bad> {
        if kind == FXP_VERSION {
            // The answer to INIT, once.
            return match self.init && !self.version {
                true => Ok(()),
                false => Err("a VERSION that answers no INIT".into()),
            };
        }
        // STATUS (101) to ATTRS (105), and EXTENDED_REPLY.
        if !(FXP_STATUS..=FXP_ATTRS).contains(&kind) && kind != FXP_EXTENDED_REPLY {
            return Err(format!("packet type {kind} is no SFTP response"));
        }
        if !self.version {
            return Err("a response before VERSION".into());
        }
        // Each request has exactly one response: anything else is not the server's
        // sftp-server answering the client.
        let id = &id[..id.len().min(4)];
        let answers = match <[u8; 4]>::try_from(id) {
            Ok(b) => self.in_flight.contains(&u32::from_be_bytes(b)),
            Err(_) => self
                .in_flight
                .iter()
                .any(|i| i.to_be_bytes().starts_with(id)),
        };
        if !answers {
            let shown = match <[u8; 4]>::try_from(id) {
                Ok(b) => u32::from_be_bytes(b).to_string(),
                Err(_) => format!("beginning {id:02x?}"),
            };
            return Err(format!("a response to no request (id {shown})"));
        }
        Ok(())
    }

    /// The beginning of a packet that has not fully come, judged as far as it goes.
    fn partial(&self, from_client: bool, p: &[u8]) -> Result<(), Bad> {
        match (p.split_first(), from_client) {
            (None, _) => Ok(()),
            (Some((&kind, _)), true) => self.request_type(kind),
            (Some((&kind, id)), false) => self.response_header(kind, id),
        }
    }

    /// One packet from the client.
    fn request(&mut self, p: &[u8], ops: &mut Vec<FileOp>) -> Result<(), Bad> {
        let mut r = Reader(p);
        let kind = r.u8().ok_or_else(|| truncated("packet"))?;
        self.request_type(kind)?;
        if kind == FXP_INIT {
            // INIT has a version, not a request id.
            r.u32().ok_or_else(|| truncated("INIT"))?;
            self.init = true;
            return Ok(());
        }
        let id = r.u32().ok_or_else(|| truncated("request"))?;
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return Err("too many requests in flight".into());
        }
        self.in_flight.insert(id);
        let bad = || truncated(&format!("request of type {kind}"));
        match kind {
            FXP_OPEN => {
                let path = r.string().map(text).ok_or_else(bad)?;
                let flags = r.u32().ok_or_else(bad)?;
                if self.pending_open.len() < MAX_HANDLES {
                    self.pending_open.insert(id, (path.clone(), flags));
                }
                ops.push(FileOp::Open { path, flags });
            }
            FXP_CLOSE => {
                let h = r.string().ok_or_else(bad)?;
                if let Some((path, read, written)) = self.handles.remove(h) {
                    ops.push(FileOp::Close {
                        path,
                        read,
                        written,
                    });
                }
            }
            FXP_READ => {
                let h = r.string().ok_or_else(bad)?;
                if self.handles.contains_key(h) && self.pending_read.len() < MAX_HANDLES {
                    self.pending_read.insert(id, h.to_vec());
                }
            }
            FXP_WRITE => {
                let h = r.string().ok_or_else(bad)?.to_vec();
                r.u64().ok_or_else(bad)?;
                let d = r.string().ok_or_else(bad)?;
                if let Some(e) = self.handles.get_mut(&h) {
                    e.2 += d.len() as u64;
                }
            }
            FXP_REMOVE => {
                let path = r.string().map(text).ok_or_else(bad)?;
                ops.push(FileOp::Remove { path });
            }
            FXP_MKDIR => {
                let path = r.string().map(text).ok_or_else(bad)?;
                ops.push(FileOp::Mkdir { path });
            }
            FXP_RMDIR => {
                let path = r.string().map(text).ok_or_else(bad)?;
                ops.push(FileOp::Rmdir { path });
            }
            FXP_RENAME => {
                let from = r.string().map(text).ok_or_else(bad)?;
                let to = r.string().map(text).ok_or_else(bad)?;
                ops.push(FileOp::Rename { from, to });
            }
            _ => {}
        }
        Ok(())
    }

    /// One packet from the server.
    fn response(&mut self, p: &[u8]) -> Result<(), Bad> {
        let mut r = Reader(p);
        let kind = r.u8().ok_or_else(|| truncated("packet"))?;
        if kind == FXP_VERSION {
            self.response_header(kind, &[])?;
            r.u32().ok_or_else(|| truncated("VERSION"))?;
            self.version = true;
            return Ok(());
        }
        let id = r.u32().ok_or_else(|| truncated("response"))?;
        self.response_header(kind, &id.to_be_bytes())?;
        self.in_flight.remove(&id);
        let open = self.pending_open.remove(&id);
        let read = self.pending_read.remove(&id);
        let bad = || truncated(&format!("response of type {kind}"));
        match kind {
            FXP_HANDLE => {
                let h = r.string().ok_or_else(bad)?;
                if let Some((path, _)) = open {
                    if self.handles.len() < MAX_HANDLES {
                        self.handles.insert(h.to_vec(), (path, 0, 0));
                    }
                }
            }
            FXP_DATA => {
                let d = r.string().ok_or_else(bad)?;
                if let Some(e) = read.and_then(|h| self.handles.get_mut(&h)) {
                    e.1 += d.len() as u64;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The observer of one SFTP session.
#[derive(Default)]
pub struct SftpObserver {
    up: Framer,
    down: Framer,
    state: State,
    gave_up: bool,
}

impl SftpObserver {
    /// Bytes from the client to the server.
    pub fn client_bytes(&mut self, data: &[u8]) -> Vec<FileOp> {
        let mut ops = Vec::new();
        if self.gave_up {
            return ops;
        }
        let state = &mut self.state;
        let r = self.up.push(data, |p, complete| match complete {
            true => state.request(p, &mut ops),
            false => state.partial(true, p),
        });
        if let Err(why) = r {
            self.give_up(why, &mut ops);
        }
        ops
    }

    /// Bytes from the server to the client (its standard output).
    pub fn server_bytes(&mut self, data: &[u8]) -> Vec<FileOp> {
        let mut ops = Vec::new();
        if self.gave_up {
            return ops;
        }
        let state = &mut self.state;
        let r = self.down.push(data, |p, complete| match complete {
            true => state.response(p),
            false => state.partial(false, p),
        });
        if let Err(why) = r {
            self.give_up(why, &mut ops);
        }
        ops
    }

    /// Ends the observation for a reason seen outside the stream (the server wrote to its
    /// standard error): the same event as when the stream stops being SFTP.
    pub fn give_up_now(&mut self, reason: &str) -> Vec<FileOp> {
        let mut ops = Vec::new();
        if !self.gave_up {
            self.give_up(reason.into(), &mut ops);
        }
        ops
    }

    fn give_up(&mut self, reason: Bad, ops: &mut Vec<FileOp>) {
        ops.push(FileOp::GaveUp { reason });
        // Keep nothing: the channel is a recording from now on.
        *self = SftpObserver {
            gave_up: true,
            ..SftpObserver::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: u32, body: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![kind];
        p.extend_from_slice(&id.to_be_bytes());
        for b in body {
            p.extend_from_slice(b);
        }
        let mut out = (p.len() as u32).to_be_bytes().to_vec();
        out.extend(p);
        out
    }
    fn s(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }
    /// INIT and VERSION carry a version where other packets have an id.
    fn init() -> Vec<u8> {
        packet(FXP_INIT, 3, &[])
    }
    fn version() -> Vec<u8> {
        packet(FXP_VERSION, 3, &[&s(b"limits@openssh.com"), &s(b"1")])
    }
    fn status(id: u32) -> Vec<u8> {
        packet(FXP_STATUS, id, &[&0u32.to_be_bytes(), &s(b"ok"), &s(b"")])
    }
    fn gave_up(ops: &[FileOp]) -> Vec<&str> {
        ops.iter()
            .filter_map(|o| match o {
                FileOp::GaveUp { reason } => Some(reason.as_str()),
                _ => None,
            })
            .collect()
    }
    /// An observer that saw the handshake.
    fn started() -> SftpObserver {
        let mut o = SftpObserver::default();
        assert_eq!(o.client_bytes(&init()), []);
        assert_eq!(o.server_bytes(&version()), []);
        o
    }

    #[test]
    fn follows_an_upload_split_at_every_byte() {
        let mut client = init();
        client.extend(packet(
            FXP_OPEN,
            1,
            &[&s(b"/tmp/f"), &0x1au32.to_be_bytes(), &0u32.to_be_bytes()],
        ));
        client.extend(packet(
            FXP_WRITE,
            2,
            &[&s(b"H1"), &0u64.to_be_bytes(), &s(&[7u8; 1000])],
        ));
        client.extend(packet(FXP_CLOSE, 3, &[&s(b"H1")]));
        client.extend(packet(FXP_RENAME, 4, &[&s(b"/tmp/f"), &s(b"/tmp/g")]));
        let mut server = version();
        server.extend(packet(FXP_HANDLE, 1, &[&s(b"H1")]));
        let mut o = SftpObserver::default();
        let mut ops = o.client_bytes(&client[..client.len() / 3]);
        // The server's HANDLE answer arrives before the WRITE is parsed.
        for b in &server {
            ops.extend(o.server_bytes(std::slice::from_ref(b)));
        }
        for b in &client[client.len() / 3..] {
            ops.extend(o.client_bytes(std::slice::from_ref(b)));
        }
        for id in 2..=4 {
            ops.extend(o.server_bytes(&status(id)));
        }
        assert_eq!(
            ops,
            [
                FileOp::Open {
                    path: "/tmp/f".into(),
                    flags: 0x1a
                },
                FileOp::Close {
                    path: "/tmp/f".into(),
                    read: 0,
                    written: 1000
                },
                FileOp::Rename {
                    from: "/tmp/f".into(),
                    to: "/tmp/g".into()
                },
            ]
        );
        assert!(o.state.in_flight.is_empty());
    }

    #[test]
    fn counts_a_download_and_answers_out_of_order() {
        let mut o = started();
        let mut ops = o.client_bytes(&packet(
            FXP_OPEN,
            7,
            &[&s(b"/etc/motd"), &1u32.to_be_bytes(), &0u32.to_be_bytes()],
        ));
        ops.extend(o.server_bytes(&packet(FXP_HANDLE, 7, &[&s(b"h")])));
        for id in 8..11 {
            ops.extend(o.client_bytes(&packet(
                FXP_READ,
                id,
                &[
                    &s(b"h"),
                    &u64::from(id).to_be_bytes(),
                    &100u32.to_be_bytes(),
                ],
            )));
        }
        // sftp-server answers in order, but nothing in the protocol says it must.
        for id in [10, 8, 9] {
            ops.extend(o.server_bytes(&packet(FXP_DATA, id, &[&s(&[1u8; 100])])));
        }
        ops.extend(o.client_bytes(&packet(FXP_CLOSE, 11, &[&s(b"h")])));
        ops.extend(o.server_bytes(&status(11)));
        assert_eq!(
            ops,
            [
                FileOp::Open {
                    path: "/etc/motd".into(),
                    flags: 1
                },
                FileOp::Close {
                    path: "/etc/motd".into(),
                    read: 300,
                    written: 0
                },
            ]
        );
    }

    /// Where the stream comes from in a hostile case.
    enum Step {
        Client(Vec<u8>),
        Server(Vec<u8>),
        /// The server wrote to its standard error.
        Stderr,
    }
    use Step::{Client, Server, Stderr};

    #[test]
    fn gives_up_on_the_first_thing_that_is_not_sftp() {
        let open = || {
            packet(
                FXP_OPEN,
                1,
                &[&s(b"/x"), &0u32.to_be_bytes(), &0u32.to_be_bytes()],
            )
        };
        // (case, steps (the last one makes it give up), the reason)
        let cases: Vec<(&str, Vec<Step>, &str)> = vec![
            (
                "a shell command on the client's side",
                vec![Client(b"echo MARKER-$((6*7))\n".to_vec())],
                "packet length 1701013615 is not SFTP",
            ),
            (
                "a shell's text on the server's side",
                vec![Client(init()), Server(b"bash: no job control\n".to_vec())],
                "packet length 1650553704 is not SFTP",
            ),
            (
                "a shell's prompt, too short for a length",
                vec![Client(init()), Server(b"$ ".to_vec())],
                "packet length 606076928 is not SFTP",
            ),
            (
                "the first byte of a length no packet has",
                vec![Client(init()), Server(version()), Server(vec![1])],
                "packet length 16777216 is not SFTP",
            ),
            (
                "the type of a packet not yet complete",
                vec![Client(init()), Client(vec![0, 0, 0, 9, b'l'])],
                "packet type 108 is no SFTP request",
            ),
            (
                "the start of a response while nothing is in flight",
                vec![
                    Client(init()),
                    Server(version()),
                    Server(vec![0, 0, 0, 9, FXP_STATUS]),
                ],
                "a response to no request (id beginning [])",
            ),
            (
                "the start of an id no request has",
                vec![
                    Client(init()),
                    Server(version()),
                    Client(packet(FXP_REMOVE, 1, &[&s(b"/x")])),
                    Server(vec![0, 0, 0, 9, FXP_STATUS, 0, 0]),
                    Server(vec![1]),
                ],
                "a response to no request (id beginning [00, 00, 01])",
            ),
            (
                "an absurd length",
                vec![Client(vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3])],
                "packet length 4294967295 is not SFTP",
            ),
            (
                "one byte more than the largest packet",
                vec![Client(((MAX_PACKET + 1) as u32).to_be_bytes().to_vec())],
                "packet length 263169 is not SFTP",
            ),
            (
                "an empty packet",
                vec![Client(init()), Client(vec![0, 0, 0, 0])],
                "packet length 0 is not SFTP",
            ),
            (
                "a request before INIT",
                vec![Client(open())],
                "a request before INIT",
            ),
            (
                "a second INIT",
                vec![Client(init()), Server(version()), Client(init())],
                "a second INIT",
            ),
            (
                "a type no client sends",
                vec![Client(init()), Client(packet(99, 1, &[]))],
                "packet type 99 is no SFTP request",
            ),
            (
                "a response sent by the client",
                vec![Client(init()), Client(status(1))],
                "packet type 101 is no SFTP request",
            ),
            (
                "a VERSION before INIT",
                vec![Server(version())],
                "a VERSION that answers no INIT",
            ),
            (
                "a second VERSION",
                vec![Client(init()), Server(version()), Server(version())],
                "a VERSION that answers no INIT",
            ),
            (
                "a response before VERSION",
                vec![Client(init()), Client(open()), Server(status(1))],
                "a response before VERSION",
            ),
            (
                "a type no server sends",
                vec![
                    Client(init()),
                    Server(version()),
                    Server(packet(FXP_OPEN, 1, &[])),
                ],
                "packet type 3 is no SFTP response",
            ),
            (
                "a response to no request",
                vec![Client(init()), Server(version()), Server(status(7))],
                "a response to no request (id 7)",
            ),
            (
                "two responses to one request",
                vec![
                    Client(init()),
                    Server(version()),
                    Client(open()),
                    Server(status(1)),
                    Server(status(1)),
                ],
                "a response to no request (id 1)",
            ),
            (
                "a path longer than its packet",
                vec![
                    Client(init()),
                    Client(packet(FXP_OPEN, 1, &[&[0xff, 0xff, 0xff, 0xf0, b'x']])),
                ],
                "truncated request of type 3",
            ),
            (
                "a rename with one path",
                vec![
                    Client(init()),
                    Client(packet(FXP_RENAME, 1, &[&s(b"only-one")])),
                ],
                "truncated request of type 18",
            ),
            (
                "a request without its id",
                vec![Client(init()), Client(vec![0, 0, 0, 2, FXP_REMOVE, 0])],
                "truncated request",
            ),
            (
                "a HANDLE without a handle",
                vec![
                    Client(init()),
                    Server(version()),
                    Client(open()),
                    Server(packet(FXP_HANDLE, 1, &[&[0, 0]])),
                ],
                "truncated response of type 102",
            ),
            (
                "anything on the server's standard error",
                vec![Client(init()), Server(version()), Stderr],
                "the server wrote to standard error",
            ),
        ];
        for (case, steps, reason) in cases {
            let mut o = SftpObserver::default();
            let last = steps.len() - 1;
            for (i, step) in steps.into_iter().enumerate() {
                let ops = match step {
                    Client(b) => o.client_bytes(&b),
                    Server(b) => o.server_bytes(&b),
                    Stderr => o.give_up_now("the server wrote to standard error"),
                };
                let want: &[&str] = if i == last { &[reason] } else { &[] };
                assert_eq!(gave_up(&ops), want, "{case}, step {i}");
            }
            // Once: later bytes, SFTP or not, report nothing and are not kept.
            assert_eq!(o.client_bytes(&init()), [], "{case}");
            assert_eq!(o.server_bytes(&vec![0u8; 1 << 20]), [], "{case}");
            assert_eq!(o.give_up_now("again"), [], "{case}");
            assert!(o.up.buf.is_empty() && o.down.buf.is_empty(), "{case}");
            assert!(
                o.state.in_flight.is_empty() && o.state.handles.is_empty(),
                "{case}"
            );
        }
    }

    #[test]
    fn memory_is_bounded_by_the_caps() {
        let mut o = started();
        // Opens never answered: each is in flight, the paths kept are capped.
        for i in 0..MAX_IN_FLIGHT as u32 {
            let ops = o.client_bytes(&packet(FXP_OPEN, i, &[&s(b"/x"), &0u32.to_be_bytes()]));
            assert_eq!(gave_up(&ops), [] as [&str; 0]);
        }
        assert!(o.state.pending_open.len() <= MAX_HANDLES);
        // One more request in flight than the cap: not an SFTP client as OpenSSH's.
        let ops = o.client_bytes(&packet(FXP_REMOVE, u32::MAX, &[&s(b"/x")]));
        assert_eq!(gave_up(&ops), ["too many requests in flight"]);
        assert!(o.state.pending_open.is_empty());
        // A packet's bytes are kept only up to the largest packet.
        let mut o = started();
        let mut big = ((MAX_PACKET) as u32).to_be_bytes().to_vec();
        big.extend(vec![FXP_WRITE; MAX_PACKET - 1]);
        assert_eq!(o.client_bytes(&big), []);
        assert_eq!(o.up.buf.len(), MAX_PACKET + 3);
    }
}
