//! The CA addresses a client fails over between: one per URL, or one per IP address of a URL
//! whose name resolves to several (each with its own connection pool, the URL's host kept for
//! the TLS server name and the `Host` header); which one answered last; and the rounds of
//! tries with exponential backoff and jitter between them.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rustls::ClientConfig;

use crate::error::{ApiError, Resend};
use crate::url::{CaUrl, CaUrls};

/// How many rounds over all addresses a request gets before it fails, when there are
/// several addresses. With one address there is one try, as before several existed: the
/// callers that run in loops (the shim's timer, the gateway) retry on their own schedule.
pub const ROUNDS: u32 = 3;

/// The wait before the second round; it doubles before each further round, and each wait is
/// drawn between half and one and a half times its value (jitter, so that clients cut off
/// together do not come back together). With [`ROUNDS`] = 3 a request waits under 1.2 s in
/// all between rounds, on top of its tries.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// How long an idle connection stays in the pool. Shorter than posternd's 10 s between
/// requests, so that the client never picks a connection the server is closing.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// One address of the CA: a URL, and the IP address it is pinned to when its name resolved
/// to several.
pub(crate) struct Endpoint {
    base: CaUrl,
    at: Option<SocketAddr>,
    pub(crate) http: reqwest::Client,
}

impl Endpoint {
    /// The URL of `path` on this address.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The URL of `path` as messages show it: with the IP address when the name has several.
    pub(crate) fn label(&self, path: &str) -> String {
        match self.at {
            Some(at) => format!("{}{path} (at {at})", self.base),
            None => self.url(path),
        }
    }
}

/// The addresses of a client and which of them answered last. Shared by a client's clones.
pub(crate) struct Endpoints {
    urls: CaUrls,
    tls: ClientConfig,
    list: Mutex<Arc<Vec<Arc<Endpoint>>>>,
    current: AtomicUsize,
}

/// One HTTPS client, pinned to `at` for the URL's host when given.
fn http_client(
    tls: &ClientConfig,
    base: &CaUrl,
    at: Option<SocketAddr>,
) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(tls.clone())
        .https_only(true)
        // A redirect would leave the pinned origin's path; the API never redirects.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(POOL_IDLE)
        .user_agent(concat!("postern/", env!("CARGO_PKG_VERSION")));
    if let (Some(at), Some(name)) = (at, base.dns_name()) {
        // Only the connection goes to `at`: the URL, and so the TLS server name checked
        // against the certificate and the Host header, keep the name.
        b = b.resolve(&name, at);
    }
    b.build().context("building the HTTPS client")
}

/// The addresses of `url` given what its name resolved to: one unpinned address when it
/// resolved to at most one (or is an IP address; reqwest then looks the name up itself at
/// each new connection), one pinned address per distinct IP address otherwise.
fn addresses_of(resolved: Option<Vec<SocketAddr>>) -> Vec<Option<SocketAddr>> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in resolved.unwrap_or_default() {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.len() <= 1 {
        vec![None]
    } else {
        out.into_iter().map(Some).collect()
    }
}

impl Endpoints {
    /// The addresses of `urls`, names resolved now (a name that does not resolve stays one
    /// address, and its failure is reported when it is called).
    pub(crate) fn new(urls: CaUrls, tls: ClientConfig) -> anyhow::Result<Endpoints> {
        let mut list = Vec::new();
        for base in urls.iter() {
            let resolved = base.dns_name().map(|name| {
                (name.as_str(), base.port())
                    .to_socket_addrs()
                    .map(|a| a.collect())
                    .unwrap_or_default()
            });
            for at in addresses_of(resolved) {
                list.push(Arc::new(Endpoint {
                    base: base.clone(),
                    at,
                    http: http_client(&tls, base, at)?,
                }));
            }
        }
        Ok(Endpoints {
            urls,
            tls,
            list: Mutex::new(Arc::new(list)),
            current: AtomicUsize::new(0),
        })
    }

