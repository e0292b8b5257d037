//! Wire types of the HTTPS API (JSON), shared by `posternd` and its clients.
//!
//! Secrets travel in [`Secret`], whose `Debug` hides the value and which is zeroized on drop.

use std::fmt;

pub use secrecy::ExposeSecret;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::ids::LockTarget;

use crate::names::{ClusterName, Login, Username};
use crate::policy::Permit;
use crate::ttl::Ttl;

/// The largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// A secret string (password, one-time code, invite token): a [`secrecy::SecretString`], so
/// never printed and zeroized on drop. On the wire it is a plain JSON string.
///
/// It has no `PartialEq`: two secrets are compared only through [`ConstantTimeEq`], whose time
/// does not depend on where they differ. The value is read only through
/// [`ExposeSecret::expose_secret`]; call sites that use it are the places to audit.
#[derive(Clone, Default)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value. The `String` is copied into the secret's own allocation and zeroized,
    /// so that no copy of the value outlives the call (`String::into_boxed_str` could move
    /// it into a smaller allocation and leave the old one behind).
    pub fn new(s: String) -> Self {
        let s = Zeroizing::new(s);
        Secret(SecretString::from(s.as_str()))
    }
}

impl ExposeSecret<str> for Secret {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl ConstantTimeEq for Secret {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.expose_secret()
            .as_bytes()
            .ct_eq(other.expose_secret().as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose_secret())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// The user name of a login or an enrolment, refused without repeating the value: the API
/// answers with the error and logs it, and a password typed into the user field must appear in
/// neither.
fn quiet_username<'de, D: Deserializer<'de>>(d: D) -> Result<Username, D::Error> {
    let s = Zeroizing::new(String::deserialize(d)?);
    s.parse::<Username>()
        .map_err(|e| serde::de::Error::custom(format_args!("invalid user name: {}", e.reason)))
}

/// `GET /v1/ping`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingResponse {
    /// The cluster's name.
    pub cluster: ClusterName,
    /// Server version.
    pub version: String,
}

/// `POST /v1/enroll`: set a password with a one-time invite.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The user.
    #[serde(deserialize_with = "quiet_username")]
    pub user: Username,
    /// The invite printed by `posternd users add`.
    pub invite: Secret,
    /// The new password.
    pub password: Secret,
}

/// Answer to an enrolment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    /// `otpauth://totp/...` with the TOTP secret.
    pub otpauth_uri: Secret,
}

/// `POST /v1/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The user.
    #[serde(deserialize_with = "quiet_username")]
    pub user: Username,
    /// The password.
    pub password: Secret,
    /// The current TOTP code.
    pub otp: Secret,
    /// The new public key (OpenSSH one-line form; Ed25519).
    pub public_key: String,
    /// Requested certificate lifetime.
    #[serde(default)]
    pub ttl: Option<Ttl>,
}

/// `POST /v1/renew` (mTLS with the current X.509 identity).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// Requested certificate lifetime.
    #[serde(default)]
    pub ttl: Option<Ttl>,
}

/// Answer to a login or renewal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertResponse {
    /// The cluster's name.
    pub cluster: ClusterName,
    /// The user.
    pub user: Username,
    /// The OpenSSH user certificate (one line).
    pub ssh_certificate: String,
    /// The X.509 client certificate for the same key (PEM).
    pub x509_certificate: String,
    /// The service CA (PEM), to pin later connections.
    pub x509_ca: String,
    /// Host CA public keys (OpenSSH one-line form), for `@cert-authority`.
    pub host_ca_keys: Vec<String>,
    /// The gateway's `HOST:PORT`, when the cluster has one (the first of [`Self::gateways`]
    /// when it has several).
    #[serde(default)]
    pub gateway: Option<String>,
    /// Every gateway address (`HOST:PORT`), in order, when the cluster has more than one;
    /// empty (and absent on the wire, for the CLIs of earlier versions, which refuse fields
    /// they do not know) when it has one or none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Principals of the certificate.
    pub principals: Vec<Login>,
    /// Extensions of the certificate.
    pub permits: Vec<Permit>,
    /// `valid_before` of the certificate (Unix seconds).
    pub valid_before: u64,
    /// After this Unix time, `postern renew` is refused and a password login is needed.
    pub renew_until: u64,
    /// The granted lifetime.
    pub ttl: Ttl,
    /// The requested lifetime when it was capped.
    #[serde(default)]
    pub capped_from: Option<Ttl>,
}

