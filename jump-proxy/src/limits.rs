//! What connections may hold before they authenticate (sshd's `LoginGraceTime`,
//! `MaxStartups` and `PerSourceMaxStartups`, sshd_config(5)) and what one authenticated user
//! may hold at once (connections to servers, channels): `[limits]` of postern-gate.toml(5).
//! Refusals are counted and summarized in the log at most once every ten seconds, never one
//! line per refused connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use postern_gate::config;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How often the summary of refusals is logged (when there were any).
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Sources remembered per summary for "most from": beyond, refusals are counted but not
/// attributed, so that a flood from many addresses cannot grow memory.
const REPORT_SOURCES: usize = 1024;

/// The limits and what each holds now.
pub struct Limits {
    /// The effective values.
    pub cfg: config::Limits,
    startups: Mutex<Startups>,
    users: Mutex<Users>,
    refused: Mutex<Refused>,
}

#[derive(Default)]
struct Startups {
    unauthenticated: usize,
    per_source: HashMap<IpAddr, usize>,
}

#[derive(Default)]
struct Users {
    outer: HashMap<String, usize>,
    inner: HashMap<String, usize>,
    channels: HashMap<String, usize>,
}

/// Refusals since the last summary.
#[derive(Default)]
struct Refused {
    max_startups: u64,
    per_source: u64,
    login_grace_time: u64,
    outer: u64,
    inner: u64,
    channels: u64,
    sources: HashMap<IpAddr, u64>,
}

/// Why a connection was refused before its SSH banner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Early {
    /// `max_startups`: this many unauthenticated connections were in progress.
    MaxStartups(usize),
    /// `per_source_max_startups`: its source had this many.
    PerSource(usize),
}

/// Which per-user limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerUser {
    /// `max_connections_per_user`: authenticated connections to the gateway.
    Outer,
    /// `max_inner_connections_per_user`.
    Inner,
    /// `max_channels_per_user`.
    Channels,
}

impl PerUser {
    /// The key of gate.toml, which is also the audit reason.
    pub fn key(self) -> &'static str {
        match self {
            PerUser::Outer => "max_connections_per_user",
            PerUser::Inner => "max_inner_connections_per_user",
            PerUser::Channels => "max_channels_per_user",
        }
    }
}

/// A per-user refusal: what the user reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRefusal {
    /// The limit.
    pub which: PerUser,
    /// Its value.
    pub limit: usize,
    /// The user's message.
    pub message: String,
}

