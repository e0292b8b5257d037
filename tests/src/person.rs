//! A person on a laptop: their own `$HOME`, enrolling, `postern login` with TOTP codes, and
//! stock ssh through the gateway with the ssh_config `postern login` wrote.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

use crate::ca::Ca;
use crate::util::{bin, now, run, run_with_input, text};

/// A person with their own `$HOME`, using the `postern` CLI.
pub struct Person {
    /// Their home directory.
    pub home: TempDir,
    /// Their Postern user name.
    pub user: String,
    /// Their password.
    pub password: String,
    /// Their TOTP secret (raw bytes), after enrolment.
    pub totp_secret: Vec<u8>,
    last_step: u64,
}

impl Person {
    /// A new person.
    pub fn new(user: &str) -> Person {
        Person {
            home: tempfile::Builder::new()
                .prefix("postern-home")
                .tempdir()
                .unwrap(),
            user: user.to_owned(),
            password: format!("pw-{user}-correct horse"),
            totp_secret: Vec::new(),
            last_step: 0,
        }
    }

    /// A `postern` command with this person's `$HOME`.
    pub fn postern(&self) -> Command {
        let mut c = Command::new(bin("postern"));
        c.env("HOME", self.home.path())
            .env_remove("SSH_AUTH_SOCK")
            .env("NO_COLOR", "1");
        c
    }

    /// Enrols with an invite from the CA; remembers the TOTP secret.
    pub fn enroll(&mut self, ca: &Ca) {
        let invite = ca.invite(&self.user);
        let out = run_with_input(
            self.postern()
                .args([
                    "enroll", "--ca", &ca.url, "--ca-pin", &ca.pin, "--user", &self.user,
                ])
                .args(["--invite", &invite, "--password-stdin", "--json"]),
            &format!("{}\n", self.password),
        );
        assert!(out.status.success(), "enroll: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let uri = v["otpauth_uri"].as_str().unwrap();
        let secret = uri
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("secret="))
            .unwrap();
        self.totp_secret = base32_decode(secret);
    }

    /// The TOTP code for a time step.
    pub fn code_at_step(&self, step: u64) -> String {
        let t = totp_rs::TOTP::new_unchecked(
            totp_rs::Algorithm::SHA1,
            6,
            1,
            30,
            self.totp_secret.clone(),
            None,
            String::new(),
        );
        t.generate(step * 30)
    }

    /// A code not used before (the current step, or the next one when that was used).
    pub fn fresh_code(&mut self) -> String {
        let step = (now() / 30).max(self.last_step + 1);
        assert!(
            step <= now() / 30 + 1,
            "out of fresh TOTP steps; the test logs in too often"
        );
        self.last_step = step;
        self.code_at_step(step)
    }

    /// `postern login` with the password on stdin and extra arguments.
    pub fn login_with(&mut self, ca: &Ca, password: &str, otp: &str, extra: &[&str]) -> Output {
        let url = ca.url.clone();
        self.login_via(ca, &[&url], password, otp, extra)
    }

    /// [`Person::login_with`] with `--ca` once for each of `urls`, in order.
    pub fn login_via(
        &mut self,
        ca: &Ca,
        urls: &[&str],
        password: &str,
        otp: &str,
        extra: &[&str],
    ) -> Output {
        let mut cmd = self.postern();
        cmd.arg("login");
        for u in urls {
            cmd.args(["--ca", u]);
        }
        run_with_input(
            cmd.args(["--ca-pin", &ca.pin, "--user", &self.user])
                .args(["--password-stdin", "--otp", otp])
                .args(extra),
            &format!("{password}\n"),
        )
    }

    /// A successful login; panics otherwise.
    pub fn login(&mut self, ca: &Ca) -> Output {
        let code = self.fresh_code();
        let pw = self.password.clone();
        let out = self.login_with(ca, &pw, &code, &[]);
        assert!(out.status.success(), "login: {}", text(&out));
        out
    }

    /// The cluster folder under `~/.ssh/postern`.
    pub fn cluster_dir(&self, ca: &Ca) -> PathBuf {
        self.home.path().join(".ssh/postern").join(&ca.cluster)
    }

    /// Stock ssh to `NAME.<cluster>` with the ssh_config `postern login` wrote (ProxyJump).
    pub fn ssh_via_gate(&self, ca: &Ca, node: &str, login: &str, args: &[&str]) -> Output {
        run(Command::new("ssh")
            .env("HOME", self.home.path())
            .env_remove("SSH_AUTH_SOCK")
            .arg("-F")
            .arg(self.home.path().join(".ssh/config"))
            .args(["-o", "BatchMode=yes", "-l", login])
            .arg(format!("{node}.{}", ca.cluster))
            .args(args))
    }
}

/// RFC 4648 base32 as in otpauth URIs (no padding, though padding and lowercase are
/// accepted), decoded by the `base32` crate that totp-rs encodes the secret with.
pub fn base32_decode(s: &str) -> Vec<u8> {
    let upper = s.trim_end_matches('=').to_ascii_uppercase();
    base32::decode(base32::Alphabet::Rfc4648 { padding: false }, &upper)
        .unwrap_or_else(|| panic!("not base32: {s}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::base32_decode;

    #[test]
    fn base32_decodes_the_rfc_4648_vectors_in_either_case_with_or_without_padding() {
        assert_eq!(base32_decode("MZXW6YTBOI"), b"foobar");
        assert_eq!(base32_decode("MZXW6YTBOI======"), b"foobar");
        assert_eq!(base32_decode("mzxw6ytboi"), b"foobar");
        assert_eq!(base32_decode("MZXW6"), b"foo");
        assert_eq!(base32_decode(""), b"");
    }
}