/// Every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Public message.
    pub error: String,
    /// Id under which the server logged the details.
    pub request_id: String,
}

/// `POST /v1/join`: a server or gateway joins with a single-use token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The token printed by `posternd tokens add`.
    pub token: Secret,
    /// The node's name (one DNS label).
    pub name: crate::names::NodeName,
    /// `HOST:PORT` where its sshd listens (or the gateway's public address).
    #[serde(default)]
    pub address: Option<String>,
    /// Labels asked for; the token's labels win on conflict.
    #[serde(default)]
    pub labels: crate::names::Labels,
    /// The SSH host public key to certify (OpenSSH one-line form).
    pub host_public_key: String,
    /// The Ed25519 key of the node's mTLS identity (OpenSSH one-line form).
    pub identity_public_key: String,
    /// A gateway's egress addresses (IPs or CIDRs it dials servers from), when configured:
    /// servers exempt them from sshd's per-source penalties and node-access certificates are
    /// bound to them (`source-address`). Without them the CA takes the address it saw.
    #[serde(default)]
    pub egress_addresses: Vec<String>,
}

/// Answer to a join.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinResponse {
    /// The cluster.
    pub cluster: ClusterName,
    /// What joined.
    pub kind: crate::ids::NodeKind,
    /// Effective labels.
    pub labels: crate::names::Labels,
    /// The host certificate (one line).
    pub host_certificate: String,
    /// The node's X.509 identity (PEM).
    pub x509_certificate: String,
    /// The service CA (PEM).
    pub x509_ca: String,
    /// The first bundle.
    pub bundle: Bundle,
}

/// A lock as servers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// Lock id.
    pub id: i64,
    /// What it locks (a kind this version does not know is kept, and covers everything).
    pub target: crate::ids::LockTarget,
    /// The locked name.
    pub name: String,
    /// Unix time it ends (`None` = until removed).
    #[serde(default)]
    pub expires: Option<u64>,
    /// Why.
    pub reason: String,
}

/// What an access is, as far as locks can name it: the Postern user, the OS login and the
/// server. A part that is not known (`None`) matches no lock naming that part.
#[derive(Debug, Clone, Copy, Default)]
pub struct LockSubject<'a> {
    /// The Postern user.
    pub user: Option<&'a str>,
    /// The OS login.
    pub login: Option<&'a str>,
    /// The server.
    pub node: Option<&'a str>,
}

impl LockEntry {
    /// Whether this lock stops `s` at `now`: never once expired; a `user`, `login` or `node`
    /// lock when it names that part of the access; and a lock of a kind this version does not
    /// know always (fail closed: a newer CA may lock by something older parts cannot see).
    /// This is the one lock rule: the CA, the shim (principals and PAM) and the gateway all
    /// ask it.
    pub fn applies(&self, s: &LockSubject<'_>, now: u64) -> bool {
        if self.expires.is_some_and(|e| e <= now) {
            return false;
        }
        let named = match self.target {
            LockTarget::User => s.user,
            LockTarget::Login => s.login,
            LockTarget::Node => s.node,
            LockTarget::Other(_) => return true,
        };
        named == Some(self.name.as_str())
    }

    /// What to tell the user: `user alice is locked`, with the kind and name as locked.
    pub fn describe(&self) -> String {
        match &self.target {
            LockTarget::User => format!("user {} is locked", self.name),
            LockTarget::Login => format!("login {} is locked", self.name),
            LockTarget::Node => format!("server {} is locked", self.name),
            LockTarget::Other(other) => format!("locked ({:.40} {:.64})", other, self.name),
        }
    }
}

