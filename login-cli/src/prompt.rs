//! Reading secrets: hidden prompts on the terminal, or exactly one line from standard input.

use std::fs::OpenOptions;
use std::io::{self, BufRead as _, BufReader, Read, Write as _};

use anyhow::{bail, Context as _};
use zeroize::Zeroizing;

use postern_core::api::Secret;

/// The longest secret line accepted on standard input.
const MAX_LINE: u64 = 4096;

/// Reads exactly one line from `input` (a final newline is optional, a second line is an
/// error, so that a mistaken pipe of a whole file is not sent as a password).
pub fn one_line<R: Read>(input: R, what: &str) -> anyhow::Result<Secret> {
    let mut buf = Zeroizing::new(Vec::new());
    input
        .take(MAX_LINE + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading the {what} from standard input"))?;
    if buf.len() as u64 > MAX_LINE {
        bail!("the {what} on standard input is longer than {MAX_LINE} bytes");
    }
    let mut s: &[u8] = &buf;
    if let Some(rest) = s.strip_suffix(b"\n") {
        s = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    if s.contains(&b'\n') || s.contains(&b'\r') {
        bail!("expected exactly one line (the {what}) on standard input, got several");
    }
    if s.is_empty() {
        bail!("the {what} on standard input is empty");
    }
    let s = std::str::from_utf8(s).with_context(|| format!("the {what} is not valid UTF-8"))?;
    Ok(Secret::new(s.to_owned()))
}

/// Reads exactly `N` lines from `input` (the last newline optional), one secret each, named by
/// `what` in errors.
pub fn lines<R: Read, const N: usize>(input: R, what: [&str; N]) -> anyhow::Result<[Secret; N]> {
    let mut buf = Zeroizing::new(Vec::new());
    let all = what.join(" and ");
    input
        .take(MAX_LINE * N as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading the {all} from standard input"))?;
    let text = std::str::from_utf8(&buf).context("standard input is not valid UTF-8")?;
    let body = text.strip_suffix('\n').unwrap_or(text);
    let parts: Vec<&str> = body.split('\n').collect();
    if parts.len() != N {
        bail!(
            "expected {N} lines on standard input ({all}), got {}",
            parts.len()
        );
    }
    let mut out = Vec::with_capacity(N);
    for (line, name) in parts.into_iter().zip(what) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        out.push(one_line(line.as_bytes(), name)?);
    }
    out.try_into()
        .map_err(|_| anyhow::anyhow!("expected {N} lines on standard input"))
}

/// Reads `N` secrets, one line each, from standard input.
pub fn stdin_lines<const N: usize>(what: [&str; N]) -> anyhow::Result<[Secret; N]> {
    lines(io::stdin().lock(), what)
}

/// Reads the secret from standard input (`--password-stdin`).
pub fn stdin_secret(what: &str) -> anyhow::Result<Secret> {
    one_line(io::stdin().lock(), what)
}

/// Prompts on the terminal without echo.
pub fn hidden(prompt: &str) -> anyhow::Result<Secret> {
    let s = Zeroizing::new(
        rpassword::prompt_password(prompt)
            .context("could not read from the terminal (in scripts, use --password-stdin)")?,
    );
    Ok(Secret::new(s.as_str().to_owned()))
}

/// Prompts on the terminal (`/dev/tty`, so that it works when stdin carries the password),
/// with echo: one-time codes are not worth hiding and are easier to type when visible.
pub fn visible(prompt: &str) -> anyhow::Result<String> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask on: pass the value as a flag instead")?;
    let mut out = tty.try_clone().context("opening the terminal")?;
    out.write_all(prompt.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to the terminal")?;
    let mut line = String::new();
    BufReader::new(tty)
        .take(MAX_LINE)
        .read_line(&mut line)
        .context("reading from the terminal")?;
    Ok(line.trim().to_owned())
}

/// The one-time code, from `--otp` or asked on the terminal; must be digits.
pub fn otp(flag: Option<String>, user: &str) -> anyhow::Result<Secret> {
    let code = match flag {
        Some(c) => c,
        None => visible(&format!("One-time code for {user}: "))
            .context("cannot ask for the one-time code (pass --otp CODE)")?,
    };
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.is_empty() || code.len() > 10 || !code.chars().all(|c| c.is_ascii_digit()) {
        bail!("the one-time code must be the digits your authenticator app shows");
    }
    Ok(Secret::new(code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::api::ExposeSecret as _;

    #[test]
    fn one_line_accepts_a_line_with_or_without_newline() {
        assert_eq!(
            one_line(&b"s3cret\n"[..], "password")
                .unwrap()
                .expose_secret(),
            "s3cret"
        );
        assert_eq!(
            one_line(&b"s3cret"[..], "password")
                .unwrap()
                .expose_secret(),
            "s3cret"
        );
        assert_eq!(
            one_line(&b"s3 cret\r\n"[..], "password")
                .unwrap()
                .expose_secret(),
            "s3 cret"
        );
    }

    #[test]
    fn one_line_rejects_several_lines_empty_and_huge_input() {
        assert!(one_line(&b"a\nb\n"[..], "password").is_err());
        assert!(one_line(&b"a\n\n"[..], "password").is_err());
        assert!(one_line(&b"\n"[..], "password").is_err());
        assert!(one_line(&b""[..], "password").is_err());
        assert!(one_line(&vec![b'a'; 5000][..], "password").is_err());
    }

    #[test]
    fn lines_reads_exactly_the_lines_asked_for() {
        let [a, b] = lines(&b"inv\npw word\n"[..], ["invite", "password"]).unwrap();
        assert_eq!((a.expose_secret(), b.expose_secret()), ("inv", "pw word"));
        let [a, b] = lines(&b"inv\r\npw"[..], ["invite", "password"]).unwrap();
        assert_eq!((a.expose_secret(), b.expose_secret()), ("inv", "pw"));
        assert!(lines(&b"inv\n"[..], ["invite", "password"]).is_err());
        assert!(lines(&b"inv\n\n"[..], ["invite", "password"]).is_err());
        assert!(lines(&b"a\nb\nc\n"[..], ["invite", "password"]).is_err());
    }

    #[test]
    fn otp_flag_must_be_digits() {
        assert_eq!(
            otp(Some("123 456".into()), "a").unwrap().expose_secret(),
            "123456"
        );
        assert!(otp(Some("12a456".into()), "a").is_err());
        assert!(otp(Some(String::new()), "a").is_err());
    }
}
