//! Reading the policy file: TOML with unknown keys refused, every error at its file:line:column,
//! and the validated [`Policy`] it yields (the only way to build one).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use toml::Spanned;

use super::model::{Defaults, LoginTemplate, NodeSelector, Permit, Policy, RecordingMode, Role};
use crate::names::{Login, Username};
use crate::ttl::Ttl;

/// A policy error with its position in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct PolicyError {
    /// The file's name as given by the caller.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Converts a byte offset into a 1-based (line, column) pair.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before, |i| &before[i + 1..])
        .chars()
        .count()
        + 1;
    (line, col)
}

/// A label selector value: `"*"`, one value, or a list of values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum RawSelector {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    defaults: Option<Spanned<RawDefaults>>,
    #[serde(default)]
    roles: BTreeMap<Spanned<String>, Spanned<RawRole>>,
    #[serde(default)]
    users: BTreeMap<Spanned<String>, Spanned<RawUser>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    user_cert_ttl: Option<Spanned<String>>,
    max_user_cert_ttl: Option<Spanned<String>>,
    renew_until: Option<Spanned<String>>,
    host_cert_ttl: Option<Spanned<String>>,
    max_bundle_age: Option<Spanned<String>>,
    recording: Option<Spanned<String>>,
    record_input: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    logins: Vec<Spanned<String>>,
    #[serde(default)]
    nodes: BTreeMap<String, Spanned<RawSelector>>,
    #[serde(default)]
    permit: Vec<Spanned<String>>,
    max_ttl: Option<Spanned<String>>,
    #[serde(default)]
    view_recordings: BTreeMap<String, Spanned<RawSelector>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    #[serde(default)]
    roles: Vec<Spanned<String>>,
}

/// The sample written by `posternd init`; it must parse.
pub const SAMPLE_POLICY: &str = r#"# Postern policy. See postern-policy.toml(5).
# Unknown keys are errors; a bad edit never replaces the last good policy.

[defaults]
user_cert_ttl = "12h"        # TTL when the client asks for none
max_user_cert_ttl = "24h"    # no user certificate lives longer
renew_until = "7d"           # `postern renew` works this long after a password login
host_cert_ttl = "30d"
max_bundle_age = "24h"       # servers deny logins when their bundle is older
recording = "strict"         # or "best-effort"

# [roles.dev]
# logins = ["{user}", "deploy"]    # {user} = the Postern user name
# nodes = { env = ["dev", "staging"] }
# permit = ["pty", "port-forwarding"]
# max_ttl = "12h"
#
# [roles.ops]
# logins = ["root", "{user}"]
# nodes = { "*" = "*" }
# permit = ["pty", "port-forwarding", "agent-forwarding"]
# view_recordings = { "*" = "*" }  # may also list and play others' sessions on these servers
#
# [users.alice]
# roles = ["dev"]
"#;

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> PolicyError {
        let (line, column) = line_col(self.text, span.start);
        PolicyError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }

    /// A label selector (`nodes`, `view_recordings`): label key → `"*"`, a value or a list of
    /// values; the `"*"` key (any server) takes only `"*"`.
    fn selector(
        &self,
        raw: &BTreeMap<String, Spanned<RawSelector>>,
    ) -> Result<NodeSelector, PolicyError> {
        let mut rules = BTreeMap::new();
        for (key, sel) in raw {
            let values = match sel.get_ref() {
                RawSelector::One(v) if v == "*" => None,
                RawSelector::One(v) => Some(BTreeSet::from([v.clone()])),
                RawSelector::Many(vs) if vs.iter().any(|v| v == "*") => None,
                RawSelector::Many(vs) => Some(vs.iter().cloned().collect()),
            };
            if key == "*" && values.is_some() {
                return Err(self.err(sel.span(), "the \"*\" label key only takes \"*\""));
            }
            rules.insert(key.clone(), values);
        }
        Ok(NodeSelector { rules })
    }

    fn ttl(&self, s: &Spanned<String>) -> Result<Ttl, PolicyError> {
        s.get_ref()
            .parse()
            .map_err(|e: crate::ttl::TtlError| self.err(s.span(), e.to_string()))
    }
}