/// The first lock in `locks` that stops `s` at `now` ([`LockEntry::applies`]).
pub fn lock_for<'a>(
    locks: &'a [LockEntry],
    s: &LockSubject<'_>,
    now: u64,
) -> Option<&'a LockEntry> {
    locks.iter().find(|l| l.applies(s, now))
}

/// What a joined server needs to decide logins on its own: the policy slice for its labels,
/// the locks, the KRL and the CA keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// The cluster.
    pub cluster: ClusterName,
    /// This node.
    pub node: crate::names::NodeName,
    /// Its labels.
    pub labels: crate::names::Labels,
    /// Unix time the CA built the bundle.
    pub generated_at: u64,
    /// Older bundles deny every login.
    pub max_bundle_age: Ttl,
    /// Postern user → the logins the policy allows on this node.
    pub allowed: std::collections::BTreeMap<Username, Vec<Login>>,
    /// Locks in force.
    pub locks: Vec<LockEntry>,
    /// The KRL (base64 of the binary form).
    pub krl: String,
    /// User CA keys (OpenSSH lines).
    pub user_ca_keys: Vec<String>,
    /// Host CA keys.
    pub host_ca_keys: Vec<String>,
    /// Node-access CA keys: what the server's sshd trusts.
    pub node_access_ca_keys: Vec<String>,
    /// The addresses gateways dial servers from (IPs or CIDRs): the shim writes them as sshd's
    /// `PerSourcePenaltyExemptList`, since every session arrives from one of them.
    #[serde(default)]
    pub gateway_addresses: Vec<String>,
    /// The newest signed audit checkpoint, which the shim logs to the server's syslog so that
    /// a copy of it lives off the CA's host. Sent only to shims that ask for it
    /// (`SyncRequest::audit_checkpoint`): an older shim refuses unknown fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_checkpoint: Option<AuditCheckpoint>,
}

/// A signed audit checkpoint: the CA's audit key signed that event `seq` of its audit log has
/// hash `hash`. Its line form (`postern-audit-checkpoint seq=N hash=HEX sig=BASE64`) is what
/// the CA and the shims write to syslog and what `posternd audit verify --checkpoints` reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpoint {
    /// Sequence number of the event.
    pub seq: u64,
    /// Its chain hash (hex SHA-256).
    pub hash: String,
    /// Ed25519 signature (base64) of [`AuditCheckpoint::signed_bytes`].
    pub sig: String,
}

impl AuditCheckpoint {
    /// The word that starts a checkpoint's line form.
    pub const TAG: &'static str = "postern-audit-checkpoint";

    /// What the signature covers: a domain tag, the sequence number and the hash.
    pub fn signed_bytes(seq: u64, hash: &str) -> Vec<u8> {
        let mut m = b"postern-audit-checkpoint-v1\0".to_vec();
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(hash.as_bytes());
        m
    }

    /// The line form.
    pub fn line(&self) -> String {
        format!(
            "{} seq={} hash={} sig={}",
            Self::TAG,
            self.seq,
            self.hash,
            self.sig
        )
    }

    /// Finds a checkpoint in one log line (syslog and journald put their own prefix before
    /// it); `None` when the line holds none or a malformed one.
    pub fn find_in_line(line: &str) -> Option<AuditCheckpoint> {
        let at = line.find(Self::TAG)?;
        let mut words = line[at + Self::TAG.len()..].split_whitespace();
        let mut field = |name: &str| {
            words
                .next()
                .and_then(|w| w.strip_prefix(name))
                .and_then(|w| w.strip_prefix('='))
                .map(str::to_owned)
        };
        let seq = field("seq")?.parse().ok()?;
        let hash = field("hash")?;
        let sig = field("sig")?;
        let hex_ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        let sig_ok = !sig.is_empty()
            && sig.len() <= 100
            && sig
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
        (hex_ok && sig_ok).then_some(AuditCheckpoint { seq, hash, sig })
    }
}

