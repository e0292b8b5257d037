//! `posternd storage migrate`: moves an installation on the embedded SQLite file to
//! PostgreSQL (users, certificates, tokens, locks, the audit chain with its hashes and signed
//! checkpoints, recordings), verifies the copy table by table and the chain on the new
//! backend, and points the config at it. The SQLite file is left as it was (the way back).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::config::{Config, PgSettings, Storage};
use crate::server::InitStorage;
use crate::service::now;
use crate::store::copy;
use crate::{audit, db, store};

/// What `storage migrate` did.
#[derive(Debug, Serialize)]
pub struct Migrated {
    /// Rows copied and verified, per table.
    pub tables: Vec<(String, usize)>,
    /// Audit events verified on PostgreSQL (hash chain and signed checkpoints).
    pub audit_events: i64,
    /// Recording files checked against their SHA-256 (and copied, with --recordings-dir).
    pub recordings: usize,
    /// The config rewritten, and where its old text is kept.
    pub config: PathBuf,
    /// The old config.
    pub backup: PathBuf,
}

/// Migrates the installation of `config` to `to` (`to.url` is required).
pub async fn migrate(config: &Path, to: &InitStorage) -> Result<Migrated> {
    let cfg = Config::load(config)?;
    let Storage::Sqlite(sqlite) = &cfg.storage else {
        bail!("{} is on PostgreSQL already", config.display());
    };
    let url = to
        .url
        .clone()
        .ok_or_else(|| anyhow!("--to postgres://… is required"))?;
    let text = std::fs::read_to_string(config)?;
    if text.contains("[storage]") {
        bail!(
            "{} has a [storage] table: migrate with a config without it, or edit it by hand",
            config.display()
        );
    }
    if tokio::net::UnixStream::connect(cfg.admin_socket())
        .await
        .is_ok()
    {
        bail!(
            "posternd is serving from {}: stop it first (what it answered after the copy would be lost), migrate, then start it on PostgreSQL",
            sqlite.display()
        );
    }
    let section = to.render()?;
    let settings = PgSettings {
        url,
        password_file: to.password_file.clone(),
        ca_file: to.ca_file.clone(),
    };
    let key = crate::server::open_audit_key(&cfg)?;
    // One consistent read of every table.
    let from: Vec<Vec<Vec<store::Cell>>> = db::with_tx(&cfg.storage, |tx| {
        copy::TABLES
            .iter()
            .map(|(t, cols)| copy::rows(tx, t, cols))
            .collect()
    })?;
    let target = Storage::Postgres(settings.clone());
    let pg = db::Db::open_storage(&target).await?;
    let rows = from.clone();
    pg.run(move |tx| {
        if !copy::is_empty(tx)? {
            bail!(
                "the PostgreSQL database holds a CA's data already: migrate into an empty database"
            );
        }
        for ((table, cols), rows) in copy::TABLES.iter().zip(&rows) {
            copy::insert(tx, table, cols, rows).with_context(|| format!("cannot copy {table}"))?;
        }
        Ok(())
    })
    .await?;
    // Verify: the same rows, and the chain verifies on the new backend.
    let back: Vec<Vec<Vec<store::Cell>>> = pg
        .run(|tx| {
            copy::TABLES
                .iter()
                .map(|(t, cols)| copy::rows(tx, t, cols))
                .collect()
        })
        .await?;
    let mut tables = Vec::new();
    for (((table, _), a), b) in copy::TABLES.iter().zip(&from).zip(&back) {
        copy::check(table, &copy::digest(a), &copy::digest(b))?;
        tables.push(((*table).to_owned(), a.len()));
    }
    let v = pg.run(move |tx| audit::verify_with(tx, &key, &[])).await?;
    if !v.problems.is_empty() {
        bail!(
            "the audit chain does not verify on PostgreSQL: {}",
            v.problems.join("; ")
        );
    }
    // The recordings: into the new directory when one is given, each checked by its SHA-256.
    let new_dir = to
        .recordings_dir
        .clone()
        .unwrap_or_else(|| cfg.recordings_dir.clone());
    let listed = pg
        .run(|tx| {
            copy::rows(tx, "recordings", &["id", "sha256"]).map(|rows| {
                rows.into_iter()
                    .filter_map(|r| match (&r[0], &r[1]) {
                        (store::Cell::Text(id), store::Cell::Text(sha)) => {
                            Some((id.clone(), sha.clone()))
                        }
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
        })
        .await?;
    crate::recordings::prepare_dir(&new_dir)?;
    for (id, sha) in &listed {
        let (old, new) = (
            crate::recordings::file_of(&cfg.recordings_dir, id),
            crate::recordings::file_of(&new_dir, id),
        );
        if old != new && !new.exists() {
            std::fs::copy(&old, &new).with_context(|| format!("cannot copy {}", old.display()))?;
            std::fs::File::open(&new)?.sync_all()?;
        }
        let got = crate::recordings::sha256_of_path(&new)?;
        if &got != sha {
            bail!(
                "recording {id}: {} has SHA-256 {got}, the database says {sha}",
                new.display()
            );
        }
    }
    // The config last: until it is rewritten, the installation is on SQLite as it was.
    let backup = config.with_extension("toml.before-migrate");
    std::fs::write(&backup, &text).with_context(|| format!("cannot write {}", backup.display()))?;
    let mut new_text = text.clone();
    new_text.push_str(&section);
    if to.recordings_dir.is_none() {
        new_text.push_str(&format!(
            "recordings_dir = {:?}\n",
            new_dir.display().to_string()
        ));
    }
    Config::parse(&new_text, config).map_err(|e| anyhow!("the new config does not parse: {e}"))?;
    postern_core::atomic::write_atomic(config, new_text.as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", config.display()))?;
    let n = tables.iter().map(|(_, n)| n).sum::<usize>();
    pg.run(move |tx| {
        audit::append(
            tx,
            now(),
            "storage.migrated",
            "posternd storage migrate",
            json!({ "rows": n, "from": "sqlite" }),
        )
    })
    .await?;
    Ok(Migrated {
        tables,
        audit_events: v.events,
        recordings: listed.len(),
        config: config.to_path_buf(),
        backup,
    })
}