/// The key of `per_source_max_startups`: an IPv4 address, or the /64 of an IPv6 address (one
/// host commonly has a whole /64 to pick addresses from). An IPv4-mapped IPv6 address (a
/// listener on `[::]`) is its IPv4 address.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => {
            let s = a.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A uniform random number in 0..100 for the random early drop; 0 (drop, when in the
/// random range) if the system has no randomness to give.
fn roll() -> u32 {
    loop {
        let mut b = [0u8; 1];
        if getrandom::fill(&mut b).is_err() {
            return 0;
        }
        // 200 = 2 × 100: rejection sampling keeps it uniform.
        if b[0] < 200 {
            return u32::from(b[0] % 100);
        }
    }
}

impl Limits {
    /// The limits, holding nothing yet.
    pub fn new(cfg: config::Limits) -> Arc<Limits> {
        Arc::new(Limits {
            cfg,
            startups: Mutex::default(),
            users: Mutex::default(),
            refused: Mutex::default(),
        })
    }

    /// Starts the task that logs the summary of refusals.
    pub fn report(self: &Arc<Self>) {
        let l = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REPORT_EVERY).await;
                l.log_summary();
            }
        });
    }

    fn log_summary(&self) {
        let Ok(mut r) = self.refused.lock() else {
            return;
        };
        let r = std::mem::take(&mut *r);
        let early = r.max_startups + r.per_source + r.login_grace_time;
        if early + r.outer + r.inner + r.channels == 0 {
            return;
        }
        let most = r
            .sources
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(ip, n)| format!("; most from {ip} ({n})"))
            .unwrap_or_default();
        tracing::warn!(
            max_startups = r.max_startups,
            per_source_max_startups = r.per_source,
            login_grace_time = r.login_grace_time,
            max_connections_per_user = r.outer,
            max_inner_connections_per_user = r.inner,
            max_channels_per_user = r.channels,
            "[limits] refused in the last {}s: {early} connections before authentication ({} by max_startups, {} by per_source_max_startups, {} by login_grace_time){most}; {} authentications (max_connections_per_user), {} connections to servers (max_inner_connections_per_user) and {} channels (max_channels_per_user) of authenticated users",
            REPORT_EVERY.as_secs(),
            r.max_startups,
            r.per_source,
            r.login_grace_time,
            r.outer,
            r.inner,
            r.channels,
        );
    }

    fn count(&self, f: impl FnOnce(&mut Refused), source: Option<IpAddr>) {
        if let Ok(mut r) = self.refused.lock() {
            f(&mut r);
            if let Some(s) = source {
                let n = r.sources.len();
                if let Some(c) = r.sources.get_mut(&s) {
                    *c += 1;
                } else if n < REPORT_SOURCES {
                    r.sources.insert(s, 1);
                }
            }
        }
    }

    /// Admits a new connection from `peer` into its pre-authentication phase, or says why
    /// not (and counts it). The returned slot counts it until it authenticates or ends.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Startup, Early> {
        let r = self.admit_with(peer, roll());
        if let Err(e) = r {
            let source = source_of(peer);
            self.count(
                |r| match e {
                    Early::MaxStartups(_) => r.max_startups += 1,
                    Early::PerSource(_) => r.per_source += 1,
                },
                Some(source),
            );
        }
        r
    }

    /// [`Limits::admit`] with the random number given (0..100), without counting.
    fn admit_with(self: &Arc<Self>, peer: IpAddr, roll: u32) -> Result<Startup, Early> {
        let source = source_of(peer);
        // A poisoned table admits nobody: fail closed.
        let Ok(mut s) = self.startups.lock() else {
            return Err(Early::MaxStartups(usize::MAX));
        };
        // sshd checks the source's limit first, then MaxStartups (sshd.c, server_accept_loop).
        let mine = s.per_source.get(&source).copied().unwrap_or(0);
        if mine >= self.cfg.per_source_max_startups {
            return Err(Early::PerSource(mine));
        }
        if self.cfg.max_startups.should_drop(s.unauthenticated, roll) {
            return Err(Early::MaxStartups(s.unauthenticated));
        }
        s.unauthenticated += 1;
        *s.per_source.entry(source).or_insert(0) += 1;
        Ok(Startup {
            limits: Arc::clone(self),
            source,
        })
    }

    /// Unauthenticated connections now (all, and of `peer`'s source).
    #[cfg(test)]
    fn unauthenticated(&self, peer: IpAddr) -> (usize, usize) {
        let s = self.startups.lock().unwrap_or_else(|e| e.into_inner());
        (
            s.unauthenticated,
            s.per_source.get(&source_of(peer)).copied().unwrap_or(0),
        )
    }

    /// Counts a connection that the login grace time ended.
    pub fn grace_expired(&self, peer: Option<IpAddr>) {
        self.count(|r| r.login_grace_time += 1, peer.map(source_of));
    }

    /// A slot for one more connection to a server (`Inner`) or channel (`Channels`) of `user`.
    pub fn for_user(self: &Arc<Self>, which: PerUser, user: &str) -> Result<UserSlot, UserRefusal> {
        let limit = match which {
            PerUser::Outer => self.cfg.max_connections_per_user,
            PerUser::Inner => self.cfg.max_inner_connections_per_user,
            PerUser::Channels => self.cfg.max_channels_per_user,
        };
        let held = self.users.lock().ok().and_then(|mut u| {
            let table = match which {
                PerUser::Outer => &mut u.outer,
                PerUser::Inner => &mut u.inner,
                PerUser::Channels => &mut u.channels,
            };
            let n = table.entry(user.to_owned()).or_insert(0);
            if *n >= limit {
                return None;
            }
            *n += 1;
            Some(())
        });
        match held {
            Some(()) => Ok(UserSlot {
                limits: Arc::clone(self),
                which,
                user: user.to_owned(),
            }),
            None => {
                self.count(
                    |r| match which {
                        PerUser::Outer => r.outer += 1,
                        PerUser::Inner => r.inner += 1,
                        PerUser::Channels => r.channels += 1,
                    },
                    None,
                );
                let what = match which {
                    PerUser::Outer => "connections",
                    PerUser::Inner => "connections to servers",
                    PerUser::Channels => "channels",
                };
                Err(UserRefusal {
                    which,
                    limit,
                    message: format!(
                        "postern-gate: refused: {user} already has {limit} {what} open through this gateway, its limit ([limits] {} in gate.toml); close one and try again",
                        which.key()
                    ),
                })
            }
        }
    }
}

