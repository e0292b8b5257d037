//! Watches an SFTP stream (draft-ietf-secsh-filexfer-02, what OpenSSH speaks) passing through
//! the gateway and turns it into file-operation events: open (path, flags), bytes read and
//! written per file, close, remove, rename, mkdir, rmdir. It only observes: the bytes are
//! forwarded unchanged whatever it makes of them, and malformed input stops the observation,
//! never the session. Memory is bounded by the packet-size cap and the handle-table cap.

use std::collections::HashMap;

/// Packets larger than this are not parsed (OpenSSH's own limit is 256 KiB).
const MAX_PACKET: usize = 256 * 1024 + 1024;
/// Open handles tracked at most.
const MAX_HANDLES: usize = 4096;

const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_RENAME: u8 = 18;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;

/// One file operation.
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
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.0.get(..4)?;
        let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        self.0 = &self.0[4..];
        Some(v)
    }
    fn string(&mut self) -> Option<&[u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        let s = self.0.get(..n)?;
        self.0 = &self.0[n..];
        Some(s)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).chars().take(4096).collect()
}

/// Reassembles length-prefixed packets from a byte stream.
#[derive(Default)]
struct Framer {
    buf: Vec<u8>,
    broken: bool,
}

impl Framer {
    fn push(&mut self, data: &[u8], mut each: impl FnMut(&[u8])) {
        if self.broken {
            return;
        }
        self.buf.extend_from_slice(data);
        loop {
            let Some(len) = self
                .buf
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            else {
                return;
            };
            if len > MAX_PACKET {
                // Not SFTP as we know it: stop observing, keep nothing.
                self.broken = true;
                self.buf = Vec::new();
                return;
            }
            if self.buf.len() < 4 + len {
                return;
            }
            let packet: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
            each(&packet);
        }
    }
}

/// The observer of one SFTP session.
#[derive(Default)]
pub struct SftpObserver {
    up: Framer,
    down: Framer,
    /// request id → path of a pending OPEN.
    pending_open: HashMap<u32, (String, u32)>,
    /// request id → handle of a pending READ (bytes counted when DATA answers).
    pending_read: HashMap<u32, Vec<u8>>,
    /// handle → (path, read, written).
    handles: HashMap<Vec<u8>, (String, u64, u64)>,
}

impl SftpObserver {
    /// Bytes from the client to the server.
    pub fn client_bytes(&mut self, data: &[u8]) -> Vec<FileOp> {
        let mut ops = Vec::new();
        let (pending_open, pending_read, handles) = (
            &mut self.pending_open,
            &mut self.pending_read,
            &mut self.handles,
        );
        self.up.push(data, |p| {
            let mut r = Reader(p);
            let Some(kind) = r.u8() else { return };
            // INIT (1) has a version, not a request id.
            if kind == 1 {
                return;
            }
            let Some(id) = r.u32() else { return };
            match kind {
                FXP_OPEN => {
                    if let (Some(path), Some(flags)) = (r.string().map(text), r.u32()) {
                        if pending_open.len() < MAX_HANDLES {
                            pending_open.insert(id, (path.clone(), flags));
                        }
                        ops.push(FileOp::Open { path, flags });
                    }
                }
                FXP_CLOSE => {
                    if let Some(h) = r.string() {
                        if let Some((path, read, written)) = handles.remove(h) {
                            ops.push(FileOp::Close {
                                path,
                                read,
                                written,
                            });
                        }
                    }
                }
                FXP_READ => {
                    if let Some(h) = r.string() {
                        if handles.contains_key(h) && pending_read.len() < MAX_HANDLES {
                            pending_read.insert(id, h.to_vec());
                        }
                    }
                }
                FXP_WRITE => {
                    if let Some(h) = r.string().map(<[u8]>::to_vec) {
                        let _offset = (r.u32(), r.u32());
                        if let (Some(e), Some(d)) = (handles.get_mut(&h), r.string()) {
                            e.2 += d.len() as u64;
                        }
                    }
                }
                FXP_REMOVE => {
                    if let Some(path) = r.string().map(text) {
                        ops.push(FileOp::Remove { path });
                    }
                }
                FXP_MKDIR => {
                    if let Some(path) = r.string().map(text) {
                        ops.push(FileOp::Mkdir { path });
                    }
                }
                FXP_RMDIR => {
                    if let Some(path) = r.string().map(text) {
                        ops.push(FileOp::Rmdir { path });
                    }
                }
                FXP_RENAME => {
                    if let (Some(from), Some(to)) = (r.string().map(text), r.string().map(text)) {
                        ops.push(FileOp::Rename { from, to });
                    }
                }
                _ => {}
            }
        });
        ops
    }

    /// Bytes from the server to the client.
    pub fn server_bytes(&mut self, data: &[u8]) {
        let (pending_open, pending_read, handles) = (
            &mut self.pending_open,
            &mut self.pending_read,
            &mut self.handles,
        );
        self.down.push(data, |p| {
            let mut r = Reader(p);
            let (Some(kind), Some(id)) = (r.u8(), r.u32()) else {
                return;
            };
            match kind {
                FXP_HANDLE => {
                    if let (Some((path, _)), Some(h)) = (pending_open.remove(&id), r.string()) {
                        if handles.len() < MAX_HANDLES {
                            handles.insert(h.to_vec(), (path, 0, 0));
                        }
                    }
                }
                FXP_DATA => {
                    if let (Some(h), Some(d)) = (pending_read.remove(&id), r.string()) {
                        if let Some(e) = handles.get_mut(&h) {
                            e.1 += d.len() as u64;
                        }
                    }
                }
                _ => {
                    pending_open.remove(&id);
                    pending_read.remove(&id);
                }
            }
        });
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

    #[test]
    fn follows_an_upload_split_at_every_byte() {
        let mut client = Vec::new();
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
        let handle = packet(FXP_HANDLE, 1, &[&s(b"H1")]);
        let mut o = SftpObserver::default();
        let mut ops = o.client_bytes(&client[..client.len() / 3]);
        // The server's HANDLE answer arrives before the WRITE is parsed.
        for b in &handle {
            o.server_bytes(std::slice::from_ref(b));
        }
        for b in &client[client.len() / 3..] {
            ops.extend(o.client_bytes(std::slice::from_ref(b)));
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
    }

    #[test]
    fn survives_hostile_input_with_bounded_memory() {
        let mut o = SftpObserver::default();
        // A huge declared length stops the observation and keeps nothing.
        assert!(o
            .client_bytes(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .is_empty());
        assert!(o.client_bytes(&vec![0u8; 1 << 20]).is_empty());
        assert!(o.up.buf.is_empty());
        // Truncated fields inside a well-framed packet are ignored.
        let mut o = SftpObserver::default();
        let bad = packet(FXP_OPEN, 1, &[&[0xff, 0xff, 0xff, 0xf0, b'x']]);
        assert!(o.client_bytes(&bad).is_empty());
        assert!(o
            .client_bytes(&packet(FXP_RENAME, 1, &[&s(b"only-one")]))
            .is_empty());
        o.server_bytes(&packet(FXP_HANDLE, 99, &[&[0, 0]]));
        o.server_bytes(&[0, 0, 0, 0]);
        // Many opens never answered are capped.
        for i in 0..(MAX_HANDLES as u32 + 100) {
            o.client_bytes(&packet(FXP_OPEN, i, &[&s(b"/x"), &0u32.to_be_bytes()]));
        }
        assert!(o.pending_open.len() <= MAX_HANDLES);
    }
}
