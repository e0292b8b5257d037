//! The PostgreSQL backend: the connection settings, the pool, the schema, and how one
//! statement written for both dialects runs here.
//!
//! Every transaction of every instance takes one transaction-scoped advisory lock first
//! ([`WRITER_LOCK`]), so that transactions of all instances run one after another, exactly as
//! SQLite's single writer runs them: a rule written as "read, decide, write" in one
//! `Db::run` closure (a TOTP step used once, a token spent once, the audit head moved by one)
//! holds across instances without each rule knowing about them. Each instance groups the
//! closures that arrive together into one transaction (group commit), which is what keeps the
//! throughput of several instances near one SQLite file's.

use std::borrow::Cow;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;

use super::migrations::CURRENT;
use super::Val;

/// The advisory lock every transaction takes first (the bytes of "pstn").
pub const WRITER_LOCK: i64 = 0x7073_746e;

/// How long an instance waits for a connection (and for PostgreSQL to answer a connect)
/// before the request fails: a database that is down gives a quick 503, not a hang.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub use posternd::config::PgSettings as Settings;

/// The pool the settings describe (no connection is made yet).
pub fn pool(settings: &Settings) -> Result<Pool> {
    pool_of(settings)
}

fn pool_of(this: &Settings) -> Result<Pool> {
    let mut cfg = Settings::check_url(&this.url).map_err(|e| anyhow!(e))?;
    if let Some(f) = &this.password_file {
        let pw = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the database password from {}", f.display()))?;
        cfg.password(pw.trim_end_matches(['\r', '\n']));
    }
    cfg.connect_timeout(CONNECT_TIMEOUT);
    cfg.application_name("posternd");
    let mgr_cfg = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let mgr = match cfg.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => {
            Manager::from_config(cfg, tokio_postgres::NoTls, mgr_cfg)
        }
        _ => Manager::from_config(cfg, tls(this)?, mgr_cfg),
    };
    Pool::builder(mgr)
        .max_size(this.pool_size.max(1))
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("cannot make the database pool")
}

fn tls(this: &Settings) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let Some(f) = &this.ca_file else {
        bail!(
                "the PostgreSQL URL asks for TLS (sslmode): name the PEM file of the roots that sign the database's certificate as [storage] ca_file, or set sslmode=disable for a database on loopback"
            );
    };
    let pem = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(c.with_context(|| format!("{}: not a PEM certificate", f.display()))?)
            .with_context(|| format!("{}: not a usable root", f.display()))?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate", f.display());
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(cfg))
}

/// The statement in PostgreSQL's placeholders: `?N` becomes `$N`.
pub fn translate(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The values as the driver takes them.
pub fn refs<'p>(params: &'p [Val<'p>]) -> Vec<&'p (dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// The statement, prepared once per connection; a statement the server refuses is named in
/// the error (it holds placeholders, never values).
pub async fn prepare(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
) -> Result<tokio_postgres::Statement> {
    tx.prepare_cached(sql)
        .await
        .map_err(error)
        .with_context(|| format!("cannot prepare {sql}"))
}

/// The driver's error with the server's message, when there is one (its `Display` alone
/// says only "db error").
pub fn error(e: tokio_postgres::Error) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) => anyhow!("PostgreSQL: {} ({})", db.message(), db.code().code()),
        // No answer from the server: the connection is gone or never came.
        None => crate::db::Unavailable(format!("PostgreSQL: {e}")).into(),
    }
}

/// Creates the schema in an empty database, or checks the version of one there: run once by
/// every instance at start, under the writer lock.
pub async fn init_schema(pool: &Pool) -> Result<()> {
    let mut client = pool.get().await.context("cannot connect to PostgreSQL")?;
    let tx = client.transaction().await.map_err(error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITER_LOCK])
        .await
        .map_err(error)?;
    let has_meta: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'meta')",
            &[],
        )
        .await
        .map_err(error)?
        .get(0);
    let version: Option<String> = if has_meta {
        tx.query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
            .await
            .map_err(error)?
            .map(|r| r.get(0))
    } else {
        None
    };
    match version {
        None => {
            tx.batch_execute(include_str!("pg-schema.sql"))
                .await
                .map_err(error)
                .context("cannot create the schema")?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', $1)",
                &[&CURRENT.to_string()],
            )
            .await
            .map_err(error)?;
        }
        Some(v) => {
            let v: u32 = v
                .parse()
                .map_err(|_| anyhow!("the database's schema_version {v:?} is not a number"))?;
            if v > CURRENT {
                bail!(
                    "the database has schema version {v}, newer than this posternd knows ({CURRENT}): it was written by a newer posternd; run that version on every instance"
                );
            }
            if v < CURRENT {
                bail!("the database has schema version {v}; this posternd has no PostgreSQL steps from it to {CURRENT}");
            }
            // Every statement is `IF NOT EXISTS`: tables added to the schema since this
            // database was made are created, and nothing else changes.
            tx.batch_execute(include_str!("pg-schema.sql"))
                .await
                .map_err(error)
                .context("cannot complete the schema")?;
        }
    }
    tx.commit().await.map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_and_nothing_else_changes() {
        assert_eq!(
            translate("SELECT a FROM t WHERE b = ?1 AND (?2 IS NULL OR c = ?2) LIMIT ?10"),
            "SELECT a FROM t WHERE b = $1 AND ($2 IS NULL OR c = $2) LIMIT $10"
        );
        assert!(matches!(translate("SELECT 1"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_url_with_a_password_or_without_a_user_is_refused_and_says_what_to_do() {
        let e = Settings::check_url("postgres://postern:hunter2@127.0.0.1/postern").unwrap_err();
        assert!(e.contains("password_file"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = Settings::check_url("postgres://127.0.0.1/postern").unwrap_err();
        assert!(e.contains("no user"), "{e}");
        let e = Settings::check_url("mysql://a@b/c").unwrap_err();
        assert!(e.contains("not a PostgreSQL URL"), "{e}");
        assert!(
            Settings::check_url("postgres://postern@127.0.0.1:5432/postern?sslmode=disable")
                .is_ok()
        );
    }
}
