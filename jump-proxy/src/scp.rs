//! Watches a legacy scp transfer (`scp -O`: the rcp protocol over an exec channel running
//! `scp -t TARGET` or `scp -f SOURCE...` on the server) passing through the gateway and turns it
//! into file-operation events: a file opened (path, mode, size), closed (bytes moved and the
//! outcome), a directory made (upload) or sent (download), and the error messages either end sent.
//!
//! It only observes: the relay forwards the bytes unchanged and at once whatever it makes of them.
//! It frames the stream exactly as OpenSSH's `scp.c` does (`source()`, `sink()`, `response()`),
//! and the first thing it cannot follow (or bytes after the transfer ended, or more than
//! `MAX_ERRORS` error messages) ends the observation with one `GaveUp` event instead of a
//! guess; the relay then records the channel like any exec, starting with those bytes. Memory is bounded by one record line and one status message (the 2,047 bytes
//! `sink()` and `response()` read at most) and the current directory's path.
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
const MAX_LINE: usize = 2047;
/// Longest exec command trusted as scp: what the audit log keeps of an exec command
/// (`gateway.exec`), so the log always shows the whole command of a transfer not recorded.
pub const MAX_COMMAND: usize = 4096;
/// Error messages reported per channel; past this, one `ErrorsSuppressed` and the observer
/// gives up (and the relay records the channel).
const MAX_ERRORS: usize = 100;
/// Longest path built (a hostile sender can nest directories without end; Linux's PATH_MAX
/// is 4,096, so no transfer that works comes near).
const MAX_PATH: usize = 8192;

/// Which way the files move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `scp -t`: the client sends files to the server.
    Upload,
    /// `scp -f`: the server sends files to the client.
    Download,
}

impl Direction {
    /// `upload` or `download`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

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

/// An scp server invocation the observer can follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpCommand {
    direction: Direction,
    /// `-d`: `sink()` refuses to start unless the target is a directory.
    target_is_dir: bool,
    /// The one path, as the server's scp gets it (quotes removed).
    path: String,
}

/// Options of an scp server invocation that change nothing the observer relies on, besides
/// `-t`, `-f` and `-d`: what OpenSSH's scp sends (`-v`, `-r`, `-p`, `-d`) and two it accepts.
const FLAGS: &str = "rpdvqTtf";

impl ScpCommand {
    /// Parses an exec command. `None` when it is not an scp invocation at all (its first word
    /// is not `scp`); `Some(Err)` when it is not one the gateway trusts to run nothing but scp.
    ///
    /// The server's shell runs the command, so only what OpenSSH's scp sends is accepted, in a
    /// form no shell does anything with but split words and remove single quotes:
    /// `scp`, flags from `-r -p -d -v -q -T` and one of `-t`/`-f` (bundled or separate), an
    /// optional `--`, and exactly one path. The path is either plain (letters, digits, other
    /// non-ASCII characters that are not spaces or controls, and `._/+,:=@%-`; no `=` or `%`
    /// first) or wholly single-quoted (no `'` or `\` inside). Anything else - `$`, backticks,
    /// backslashes, double quotes, globs, `~`, operators, control characters, a second path, a
    /// command longer than [`MAX_COMMAND`] - is not trusted: the channel is recorded like any
    /// command. Stock `scp -O` sends a remote path as the user typed it, so `host:'/a b'`
    /// works and `host:/a\ b` or `host:'/tmp/*.log'` is recorded.
    pub fn parse(cmd: &str) -> Option<Result<ScpCommand, &'static str>> {
        let rest = cmd.trim_start_matches([' ', '\t']).strip_prefix("scp")?;
        if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
            return None;
        }
        Some(Self::allow(cmd))
    }

    fn allow(cmd: &str) -> Result<ScpCommand, &'static str> {
        if cmd.len() > MAX_COMMAND {
            return Err("command too long");
        }
        if cmd.chars().any(char::is_control) {
            return Err("control character in the command");
        }
        let rest = cmd
            .strip_prefix("scp ")
            .ok_or("not scp followed by its arguments")?;
        let (mut t, mut f, mut d) = (false, false, false);
        let mut path: Option<String> = None;
        let mut options_done = false;
        for (word, quoted) in words(rest)? {
            if path.is_some() {
                return Err("more than one path");
            }
            if !options_done && !quoted {
                if word == "--" {
                    options_done = true;
                    continue;
                }
                if let Some(flags) = word.strip_prefix('-') {
                    if flags.is_empty() || !flags.chars().all(|c| FLAGS.contains(c)) {
                        return Err("unsupported scp option");
                    }
                    t |= flags.contains('t');
                    f |= flags.contains('f');
                    d |= flags.contains('d');
                    continue;
                }
            }
            // getopt would take it as an option.
            if !options_done && word.starts_with('-') {
                return Err("option after the path or quoted");
            }
            if quoted {
                if word.is_empty() || word.contains('\\') {
                    return Err("unsafe quoted path");
                }
            } else if !plain_path(word) {
                return Err("shell syntax or unsafe characters in the path");
            }
            path = Some(word.to_owned());
        }
        let direction = match (t, f) {
            (false, false) => return Err("neither -t nor -f"),
            (true, true) => return Err("both -t and -f"),
            (true, false) => Direction::Upload,
            (false, true) => Direction::Download,
        };
        let path = path.ok_or("no path")?;
        Ok(ScpCommand {
            direction,
            target_is_dir: d,
            path,
        })
    }
}

