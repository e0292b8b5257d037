//! The policy file (`policy.toml`) and the decision it makes for a login.
//!
//! Format: `[defaults]`, `[roles.NAME]`, `[users.NAME]` as in DESIGN.md. A role has `logins`,
//! `nodes` (a label selector), `permit`, `max_ttl`, and `view_recordings`: a label selector
//! in the syntax of `nodes` naming the servers whose recorded sessions of *other* users the
//! role's members may list and play (everyone always sees their own). Unknown keys are
//! errors, and every error names the file, line and column. The only way to obtain an
//! [`IssueApproval`], which certificate signing requires, is a successful decision:
//! [`Policy::decide_login`], [`Policy::decide_node_access`] or [`Policy::decide_admin_signing`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::names::{Labels, Login, Username};
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

/// Session recording mode of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RecordingMode {
    /// A byte reaches the user only after it was written to the recording.
    #[default]
    Strict,
    /// The session goes on when recording fails; the failure is audited.
    BestEffort,
}

/// What a certificate permits, mapped onto OpenSSH certificate extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permit {
    /// `permit-pty`
    Pty,
    /// `permit-port-forwarding`
    PortForwarding,
    /// `permit-agent-forwarding`
    AgentForwarding,
    /// `permit-X11-forwarding`
    X11Forwarding,
    /// `permit-user-rc`
    UserRc,
}

impl Permit {
    /// Every permit, in a stable order.
    pub const ALL: [Permit; 5] = [
        Permit::Pty,
        Permit::PortForwarding,
        Permit::AgentForwarding,
        Permit::X11Forwarding,
        Permit::UserRc,
    ];

    /// The policy spelling (`port-forwarding`).
    pub fn as_str(self) -> &'static str {
        match self {
            Permit::Pty => "pty",
            Permit::PortForwarding => "port-forwarding",
            Permit::AgentForwarding => "agent-forwarding",
            Permit::X11Forwarding => "x11-forwarding",
            Permit::UserRc => "user-rc",
        }
    }

    /// The certificate extension name (PROTOCOL.certkeys).
    pub fn extension(self) -> &'static str {
        match self {
            Permit::Pty => "permit-pty",
            Permit::PortForwarding => "permit-port-forwarding",
            Permit::AgentForwarding => "permit-agent-forwarding",
            Permit::X11Forwarding => "permit-X11-forwarding",
            Permit::UserRc => "permit-user-rc",
        }
    }

    /// The permit for a certificate extension name.
    pub fn from_extension(ext: &str) -> Option<Permit> {
        Self::ALL.into_iter().find(|p| p.extension() == ext)
    }
}

impl fmt::Display for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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

/// Cluster-wide defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Defaults {
    /// TTL of a user certificate when the client asks for none.
    pub user_cert_ttl: Ttl,
    /// No user certificate lives longer than this.
    pub max_user_cert_ttl: Ttl,
    /// How long after the last password login `postern renew` keeps working.
    pub renew_until: Ttl,
    /// TTL of host certificates.
    pub host_cert_ttl: Ttl,
    /// A server's policy bundle older than this denies every login.
    pub max_bundle_age: Ttl,
    /// Session recording mode.
    pub recording: RecordingMode,
    /// Whether the gateway also records what the user types.
    pub record_input: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        let ttl = Ttl::new_const;
        Defaults {
            user_cert_ttl: ttl(12 * 3600),
            max_user_cert_ttl: ttl(24 * 3600),
            renew_until: ttl(7 * 86_400),
            host_cert_ttl: ttl(30 * 86_400),
            max_bundle_age: ttl(24 * 3600),
            recording: RecordingMode::Strict,
            record_input: false,
        }
    }
}

/// One entry of a role's `logins`: a literal login or a template with `{user}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoginTemplate(String);

impl LoginTemplate {
    /// Expands `{user}`; the result must be a valid [`Login`].
    pub fn expand(&self, user: &Username) -> Result<Login, crate::names::NameError> {
        self.0.replace("{user}", user.as_str()).parse()
    }
}

/// Which nodes a role reaches: every label must match one of the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeSelector {
    /// label key (or `*`) → allowed values (`None` = any value).
    pub rules: BTreeMap<String, Option<BTreeSet<String>>>,
}

