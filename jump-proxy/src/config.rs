//! `gate.toml`, the gateway's optional configuration file (postern-gate.toml(5)), read by
//! `postern-gate serve --config FILE`. Flags given on the command line win over it.

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

use postern_core::Ttl;

/// `gate.toml`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Address to listen on (default `0.0.0.0:3023`; `--listen` wins).
    pub listen: Option<String>,
    /// How many client connections are served at once (default 4096).
    pub max_connections: Option<NonZeroUsize>,
    /// `[sessions]`: what ends a live session besides the CA's cuts.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// `[limits]`: what connections that have not authenticated, and each user, may hold.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[audit]`: the journal of audit events in the state directory.
    #[serde(default)]
    pub audit: AuditConfig,
    /// `[health]`: `/healthz` and `/readyz` for load balancers, in plain HTTP.
    #[serde(default)]
    pub health: ListenConfig,
    /// `[metrics]`: Prometheus `/metrics` (and the two probes), in plain HTTP.
    #[serde(default)]
    pub metrics: ListenConfig,
}

/// `[health]` and `[metrics]` of `gate.toml`: a plain-HTTP listener, off unless `listen` is
/// set.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// `ADDRESS:PORT` to serve on (an IP address, not a name).
    pub listen: Option<std::net::SocketAddr>,
}

/// `[audit]` of `gate.toml`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The most bytes of undelivered audit events kept on disk (default 1 GiB).
    pub spool_max_bytes: Option<u64>,
}

/// `[audit] spool_max_bytes` when gate.toml does not set it: about two million events.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;

impl AuditConfig {
    /// `spool_max_bytes`, checked.
    pub fn spool_max_bytes(&self) -> anyhow::Result<u64> {
        match self.spool_max_bytes {
            None => Ok(DEFAULT_SPOOL_MAX_BYTES),
            Some(0) => anyhow::bail!(
                "[audit] spool_max_bytes = 0 would refuse every audit event (and so every strict session); give the most bytes of undelivered events to keep on disk"
            ),
            Some(n) => Ok(n),
        }
    }
}

/// `[sessions]` of `gate.toml`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// Whether a session ends when the user certificate it was authenticated with ends
    /// (default true, like Teleport's `disconnect_expired_cert`).
    pub disconnect_expired_cert: Option<bool>,
}

impl SessionsConfig {
    /// `disconnect_expired_cert`, on unless the file turns it off.
    pub fn disconnect_expired_cert(&self) -> bool {
        self.disconnect_expired_cert.unwrap_or(true)
    }
}

/// `[limits]` of `gate.toml`, as written; [`GateConfig::limits`] gives the effective values.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// sshd's `LoginGraceTime`: how long a connection may take from accept to authentication.
    pub login_grace_time: Option<Ttl>,
    /// sshd's `MaxStartups`, `start:rate:full`, over unauthenticated connections.
    pub max_startups: Option<MaxStartups>,
    /// sshd's `PerSourceMaxStartups`: unauthenticated connections per address (IPv6: per /64).
    pub per_source_max_startups: Option<NonZeroUsize>,
    /// A user's concurrent authenticated connections to the gateway.
    pub max_connections_per_user: Option<NonZeroUsize>,
    /// A user's concurrent connections to servers (direct-tcpip channels of the outer connection).
    pub max_inner_connections_per_user: Option<NonZeroUsize>,
    /// A user's concurrently open channels on their connections to servers.
    pub max_channels_per_user: Option<NonZeroUsize>,
}

/// The default of `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// The default of `login_grace_time`, sshd's.
pub const DEFAULT_LOGIN_GRACE_TIME: Duration = Duration::from_secs(30);
/// The default of `max_startups` (with `max_connections` of at least twice its `full`).
pub const DEFAULT_MAX_STARTUPS: MaxStartups = MaxStartups {
    start: 256,
    rate: 30,
    full: 1024,
};
/// The default of `per_source_max_startups`: half of the default `start`, so that one address
/// alone never makes the gateway drop anyone else's connections.
pub const DEFAULT_PER_SOURCE_MAX_STARTUPS: usize = 128;
/// The default of `max_connections_per_user`: a sixteenth of the default `max_connections`,
/// so that one certificate holder cannot take the gateway from everybody else.
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 256;
/// The default of `max_inner_connections_per_user`.
pub const DEFAULT_MAX_INNER_CONNECTIONS_PER_USER: usize = 256;
/// The default of `max_channels_per_user`.
pub const DEFAULT_MAX_CHANNELS_PER_USER: usize = 1024;

