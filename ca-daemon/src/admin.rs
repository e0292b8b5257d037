//! Admin subcommands over a Unix socket in the data directory. Only root or the daemon's own
//! uid may use it (checked by peer credentials, and the socket file is 0600).
//!
//! Protocol: one JSON request line, one JSON response line. The answers are typed, one per
//! request, in `answers`.

mod answers;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::audit;
use crate::auth;
use crate::keys::CaKind;
use crate::service::{now, Service};
use crate::store::{self, users::UserLine};

pub use answers::*;

/// One admin request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// `users add NAME`
    UsersAdd {
        /// User name.
        name: String,
    },
    /// `users ls`
    UsersLs,
    /// `users rm NAME`
    UsersRm {
        /// User name.
        name: String,
    },
    /// `users reset NAME`
    UsersReset {
        /// User name.
        name: String,
    },
    /// `ca export KIND`
    CaExport {
        /// user, host or node-access.
        ca: String,
    },
    /// `certs ls`
    CertsLs {
        /// How many, newest first.
        limit: u32,
    },
    /// `audit tail`
    AuditTail {
        /// How many events.
        n: u32,
    },
    /// `audit verify`
    AuditVerify {
        /// Checkpoints emitted off the host, signature-checked by the client (checked again).
        #[serde(default)]
        checkpoints: Vec<postern_core::api::AuditCheckpoint>,
    },
    /// `tokens add`
    TokensAdd {
        /// node or gateway.
        kind: String,
        /// The one name that may join with it.
        name: String,
        /// May replace the existing node of that name.
        replace: bool,
        /// k=v,...
        labels: String,
        /// Lifetime.
        ttl: String,
    },
    /// `tokens ls`
    TokensLs,
    /// `tokens rm`
    TokensRm {
        /// The token or its id.
        token: String,
    },
    /// `nodes ls` / `gateways ls`
    NodesLs {
        /// Only this kind.
        kind: Option<String>,
    },
    /// `nodes rm`
    NodesRm {
        /// Node name.
        name: String,
    },
    /// `certs sign`
    CertsSign {
        /// user, host or node-access.
        ca: String,
        /// The public key line.
        key: String,
        /// Principals.
        principals: Vec<String>,
        /// Key id / Postern user.
        user: Option<String>,
        /// Lifetime.
        ttl: Option<String>,
    },
    /// `lock add`
    LockAdd {
        /// user, login or node.
        target: String,
        /// What is locked.
        name: String,
        /// Lifetime.
        ttl: Option<String>,
        /// Why.
        reason: String,
    },
    /// `lock ls`
    LockLs,
    /// `lock rm`
    LockRm {
        /// Lock id.
        id: i64,
    },
    /// `recordings ls`
    RecordingsLs {
        /// Only this Postern user's.
        user: Option<String>,
        /// Only on this server.
        node: Option<String>,
        /// How many, newest first.
        limit: u32,
    },
    /// `policy apply FILE`
    PolicyApply {
        /// The TOML, read by the client.
        text: String,
        /// The file's name, for errors (`file:line:column`).
        file: String,
        /// Refuse unless this version is in force (`--if-version`).
        expected_version: Option<i64>,
        /// Only validate and show the change.
        dry_run: bool,
    },
    /// `policy show`
    PolicyShow {
        /// One version (default: the one in force).
        version: Option<i64>,
    },
    /// `policy history`
    PolicyHistory,
}

/// One admin response: the daemon sends `AdminResponse<AdminAnswer>`, and the client decodes
/// the answer type of the request it sent. Not `Debug`: answers may hold invites and tokens.
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: DeserializeOwned"))]
pub struct AdminResponse<T> {
    /// Whether the command succeeded.
    pub ok: bool,
    /// Its result (`null` when `ok` is false), with sorted keys as it always had.
    #[serde(default = "Option::default", serialize_with = "serialize_sorted")]
    pub data: Option<T>,
    /// The error, when `ok` is false.
    #[serde(default)]
    pub error: Option<String>,
}

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if md.file_type().is_symlink()
            || !std::os::unix::fs::FileTypeExt::is_socket(&md.file_type())
        {
            bail!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves admin connections forever.
pub async fn serve(listener: UnixListener, svc: Arc<Service>) {
    let euid = crate::keys::unsafe_free_geteuid();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let svc = Arc::clone(&svc);
        tokio::spawn(async move {
            let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
            if uid != 0 && uid != euid {
                tracing::warn!(
                    uid,
                    "admin socket: refused a caller that is neither root nor the daemon's user"
                );
                return;
            }
            if let Err(e) = handle(stream, svc, uid).await {
                tracing::warn!(error = %format!("{e:#}"), "admin request failed");
            }
        });
    }
}

