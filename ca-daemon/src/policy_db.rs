//! The policy on a database that several instances share: versions in `policies`, the newest
//! in force on every instance (each polls for a new version every second, and at SIGHUP),
//! changed only by `posternd policy apply`, which validates, shows the change, versions and
//! audits it. One instance on SQLite keeps its policy in its file, watched (see
//! ARCHITECTURE.md: the two never mix, so two instances cannot serve two policies for longer
//! than one poll).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use postern_core::Policy;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::signal::unix::{signal, SignalKind};

use crate::audit;
use crate::committed::Committed;
use crate::db::Db;
use crate::service::{now, Refusal, Service};
use crate::store::{self, policies::PolicyVersion};

/// How often an instance looks for a new version.
pub const POLL: Duration = Duration::from_secs(1);

/// Where the policy in force comes from.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// One instance: the file, reloaded when it changes and at SIGHUP.
    File(PathBuf),
    /// Several instances: the newest version in the database.
    Database,
}

/// `policy apply`'s answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyApplied {
    /// The version in force now (the new one, or the old one when nothing changed or on a
    /// dry run).
    pub version: i64,
    /// The version before.
    pub previous: Option<i64>,
    /// SHA-256 of the text applied.
    pub sha256: String,
    /// Whether the text was the one in force (no new version).
    pub unchanged: bool,
    /// Whether this was only a look (`--dry-run`).
    pub dry_run: bool,
    /// The change, as a unified diff of the texts.
    pub diff: String,
}

/// `policy show`'s answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyText {
    /// The version (none for a file).
    pub version: Option<i64>,
    /// `database` or the file's path.
    pub source: String,
    /// SHA-256 of the text.
    pub sha256: String,
    /// The TOML.
    pub text: String,
}

fn sha(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The policy in force at start: the newest version, or (on a database that has none, the
/// first start of the first instance) the file's text, recorded as version 1 and audited.
pub async fn load_or_seed(db: &Db, file: &Path) -> Result<(i64, Policy)> {
    let seed = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read policy {}", file.display()))?;
    let name = file.display().to_string();
    Policy::parse(&seed, &name)?;
    let now = now();
    let (version, text) = db
        .run(move |tx| {
            if let Some((v, text)) = store::policies::text(tx, None)? {
                return Ok((v.version, text));
            }
            let v = PolicyVersion {
                version: 1,
                sha256: sha(&seed),
                applied_at: i64::try_from(now)?,
                applied_by: format!("posternd serve (from {name})"),
            };
            store::policies::insert(tx, &v, &seed)?;
            audit::append(
                tx,
                now,
                "policy.applied",
                "posternd",
                json!({ "version": 1, "sha256": v.sha256, "from": name }),
            )?;
            Ok((1, seed))
        })
        .await?;
    let policy = Policy::parse(&text, &format!("policy version {version}"))?;
    Ok((version, policy))
}

/// Puts a new version in force when one appears (every [`POLL`], at once on SIGHUP).
pub async fn watch(svc: Arc<Service>, mut version: i64) {
    let mut hup = signal(SignalKind::hangup()).ok();
    loop {
        match hup.as_mut() {
            Some(h) => {
                tokio::select! {
                    _ = h.recv() => {},
                    _ = tokio::time::sleep(POLL) => {},
                }
            }
            None => tokio::time::sleep(POLL).await,
        }
        let newest = match svc.db.run(store::policies::newest_version).await {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot look for a new policy version; keeping version {version}");
                continue;
            }
        };
        if newest == version {
            continue;
        }
        match load(&svc.db, newest).await {
            Ok(p) => {
                svc.set_policy(p);
                tracing::info!(
                    version = newest,
                    previous = version,
                    "policy version in force"
                );
                version = newest;
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "policy version {newest} cannot be used; keeping version {version}")
            }
        }
    }
}

async fn load(db: &Db, version: i64) -> Result<Policy> {
    let (_, text) = db
        .run(move |tx| store::policies::text(tx, Some(version)))
        .await?
        .with_context(|| format!("no policy version {version}"))?;
    Ok(Policy::parse(&text, &format!("policy version {version}"))?)
}

