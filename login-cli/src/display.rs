//! How times and server-supplied text are shown to the user.

use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// `2025-03-01 14:05 +01:00` in the local time zone (UTC when the zone is unknown).
pub fn local_time(unix: u64) -> String {
    let Ok(secs) = i64::try_from(unix) else {
        return format!("@{unix}");
    };
    let Ok(utc) = OffsetDateTime::from_unix_timestamp(secs) else {
        return format!("@{unix}");
    };
    let offset = crate::sys::local_offset_secs(secs)
        .and_then(|o| UtcOffset::from_whole_seconds(o).ok())
        .unwrap_or(UtcOffset::UTC);
    let fmt = format_description!(
        "[year]-[month]-[day] [hour]:[minute] [offset_hour sign:mandatory]:[offset_minute]"
    );
    utc.to_offset(offset)
        .format(&fmt)
        .unwrap_or_else(|_| format!("@{unix}"))
}

/// A duration in the two largest units, e.g. `6d23h`, `12h`, `45m`, `30s`.
pub fn short_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3_600,
        secs % 3_600 / 60,
        secs % 60,
    );
    let parts = [(d, "d"), (h, "h"), (m, "m"), (s, "s")];
    let Some(first) = parts.iter().position(|(n, _)| *n > 0) else {
        return "0s".to_owned();
    };
    let mut out = String::new();
    for (n, unit) in parts.iter().skip(first).take(2) {
        if *n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// A TTL as people say it: whole hours up to three days (`48h`, not `2d`), else the
/// compact form (`7d`, `1h30m`).
pub fn ttl(t: postern_core::Ttl) -> String {
    let secs = t.as_secs();
    if secs.is_multiple_of(3_600) && secs <= 72 * 3_600 {
        format!("{}h", secs / 3_600)
    } else {
        t.to_string()
    }
}

/// `in 12h` or `5m ago`, relative to `now`.
pub fn relative(now: u64, t: u64) -> String {
    if t >= now {
        format!("in {}", short_duration(t - now))
    } else {
        format!("{} ago", short_duration(now - t))
    }
}

/// `2025-03-01 14:05 +01:00 (in 12h)`.
pub fn when(now: u64, t: u64) -> String {
    format!("{} ({})", local_time(t), relative(now, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_duration_uses_two_largest_units() {
        assert_eq!(short_duration(0), "0s");
        assert_eq!(short_duration(45), "45s");
        assert_eq!(short_duration(43_200), "12h");
        assert_eq!(short_duration(43_199), "11h59m");
        assert_eq!(short_duration(7 * 86_400 - 1), "6d23h");
        assert_eq!(short_duration(86_400 + 30), "1d");
    }

    #[test]
    fn ttl_prefers_hours_up_to_three_days() {
        let t = |s: &str| ttl(s.parse().unwrap());
        assert_eq!(t("48h"), "48h");
        assert_eq!(t("1d"), "24h");
        assert_eq!(t("7d"), "7d");
        assert_eq!(t("90m"), "1h30m");
    }

    #[test]
    fn relative_says_in_or_ago() {
        assert_eq!(relative(100, 100 + 3_600), "in 1h");
        assert_eq!(relative(100 + 600, 100), "10m ago");
    }

    #[test]
    fn local_time_has_date_time_and_offset() {
        let s = local_time(1_700_000_000);
        assert_eq!(s.len(), "2023-11-14 22:13 +00:00".len(), "{s}");
    }
}