/// The effective limits of a gateway: `max_connections` and `[limits]` with defaults applied
/// and checked against each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Client connections at once, authenticated or not.
    pub max_connections: usize,
    /// From accept to authentication, on the outer connection and on each inner one.
    pub login_grace_time: Duration,
    /// Random early drop of new connections by the number of unauthenticated ones.
    pub max_startups: MaxStartups,
    /// Unauthenticated connections of one source (an IPv4 address, an IPv6 /64).
    pub per_source_max_startups: usize,
    /// Authenticated connections to the gateway one user holds at once.
    pub max_connections_per_user: usize,
    /// Connections to servers one user holds at once.
    pub max_inner_connections_per_user: usize,
    /// Channels one user holds open at once on their connections to servers.
    pub max_channels_per_user: usize,
}

impl GateConfig {
    /// The effective limits, or why the file's values do not fit together.
    pub fn limits(&self) -> Result<Limits, String> {
        let max_connections = self
            .max_connections
            .map_or(DEFAULT_MAX_CONNECTIONS, NonZeroUsize::get);
        let l = &self.limits;
        let max_startups = match l.max_startups {
            // Unauthenticated connections alone must never hold every connection slot:
            // that is the lockout this limit is for.
            Some(m) if m.full >= max_connections => {
                return Err(format!(
                    "[limits] max_startups = \"{m}\": its full ({}) must be below max_connections ({max_connections}), or connections that never authenticate can hold every slot",
                    m.full
                ))
            }
            Some(m) => m,
            None => DEFAULT_MAX_STARTUPS.within(max_connections),
        };
        Ok(Limits {
            max_connections,
            login_grace_time: l
                .login_grace_time
                .map_or(DEFAULT_LOGIN_GRACE_TIME, Ttl::as_duration),
            max_startups,
            per_source_max_startups: l
                .per_source_max_startups
                .map_or(DEFAULT_PER_SOURCE_MAX_STARTUPS, NonZeroUsize::get),
            max_connections_per_user: l
                .max_connections_per_user
                .map_or(DEFAULT_MAX_CONNECTIONS_PER_USER, NonZeroUsize::get),
            max_inner_connections_per_user: l
                .max_inner_connections_per_user
                .map_or(DEFAULT_MAX_INNER_CONNECTIONS_PER_USER, NonZeroUsize::get),
            max_channels_per_user: l
                .max_channels_per_user
                .map_or(DEFAULT_MAX_CHANNELS_PER_USER, NonZeroUsize::get),
        })
    }
}

/// sshd_config(5)'s `MaxStartups start:rate:full`: with `start` or more unauthenticated
/// connections, a new one is refused with probability `rate`/100, growing linearly to
/// 100% at `full`. A single number `N` refuses every new connection from `N` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxStartups {
    /// Unauthenticated connections from which new ones may be refused.
    pub start: usize,
    /// Percentage refused at `start` (1 to 100).
    pub rate: u32,
    /// Unauthenticated connections from which every new one is refused.
    pub full: usize,
}

impl MaxStartups {
    /// Whether a new connection is refused while `unauthenticated` connections are in their
    /// pre-authentication phase, given `roll`, a random number uniform in 0..100. This is
    /// sshd's `should_drop_connection` (sshd.c), integer arithmetic included.
    pub fn should_drop(&self, unauthenticated: usize, roll: u32) -> bool {
        if unauthenticated < self.start {
            return false;
        }
        if unauthenticated >= self.full || self.rate >= 100 {
            return true;
        }
        // start <= unauthenticated < full here, so the divisor is positive.
        let above = (unauthenticated - self.start) as u128;
        let span = (self.full - self.start) as u128;
        let p = u128::from(100 - self.rate) * above / span + u128::from(self.rate);
        u128::from(roll) < p
    }

    /// The default scaled down to fit `max_connections` (its full at most half of it).
    const fn within(self, max_connections: usize) -> MaxStartups {
        let half = if max_connections / 2 == 0 {
            1
        } else {
            max_connections / 2
        };
        let full = if self.full < half { self.full } else { half };
        let start = if self.start < full { self.start } else { full };
        MaxStartups {
            start,
            rate: self.rate,
            full,
        }
    }
}

impl fmt::Display for MaxStartups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.start, self.rate, self.full)
    }
}

impl FromStr for MaxStartups {
    type Err = String;

