//! The gateway as a client of a server's sshd: the one host certificate it accepts (from the
//! host CA, for the server's name, for the host key the CA certified at join), and the agent
//! channels sshd opens, handed to `agent`.

use std::sync::{Arc, Mutex};

use postern_core::cert::CertValidator;
use russh::Channel;
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, PublicKey};

use super::agent::{open_agent_channel, AgentBridge};
use postern_core::clock::now;

/// The gateway as a client of a server's sshd: accepts only a host certificate from the host
/// CA naming the server.
#[derive(Clone)]
pub(super) struct Upstream {
    host_cas: Vec<PublicKey>,
    name: String,
    /// The server's host key as the CA certified it; `None` (a CA that does not say) refuses.
    pinned: Option<PublicKey>,
    agent: Arc<Mutex<Option<AgentBridge>>>,
}

impl Upstream {
    /// A client of server `name`, trusting `host_cas` and the `pinned` host key; the server's
    /// agent channels go through `agent` once it is set.
    pub(super) fn new(
        host_cas: Vec<PublicKey>,
        name: String,
        pinned: Option<PublicKey>,
        agent: Arc<Mutex<Option<AgentBridge>>>,
    ) -> Upstream {
        Upstream {
            host_cas,
            name,
            pinned,
            agent,
        }
    }
}

/// Why the host certificate a server presented is not the server's, or `None` when it is.
fn host_cert_refusal(
    cert: &Certificate,
    host_cas: &[PublicKey],
    name: &str,
    pinned: Option<&PublicKey>,
    now: u64,
) -> Option<String> {
    match (CertValidator {
        trusted: host_cas,
        cert_type: CertType::Host,
    })
    .validate(cert, now)
    {
        Err(e) => Some(e.to_string()),
        // The CA issues a server's certificate with key id = its name; a certificate for
        // another key id (a gateway's inner certificate, another server's) is not this
        // server's, whatever principals it carries.
        Ok(v) if v.key_id.as_str() != name => Some(format!(
            "its key id is {:?}, not the server's name",
            v.key_id.as_str()
        )),
        Ok(v) if !v.principals.iter().any(|p| p.as_str() == name) => {
            Some("it does not name the server".into())
        }
        Ok(_) => match pinned {
            None => Some("the CA gave no host key for the server".into()),
            Some(k) if k.key_data() != cert.public_key() => {
                Some("its key is not the host key the CA certified when the server joined (a removed or replaced machine?)".into())
            }
            Some(_) => None,
        },
    }
}

impl russh::client::Handler for Upstream {
    type Error = anyhow::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::Certificate(cert) = key else {
            tracing::warn!(server = %self.name, "server presented a plain host key, not a host certificate");
            return Ok(false);
        };
        let why = host_cert_refusal(
            cert,
            &self.host_cas,
            &self.name,
            self.pinned.as_ref(),
            now(),
        );
        if let Some(why) = &why {
            tracing::warn!(server = %self.name, reason = %why, "server's host certificate refused");
        }
        Ok(why.is_none())
    }

    /// sshd opens an agent channel when a program on the server uses the forwarded agent:
    /// only after the user asked for forwarding and the permits allowed it, and then
    /// bridged to an agent channel opened on the user's own ssh client.
    async fn server_channel_open_agent_forward(
        &mut self,
        channel: Channel<russh::client::Msg>,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut russh::client::Session,
    ) -> Result<(), Self::Error> {
        open_agent_channel(&self.agent, &self.name, channel, reply).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::cert::{generate_ed25519, issue_host_cert, IssueParams, KeySigner};
    use postern_core::{KeyId, Policy, Principal, Ttl};
    use ssh_key::PrivateKey;

    const NOW: u64 = 1_700_000_000;

    fn host_cert(
        ca: &PrivateKey,
        subject: &PublicKey,
        key_id: &str,
        names: &[&str],
    ) -> Certificate {
        let principals: Vec<Principal> = names.iter().map(|n| n.parse().unwrap()).collect();
        // An approval comes only from a policy decision (the default policy: host
        // certificates for up to 30 days).
        let approval = Policy::parse("", "policy.toml")
            .unwrap()
            .decide_host_cert(
                key_id.parse::<KeyId>().unwrap(),
                principals,
                Ttl::from_secs(3600),
            )
            .unwrap();
        issue_host_cert(
            &KeySigner::new(ca.clone()),
            &approval,
            subject,
            IssueParams {
                serial: 7,
                now: NOW,
            },
        )
        .unwrap()
    }

    #[test]
    fn accepts_only_the_servers_own_certificate_for_its_pinned_key() {
        let ca = generate_ed25519("host ca").unwrap();
        let cas = [ca.public_key().clone()];
        let key = generate_ed25519("web1 host key")
            .unwrap()
            .public_key()
            .clone();
        let other_key = generate_ed25519("old web1").unwrap().public_key().clone();
        let good = host_cert(&ca, &key, "web1", &["web1", "web1.postern.test"]);
        assert_eq!(
            host_cert_refusal(&good, &cas, "web1", Some(&key), NOW),
            None
        );

        let refusal = |cert: &Certificate, pinned: Option<&PublicKey>, now: u64| {
            host_cert_refusal(cert, &cas, "web1", pinned, now)
        };
        // Another server's certificate, even one that names web1.
        assert_eq!(
            refusal(&host_cert(&ca, &key, "db", &["web1"]), Some(&key), NOW).as_deref(),
            Some("its key id is \"db\", not the server's name")
        );
        assert_eq!(
            refusal(
                &host_cert(&ca, &key, "web1", &["web1.postern.test"]),
                Some(&key),
                NOW
            )
            .as_deref(),
            Some("it does not name the server")
        );
        // A removed or replaced machine's certificate, and a CA that pins nothing.
        assert!(refusal(&good, Some(&other_key), NOW)
            .is_some_and(|why| why.starts_with("its key is not the host key the CA certified")));
        assert_eq!(
            refusal(&good, None, NOW).as_deref(),
            Some("the CA gave no host key for the server")
        );
        // Not valid at all: another CA, expired.
        let other_ca = generate_ed25519("other ca").unwrap();
        assert!(refusal(
            &host_cert(&other_ca, &key, "web1", &["web1"]),
            Some(&key),
            NOW
        )
        .is_some());
        assert!(refusal(&good, Some(&key), NOW + 3600).is_some());
        assert!(host_cert_refusal(&good, &[], "web1", Some(&key), NOW).is_some());
    }
}
