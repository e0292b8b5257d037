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
use std::cell::RefCell;
use std::collections::HashMap;
use tokio_postgres::types::ToSql;

use super::migrations::CURRENT;
use super::{Inner, Val};

/// The advisory lock every transaction takes first (the bytes of "pstn").
pub const WRITER_LOCK: i64 = 0x7073_746e;

/// How long an instance waits for a connection (and for PostgreSQL to answer a connect)
/// before the request fails: a database that is down gives a quick 503, not a hang.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub use posternd::config::PgSettings as Settings;

/// One connection of one thread (the writer's, or `with_tx`'s), with the runtime that drives
/// it on that same thread: each query is one round trip, with no hand-over between threads.
/// The writer keeps one: every transaction of every instance runs under the writer lock,
/// one after another, so more connections per instance would only wait.
pub struct Session {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    statements: RefCell<HashMap<String, tokio_postgres::Statement>>,
    /// The audit head this session last wrote, while its transaction holds the writer lock
    /// and has rolled nothing back: no other instance can move it then, so the next append
    /// of the batch need not read it again. Forgotten at BEGIN, COMMIT and ROLLBACK.
    audit_head: RefCell<Option<(i64, String)>>,
}

impl Session {
    /// Connects (within [`CONNECT_TIMEOUT`]). Must not be called from a task of a runtime.
    pub fn connect(settings: &Settings) -> Result<Session> {
        let mut cfg = Settings::check_url(&settings.url).map_err(|e| anyhow!(e))?;
        if let Some(f) = &settings.password_file {
            let pw = std::fs::read_to_string(f).with_context(|| {
                format!("cannot read the database password from {}", f.display())
            })?;
            cfg.password(pw.trim_end_matches(['\r', '\n']));
        }
        cfg.connect_timeout(CONNECT_TIMEOUT);
        cfg.application_name("posternd");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the database runtime")?;
        let client = match cfg.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => {
                let (client, conn) = rt
                    .block_on(cfg.connect(tokio_postgres::NoTls))
                    .map_err(error)?;
                rt.spawn(conn);
                client
            }
            _ => {
                let (client, conn) = rt.block_on(cfg.connect(tls(settings)?)).map_err(error)?;
                rt.spawn(conn);
                client
            }
        };
        // The driver logs every notice at INFO: the schema's `IF NOT EXISTS` would print one
        // line per table at each start ("relation ... already exists, skipping").
        rt.block_on(client.batch_execute("SET client_min_messages TO warning"))
            .map_err(error)?;
        Ok(Session {
            rt,
            client,
            statements: RefCell::default(),
            audit_head: RefCell::default(),
        })
    }

    /// The audit head this transaction wrote last, if it still holds (see `audit_head`).
    pub fn written_audit_head(&self) -> Option<(i64, String)> {
        self.audit_head.borrow().clone()
    }

    /// Remembers the audit head this transaction just wrote.
    pub fn wrote_audit_head(&self, seq: i64, hash: &str) {
        *self.audit_head.borrow_mut() = Some((seq, hash.to_owned()));
    }

    /// Whether the connection is gone (the next batch connects again).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Runs statements without parameters in one round trip (`BEGIN; …`, savepoints).
    pub fn batch(&self, sql: &str) -> Result<()> {
        // A transaction's start or end, or a rollback to a savepoint: what this session
        // wrote may be gone, and once the writer lock is released others may write.
        if ["BEGIN", "COMMIT", "ROLLBACK"]
            .iter()
            .any(|w| sql.contains(w))
        {
            self.audit_head.borrow_mut().take();
        }
        self.rt
            .block_on(self.client.batch_execute(sql))
            .map_err(error)
    }

    /// The statement, prepared once per connection; a statement the server refuses is named
    /// in the error (it holds placeholders, never values).
    fn prepare(&self, sql: &str) -> Result<tokio_postgres::Statement> {
        if let Some(st) = self.statements.borrow().get(sql) {
            return Ok(st.clone());
        }
        let st = self
            .rt
            .block_on(self.client.prepare(sql))
            .map_err(error)
            .with_context(|| format!("cannot prepare {sql}"))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_owned(), st.clone());
        Ok(st)
    }

    /// Runs a statement; returns how many rows it changed.
    pub fn execute(&self, sql: &str, params: &[Val<'_>]) -> Result<u64> {
        let st = self.prepare(&translate(sql))?;
        self.rt
            .block_on(self.client.execute(&st, &refs(params)))
            .map_err(error)
    }

    /// Runs statements that do not depend on each other's results in one round trip:
    /// tokio-postgres pipelines requests that are in flight together. They run in order, in
    /// the transaction; the first failure is the answer. A statement the server refuses
    /// aborts the transaction, so the ones after it do nothing; one the driver refuses before
    /// sending (a value it cannot encode) does not stop the others, which is why a failure
    /// must fail the whole job (its savepoint is rolled back), as every caller's `?` does.
    pub fn execute_all(&self, stmts: &[(&str, &[Val<'_>])]) -> Result<Vec<u64>> {
        let prepared = stmts
            .iter()
            .map(|(sql, _)| self.prepare(&translate(sql)))
            .collect::<Result<Vec<_>>>()?;
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = stmts.iter().map(|(_, p)| refs(p)).collect();
        let calls = prepared
            .iter()
            .zip(&params)
            .map(|(st, p)| self.client.execute(st, p));
        let results = self.rt.block_on(futures_util::future::join_all(calls));
        results.into_iter().map(|r| r.map_err(error)).collect()
    }

    /// Every row of a query.
    pub fn query(&self, sql: &str, params: &[Val<'_>]) -> Result<Vec<tokio_postgres::Row>> {
        let st = self.prepare(&translate(sql))?;
        self.rt
            .block_on(self.client.query(&st, &refs(params)))
            .map_err(error)
    }

    /// Runs `f` in one transaction under the writer lock (for `with_tx`).
    pub fn transaction<T>(&self, f: impl FnOnce(&super::Tx<'_>) -> Result<T>) -> Result<T> {
        self.batch(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK})"
        ))?;
        match f(&super::Tx::postgres(self)) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }
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

/// The driver's error with the server's message, when there is one (its `Display` alone
/// says only "db error").
pub fn error(e: tokio_postgres::Error) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) => anyhow!("PostgreSQL: {} ({})", db.message(), db.code().code()),
        // No answer from the server: the connection is gone or never came. The causes are
        // kept: "error performing TLS handshake" alone does not say that the certificate's
        // issuer is not in ca_file.
        None => crate::db::Unavailable(format!("PostgreSQL: {}", with_causes(&e))).into(),
    }
}