    fn from_str(s: &str) -> Result<MaxStartups, String> {
        let shown: String = s.chars().take(40).collect();
        let bad = |why: &str| {
            format!(
                "invalid max_startups {shown:?}: {why} (sshd_config(5) MaxStartups: \"start:rate:full\" such as \"256:30:1024\", or one number)"
            )
        };
        let number = |part: &str, what: &str| -> Result<usize, String> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(&format!("{what} is not a number")));
            }
            part.parse::<usize>()
                .map_err(|_| bad(&format!("{what} is too large")))
        };
        let parts: Vec<&str> = s.split(':').collect();
        let m = match parts.as_slice() {
            [n] => {
                let n = number(n, "the limit")?;
                MaxStartups {
                    start: n,
                    rate: 100,
                    full: n,
                }
            }
            [start, rate, full] => MaxStartups {
                start: number(start, "start")?,
                rate: u32::try_from(number(rate, "rate")?)
                    .map_err(|_| bad("rate must be from 1 to 100"))?,
                full: number(full, "full")?,
            },
            _ => return Err(bad("expected three numbers separated by colons")),
        };
        if m.start == 0 {
            return Err(bad("start must be at least 1"));
        }
        if m.rate == 0 || m.rate > 100 {
            return Err(bad("rate must be from 1 to 100"));
        }
        if m.start > m.full {
            return Err(bad("start must not be above full"));
        }
        Ok(m)
    }
}

impl<'de> serde::Deserialize<'de> for MaxStartups {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_expiry_cut_is_on_unless_turned_off() {
        let on = |text: &str| {
            toml::from_str::<GateConfig>(text)
                .unwrap()
                .sessions
                .disconnect_expired_cert()
        };
        assert!(on(""));
        assert!(on("[sessions]\n"));
        assert!(on("[sessions]\ndisconnect_expired_cert = true\n"));
        assert!(!on("[sessions]\ndisconnect_expired_cert = false\n"));
        assert!(toml::from_str::<GateConfig>("[sessions]\ndisconnect_expired = false\n").is_err());
    }

    fn ms(start: usize, rate: u32, full: usize) -> MaxStartups {
        MaxStartups { start, rate, full }
    }

    #[test]
    fn max_startups_parses_sshds_forms() {
        assert_eq!("10:30:100".parse(), Ok(ms(10, 30, 100)));
        assert_eq!("256:30:1024".parse(), Ok(ms(256, 30, 1024)));
        assert_eq!("1:100:1".parse(), Ok(ms(1, 100, 1)));
        assert_eq!("5:1:5".parse(), Ok(ms(5, 1, 5)));
        // One number: every connection from N on is refused.
        assert_eq!("10".parse(), Ok(ms(10, 100, 10)));
    }

    #[test]
    fn max_startups_rejects_what_sshd_rejects() {
        for (s, why) in [
            ("", "the limit is not a number"),
            ("0", "start must be at least 1"),
            ("0:30:100", "start must be at least 1"),
            ("10:0:100", "rate must be from 1 to 100"),
            ("10:101:100", "rate must be from 1 to 100"),
            ("100:30:10", "start must not be above full"),
            ("10:30", "expected three numbers"),
            ("10:30:100:5", "expected three numbers"),
            ("10:30:", "full is not a number"),
            ("-1:30:100", "start is not a number"),
            ("+1:30:100", "start is not a number"),
            (" 10:30:100", "start is not a number"),
            ("10:3x:100", "rate is not a number"),
            ("10:30:99999999999999999999999", "full is too large"),
            ("10:99999999999:100", "rate must be from 1 to 100"),
        ] {
            let err = s.parse::<MaxStartups>().unwrap_err();
            assert!(err.contains(why), "{s:?}: {err}");
            assert!(err.contains("start:rate:full"), "{s:?}: {err}");
        }
    }

    #[test]
    fn below_start_nothing_is_dropped_and_from_full_everything() {
        let m = ms(10, 30, 100);
        for n in 0..10 {
            assert!(!m.should_drop(n, 0), "{n}");
        }
        for n in [100, 101, 10_000] {
            assert!(m.should_drop(n, 99), "{n}");
        }
        // A single number, or a rate of 100: everything from start on.
        assert!(!ms(5, 100, 5).should_drop(4, 0));
        assert!(ms(5, 100, 5).should_drop(5, 99));
        assert!(ms(5, 100, 50).should_drop(5, 99));
    }

    #[test]
    fn the_drop_probability_grows_linearly_from_rate_to_100_percent() {
        let m = ms(10, 30, 100);
        // The probability in percent at each count is how many of the 100 rolls drop.
        let p = |n| (0..100).filter(|&r| m.should_drop(n, r)).count();
        assert_eq!(p(10), 30);
        // sshd: 30 + 70 * 45 / 90 = 65.
        assert_eq!(p(55), 65);
        // 30 + 70 * 89 / 90 = 99 (integer division, as sshd).
        assert_eq!(p(99), 99);
        assert_eq!(p(100), 100);
        // The lowest rolls are the ones that drop.
        assert!(m.should_drop(10, 29));
        assert!(!m.should_drop(10, 30));
        let mut last = 0;
        for n in 10..=100 {
            assert!(p(n) >= last, "not monotonic at {n}");
            last = p(n);
        }
    }

