//! What anonymous clients may cost the daemon: per-source token buckets for login, enroll and
//! join, the limiter of argon2 work, and failed authentications counted per source and minute
//! (one `auth.failures` audit event each) instead of one audit row per failure.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;

use crate::config::{Limits as Settings, Rate};

/// Where a request comes from, as the limits count it: an IPv4 address, or the /64 of an
/// IPv6 address (one subscriber usually holds a whole /64, so counting single IPv6 addresses
/// would give one client 2^64 buckets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a peer address (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(bits.into()))
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/64"),
        }
    }
}

/// What each source holds at once (handshakes in progress, anonymous connections), at most
/// `max` each. Only sources holding something are in the table, so it is no larger than the
/// pool it stands beside.
pub struct PerSource {
    max: usize,
    held: Mutex<HashMap<Source, usize>>,
}

/// One slot of a source in a [`PerSource`], given back when dropped.
pub struct SourceSlot {
    owner: Arc<PerSource>,
    source: Source,
}

impl PerSource {
    /// At most `max` slots per source.
    pub fn new(max: usize) -> Arc<PerSource> {
        Arc::new(PerSource {
            max: max.max(1),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `source`, or `None` when it holds `max` already (or the table is unusable:
    /// refused, never counted wrong).
    pub fn try_take(self: &Arc<Self>, source: Source) -> Option<SourceSlot> {
        let mut held = self.held.lock().ok()?;
        let n = held.entry(source).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            owner: Arc::clone(self),
            source,
        })
    }

    /// How many slots `source` holds.
    #[cfg(test)]
    pub fn held(&self, source: Source) -> usize {
        self.held
            .lock()
            .map_or(0, |h| h.get(&source).copied().unwrap_or(0))
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.owner.held.lock() {
            if let Some(n) = held.get_mut(&self.source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    held.remove(&self.source);
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per source: each source may spend `burst` requests at once and gets
/// `per_minute` back a minute. The table is bounded: when it is full, buckets that have
/// refilled (which are the same as a new one) go first, then the least recently used.
pub struct SourceBuckets {
    rate: Rate,
    cap: usize,
    map: Mutex<HashMap<Source, Bucket>>,
}

impl SourceBuckets {
    /// The most sources remembered.
    pub const CAP: usize = 10_000;

    /// Buckets for `rate`, remembering at most `cap` sources.
    pub fn new(rate: Rate, cap: usize) -> SourceBuckets {
        SourceBuckets {
            rate,
            cap: cap.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn per_sec(&self) -> f64 {
        f64::from(self.rate.per_minute) / 60.0
    }

    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + dt * self.per_sec()).min(f64::from(self.rate.burst))
    }

    /// Takes one token for `source`; when there is none, how long until there is one.
    pub fn take(&self, source: Source, now: Instant) -> Result<(), Duration> {
        // A poisoned lock (a panic elsewhere) refuses: fail closed.
        let Ok(mut map) = self.map.lock() else {
            return Err(Duration::from_secs(60));
        };
        if !map.contains_key(&source) && map.len() >= self.cap {
            let full = f64::from(self.rate.burst);
            map.retain(|_, b| self.refilled(b, now) < full);
            if map.len() >= self.cap {
                if let Some(oldest) = map.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let burst = f64::from(self.rate.burst);
        let b = map.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = self.refilled(b, now);
        b.at = now;
        if tokens >= 1.0 {
            b.tokens = tokens - 1.0;
            Ok(())
        } else {
            b.tokens = tokens;
            let secs = ((1.0 - tokens) / self.per_sec()).ceil().max(1.0);
            Err(Duration::from_secs_f64(secs))
        }
    }

    /// Sources remembered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }
}

/// The argon2 work was refused: every slot stayed taken for the whole wait.
#[derive(Debug)]
pub struct Busy;

/// At most N argon2 computations at once (each takes 19 MiB and a core for tens of
/// milliseconds), run on the blocking pool; beyond that a caller waits briefly and is then
/// refused, so that a flood is answered with 503 instead of queueing without end.
pub struct Argon2Limiter {
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl Argon2Limiter {
    /// How long a caller waits for a slot before it is refused.
    pub const WAIT: Duration = Duration::from_millis(500);

    /// A limiter of `n` slots.
    pub fn new(n: usize, wait: Duration) -> Argon2Limiter {
        Argon2Limiter {
            slots: Arc::new(Semaphore::new(n.max(1))),
            wait,
        }
    }

    /// Runs `f` (argon2 work) on the blocking pool holding a slot. The slot is held by the
    /// blocking task itself, so that a request that is dropped (its deadline passed) does not
    /// free a slot whose hash is still being computed.
    pub async fn run<T, F>(&self, f: F) -> Result<anyhow::Result<T>, Busy>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permit =
            match tokio::time::timeout(self.wait, Arc::clone(&self.slots).acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) | Err(_) => return Err(Busy),
            };
        let r = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| anyhow::anyhow!("argon2 task: {e}"));
        Ok(r)
    }

    /// Slots free now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

/// The authentications whose failures are counted (not audited one by one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// `POST /v1/login`.
    Login,
    /// `POST /v1/enroll`.
    Enroll,
    /// `POST /v1/join` with a token that is malformed, unknown, used or expired.
    Join,
}

impl FailureKind {
    /// The name in `auth.failures` events.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Login => "login",
            FailureKind::Enroll => "enroll",
            FailureKind::Join => "join",
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    count: u64,
    first: u64,
    last: u64,
    reasons: BTreeMap<&'static str, u64>,
    users: BTreeMap<String, u64>,
    other_users: u64,
}

/// One flushed summary: the failures of one kind from one source in one minute.
#[derive(Debug)]
pub struct Summary {
    /// Start of the minute (Unix seconds).
    pub minute: u64,
    /// What failed.
    pub kind: FailureKind,
    /// The source, or `None` for the sources beyond the table's bound, counted together.
    pub source: Option<Source>,
    /// Failures.
    pub count: u64,
    /// The first and last failure (Unix seconds).
    pub first: u64,
    /// See `first`.
    pub last: u64,
    /// Failures per reason.
    pub reasons: BTreeMap<&'static str, u64>,
    /// Failures per existing user named (at most [`FailureSummaries::MAX_USERS`]).
    pub users: BTreeMap<String, u64>,
    /// Failures naming other existing users.
    pub other_users: u64,
}

impl Summary {
    /// The audit event: (actor, detail).
    pub fn event(&self) -> (String, serde_json::Value) {
        let source = self
            .source
            .map_or_else(|| "other sources".to_owned(), |s| s.to_string());
        let mut detail = json!({
            "source": source,
            "kind": self.kind.as_str(),
            "count": self.count,
            "minute": self.minute,
            "first": self.first,
            "last": self.last,
            "reasons": self.reasons,
        });
        if !self.users.is_empty() {
            detail["users"] = json!(self.users);
        }
        if self.other_users > 0 {
            detail["other_users"] = json!(self.other_users);
        }
        (format!("source:{source}"), detail)
    }
}

type Key = (u64, FailureKind, Option<Source>);

/// Failed authentications counted per (minute, kind, source) in memory and flushed as one
/// audit event each, so that a flood of failures costs a few rows a minute, not one each.
/// Bounded: beyond [`FailureSummaries::CAP`] sources in a minute, the rest are counted
/// together under "other sources". Only names of existing users are kept (an unknown name
/// may be a password typed into the wrong field).
#[derive(Default)]
pub struct FailureSummaries {
    map: Mutex<BTreeMap<Key, Tally>>,
}

impl FailureSummaries {
    /// Sources counted one by one per minute and kind.
    pub const CAP: usize = 1024;
    /// User names kept per summary.
    pub const MAX_USERS: usize = 16;

    /// Counts one failure at `now` (Unix seconds); `user` only when the user exists.
    pub fn record(
        &self,
        source: Source,
        kind: FailureKind,
        reason: &'static str,
        user: Option<&str>,
        now: u64,
    ) {
        let Ok(mut map) = self.map.lock() else {
            tracing::error!(%source, kind = kind.as_str(), reason, "failure counter unusable; failure not counted");
            return;
        };
        let minute = now - now % 60;
        let mut key = (minute, kind, Some(source));
        if !map.contains_key(&key) {
            let sources = map
                .range(
                    (minute, kind, None)
                        ..=(minute, kind, Some(Source(IpAddr::V6(u128::MAX.into())))),
                )
                .count();
            if sources >= Self::CAP {
                key.2 = None;
            }
        }
        let t = map.entry(key).or_default();
        if t.count == 0 {
            t.first = now;
        }
        t.count += 1;
        t.last = t.last.max(now);
        *t.reasons.entry(reason).or_default() += 1;
        if let Some(u) = user {
            if let Some(n) = t.users.get_mut(u) {
                *n += 1;
            } else if t.users.len() < Self::MAX_USERS {
                t.users.insert(u.to_owned(), 1);
            } else {
                t.other_users += 1;
            }
        }
    }

    /// Takes the summaries of minutes that are over at `now`; with `all`, every summary (at
    /// shutdown).
    pub fn take(&self, now: u64, all: bool) -> Vec<Summary> {
        let Ok(mut map) = self.map.lock() else {
            return Vec::new();
        };
        let minute = now - now % 60;
        let keep = if all {
            BTreeMap::new()
        } else {
            map.split_off(&(minute, FailureKind::Login, None))
        };
        let done = std::mem::replace(&mut *map, keep);
        done.into_iter()
            .map(|((minute, kind, source), t)| Summary {
                minute,
                kind,
                source,
                count: t.count,
                first: t.first,
                last: t.last,
                reasons: t.reasons,
                users: t.users,
                other_users: t.other_users,
            })
            .collect()
    }
}

/// The abuse limits of a running daemon.
pub struct Limits {
    /// Per-source buckets of `POST /v1/login`.
    pub login: SourceBuckets,
    /// Per-source buckets of `POST /v1/enroll`.
    pub enroll: SourceBuckets,
    /// Per-source buckets of `POST /v1/join`.
    pub join: SourceBuckets,
    /// The argon2 limiter.
    pub argon2: Argon2Limiter,
    /// Failed authentications waiting for their summary.
    pub failures: Arc<FailureSummaries>,
}

impl Limits {
    /// The limits of `settings`.
    pub fn new(settings: &Settings) -> Limits {
        Limits {
            login: SourceBuckets::new(settings.login, SourceBuckets::CAP),
            enroll: SourceBuckets::new(settings.enroll, SourceBuckets::CAP),
            join: SourceBuckets::new(settings.join, SourceBuckets::CAP),
            argon2: Argon2Limiter::new(settings.argon2_concurrency, Argon2Limiter::WAIT),
            failures: Arc::new(FailureSummaries::default()),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(&Settings::default())
    }
}

/// Writes the summaries of finished minutes as `auth.failures` events, shortly after each
/// minute ends, until the task is dropped (the daemon writes the rest when it stops).
pub async fn flush_failures(svc: Arc<crate::service::Service>) {
    loop {
        let now = crate::service::now();
        let next = 60 - now % 60 + 1;
        tokio::time::sleep(Duration::from_secs(next)).await;
        if let Err(e) = write_failures(&svc, false).await {
            tracing::error!(error = %format!("{e:#}"), "cannot write the summaries of failed authentications");
        }
    }
}

/// Writes the due summaries (or all) in one transaction.
pub async fn write_failures(svc: &crate::service::Service, all: bool) -> anyhow::Result<usize> {
    let now = crate::service::now();
    let due = svc.limits.failures.take(now, all);
    if due.is_empty() {
        return Ok(0);
    }
    let n = due.len();
    svc.db
        .run(move |c| {
            for s in &due {
                let (actor, detail) = s.event();
                crate::audit::append(c, now, "auth.failures", &actor, detail)?;
            }
            Ok(())
        })
        .await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn ipv6_sources_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(ip("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.7"), ip("192.0.2.7"));
        assert_ne!(ip("192.0.2.7"), ip("192.0.2.8"));
        assert_eq!(ip("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(ip("::ffff:192.0.2.7").to_string(), "192.0.2.7");
    }

    #[test]
    fn a_source_holds_at_most_its_share_and_gives_it_back() {
        let p = PerSource::new(2);
        let (a, b) = (ip("192.0.2.1"), ip("2001:db8::1"));
        let one = p.try_take(a).unwrap();
        let two = p.try_take(a).unwrap();
        assert!(p.try_take(a).is_none(), "a third slot for one source");
        // Another source is not affected; the same /64 is the same source.
        let other = p.try_take(b).unwrap();
        let _same64 = p.try_take(ip("2001:db8::ffff")).unwrap();
        assert!(p.try_take(ip("2001:db8::2")).is_none());
        drop(one);
        assert_eq!(p.held(a), 1);
        let _again = p.try_take(a).unwrap();
        drop(two);
        drop(other);
        assert_eq!(p.held(b), 1);
        assert_eq!(p.held(ip("198.51.100.1")), 0);
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate_and_says_when() {
        let b = SourceBuckets::new(
            Rate {
                per_minute: 6,
                burst: 3,
            },
            100,
        );
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(b.take(a, t0).is_ok());
        }
        // Empty: one token every 10 s.
        assert_eq!(b.take(a, t0), Err(Duration::from_secs(10)));
        assert_eq!(
            b.take(a, t0 + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        assert!(b.take(a, t0 + Duration::from_secs(10)).is_ok());
        assert!(b.take(a, t0 + Duration::from_secs(10)).is_err());
        // Another source has its own bucket.
        assert!(b.take(ip("192.0.2.2"), t0).is_ok());
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.take(a, later).is_ok());
        }
        assert!(b.take(a, later).is_err());
    }

    #[test]
    fn bucket_table_is_bounded_and_evicts_refilled_then_oldest() {
        let b = SourceBuckets::new(
            Rate {
                per_minute: 1,
                burst: 1,
            },
            3,
        );
        let t0 = Instant::now();
        for (i, s) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].iter().enumerate() {
            assert!(b.take(ip(s), t0 + Duration::from_millis(i as u64)).is_ok());
        }
        assert_eq!(b.len(), 3);
        // Full of empty buckets: the oldest (.1) goes, the others stay limited.
        assert!(b
            .take(ip("192.0.2.4"), t0 + Duration::from_millis(5))
            .is_ok());
        assert_eq!(b.len(), 3);
        assert!(b
            .take(ip("192.0.2.2"), t0 + Duration::from_millis(6))
            .is_err());
        assert!(b
            .take(ip("192.0.2.3"), t0 + Duration::from_millis(6))
            .is_err());
        // A minute later every bucket has refilled: they make room, and are forgotten.
        assert!(b
            .take(ip("192.0.2.5"), t0 + Duration::from_secs(61))
            .is_ok());
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn failures_are_summarised_per_source_minute_and_kind() {
        let f = FailureSummaries::default();
        let (a, b) = (ip("192.0.2.1"), ip("2001:db8::1"));
        for i in 0..500 {
            f.record(
                a,
                FailureKind::Login,
                "wrong password",
                Some("alice"),
                6000 + i % 50,
            );
        }
        f.record(a, FailureKind::Login, "rate limited", None, 6010);
        f.record(a, FailureKind::Join, "malformed token", None, 6011);
        f.record(b, FailureKind::Login, "unknown user", None, 6012);
        f.record(a, FailureKind::Login, "wrong password", None, 6061);
        // Nothing is due while its minute lasts.
        assert!(f.take(6059, false).is_empty());
        let due = f.take(6060, false);
        assert_eq!(due.len(), 3, "{due:?}");
        let login_a = due
            .iter()
            .find(|s| s.kind == FailureKind::Login && s.source == Some(a))
            .unwrap();
        assert_eq!(login_a.count, 501);
        assert_eq!((login_a.first, login_a.last), (6000, 6049));
        assert_eq!(login_a.reasons["wrong password"], 500);
        assert_eq!(login_a.reasons["rate limited"], 1);
        assert_eq!(login_a.users["alice"], 500);
        let (actor, detail) = login_a.event();
        assert_eq!(actor, "source:192.0.2.1");
        assert_eq!(detail["count"], 501);
        assert_eq!(detail["minute"], 6000);
        assert_eq!(
            due.iter().find(|s| s.source == Some(b)).unwrap().event().0,
            "source:2001:db8::/64"
        );
        // The next minute's failure waits for its minute, or for the shutdown.
        assert!(f.take(6119, false).is_empty());
        let next = f.take(6120, false);
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].minute, next[0].count), (6060, 1));
        f.record(
            a,
            FailureKind::Enroll,
            "invalid or expired invite",
            None,
            6130,
        );
        assert_eq!(f.take(6130, true).len(), 1);
        assert!(f.take(9999, true).is_empty());
    }

    #[test]
    fn failure_table_is_bounded_and_keeps_every_count() {
        let f = FailureSummaries::default();
        let n = FailureSummaries::CAP as u32 + 500;
        for i in 0..n {
            let s = Source::of(IpAddr::V4((0x0a00_0000 + i).into()));
            f.record(s, FailureKind::Join, "malformed token", None, 120);
        }
        for i in 0..40 {
            f.record(
                ip("192.0.2.9"),
                FailureKind::Login,
                "wrong password",
                Some(&format!("u{i}")),
                120,
            );
        }
        let due = f.take(0, true);
        assert_eq!(due.len(), FailureSummaries::CAP + 2);
        let other = due.iter().find(|s| s.source.is_none()).unwrap();
        assert_eq!(other.count, 500);
        assert_eq!(other.event().0, "source:other sources");
        assert_eq!(due.iter().map(|s| s.count).sum::<u64>(), u64::from(n) + 40);
        let users = due.iter().find(|s| s.kind == FailureKind::Login).unwrap();
        assert_eq!(users.users.len(), FailureSummaries::MAX_USERS);
        assert_eq!(users.other_users, 40 - FailureSummaries::MAX_USERS as u64);
    }

    #[tokio::test]
    async fn argon2_limiter_refuses_beyond_its_slots_and_frees_them_when_work_ends() {
        let l = Arc::new(Argon2Limiter::new(2, Duration::from_millis(50)));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(Mutex::new(rx));
        let mut running = Vec::new();
        for _ in 0..2 {
            let (l, rx) = (Arc::clone(&l), Arc::clone(&rx));
            running.push(tokio::spawn(async move {
                l.run(move || {
                    let _ = rx.lock().unwrap().recv();
                })
                .await
                .is_ok()
            }));
        }
        // Both slots taken (the blocking tasks wait for the channel).
        while l.available() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(l.run(|| ()).await, Err(Busy)));
        // A dropped caller does not free its slot while its work runs.
        running.remove(0).abort();
        assert_eq!(l.available(), 0);
        assert!(matches!(l.run(|| ()).await, Err(Busy)));
        tx.send(()).unwrap();
        tx.send(()).unwrap();
        while l.available() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(l.run(|| 7).await.unwrap().unwrap(), 7);
    }
}
