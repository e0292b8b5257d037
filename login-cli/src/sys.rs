//! The few libc calls the CLI needs: the passwd home directory, the effective uid and the
//! local UTC offset. Every `unsafe` block of the crate lives here.

// The workspace denies unsafe code; these three calls have no safe std equivalent, and each
// block below is a plain FFI call on memory this module owns.
#![allow(unsafe_code)]

use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The effective user id, the owner that files under `~/.ssh/postern` must have.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail (POSIX).
    unsafe { libc::geteuid() }
}

/// The home directory of the real user from the passwd database (`getpwuid_r`).
pub fn passwd_home() -> Option<PathBuf> {
    // SAFETY: getuid has no preconditions and cannot fail (POSIX).
    let uid = unsafe { libc::getuid() };
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: an all-zero `passwd` is a valid value of a plain C struct of pointers and
        // integers; getpwuid_r overwrites it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to live memory of the stated size owned by this frame;
        // on success `pwd`'s strings point into `buf`, which outlives their use below.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            // The entry did not fit: POSIX says to retry with a larger buffer.
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
            return None;
        }
        // SAFETY: getpwuid_r succeeded, so pw_dir is a NUL-terminated string inside `buf`.
        let dir = unsafe { CStr::from_ptr(pwd.pw_dir) };
        let bytes = dir.to_bytes();
        if bytes.is_empty() {
            return None;
        }
        return Some(PathBuf::from(OsStr::from_bytes(bytes)));
    }
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
