//! The decisions: whether a certificate may be issued, and with which logins, extensions and
//! lifetime. Each success is an approval of the CA that signs it ([`UserCertApproval`],
//! [`NodeAccessApproval`], [`HostCertApproval`]), which only these functions build.

use std::collections::BTreeSet;

use super::model::{Permit, Policy};
use crate::names::{KeyId, Labels, Login, Principal, Username};
use crate::ttl::Ttl;

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
    /// A host certificate with no name.
    #[error("a host certificate for {key_id} needs at least one name")]
    NoHostNames {
        /// The certificate's key id.
        key_id: KeyId,
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

/// Proof that the policy allowed issuing this user certificate (the user CA's). Only
/// [`Policy::decide_login`] and [`Policy::decide_admin_signing`] build one (its fields are
/// private), and [`crate::cert::issue_user_cert`] signs nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCertApproval {
    user: Username,
    logins: Vec<Login>,
    permits: BTreeSet<Permit>,
    ttl: Ttl,
}

impl UserCertApproval {
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
    pub fn without_logins(&self, removed: &[Login]) -> Option<UserCertApproval> {
        let logins: Vec<Login> = self
            .logins
            .iter()
            .filter(|l| !removed.contains(l))
            .cloned()
            .collect();
        (!logins.is_empty()).then(|| UserCertApproval {
            logins,
            ..self.clone()
        })
    }
}

/// Proof that the policy allowed a node-access certificate (the node-access CA's): one user,
/// exactly one login on one server, the permits of the roles that grant it there. Only
/// [`Policy::decide_node_access`] builds one, and only
/// [`crate::cert::issue_node_access_cert`] signs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAccessApproval {
    user: Username,
    login: Login,
    permits: BTreeSet<Permit>,
    ttl: Ttl,
}

impl NodeAccessApproval {
    /// The user the gateway logs in for.
    pub fn user(&self) -> &Username {
        &self.user
    }
    /// The one login (the certificate's only principal).
    pub fn login(&self) -> &Login {
        &self.login
    }
    /// The extensions.
    pub fn permits(&self) -> &BTreeSet<Permit> {
        &self.permits
    }
    /// The granted lifetime.
    pub fn ttl(&self) -> Ttl {
        self.ttl
    }
}

/// Proof that a host certificate (the host CA's) may carry these names for this long: only
/// [`Policy::decide_host_cert`] builds one, and only [`crate::cert::issue_host_cert`] signs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCertApproval {
    key_id: KeyId,
    principals: Vec<Principal>,
    ttl: Ttl,
}

impl HostCertApproval {
    /// The certificate's key id (the host's name, or `gateway:G/NODE`).
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }
    /// The host names (never empty).
    pub fn principals(&self) -> &[Principal] {
        &self.principals
    }
    /// The granted lifetime.
    pub fn ttl(&self) -> Ttl {
        self.ttl
    }
}

/// A decision: the approval plus whether the requested TTL was capped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<A> {
    /// What may be signed.
    pub approval: A,
    /// `Some(requested)` when the granted TTL is shorter than requested.
    pub capped_from: Option<Ttl>,
}

/// The decision for a user certificate.
pub type LoginDecision = Decision<UserCertApproval>;

/// The decision for a node-access certificate.
pub type NodeAccessDecision = Decision<NodeAccessApproval>;

impl Policy {
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
            approval: UserCertApproval {
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
    ) -> Result<NodeAccessDecision, Deny> {
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
        Ok(NodeAccessDecision {
            approval: NodeAccessApproval {
                user: user.clone(),
                login: login.clone(),
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
            approval: UserCertApproval {
                user: user.clone(),
                logins: logins.into_iter().collect(),
                permits,
                ttl,
            },
            capped_from,
        })
    }

    /// The decision for a host certificate: the names the caller worked out for the host
    /// (at least one), for `requested` or `defaults.host_cert_ttl`, never longer than
    /// `defaults.host_cert_ttl`.
    pub fn decide_host_cert(
        &self,
        key_id: KeyId,
        principals: Vec<Principal>,
        requested: Option<Ttl>,
    ) -> Result<HostCertApproval, Deny> {
        if principals.is_empty() {
            return Err(Deny::NoHostNames { key_id });
        }
        let cap = self.defaults.host_cert_ttl;
        Ok(HostCertApproval {
            key_id,
            principals,
            ttl: requested.map_or(cap, |t| t.min(cap)),
        })
    }
}
