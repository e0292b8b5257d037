//! `posternd.toml`: the daemon's configuration, validated with file:line:column errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use postern_core::policy::line_col;
use postern_core::ClusterName;
use serde::{Deserialize, Serialize};

/// The file as written by an admin.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: String,
    listen: String,
    api_url: String,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_policy")]
    policy: PathBuf,
    #[serde(default)]
    gateway: Option<RawGateway>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    public_addr: Option<String>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".")
}
fn default_policy() -> PathBuf {
    PathBuf::from("policy.toml")
}

/// The validated configuration; relative paths are resolved against the config file's folder.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The config file itself.
    pub file: PathBuf,
    /// Cluster name (`Host *.<cluster>`).
    pub cluster: ClusterName,
    /// Where the HTTPS API listens.
    pub listen: SocketAddr,
    /// How clients reach the API.
    pub api_url: String,
    /// Data directory (CA keys, database, admin socket).
    pub data_dir: PathBuf,
    /// The policy file.
    pub policy: PathBuf,
    /// The gateway's `HOST:PORT` that clients use as ProxyJump.
    pub gateway_public_addr: Option<String>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(&text, path).map_err(anyhow::Error::msg)
    }

    /// Parses config text; errors are `file:line:column: message`.
    pub fn parse(text: &str, path: &Path) -> std::result::Result<Config, String> {
        let at = |offset: usize, msg: String| {
            let (l, c) = line_col(text, offset);
            format!("{}:{l}:{c}: {msg}", path.display())
        };
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| at(e.span().map_or(0, |s| s.start), e.message().to_owned()))?;
        let find = |key: &str| text.find(key).unwrap_or(0);
        let cluster = postern_core::names::parse_cluster_name(&raw.cluster)
            .map_err(|e| at(find("cluster"), e.to_string()))?;
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            at(
                find("listen"),
                format!(
                    "listen {:?} is not an address like 127.0.0.1:3080",
                    raw.listen
                ),
            )
        })?;
        if !raw.api_url.starts_with("https://") {
            return Err(at(
                find("api_url"),
                "api_url must start with https://".into(),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        Ok(Config {
            file: path.to_path_buf(),
            cluster,
            listen,
            api_url: raw.api_url,
            data_dir: resolve(&raw.data_dir),
            policy: resolve(&raw.policy),
            gateway_public_addr: raw.gateway.and_then(|g| g.public_addr),
        })
    }

    /// The text `posternd init` writes.
    pub fn render(cluster: &str, listen: &SocketAddr, api_url: &str) -> String {
        format!(
            "# posternd configuration. See posternd.toml(5).\n\
             cluster = {cluster:?}\n\
             listen = \"{listen}\"\n\
             api_url = {api_url:?}\n\
             # Relative paths are relative to this file's folder.\n\
             data_dir = \".\"\n\
             policy = \"policy.toml\"\n\
             \n\
             # [gateway]\n\
             # public_addr = \"gate.example.com:3023\"\n"
        )
    }

    /// The admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.data_dir.join("admin.sock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_config_parses() {
        let text = Config::render(
            "c.test",
            &"127.0.0.1:3080".parse().unwrap(),
            "https://127.0.0.1:3080",
        );
        let c = Config::parse(&text, Path::new("/d/posternd.toml")).unwrap();
        assert_eq!(c.cluster.as_str(), "c.test");
        assert_eq!(c.data_dir, Path::new("/d/."));
        assert_eq!(c.policy, Path::new("/d/policy.toml"));
    }

    #[test]
    fn rejects_unknown_key_with_position() {
        let text = "cluster = \"c\"\nlisten = \"127.0.0.1:1\"\napi_url = \"https://x\"\nfoo = 1\n";
        let e = Config::parse(text, Path::new("p.toml")).unwrap_err();
        assert!(e.starts_with("p.toml:4:1: "), "{e}");
    }

    #[test]
    fn rejects_bad_values() {
        let e = Config::parse(
            "cluster = \"a b\"\nlisten = \"127.0.0.1:1\"\napi_url = \"https://x\"\n",
            Path::new("p"),
        )
        .unwrap_err();
        assert!(e.contains("cluster"), "{e}");
        let e = Config::parse(
            "cluster = \"c\"\nlisten = \"nowhere\"\napi_url = \"https://x\"\n",
            Path::new("p"),
        )
        .unwrap_err();
        assert!(e.contains("p:2:1"), "{e}");
        let e = Config::parse(
            "cluster = \"c\"\nlisten = \"127.0.0.1:1\"\napi_url = \"http://x\"\n",
            Path::new("p"),
        )
        .unwrap_err();
        assert!(e.contains("https"), "{e}");
    }
}