/// One connection in its pre-authentication phase; counted until dropped.
pub struct Startup {
    limits: Arc<Limits>,
    source: IpAddr,
}

impl Drop for Startup {
    fn drop(&mut self) {
        let mut s = match self.limits.startups.lock() {
            Ok(s) => s,
            Err(e) => e.into_inner(),
        };
        s.unauthenticated = s.unauthenticated.saturating_sub(1);
        if let Some(n) = s.per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_source.remove(&self.source);
            }
        }
    }
}

/// One of a user's connections to servers, or channels; counted until dropped.
pub struct UserSlot {
    limits: Arc<Limits>,
    which: PerUser,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut u = match self.limits.users.lock() {
            Ok(u) => u,
            Err(e) => e.into_inner(),
        };
        let table = match self.which {
            PerUser::Outer => &mut u.outer,
            PerUser::Inner => &mut u.inner,
            PerUser::Channels => &mut u.channels,
        };
        if let Some(n) = table.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.remove(&self.user);
            }
        }
    }
}

/// Whether a connection authenticated in time; shared by its handler (which says so) and
/// its stream (which ends it at the deadline otherwise).
#[derive(Default)]
pub struct PreAuth {
    authenticated: AtomicBool,
    expired: AtomicBool,
}

impl PreAuth {
    /// A connection that has not authenticated.
    pub fn new() -> Arc<PreAuth> {
        Arc::new(PreAuth::default())
    }

    /// Called by the handler when it accepts the authentication.
    pub fn authenticated(&self) {
        self.authenticated.store(true, Ordering::Release);
    }

    /// Whether the grace time ended the connection.
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }
}

/// A stream whose reads and writes fail once the login grace time is over and the
/// connection has not authenticated: the whole pre-authentication phase (banner, key
/// exchange, authentication) is under the deadline, whatever russh waits for.
pub struct Graced<S> {
    inner: S,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    state: Arc<PreAuth>,
}

