//! Load generator for `bench/ca`: many concurrent clients renewing certificates over mTLS,
//! each on its own keep-alive connection, counting answers per second.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;

/// Renewal load: `--home` once per enrolled and logged-in user.
#[derive(Parser)]
struct Args {
    /// API base URL.
    #[arg(long)]
    url: String,
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
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..a.concurrency {
        let c = client(&a.homes[i % a.homes.len()], &a.cluster)?;
        let url = format!("{}/v1/renew", a.url);
        let (ok, failed) = (Arc::clone(&ok), Arc::clone(&failed));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match c.post(&url).body("{}").send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        let s = r.status();
                        let body = r.text().await.unwrap_or_default();
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("renew failed: {s} {body}");
                        }
                    }
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("renew failed: {e}");
                        }
                    }
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
        serde_json::json!({ "ok": n, "failed": f, "seconds": secs, "per_second": n as f64 / secs })
    );
    if n == 0 {
        bail!("no renewal succeeded");
    }
    Ok(())
}
