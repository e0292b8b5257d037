//! The daemon's operations (enrol, login, renew, admin), independent of HTTP and of the
//! admin socket: each is one database transaction that also writes its audit events.

use crate::committed::Committed;
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, Result};
use postern_core::api::{CertResponse, EnrollRequest, ExposeSecret as _, LoginRequest};
use postern_core::cert::{issue_user_cert, IssueParams, Signer};
use postern_core::{ClusterName, Policy, Ttl, Username};
use serde_json::json;
use ssh_key::{HashAlg, PublicKey};

use crate::audit;
use crate::auth::{self, GhostLockout};
use crate::authed::{AuthedUser, Renewal, UserRecord};
use crate::db::Db;
use crate::keys::KeyStore;
use crate::limits::{Busy, FailureKind, Source};
use crate::store::{self, Tx};

/// The refusal when every argon2 slot stayed taken.
fn busy() -> Refusal {
    Refusal::Busy("the server is busy checking other passwords; try again in a second".into())
}

pub use postern_core::clock::now;

/// Shared state of the running daemon.
pub struct Service {
    /// Cluster name.
    pub cluster: ClusterName,
    /// The gateways' public addresses (`[gateway] public_addr`), in order; empty without.
    pub gateways: Vec<String>,
    /// Every key.
    pub keys: Arc<KeyStore>,
    /// The database.
    pub db: Db,
    /// The policy in force (the last good one).
    pub policy: RwLock<Arc<Policy>>,
    /// Where it comes from: the file (one instance) or the database (several).
    pub policy_source: crate::policy_db::PolicySource,
    /// Lockout of names that are not users.
    pub ghosts: GhostLockout,
    /// The recordings directory (`[storage] recordings_dir`).
    pub recordings_dir: std::path::PathBuf,
    /// Recording uploads buffered at once (each may be large). A slot is held until the
    /// upload's work ends, even when its request is gone.
    pub upload_slots: Arc<tokio::sync::Semaphore>,
    /// Recording limits and the uploads in progress.
    pub recordings: crate::recordings::Store,
    /// Abuse limits: per-source rates, argon2 slots, failure summaries.
    pub limits: Arc<crate::limits::Limits>,
}

/// Why an operation was refused; the API maps each to a status and public message.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Malformed input.
    #[error("{0}")]
    BadRequest(String),
    /// Wrong user, password, code, or invite; the same for every cause.
    #[error("invalid credentials")]
    BadCredentials,
    /// Too many failures (a timed lock or a hard one: the same answer, and the same for a name
    /// that is not a user).
    #[error("account locked after repeated failures; try again later (after repeated locks, only an administrator can unlock it)")]
    Locked,
    /// Authenticated, but refused (policy, revoked, window over).
    #[error("{0}")]
    Forbidden(String),
    /// Nothing of that name that the caller may see.
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts what is stored (a reused id).
    #[error("{0}")]
    Conflict(String),
    /// The request is larger than a configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// The server's disk is full; nothing was changed.
    #[error("{0}")]
    InsufficientStorage(String),
    /// The server is at a limit (argon2 slots); try again shortly (503, `Retry-After`).
    #[error("{0}")]
    Busy(String),
    /// This source sent too many requests of a kind (429, `Retry-After`).
    #[error("{message}")]
    TooMany {
        /// What the client is told.
        message: String,
        /// Seconds until the next request would be accepted.
        retry_after: u64,
    },
    /// A server-side fault; the detail is logged, not shown.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

