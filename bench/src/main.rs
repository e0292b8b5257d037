//! Load generator for `bench/ca`: many concurrent clients renewing certificates over mTLS,
//! each on its own keep-alive connection, counting answers per second. With several `--url`
//! (instances of one CA), client `i` starts at URL `i mod n` and moves to the next one when a
//! request gets no answer (or a 502/503/504); the longest time any client went without a
//! successful answer is the failover gap.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;

/// Renewal load: `--home` once per enrolled and logged-in user.
#[derive(Parser)]
struct Args {
    /// API base URL (repeat for several instances).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Cluster name (folder under ~/.ssh/postern).
    #[arg(long)]
    cluster: String,
    /// Home directories of logged-in users (each has ~/.ssh/postern/<cluster>/tls.*).
    #[arg(long = "home", required = true)]
    homes: Vec<PathBuf>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn client(home: &std::path::Path, cluster: &str) -> Result<reqwest::Client> {
    let dir = home.join(".ssh/postern").join(cluster);
    let read =
        |n: &str| std::fs::read(dir.join(n)).with_context(|| format!("{}", dir.join(n).display()));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut read("ca.crt")?.as_slice()) {
        roots.add(c?)?;
    }
    let certs =
        rustls_pemfile::certs(&mut read("tls.crt")?.as_slice()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut read("tls.key")?.as_slice())?
        .ok_or_else(|| anyhow!("no key in tls.key"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .pool_max_idle_per_host(1)
        .build()?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let gap_us = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..a.concurrency {
        let c = client(&a.homes[i % a.homes.len()], &a.cluster)?;
        let urls: Vec<String> = a.urls.iter().map(|u| format!("{u}/v1/renew")).collect();
        let (ok, failed, gap_us) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&gap_us));
        tasks.push(tokio::spawn(async move {
            let mut at = i % urls.len();
            let mut last_ok = Instant::now();
            while Instant::now() < deadline {
                let gone = match c.post(&urls[at]).body("{}").send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                        let gap = u64::try_from(last_ok.elapsed().as_micros()).unwrap_or(u64::MAX);
                        gap_us.fetch_max(gap, Ordering::Relaxed);
                        last_ok = Instant::now();
                        false
                    }
                    Ok(r) => {
                        let s = r.status();
                        let body = r.text().await.unwrap_or_default();
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("renew failed: {s} {body}");
                        }
                        matches!(s.as_u16(), 502..=504)
                    }
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("renew failed: {e}");
                        }
                        true
                    }
                };
                if gone && urls.len() > 1 {
                    at = (at + 1) % urls.len();
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = ok.load(Ordering::Relaxed);
    let f = failed.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({ "ok": n, "failed": f, "seconds": secs, "per_second": n as f64 / secs,
            "max_gap_ms": gap_us.load(Ordering::Relaxed) as f64 / 1000.0 })
    );
    if n == 0 {
        bail!("no renewal succeeded");
    }
    Ok(())
}