impl NodeSelector {
    /// Whether a node with these labels is selected. An empty selector selects nothing.
    pub fn matches(&self, labels: &Labels) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        self.rules.iter().all(|(key, allowed)| {
            if key == "*" {
                return true;
            }
            match (labels.get(key), allowed) {
                (Some(_), None) => true,
                (Some(v), Some(set)) => set.contains(v),
                (None, _) => false,
            }
        })
    }
}

/// A validated role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Role {
    /// Logins the role grants.
    pub logins: Vec<LoginTemplate>,
    /// Which servers the role reaches.
    pub nodes: NodeSelector,
    /// What the role permits.
    pub permit: BTreeSet<Permit>,
    /// Cap on certificate TTL for holders of this role.
    pub max_ttl: Option<Ttl>,
    /// Whose recordings members may list and play: sessions on servers this selects (empty:
    /// none but their own).
    pub view_recordings: NodeSelector,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Cluster-wide defaults.
    pub defaults: Defaults,
    /// Roles by name.
    pub roles: BTreeMap<String, Role>,
    /// Users' role lists.
    pub users: BTreeMap<Username, Vec<String>>,
}

/// Why the policy refuses a login.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Deny {
    /// The user has no `[users.NAME]` entry or an empty role list.
    #[error("user {user} has no roles in the policy")]
    NoRoles {
        /// The user.
        user: Username,
    },
    /// `{user}` expands to something that is not a safe login.
    #[error("role {role:?} expands {{user}} for user {user} to {expanded:?}, which is not a safe login name")]
    UnsafePrincipal {
        /// The user.
        user: Username,
        /// The role whose template was expanded.
        role: String,
        /// The unsafe result (truncated).
        expanded: String,
    },
    /// The roles grant no login at all.
    #[error("the roles of user {user} grant no login")]
    NoLogins {
        /// The user.
        user: Username,
    },
    /// No role of the user both selects the node's labels and grants the login.
    #[error(
        "policy does not allow {user} to log in as {login} on a server with labels {labels:?}"
    )]
    LoginNotOnNode {
        /// The user.
        user: Username,
        /// The login asked for.
        login: Login,
        /// The node's labels (`k=v,...`).
        labels: String,
    },
}

/// Proof that the policy allowed issuing this user certificate. Only
/// [`Policy::decide_login`] builds one (its fields are private).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueApproval {
    user: Username,
    logins: Vec<Login>,
    permits: BTreeSet<Permit>,
    ttl: Ttl,
}

impl IssueApproval {
    /// The user the certificate is for.
    pub fn user(&self) -> &Username {
        &self.user
    }
    /// The principals (sorted, unique).
    pub fn logins(&self) -> &[Login] {
        &self.logins
    }
    /// The extensions.
    pub fn permits(&self) -> &BTreeSet<Permit> {
        &self.permits
    }
    /// The granted lifetime.
    pub fn ttl(&self) -> Ttl {
        self.ttl
    }

    /// The same approval without some logins (locks narrow an approval; nothing widens one).
    /// `None` when no login is left.
    pub fn without_logins(&self, removed: &[Login]) -> Option<IssueApproval> {
        let logins: Vec<Login> = self
            .logins
            .iter()
            .filter(|l| !removed.contains(l))
            .cloned()
            .collect();
        (!logins.is_empty()).then(|| IssueApproval {
            logins,
            ..self.clone()
        })
    }
}