/// `POST /v1/node/sync` (mTLS, node identity).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// `valid_after` and `valid_before` of the node's current host certificate.
    #[serde(default)]
    pub host_cert_window: Option<(u64, u64)>,
    /// Host public key, when a renewal is wanted.
    #[serde(default)]
    pub host_public_key: Option<String>,
    /// Renew the host certificate now, whatever its age (`postern-shim sync --renew`).
    #[serde(default)]
    pub renew: bool,
    /// The shim understands `Bundle::audit_checkpoint` and logs it.
    #[serde(default)]
    pub audit_checkpoint: bool,
}

/// Answer to a sync.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncResponse {
    /// The current bundle.
    pub bundle: Bundle,
    /// A renewed host certificate, when a third or less of the old one's life was left.
    #[serde(default)]
    pub host_certificate: Option<String>,
}

/// A session event reported by a server's PAM helper.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEvent {
    /// `session.open` or `session.close`.
    pub kind: String,
    /// Unix time on the server.
    pub ts: u64,
    /// The OS login.
    pub login: String,
    /// Postern user from the certificate's key id, when known.
    #[serde(default)]
    pub user: Option<String>,
    /// Session id from the key id, when known.
    #[serde(default)]
    pub session: Option<String>,
    /// Certificate serial, when known.
    #[serde(default)]
    pub serial: Option<crate::ids::Serial>,
    /// Remote address as PAM saw it.
    #[serde(default)]
    pub remote: Option<String>,
    /// TTY.
    #[serde(default)]
    pub tty: Option<String>,
    /// Kind-specific details (file paths, byte counts, forward targets...).
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
}

/// `POST /v1/node/events` (mTLS, node identity).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsRequest {
    /// Events, oldest first (at most 1000).
    pub events: Vec<NodeEvent>,
}

/// One server in the gateway's inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryEntry {
    /// Node name.
    pub name: crate::names::NodeName,
    /// `HOST:PORT` of its sshd.
    pub address: String,
    /// Its labels.
    pub labels: crate::names::Labels,
    /// The host public key the CA certified when it joined (OpenSSH line): the gateway
    /// accepts only a host certificate for this key, so a certificate a removed or replaced
    /// machine still holds does not pass for the server.
    #[serde(default)]
    pub host_key: Option<String>,
}

/// `GET /v1/gateway/inventory` (mTLS, gateway identity): what a gateway needs to route and to
/// authenticate users without asking the CA for every connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// The cluster.
    pub cluster: ClusterName,
    /// Unix time the CA built it.
    pub generated_at: u64,
    /// Joined servers (kind `node`).
    pub nodes: Vec<InventoryEntry>,
    /// User CA keys: the gateway accepts user certificates signed by these.
    pub user_ca_keys: Vec<String>,
    /// Host CA keys: the gateway checks servers' host certificates against these.
    pub host_ca_keys: Vec<String>,
    /// Locks in force (the gateway cuts matching live sessions).
    pub locks: Vec<LockEntry>,
    /// User certificates revoked before their end (`users rm`, `users reset`), until a day
    /// after it: the gateway cuts the live sessions they authenticated. Absent from a CA of an
    /// earlier version.
    #[serde(default)]
    pub revoked_user_certs: Vec<RevokedUserCert>,
}

/// A revoked user certificate in the gateway's inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedUserCert {
    /// Its serial.
    pub serial: crate::ids::Serial,
    /// Its user (the key id).
    pub user: Username,
    /// Why, as the audit log says it: `user removed` or `user reset`.
    pub reason: String,
}