/// Splits at spaces into (word, wholly single-quoted) pairs, the quotes removed. A quote that
/// does not open and close a whole word, or is unterminated, is refused.
fn words(s: &str) -> Result<Vec<(&str, bool)>, &'static str> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            return Ok(out);
        }
        if let Some(q) = rest.strip_prefix('\'') {
            let end = q.find('\'').ok_or("unterminated quote")?;
            let (word, after) = q.split_at(end);
            let after = after.get(1..).unwrap_or_default();
            if !(after.is_empty() || after.starts_with(' ')) {
                return Err("a path not wholly single-quoted");
            }
            out.push((word, true));
            rest = after;
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            let (word, after) = rest.split_at(end);
            if word.contains('\'') {
                return Err("a path not wholly single-quoted");
            }
            out.push((word, false));
            rest = after;
        }
    }
}

/// A path word no shell (sh, bash, dash, zsh, fish, csh) does anything with.
fn plain_path(w: &str) -> bool {
    !w.is_empty()
        && !w.starts_with(['=', '%'])
        && w.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || "._/+,:=@%-".contains(c)
                || (!c.is_ascii() && !c.is_whitespace() && !c.is_control())
        })
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A response or status: `\0`, or `\x01`/`\x02` and a message (`response()` in scp.c).
#[derive(Debug, PartialEq, Eq)]
enum Resp {
    Ok,
    Error(String),
    Fatal(String),
}

