//! `postern recordings ls` and `postern play`: the user's own recorded sessions, fetched
//! with the X.509 identity of the last login (as `postern renew` uses it) and replayed to
//! the terminal.

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;

use postern_core::api::{ErrorBody, RecordingMeta};
use postern_core::{NodeName, Username};

use crate::cast;
use crate::display::{local_time, short_duration};
use crate::profile::Layout;
use postern_api_client::{sanitize, Api};

use super::{api_failure, signed_in, Refused, SignedIn};

/// The largest recording `postern play` downloads (the CA accepts uploads up to 256 MiB).
const MAX_CAST_BYTES: usize = 256 * 1024 * 1024;

/// Flags of `postern recordings ls`.
#[derive(Debug)]
pub struct LsArgs {
    /// `--user` (only yourself, for now).
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
        println!(
            "No recorded sessions of {} on {}.",
            s.profile.user, s.profile.cluster
        );
        return Ok(());
    }
    println!(
        "{:<28} {:<16} {:<16} {:<24} {:>9} {:>10}",
        "ID", "SERVER", "LOGIN", "STARTED", "DURATION", "SIZE"
    );
    for r in &rows {
        println!(
            "{:<28} {:<16} {:<16} {:<24} {:>9} {:>10}{}",
            sanitize(&r.id),
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

/// Downloads the asciicast text of one recording.
fn fetch(s: SignedIn, id: &str) -> anyhow::Result<String> {
    let url = format!("{}/v1/recordings/{id}", s.ca);
    let tls = postern_api_client::tls_config(s.pin, Some(s.identity))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let _guard = rt.enter();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(600))
        .user_agent(concat!("postern/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTPS client")?;
    let (status, body) = rt.block_on(async {
        let mut resp = http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("could not reach {url}"))?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .with_context(|| format!("reading the answer of {url}"))?
        {
            if body.len() + chunk.len() > MAX_CAST_BYTES {
                anyhow::bail!("the recording is larger than {MAX_CAST_BYTES} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    })?;
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| {
                format!(
                    "{} (request id {})",
                    sanitize(&e.error),
                    sanitize(&e.request_id)
                )
            })
            .unwrap_or_else(|_| format!("the server answered {status}"));
        if matches!(status.as_u16(), 401 | 403 | 423) {
            return Err(Refused(super::refusal_text("playing the recording", &message)).into());
        }
        anyhow::bail!("cannot play recording {id}: {message}");
    }
    String::from_utf8(body).context("the recording is not UTF-8 text")
}

/// Runs `postern play`.
pub fn play(layout: &Layout, args: PlayArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        valid_id(&args.id),
        "{:?} is not a recording id (see `postern recordings ls`)",
        sanitize(&args.id)
    );
    let s = signed_in(layout, "identity")?;
    let text = fetch(s, &args.id)?;
    let rec = cast::parse(&text)?;
    let stdout = std::io::stdout();
    let timed = stdout.is_terminal();
    if !timed {
        eprintln!(
            "postern: standard output is not a terminal: writing the recording's output without its timing"
        );
    }
    let mut out = stdout.lock();
    let mut prev = 0.0;
    for ev in &rec.output {
        if timed {
            std::thread::sleep(cast::delay(prev, ev.time, args.speed));
            prev = ev.time;
        }
        out.write_all(ev.data.as_bytes())?;
        if timed {
            out.flush()?;
        }
    }
    out.flush()?;
    if rec.skipped_lines > 0 {
        eprintln!(
            "postern: warning: skipped {} line(s) of the recording that are not asciicast events",
            rec.skipped_lines
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