impl<S> Graced<S> {
    /// `inner`, to authenticate within `grace` from now.
    pub fn new(inner: S, grace: Duration, state: Arc<PreAuth>) -> Graced<S> {
        Graced {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(grace))),
            state,
        }
    }

    /// `Err` once the deadline passed before authentication; registers the waker otherwise.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(d) = self.deadline.as_mut() else {
            return Ok(());
        };
        if self.state.authenticated.load(Ordering::Acquire) {
            self.deadline = None;
            return Ok(());
        }
        if d.as_mut().poll(cx).is_ready() {
            self.state.expired.store(true, Ordering::Release);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "not authenticated within the login grace time",
            ));
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Graced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Graced<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use postern_gate::config::MaxStartups;

    fn limits(start: usize, rate: u32, full: usize, per_source: usize) -> Arc<Limits> {
        Limits::new(config::Limits {
            max_connections: 4096,
            login_grace_time: Duration::from_secs(30),
            max_startups: MaxStartups { start, rate, full },
            per_source_max_startups: per_source,
            max_connections_per_user: 2,
            max_inner_connections_per_user: 2,
            max_channels_per_user: 3,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_is_held_to_its_limit_and_others_are_not() {
        let l = limits(100, 30, 200, 3);
        let a = ip("127.0.0.9");
        let held: Vec<Startup> = (0..3).map(|_| l.admit_with(a, 99).unwrap()).collect();
        assert_eq!(l.admit_with(a, 99).err(), Some(Early::PerSource(3)));
        assert!(l.admit_with(ip("127.0.0.1"), 0).is_ok());
        assert_eq!(l.unauthenticated(a), (3, 3));
        drop(held);
        // Dropping the slots gives them back (the other source's went with its temporary).
        assert_eq!(l.unauthenticated(a), (0, 0));
        assert!(l.admit_with(a, 99).is_ok());
    }

    #[test]
    fn the_random_early_drop_counts_every_unauthenticated_connection() {
        let l = limits(2, 50, 4, 100);
        let mut held = Vec::new();
        for i in 0..2 {
            held.push(l.admit_with(ip(&format!("10.0.0.{i}")), 0).unwrap());
        }
        // At start (2 held): p = 50; roll 49 drops, roll 50 does not.
        assert_eq!(
            l.admit_with(ip("10.0.1.1"), 49).err(),
            Some(Early::MaxStartups(2))
        );
        held.push(l.admit_with(ip("10.0.1.1"), 50).unwrap());
        // 3 held: p = 50 + 50 * 1 / 2 = 75.
        assert!(l.admit_with(ip("10.0.1.2"), 74).is_err());
        held.push(l.admit_with(ip("10.0.1.2"), 75).unwrap());
        // full: whatever the roll.
        assert_eq!(
            l.admit_with(ip("10.0.1.3"), 99).err(),
            Some(Early::MaxStartups(4))
        );
        // An authenticated connection gives its slot back: the next one is admitted.
        held.pop();
        assert!(l.admit_with(ip("10.0.1.3"), 99).is_ok());
    }

    #[test]
    fn ipv6_sources_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        let l = limits(100, 30, 200, 1);
        let _a = l.admit_with(ip("2001:db8:1:2::1"), 99).unwrap();
        assert_eq!(
            l.admit_with(ip("2001:db8:1:2:ffff::2"), 99).err(),
            Some(Early::PerSource(1))
        );
        assert!(l.admit_with(ip("2001:db8:1:3::1"), 99).is_ok());
        let _b = l.admit_with(ip("192.0.2.7"), 99).unwrap();
        assert!(l.admit_with(ip("::ffff:192.0.2.7"), 99).is_err());
    }

    #[test]
    fn per_user_slots_are_counted_per_user_and_given_back() {
        let l = limits(100, 30, 200, 100);
        let a = l.for_user(PerUser::Inner, "alice").unwrap();
        let _b = l.for_user(PerUser::Inner, "alice").unwrap();
        let r = l.for_user(PerUser::Inner, "alice").err().unwrap();
        assert_eq!((r.which, r.limit), (PerUser::Inner, 2));
        assert!(
            r.message
                .contains("alice already has 2 connections to servers open"),
            "{}",
            r.message
        );
        assert!(r.message.contains("max_inner_connections_per_user"));
        // Another user, and channels, are counted apart.
        assert!(l.for_user(PerUser::Inner, "bob").is_ok());
        let c: Vec<UserSlot> = (0..3)
            .map(|_| l.for_user(PerUser::Channels, "alice").unwrap())
            .collect();
        let r = l.for_user(PerUser::Channels, "alice").err().unwrap();
        assert!(r.message.contains("3 channels open"), "{}", r.message);
        assert!(r.message.contains("max_channels_per_user"));
        drop(a);
        assert!(l.for_user(PerUser::Inner, "alice").is_ok());
        drop(c);
        assert!(l.for_user(PerUser::Channels, "alice").is_ok());
    }

    #[test]
    fn random_rolls_are_below_100() {
        for _ in 0..1000 {
            assert!(roll() < 100);
        }
    }

    // Real time, short deadlines: a sleep lasts at least as long as asked, so the second
    // half cannot pass by being fast (the deadline is surely over when the peer writes).
    #[tokio::test]
    async fn the_grace_time_ends_an_unauthenticated_stream_and_spares_an_authenticated_one() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Never authenticated: the read waiting for the peer fails at the deadline.
        let (a, mut peer) = tokio::io::duplex(64);
        let state = PreAuth::new();
        let mut g = Graced::new(a, Duration::from_millis(20), Arc::clone(&state));
        let mut buf = [0u8; 8];
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(state.expired());
        assert!(g.write_all(b"x").await.is_err());
        // Authenticated while a read waits: nothing happens at the deadline.
        let (b, mut peer2) = tokio::io::duplex(64);
        let state = PreAuth::new();
        let mut g = Graced::new(b, Duration::from_millis(20), Arc::clone(&state));
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 2];
            g.read_exact(&mut buf).await.map(|_| buf)
        });
        // The read is polled (its deadline armed) before the handler says "authenticated".
        tokio::task::yield_now().await;
        state.authenticated();
        tokio::time::sleep(Duration::from_millis(200)).await;
        peer2.write_all(b"ok").await.unwrap();
        assert_eq!(&read.await.unwrap().unwrap(), b"ok");
        assert!(!state.expired());
        peer.shutdown().await.unwrap();
    }
}
