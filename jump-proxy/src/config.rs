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
}
