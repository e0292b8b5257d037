//! What a validated policy holds (defaults, roles, users) and the questions it answers about
//! them (whose roles, which logins on which servers, whose recordings).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::{Labels, Login, Username};
use crate::ttl::Ttl;

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
pub struct LoginTemplate(pub(super) String);

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

/// A validated policy. Its fields are private: a `Policy` only comes from
/// [`Policy::parse`], so every one in the program passed its checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Cluster-wide defaults.
    pub(super) defaults: Defaults,
    /// Roles by name.
    pub(super) roles: BTreeMap<String, Role>,
    /// Users' role lists.
    pub(super) users: BTreeMap<Username, Vec<String>>,
}

impl Policy {
    /// Cluster-wide defaults.
    pub fn defaults(&self) -> &Defaults {
        &self.defaults
    }

    /// Roles by name.
    pub fn roles(&self) -> &BTreeMap<String, Role> {
        &self.roles
    }

    /// Every user in the policy with their role list (possibly empty).
    pub fn users(&self) -> &BTreeMap<Username, Vec<String>> {
        &self.users
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
}