/// The decision for a login: the approval plus whether the requested TTL was capped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginDecision {
    /// What may be signed.
    pub approval: IssueApproval,
    /// `Some(requested)` when the granted TTL is shorter than requested.
    pub capped_from: Option<Ttl>,
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

    /// The roles of a user (empty when the user is not in the policy).
    pub fn roles_of(&self, user: &Username) -> impl Iterator<Item = (&str, &Role)> {
        self.users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|r| self.roles.get(r).map(|role| (r.as_str(), role)))
    }

    /// The logins `user` may use on a node with these labels: the expanded logins of every
    /// role of the user whose node selector matches. Unsafe expansions are left out.
    pub fn logins_on_node(&self, user: &Username, labels: &Labels) -> Vec<Login> {
        let mut out = BTreeSet::new();
        for (_, role) in self.roles_of(user) {
            if role.nodes.matches(labels) {
                out.extend(role.logins.iter().filter_map(|t| t.expand(user).ok()));
            }
        }
        out.into_iter().collect()
    }

    /// The first role of `viewer` (in the order of their `roles` list) whose `view_recordings`
    /// selects a server with these labels: that role lets `viewer` list and play other users'
    /// recordings of sessions on that server. A server no longer in the inventory is judged
    /// by empty labels, so only `"*" = "*"` selects it.
    pub fn recording_viewer_role(&self, viewer: &Username, labels: &Labels) -> Option<&str> {
        self.roles_of(viewer)
            .find(|(_, role)| role.view_recordings.matches(labels))
            .map(|(name, _)| name)
    }

    /// Whether any role of `viewer` has a `view_recordings` selector, i.e. whether `viewer`
    /// may see other users' recordings on at least some servers.
    pub fn views_others_recordings(&self, viewer: &Username) -> bool {
        self.roles_of(viewer)
            .any(|(_, role)| !role.view_recordings.rules.is_empty())
    }

    /// For every user in the policy, the logins allowed on a node with these labels (users
    /// with none are left out). This is the policy slice a server receives.
    pub fn slice_for_node(&self, labels: &Labels) -> BTreeMap<Username, Vec<Login>> {
        self.users
            .keys()
            .filter_map(|u| {
                let l = self.logins_on_node(u, labels);
                (!l.is_empty()).then(|| (u.clone(), l))
            })
            .collect()
    }

    /// The decision for a certificate an admin signs by hand (`posternd certs sign`, the
    /// break-glass path): the principals the admin names, OpenSSH's default extensions, and
    /// the TTL capped at `defaults.max_user_cert_ttl`.
    pub fn decide_admin_signing(
        &self,
        user: &Username,
        logins: Vec<Login>,
        requested: Option<Ttl>,
    ) -> Result<LoginDecision, Deny> {
        if logins.is_empty() {
            return Err(Deny::NoLogins { user: user.clone() });
        }
        let wanted = requested.unwrap_or(self.defaults.user_cert_ttl);
        let ttl = wanted.min(self.defaults.max_user_cert_ttl);
        Ok(LoginDecision {
            approval: IssueApproval {
                user: user.clone(),
                logins: logins
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                permits: Permit::ALL.into_iter().collect(),
                ttl,
            },
            capped_from: requested.filter(|r| *r > ttl),
        })
    }

    /// The decision for a node-access certificate, which the gateway uses to log in to one
    /// server on a user's behalf: exactly one login, the permits of the roles that both select
    /// the node's labels and grant that login (and nothing from the user's other roles), and
    /// the TTL capped by those roles' `max_ttl` and `defaults.max_user_cert_ttl`.
    pub fn decide_node_access(
        &self,
        user: &Username,
        login: &Login,
        labels: &Labels,
        requested: Ttl,
    ) -> Result<LoginDecision, Deny> {
        let mut permits = BTreeSet::new();
        let mut cap = self.defaults.max_user_cert_ttl;
        let mut granted = false;
        let mut any_role = false;
        for (_, role) in self.roles_of(user) {
            any_role = true;
            if !role.nodes.matches(labels) {
                continue;
            }
            // Unsafe expansions grant nothing, as in `logins_on_node`.
            if !role
                .logins
                .iter()
                .any(|t| t.expand(user).is_ok_and(|l| l == *login))
            {
                continue;
            }
            granted = true;
            permits.extend(role.permit.iter().copied());
            if let Some(m) = role.max_ttl {
                cap = cap.min(m);
            }
        }
        if !any_role {
            return Err(Deny::NoRoles { user: user.clone() });
        }
        if !granted {
            return Err(Deny::LoginNotOnNode {
                user: user.clone(),
                login: login.clone(),
                labels: labels.to_string(),
            });
        }
        let ttl = requested.min(cap);
        Ok(LoginDecision {
            approval: IssueApproval {
                user: user.clone(),
                logins: vec![login.clone()],
                permits,
                ttl,
            },
            capped_from: (ttl < requested).then_some(requested),
        })
    }

    /// The decision for a user certificate: logins = the expanded union of the roles' logins,
    /// permits = their union, TTL = min(requested or default, every role's `max_ttl`,
    /// `defaults.max_user_cert_ttl`).
    pub fn decide_login(
        &self,
        user: &Username,
        requested: Option<Ttl>,
    ) -> Result<LoginDecision, Deny> {
        let mut logins = BTreeSet::new();
        let mut permits = BTreeSet::new();
        let mut cap = self.defaults.max_user_cert_ttl;
        let mut any_role = false;
        for (name, role) in self.roles_of(user) {
            any_role = true;
            for t in &role.logins {
                let login = t.expand(user).map_err(|_| Deny::UnsafePrincipal {
                    user: user.clone(),
                    role: name.to_owned(),
                    expanded: t
                        .0
                        .replace("{user}", user.as_str())
                        .chars()
                        .take(64)
                        .collect(),
                })?;
                logins.insert(login);
            }
            permits.extend(role.permit.iter().copied());
            if let Some(m) = role.max_ttl {
                cap = cap.min(m);
            }
        }
        if !any_role {
            return Err(Deny::NoRoles { user: user.clone() });
        }
        if logins.is_empty() {
            return Err(Deny::NoLogins { user: user.clone() });
        }
        let wanted = requested.unwrap_or(self.defaults.user_cert_ttl);
        let ttl = wanted.min(cap);
        // Only report capping of what the client asked for explicitly.
        let capped_from = requested.filter(|r| *r > ttl);
        Ok(LoginDecision {
            approval: IssueApproval {
                user: user.clone(),
                logins: logins.into_iter().collect(),
                permits,
                ttl,
            },
            capped_from,
        })
    }
}

