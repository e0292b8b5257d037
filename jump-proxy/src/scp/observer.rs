//! Watches a legacy scp transfer (`scp -O`: the rcp protocol over an exec channel running
//! `scp -t TARGET` or `scp -f SOURCE...` on the server) passing through the gateway and turns it
//! into file-operation events: a file opened (path, mode, size), closed (bytes moved and the
//! outcome), a directory made (upload) or sent (download), and the error messages either end sent.
//!
//! It only observes: the relay forwards the bytes unchanged and at once whatever it makes of them.
//! It frames the stream exactly as OpenSSH's `scp.c` does (`source()`, `sink()`, `response()`;
//! the framing is `wire`'s), and the first thing it cannot follow (or bytes after the transfer
//! ended, or more than `MAX_ERRORS` error messages) ends the observation with one `GaveUp` event
//! instead of a guess; the relay then records the channel like any exec, starting with those
//! bytes. Memory is bounded by one record line and one status message (the 2,047 bytes `sink()`
//! and `response()` read at most) and the current directory's path.

use super::command::{Direction, ScpCommand};
use super::wire::{feed_line, parse_entry, text, times_ok, Feed, Resp, Response};

/// Error messages reported per channel; past this, one `ErrorsSuppressed` and the observer
/// gives up (and the relay records the channel).
const MAX_ERRORS: usize = 100;
/// Longest path built (a hostile sender can nest directories without end; Linux's PATH_MAX
/// is 4,096, so no transfer that works comes near).
const MAX_PATH: usize = 8192;

/// One end of the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The user's scp.
    Client,
    /// The server's scp.
    Server,
}

impl Side {
    /// `client` or `server`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// Where a file or directory is on the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScpPath {
    /// The path. For an upload to a target that may or may not be an existing directory (only
    /// the server knows), the path when it is not one: `sink()` then writes the target itself.
    pub path: String,
    /// For such an upload, the path when the target is an existing directory.
    pub if_target_is_dir: Option<String>,
}

/// One file operation seen in an scp transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScpOp {
    /// The receiver accepted a file: it is open for writing (upload) or reading (download).
    Open {
        /// Path on the server.
        path: ScpPath,
        /// Permission bits the sender gave (`C0644`).
        mode: u32,
        /// Size the sender announced.
        size: u64,
        /// Upload or download.
        direction: Direction,
    },
    /// A file's transfer ended. Every `Open` is followed by one `Close`.
    Close {
        /// Path on the server.
        path: ScpPath,
        /// Bytes the client read (download).
        read: u64,
        /// Bytes the client wrote (upload).
        written: u64,
        /// Why it failed, when it did.
        error: Option<String>,
    },
    /// Upload: the server made (or reused) a directory and goes into it.
    Mkdir {
        /// Path on the server.
        path: ScpPath,
        /// Permission bits the sender gave.
        mode: u32,
    },
    /// Download: the server sends a directory's contents.
    OpenDir {
        /// Path on the server.
        path: ScpPath,
        /// Its permission bits.
        mode: u32,
    },
    /// An error message one end sent: a refused file, a missing source, a failed write.
    Error {
        /// Who sent it.
        from: Side,
        /// The entry it answers, when it answers one.
        path: Option<ScpPath>,
        /// The message (OpenSSH's start with `scp: `).
        message: String,
    },
    /// More than `MAX_ERRORS` error messages: the rest are not reported (a `GaveUp` follows).
    ErrorsSuppressed {
        /// How many were reported.
        reported: usize,
    },
    /// The stream stopped making sense as scp: nothing more is observed on this channel.
    GaveUp {
        /// What did not make sense.
        reason: String,
    },
}

/// `dir/name` without doubling a slash.
fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether `sink()` certainly finds an existing directory at `target` when the transfer works:
/// `-d` makes it check, and a path ending in `/`, `.` or `..` can be nothing else.
fn target_is_dir(target: &str, d_flag: bool) -> bool {
    d_flag
        || target.ends_with('/')
        || target == "."
        || target == ".."
        || target.ends_with("/.")
        || target.ends_with("/..")
}