/// An error's message followed by those of its sources, each once.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        cause = c.source();
    }
    msg
}

/// Creates the schema in an empty database, or checks the version of one there (and creates
/// the tables added since): run once by every instance at start, under the writer lock.
pub fn init_schema(s: &Session) -> Result<()> {
    s.transaction(|tx| {
        let Inner::Postgres { s, .. } = &tx.inner else {
            unreachable!("a PostgreSQL session's transaction")
        };
        let has_meta: bool = s
            .rt
            .block_on(s.client.query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'meta')",
                &[],
            ))
            .map_err(error)?
            .get(0);
        let version: Option<String> = if has_meta {
            s.rt.block_on(s.client.query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[]))
                .map_err(error)?
                .map(|r| r.get(0))
        } else {
            None
        };
        match version {
            None => {
                s.batch(include_str!("pg-schema.sql"))
                    .context("cannot create the schema")?;
                s.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                    params![CURRENT.to_string()],
                )?;
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
                s.batch(include_str!("pg-schema.sql"))
                    .context("cannot complete the schema")?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_a_tls_failure_said_only_error_performing_tls_handshake() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let inner = E("invalid peer certificate: UnknownIssuer", None);
        let io = E(
            "invalid peer certificate: UnknownIssuer",
            Some(Box::new(inner)),
        );
        let e = E("error performing TLS handshake", Some(Box::new(io)));
        assert_eq!(
            with_causes(&e),
            "error performing TLS handshake: invalid peer certificate: UnknownIssuer"
        );
    }

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
