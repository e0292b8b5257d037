//! Which exec commands the gateway trusts as legacy scp, and how it classifies them: the
//! decision to follow a channel as a file transfer instead of recording it. Only the exact form
//! stock `scp -O` sends (`scp -t|-f PATH`) passes; anything else is recorded like any command.

/// Longest exec command trusted as scp: what the audit log keeps of an exec command
/// (`gateway.exec`), so the log always shows the whole command of a transfer not recorded.
pub const MAX_COMMAND: usize = 4096;

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

/// An scp server invocation the observer can follow. Built only by [`ScpCommand::parse`], so
/// holding one means the command passed the allowlist.
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

impl ScpCommand {
    /// Upload (`-t`) or download (`-f`).
    pub(super) fn direction(&self) -> Direction {
        self.direction
    }

    /// `-d`: `sink()` refuses to start unless the target is a directory.
    pub(super) fn target_is_dir(&self) -> bool {
        self.target_is_dir
    }

    /// The one path, as the server's scp gets it (quotes removed).
    pub(super) fn path(&self) -> &str {
        &self.path
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> ScpCommand {
        ScpCommand::parse(s).unwrap().unwrap()
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
}
