//! The few system calls the CLI needs: the passwd home directory, the effective uid (both
//! through `nix`'s safe wrappers) and the local UTC offset. The crate's only `unsafe` code
//! lives here.

// The workspace denies unsafe code. `localtime_r` has no safe wrapper in std or nix, and the
// crates that offer one either call it themselves only in a single-threaded process (`time`'s
// `local-offset`, which would show UTC once the HTTPS client has started its thread) or read
// the zone database with their own parser; the blocks below are a plain FFI call on two locals.
#![allow(unsafe_code)]

use std::path::PathBuf;

use nix::unistd::{geteuid, getuid, User};

/// The effective user id, the owner that files under `~/.ssh/postern` must have.
pub fn euid() -> u32 {
    geteuid().as_raw()
}

/// The home directory of the real user from the passwd database (`getpwuid_r`, which nix
/// retries with a larger buffer while the entry does not fit).
pub fn passwd_home() -> Option<PathBuf> {
    let user = User::from_uid(getuid()).ok()??;
    if user.dir.as_os_str().is_empty() {
        return None;
    }
    Some(user.dir)
}

/// The local time zone's offset from UTC at Unix time `t`, in seconds east of UTC.
///
/// Asked per instant rather than once, so that an expiry on the far side of a daylight-saving
/// change is shown in the offset that will then be in force.
pub fn local_offset_secs(t: i64) -> Option<i32> {
    // time_t is 32 bits on some targets, so the conversion is not useless everywhere.
    #[allow(clippy::useless_conversion)]
    let tt: libc::time_t = t.try_into().ok()?;
    // SAFETY: an all-zero `tm` is a valid value of a plain C struct; localtime_r overwrites it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers refer to live, properly aligned locals.
    let r = unsafe { libc::localtime_r(&tt, &mut tm) };
    if r.is_null() {
        return None;
    }
    i32::try_from(tm.tm_gmtoff).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_home_is_absolute() {
        if let Some(h) = passwd_home() {
            assert!(h.is_absolute(), "{h:?}");
        }
    }

    #[test]
    fn local_offset_is_within_a_day() {
        let off = local_offset_secs(1_700_000_000).unwrap();
        assert!(off.abs() < 86_400);
    }
}
