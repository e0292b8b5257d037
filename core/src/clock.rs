//! The one clock source: Unix time in whole seconds, as certificates, locks, audit events,
//! recordings and bundles count it. The rules of this crate take time as an argument; the
//! binaries read it here, so that every part reads the clock the same way.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch now. A clock before 1970 is broken; it reads as the epoch
/// (0), which makes every certificate look expired rather than valid for longer.
pub fn now() -> u64 {
    unix(SystemTime::now()).unwrap_or(0)
}

/// `t` (a file's modification time, say) in seconds since the Unix epoch; `None` before it.
pub fn unix(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_clock_reads_unix_seconds_and_refuses_times_before_the_epoch() {
        assert!(now() > 1_700_000_000);
        assert_eq!(unix(UNIX_EPOCH + Duration::from_millis(2_500)), Some(2));
        assert_eq!(unix(UNIX_EPOCH - Duration::from_secs(1)), None);
    }
}