type Outcome<T> = std::result::Result<T, Refusal>;

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Service {
    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .map(|p| Arc::clone(&p))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    /// Puts `policy` in force.
    pub fn set_policy(&self, policy: Policy) {
        match self.policy.write() {
            Ok(mut slot) => *slot = Arc::new(policy),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(policy),
        }
    }

    /// Sets the password and TOTP secret of an invited user.
    pub async fn enroll(&self, req: EnrollRequest, source: Source) -> Outcome<String> {
        let pw = req.password.expose_secret();
        if pw.chars().count() < 8 {
            return Err(Refusal::BadRequest(
                "password must be at least 8 characters".into(),
            ));
        }
        if pw.len() > 1024 {
            return Err(Refusal::BadRequest(
                "password must be at most 1024 bytes".into(),
            ));
        }
        let pw = req.password.clone();
        let hash = match self
            .limits
            .argon2
            .run(move || auth::hash_password(pw.expose_secret()))
            .await
        {
            Ok(h) => h??,
            Err(Busy) => {
                self.limits.failures.record(
                    source,
                    FailureKind::Enroll,
                    "server busy",
                    None,
                    now(),
                );
                return Err(busy());
            }
        };
        let secret = auth::new_totp_secret()?;
        let uri = auth::otpauth_uri(&secret, req.user.as_str(), self.cluster.as_str())?;
        let user = req.user.clone();
        let presented = auth::invite_hash(req.invite.expose_secret());
        let now = now();
        let failures = Arc::clone(&self.limits.failures);
        self.db
            .run(move |conn| {
                let row = store::users::invite(conn, &user)?.map(|r| (r.hash, r.expires));
                let known = row.is_some();
                let valid = match row {
                    Some((Some(h), Some(exp))) => auth::same_hash(&h, &presented) && u(exp) > now,
                    _ => {
                        // Same comparison work for unknown users.
                        let _ = auth::same_hash(&presented, &presented);
                        false
                    }
                };
                if !valid {
                    // Counted in the source's summary, not audited one by one; a name that is
                    // not a user may be anything the person typed: only its keyed tag is kept.
                    let name = if known {
                        user.as_str().to_owned()
                    } else {
                        auth::unknown_name_label(user.as_str())
                    };
                    failures.record(
                        source,
                        FailureKind::Enroll,
                        "invalid or expired invite",
                        Some(&name),
                        now,
                    );
                    return Ok(Committed::Refused(Refusal::BadCredentials));
                }
                store::users::enroll(conn, &user, &hash, &secret)?;
                audit::append(conn, now, "user.enrolled", user.as_str(), json!({}))?;
                Ok(Committed::Done(()))
            })
            .await?
            .into_result()?;
        Ok(uri)
    }

    /// Password + TOTP login: checks credentials and lockout, asks the policy, issues.
    pub async fn login(&self, req: LoginRequest, source: Source) -> Outcome<CertResponse> {
        let public = parse_user_key(&req.public_key)?;
        let now = now();
        let name = req.user.clone();
        let row = {
            let name = name.clone();
            self.db
                .run(move |conn| store::users::get(conn, name.as_str()))
                .await?
        };
        // The expensive checks run off the async threads, under the argon2 limit, and take the
        // same time whether or not the user exists (the dummy hash of unknown users too).
        let (password_ok, step) = {
            let hash = row.as_ref().and_then(|r| r.password_hash.clone());
            let secret = row.as_ref().and_then(|r| r.totp_secret.clone());
            let password = req.password.clone();
            let otp = req.otp.clone();
            let checked = self
                .limits
                .argon2
                .run(move || {
                    let ok = auth::verify_password(hash.as_deref(), password.expose_secret());
                    let step = auth::match_step(secret.as_deref(), otp.expose_secret(), now);
                    (ok, step)
                })
                .await;
            match checked {
                Ok(r) => r?,
                Err(Busy) => {
                    let known = row.is_some().then_some(name.as_str());
                    self.limits.failures.record(
                        source,
                        FailureKind::Login,
                        "server busy",
                        known,
                        now,
                    );
                    return Err(busy());
                }
            }
        };
        let failures = Arc::clone(&self.limits.failures);
        if row.is_none() {
            let locked = self.ghosts.fail(name.as_str(), now);
            // A real user's failure commits its count (a write transaction, fsync'd): an
            // unknown name's commits one too, so that the answer takes as long and says
            // nothing about whether the user exists (review finding: since failures are no
            // longer audited one by one, only the real path wrote).
            self.db
                .run(move |conn| store::users::note_unknown_login(conn, now))
                .await?;
            // Counted in the source's summary under the name's keyed tag, never the name: an
            // unknown name may be a password typed into the wrong field.
            let label = auth::unknown_name_label(name.as_str());
            failures.record(
                source,
                FailureKind::Login,
                "unknown user",
                Some(&label),
                now,
            );
            return Err(if locked {
                Refusal::Locked
            } else {
                Refusal::BadCredentials
            });
        }
        let policy = self.policy();
        let keys = Arc::clone(&self.keys);
        let cluster = self.cluster.clone();
        let gateway = self.gateways.clone();
        let ttl = req.ttl;
        self.db
            .run(move |conn| -> Result<Committed<CertResponse>> {
                let Some(row) = store::users::get(conn, name.as_str())? else {
                    return Ok(Committed::Refused(Refusal::BadCredentials));
                };
                // Failures before the credentials are proven are counted in the source's
                // summary; a refusal after them (policy) is audited on its own.
                let fail = |reason: &'static str| -> Result<()> {
                    failures.record(source, FailureKind::Login, reason, Some(name.as_str()), now);
                    Ok(())
                };
                let denied = |reason: &str| -> Result<()> {
                    audit::append(conn, now, "login.failure", name.as_str(), json!({ "reason": reason }))
                };
                // During a lock nothing is checked or counted: a right password and code are
                // refused like wrong ones, and the count goes on from where it was.
                if row.hard_locked {
                    fail("account hard-locked (`posternd users reset` clears it)")?;
                    return Ok(Committed::Refused(Refusal::Locked));
                }
                if u(row.locked_until) > now {
                    fail("account locked")?;
                    return Ok(Committed::Refused(Refusal::Locked));
                }
                let reason = if row.password_hash.is_none() {
                    Some("not enrolled")
                } else if !password_ok {
                    Some("wrong password")
                } else {
                    match step {
                        None => Some("wrong one-time code"),
                        Some(s) if i(s) <= row.last_totp_step => Some("replayed one-time code"),
                        Some(_) => None,
                    }
                };
                if let Some(reason) = reason {
                    // Failures are counted across locks; only a successful login resets them.
                    let next = auth::after_failure(row.failed_count, now);
                    store::users::set_failures(conn, &name, next.failures)?;
                    match next.lock {
                        Some(auth::Lock::Until { nth, until }) => {
                            store::users::lock_until(conn, &name, until)?;
                            audit::append(conn, now, "user.locked_out", name.as_str(), json!({ "until": until, "lock": nth, "failures": next.failures }))?;
                        }
                        Some(auth::Lock::Hard) => {
                            store::users::hard_lock(conn, &name)?;
                            audit::append(conn, now, "user.locked_out", name.as_str(), json!({ "hard": true, "lock": auth::HARD_LOCK_AT, "failures": next.failures }))?;
                            tracing::warn!(user = %name, failures = next.failures, "user hard-locked after repeated login failures; `posternd users reset` clears it");
                        }
                        None => {}
                    }
                    fail(reason)?;
                    return Ok(Committed::Refused(Refusal::BadCredentials));
                }
                store::users::login_succeeded(conn, &name, step.unwrap_or(0), now)?;
                let renew_until = now + policy.defaults().renew_until.as_secs();
                let ctx = IssueCtx { keys: &keys, policy: &policy, cluster: &cluster, gateway: &gateway };
                match ctx.issue(conn, &name, &public, ttl, renew_until, now, "login")? {
                    Ok(resp) => {
                        audit::append(conn, now, "login.success", name.as_str(), json!({ "serial": resp.1 }))?;
                        Ok(Committed::Done(resp.0))
                    }
                    Err(deny) => {
                        denied(&deny)?;
                        Ok(Committed::Refused(Refusal::Forbidden(deny)))
                    }
                }
            })
            .await?
            .into_result()
    }

    /// Renewal by proof of possession: the caller's client certificate was verified by TLS.
    pub async fn renew(
        &self,
        caller: AuthedUser<Renewal>,
        ttl: Option<Ttl>,
    ) -> Outcome<CertResponse> {
        let now = now();
        let policy = self.policy();
        let keys = Arc::clone(&self.keys);
        let cluster = self.cluster.clone();
        let gateway = self.gateways.clone();
        self.db
            .run(move |conn| -> Result<Committed<CertResponse>> {
                let identity = caller.identity();
                let refuse =
                    |conn: &Tx<'_>, who: &str, reason: &str| -> Result<Committed<CertResponse>> {
                        audit::append(
                            conn,
                            now,
                            "renew.failure",
                            who,
                            json!({ "reason": reason, "x509_serial": identity.serial }),
                        )?;
                        Ok(Committed::Refused(Refusal::Forbidden(format!(
                            "renewal refused: {reason}; run `postern login` to sign in again"
                        ))))
                    };
                // The record's expiry is not looked at here: TLS verified the certificate.
                let subject = &identity.subject;
                let name = match caller.lookup(conn)? {
                    UserRecord::Unknown | UserRecord::NotAUser => {
                        return refuse(conn, subject, "unknown identity")
                    }
                    UserRecord::Revoked => {
                        return refuse(conn, subject, "this identity was revoked")
                    }
                    UserRecord::Issued { user, .. } => user,
                };
                let Some(user) = store::users::get(conn, name.as_str())? else {
                    return refuse(conn, subject, "the user no longer exists");
                };
                let Some(last) = user.last_password_login else {
                    return refuse(conn, subject, "no password login on record");
                };
                let deadline = u(last) + policy.defaults().renew_until.as_secs();
                if now >= deadline {
                    return refuse(
                        conn,
                        subject,
                        "the renewal window after the last password login is over",
                    );
                }
                let public = PublicKey::from(ssh_key::public::Ed25519PublicKey(identity.ed25519));
                let ctx = IssueCtx {
                    keys: &keys,
                    policy: &policy,
                    cluster: &cluster,
                    gateway: &gateway,
                };
                match ctx.issue(conn, &name, &public, ttl, deadline, now, "renew")? {
                    Ok((resp, _)) => Ok(Committed::Done(resp)),
                    Err(deny) => refuse(conn, subject, &deny),
                }
            })
            .await?
            .into_result()
    }
}