/// `GET /v1/gateway/public-addr` (mTLS, gateway identity): the address users are told to use
/// for the gateway (posternd.toml's `[gateway] public_addr`, what `postern login` writes as
/// `ProxyJump`). The CA puts its host into every gateway's host certificate at join; the
/// gateway checks its certificate against it at join and whenever `serve` starts. A route of
/// its own rather than a field of [`Inventory`] or [`JoinResponse`], which gateways of earlier
/// versions parse with `deny_unknown_fields`; and for the same reason this answer accepts
/// fields it does not know, so that later CAs can add some.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayPublicAddr {
    /// `HOST:PORT`, or `None` when the CA has no `[gateway] public_addr` (then `postern login`
    /// writes no `ProxyJump`).
    #[serde(default)]
    pub public_addr: Option<String>,
    /// Every address users are told to use, in order (the first is `public_addr`), when the
    /// CA has several; absent from a CA of an earlier version, which had one at most.
    #[serde(default)]
    pub public_addrs: Vec<String>,
}

impl GatewayPublicAddr {
    /// Every address users are told to use: `public_addrs`, or `public_addr` from a CA of an
    /// earlier version.
    pub fn all(&self) -> Vec<String> {
        if self.public_addrs.is_empty() {
            self.public_addr.iter().cloned().collect()
        } else {
            self.public_addrs.clone()
        }
    }
}

/// `POST /v1/gateway/authorize` (mTLS, gateway identity): the CA checks policy (the user may
/// use `login` on `node`'s labels, no lock applies, the user certificate is not revoked) and
/// signs a short-lived node-access certificate for exactly that login, key id `USER/SESSION`.
/// A refusal is a 403 whose message the gateway shows the user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    /// The Postern user (the user certificate's key id).
    pub user: Username,
    /// The user certificate the user authenticated with (OpenSSH line): the CA validates it
    /// again (its own user CA, type, validity, key id, serial on record, not revoked), so a
    /// gateway cannot act for a user it holds no certificate of.
    pub user_certificate: String,
    /// The OS login asked for.
    pub login: Login,
    /// The server.
    pub node: crate::names::NodeName,
    /// Session id chosen by the gateway.
    pub session_id: crate::ids::SessionId,
    /// The gateway's ephemeral public key to certify (OpenSSH line).
    pub public_key: String,
}

/// Answer to an authorization.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeResponse {
    /// The node-access certificate (one line), TTL of a few minutes.
    pub certificate: String,
    /// The server as the inventory has it.
    pub node: InventoryEntry,
    /// What the user's roles permit (port forwarding, agent forwarding, pty...).
    pub permits: Vec<crate::policy::Permit>,
    /// Recording mode.
    pub recording: crate::policy::RecordingMode,
    /// Whether input is recorded too.
    pub record_input: bool,
}

/// `POST /v1/gateway/host-cert` (mTLS, gateway identity): a host certificate for a joined
/// server's names, for the gateway's own key, presented on the inner connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostCertRequest {
    /// The server.
    pub node: crate::names::NodeName,
    /// The gateway's inner host public key (OpenSSH line).
    pub public_key: String,
}

/// Answer to a host-certificate request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostCertResponse {
    /// The certificate (principals: NAME, NAME.<cluster>, the address's host).
    pub certificate: String,
    /// Its `valid_before`.
    pub valid_before: u64,
}

/// A recording's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingMeta {
    /// The recording's id (its session's, or `<session>-N` for a further channel).
    pub id: crate::ids::RecordingId,
    /// Postern user.
    pub user: Username,
    /// OS login.
    pub login: Login,
    /// Server.
    pub node: crate::names::NodeName,
    /// The gateway that recorded it.
    pub gateway: String,
    /// Unix start time.
    pub started_at: u64,
    /// Unix end time.
    pub ended_at: u64,
    /// True when the gateway died during the session and completed the file at restart.
    pub interrupted: bool,
    /// Size of the asciicast file in bytes.
    pub bytes: u64,
}