async fn handle(stream: UnixStream, svc: Arc<Service>, uid: u32) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r).take(64 * 1024);
    reader.read_to_string(&mut line).await.ok();
    let first = line.lines().next().unwrap_or_default();
    let resp: AdminResponse<AdminAnswer> = match serde_json::from_str::<AdminRequest>(first) {
        Ok(req) => match run(&svc, req, uid).await {
            Ok(data) => AdminResponse {
                ok: true,
                data: Some(data),
                error: None,
            },
            Err(e) => AdminResponse {
                ok: false,
                data: None,
                error: Some(format!("{e:#}")),
            },
        },
        Err(e) => AdminResponse {
            ok: false,
            data: None,
            error: Some(format!("bad request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await?;
    Ok(())
}

async fn run(svc: &Service, req: AdminRequest, uid: u32) -> Result<AdminAnswer> {
    let actor = format!("admin(uid {uid})");
    let now = now();
    match req {
        AdminRequest::UsersAdd { name } => {
            let user: postern_core::Username = name.parse()?;
            let (token, hash) = auth::new_invite()?;
            let expires = now + auth::INVITE_SECS;
            let has_roles = svc
                .policy()
                .users()
                .get(&user)
                .is_some_and(|r| !r.is_empty());
            svc.db
                .run(move |conn| {
                    if store::users::exists(conn, user.as_str())? {
                        bail!("user {user} already exists (use `posternd users reset {user}` for a new invite)");
                    }
                    store::users::add_invited(conn, user.as_str(), &hash, expires, now)?;
                    audit::append(conn, now, "user.added", &actor, json!({ "user": user.as_str() }))?;
                    Ok(())
                })
                .await?;
            Ok(UserInvite {
                user: name,
                invite: token,
                expires_at: expires,
                has_roles,
            }
            .into())
        }
        AdminRequest::UsersLs => {
            let policy = svc.policy();
            let rows = svc.db.run(store::users::list).await?;
            let list: Vec<UserEntry> = rows
                .into_iter()
                .map(
                    |UserLine {
                         name,
                         enrolled,
                         last,
                         locked_until,
                         created,
                         failures,
                         hard_locked,
                     }| {
                        let locked_until = u64::try_from(locked_until).ok().filter(|t| *t > now);
                        let roles = name
                            .parse::<postern_core::Username>()
                            .ok()
                            .and_then(|u| policy.users().get(&u).cloned())
                            .unwrap_or_default();
                        UserEntry {
                            name,
                            enrolled,
                            roles,
                            last_login: last,
                            locked: hard_locked || locked_until.is_some(),
                            locked_until,
                            hard_locked,
                            failures,
                            created_at: created,
                        }
                    },
                )
                .collect();
            Ok(list.into())
        }
        AdminRequest::UsersRm { name } => {
            let user: postern_core::Username = name.parse()?;
            svc.db
                .run(move |conn| {
                    if !store::users::remove(conn, &user)? {
                        bail!("no user {user}");
                    }
                    let revoked = store::certs::revoke_subject(conn, user.as_str())?;
                    audit::append(
                        conn,
                        now,
                        "user.removed",
                        &actor,
                        json!({ "user": user.as_str(), "revoked_certs": revoked }),
                    )?;
                    Ok(())
                })
                .await?;
            Ok(UserRemoved {
                user: name,
                removed: true,
            }
            .into())
        }
        AdminRequest::UsersReset { name } => {
            let user: postern_core::Username = name.parse()?;
            let (token, hash) = auth::new_invite()?;
            let expires = now + auth::INVITE_SECS;
            let was_hard_locked = svc.db
                .run(move |conn| {
                    let was_hard_locked = store::users::hard_locked(conn, user.as_str())?.unwrap_or(false);
                    if !store::users::reset(conn, &user, &hash, expires)? {
                        bail!("no user {user}");
                    }
                    let revoked = store::certs::revoke_subject(conn, user.as_str())?;
                    audit::append(conn, now, "user.reset", &actor, json!({ "user": user.as_str(), "revoked_certs": revoked, "was_hard_locked": was_hard_locked }))?;
                    Ok(was_hard_locked)
                })
                .await?;
            Ok(UserReset {
                user: name,
                invite: token,
                expires_at: expires,
                was_hard_locked,
            }
            .into())
        }
        AdminRequest::CaExport { ca } => {
            let kind = CaKind::ALL
                .into_iter()
                .find(|k| k.as_str() == ca)
                .ok_or_else(|| anyhow!("unknown CA {ca:?}; expected user, host or node-access"))?;
            Ok(CaKeys {
                ca: kind.as_str().to_owned(),
                keys: vec![svc.keys.public_line(kind)?],
            }
            .into())
        }
        AdminRequest::CertsLs { limit } => {
            let rows = svc
                .db
                .run(move |conn| store::certs::list(conn, limit))
                .await?;
            Ok(rows.into())
        }
        AdminRequest::AuditTail { n } => {
            let events = svc.db.run(move |conn| audit::tail(conn, n)).await?;
            Ok(events.into())
        }
        AdminRequest::TokensAdd {
            kind,
            name,
            replace,
            labels,
            ttl,
        } => svc
            .tokens_add(
                &kind,
                postern_core::names::parse_node_name(&name)?,
                replace,
                labels.parse()?,
                ttl.parse()?,
                actor,
            )
            .await
            .map(Into::into),
        AdminRequest::TokensLs => svc.tokens_ls().await.map(Into::into),
        AdminRequest::TokensRm { token } => svc.tokens_rm(token, actor).await.map(Into::into),
        AdminRequest::NodesLs { kind } => {
            let k = match kind.as_deref() {
                None => None,
                Some("node") => Some("node"),
                Some("gateway") => Some("gateway"),
                Some(other) => bail!("unknown node kind {other:?}"),
            };
            svc.nodes_ls(k).await.map(Into::into)
        }
        AdminRequest::NodesRm { name } => svc.nodes_rm(name, actor).await.map(Into::into),
        AdminRequest::CertsSign {
            ca,
            key,
            principals,
            user,
            ttl,
        } => {
            let ttl = ttl.map(|t| t.parse()).transpose()?;
            svc.certs_sign(&ca, key, principals, user, ttl, actor)
                .await
                .map(Into::into)
        }
        AdminRequest::LockAdd {
            target,
            name,
            ttl,
            reason,
        } => {
            let ttl = ttl.map(|t| t.parse()).transpose()?;
            svc.lock_add(&target, name, ttl, reason, actor)
                .await
                .map(Into::into)
        }
        AdminRequest::LockLs => svc.lock_ls().await.map(Into::into),
        AdminRequest::LockRm { id } => svc.lock_rm(id, actor).await.map(Into::into),
        AdminRequest::PolicyApply {
            text,
            file,
            expected_version,
            dry_run,
        } => svc
            .policy_apply(text, file, expected_version, dry_run, actor)
            .await
            .map(Into::into),
        AdminRequest::PolicyShow { version } => svc.policy_show(version).await.map(Into::into),
        AdminRequest::PolicyHistory => svc.policy_history().await.map(Into::into),
        AdminRequest::RecordingsLs { user, node, limit } => {
            if let Some(u) = &user {
                u.parse::<postern_core::Username>()?;
            }
            if let Some(n) = &node {
                postern_core::names::parse_node_name(n)?;
            }
            svc.recordings_ls(user, node, limit).await.map(Into::into)
        }
        AdminRequest::AuditVerify { checkpoints } => {
            if checkpoints.len() > audit::MAX_OFFHOST {
                bail!(
                    "at most {} off-host checkpoints per verify",
                    audit::MAX_OFFHOST
                );
            }
            let key = audit::installed_public_key()?;
            let v = svc
                .db
                .run(move |conn| audit::verify_with(conn, &key, &checkpoints))
                .await?;
            Ok(v.into())
        }
    }
}

/// Sends one request to the daemon and returns its answer, decoded as `T` (the answer type of
/// that request).
pub async fn call<T: DeserializeOwned>(socket: &Path, req: &AdminRequest) -> Result<T> {
    let mut s = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot reach posternd's admin socket {} (is `posternd serve` running, and are you root or its user?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line).await?;
    s.shutdown().await?;
    let mut out = String::new();
    BufReader::new(s)
        .take(64 * 1024 * 1024)
        .read_to_string(&mut out)
        .await?;
    if out.is_empty() {
        bail!("posternd closed the admin connection without answering (permission denied?)");
    }
    let resp: AdminResponse<T> =
        serde_json::from_str(out.trim_end()).context("bad answer from posternd")?;
    if resp.ok {
        resp.data.context("bad answer from posternd: no data")
    } else {
        Err(anyhow!(resp
            .error
            .unwrap_or_else(|| "unknown error".into())))
    }
}