impl Policy {
    /// Parses and validates policy text. `file` is used in error messages only.
    pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
        let cx = Ctx { file, text };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            cx.err(span, e.message().to_owned())
        })?;

        let mut defaults = Defaults::default();
        if let Some(d) = &raw.defaults {
            let d = d.get_ref();
            if let Some(v) = &d.user_cert_ttl {
                defaults.user_cert_ttl = cx.ttl(v)?;
            }
            if let Some(v) = &d.max_user_cert_ttl {
                defaults.max_user_cert_ttl = cx.ttl(v)?;
            }
            if let Some(v) = &d.renew_until {
                defaults.renew_until = cx.ttl(v)?;
            }
            if let Some(v) = &d.host_cert_ttl {
                defaults.host_cert_ttl = cx.ttl(v)?;
            }
            if let Some(v) = &d.max_bundle_age {
                defaults.max_bundle_age = cx.ttl(v)?;
            }
            if let Some(v) = &d.recording {
                defaults.recording = match v.get_ref().as_str() {
                    "strict" => RecordingMode::Strict,
                    "best-effort" => RecordingMode::BestEffort,
                    other => {
                        return Err(cx.err(
                            v.span(),
                            format!("unknown recording mode {other:?}, expected \"strict\" or \"best-effort\""),
                        ))
                    }
                };
            }
            defaults.record_input = d.record_input.unwrap_or(false);
            if defaults.user_cert_ttl > defaults.max_user_cert_ttl {
                let span = d.user_cert_ttl.as_ref().map_or(0..0, |s| s.span());
                return Err(cx.err(span, "user_cert_ttl is longer than max_user_cert_ttl"));
            }
        }

        let mut roles = BTreeMap::new();
        for (name, role) in &raw.roles {
            if !valid_role_name(name.get_ref()) {
                return Err(cx.err(
                    name.span(),
                    format!("invalid role name {:?}", name.get_ref()),
                ));
            }
            let r = role.get_ref();
            let mut logins = Vec::new();
            for l in &r.logins {
                let t = l.get_ref();
                // A template must be a valid login once `{user}` is replaced by a valid name,
                // and may contain no other brace.
                let probe = t.replace("{user}", "u");
                if probe.contains(['{', '}']) || probe.parse::<Login>().is_err() {
                    return Err(cx.err(
                        l.span(),
                        format!("invalid login {t:?}: expected a login name or a template with {{user}}"),
                    ));
                }
                logins.push(LoginTemplate(t.clone()));
            }
            let nodes = cx.selector(&r.nodes)?;
            let view_recordings = cx.selector(&r.view_recordings)?;
            let mut permit = BTreeSet::new();
            for p in &r.permit {
                let v = Permit::ALL
                    .into_iter()
                    .find(|x| x.as_str() == p.get_ref())
                    .ok_or_else(|| {
                        cx.err(
                            p.span(),
                            format!(
                                "unknown permit {:?}, expected one of: pty, port-forwarding, agent-forwarding, x11-forwarding, user-rc",
                                p.get_ref()
                            ),
                        )
                    })?;
                permit.insert(v);
            }
            let max_ttl = r.max_ttl.as_ref().map(|t| cx.ttl(t)).transpose()?;
            roles.insert(
                name.get_ref().clone(),
                Role {
                    logins,
                    nodes,
                    permit,
                    max_ttl,
                    view_recordings,
                },
            );
        }

        let mut users = BTreeMap::new();
        for (name, user) in &raw.users {
            let u: Username = name
                .get_ref()
                .parse()
                .map_err(|e: crate::names::NameError| cx.err(name.span(), e.to_string()))?;
            let mut list = Vec::new();
            for r in &user.get_ref().roles {
                if !roles.contains_key(r.get_ref()) {
                    return Err(cx.err(r.span(), format!("unknown role {:?}", r.get_ref())));
                }
                list.push(r.get_ref().clone());
            }
            users.insert(u, list);
        }

        Ok(Policy {
            defaults,
            roles,
            users,
        })
    }
}

fn valid_role_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
