//! `postern enroll`: redeems an invite, sets the password and shows the TOTP secret.

use std::io::IsTerminal as _;

use anyhow::{bail, Context as _};
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;
use serde::Serialize;

use postern_core::api::{EnrollRequest, ExposeSecret as _, Secret};
use postern_core::Username;
use subtle::ConstantTimeEq as _;

use crate::profile::{self, Current, Layout};
use crate::prompt;
use postern_api_client::{Api, CaPin, CaUrls};

use super::api_failure;

/// Flags of `postern enroll`.
#[derive(Debug)]
pub struct Args {
    /// `--ca`, once or more.
    pub ca: CaUrls,
    /// `--ca-pin`.
    pub ca_pin: CaPin,
    /// `--user`.
    pub user: Username,
    /// `--invite` or `--invite-stdin`.
    pub invite: Invite,
    /// `--password-stdin`.
    pub password_stdin: bool,
    /// `--json`.
    pub json: bool,
}

/// Where the invite comes from.
#[derive(Debug)]
pub enum Invite {
    /// `--invite TOKEN` (visible in the process list while enroll runs).
    Given(Secret),
    /// `--invite-stdin`: asked on the terminal without echo, or the first line of standard
    /// input.
    Stdin,
}

/// The invite and, with `--password-stdin`, the password: what standard input carries.
fn secrets_from_stdin(args: &Args) -> anyhow::Result<(Secret, Option<Secret>)> {
    let invite = match &args.invite {
        Invite::Given(i) => i.clone(),
        Invite::Stdin if std::io::stdin().is_terminal() => trimmed(prompt::hidden("Invite: ")?),
        Invite::Stdin if args.password_stdin => {
            let [invite, password] = prompt::stdin_lines(["invite", "password"])?;
            return Ok((trimmed(invite), Some(password)));
        }
        Invite::Stdin => trimmed(prompt::stdin_secret("invite")?),
    };
    let password = if args.password_stdin {
        Some(prompt::stdin_secret("password")?)
    } else {
        None
    };
    Ok((invite, password))
}

/// An invite without the blanks a paste may bring.
fn trimmed(s: Secret) -> Secret {
    let t = s.expose_secret().trim();
    if t.len() == s.expose_secret().len() {
        s
    } else {
        Secret::new(t.to_owned())
    }
}

#[derive(Serialize)]
struct Output<'a> {
    otpauth_uri: &'a str,
}

fn new_password(args: &Args, from_stdin: Option<Secret>) -> anyhow::Result<Secret> {
    if let Some(pw) = from_stdin {
        return Ok(pw);
    }
    let first = prompt::hidden(&format!("New password for {}: ", args.user))?;
    if first.expose_secret().is_empty() {
        bail!("the password must not be empty");
    }
    let second = prompt::hidden("Repeat the password: ")?;
    // Secrets have no `==`: they are compared in constant time.
    if !bool::from(first.ct_eq(&second)) {
        bail!("the two passwords do not match");
    }
    Ok(first)
}

/// The QR code of `uri` in Unicode half blocks, light on dark as terminals usually are.
fn qr(uri: &str) -> anyhow::Result<String> {
    let code = QrCode::new(uri.as_bytes()).context("encoding the QR code")?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .build())
}

/// Runs `postern enroll`.
pub fn run(layout: &Layout, args: Args) -> anyhow::Result<()> {
    // Reach the server (and check the pin) before asking for the new password.
    let api = Api::new(&args.ca, args.ca_pin, None)?;
    api.ping().context("cannot reach the CA")?;
    let (invite, password) = secrets_from_stdin(&args)?;
    if invite.expose_secret().is_empty() {
        bail!("the invite is empty");
    }
    let password = new_password(&args, password)?;
    let resp = api
        .enroll(&EnrollRequest {
            user: args.user.clone(),
            invite,
            password,
        })
        .map_err(|e| api_failure("enrolment", e))?;
    let uri = resp.otpauth_uri.expose_secret();
    // The URI goes to a terminal and into an authenticator: it must be what it claims.
    if !uri.starts_with("otpauth://") || uri.chars().any(|c| c.is_control() || c == ' ') {
        bail!("the server sent an invalid TOTP URI");
    }

    // Remembered so that the next `postern login` needs no flags. The enrolment itself has
    // succeeded by now, so failing to remember is only a warning.
    let cluster = profile::load_current(layout)
        .ok()
        .flatten()
        .filter(|c| c.ca == args.ca)
        .and_then(|c| c.cluster);
    if let Err(e) = profile::save_current(
        layout,
        &Current {
            ca: args.ca.clone(),
            ca_pin: args.ca_pin.to_string(),
            user: args.user.clone(),
            cluster,
        },
    ) {
        eprintln!("postern: warning: could not remember the CA for `postern login`: {e:#}");
    }

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Output { otpauth_uri: uri })?
        );
        return Ok(());
    }
    println!(
        "Enrolled {}. Add this TOTP secret to your authenticator app:\n\n{uri}\n",
        args.user
    );
    // A QR code is only useful to a camera pointed at a screen, and is noise in a pipe.
    if std::io::stdout().is_terminal() {
        println!("{}", qr(uri)?);
    }
    println!("Then sign in with: postern login");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_renders_with_half_blocks() {
        let s = qr("otpauth://totp/Postern:alice?secret=JBSWY3DPEHPK3PXP&issuer=Postern").unwrap();
        assert!(s.lines().count() > 10);
        assert!(s.chars().any(|c| c == '▀' || c == '▄' || c == '█'));
    }
}