impl Service {
    /// `policy apply`: validates `text` (errors name `file:line:column`), and unless it is the
    /// text in force or a dry run, records it as the next version, audits it and puts it in
    /// force here (the other instances within a [`POLL`]). `expected` refuses to apply over a
    /// version other than the one the admin looked at.
    pub async fn policy_apply(
        &self,
        text: String,
        file: String,
        expected: Option<i64>,
        dry_run: bool,
        actor: String,
    ) -> Result<PolicyApplied> {
        if let PolicySource::File(path) = &self.policy_source {
            return Err(Refusal::Conflict(format!(
                "this CA keeps its policy in {} (one instance, SQLite): edit that file, and posternd reloads it when it changes or at SIGHUP; `policy apply` is for several instances on [storage] backend = \"postgres\"",
                path.display()
            ))
            .into());
        }
        let policy = Policy::parse(&text, &file).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        let now = now();
        let out = self
            .db
            .run(move |tx| -> Result<Committed<PolicyApplied>> {
                let old = store::policies::text(tx, None)?;
                let previous = old.as_ref().map(|(v, _)| v.version);
                if let Some(want) = expected {
                    if previous != Some(want) {
                        return Ok(Committed::Refused(Refusal::Conflict(format!(
                            "the policy changed since version {want} (now version {}): look at `posternd policy show` and apply again",
                            previous.unwrap_or(0)
                        ))));
                    }
                }
                let old_text = old.as_ref().map_or("", |(_, t)| t.as_str());
                let diff = similar::TextDiff::from_lines(old_text, &text)
                    .unified_diff()
                    .header(
                        &format!("policy version {}", previous.unwrap_or(0)),
                        &file,
                    )
                    .to_string();
                let digest = sha(&text);
                let unchanged = old.as_ref().is_some_and(|(v, _)| v.sha256 == digest);
                if unchanged || dry_run {
                    return Ok(Committed::Done(PolicyApplied {
                        version: previous.unwrap_or(0),
                        previous,
                        sha256: digest,
                        unchanged,
                        dry_run,
                        diff,
                    }));
                }
                let version = previous.unwrap_or(0) + 1;
                let v = PolicyVersion {
                    version,
                    sha256: digest.clone(),
                    applied_at: i64::try_from(now)?,
                    applied_by: actor.clone(),
                };
                store::policies::insert(tx, &v, &text)?;
                audit::append(tx, now, "policy.applied", &actor, json!({ "version": version, "previous": previous, "sha256": digest, "file": file }))?;
                Ok(Committed::Done(PolicyApplied {
                    version,
                    previous,
                    sha256: digest,
                    unchanged: false,
                    dry_run: false,
                    diff,
                }))
            })
            .await?
            .into_result()?;
        if !out.unchanged && !out.dry_run {
            self.set_policy(policy);
        }
        Ok(out)
    }

    /// `policy show`: the text in force (or of one version).
    pub async fn policy_show(&self, version: Option<i64>) -> Result<PolicyText> {
        match &self.policy_source {
            PolicySource::File(path) => {
                if version.is_some() {
                    return Err(Refusal::Conflict("one instance on SQLite keeps no versions: its policy is the file (its history is your version control)".into()).into());
                }
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Ok(PolicyText {
                    version: None,
                    source: path.display().to_string(),
                    sha256: sha(&text),
                    text,
                })
            }
            PolicySource::Database => {
                let (v, text) = self
                    .db
                    .run(move |tx| store::policies::text(tx, version))
                    .await?
                    .ok_or_else(|| {
                        Refusal::NotFound(format!("no policy version {}", version.unwrap_or(0)))
                    })?;
                Ok(PolicyText {
                    version: Some(v.version),
                    source: "database".into(),
                    sha256: v.sha256,
                    text,
                })
            }
        }
    }

    /// `policy history`: every version, newest first.
    pub async fn policy_history(&self) -> Result<Vec<PolicyVersion>> {
        if let PolicySource::File(path) = &self.policy_source {
            return Err(Refusal::Conflict(format!(
                "one instance on SQLite keeps no versions: its policy is {} (its history is your version control)",
                path.display()
            ))
            .into());
        }
        self.db.run(store::policies::history).await
    }
}