/// A source operand as `source()` opens it: trailing slashes removed.
fn strip_slashes(w: &str) -> &str {
    let t = w.trim_end_matches('/');
    if t.is_empty() && !w.is_empty() {
        "/"
    } else {
        t
    }
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// What the observer waits for next.
enum Expect {
    /// A response from the receiver to what the sender sent.
    Response(Awaiting),
    /// A record from the sender.
    Record,
    /// File bytes from the sender (this many more).
    Data(u64),
    /// The sender's status after a file's bytes.
    Status,
    /// The transfer is over: any more bytes are not scp's.
    Done,
    /// The channel ended.
    Closed,
    /// The stream stopped making sense.
    GaveUp,
}

/// What a pending response answers.
enum Awaiting {
    /// The receiver's first word.
    Start,
    Times,
    File {
        path: ScpPath,
        mode: u32,
        size: u64,
    },
    Dir {
        path: ScpPath,
        mode: u32,
    },
    End,
    /// The receiver's word on a file whose bytes have passed.
    FileEnd,
}

/// The file being transferred.
struct OpenFile {
    path: ScpPath,
    moved: u64,
    error: Option<String>,
}

/// The directory the transfer is in, and how to get back out.
#[derive(Default)]
struct Dirs {
    cur: ScpPath,
    /// Lengths of `cur`'s two paths before each directory was entered.
    marks: Vec<(usize, usize)>,
}

impl Dirs {
    fn enter(&mut self, dir: ScpPath) {
        let alt = self.cur.if_target_is_dir.as_ref().map_or(0, String::len);
        self.marks.push((self.cur.path.len(), alt));
        self.cur = dir;
    }

    /// Leaves the current directory; false at the top.
    fn leave(&mut self) -> bool {
        let Some((p, a)) = self.marks.pop() else {
            return false;
        };
        // A child's path is its parent's plus a suffix, so these are char boundaries; checked
        // all the same, since `truncate` panics on anything else.
        if self.cur.path.is_char_boundary(p) {
            self.cur.path.truncate(p);
        }
        if let Some(alt) = self.cur.if_target_is_dir.as_mut() {
            if alt.is_char_boundary(a) {
                alt.truncate(a);
            }
        }
        true
    }
}

/// The observer of one scp channel.
pub struct ScpObserver {
    cmd: ScpCommand,
    expect: Expect,
    /// A record line from the sender, so far.
    line: Vec<u8>,
    /// A response from the receiver, so far.
    resp: Response,
    /// The sender's status after a file, so far.
    status: Response,
    dirs: Dirs,
    file: Option<OpenFile>,
    /// Error messages reported so far.
    errors: usize,
    /// An error message past `MAX_ERRORS` arrived.
    too_many_errors: bool,
}

impl ScpObserver {
    /// An observer for a parsed command.
    pub fn new(cmd: ScpCommand) -> ScpObserver {
        ScpObserver {
            cmd,
            expect: Expect::Response(Awaiting::Start),
            line: Vec::new(),
            resp: Response::default(),
            status: Response::default(),
            dirs: Dirs::default(),
            file: None,
            errors: 0,
            too_many_errors: false,
        }
    }

    /// Bytes from the client to the server (standard input of the server's scp).
    pub fn client_bytes(&mut self, data: &[u8]) -> Vec<ScpOp> {
        let mut ops = Vec::new();
        match self.cmd.direction() {
            Direction::Upload => self.sender_bytes(data, &mut ops),
            Direction::Download => self.receiver_bytes(data, &mut ops),
        }
        self.check_errors(&mut ops);
        ops
    }

    /// Bytes from the server to the client (standard output of the server's scp).
    pub fn server_bytes(&mut self, data: &[u8]) -> Vec<ScpOp> {
        let mut ops = Vec::new();
        match self.cmd.direction() {
            Direction::Upload => self.receiver_bytes(data, &mut ops),
            Direction::Download => self.sender_bytes(data, &mut ops),
        }
        self.check_errors(&mut ops);
        ops
    }

    /// The channel ended: a file still open is closed as incomplete.
    pub fn finish(&mut self) -> Vec<ScpOp> {
        let mut ops = Vec::new();
        if let Some(f) = self.file.take() {
            ops.push(self.close(
                f,
                Some("the channel closed before the file's transfer was confirmed".into()),
            ));
        }
        self.expect = Expect::Closed;
        ops
    }

    /// Ends the observation for a reason seen outside the stream (the server wrote to its
    /// standard error): the same events as when the stream stops making sense.
    pub fn give_up_now(&mut self, reason: &str) -> Vec<ScpOp> {
        let mut ops = Vec::new();
        if !matches!(self.expect, Expect::GaveUp | Expect::Closed) {
            self.give_up(reason, &mut ops);
        }
        ops
    }

    /// Reports an error message, unless there were too many.
    fn error(&mut self, from: Side, path: Option<ScpPath>, message: String, ops: &mut Vec<ScpOp>) {
        if self.errors >= MAX_ERRORS {
            self.too_many_errors = true;
            return;
        }
        self.errors += 1;
        ops.push(ScpOp::Error {
            from,
            path,
            message,
        });
    }

    /// Past `MAX_ERRORS` error messages: one event says so and the observer gives up.
    fn check_errors(&mut self, ops: &mut Vec<ScpOp>) {
        if self.too_many_errors && !matches!(self.expect, Expect::GaveUp | Expect::Closed) {
            ops.push(ScpOp::ErrorsSuppressed {
                reported: self.errors,
            });
            self.give_up("too many error messages", ops);
        }
    }

    fn sender(&self) -> Side {
        match self.cmd.direction() {
            Direction::Upload => Side::Client,
            Direction::Download => Side::Server,
        }
    }

    fn receiver(&self) -> Side {
        match self.cmd.direction() {
            Direction::Upload => Side::Server,
            Direction::Download => Side::Client,
        }
    }

    fn close(&self, f: OpenFile, error: Option<String>) -> ScpOp {
        let (read, written) = match self.cmd.direction() {
            Direction::Upload => (0, f.moved),
            Direction::Download => (f.moved, 0),
        };
        ScpOp::Close {
            path: f.path,
            read,
            written,
            error,
        }
    }

    fn give_up(&mut self, reason: &str, ops: &mut Vec<ScpOp>) {
        if let Some(f) = self.file.take() {
            ops.push(self.close(f, Some(format!("scp observer gave up: {reason}"))));
        }
        ops.push(ScpOp::GaveUp {
            reason: reason.into(),
        });
        self.expect = Expect::GaveUp;
        self.line = Vec::new();
        self.resp = Response::default();
        self.status = Response::default();
        self.dirs = Dirs::default();
    }

    fn sender_bytes(&mut self, mut data: &[u8], ops: &mut Vec<ScpOp>) {
        while !data.is_empty() {
            if self.too_many_errors {
                return;
            }
            match &mut self.expect {
                Expect::GaveUp | Expect::Closed => return,
                Expect::Done => return self.give_up("bytes after the end of the transfer", ops),
                // Stock scp never sends before the answer to what it sent: a sender that does
                // could be read differently by the receiver depending on that answer.
                Expect::Response(_) => {
                    return self.give_up("the sender did not wait for the response", ops)
                }
                Expect::Data(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    let end = *left == 0;
                    if let Some(f) = self.file.as_mut() {
                        f.moved += n;
                    }
                    // n <= data.len(), so this never falls back.
                    data = data.get(n as usize..).unwrap_or_default();
                    if end {
                        self.expect = Expect::Status;
                    }
                }
                Expect::Status => match self.status.feed(&mut data) {
                    Feed::More => {}
                    Feed::Bad(why) => return self.give_up(why, ops),
                    Feed::Done(r) => self.file_status(r, ops),
                },
                Expect::Record => match feed_line(&mut self.line, &mut data) {
                    Feed::More => {}
                    Feed::Bad(_) => return self.give_up("record line too long", ops),
                    Feed::Done(line) => self.record(&line, ops),
                },
            }
        }
    }

    fn receiver_bytes(&mut self, mut data: &[u8], ops: &mut Vec<ScpOp>) {
        while !data.is_empty() {
            if self.too_many_errors || matches!(self.expect, Expect::GaveUp | Expect::Closed) {
                return;
            }
            if matches!(self.expect, Expect::Done) {
                return self.give_up("bytes after the end of the transfer", ops);
            }
            match self.resp.feed(&mut data) {
                Feed::More => {}
                Feed::Bad(why) => return self.give_up(why, ops),
                Feed::Done(r) => self.response(r, ops),
            }
        }
    }

    /// The sender's status after a file's bytes; the receiver answers it.
    fn file_status(&mut self, r: Resp, ops: &mut Vec<ScpOp>) {
        match r {
            Resp::Ok => {}
            // `source()` could not read the file: it sent filler to stay in step.
            Resp::Error(m) => {
                if let Some(f) = self.file.as_mut() {
                    f.error.get_or_insert(m);
                }
            }
            // `sink()` exits.
            Resp::Fatal(m) => {
                if let Some(f) = self.file.take() {
                    ops.push(self.close(f, Some(m)));
                }
                self.expect = Expect::Done;
                return;
            }
        }
        self.expect = Expect::Response(Awaiting::FileEnd);
    }

    fn record(&mut self, line: &[u8], ops: &mut Vec<ScpOp>) {
        let Some((&kind, rest)) = line.split_first() else {
            return self.give_up("empty record", ops);
        };
        if line.contains(&0) {
            return self.give_up("NUL byte in a record", ops);
        }
        match kind {
            // An error the sender reports and goes on from (`run_err()` in `source()`).
            1 | 2 => {
                self.error(self.sender(), None, text(rest), ops);
                if kind == 2 {
                    self.expect = Expect::Done;
                }
            }
            // `sink()` takes any line starting with E as the end of a directory.
            b'E' => self.expect = Expect::Response(Awaiting::End),
            b'T' if times_ok(rest) => self.expect = Expect::Response(Awaiting::Times),
            b'T' => self.give_up("malformed T record", ops),
            b'C' | b'D' => {
                let (mode, size, name) = match parse_entry(rest) {
                    Ok(e) => e,
                    Err(why) => return self.give_up(why, ops),
                };
                let path = match self.entry_path(&text(name)) {
                    Ok(p) => p,
                    Err(why) => return self.give_up(why, ops),
                };
                if path.path.len() > MAX_PATH
                    || path.if_target_is_dir.as_ref().map_or(0, String::len) > MAX_PATH
                {
                    return self.give_up("path too long", ops);
                }
                self.expect = Expect::Response(if kind == b'C' {
                    Awaiting::File { path, mode, size }
                } else {
                    Awaiting::Dir { path, mode }
                });
            }
            _ => self.give_up("unexpected record", ops),
        }
    }

    /// Where an entry named in a record is on the server.
    fn entry_path(&self, name: &str) -> Result<ScpPath, &'static str> {
        if !self.dirs.marks.is_empty() {
            let cur = &self.dirs.cur;
            return Ok(ScpPath {
                path: join(&cur.path, name),
                if_target_is_dir: cur.if_target_is_dir.as_deref().map(|d| join(d, name)),
            });
        }
        let path = self.cmd.path();
        Ok(match self.cmd.direction() {
            // `sink()` writes TARGET/NAME when TARGET is an existing directory, else TARGET.
            Direction::Upload => {
                if target_is_dir(path, self.cmd.target_is_dir()) {
                    ScpPath {
                        path: join(path, name),
                        if_target_is_dir: None,
                    }
                } else {
                    ScpPath {
                        path: path.to_owned(),
                        if_target_is_dir: Some(join(path, name)),
                    }
                }
            }
            // `source()` sends the last component of its one operand (no shell expanded it).
            Direction::Download => {
                let source = strip_slashes(path);
                if basename(source) != name {
                    return Err("a name the source is not");
                }
                ScpPath {
                    path: source.to_owned(),
                    if_target_is_dir: None,
                }
            }
        })
    }

    /// A response from the receiver.
    fn response(&mut self, r: Resp, ops: &mut Vec<ScpOp>) {
        let from = self.receiver();
        let awaiting = match std::mem::replace(&mut self.expect, Expect::Record) {
            Expect::Response(a) => a,
            other => {
                self.expect = other;
                if let Resp::Error(m) | Resp::Fatal(m) = r {
                    let path = self.file.as_ref().map(|f| f.path.clone());
                    self.error(from, path, m, ops);
                }
                return self.give_up("a response nobody waited for", ops);
            }
        };
        let (error, fatal) = match r {
            Resp::Ok => (None, false),
            Resp::Error(m) => (Some(m), false),
            Resp::Fatal(m) => (Some(m), true),
        };
        match (awaiting, error) {
            (Awaiting::Start | Awaiting::Times, None) => {}
            // After a refused T the sender skips that entry; after a refused start the client
            // gives up (upload) or the server's scp goes on regardless (download).
            (Awaiting::Start | Awaiting::Times, Some(m)) => self.error(from, None, m, ops),
            (Awaiting::File { path, mode, size }, None) => {
                ops.push(ScpOp::Open {
                    path: path.clone(),
                    mode,
                    size,
                    direction: self.cmd.direction(),
                });
                self.file = Some(OpenFile {
                    path,
                    moved: 0,
                    error: None,
                });
                self.expect = if size == 0 {
                    Expect::Status
                } else {
                    Expect::Data(size)
                };
            }
            (Awaiting::File { path, .. } | Awaiting::Dir { path, .. }, Some(m)) => {
                self.error(from, Some(path), m, ops)
            }
            (Awaiting::Dir { path, mode }, None) => {
                ops.push(match self.cmd.direction() {
                    Direction::Upload => ScpOp::Mkdir {
                        path: path.clone(),
                        mode,
                    },
                    Direction::Download => ScpOp::OpenDir {
                        path: path.clone(),
                        mode,
                    },
                });
                self.dirs.enter(path);
            }
            (Awaiting::End, error) => {
                if let Some(m) = error {
                    self.error(from, None, m, ops);
                }
                // `E` at the top ends `sink()` itself.
                if !self.dirs.leave() {
                    self.expect = Expect::Done;
                }
            }
            (Awaiting::FileEnd, error) => {
                if let Some(mut f) = self.file.take() {
                    if let Some(m) = error {
                        f.error.get_or_insert(m);
                    }
                    let error = f.error.take();
                    ops.push(self.close(f, error));
                }
            }
        }
        if fatal {
            if let Some(f) = self.file.take() {
                ops.push(self.close(f, Some("the receiver ended the transfer".into())));
            }
            self.expect = Expect::Done;
        }
    }
}

#[cfg(test)]
mod tests;