    #[test]
    fn limits_default_to_gateway_sized_values() {
        let l = toml::from_str::<GateConfig>("").unwrap().limits().unwrap();
        assert_eq!(
            l,
            Limits {
                max_connections: 4096,
                login_grace_time: Duration::from_secs(30),
                max_startups: ms(256, 30, 1024),
                per_source_max_startups: 128,
                max_connections_per_user: 256,
                max_inner_connections_per_user: 256,
                max_channels_per_user: 1024,
            }
        );
        // One source alone stays below the point where others' connections are dropped.
        assert!(l.per_source_max_startups < l.max_startups.start);
    }

    #[test]
    fn limits_are_read_from_the_table() {
        let l = toml::from_str::<GateConfig>(
            "max_connections = 100\n[limits]\nlogin_grace_time = \"1m30s\"\nmax_startups = \"10:50:60\"\nper_source_max_startups = 3\nmax_inner_connections_per_user = 4\nmax_channels_per_user = 5\n",
        )
        .unwrap()
        .limits()
        .unwrap();
        assert_eq!(l.max_connections, 100);
        assert_eq!(l.login_grace_time, Duration::from_secs(90));
        assert_eq!(l.max_startups, ms(10, 50, 60));
        assert_eq!(l.per_source_max_startups, 3);
        assert_eq!(l.max_inner_connections_per_user, 4);
        assert_eq!(l.max_channels_per_user, 5);
    }

    #[test]
    fn the_default_max_startups_fits_a_small_max_connections() {
        let l = |mc: &str| {
            toml::from_str::<GateConfig>(&format!("max_connections = {mc}\n"))
                .unwrap()
                .limits()
                .unwrap()
                .max_startups
        };
        assert_eq!(l("1000"), ms(256, 30, 500));
        assert_eq!(l("100"), ms(50, 30, 50));
        assert_eq!(l("1"), ms(1, 30, 1));
        assert_eq!(l("100000"), ms(256, 30, 1024));
    }

    #[test]
    fn bad_limits_are_errors_with_line_and_column() {
        for (text, why) in [
            (
                "[limits]\nmax_startups = \"10:0:100\"\n",
                "rate must be from 1 to 100",
            ),
            (
                "[limits]\nlogin_grace_time = \"30\"\n",
                "a number needs a unit",
            ),
            ("[limits]\nlogin_grace_time = \"0s\"\n", "must be positive"),
            ("[limits]\nlogin_grace_time = 30\n", "expected a string"),
            ("[limits]\nper_source_max_startups = 0\n", "nonzero"),
            ("[limits]\nmax_channels_per_user = -1\n", "invalid value"),
            ("[limits]\nmax_inner_connections_per_user = 0\n", "nonzero"),
            ("max_connections = 0\n", "nonzero"),
            ("[limits]\nmax_sessions = 3\n", "unknown field"),
        ] {
            let err = toml::from_str::<GateConfig>(text)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(why), "{text:?}: {err}");
            let line = if text.starts_with('[') { 2 } else { 1 };
            assert!(err.contains(&format!("line {line}")), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_max_startups_that_can_fill_every_slot_is_refused() {
        let err = toml::from_str::<GateConfig>(
            "max_connections = 100\n[limits]\nmax_startups = \"10:30:100\"\n",
        )
        .unwrap()
        .limits()
        .unwrap_err();
        assert!(err.contains("must be below max_connections (100)"), "{err}");
        assert!(toml::from_str::<GateConfig>(
            "max_connections = 101\n[limits]\nmax_startups = \"10:30:100\"\n"
        )
        .unwrap()
        .limits()
        .is_ok());
    }

    #[test]
    fn the_audit_spool_has_a_default_maximum_and_refuses_zero() {
        let max = |text: &str| {
            toml::from_str::<GateConfig>(text)
                .unwrap()
                .audit
                .spool_max_bytes()
        };
        assert_eq!(max("").unwrap(), DEFAULT_SPOOL_MAX_BYTES);
        assert_eq!(max("[audit]\nspool_max_bytes = 4096\n").unwrap(), 4096);
        let e = max("[audit]\nspool_max_bytes = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spool_max_bytes = 0 would refuse every audit event"),
            "{e}"
        );
        assert!(toml::from_str::<GateConfig>("[audit]\nspool_max = 1\n").is_err());
        assert!(toml::from_str::<GateConfig>("[audit]\nspool_max_bytes = -1\n").is_err());
    }
}
