//! Human durations (`"90s"`, `"15m"`, `"12h"`, `"7d"`, `"1h30m"`) used for every TTL.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A strictly positive duration of at most ten years, with second resolution.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(u64);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {value:?}: {reason} (examples: \"90s\", \"15m\", \"12h\", \"7d\", \"1h30m\")"
)]
pub struct TtlError {
    /// The refused input (truncated).
    pub value: String,
    /// Why it was refused.
    pub reason: &'static str,
}

impl Ttl {
    /// Ten years, the longest TTL accepted anywhere.
    pub const MAX_SECS: u64 = 10 * 366 * 86_400;

    /// A TTL of `secs` seconds; `None` when zero or above the maximum.
    pub fn from_secs(secs: u64) -> Option<Ttl> {
        (secs > 0 && secs <= Self::MAX_SECS).then_some(Ttl(secs))
    }

    /// A TTL from a constant known to be in range (for built-in defaults).
    pub(crate) const fn new_const(secs: u64) -> Ttl {
        Ttl(secs)
    }

    /// Seconds.
    pub fn as_secs(self) -> u64 {
        self.0
    }

    /// As a standard duration.
    pub fn as_duration(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

impl FromStr for Ttl {
    type Err = TtlError;
    fn from_str(s: &str) -> Result<Ttl, TtlError> {
        let err = |reason| TtlError {
            value: s.chars().take(40).collect(),
            reason,
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.len() > 32 {
            return Err(err("too long"));
        }
        let mut total: u64 = 0;
        let mut num: Option<u64> = None;
        for c in s.chars() {
            if let Some(d) = c.to_digit(10) {
                let n = num.unwrap_or(0);
                num = Some(
                    n.checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(d)))
                        .ok_or_else(|| err("too large"))?,
                );
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3_600,
                'd' => 86_400,
                'w' => 7 * 86_400,
                _ => return Err(err("unknown unit (use s, m, h, d or w)")),
            };
            let n = num
                .take()
                .ok_or_else(|| err("a unit must follow a number"))?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| err("too large"))?;
        }
        if num.is_some() {
            return Err(err("a number needs a unit"));
        }
        if total == 0 {
            return Err(err("must be positive"));
        }
        if total > Self::MAX_SECS {
            return Err(err("longer than ten years"));
        }
        Ok(Ttl(total))
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
            if rest >= secs {
                write!(f, "{}{unit}", rest / secs)?;
                rest %= secs;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ttl({self})")
    }
}

impl Serialize for Ttl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_units_and_combinations() {
        assert_eq!("90s".parse::<Ttl>().unwrap().as_secs(), 90);
        assert_eq!("15m".parse::<Ttl>().unwrap().as_secs(), 900);
        assert_eq!("12h".parse::<Ttl>().unwrap().as_secs(), 43_200);
        assert_eq!("7d".parse::<Ttl>().unwrap().as_secs(), 604_800);
        assert_eq!("1h30m".parse::<Ttl>().unwrap().as_secs(), 5_400);
        assert_eq!("2w".parse::<Ttl>().unwrap().as_secs(), 1_209_600);
    }

    #[test]
    fn rejects_malformed_durations() {
        for s in [
            "",
            "0s",
            "12",
            "h",
            "12x",
            "-1h",
            "1.5h",
            "12 h",
            "99999999999999999999s",
            "4000d",
            "1h1",
        ] {
            assert!(s.parse::<Ttl>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn displays_round_trip() {
        for s in ["90s", "1h30m", "7d", "1d2h3m4s"] {
            let t: Ttl = s.parse().unwrap();
            assert_eq!(t.to_string().parse::<Ttl>().unwrap(), t);
        }
        assert_eq!("90s".parse::<Ttl>().unwrap().to_string(), "1m30s");
    }
}
