//! `postern recordings ls` and `postern play`: recorded sessions the user may see (their own,
//! and others' on servers a role's `view_recordings` selects), fetched with the X.509
//! identity of the last login (as `postern renew` uses it) and replayed to the terminal as
//! the recording arrives, one line in memory at a time.

use std::io::{IsTerminal as _, Write as _};

use anyhow::Context as _;

use postern_core::api::RecordingMeta;
use postern_core::{NodeName, Username};

use crate::cast;
use crate::display::{local_time, short_duration};
use crate::profile::Layout;
use postern_api_client::{sanitize, Api, ApiError};

use super::{api_failure, signed_in, SignedIn};

/// The longest line of a recording `postern play` reads (one event; the gateway writes one
/// per packet, a few kilobytes).
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Flags of `postern recordings ls`.
#[derive(Debug)]
pub struct LsArgs {
    /// `--user`: yourself, or another user when a role of yours has `view_recordings`.
    pub user: Option<Username>,
    /// `--node`.
    pub node: Option<NodeName>,
    /// `--limit`.
    pub limit: u32,
    /// `--json`.
    pub json: bool,
}

/// Flags of `postern play`.
#[derive(Debug)]
pub struct PlayArgs {
    /// The recording (session) id.
    pub id: String,
    /// Playback speed, > 0.
    pub speed: f64,
}

/// Whether `id` looks like a recording id (`[a-z0-9-]{1,64}`), checked before it goes into a
/// URL path.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Runs `postern recordings ls`.
pub fn ls(layout: &Layout, args: LsArgs) -> anyhow::Result<()> {
    let s = signed_in(layout, "identity")?;
    let api = Api::new(&s.ca, s.pin, Some(s.identity))?;
    // User and node names are from allow-listed alphabets: nothing to escape.
    let mut path = format!("/v1/recordings?limit={}", args.limit);
    if let Some(u) = &args.user {
        path.push_str(&format!("&user={u}"));
    }
    if let Some(n) = &args.node {
        path.push_str(&format!("&node={n}"));
    }
    let rows: Vec<RecordingMeta> = api
        .get(&path)
        .map_err(|e| api_failure("listing recordings", e))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        match &args.user {
            Some(u) if *u != s.profile.user => println!(
                "No recorded sessions of {u} that you may see on {}.",
                s.profile.cluster
            ),
            _ => println!(
                "No recorded sessions that you may see on {}.",
                s.profile.cluster
            ),
        }
        return Ok(());
    }
    println!(
        "{:<28} {:<16} {:<16} {:<16} {:<24} {:>9} {:>10}",
        "ID", "USER", "SERVER", "LOGIN", "STARTED", "DURATION", "SIZE"
    );
    for r in &rows {
        println!(
            "{:<28} {:<16} {:<16} {:<16} {:<24} {:>9} {:>10}{}",
            sanitize(r.id.as_str()),
            r.user.as_str(),
            r.node.as_str(),
            r.login.as_str(),
            local_time(r.started_at),
            short_duration(r.ended_at.saturating_sub(r.started_at)),
            r.bytes,
            if r.interrupted { "  (interrupted)" } else { "" }
        );
    }
    println!("Play one with: postern play ID");
    Ok(())
}

/// Downloads one recording and hands each line (without its line ending) to `each` as it
/// arrives, so that a recording of any size plays in bounded memory.
fn fetch_lines(
    s: SignedIn,
    id: &str,
    mut each: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let api = Api::new(&s.ca, s.pin, Some(s.identity))?;
    let mut pending: Vec<u8> = Vec::new();
    let mut line = |bytes: &[u8]| -> anyhow::Result<()> {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        each(std::str::from_utf8(bytes).context("the recording is not UTF-8 text")?)
    };
    api.get_streamed(&format!("/v1/recordings/{id}"), |chunk: &[u8]| {
        pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(n) = pending[start..].iter().position(|b| *b == b'\n') {
            line(&pending[start..start + n])?;
            start += n + 1;
        }
        pending.drain(..start);
        if pending.len() > MAX_LINE_BYTES {
            anyhow::bail!("a line of the recording is longer than {MAX_LINE_BYTES} bytes");
        }
        Ok(())
    })
    .map_err(|e| match e.downcast::<ApiError>() {
        Ok(api) if api.is_refusal() => api_failure("playing the recording", api),
        Ok(api @ ApiError::Status { .. }) => anyhow::anyhow!("cannot play recording {id}: {api}"),
        Ok(api) => api.into(),
        Err(other) => other,
    })?;
    if !pending.is_empty() {
        line(&pending)?;
    }
    Ok(())
}

/// Runs `postern play`.
pub fn play(layout: &Layout, args: PlayArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        valid_id(&args.id),
        "{:?} is not a recording id (see `postern recordings ls`)",
        sanitize(&args.id)
    );
    let s = signed_in(layout, "identity")?;
    let stdout = std::io::stdout();
    let timed = stdout.is_terminal();
    let mut out = stdout.lock();
    let mut header = false;
    let mut prev = 0.0;
    let mut skipped_lines = 0usize;
    fetch_lines(s, &args.id, |line| {
        if !header {
            cast::parse_header(line)?;
            header = true;
            if !timed {
                eprintln!(
                    "postern: standard output is not a terminal: writing the recording's output without its timing"
                );
            }
            return Ok(());
        }
        match cast::parse_event(line) {
            cast::Line::Output(ev) => {
                if timed {
                    std::thread::sleep(cast::delay(prev, ev.time, args.speed));
                    prev = ev.time;
                }
                out.write_all(ev.data.as_bytes())?;
                if timed {
                    out.flush()?;
                }
            }
            cast::Line::Other => {}
            cast::Line::NotAnEvent => skipped_lines += 1,
        }
        Ok(())
    })?;
    if !header {
        // An empty recording: the same message as a first line that is not a header.
        cast::parse_header("")?;
    }
    out.flush()?;
    if skipped_lines > 0 {
        eprintln!(
            "postern: warning: skipped {skipped_lines} line(s) of the recording that are not asciicast events"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_they_reach_a_url() {
        assert!(valid_id("s-0123abc"));
        for bad in ["", "../x", "a/b", "A", "a?b", "a b", &"a".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