    /// The URLs.
    pub(crate) fn urls(&self) -> &CaUrls {
        &self.urls
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Looks the names up again after a round in which no address answered (the gateway
    /// keeps its client for months, while the CA's instances may move), keeping the
    /// addresses, and their connection pools, that remain.
    async fn refresh(&self) -> Arc<Vec<Arc<Endpoint>>> {
        let old = self.snapshot();
        if self.urls.iter().all(|u| u.dns_name().is_none()) {
            return old;
        }
        let mut list = Vec::new();
        for base in self.urls.iter() {
            let resolved = match base.dns_name() {
                Some(name) => Some(
                    tokio::net::lookup_host((name.as_str(), base.port()))
                        .await
                        .map(|a| a.collect())
                        .unwrap_or_default(),
                ),
                None => None,
            };
            for at in addresses_of(resolved) {
                let kept = old.iter().find(|e| &e.base == base && e.at == at);
                let ep = match kept {
                    Some(e) => e.clone(),
                    None => match http_client(&self.tls, base, at) {
                        Ok(http) => Arc::new(Endpoint {
                            base: base.clone(),
                            at,
                            http,
                        }),
                        // Building a client fails only on a broken TLS configuration, which
                        // the first build would have refused already.
                        Err(_) => return old,
                    },
                };
                list.push(ep);
            }
        }
        let list = Arc::new(list);
        *self.list.lock().unwrap_or_else(PoisonError::into_inner) = list.clone();
        list
    }

    /// Runs `attempt` on the address that answered last and, while its failure says the
    /// instance is gone ([`ApiError::fails_over`] with `resend`), on the next ones, in
    /// [`ROUNDS`] rounds with backoff. An answer (success or not) ends it; when no address
    /// answered, the error names each with its failure.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        path: &str,
        resend: Resend,
        attempt: F,
    ) -> Result<T, ApiError>
    where
        F: Fn(Arc<Endpoint>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut list = self.snapshot();
        if let [only] = list.as_slice() {
            return attempt(only.clone()).await;
        }
        let mut tried = Vec::new();
        for round in 0..ROUNDS {
            if round > 0 {
                tokio::time::sleep(backoff(round)).await;
                list = self.refresh().await;
            }
            tried.clear();
            let n = list.len();
            let start = self.current.load(Ordering::Relaxed) % n.max(1);
            for k in 0..n {
                let i = (start + k) % n;
                let ep = list[i].clone();
                let label = ep.label(path);
                match attempt(ep).await {
                    Err(e) if e.fails_over(resend) => tried.push((label, e)),
                    answer => {
                        self.current.store(i, Ordering::Relaxed);
                        return answer;
                    }
                }
            }
        }
        Err(ApiError::Unavailable {
            tried,
            rounds: ROUNDS,
        })
    }
}

/// The wait before round `round` (1-based after the first): [`FIRST_BACKOFF`] doubled per
/// round, times a random factor in [0.5, 1.5).
fn backoff(round: u32) -> Duration {
    let base = FIRST_BACKOFF * 2u32.saturating_pow(round.saturating_sub(1));
    let mut b = [0u8; 2];
    // Without randomness the wait is the middle value: jitter only spreads clients out.
    let r = match getrandom::fill(&mut b) {
        Ok(()) => f64::from(u16::from_le_bytes(b)) / 65536.0,
        Err(_) => 0.5,
    };
    base.mul_f64(0.5 + r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_several_addresses_is_one_endpoint_per_address() {
        let a: SocketAddr = "192.0.2.1:3080".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:3080".parse().unwrap();
        assert_eq!(addresses_of(None), vec![None]);
        assert_eq!(addresses_of(Some(vec![])), vec![None]);
        assert_eq!(addresses_of(Some(vec![a])), vec![None]);
        assert_eq!(addresses_of(Some(vec![a, a])), vec![None]);
        assert_eq!(addresses_of(Some(vec![a, b, a])), vec![Some(a), Some(b)]);
    }

    #[test]
    fn backoff_doubles_within_its_jitter() {
        for _ in 0..100 {
            let first = backoff(1);
            assert!(first >= FIRST_BACKOFF / 2 && first < FIRST_BACKOFF * 3 / 2);
            let second = backoff(2);
            assert!(second >= FIRST_BACKOFF && second < FIRST_BACKOFF * 3);
        }
    }
}