fn parse_user_key(line: &str) -> Outcome<PublicKey> {
    if line.len() > 1024 {
        return Err(Refusal::BadRequest("public_key is too long".into()));
    }
    let key = PublicKey::from_openssh(line.trim())
        .map_err(|_| Refusal::BadRequest("public_key is not an OpenSSH public key".into()))?;
    if key.algorithm() != ssh_key::Algorithm::Ed25519 {
        return Err(Refusal::BadRequest(
            "public_key must be an Ed25519 key".into(),
        ));
    }
    Ok(key)
}

struct IssueCtx<'a> {
    keys: &'a KeyStore,
    policy: &'a Policy,
    cluster: &'a ClusterName,
    gateway: &'a [String],
}

impl IssueCtx<'_> {
    /// Issues the SSH certificate and the X.509 identity for one key, records both and audits.
    /// `Ok(Err(reason))` is a policy refusal.
    #[allow(clippy::too_many_arguments)]
    fn issue(
        &self,
        conn: &Tx<'_>,
        user: &Username,
        public: &PublicKey,
        ttl: Option<Ttl>,
        renew_until: u64,
        now: u64,
        via: &str,
    ) -> Result<std::result::Result<(CertResponse, u64), String>> {
        // No certificate outlives the renewal window: a renewal just before the deadline gets
        // only what is left of it.
        let left = renew_until.saturating_sub(now);
        let wanted = ttl.map_or(self.policy.defaults().user_cert_ttl.as_secs(), |t| {
            t.as_secs()
        });
        let ttl = if wanted > left {
            match Ttl::from_secs(left) {
                Some(t) => Some(t),
                None => return Ok(Err("the renewal window is over".into())),
            }
        } else {
            ttl
        };
        let decision = match self.policy.decide_login(user, ttl) {
            Ok(d) => d,
            Err(deny) => return Ok(Err(deny.to_string())),
        };
        // The one lock rule, for the user alone: a user lock, or a lock of a kind this
        // version does not know, stops issuance; login locks narrow the logins below.
        let locks = crate::nodes::active_locks(conn, now)?;
        let subject = postern_core::api::LockSubject {
            user: Some(user.as_str()),
            ..Default::default()
        };
        if let Some(l) = postern_core::api::lock_for(&locks, &subject, now) {
            return Ok(Err(l.describe()));
        }
        let locked_logins = crate::nodes::locked_logins(&locks);
        let Some(approval) = decision.approval.without_logins(&locked_logins) else {
            return Ok(Err(format!("every login of user {user} is locked")));
        };
        let a = &approval;
        let principals = a
            .logins()
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let fp = public.fingerprint(HashAlg::Sha256).to_string();
        let valid_after = now.saturating_sub(postern_core::cert::CLOCK_SKEW_SECS);
        let valid_before = now + a.ttl().as_secs();
        // Both rows at once (one round trip on PostgreSQL).
        let serials = store::certs::record_all(
            conn,
            &[
                store::certs::CertRow {
                    kind: postern_core::CertKind::SshUser,
                    subject: user.as_str(),
                    principals: &principals,
                    valid_after,
                    valid_before,
                    issued_at: now,
                    fingerprint: &fp,
                },
                store::certs::CertRow {
                    kind: postern_core::CertKind::X509Client,
                    subject: user.as_str(),
                    principals: "",
                    valid_after,
                    valid_before: renew_until,
                    issued_at: now,
                    fingerprint: &fp,
                },
            ],
        )?;
        let [serial, x509_serial] = serials[..] else {
            anyhow::bail!("recorded {} certificates of 2", serials.len());
        };
        let cert = issue_user_cert(&self.keys.user, a, public, IssueParams { serial, now })?;
        let ed = public
            .key_data()
            .ed25519()
            .ok_or_else(|| anyhow!("not an Ed25519 key"))?;
        let x509 = self.keys.service.issue_client_cert(
            user.as_str(),
            &ed.0,
            x509_serial,
            valid_after,
            renew_until,
        )?;
        audit::append(
            conn,
            now,
            "cert.issued",
            user.as_str(),
            json!({
                "via": via,
                "serial": serial,
                "x509_serial": x509_serial,
                "principals": principals,
                "permits": a.permits().iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                "valid_after": valid_after,
                "valid_before": valid_before,
                "key": fp,
            }),
        )?;
        let host_ca = self.keys.host.public_key().to_openssh()?;
        Ok(Ok((
            CertResponse {
                cluster: self.cluster.clone(),
                user: user.clone(),
                ssh_certificate: cert.to_openssh()?,
                x509_certificate: x509,
                x509_ca: self.keys.service.cert_pem.clone(),
                host_ca_keys: vec![host_ca],
                gateway: self.gateway.first().cloned(),
                gateways: if self.gateway.len() > 1 {
                    self.gateway.to_vec()
                } else {
                    Vec::new()
                },
                principals: a.logins().to_vec(),
                permits: a.permits().iter().copied().collect(),
                valid_before,
                renew_until,
                ttl: a.ttl(),
                capped_from: decision.capped_from,
            },
            serial,
        )))
    }
}