fn valid_role_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_SAMPLE: &str = r#"
[defaults]
user_cert_ttl = "12h"
max_user_cert_ttl = "24h"
renew_until = "7d"
host_cert_ttl = "30d"
recording = "strict"          # or "best-effort"

[roles.dev]
logins = ["{user}", "deploy"] # {user} = the Postern user name
nodes = { env = ["dev", "staging"] }
permit = ["pty", "port-forwarding"]
max_ttl = "12h"

[roles.ops]
logins = ["root", "{user}"]
nodes = { "*" = "*" }
permit = ["pty", "port-forwarding", "agent-forwarding"]

[users.alice]
roles = ["dev"]

[users.bob]
roles = ["dev", "ops"]

[users."carol.smith@corp"]
roles = ["dev"]

[users.nobody]
roles = []
"#;

    fn user(s: &str) -> Username {
        s.parse().unwrap()
    }

    fn policy() -> Policy {
        Policy::parse(DESIGN_SAMPLE, "policy.toml").unwrap()
    }

    #[test]
    fn accepts_the_design_sample_and_the_init_sample() {
        let p = policy();
        assert_eq!(p.defaults.renew_until.as_secs(), 7 * 86_400);
        assert_eq!(p.roles.len(), 2);
        Policy::parse(SAMPLE_POLICY, "sample").unwrap();
    }

    #[test]
    fn rejects_unknown_key_with_file_line_and_column() {
        let text =
            "[defaults]\nuser_cert_ttl = \"1h\"\n\n[roles.dev]\nlogins = [\"x\"]\nbogus = 1\n";
        let e = Policy::parse(text, "/etc/postern/policy.toml").unwrap_err();
        assert_eq!((e.line, e.column), (6, 1), "{e}");
        assert!(
            e.to_string().starts_with("/etc/postern/policy.toml:6:1: "),
            "{e}"
        );
        assert!(e.message.contains("bogus"), "{e}");
    }

    #[test]
    fn rejects_bad_values_at_their_position() {
        let e = Policy::parse("[defaults]\nuser_cert_ttl = \"12x\"\n", "p").unwrap_err();
        assert_eq!((e.line, e.column), (2, 17), "{e}");
        let e = Policy::parse("[roles.a]\nlogins = [\"ro ot\"]\n", "p").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = Policy::parse("[roles.a]\npermit = [\"fly\"]\n", "p").unwrap_err();
        assert!(e.message.contains("unknown permit"), "{e}");
        let e = Policy::parse("[users.a]\nroles = [\"missing\"]\n", "p").unwrap_err();
        assert!(e.message.contains("unknown role"), "{e}");
        let e = Policy::parse("[users.\"a b\"]\nroles = []\n", "p").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        let e = Policy::parse("[roles.a]\nlogins = [\"{usr}\"]\n", "p").unwrap_err();
        assert!(e.message.contains("template"), "{e}");
        let e = Policy::parse("[defaults]\nrecording = \"sometimes\"\n", "p").unwrap_err();
        assert!(e.message.contains("recording"), "{e}");
        let e = Policy::parse("[defaults]\nuser_cert_ttl = \"48h\"\n", "p").unwrap_err();
        assert!(e.message.contains("max_user_cert_ttl"), "{e}");
        assert!(Policy::parse("not toml at all [", "p").is_err());
    }

    #[test]
    fn accepts_login_for_user_with_roles() {
        let d = policy().decide_login(&user("alice"), None).unwrap();
        let logins: Vec<_> = d.approval.logins().iter().map(|l| l.as_str()).collect();
        assert_eq!(logins, ["alice", "deploy"]);
        assert_eq!(
            d.approval.permits().iter().copied().collect::<Vec<_>>(),
            [Permit::Pty, Permit::PortForwarding]
        );
        assert_eq!(d.approval.ttl().as_secs(), 12 * 3600);
        assert_eq!(d.capped_from, None);
    }

    #[test]
    fn unions_logins_and_permits_of_several_roles() {
        let d = policy().decide_login(&user("bob"), None).unwrap();
        let logins: Vec<_> = d.approval.logins().iter().map(|l| l.as_str()).collect();
        assert_eq!(logins, ["bob", "deploy", "root"]);
        assert!(d.approval.permits().contains(&Permit::AgentForwarding));
    }

    #[test]
    fn caps_ttl_at_the_smallest_limit_and_says_so() {
        let p = policy();
        let d = p
            .decide_login(&user("alice"), Some("48h".parse().unwrap()))
            .unwrap();
        assert_eq!(d.approval.ttl().as_secs(), 12 * 3600);
        assert_eq!(d.capped_from, Some("48h".parse().unwrap()));
        let d = p
            .decide_login(&user("alice"), Some("1h".parse().unwrap()))
            .unwrap();
        assert_eq!(d.approval.ttl().as_secs(), 3600);
        assert_eq!(d.capped_from, None);
    }

    #[test]
    fn rejects_user_without_roles() {
        let p = policy();
        assert!(matches!(
            p.decide_login(&user("nobody"), None),
            Err(Deny::NoRoles { .. })
        ));
        assert!(matches!(
            p.decide_login(&user("stranger"), None),
            Err(Deny::NoRoles { .. })
        ));
    }

    #[test]
    fn rejects_name_that_expands_to_unsafe_principal() {
        let e = policy()
            .decide_login(&user("carol.smith@corp"), None)
            .unwrap_err();
        assert!(matches!(e, Deny::UnsafePrincipal { .. }), "{e}");
        assert!(e.to_string().contains("not a safe login"), "{e}");
    }

    #[test]
    fn node_selector_matches_labels() {
        let p = policy();
        let dev = &p.roles["dev"].nodes;
        let ops = &p.roles["ops"].nodes;
        let l = |s: &str| s.parse::<Labels>().unwrap();
        assert!(dev.matches(&l("env=dev")));
        assert!(dev.matches(&l("env=staging,team=x")));
        assert!(!dev.matches(&l("env=prod")));
        assert!(!dev.matches(&l("team=x")));
        assert!(ops.matches(&l("")));
        assert!(ops.matches(&l("env=prod")));
        assert!(!NodeSelector {
            rules: BTreeMap::new()
        }
        .matches(&l("env=dev")));
    }

    #[test]
    fn slices_policy_by_node_labels() {
        let p = policy();
        let l = |s: &str| s.parse::<Labels>().unwrap();
        let dev = p.slice_for_node(&l("env=dev"));
        assert_eq!(
            dev[&user("alice")]
                .iter()
                .map(|x| x.as_str())
                .collect::<Vec<_>>(),
            ["alice", "deploy"]
        );
        let prod = p.slice_for_node(&l("env=prod"));
        assert!(!prod.contains_key(&user("alice")));
        assert_eq!(
            prod[&user("bob")]
                .iter()
                .map(|x| x.as_str())
                .collect::<Vec<_>>(),
            ["bob", "root"]
        );
        // The unsafe expansion for carol is left out, not passed on.
        assert!(
            !dev.contains_key(&user("carol.smith@corp"))
                || dev[&user("carol.smith@corp")]
                    .iter()
                    .all(|x| x.as_str() == "deploy")
        );
    }

    #[test]
    fn node_access_grants_one_login_with_the_permits_of_matching_roles_only() {
        let p = policy();
        let l = |s: &str| s.parse::<Labels>().unwrap();
        let login = |s: &str| s.parse::<Login>().unwrap();
        let ttl: Ttl = "5m".parse().unwrap();
        // bob is dev and ops; on env=dev as deploy only dev grants the login.
        let d = p
            .decide_node_access(&user("bob"), &login("deploy"), &l("env=dev"), ttl)
            .unwrap();
        assert_eq!(d.approval.logins(), [login("deploy")]);
        assert_eq!(
            d.approval.permits().iter().copied().collect::<Vec<_>>(),
            [Permit::Pty, Permit::PortForwarding]
        );
        assert_eq!(d.approval.ttl(), ttl);
        assert_eq!(d.capped_from, None);
        // As root anywhere, ops grants it, with agent forwarding.
        let d = p
            .decide_node_access(&user("bob"), &login("root"), &l("env=prod"), ttl)
            .unwrap();
        assert!(d.approval.permits().contains(&Permit::AgentForwarding));
        // {user} expands.
        let d = p
            .decide_node_access(&user("alice"), &login("alice"), &l("env=staging"), ttl)
            .unwrap();
        assert_eq!(d.approval.user().as_str(), "alice");
    }

    #[test]
    fn node_access_caps_ttl_at_the_matching_roles_limit() {
        let p = policy();
        let d = p
            .decide_node_access(
                &user("alice"),
                &"deploy".parse().unwrap(),
                &"env=dev".parse().unwrap(),
                "48h".parse().unwrap(),
            )
            .unwrap();
        assert_eq!(d.approval.ttl().as_secs(), 12 * 3600);
        assert_eq!(d.capped_from, Some("48h".parse().unwrap()));
    }

    #[test]
    fn rejects_node_access_outside_the_labels_or_logins_of_the_roles() {
        let p = policy();
        let l = |s: &str| s.parse::<Labels>().unwrap();
        let ttl: Ttl = "5m".parse().unwrap();
        let e = p
            .decide_node_access(
                &user("alice"),
                &"deploy".parse().unwrap(),
                &l("env=prod"),
                ttl,
            )
            .unwrap_err();
        assert!(matches!(e, Deny::LoginNotOnNode { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("policy does not allow alice to log in as deploy"),
            "{e}"
        );
        // root is an ops login; alice is not ops, even on a server ops would select.
        assert!(matches!(
            p.decide_node_access(&user("alice"), &"root".parse().unwrap(), &l("env=dev"), ttl),
            Err(Deny::LoginNotOnNode { .. })
        ));
        // A role that grants the login on other labels does not count (bob: deploy is dev-only).
        assert!(matches!(
            p.decide_node_access(
                &user("bob"),
                &"deploy".parse().unwrap(),
                &l("env=prod"),
                ttl
            ),
            Err(Deny::LoginNotOnNode { .. })
        ));
        assert!(matches!(
            p.decide_node_access(&user("stranger"), &"root".parse().unwrap(), &l(""), ttl),
            Err(Deny::NoRoles { .. })
        ));
        // carol's {user} expansion is unsafe: it grants nothing, deploy still works.
        let carol = user("carol.smith@corp");
        assert!(p
            .decide_node_access(&carol, &"deploy".parse().unwrap(), &l("env=dev"), ttl)
            .is_ok());
    }

    const VIEW_SAMPLE: &str = r#"
[roles.dev]
logins = ["{user}"]
nodes = { env = "dev" }

[roles.auditor]
logins = ["{user}"]
nodes = { env = "dev" }
view_recordings = { "*" = "*" }

[roles.prod-lead]
logins = ["{user}"]
nodes = { env = "dev" }
view_recordings = { env = ["prod", "staging"], team = "*" }

[users.alice]
roles = ["dev"]
[users.carol]
roles = ["dev", "auditor"]
[users.dave]
roles = ["prod-lead", "dev"]
"#;

    #[test]
    fn view_recordings_selects_servers_like_nodes_does() {
        let p = Policy::parse(VIEW_SAMPLE, "p").unwrap();
        let l = |s: &str| s.parse::<Labels>().unwrap();
        assert_eq!(
            p.recording_viewer_role(&user("carol"), &l("env=prod")),
            Some("auditor")
        );
        let dave = user("dave");
        assert_eq!(
            p.recording_viewer_role(&dave, &l("env=prod,team=web")),
            Some("prod-lead")
        );
        assert_eq!(
            p.recording_viewer_role(&dave, &l("env=staging,team=db")),
            Some("prod-lead")
        );
        // Every label of the selector must match: no team label, or another env.
        assert_eq!(p.recording_viewer_role(&dave, &l("env=prod")), None);
        assert_eq!(p.recording_viewer_role(&dave, &l("env=dev,team=web")), None);
        // A removed server is judged by empty labels: only "*" = "*" selects it.
        assert_eq!(p.recording_viewer_role(&dave, &l("")), None);
        assert_eq!(
            p.recording_viewer_role(&user("carol"), &l("")),
            Some("auditor")
        );
        // Without the key, a role grants nobody else's recordings, even with `nodes = *`.
        assert_eq!(p.recording_viewer_role(&user("alice"), &l("env=dev")), None);
        assert_eq!(p.recording_viewer_role(&user("stranger"), &l("")), None);
        assert!(p.views_others_recordings(&user("carol")));
        assert!(p.views_others_recordings(&dave));
        assert!(!p.views_others_recordings(&user("alice")));
        assert!(!p.views_others_recordings(&user("stranger")));
        // An empty selector grants nothing.
        let p = Policy::parse(
            "[roles.r]\nlogins = [\"x\"]\nview_recordings = {}\n[users.u]\nroles = [\"r\"]\n",
            "p",
        )
        .unwrap();
        assert!(!p.views_others_recordings(&user("u")));
        assert_eq!(p.recording_viewer_role(&user("u"), &l("")), None);
    }

    #[test]
    fn rejects_hostile_view_recordings_with_file_line_and_column() {
        let bad = |text: &str| Policy::parse(text, "/etc/postern/policy.toml").unwrap_err();
        // A misspelt key is unknown, at its own position.
        let e = bad("[roles.a]\nlogins = [\"x\"]\nview_recording = { \"*\" = \"*\" }\n");
        assert_eq!((e.line, e.column), (3, 1), "{e}");
        assert!(e.message.contains("view_recording"), "{e}");
        assert!(
            e.to_string().starts_with("/etc/postern/policy.toml:3:1: "),
            "{e}"
        );
        // Not a table.
        let e = bad("[roles.a]\nview_recordings = \"*\"\n");
        assert_eq!(e.line, 2, "{e}");
        let e = bad("[roles.a]\nview_recordings = [\"*\"]\n");
        assert_eq!(e.line, 2, "{e}");
        // "*" as a key takes only "*".
        let e = bad("[roles.a]\n\nview_recordings = { \"*\" = \"prod\" }\n");
        assert_eq!((e.line, e.column), (3, 27), "{e}");
        assert!(e.message.contains("only takes"), "{e}");
        let e = bad("[roles.a]\nview_recordings = { \"*\" = [\"prod\"] }\n");
        assert!(e.message.contains("only takes"), "{e}");
        // Values that are not strings, nested tables, repeated keys.
        for text in [
            "[roles.a]\nview_recordings = { env = 3 }\n",
            "[roles.a]\nview_recordings = { env = [\"prod\", 1] }\n",
            "[roles.a]\nview_recordings = { env = { a = \"b\" } }\n",
            "[roles.a]\nview_recordings = { env = \"a\", env = \"b\" }\n",
            "[roles.a]\nview_recordings = true\n",
        ] {
            let e = bad(text);
            assert_eq!(e.line, 2, "{text}: {e}");
            assert!(e.column > 1, "{text}: {e}");
        }
        // The same key twice in one role.
        let e = bad("[roles.a]\nview_recordings = {}\nview_recordings = {}\n");
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
        assert_eq!(line_col("abc", 99), (1, 4));
    }
}
