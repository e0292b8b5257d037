//! `posternd`: the Postern CA daemon and its admin commands.

mod admin;
mod api;
mod audit;
mod auth;
mod authed;
mod committed;
mod db;
mod gateway;
mod health;
mod keys;
mod limits;
mod metrics;
mod migrate;
mod nodes;
mod policy_db;
mod recordings;
mod server;
mod service;
mod store;
mod tls;
mod x509;

use std::process::ExitCode;

use anyhow::Context as _;

use clap::Parser;
// The command line and the config file live in the library (src/lib.rs) so that man/ can
// render and check them; `crate::config` keeps naming the config module here.
use posternd::cli::{
    AdminArgs, AuditCmd, CaCmd, CertsCmd, Cli, Cmd, GatewaysCmd, LockCmd, NodesCmd, PolicyCmd,
    RecordingsCmd, StorageCmd, TokensCmd, UsersCmd,
};
use posternd::config;

use crate::admin::AdminRequest;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("posternd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("posternd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Init {
            data_dir,
            cluster,
            listen,
            api_names,
            storage,
            storage_password_file,
            storage_ca_file,
            keys_from,
            recordings_dir,
            json,
        } => {
            let storage = server::InitStorage {
                url: storage,
                password_file: storage_password_file,
                ca_file: storage_ca_file,
                recordings_dir,
            };
            let out = server::init(
                &data_dir,
                cluster.as_deref(),
                listen,
                &api_names,
                None,
                &storage,
                keys_from.as_deref(),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("Created a Postern CA for cluster {} in {}", out.cluster, data_dir.display());
                println!("  config:  {}", out.config.display());
                println!("  API:     {}", out.api_url);
                println!("  CA pin:  {}", out.ca_pin);
                println!("Next: edit {} and run `posternd serve --config {}`", out.policy.display(), out.config.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Serve { config } => {
            server::serve(&config.config, None).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckConfig { config, print } => {
            let (cfg, policy) = server::check_config(&config.config)?;
            if print {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "config": cfg, "policy": policy }))?);
            } else {
                println!("{}: OK ({} roles, {} users in {})", cfg.file.display(), policy.roles().len(), policy.users().len(), cfg.policy.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Quickstart { data_dir, listen } => {
            server::quickstart(&data_dir, listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Users(c) => match c {
            UsersCmd::Add { name, a } => admin_cmd(&a, AdminRequest::UsersAdd { name }, |d: &admin::UserInvite| {
                let mut s = format!(
                    "Invite for {} (valid 24h, single use):\n  {}\n\nThe user runs (and pastes the invite when asked; on the command line it would be visible to every local user):\n  postern enroll --user {} --invite-stdin --ca <api_url> --ca-pin <pin>",
                    d.user, d.invite, d.user,
                );
                if !d.has_roles {
                    s.push_str("\n\nNote: the policy gives this user no roles yet; add [users.NAME] roles = [...] before they log in.");
                }
                s
            }).await,
            UsersCmd::Ls { a } => admin_cmd(&a, AdminRequest::UsersLs, |d: &Vec<admin::UserEntry>| {
                let mut s = format!("{:<24} {:<9} {:<9} {:<28} {}", "NAME", "ENROLLED", "FAILURES", "LOCKED", "ROLES");
                for u in d {
                    let locked = if u.hard_locked {
                        "hard (users reset)".to_owned()
                    } else {
                        u.locked_until.and_then(|t| i64::try_from(t).ok()).map_or("no".into(), |t| format!("until {}", server::fmt_time(t)))
                    };
                    // ENROLLED and FAILURES were printed as JSON values, which ignore the
                    // column width: kept unpadded, as scripts may have come to expect.
                    s.push_str(&format!("\n{:<24} {} {} {:<28} {}", u.name, u.enrolled, u.failures, locked, u.roles.join(",")));
                }
                s
            }).await,
            UsersCmd::Rm { name, a } => admin_cmd(&a, AdminRequest::UsersRm { name: name.clone() }, |_: &admin::UserRemoved| format!("Removed user {name}; their certificates can no longer be renewed.")).await,
            UsersCmd::Reset { name, a } => admin_cmd(&a, AdminRequest::UsersReset { name }, |d: &admin::UserReset| {
                let mut s = format!("New invite for {} (valid 24h, single use):\n  {}", d.user, d.invite);
                if d.was_hard_locked {
                    s.push_str("\n\nThe hard lock is cleared; the user enrols again with this invite (new password and TOTP secret).");
                }
                s
            }).await,
        },
        Cmd::Ca(CaCmd::Export { ca, a }) => admin_cmd(&a, AdminRequest::CaExport { ca }, |d: &admin::CaKeys| d.keys.join("\n")).await,
        Cmd::Certs(CertsCmd::Ls { limit, a }) => admin_cmd(&a, AdminRequest::CertsLs { limit }, |d: &Vec<admin::CertLine>| {
            let mut s = format!("{:<8} {:<12} {:<20} {:<22} {:<8} {}", "SERIAL", "KIND", "SUBJECT", "VALID BEFORE", "REVOKED", "PRINCIPALS");
            for c in d {
                // SERIAL and REVOKED unpadded, as they were printed (JSON values ignore the width).
                s.push_str(&format!(
                    "\n{} {:<12} {:<20} {:<22} {} {}",
                    c.serial, c.kind, c.subject, server::fmt_time(c.valid_before), c.revoked, c.principals
                ));
            }
            s
        }).await,
        Cmd::Audit(AuditCmd::Tail { n, a }) => admin_cmd(&a, AdminRequest::AuditTail { n }, |d: &Vec<admin::Event>| {
            // The sequence number unpadded, as it was printed (JSON values ignore the width).
            d.iter().map(|e| {
                format!("{} {} {:<18} {:<20} {}", e.seq, server::fmt_time(e.ts), e.kind, e.actor, e.detail)
            }).collect::<Vec<_>>().join("\n")
        }).await,
        Cmd::Certs(CertsCmd::Sign { ca, key, principals, user, ttl, a }) => {
            let line = std::fs::read_to_string(&key).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", key.display()))?;
            admin_cmd(&a, AdminRequest::CertsSign { ca, key: line, principals, user, ttl }, |d: &admin::SignedCert| d.certificate.clone()).await
        }
        Cmd::Tokens(TokensCmd::Add { kind, name, replace, labels, ttl, a }) => admin_cmd(&a, AdminRequest::TokensAdd { kind, name, replace, labels, ttl }, |d: &admin::TokenInvite| {
            let bin = if d.kind == postern_core::NodeKind::Gateway { "postern-gate" } else { "postern-shim" };
            format!("{}\n\nSingle use, for {} {}{}, expires {}. On that machine (the token in the environment: on the command line every local user could read it):\n  POSTERN_JOIN_TOKEN={} {bin} join --ca <api_url> --ca-pin <pin> --name {}",
                d.token, d.kind, d.name,
                if d.replace { " (may replace the existing one)" } else { "" },
                server::fmt_time(i64::try_from(d.expires_at).unwrap_or(0)), d.token, d.name)
        }).await,
        Cmd::Tokens(TokensCmd::Ls { a }) => admin_cmd(&a, AdminRequest::TokensLs, |d: &Vec<admin::TokenEntry>| {
            let mut s = format!("{:<14} {:<8} {:<20} {:<8} {:<22} {}", "ID", "KIND", "NAME", "REPLACE", "EXPIRES", "LABELS");
            for t in d {
                s.push_str(&format!("\n{:<14} {:<8} {:<20} {:<8} {:<22} {}", t.id, t.kind,
                    t.name.as_deref().unwrap_or("-"), if t.replace { "yes" } else { "no" },
                    server::fmt_time(t.expires_at), t.labels));
            }
            s
        }).await,
        Cmd::Tokens(TokensCmd::Rm { token, a }) => admin_cmd(&a, AdminRequest::TokensRm { token }, |_: &admin::TokensRemoved| "Token removed.".into()).await,
        Cmd::Nodes(NodesCmd::Ls { a }) => admin_cmd(&a, AdminRequest::NodesLs { kind: Some("node".into()) }, |d: &Vec<admin::NodeLine>| {
            let mut s = format!("{:<20} {:<22} {:<24} {:<22} {:<22} {}", "NAME", "ADDRESS", "LABELS", "JOINED", "LAST SYNC", "HOST CERT EXPIRES");
            for n in d {
                s.push_str(&format!("\n{:<20} {:<22} {:<24} {:<22} {:<22} {}",
                    n.name, n.address.as_deref().unwrap_or("-"), n.labels,
                    server::fmt_time(n.joined_at),
                    n.last_sync.map_or("never".into(), server::fmt_time),
                    n.host_cert_expiry.map_or("-".into(), server::fmt_time)));
            }
            s
        }).await,
        Cmd::Nodes(NodesCmd::Rm { name, a }) => admin_cmd(&a, AdminRequest::NodesRm { name: name.clone() }, |_: &admin::NodeRemoved| format!("Removed node {name}; its identity and host certificates no longer work.")).await,
        Cmd::Lock(LockCmd::Add { user, login, node, ttl, reason, a }) => {
            let (target, name) = match (user, login, node) {
                (Some(u), _, _) => ("user", u),
                (_, Some(l), _) => ("login", l),
                (_, _, Some(n)) => ("node", n),
                _ => anyhow::bail!("say what to lock: --user, --login or --node"),
            };
            admin_cmd(&a, AdminRequest::LockAdd { target: target.into(), name, ttl, reason }, |d: &admin::LockAdded| {
                format!("Lock {} on {} {} is in force; servers apply it at their next sync.", d.id, d.target, d.name)
            }).await
        }
        Cmd::Lock(LockCmd::Ls { a }) => admin_cmd(&a, AdminRequest::LockLs, |d: &Vec<admin::LockEntry>| {
            let mut s = format!("{:<6} {:<6} {:<20} {:<22} {}", "ID", "ON", "NAME", "EXPIRES", "REASON");
            for l in d {
                // The id unpadded, as it was printed (JSON values ignore the width).
                s.push_str(&format!("\n{} {:<6} {:<20} {:<22} {}", l.id, l.target.as_str(), l.name,
                    l.expires.and_then(|t| i64::try_from(t).ok()).map_or("never".into(), server::fmt_time), l.reason));
            }
            s
        }).await,
        Cmd::Gateways(GatewaysCmd::Ls { a }) => admin_cmd(&a, AdminRequest::NodesLs { kind: Some("gateway".into()) }, |d: &Vec<admin::NodeLine>| {
            // A serving gateway asks for the inventory every 2 s: seen in the last 10 s is alive.
            let now = i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())).unwrap_or(0);
            let mut s = format!("{:<20} {:<28} {:<22} {:<22} {}", "NAME", "ADDRESS", "JOINED", "LAST SEEN", "ALIVE");
            for n in d {
                let alive = n.last_sync.is_some_and(|t| now - t <= 10);
                s.push_str(&format!("\n{:<20} {:<28} {:<22} {:<22} {}",
                    n.name, n.address.as_deref().unwrap_or("-"),
                    server::fmt_time(n.joined_at),
                    n.last_sync.map_or("never".into(), server::fmt_time),
                    if alive { "yes" } else { "no" }));
            }
            s
        }).await,
        Cmd::Policy(PolicyCmd::Apply { file, dry_run, if_version, a }) => {
            let text = std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let name = file.display().to_string();
            // Checked here first, so that an error names the file as the admin typed it.
            postern_core::Policy::parse(&text, &name)?;
            let req = AdminRequest::PolicyApply { text, file: name, expected_version: if_version, dry_run };
            admin_cmd(&a, req, |d: &admin::PolicyApplied| {
                let what = if d.unchanged {
                    format!("unchanged: version {} in force is this text", d.version)
                } else if d.dry_run {
                    format!("valid; not applied (--dry-run): would become version {}", d.previous.unwrap_or(0) + 1)
                } else {
                    format!("version {} in force (was {}), sha256 {}", d.version, d.previous.unwrap_or(0), d.sha256)
                };
                format!("{}{what}", d.diff)
            }).await
        }
        Cmd::Storage(StorageCmd::Migrate { to, storage_password_file, storage_ca_file, recordings_dir, config, json }) => {
            let to = server::InitStorage { url: Some(to), password_file: storage_password_file, ca_file: storage_ca_file, recordings_dir };
            let m = migrate::migrate(&config.config, &to).await?;
            if json {
                println!("{}", serde_json::to_string(&m)?);
            } else {
                for (t, n) in &m.tables {
                    println!("  {t:<20} {n:>8} rows copied and verified");
                }
                println!("  audit chain: {} events verified on PostgreSQL; {} recordings checked", m.audit_events, m.recordings);
                println!("{} now uses PostgreSQL (the old one is {}). Start posternd.", m.config.display(), m.backup.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy(PolicyCmd::Show { version, a }) => admin_cmd(&a, AdminRequest::PolicyShow { version }, |d: &admin::PolicyText| d.text.trim_end().to_owned()).await,
        Cmd::Policy(PolicyCmd::History { a }) => admin_cmd(&a, AdminRequest::PolicyHistory, |d: &Vec<admin::PolicyVersion>| {
            let mut s = format!("{:>7} {:<22} {:<30} SHA256", "VERSION", "APPLIED", "BY");
            for v in d {
                s.push_str(&format!("\n{:>7} {:<22} {:<30} {}", v.version, server::fmt_time(v.applied_at), v.applied_by, v.sha256));
            }
            s
        }).await,
        Cmd::Recordings(RecordingsCmd::Ls { user, node, limit, a }) => admin_cmd(&a, AdminRequest::RecordingsLs { user, node, limit }, |d: &Vec<admin::RecordingMeta>| {
            let mut s = format!("{:<24} {:<16} {:<16} {:<16} {:<22} {:>9} {:>10}", "ID", "USER", "LOGIN", "NODE", "STARTED", "DURATION", "BYTES");
            for r in d {
                let (start, end) = (r.started_at, r.ended_at);
                s.push_str(&format!("\n{:<24} {:<16} {:<16} {:<16} {:<22} {:>8}s {:>10}{}",
                    r.id.as_str(), r.user.as_str(), r.login.as_str(),
                    r.node.as_str(), server::fmt_time(i64::try_from(start).unwrap_or(0)),
                    end.saturating_sub(start), r.bytes, if r.interrupted { "  (interrupted)" } else { "" }));
            }
            s
        }).await,
        Cmd::Lock(LockCmd::Rm { id, a }) => admin_cmd(&a, AdminRequest::LockRm { id }, |_: &admin::LockRemoved| format!("Lock {id} removed.")).await,
        Cmd::Audit(AuditCmd::Verify { checkpoints, a }) => {
            let (offhost, ignored) = if checkpoints.is_empty() {
                (Vec::new(), 0)
            } else {
                let cfg = config::Config::load(&a.config.config)?;
                let pub_path = keys::ca_dir(&cfg.data_dir).join("audit.pub");
                let text = std::fs::read_to_string(&pub_path).with_context(|| format!("cannot read the audit key {}", pub_path.display()))?;
                audit::read_offhost(&checkpoints, &audit::public_key_from_openssh(&text, &pub_path)?)?
            };
            let given = offhost.len();
            let data: admin::Verification = admin::call(&server::socket_for(&a.config.config)?, &AdminRequest::AuditVerify { checkpoints: offhost }).await?;
            let mut problems = data.problems.clone();
            // Checkpoint files that hold no checkpoint of this key prove nothing: a replaced
            // audit key (audit.pub rewritten) must not make them pass as "consistent".
            if !checkpoints.is_empty() && given == 0 {
                problems.push("none of the checkpoint files holds a checkpoint signed by this CA's audit key (DATA/ca/audit.pub): was the key replaced?".into());
            }
            if ignored > 0 {
                eprintln!("posternd: ignored {ignored} checkpoint line(s) that do not carry this CA's audit key signature");
            }
            if !checkpoints.is_empty() && given == 0 {
                eprintln!("posternd: no checkpoint signed by this CA's audit key in the files given");
            }
            if a.json {
                println!("{}", admin::sorted_json(&data)?);
            } else if problems.is_empty() {
                println!("audit log OK: {} events, hash chain intact, every event signed", data.events);
                match data.offhost_newest {
                    Some(n) => println!("consistent with the checkpoints emitted off the host (newest: event {n})"),
                    None => println!("(a log whose newest events were deleted with their checkpoints is found only with --checkpoints)"),
                }
            } else {
                println!("audit log TAMPERED ({} events checked):", data.events);
                for p in &problems {
                    println!("  {p}");
                }
            }
            Ok(if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

/// Runs one admin request and prints its answer `T`: with `--json` as the daemon sent it
/// (sorted keys, one line), else as `human` words it.
async fn admin_cmd<T: serde::de::DeserializeOwned + serde::Serialize>(
    a: &AdminArgs,
    req: AdminRequest,
    human: impl FnOnce(&T) -> String,
) -> anyhow::Result<ExitCode> {
    let data: T = admin::call(&server::socket_for(&a.config.config)?, &req).await?;
    if a.json {
        println!("{}", admin::sorted_json(&data)?);
    } else {
        println!("{}", human(&data));
    }
    Ok(ExitCode::SUCCESS)
}
