//! Servers and gateways: join tokens, joining, the per-node bundle (policy slice, locks,
//! KRL, CA keys), host-certificate renewal, session events, locks, and the admin's
//! break-glass signer. Each operation is one transaction with its audit events.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Result};
use base64::Engine;
use postern_core::api::{Bundle, JoinRequest, JoinResponse, LockEntry, NodeEvent, SyncResponse};
use postern_core::cert::{issue_host_cert, issue_user_cert, IssueParams, Signer};
use postern_core::krl::{CaRevocations, Krl};
use postern_core::{KeyId, Labels, Login, NodeName, Policy, Principal, Ttl, Username};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;
use ssh_key::{HashAlg, PublicKey};

use crate::audit;
use crate::auth;
use crate::keys::{CaKind, KeyStore};
use crate::service::{now, Refusal, Service};

/// Tokens are 40 lowercase hex digits (160 random bits).
pub const TOKEN_LEN: usize = 40;

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Whether a string has the token alphabet and length (checked before any lookup).
pub fn token_well_formed(t: &str) -> bool {
    t.len() == TOKEN_LEN
        && t.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A key the host CA may certify: Ed25519 only (what postern-shim and postern-gate generate;
/// no DSA, no short RSA, nothing weaker than ssh-keygen's default).
pub(crate) fn parse_host_key(line: &str, what: &str) -> std::result::Result<PublicKey, Refusal> {
    let k = parse_key(line, what)?;
    if k.algorithm() != ssh_key::Algorithm::Ed25519 {
        return Err(Refusal::BadRequest(format!(
            "{what} must be an Ed25519 key (the host CA signs no {})",
            k.algorithm().as_str()
        )));
    }
    Ok(k)
}

pub(crate) fn parse_key(line: &str, what: &str) -> std::result::Result<PublicKey, Refusal> {
    if line.len() > 8192 {
        return Err(Refusal::BadRequest(format!("{what} is too long")));
    }
    PublicKey::from_openssh(line.trim())
        .map_err(|_| Refusal::BadRequest(format!("{what} is not an OpenSSH public key")))
}

/// Active locks at `now`.
pub fn active_locks(conn: &Connection, now: u64) -> Result<Vec<LockEntry>> {
    let mut st = conn.prepare(
        "SELECT id, target, name, expires, reason FROM locks WHERE expires IS NULL OR expires > ?1 ORDER BY id",
    )?;
    let rows = st.query_map([i(now)], |r| {
        Ok(LockEntry {
            id: r.get(0)?,
            target: r.get(1)?,
            name: r.get(2)?,
            expires: r.get::<_, Option<i64>>(3)?.map(u),
            reason: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The KRL from the database: revoked certificates, and every live certificate of a locked
/// user (under the user and node-access CAs, by serial and by key id). Lifting the lock lifts
/// the revocation at the next build.
pub fn build_krl(conn: &Connection, keys: &KeyStore, now: u64) -> Result<Krl> {
    let blob = |k: CaKind| keys.ssh(k).public_key().to_bytes();
    let mut certs: BTreeMap<Vec<u8>, CaRevocations> = BTreeMap::new();
    let kind_ca = |kind: &str| match kind {
        "ssh-user" => Some(CaKind::User),
        "ssh-host" => Some(CaKind::Host),
        "ssh-node-access" => Some(CaKind::NodeAccess),
        _ => None,
    };
    let locks = active_locks(conn, now)?;
    let locked_users: BTreeSet<&str> = locks
        .iter()
        .filter(|l| l.target == "user")
        .map(|l| l.name.as_str())
        .collect();
    let mut st = conn.prepare(
        "SELECT serial, kind, subject, revoked FROM certs WHERE valid_before > ?1 AND kind LIKE 'ssh-%'",
    )?;
    let mut rows = st.query([i(now)])?;
    while let Some(r) = rows.next()? {
        let serial: i64 = r.get(0)?;
        let kind: String = r.get(1)?;
        let subject: String = r.get(2)?;
        let revoked: bool = r.get(3)?;
        let Some(ca) = kind_ca(&kind) else { continue };
        let by_lock = ca != CaKind::Host && locked_users.contains(subject.as_str());
        if revoked || by_lock {
            certs
                .entry(blob(ca)?)
                .or_default()
                .serials
                .insert(u(serial));
        }
    }
    for user in &locked_users {
        for ca in [CaKind::User, CaKind::NodeAccess] {
            certs
                .entry(blob(ca)?)
                .or_default()
                .key_ids
                .insert((*user).to_owned());
        }
    }
    Ok(Krl {
        version: now,
        generated: now,
        comment: "postern".into(),
        certs,
        keys: BTreeSet::new(),
    })
}

/// The addresses gateways dial servers from: each gateway's configured egress addresses, or
/// the address the CA saw it join from.
pub fn gateway_addresses(conn: &Connection) -> Result<Vec<String>> {
    let mut st = conn.prepare("SELECT egress, seen_from FROM nodes WHERE kind = 'gateway'")?;
    let mut rows = st.query([])?;
    let mut out = BTreeSet::new();
    while let Some(r) = rows.next()? {
        let egress: Option<String> = r.get(0)?;
        let seen: Option<String> = r.get(1)?;
        let list = egress
            .filter(|e| !e.is_empty())
            .or(seen)
            .unwrap_or_default();
        for a in list.split(',').filter(|a| !a.is_empty()) {
            // Stored validated; parsed again so that nothing else reaches sshd_config.
            if let Ok(a) = postern_core::names::parse_source_address(a) {
                out.insert(a);
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The bundle for one node.
pub fn build_bundle(
    conn: &Connection,
    keys: &KeyStore,
    policy: &Policy,
    cluster: &postern_core::ClusterName,
    node: &NodeName,
    labels: &Labels,
    now: u64,
) -> Result<Bundle> {
    let krl = build_krl(conn, keys, now)?;
    Ok(Bundle {
        gateway_addresses: gateway_addresses(conn)?,
        cluster: cluster.clone(),
        node: node.clone(),
        labels: labels.clone(),
        generated_at: now,
        max_bundle_age: policy.defaults().max_bundle_age,
        allowed: policy.slice_for_node(labels),
        locks: active_locks(conn, now)?,
        krl: base64::engine::general_purpose::STANDARD.encode(krl.encode()),
        user_ca_keys: vec![keys.public_line(CaKind::User)?],
        host_ca_keys: vec![keys.public_line(CaKind::Host)?],
        node_access_ca_keys: vec![keys.public_line(CaKind::NodeAccess)?],
        audit_checkpoint: None,
    })
}

/// How far before its arrival a reported event's time may lie: a server's spool or a
/// gateway's journal delivers events late after an outage, but not by more than this.
pub const REPORTED_TS_WINDOW: u64 = 24 * 3600;

/// The time an event reported by a node or gateway is logged at: the reported time clamped to
/// `[arrival - REPORTED_TS_WINDOW, arrival]`, so a reporter can neither date events into the
/// future nor bury them in the past (the reported time stays in the detail).
pub fn clamp_reported_ts(reported: u64, arrival: u64) -> u64 {
    reported.clamp(arrival.saturating_sub(REPORTED_TS_WINDOW), arrival)
}

/// Issues a host certificate for a node's own key and records it (subject and key id: the
/// node's name).
fn host_cert(
    conn: &Connection,
    keys: &KeyStore,
    name: &NodeName,
    principals: &[Principal],
    host_key: &PublicKey,
    ttl: u64,
    now: u64,
) -> Result<(String, u64)> {
    let key_id: KeyId = name.as_str().parse()?;
    host_cert_as(conn, keys, &key_id, principals, host_key, ttl, now)
}

/// Issues a host certificate and records it with `key_id` as its subject. Returns the
/// certificate line and its `valid_before`; the serial is `conn.last_insert_rowid()`.
pub(crate) fn host_cert_as(
    conn: &Connection,
    keys: &KeyStore,
    key_id: &KeyId,
    principals: &[Principal],
    host_key: &PublicKey,
    ttl: u64,
    now: u64,
) -> Result<(String, u64)> {
    let valid_before = now + ttl;
    let joined: Vec<&str> = principals.iter().map(|p| p.as_str()).collect();
    let serial = crate::db::record_cert(
        conn,
        &crate::db::CertRow {
            kind: "ssh-host",
            subject: key_id.as_str(),
            principals: &joined.join(","),
            valid_after: now.saturating_sub(60),
            valid_before,
            issued_at: now,
            fingerprint: &host_key.fingerprint(HashAlg::Sha256).to_string(),
        },
    )?;
    let cert = issue_host_cert(
        &keys.host,
        key_id,
        principals,
        host_key,
        ttl,
        IssueParams { serial, now },
    )?;
    Ok((cert.to_openssh()?, valid_before))
}

/// The names a node's host certificate carries: NAME, NAME.<cluster>, and the host part of
/// its address when that is a valid principal.
pub(crate) fn host_principals(
    name: &NodeName,
    cluster: &str,
    address: Option<&str>,
) -> Result<Vec<Principal>> {
    let mut out = vec![name.as_str().parse()?, format!("{name}.{cluster}").parse()?];
    add_address_principal(&mut out, address);
    Ok(out)
}

/// Adds the principal ssh checks at `address` (its host, lowercased), when it has one.
fn add_address_principal(out: &mut Vec<Principal>, address: Option<&str>) {
    if let Some(p) = address.and_then(|a| postern_core::names::address_principal(a).ok()) {
        if !out.contains(&p) {
            out.push(p);
        }
    }
}

/// Why a join with a valid token must be refused, if it must: the token joins exactly the
/// name it was made for, replaces an existing holder of that name only when made with
/// `--replace`, never turns a node into a gateway or the reverse, and sets the complete label
/// set (a node that asks for labels the token does not give is refused rather than silently
/// relabelled). `existing` is the kind of whatever already has the name.
pub(crate) fn join_refusal(
    token_kind: &str,
    token_name: Option<&str>,
    replace: bool,
    token_labels: &Labels,
    req: &JoinRequest,
    existing: Option<&str>,
    cluster: &str,
) -> Option<String> {
    let name = req.name.as_str();
    let Some(token_name) = token_name else {
        return Some(
            "this token was made before tokens were bound to a name; make a new one with `posternd tokens add --name`"
                .into(),
        );
    };
    if token_name != name {
        return Some(format!(
            "this token is for the name {token_name:?}, not {name:?}"
        ));
    }
    // Users reach servers as NAME.<cluster>: no node may be named like the cluster itself.
    if cluster.split('.').next() == Some(name) {
        return Some(format!("the name {name:?} is the cluster's own"));
    }
    match existing {
        Some(k) if k != token_kind => {
            return Some(format!(
                "the name {name:?} belongs to a {k}, and a {token_kind} never replaces a {k}"
            ))
        }
        Some(_) if !replace => {
            return Some(format!(
                "a {token_kind} named {name:?} is already joined; replacing it needs a token made with `posternd tokens add --kind {token_kind} --name {name} --replace`"
            ))
        }
        _ => {}
    }
    let asked: Vec<String> = req
        .labels
        .iter()
        .filter(|(k, v)| token_labels.get(k) != Some(*v))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !asked.is_empty() {
        return Some(format!(
            "the token sets this node's labels ({}); it does not give {}",
            if token_labels.is_empty() {
                "none".to_owned()
            } else {
                token_labels.to_string()
            },
            asked.join(",")
        ));
    }
    None
}

impl Service {
    /// `tokens add`: a single-use join token.
    pub async fn tokens_add(
        &self,
        kind: &str,
        name: NodeName,
        replace: bool,
        labels: Labels,
        ttl: Ttl,
        actor: String,
    ) -> Result<serde_json::Value> {
        if kind != "node" && kind != "gateway" {
            bail!("token kind must be node or gateway");
        }
        let (token, hash) = auth::new_invite()?;
        let id = hash[..12].to_owned();
        let now = now();
        let expires = now + ttl.as_secs();
        let (kind, labels_s, id2) = (kind.to_owned(), labels.to_string(), id.clone());
        let (kind2, name2) = (kind.clone(), name.to_string());
        self.db
            .run(move |c| {
                c.execute(
                    "INSERT INTO tokens (id, hash, kind, labels, expires, created_at, name, replace) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![id2, hash, kind2, labels_s, i(expires), i(now), name2, replace],
                )?;
                // The token itself is never logged or audited: only its id.
                audit::append(c, now, "token.added", &actor, json!({ "id": id2, "kind": kind2, "name": name2, "replace": replace, "labels": labels_s, "expires": expires }))
            })
            .await?;
        Ok(
            json!({ "token": token, "id": id, "kind": kind, "name": name.to_string(), "replace": replace, "labels": labels.to_string(), "expires_at": expires }),
        )
    }

    /// `tokens ls`.
    pub async fn tokens_ls(&self) -> Result<serde_json::Value> {
        let now = now();
        self.db
            .run(move |c| {
                let mut st = c.prepare("SELECT id, kind, labels, expires, name, replace FROM tokens WHERE expires > ?1 ORDER BY created_at")?;
                let rows = st
                    .query_map([i(now)], |r| {
                        Ok(json!({ "id": r.get::<_, String>(0)?, "kind": r.get::<_, String>(1)?, "labels": r.get::<_, String>(2)?, "expires_at": r.get::<_, i64>(3)?, "name": r.get::<_, Option<String>>(4)?, "replace": r.get::<_, bool>(5)? }))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(serde_json::Value::Array(rows))
            })
            .await
    }

    /// `tokens rm TOKEN` (the token or its id).
    pub async fn tokens_rm(&self, token: String, actor: String) -> Result<serde_json::Value> {
        let hash = auth::invite_hash(&token);
        let now = now();
        self.db
            .run(move |c| {
                let n = c.execute(
                    "DELETE FROM tokens WHERE hash = ?1 OR id = ?2",
                    params![hash, token],
                )?;
                if n == 0 {
                    bail!("no such token");
                }
                audit::append(c, now, "token.removed", &actor, json!({}))?;
                Ok(json!({ "removed": n }))
            })
            .await
    }

    /// `POST /v1/join`.
    pub async fn join(
        &self,
        req: JoinRequest,
        remote: String,
        source: crate::limits::Source,
    ) -> std::result::Result<JoinResponse, Refusal> {
        let host_key = parse_host_key(&req.host_public_key, "host_public_key")?;
        let ident = parse_key(&req.identity_public_key, "identity_public_key")?;
        if let Some(a) = &req.address {
            postern_core::names::parse_host_port(a)
                .map_err(|e| Refusal::BadRequest(e.to_string()))?;
        }
        if req.egress_addresses.len() > 16 {
            return Err(Refusal::BadRequest("at most 16 egress addresses".into()));
        }
        let egress = req
            .egress_addresses
            .iter()
            .map(|a| postern_core::names::parse_source_address(a))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Refusal::BadRequest(e.to_string()))?;
        // Every server exempts these from sshd's penalties and node-access certificates are
        // bound to them: a gateway may not claim half the Internet.
        if let Some(wide) = egress.iter().find(|a| {
            a.split_once('/').is_some_and(|(ip, len)| {
                let len: u8 = len.parse().unwrap_or(0);
                if ip.contains(':') {
                    len < 48
                } else {
                    len < 16
                }
            })
        }) {
            return Err(Refusal::BadRequest(format!(
                "egress address {wide} is wider than a /16 (IPv4) or /48 (IPv6)"
            )));
        }
        let egress = egress.join(",");
        let seen_from = postern_core::names::parse_source_address(&remote).ok();
        let ident_ed = ident
            .key_data()
            .ed25519()
            .map(|k| k.0)
            .ok_or_else(|| Refusal::BadRequest("identity_public_key must be Ed25519".into()))?;
        let well_formed = token_well_formed(req.token.expose());
        let hash = auth::invite_hash(req.token.expose());
        let now = now();
        let policy = self.policy();
        let keys = std::sync::Arc::clone(&self.keys);
        let cluster = self.cluster.clone();
        let public_addr = self.gateway.clone();
        let failures = std::sync::Arc::clone(&self.limits.failures);
        self.db
            .run(move |c| -> Result<std::result::Result<JoinResponse, Refusal>> {
                let row: Option<(String, String, i64, Option<String>, bool)> = if well_formed {
                    c.query_row("SELECT kind, labels, expires, name, replace FROM tokens WHERE hash = ?1", [&hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                        .optional()?
                } else {
                    None
                };
                let reason = match &row {
                    None if !well_formed => Some("malformed token"),
                    None => Some("unknown or already used token"),
                    Some((_, _, exp, _, _)) if u(*exp) <= now => Some("expired token"),
                    Some(_) => None,
                };
                if let Some(reason) = reason {
                    // Counted in the source's summary (without the token), not audited one
                    // by one: anybody can send tokens.
                    failures.record(source, crate::limits::FailureKind::Join, reason, None, now);
                    return Ok(Err(Refusal::Forbidden("join refused: invalid, expired or already used token".into())));
                }
                let Some((kind, token_labels, _, token_name, replace)) = row else { unreachable!() };
                let tl: Labels = token_labels.parse()?;
                let existing: Option<String> = c
                    .query_row("SELECT kind FROM nodes WHERE name = ?1", [req.name.as_str()], |r| r.get(0))
                    .optional()?;
                if let Some(refusal) = join_refusal(&kind, token_name.as_deref(), replace, &tl, &req, existing.as_deref(), cluster.as_str()) {
                    // A refused token stays unused: it was not spent on the wrong name. The
                    // attempt is audited (without the token).
                    audit::append(c, now, "join.refused", &format!("{}@{remote}", req.name), json!({
                        "reason": refusal, "token_name": token_name, "token_kind": kind, "existing": existing,
                    }))?;
                    return Ok(Err(Refusal::Forbidden(format!("join refused: {refusal}"))));
                }
                c.execute("DELETE FROM tokens WHERE hash = ?1", [&hash])?;
                // The token's labels are the node's complete label set (join_refusal checked
                // that the node asked for none of its own).
                let labels = tl;
                // A re-join replaces the node: its old certificates stop working.
                c.execute("UPDATE certs SET revoked = 1 WHERE subject = ?1 AND kind IN ('ssh-host', 'x509-node')", [req.name.as_str()])?;
                // A gateway's host certificates for servers' names go with it.
                c.execute("UPDATE certs SET revoked = 1 WHERE kind = 'ssh-host' AND subject LIKE 'gateway:' || ?1 || '/%'", [req.name.as_str()])?;
                c.execute("DELETE FROM nodes WHERE name = ?1", [req.name.as_str()])?;
                // A server's certificate names only the server (NAME, NAME.<cluster>): its
                // self-declared address proves nothing, and would let it claim another host's
                // name. A gateway's also names the address it was joined with and the one
                // users are told to dial: posternd.toml's `[gateway] public_addr` (what
                // `postern login` writes as ProxyJump), whatever --address said.
                let mut principals = host_principals(&req.name, cluster.as_str(), req.address.as_deref().filter(|_| kind == "gateway"))?;
                if kind == "gateway" {
                    add_address_principal(&mut principals, public_addr.as_deref());
                }
                let ttl = policy.defaults().host_cert_ttl.as_secs();
                let (cert, expiry) = host_cert(c, &keys, &req.name, &principals, &host_key, ttl, now)?;
                let ident_serial = crate::db::record_cert(c, &crate::db::CertRow {
                    kind: "x509-node", subject: req.name.as_str(), principals: "",
                    valid_after: now - 60, valid_before: now + 365 * 86_400, issued_at: now,
                    fingerprint: &ident.fingerprint(HashAlg::Sha256).to_string(),
                })?;
                let x509 = keys.service.issue_client_cert(&format!("{kind}:{}", req.name), &ident_ed, ident_serial, now - 60, now + 365 * 86_400)?;
                c.execute(
                    "INSERT INTO nodes (name, kind, address, labels, joined_at, host_key, host_cert_expiry, identity_serial, egress, seen_from) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![req.name.as_str(), kind, req.address, labels.to_string(), i(now), host_key.to_openssh()?, i(expiry), i(ident_serial), (kind == "gateway").then_some(&egress), (kind == "gateway").then_some(&seen_from)],
                )?;
                audit::append(c, now, "node.joined", &format!("{kind}:{}", req.name), json!({ "address": req.address, "labels": labels.to_string(), "remote": remote }))?;
                let bundle = build_bundle(c, &keys, &policy, &cluster, &req.name, &labels, now)?;
                Ok(Ok(JoinResponse {
                    cluster: cluster.clone(),
                    kind,
                    labels,
                    host_certificate: cert,
                    x509_certificate: x509,
                    x509_ca: keys.service.cert_pem.clone(),
                    bundle,
                }))
            })
            .await?
    }

    /// Checks a node's mTLS identity; returns its name, labels and kind (`node`/`gateway`).
    pub(crate) fn node_for(
        c: &Connection,
        id: &crate::x509::ClientIdentity,
    ) -> Result<Option<(NodeName, Labels, String)>> {
        let Some((kind, name)) = id.subject.split_once(':') else {
            return Ok(None);
        };
        let row: Option<(String, i64, String)> = c
            .query_row(
                "SELECT labels, identity_serial, kind FROM nodes WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let revoked: Option<bool> = c
            .query_row(
                "SELECT revoked FROM certs WHERE serial = ?1 AND kind = 'x509-node'",
                [i(id.serial)],
                |r| r.get(0),
            )
            .optional()?;
        match (row, revoked) {
            (Some((labels, serial, k)), Some(false)) if u(serial) == id.serial && k == kind => {
                Ok(Some((
                    postern_core::names::parse_node_name(name)?,
                    labels.parse()?,
                    k,
                )))
            }
            _ => Ok(None),
        }
    }

    /// `POST /v1/node/sync`.
    pub async fn node_sync(
        &self,
        id: crate::x509::ClientIdentity,
        req: postern_core::api::SyncRequest,
    ) -> std::result::Result<SyncResponse, Refusal> {
        let host_key = req
            .host_public_key
            .as_deref()
            .map(|k| parse_host_key(k, "host_public_key"))
            .transpose()?;
        let now = now();
        let policy = self.policy();
        let keys = std::sync::Arc::clone(&self.keys);
        let cluster = self.cluster.clone();
        self.db
            .run(move |c| -> Result<std::result::Result<SyncResponse, Refusal>> {
                let Some((name, labels, kind)) = Self::node_for(c, &id)? else {
                    return Ok(Err(Refusal::Forbidden("this node's identity is not valid (removed or re-joined); run `postern-shim join` again".into())));
                };
                // The bundle is a server's: a gateway has no use for the policy slice, and its
                // identity must not renew host certificates through this door.
                if kind != "node" {
                    return Ok(Err(Refusal::Forbidden("only a joined server may sync; this identity is a gateway's".into())));
                }
                c.execute("UPDATE nodes SET last_sync = ?2 WHERE name = ?1", params![name.as_str(), i(now)])?;
                let mut host_certificate = None;
                if let (Some((_after, before)), Some(key)) = (req.host_cert_window, host_key) {
                    let stored: String = c.query_row("SELECT host_key FROM nodes WHERE name = ?1", [name.as_str()], |r| r.get(0))?;
                    // Renew when a third of the certificate's life or less is left. The life is
                    // the policy's TTL, not the window: valid_after is backdated for clock skew.
                    let life = policy.defaults().host_cert_ttl.as_secs();
                    let due = req.renew || before.saturating_sub(now) * 3 <= life;
                    if due && PublicKey::from_openssh(&stored).ok().as_ref() == Some(&key) {
                        let principals = host_principals(&name, cluster.as_str(), None)?;
                        let (cert, expiry) = host_cert(c, &keys, &name, &principals, &key, policy.defaults().host_cert_ttl.as_secs(), now)?;
                        c.execute("UPDATE nodes SET host_cert_expiry = ?2 WHERE name = ?1", params![name.as_str(), i(expiry)])?;
                        audit::append(c, now, "host_cert.renewed", &format!("node:{name}"), json!({ "valid_before": expiry }))?;
                        host_certificate = Some(cert);
                    }
                }
                let mut bundle = build_bundle(c, &keys, &policy, &cluster, &name, &labels, now)?;
                // Only a shim that asked gets the checkpoint: older shims refuse unknown fields.
                if req.audit_checkpoint {
                    let key = audit::installed_public_key()?;
                    bundle.audit_checkpoint = audit::newest_checkpoint(c)?.filter(|cp| key.checks(cp));
                }
                Ok(Ok(SyncResponse { bundle, host_certificate }))
            })
            .await?
    }

    /// `POST /v1/node/events`.
    pub async fn node_events(
        &self,
        id: crate::x509::ClientIdentity,
        events: Vec<NodeEvent>,
    ) -> std::result::Result<usize, Refusal> {
        if events.len() > 1000 {
            return Err(Refusal::BadRequest(
                "at most 1000 events per request".into(),
            ));
        }
        let now = now();
        self.db
            .run(move |c| -> Result<std::result::Result<usize, Refusal>> {
                let Some((name, _, kind)) = Self::node_for(c, &id)? else {
                    return Ok(Err(Refusal::Forbidden(
                        "this node's identity is not valid".into(),
                    )));
                };
                if let Some(e) = events.iter().find(|e| !reportable(&kind, &e.kind)) {
                    return Ok(Err(Refusal::BadRequest(format!(
                        "unknown event kind {:?}",
                        e.kind.chars().take(40).collect::<String>()
                    ))));
                }
                // The actor is who reported the event, from its mTLS identity; the user it
                // names is only its claim and stays in the detail (`user`), with the reported
                // time (`ts`). Events are logged in the order they arrived.
                let actor = format!("{kind}:{name}");
                for e in &events {
                    // A gateway sends its journal again after a crash between our answer
                    // and its removal of the segment: an event id seen before is dropped.
                    if kind == "gateway" && !first_report(c, name.as_str(), e, now)? {
                        continue;
                    }
                    let mut detail = serde_json::to_value(e)?;
                    if let Some(m) = detail.as_object_mut() {
                        // Who reported it: a server's events name the server, a gateway's
                        // carry the server inside their own detail.
                        m.insert(kind.clone(), json!(name.as_str()));
                        m.insert("received".into(), json!(now));
                    }
                    audit::append(c, clamp_reported_ts(e.ts, now), &e.kind, &actor, detail)?;
                }
                Ok(Ok(events.len()))
            })
            .await?
    }

    /// `nodes ls`.
    pub async fn nodes_ls(&self, kind: Option<&'static str>) -> Result<serde_json::Value> {
        self.db
            .run(move |c| {
                let mut st = c.prepare("SELECT name, kind, address, labels, joined_at, last_sync, host_cert_expiry FROM nodes WHERE ?1 IS NULL OR kind = ?1 ORDER BY name")?;
                let rows = st
                    .query_map([kind], |r| {
                        Ok(json!({
                            "name": r.get::<_, String>(0)?, "kind": r.get::<_, String>(1)?, "address": r.get::<_, Option<String>>(2)?,
                            "labels": r.get::<_, String>(3)?, "joined_at": r.get::<_, i64>(4)?, "last_sync": r.get::<_, Option<i64>>(5)?,
                            "host_cert_expiry": r.get::<_, Option<i64>>(6)?,
                        }))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(serde_json::Value::Array(rows))
            })
            .await
    }

    /// `nodes rm NAME`: the node's identity and host certificates stop working at once.
    pub async fn nodes_rm(&self, name: String, actor: String) -> Result<serde_json::Value> {
        let now = now();
        self.db
            .run(move |c| {
                let n = c.execute("DELETE FROM nodes WHERE name = ?1", [&name])?;
                if n == 0 {
                    bail!("no node {name}");
                }
                let revoked = c.execute("UPDATE certs SET revoked = 1 WHERE subject = ?1 AND kind IN ('ssh-host', 'x509-node') AND revoked = 0", [&name])?
                    + c.execute("UPDATE certs SET revoked = 1 WHERE kind = 'ssh-host' AND subject LIKE 'gateway:' || ?1 || '/%' AND revoked = 0", [&name])?;
                audit::append(c, now, "node.removed", &actor, json!({ "node": name, "revoked_certs": revoked }))?;
                Ok(json!({ "node": name, "removed": true, "revoked_certs": revoked }))
            })
            .await
    }

    /// `lock add`.
    pub async fn lock_add(
        &self,
        target: &str,
        name: String,
        ttl: Option<Ttl>,
        reason: String,
        actor: String,
    ) -> Result<serde_json::Value> {
        match target {
            "user" => drop(name.parse::<Username>()?),
            "login" => drop(name.parse::<Login>()?),
            "node" => drop(postern_core::names::parse_node_name(&name)?),
            _ => bail!("lock target must be user, login or node"),
        }
        if reason.trim().is_empty() || reason.len() > 512 {
            bail!("--reason must be 1 to 512 characters");
        }
        let now = now();
        let expires = ttl.map(|t| now + t.as_secs());
        let target = target.to_owned();
        self.db
            .run(move |c| {
                c.execute(
                    "INSERT INTO locks (target, name, reason, created_at, expires, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![target, name, reason, i(now), expires.map(i), actor],
                )?;
                let id = c.last_insert_rowid();
                audit::append(c, now, "lock.added", &actor, json!({ "id": id, "target": target, "name": name, "reason": reason, "expires": expires }))?;
                Ok(json!({ "id": id, "target": target, "name": name, "expires": expires }))
            })
            .await
    }

    /// `lock ls`.
    pub async fn lock_ls(&self) -> Result<serde_json::Value> {
        let now = now();
        let locks = self.db.run(move |c| active_locks(c, now)).await?;
        Ok(serde_json::to_value(locks)?)
    }

    /// `lock rm ID`.
    pub async fn lock_rm(&self, id: i64, actor: String) -> Result<serde_json::Value> {
        let now = now();
        self.db
            .run(move |c| {
                let n = c.execute("DELETE FROM locks WHERE id = ?1", [id])?;
                if n == 0 {
                    bail!("no lock {id}");
                }
                audit::append(c, now, "lock.removed", &actor, json!({ "id": id }))?;
                Ok(json!({ "id": id, "removed": true }))
            })
            .await
    }

    /// `certs sign`: the admin's break-glass signer, capped by policy and audited.
    #[allow(clippy::too_many_arguments)]
    pub async fn certs_sign(
        &self,
        ca: &str,
        key_line: String,
        principals: Vec<String>,
        user: Option<String>,
        ttl: Option<Ttl>,
        actor: String,
    ) -> Result<serde_json::Value> {
        let key = PublicKey::from_openssh(key_line.trim())
            .map_err(|_| anyhow!("--key is not an OpenSSH public key"))?;
        let kind = CaKind::ALL
            .into_iter()
            .find(|k| k.as_str() == ca)
            .ok_or_else(|| anyhow!("--ca must be user, host or node-access"))?;
        let now = now();
        let policy = self.policy();
        let keys = std::sync::Arc::clone(&self.keys);
        self.db
            .run(move |c| {
                let (cert, serial, valid_before, subject) = if kind == CaKind::Host {
                    let ps = principals.iter().map(|p| p.parse::<Principal>()).collect::<Result<Vec<_>, _>>()?;
                    let name = postern_core::names::parse_node_name(principals.first().map_or("", |s| s.split('.').next().unwrap_or("")))?;
                    let t = ttl.map_or(policy.defaults().host_cert_ttl, |t| t.min(policy.defaults().host_cert_ttl));
                    let (cert, vb) = host_cert(c, &keys, &name, &ps, &key, t.as_secs(), now)?;
                    let serial = u(c.last_insert_rowid());
                    (cert, serial, vb, name.to_string())
                } else {
                    let logins = principals.iter().map(|p| p.parse::<Login>()).collect::<Result<Vec<_>, _>>()?;
                    let who: Username = user.as_deref().unwrap_or("admin").parse()?;
                    let locks = active_locks(c, now)?;
                    let subject = postern_core::api::LockSubject { user: Some(who.as_str()), ..Default::default() };
                    if let Some(l) = postern_core::api::lock_for(&locks, &subject, now) {
                        bail!("{}", l.describe());
                    }
                    let d = policy.decide_admin_signing(&who, logins, ttl)?;
                    let a = &d.approval;
                    let vb = now + a.ttl().as_secs();
                    let kind_s = if kind == CaKind::User { "ssh-user" } else { "ssh-node-access" };
                    let ps: Vec<&str> = a.logins().iter().map(|l| l.as_str()).collect();
                    let serial = crate::db::record_cert(c, &crate::db::CertRow {
                        kind: kind_s, subject: who.as_str(), principals: &ps.join(","),
                        valid_after: now - 60, valid_before: vb, issued_at: now,
                        fingerprint: &key.fingerprint(HashAlg::Sha256).to_string(),
                    })?;
                    let cert = issue_user_cert(keys.ssh(kind), a, &key, IssueParams { serial, now })?;
                    (cert.to_openssh()?, serial, vb, who.to_string())
                };
                audit::append(c, now, "cert.signed", &actor, json!({ "ca": kind.as_str(), "serial": serial, "subject": subject, "principals": principals, "valid_before": valid_before }))?;
                Ok(json!({ "certificate": cert, "serial": serial, "valid_before": valid_before }))
            })
            .await
    }
}

/// Whether this is the first report of a gateway's event: its `event_id` (gateways of this
/// version put one in every event's detail) had not been seen from that gateway. Events
/// without one (servers, older gateways) are always new.
fn first_report(c: &Connection, gateway: &str, e: &NodeEvent, now: u64) -> Result<bool> {
    let Some(id) = e
        .detail
        .as_ref()
        .and_then(|d| d.get("event_id"))
        .and_then(|v| v.as_str())
        .filter(|id| id.len() <= 64)
    else {
        return Ok(true);
    };
    let n = c.execute(
        "INSERT OR IGNORE INTO gateway_event_ids (gateway, event_id, received) VALUES (?1, ?2, ?3)",
        params![gateway, id, i64::try_from(now)?],
    )?;
    Ok(n == 1)
}

/// Whether a node of `reporter` kind may report events of `kind`. Servers report PAM session
/// events; gateways also report what they saw inside sessions (`gateway.*` such as exec,
/// subsystem, port forwards and refused destinations, and `sftp.*` file operations), but
/// never a kind the CA itself writes.
fn reportable(reporter: &str, kind: &str) -> bool {
    if kind == "session.open" || kind == "session.close" {
        return true;
    }
    let well_formed = kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
    reporter == "gateway"
        && well_formed
        && (kind.starts_with("gateway.") || kind.starts_with("sftp."))
        && kind != "gateway.authorized"
}

/// The logins that `locks` (active ones) lock: issuance leaves them out of a certificate.
pub fn locked_logins(locks: &[LockEntry]) -> Vec<Login> {
    locks
        .iter()
        .filter(|l| l.target == "login")
        .filter_map(|l| l.name.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_times_are_clamped_to_the_window_before_arrival() {
        let arrival = 1_000_000;
        assert_eq!(clamp_reported_ts(arrival - 5, arrival), arrival - 5);
        assert_eq!(clamp_reported_ts(u64::MAX, arrival), arrival);
        assert_eq!(clamp_reported_ts(arrival + 1, arrival), arrival);
        assert_eq!(clamp_reported_ts(0, arrival), arrival - REPORTED_TS_WINDOW);
        assert_eq!(clamp_reported_ts(0, 10), 0);
    }

    #[test]
    fn servers_report_sessions_and_gateways_also_what_they_saw() {
        for k in ["session.open", "session.close"] {
            assert!(reportable("node", k) && reportable("gateway", k), "{k}");
        }
        for k in [
            "gateway.exec",
            "gateway.port_forward_refused",
            "sftp.open",
            "sftp.rename",
        ] {
            assert!(reportable("gateway", k), "{k}");
            assert!(!reportable("node", k), "{k}");
        }
        for k in [
            "gateway.authorized",
            "login.success",
            "lock.added",
            "sftp.Open",
            "sftp.a b",
            "",
        ] {
            assert!(!reportable("gateway", k), "{k:?}");
        }
        assert!(!reportable("gateway", &format!("sftp.{}", "x".repeat(64))));
    }
}