/// `POST /v1/gateway/recordings` (mTLS, gateway identity): one finished recording in one
/// request, at most 256 MiB. Idempotent by id (a retried upload replaces nothing and answers
/// OK). Gateways now upload with [`RecordingUploadStatus`] and [`RecordingComplete`]; this
/// stays for gateways of earlier versions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingUpload {
    /// Metadata (`bytes` = `cast.len()`; `gateway` is ignored: the CA uses the caller's name).
    pub meta: RecordingMeta,
    /// The asciicast v2 text.
    pub cast: String,
}

/// `GET /v1/gateway/recordings/ID` and the answer to every chunk
/// (`PUT /v1/gateway/recordings/ID/chunks?offset=N`): where a resumable upload stands.
///
/// The protocol: the gateway asks where the upload stands, sends the rest of the file from
/// `received` in chunks of at most `chunk_bytes`, each with its offset, and completes it with
/// [`RecordingComplete`]. A chunk at `offset == received` is appended; a chunk that only
/// repeats bytes already received (a retry) is accepted and changes nothing; any other offset
/// is refused with 409 and the gateway asks again. Nothing is visible before the completion.
/// Every upload route refuses (403) an id that belongs to no session the CA authorized for
/// this gateway (`<id>-N`, N >= 2, belongs to session `<id>`), and a chunk that would make the
/// gateway's unfinished uploads hold more than 4 × `max_bytes` is answered 507.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingUploadStatus {
    /// The recording's id.
    pub id: crate::ids::RecordingId,
    /// Bytes the CA holds durably: the next chunk starts here.
    pub received: u64,
    /// Whether the recording is complete and stored (then nothing more is accepted for it).
    pub complete: bool,
    /// The largest chunk the CA accepts.
    pub chunk_bytes: u64,
    /// The largest recording the CA accepts.
    pub max_bytes: u64,
}

/// `POST /v1/gateway/recordings/ID/complete` (mTLS, gateway identity): makes a recording whose
/// bytes were all sent visible, atomically. Idempotent: completing a stored recording again
/// with the same SHA-256 answers what is stored; a stored recording is never replaced.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingComplete {
    /// Metadata (`id` = the id in the path, `bytes` = the total size; `gateway` is ignored).
    pub meta: RecordingMeta,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn regression_a_refused_user_name_is_not_repeated_in_the_error() {
        let body = r#"{"user":"Hunter2!secret","password":"x","otp":"1","public_key":"k"}"#;
        let e = serde_json::from_str::<LoginRequest>(body)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid user name"), "{e}");
        assert!(!e.contains("Hunter2"), "{e}");
        let body = r#"{"user":"Hunter2!secret","invite":"i","password":"x"}"#;
        let e = serde_json::from_str::<EnrollRequest>(body)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("Hunter2"), "{e}");
        let body = r#"{"user":"alice","password":"x","otp":"1","public_key":"k"}"#;
        let ok = serde_json::from_str::<LoginRequest>(body).unwrap();
        assert_eq!(ok.user.as_str(), "alice");
    }

    #[test]
    fn a_secret_is_a_plain_string_on_the_wire_and_hidden_in_debug() {
        let req: EnrollResponse = serde_json::from_str(r#"{"otpauth_uri":"otpauth://x"}"#).unwrap();
        assert_eq!(req.otpauth_uri.expose_secret(), "otpauth://x");
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"otpauth_uri":"otpauth://x"}"#
        );
        assert_eq!(
            format!("{req:?}"),
            "EnrollResponse { otpauth_uri: Secret(***) }"
        );
        assert_eq!(Secret::default().expose_secret(), "");
    }

    #[test]
    fn secrets_compare_by_value() {
        let a = Secret::new("pw word".to_owned());
        assert!(bool::from(a.ct_eq(&a.clone())));
        assert!(!bool::from(a.ct_eq(&Secret::new("pw wore".to_owned()))));
        assert!(!bool::from(a.ct_eq(&Secret::new("pw".to_owned()))));
        assert!(!bool::from(a.ct_eq(&Secret::default())));
    }
}
