//! `gate.toml`, the gateway's optional configuration file (postern-gate.toml(5)), read by
//! `postern-gate serve --config FILE`. Flags given on the command line win over it.

/// `gate.toml`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Address to listen on (default `0.0.0.0:3023`; `--listen` wins).
    pub listen: Option<String>,
    /// How many client connections are served at once (default 4096).
    pub max_connections: Option<usize>,
    /// `[sessions]`: what ends a live session besides the CA's cuts.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// `[audit]`: the journal of audit events in the state directory.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// `[audit]` of `gate.toml`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The most bytes of undelivered audit events kept on disk (default 1 GiB).
    pub spool_max_bytes: Option<u64>,
}

/// `[audit] spool_max_bytes` when gate.toml does not set it: about two million events.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;

impl AuditConfig {
    /// `spool_max_bytes`, checked.
    pub fn spool_max_bytes(&self) -> anyhow::Result<u64> {
        match self.spool_max_bytes {
            None => Ok(DEFAULT_SPOOL_MAX_BYTES),
            Some(0) => anyhow::bail!(
                "[audit] spool_max_bytes = 0 would refuse every audit event (and so every strict session); give the most bytes of undelivered events to keep on disk"
            ),
            Some(n) => Ok(n),
        }
    }
}

/// `[sessions]` of `gate.toml`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// Whether a session ends when the user certificate it was authenticated with ends
    /// (default true, like Teleport's `disconnect_expired_cert`).
    pub disconnect_expired_cert: Option<bool>,
}

impl SessionsConfig {
    /// `disconnect_expired_cert`, on unless the file turns it off.
    pub fn disconnect_expired_cert(&self) -> bool {
        self.disconnect_expired_cert.unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_expiry_cut_is_on_unless_turned_off() {
        let on = |text: &str| {
            toml::from_str::<GateConfig>(text)
                .unwrap()
                .sessions
                .disconnect_expired_cert()
        };
        assert!(on(""));
        assert!(on("[sessions]\n"));
        assert!(on("[sessions]\ndisconnect_expired_cert = true\n"));
        assert!(!on("[sessions]\ndisconnect_expired_cert = false\n"));
        assert!(toml::from_str::<GateConfig>("[sessions]\ndisconnect_expired = false\n").is_err());
    }

    #[test]
    fn the_audit_spool_has_a_default_maximum_and_refuses_zero() {
        let max = |text: &str| {
            toml::from_str::<GateConfig>(text)
                .unwrap()
                .audit
                .spool_max_bytes()
        };
        assert_eq!(max("").unwrap(), DEFAULT_SPOOL_MAX_BYTES);
        assert_eq!(max("[audit]\nspool_max_bytes = 4096\n").unwrap(), 4096);
        let e = max("[audit]\nspool_max_bytes = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spool_max_bytes = 0 would refuse every audit event"),
            "{e}"
        );
        assert!(toml::from_str::<GateConfig>("[audit]\nspool_max = 1\n").is_err());
        assert!(toml::from_str::<GateConfig>("[audit]\nspool_max_bytes = -1\n").is_err());
    }
}