/// What a parser made of the bytes so far.
enum Feed<T> {
    More,
    Done(T),
    Bad(&'static str),
}

/// Reassembles one response or status from a byte stream.
#[derive(Default)]
struct Response {
    kind: Option<u8>,
    msg: Vec<u8>,
}

impl Response {
    /// Consumes bytes from `data` up to the end of one response.
    fn feed(&mut self, data: &mut &[u8]) -> Feed<Resp> {
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
fn feed_line(buf: &mut Vec<u8>, data: &mut &[u8]) -> Feed<Vec<u8>> {
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
fn parse_entry(rest: &[u8]) -> Result<(u32, u64, &[u8]), &'static str> {
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
fn times_ok(rest: &[u8]) -> bool {
    let fields: Vec<&[u8]> = rest.split(|&b| b == b' ').collect();
    let [m, mu, a, au] = fields.as_slice() else {
        return false;
    };
    let digits = |f: &[u8]| !f.is_empty() && f.iter().all(u8::is_ascii_digit);
    let usec = |f: &[u8]| digits(f) && parse_u64(f).is_some_and(|u| u <= 999_999);
    digits(m) && usec(mu) && digits(a) && usec(au)
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
        match self.cmd.direction {
            Direction::Upload => self.sender_bytes(data, &mut ops),
            Direction::Download => self.receiver_bytes(data, &mut ops),
        }
        self.check_errors(&mut ops);
        ops
    }

    /// Bytes from the server to the client (standard output of the server's scp).
    pub fn server_bytes(&mut self, data: &[u8]) -> Vec<ScpOp> {
        let mut ops = Vec::new();
        match self.cmd.direction {
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
        match self.cmd.direction {
            Direction::Upload => Side::Client,
            Direction::Download => Side::Server,
        }
    }

    fn receiver(&self) -> Side {
        match self.cmd.direction {
            Direction::Upload => Side::Server,
            Direction::Download => Side::Client,
        }
    }

    fn close(&self, f: OpenFile, error: Option<String>) -> ScpOp {
        let (read, written) = match self.cmd.direction {
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
        let path = self.cmd.path.as_str();
        Ok(match self.cmd.direction {
            // `sink()` writes TARGET/NAME when TARGET is an existing directory, else TARGET.
            Direction::Upload => {
                if target_is_dir(path, self.cmd.target_is_dir) {
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
                    direction: self.cmd.direction,
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
                ops.push(match self.cmd.direction {
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
mod tests {
    use super::*;

    fn cmd(s: &str) -> ScpCommand {
        ScpCommand::parse(s).unwrap().unwrap()
    }

    fn p(path: &str) -> ScpPath {
        ScpPath {
            path: path.into(),
            if_target_is_dir: None,
        }
    }

    /// One conversation, in causal order: (bytes from the client?, bytes).
    type Script = Vec<(bool, Vec<u8>)>;

    fn feed(o: &mut ScpObserver, from_client: bool, b: &[u8]) -> Vec<ScpOp> {
        if from_client {
            o.client_bytes(b)
        } else {
            o.server_bytes(b)
        }
    }

    /// Runs a script with each message cut into the pieces `cut` gives.
    fn run(command: &str, script: &Script, cut: impl Fn(&[u8]) -> Vec<&[u8]>) -> Vec<ScpOp> {
        let mut o = ScpObserver::new(cmd(command));
        let mut ops = Vec::new();
        for (from_client, msg) in script {
            for piece in cut(msg) {
                ops.extend(feed(&mut o, *from_client, piece));
            }
        }
        ops.extend(o.finish());
        ops
    }

    fn whole(b: &[u8]) -> Vec<&[u8]> {
        vec![b]
    }

    /// Asserts the script gives `want` whole, byte by byte, and cut at every byte boundary.
    fn check_all_splits(command: &str, script: &Script, want: &[ScpOp]) {
        assert_eq!(run(command, script, whole), want, "whole");
        assert_eq!(
            run(command, script, |b| b.chunks(1).collect()),
            want,
            "byte by byte"
        );
        for (i, (_, msg)) in script.iter().enumerate() {
            for k in 0..=msg.len() {
                let got = run(command, script, |b| {
                    if std::ptr::eq(b, script[i].1.as_slice()) {
                        let (x, y) = b.split_at(k);
                        vec![x, y]
                    } else {
                        vec![b]
                    }
                });
                assert_eq!(got, want, "message {i} cut at {k}");
            }
        }
    }

    fn c(b: &[u8]) -> (bool, Vec<u8>) {
        (true, b.to_vec())
    }
    fn s(b: &[u8]) -> (bool, Vec<u8>) {
        (false, b.to_vec())
    }

    fn gave_up(ops: &[ScpOp]) -> usize {
        ops.iter()
            .filter(|o| matches!(o, ScpOp::GaveUp { .. }))
            .count()
    }

    #[test]
    fn parses_what_stock_scp_sends() {
        // Captured from OpenSSH 9.2's `scp -O` (see the e2e tests for the live check).
        let c = cmd("scp -t /tmp/x");
        assert_eq!(c.direction, Direction::Upload);
        assert_eq!(c.path, "/tmp/x");
        assert!(!c.target_is_dir);
        let c = cmd("scp -v -r -p -d -t /tmp/");
        assert!(c.target_is_dir);
        assert_eq!(c.path, "/tmp/");
        assert_eq!(cmd("scp -t -- -odd").path, "-odd");
        assert_eq!(cmd("scp -f -- -odd").path, "-odd");
        assert_eq!(cmd("scp -rt .").path, ".");
        assert_eq!(cmd("scp -t .").path, ".");
        let c = cmd("scp -r -f /tmp/x");
        assert_eq!(c.direction, Direction::Download);
        assert_eq!(c.path, "/tmp/x");
        assert_eq!(
            cmd("scp -q -T -p -f /srv/a-b_c.d+e,f:g@h%i=j").path,
            "/srv/a-b_c.d+e,f:g@h%i=j"
        );
        assert_eq!(cmd("scp -t /tmp/résumé.pdf").path, "/tmp/résumé.pdf");
        // `scp -O f "host:'/tmp/a b'"` sends the quotes the user typed.
        assert_eq!(cmd("scp -t '/tmp/my dir/a b'").path, "/tmp/my dir/a b");
        assert_eq!(cmd("scp -t -- '-a b'").path, "-a b");
        assert_eq!(
            cmd("scp -f '/tmp/*.log $x `y` \"z\" ~ ;|&<>(){}[]?!#'").path,
            "/tmp/*.log $x `y` \"z\" ~ ;|&<>(){}[]?!#"
        );
        // The longest command trusted is what the audit log keeps.
        let path = format!("/{}", "a".repeat(MAX_COMMAND - "scp -t /".len()));
        assert_eq!(cmd(&format!("scp -t {path}")).path, path);
    }

    #[test]
    fn refuses_every_command_a_shell_does_more_with_than_run_scp() {
        // Not scp at all: ordinary commands.
        for not in ["ls -l", "scpx -t /tmp", "/usr/bin/scp -t /tmp", "sh -c scp"] {
            assert!(ScpCommand::parse(not).is_none(), "{not}");
        }
        for bad in [
            // The security review's attacks: each makes bash run `$(...)` while expanding.
            r#"scp -t ${x:='a[$(bash -i >&2)]'}${a[x]}"#,
            r#"scp -t ${x:='$(id)'}${x@P}"#,
            "scp -t ${a[TERM]}",
            "scp -t $[VAR]",
            "scp -t $[$(id)]",
            "scp -t /tmp/$HOME",
            "scp -t $x",
            "scp -t '$x'$y",
            // Quoting other than whole single quotes.
            "scp -t '/tmp/a'b",
            "scp -t a'b'",
            "scp -t 'a'\\''b'",
            "scp -t \"/tmp/x\"",
            "scp -t /tmp/a\\ b",
            "scp -t 'a\\'",
            "scp -t ''",
            "scp -t 'unterminated",
            // Operators, substitution, comments, globs, tilde, history.
            "scp -t /tmp/x; sh",
            "scp -t /tmp/x;sh",
            "scp -t /tmp/x && sh",
            "scp -t /tmp/x|sh",
            "scp -t /tmp/x>/etc/passwd",
            "scp -t </etc/passwd",
            "scp -t $(id)",
            "scp -t `id`",
            "scp -t (x)",
            "scp -t {a,b}",
            "scp -t x#comment",
            "scp -t x #comment",
            "scp -f /tmp/*.log",
            "scp -f /tmp/?.log",
            "scp -f /tmp/[ab].log",
            "scp -t ~/foo",
            "scp -t ~root",
            "scp -t x!y",
            "scp -t =ls",
            "scp -t %1",
            // Control characters and other whitespace.
            "scp -t x\ny",
            "scp -t x\n",
            "scp -t x\rsh",
            "scp\t-t x",
            "scp -t\tx",
            "scp -t x\u{0}",
            "scp -t a\u{a0}b",
            "scp -t a\u{2028}b",
            " scp -t x",
            // Paths and options not as stock scp sends them.
            "scp -t a b",
            "scp -f /tmp/x y",
            "scp -t",
            "scp -t --",
            "scp",
            "scp -r x",
            "scp -t -f x",
            "scp -o ProxyCommand=x -t x",
            "scp -S prog -t x",
            "scp -3 -t x",
            "scp -t x -r",
            "scp -t '-r'",
            "scp - -t x",
            "scp -t -x",
        ] {
            assert!(
                matches!(ScpCommand::parse(bad), Some(Err(_))),
                "{bad:?}: {:?}",
                ScpCommand::parse(bad)
            );
        }
        // Padding must not hide a command's tail from the audit log, which keeps 4,096.
        let long = format!("scp -t /{}", "a".repeat(MAX_COMMAND - "scp -t /".len() + 1));
        assert_eq!(ScpCommand::parse(&long), Some(Err("command too long")));
        assert_eq!(MAX_COMMAND, 4096);
    }

    /// `scp -O -r -p tree host:/srv/` with tree/a.txt, tree/sub/b.bin, tree/sub/empty.
    fn upload_tree() -> Script {
        vec![
            s(b"\0"),
            c(b"T1700000000 0 1700000001 0\n"),
            s(b"\0"),
            c(b"D0755 0 tree\n"),
            s(b"\0"),
            c(b"T1700000000 0 1700000001 0\n"),
            s(b"\0"),
            c(b"C0644 5 a.txt\n"),
            s(b"\0"),
            c(b"hello\0"),
            s(b"\0"),
            c(b"D0700 0 sub\n"),
            s(b"\0"),
            c(b"C0600 3 b.bin\n"),
            s(b"\0"),
            c(&[0, 10, 0xff, 0]),
            s(b"\0"),
            c(b"C0644 0 empty\n"),
            s(b"\0"),
            c(b"\0"),
            s(b"\0"),
            c(b"E\n"),
            s(b"\0"),
            c(b"E\n"),
            s(b"\0"),
        ]
    }

    #[test]
    fn follows_a_recursive_upload_split_at_every_byte() {
        let want = [
            ScpOp::Mkdir {
                path: p("/srv/tree"),
                mode: 0o755,
            },
            ScpOp::Open {
                path: p("/srv/tree/a.txt"),
                mode: 0o644,
                size: 5,
                direction: Direction::Upload,
            },
            ScpOp::Close {
                path: p("/srv/tree/a.txt"),
                read: 0,
                written: 5,
                error: None,
            },
            ScpOp::Mkdir {
                path: p("/srv/tree/sub"),
                mode: 0o700,
            },
            ScpOp::Open {
                path: p("/srv/tree/sub/b.bin"),
                mode: 0o600,
                size: 3,
                direction: Direction::Upload,
            },
            ScpOp::Close {
                path: p("/srv/tree/sub/b.bin"),
                read: 0,
                written: 3,
                error: None,
            },
            ScpOp::Open {
                path: p("/srv/tree/sub/empty"),
                mode: 0o644,
                size: 0,
                direction: Direction::Upload,
            },
            ScpOp::Close {
                path: p("/srv/tree/sub/empty"),
                read: 0,
                written: 0,
                error: None,
            },
        ];
        check_all_splits("scp -r -p -t /srv/", &upload_tree(), &want);
    }

    #[test]
    fn an_upload_target_that_may_be_a_directory_gets_both_paths() {
        let script = vec![
            s(b"\0"),
            c(b"D0755 0 tree\n"),
            s(b"\0"),
            c(b"C0644 2 f\n"),
            s(b"\0"),
            c(b"hi\0"),
            s(b"\0"),
            c(b"E\n"),
            s(b"\0"),
        ];
        let ops = run("scp -r -t /srv/new", &script, whole);
        let both = |a: &str, b: &str| ScpPath {
            path: a.into(),
            if_target_is_dir: Some(b.into()),
        };
        assert_eq!(
            ops[0],
            ScpOp::Mkdir {
                path: both("/srv/new", "/srv/new/tree"),
                mode: 0o755
            }
        );
        assert_eq!(
            ops[2],
            ScpOp::Close {
                path: both("/srv/new/f", "/srv/new/tree/f"),
                read: 0,
                written: 2,
                error: None
            }
        );
        // `scp f host:` sends `-t .`; several sources send -d; `/` stays single.
        for (command, want) in [
            ("scp -t .", "./f"),
            ("scp -d -t /srv", "/srv/f"),
            ("scp -t /", "/f"),
        ] {
            let mut o = ScpObserver::new(cmd(command));
            o.server_bytes(b"\0");
            o.client_bytes(b"C0644 2 f\n");
            let ops = o.server_bytes(b"\0");
            assert!(
                matches!(&ops[0], ScpOp::Open { path, .. } if *path == p(want)),
                "{command}: {ops:?}"
            );
        }
    }

    #[test]
    fn follows_a_download_with_times_and_errors() {
        // `scp -O -p host:/data/c.log .` where reading fails halfway.
        let script = vec![
            c(b"\0"),
            s(b"T1700000000 0 1700000000 0\n"),
            c(b"\0"),
            s(b"C0640 6 c.log\n"),
            c(b"\0"),
            s(b"\0\0\0"),
            s(b"\0\0\0\x01scp: /data/c.log: Input/output error\n"),
            c(b"\0"),
        ];
        let want = [
            ScpOp::Open {
                path: p("/data/c.log"),
                mode: 0o640,
                size: 6,
                direction: Direction::Download,
            },
            ScpOp::Close {
                path: p("/data/c.log"),
                read: 6,
                written: 0,
                error: Some("scp: /data/c.log: Input/output error".into()),
            },
        ];
        check_all_splits("scp -p -f /data/c.log", &script, &want);
        // An unreadable source.
        let script = vec![c(b"\0"), s(b"\x01scp: /data/b.log: Permission denied\n")];
        let want = [ScpOp::Error {
            from: Side::Server,
            path: None,
            message: "scp: /data/b.log: Permission denied".into(),
        }];
        check_all_splits("scp -f /data/b.log", &script, &want);
        // A name the one source is not: no stock scp sends it.
        let mut o = ScpObserver::new(cmd("scp -f /data/a.log/"));
        o.client_bytes(b"\0");
        assert_eq!(
            o.server_bytes(b"C0644 1 other\n"),
            [ScpOp::GaveUp {
                reason: "a name the source is not".into()
            }]
        );
    }

    #[test]
    fn follows_a_recursive_download_and_names_its_paths() {
        let script = vec![
            c(b"\0"),
            s(b"D0755 0 proj\n"),
            c(b"\0"),
            s(b"D0755 0 src\n"),
            c(b"\0"),
            s(b"C0644 3 main.rs\n"),
            c(b"\0"),
            s(b"fn\n\0"),
            c(b"\0"),
            s(b"E\n"),
            c(b"\0"),
            s(b"E\n"),
            c(b"\0"),
        ];
        let ops = run("scp -r -f /home/u/proj/", &script, whole);
        assert_eq!(
            ops,
            [
                ScpOp::OpenDir {
                    path: p("/home/u/proj"),
                    mode: 0o755
                },
                ScpOp::OpenDir {
                    path: p("/home/u/proj/src"),
                    mode: 0o755
                },
                ScpOp::Open {
                    path: p("/home/u/proj/src/main.rs"),
                    mode: 0o644,
                    size: 3,
                    direction: Direction::Download
                },
                ScpOp::Close {
                    path: p("/home/u/proj/src/main.rs"),
                    read: 3,
                    written: 0,
                    error: None
                },
            ]
        );
        // A quoted path with a space.
        let mut o = ScpObserver::new(cmd("scp -f '/tmp/my file'"));
        o.client_bytes(b"\0");
        o.server_bytes(b"C0644 1 my file\n");
        let ops = o.client_bytes(b"\0");
        assert!(matches!(&ops[0], ScpOp::Open { path, .. } if *path == p("/tmp/my file")));
    }

    #[test]
    fn a_refused_file_is_an_error_with_its_path_and_the_transfer_goes_on() {
        let script = vec![
            s(b"\0"),
            c(b"C0644 3 x\n"),
            s(b"\x01scp: /etc/x: Permission denied\n"),
            c(b"C0644 3 y\n"),
            s(b"\0"),
            c(b"abc\0"),
            s(b"\x01scp: /etc/y: No space left on device\n"),
        ];
        let want = [
            ScpOp::Error {
                from: Side::Server,
                path: Some(p("/etc/x")),
                message: "scp: /etc/x: Permission denied".into(),
            },
            ScpOp::Open {
                path: p("/etc/y"),
                mode: 0o644,
                size: 3,
                direction: Direction::Upload,
            },
            ScpOp::Close {
                path: p("/etc/y"),
                read: 0,
                written: 3,
                error: Some("scp: /etc/y: No space left on device".into()),
            },
        ];
        check_all_splits("scp -d -t /etc", &script, &want);
    }

    #[test]
    fn a_channel_that_ends_mid_file_closes_it_with_the_bytes_seen() {
        let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
        o.server_bytes(b"\0");
        o.client_bytes(b"C0644 9223372036854775807 huge\n");
        let ops = o.server_bytes(b"\0");
        assert!(matches!(
            ops[0],
            ScpOp::Open {
                size: 9223372036854775807,
                ..
            }
        ));
        for _ in 0..100 {
            assert!(o.client_bytes(&[7u8; 32768]).is_empty());
        }
        assert_eq!(
            o.finish(),
            [ScpOp::Close {
                path: p("/tmp/huge"),
                read: 0,
                written: 3_276_800,
                error: Some("the channel closed before the file's transfer was confirmed".into()),
            }]
        );
        assert!(o.client_bytes(b"more").is_empty());
        assert!(o.finish().is_empty());
    }

    #[test]
    fn counts_a_100_mb_file_in_channel_sized_chunks() {
        const SIZE: u64 = 100 * 1024 * 1024;
        let mut o = ScpObserver::new(cmd("scp -f /srv/big.bin"));
        o.client_bytes(b"\0");
        o.server_bytes(format!("C0644 {SIZE} big.bin\n").as_bytes());
        assert_eq!(o.client_bytes(b"\0").len(), 1);
        // What russh hands the relay: at most a 32 KiB packet at a time; the last one carries
        // the status byte too.
        let chunk = vec![0x55u8; 32 * 1024];
        for _ in 0..SIZE / chunk.len() as u64 - 1 {
            assert!(o.server_bytes(&chunk).is_empty());
        }
        let mut last = chunk.clone();
        last.push(0);
        assert!(o.server_bytes(&last).is_empty());
        assert_eq!(
            o.client_bytes(b"\0"),
            [ScpOp::Close {
                path: p("/srv/big.bin"),
                read: SIZE,
                written: 0,
                error: None
            }]
        );
    }

    /// Sends one record after a good start and returns the events.
    fn upload_record(record: &[u8]) -> Vec<ScpOp> {
        let mut o = ScpObserver::new(cmd("scp -r -t /tmp/"));
        let mut ops = o.server_bytes(b"\0");
        ops.extend(o.client_bytes(record));
        ops.extend(o.server_bytes(b"\0"));
        ops.extend(o.client_bytes(b"more bytes after it\n"));
        ops.extend(o.finish());
        ops
    }

    #[test]
    fn gives_up_once_on_malformed_records() {
        for bad in [
            &b"C0644 99999999999999999999999 x\n"[..],
            b"C0644 9223372036854775808 x\n",
            b"C0644 -5 x\n",
            b"C0644 +5 x\n",
            b"C0644  5 x\n",
            b"C0644 5x\n",
            b"C0644 5 \n",
            b"C0644 5\n",
            b"C0648 5 x\n",
            b"C064 5 x\n",
            b"C06445 5 x\n",
            b"C\n",
            b"D0755 0 ..\n",
            b"D0755 0 .\n",
            b"C0644 5 ../../etc/passwd\n",
            b"C0644 5 a/b\n",
            b"C0644 5 a\0b\n",
            b"T1 0 1\n",
            b"T1 1000000 1 0\n",
            b"Tx 0 1 0\n",
            b"X\n",
            b"\n",
            b"Welcome to the server!\n",
        ] {
            let ops = upload_record(bad);
            assert_eq!(
                gave_up(&ops),
                1,
                "{:?}: {ops:?}",
                String::from_utf8_lossy(bad)
            );
            assert!(
                matches!(ops.last(), Some(ScpOp::GaveUp { .. })),
                "{:?}: {ops:?}",
                String::from_utf8_lossy(bad)
            );
            assert!(
                !ops.iter().any(|o| matches!(o, ScpOp::Open { .. })),
                "{ops:?}"
            );
        }
    }

    #[test]
    fn gives_up_on_lines_without_end_with_bounded_memory() {
        let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
        o.server_bytes(b"\0");
        let mut ops = o.client_bytes(b"C0644 5 ");
        // A name that never ends: one event, then nothing kept.
        for _ in 0..1000 {
            ops.extend(o.client_bytes(&[b'a'; 4096]));
        }
        assert_eq!(gave_up(&ops), 1);
        assert_eq!(o.line.capacity(), 0);
        // The longest line sink() reads whole is followed; one byte more is not.
        let name = "n".repeat(MAX_LINE - 1 - "C0644 1 ".len());
        let ops = upload_record(format!("C0644 1 {name}\n").as_bytes());
        assert!(matches!(&ops[0], ScpOp::Open { .. }), "{ops:?}");
        let ops = upload_record(format!("C0644 1 {name}n\n").as_bytes());
        assert_eq!(
            ops,
            [ScpOp::GaveUp {
                reason: "record line too long".into()
            }]
        );
        // A status message that never ends.
        let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
        let mut ops = o.server_bytes(b"\x01");
        for _ in 0..100 {
            ops.extend(o.server_bytes(&[b'e'; 4096]));
        }
        assert_eq!(
            ops,
            [ScpOp::GaveUp {
                reason: "status message too long".into()
            }]
        );
        assert_eq!(o.resp.msg.capacity(), 0);
    }

    #[test]
    fn gives_up_on_responses_out_of_step() {
        // A sender that does not wait for the answer.
        let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
        o.server_bytes(b"\0");
        let ops = o.client_bytes(b"C0644 1 x\nZ\0");
        assert_eq!(gave_up(&ops), 1);
        // An answer nobody asked for.
        let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
        o.server_bytes(b"\0");
        assert_eq!(gave_up(&o.server_bytes(b"\0")), 1);
        // A byte that is no status (a shell start-up file printing to standard output).
        let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
        assert_eq!(gave_up(&o.server_bytes(b"Hello!\n")), 1);
        // A status byte after file data that is none.
        let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
        o.server_bytes(b"\0");
        o.client_bytes(b"C0644 1 x\n");
        o.server_bytes(b"\0");
        let ops = o.client_bytes(b"x\x07");
        assert_eq!(
            ops,
            [
                ScpOp::Close {
                    path: p("/tmp/x"),
                    read: 0,
                    written: 1,
                    error: Some("scp observer gave up: unexpected status byte".into())
                },
                ScpOp::GaveUp {
                    reason: "unexpected status byte".into()
                }
            ]
        );
    }

    #[test]
    fn a_fatal_status_ends_the_transfer_and_any_byte_after_it_gives_up() {
        let mut o = ScpObserver::new(cmd("scp -d -t /nope"));
        let ops = o.server_bytes(b"\x02scp: /nope: No such file or directory\n");
        assert_eq!(
            ops,
            [ScpOp::Error {
                from: Side::Server,
                path: None,
                message: "scp: /nope: No such file or directory".into()
            }]
        );
        // The server's scp has exited: whatever speaks now is something else.
        assert_eq!(
            o.server_bytes(b"$ "),
            [ScpOp::GaveUp {
                reason: "bytes after the end of the transfer".into()
            }]
        );
        assert!(o.client_bytes(b"id\n").is_empty());
        // `E` at the top level ends sink() too.
        let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
        o.server_bytes(b"\0");
        o.client_bytes(b"E\n");
        assert!(o.server_bytes(b"\0").is_empty());
        assert_eq!(gave_up(&o.client_bytes(b"C0644 1 x\n")), 1);
        // The channel's end is no give-up, and nothing is seen after it.
        let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
        assert!(o.finish().is_empty());
        assert!(o.server_bytes(b"anything").is_empty());
        assert!(o.give_up_now("late").is_empty());
    }

    #[test]
    fn standard_error_from_the_server_gives_up_once() {
        let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
        o.server_bytes(b"\0");
        o.client_bytes(b"C0644 3 x\n");
        o.server_bytes(b"\0");
        assert_eq!(
            o.give_up_now("the server wrote to standard error"),
            [
                ScpOp::Close {
                    path: p("/tmp/x"),
                    read: 0,
                    written: 0,
                    error: Some("scp observer gave up: the server wrote to standard error".into())
                },
                ScpOp::GaveUp {
                    reason: "the server wrote to standard error".into()
                }
            ]
        );
        assert!(o.give_up_now("again").is_empty());
    }

    #[test]
    fn a_flood_of_error_messages_is_capped_and_gives_up() {
        // 10,000 three-byte error records in one 30 kB chunk, as the review sent.
        let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
        o.server_bytes(b"\0");
        let flood = b"\x01x\n".repeat(10_000);
        let ops = o.client_bytes(&flood);
        assert_eq!(ops.len(), MAX_ERRORS + 2, "{:?}", ops.last());
        assert!(ops[..MAX_ERRORS].iter().all(|op| matches!(
            op,
            ScpOp::Error {
                from: Side::Client,
                ..
            }
        )));
        assert_eq!(
            ops[MAX_ERRORS..],
            [
                ScpOp::ErrorsSuppressed {
                    reported: MAX_ERRORS
                },
                ScpOp::GaveUp {
                    reason: "too many error messages".into()
                }
            ]
        );
        assert!(o.client_bytes(&flood).is_empty());
        // One at a time, from the server, as responses: the same.
        let mut o = ScpObserver::new(cmd("scp -f /tmp/x"));
        o.client_bytes(b"\0");
        let mut ops = Vec::new();
        for _ in 0..300 {
            ops.extend(o.server_bytes(b"\x01scp: nope\n"));
        }
        assert_eq!(ops.len(), MAX_ERRORS + 2);
        assert_eq!(gave_up(&ops), 1);
        // Exactly the cap is fine.
        let mut o = ScpObserver::new(cmd("scp -t /tmp/"));
        o.server_bytes(b"\0");
        let ops = o.client_bytes(&b"\x01x\n".repeat(MAX_ERRORS));
        assert_eq!(ops.len(), MAX_ERRORS);
        assert_eq!(gave_up(&ops), 0);
    }

    #[test]
    fn deep_nesting_gives_up_with_bounded_memory() {
        let mut o = ScpObserver::new(cmd("scp -r -t /t/"));
        let mut ops = o.server_bytes(b"\0");
        let name = "d".repeat(200);
        let rec = format!("D0755 0 {name}\n");
        for _ in 0..1000 {
            ops.extend(o.client_bytes(rec.as_bytes()));
            ops.extend(o.server_bytes(b"\0"));
        }
        assert_eq!(gave_up(&ops), 1);
        assert_eq!(
            ops.last(),
            Some(&ScpOp::GaveUp {
                reason: "path too long".into()
            })
        );
        assert!(ops.len() < 50);
        assert!(o.dirs.marks.capacity() == 0 && o.dirs.cur.path.capacity() == 0);
    }

    #[test]
    fn survives_binary_garbage_in_both_directions() {
        // xorshift: reproducible noise without a dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..300 {
            let command = if round % 2 == 0 {
                "scp -r -t /tmp/"
            } else {
                "scp -r -f /tmp/x"
            };
            let mut o = ScpObserver::new(cmd(command));
            let mut ops = Vec::new();
            // Start with a plausible prefix so the noise reaches the deeper states too.
            ops.extend(o.server_bytes(b"\0"));
            ops.extend(o.client_bytes(b"\0"));
            for _ in 0..50 {
                let len = (next() % 300) as usize;
                let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                // Bias towards protocol bytes.
                for b in buf.iter_mut() {
                    match *b % 8 {
                        0 => *b = 0,
                        1 => *b = b'\n',
                        2 => *b = b"CDET 0123456789"[(*b as usize / 8) % 15],
                        _ => {}
                    }
                }
                ops.extend(if next() % 2 == 0 {
                    o.client_bytes(&buf)
                } else {
                    o.server_bytes(&buf)
                });
            }
            ops.extend(o.finish());
            assert!(gave_up(&ops) <= 1, "{ops:?}");
            if let Some(i) = ops.iter().position(|o| matches!(o, ScpOp::GaveUp { .. })) {
                assert_eq!(i, ops.len() - 1, "events after giving up: {ops:?}");
            }
            let opens = ops
                .iter()
                .filter(|o| matches!(o, ScpOp::Open { .. }))
                .count();
            let closes = ops
                .iter()
                .filter(|o| matches!(o, ScpOp::Close { .. }))
                .count();
            assert_eq!(opens, closes, "{ops:?}");
            assert!(o.line.len() < MAX_LINE && o.resp.msg.len() < MAX_LINE);
        }
    }
}
