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
}
