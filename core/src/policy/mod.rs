//! The policy file (`policy.toml`) and the decision it makes for a login.
//!
//! Format: `[defaults]`, `[roles.NAME]`, `[users.NAME]` as in DESIGN.md. A role has `logins`,
//! `nodes` (a label selector), `permit`, `max_ttl`, and `view_recordings`: a label selector
//! in the syntax of `nodes` naming the servers whose recorded sessions of *other* users the
//! role's members may list and play (everyone always sees their own). Unknown keys are
//! errors, and every error names the file, line and column. The only way to obtain an
//! approval, which certificate signing requires, is a successful decision: a
//! [`UserCertApproval`] from [`Policy::decide_login`] or [`Policy::decide_admin_signing`], a
//! [`NodeAccessApproval`] from [`Policy::decide_node_access`], a [`HostCertApproval`] from
//! [`Policy::decide_host_cert`].

mod decide;
mod file;
mod model;
#[cfg(test)]
mod tests;

pub use decide::{
    Decision, Deny, HostCertApproval, LoginDecision, NodeAccessApproval, NodeAccessDecision,
    UserCertApproval,
};
pub use file::{line_col, PolicyError, SAMPLE_POLICY};
pub use model::{Defaults, LoginTemplate, NodeSelector, Permit, Policy, RecordingMode, Role};
