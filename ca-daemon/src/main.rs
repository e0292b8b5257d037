//! `posternd`: the Postern CA daemon and its admin commands.

mod admin;
mod api;
mod audit;
mod auth;
mod config;
mod db;
mod gateway;
mod keys;
mod nodes;
mod recordings;
mod server;
mod service;
mod tls;
mod x509;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::admin::AdminRequest;

const EXAMPLES: &str = "\
Examples:
  Try Postern on this machine (creates ./postern-data, serves on 127.0.0.1:3080):
    posternd quickstart

  Set up a CA for real use, then run it:
    posternd init --data-dir /var/lib/postern --cluster prod.example.com --listen 0.0.0.0:3080
    posternd check-config --config /var/lib/postern/posternd.toml
    posternd serve --config /var/lib/postern/posternd.toml

  Invite a user (prints a one-time invite for `postern enroll`):
    posternd users add alice --config /var/lib/postern/posternd.toml

Exit status: 0 success, 1 error, 2 usage error.";

/// Postern's certificate authority: OpenSSH user and host certificates, short-lived X.509
/// identities, login with password + TOTP, TOML policy and a hash-chained audit log.
#[derive(Parser)]
#[command(name = "posternd", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// The daemon's configuration file.
    #[arg(
        long,
        default_value = "/etc/postern/posternd.toml",
        value_name = "FILE"
    )]
    config: PathBuf,
}

#[derive(Args, Clone)]
struct AdminArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print one JSON value instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new CA: config, sample policy, CA keys, API certificate and database.
    #[command(
        after_help = "Example:\n  posternd init --data-dir /var/lib/postern --cluster prod.example.com\n\nPrints the CA pin (sha256:...) that clients pass as --ca-pin. Refuses to overwrite an existing CA."
    )]
    Init {
        /// Where to create everything.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The cluster's DNS-style name; servers are reached as NAME.<cluster>.
        #[arg(long, value_name = "NAME")]
        cluster: String,
        /// Address the HTTPS API listens on.
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:3080")]
        listen: std::net::SocketAddr,
        /// Extra DNS names or IP addresses for the API certificate.
        #[arg(long = "api-name", value_name = "NAME")]
        api_names: Vec<String>,
        /// Print one JSON object (cluster, api_url, ca_pin, config).
        #[arg(long)]
        json: bool,
    },
    /// Run the HTTPS API and the admin socket.
    #[command(
        after_help = "Example:\n  posternd serve --config /var/lib/postern/posternd.toml\n\nSIGHUP (or editing the file) reloads the policy; a bad policy is reported with file:line:column and the last good one stays in force."
    )]
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate the configuration and the policy without starting (like `sshd -t`).
    #[command(
        after_help = "Example:\n  posternd check-config --config /etc/postern/posternd.toml\n\nAdd --print to show the effective configuration (like `sshd -T`)."
    )]
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the effective configuration and policy as JSON.
        #[arg(long)]
        print: bool,
    },
    /// Try Postern on this machine: init when needed, create user `admin`, serve on 127.0.0.1:3080.
    #[command(
        after_help = "Example:\n  posternd quickstart --data-dir ./postern-data\n\nPrints the `postern enroll` and `postern login` commands to run next."
    )]
    Quickstart {
        /// Data directory (created when missing).
        #[arg(long, value_name = "DIR", default_value = "./postern-data")]
        data_dir: PathBuf,
        /// Address to serve on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3080")]
        listen: std::net::SocketAddr,
    },
    /// Manage users (invites, removal, reset).
    #[command(subcommand)]
    Users(UsersCmd),
    /// Export CA public keys.
    #[command(subcommand)]
    Ca(CaCmd),
    /// List issued certificates.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Single-use join tokens for servers and gateways.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Joined servers.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Locks on users, logins or nodes.
    #[command(subcommand)]
    Lock(LockCmd),
    /// Joined gateways (`postern-gate`).
    #[command(subcommand)]
    Gateways(GatewaysCmd),
    /// Session recordings uploaded by gateways.
    #[command(subcommand)]
    Recordings(RecordingsCmd),
}

#[derive(Subcommand)]
enum GatewaysCmd {
    /// List joined gateways: name, public address, when they joined and were last seen.
    #[command(
        after_help = "Examples:\n  posternd gateways ls\n  posternd gateways ls --json\n\nA gateway joins with a token of kind gateway:\n  posternd tokens add --kind gateway\n  postern-gate join --ca URL --ca-pin PIN --token TOKEN --name gate1\nRemove one with `posternd nodes rm NAME`."
    )]
    Ls {
        #[command(flatten)]
        a: AdminArgs,
    },
}

#[derive(Subcommand)]
enum RecordingsCmd {
    /// List recorded sessions, newest first.
    #[command(
        after_help = "Examples:\n  posternd recordings ls\n  posternd recordings ls --user alice --node web1 --json\n\nEach recording is the asciicast v2 file DATA_DIR/recordings/ID.cast; play it with\n`asciinema play FILE`, or as its user with `postern play ID`."
    )]
    Ls {
        /// Only this Postern user's sessions.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Only sessions on this server.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// How many.
        #[arg(short = 'n', long = "limit", default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        a: AdminArgs,
    },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Create a single-use join token (printed once; only its id is stored in the clear).
    #[command(
        after_help = "Examples:\n  posternd tokens add --kind node --labels env=prod,team=web\n  posternd tokens add --kind gateway --ttl 10m --json\n\nOn the server:\n  postern-shim join --ca URL --ca-pin PIN --token TOKEN --name web1"
    )]
    Add {
        /// What may join with it.
        #[arg(long, value_parser = ["node", "gateway"])]
        kind: String,
        /// Labels the joined node gets (they win over labels the node asks for).
        #[arg(long, default_value = "", value_name = "K=V,...")]
        labels: String,
        /// How long the token is valid.
        #[arg(long, default_value = "30m", value_name = "DUR")]
        ttl: String,
        #[command(flatten)]
        a: AdminArgs,
    },
    /// List unexpired tokens (ids, not the tokens).
    Ls {
        #[command(flatten)]
        a: AdminArgs,
    },
    /// Delete a token (give the token or its id).
    Rm {
        /// The token or its id.
        token: String,
        #[command(flatten)]
        a: AdminArgs,
    },
}

#[derive(Subcommand)]
enum NodesCmd {
    /// List joined servers.
    #[command(after_help = "Example:\n  posternd nodes ls --json")]
    Ls {
        #[command(flatten)]
        a: AdminArgs,
    },
    /// Remove a server; its identity and host certificates stop working at once.
    #[command(after_help = "Example:\n  posternd nodes rm web1")]
    Rm {
        /// Node name.
        name: String,
        #[command(flatten)]
        a: AdminArgs,
    },
}

#[derive(Subcommand)]
enum LockCmd {
    /// Lock a user, a login or a node: stops issuance and renewal, reaches servers at their next sync.
    #[command(
        after_help = "Examples:\n  posternd lock add --user alice --reason 'laptop stolen'\n  posternd lock add --login root --ttl 1h --reason 'maintenance'\n  posternd lock add --node web1 --reason 'incident 42'"
    )]
    Add {
        /// Lock this Postern user.
        #[arg(long, group = "target", value_name = "USER")]
        user: Option<String>,
        /// Lock this OS login on every server.
        #[arg(long, group = "target", value_name = "LOGIN")]
        login: Option<String>,
        /// Lock every login on this server.
        #[arg(long, group = "target", value_name = "NODE")]
        node: Option<String>,
        /// How long the lock lasts (default: until removed).
        #[arg(long, value_name = "DUR")]
        ttl: Option<String>,
        /// Why (shown in `lock ls` and the audit log).
        #[arg(long, required = true)]
        reason: String,
        #[command(flatten)]
        a: AdminArgs,
    },
    /// List locks in force.
    Ls {
        #[command(flatten)]
        a: AdminArgs,
    },
    /// Remove a lock.
    Rm {
        /// Lock id (from `lock ls`).
        id: i64,
        #[command(flatten)]
        a: AdminArgs,
    },
}

#[derive(Subcommand)]
enum UsersCmd {
    /// Add a user and print a one-time invite (valid 24h) for `postern enroll`.
    #[command(
        after_help = "Example:\n  posternd users add alice\n\nGive alice a role in the policy file ([users.alice] roles = [...]) so that she can log in."
    )]
    Add {
        /// The user name.
        name: String,
        #[command(flatten)]
        a: AdminArgs,
    },
    /// List users.
    #[command(after_help = "Example:\n  posternd users ls --json")]
    Ls {
        #[command(flatten)]
        a: AdminArgs,
    },
    /// Remove a user; their certificates can no longer be renewed.
    #[command(after_help = "Example:\n  posternd users rm alice")]
    Rm {
        /// The user name.
        name: String,
        #[command(flatten)]
        a: AdminArgs,
    },
    /// Clear a user's password and TOTP and print a new invite.
    #[command(after_help = "Example:\n  posternd users reset alice")]
    Reset {
        /// The user name.
        name: String,
        #[command(flatten)]
        a: AdminArgs,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Print a CA's public key as an authorized_keys-style line (for TrustedUserCAKeys etc.).
    #[command(
        after_help = "Examples:\n  posternd ca export user > /etc/ssh/postern_user_ca.pub\n  posternd ca export host"
    )]
    Export {
        /// Which CA.
        #[arg(value_parser = ["user", "host", "node-access"])]
        ca: String,
        #[command(flatten)]
        a: AdminArgs,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Sign a key by hand, like `ssh-keygen -s` (break-glass): capped by policy and audited.
    #[command(
        after_help = "Examples:\n  posternd certs sign --ca node-access --key id.pub --principal deploy --user alice --ttl 5m\n  posternd certs sign --ca host --key ssh_host_ed25519_key.pub --principal web1 --principal web1.prod.example.com"
    )]
    Sign {
        /// Which CA signs.
        #[arg(long, value_parser = ["user", "host", "node-access"])]
        ca: String,
        /// The public key file to certify.
        #[arg(long, value_name = "PUBFILE")]
        key: PathBuf,
        /// A principal (login, or host name for --ca host); repeat for more.
        #[arg(long = "principal", value_name = "P", required = true)]
        principals: Vec<String>,
        /// The Postern user (the key id) for user and node-access certificates.
        #[arg(long, value_name = "U")]
        user: Option<String>,
        /// Lifetime (capped by the policy).
        #[arg(long, value_name = "DUR")]
        ttl: Option<String>,
        #[command(flatten)]
        a: AdminArgs,
    },
    /// List issued certificates, newest first.
    #[command(after_help = "Example:\n  posternd certs ls -n 20")]
    Ls {
        /// How many.
        #[arg(short = 'n', default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        a: AdminArgs,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Show the last events.
    #[command(after_help = "Example:\n  posternd audit tail -n 50")]
    Tail {
        /// How many events.
        #[arg(short = 'n', default_value_t = 20)]
        n: u32,
        #[command(flatten)]
        a: AdminArgs,
    },
    /// Check the hash chain; exit 1 and name the events when it was tampered with.
    #[command(after_help = "Example:\n  posternd audit verify")]
    Verify {
        #[command(flatten)]
        a: AdminArgs,
    },
}

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
        Cmd::Init { data_dir, cluster, listen, api_names, json } => {
            let out = server::init(&data_dir, &cluster, listen, &api_names, None)?;
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
                println!("{}: OK ({} roles, {} users in {})", cfg.file.display(), policy.roles.len(), policy.users.len(), cfg.policy.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Quickstart { data_dir, listen } => {
            server::quickstart(&data_dir, listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Users(c) => match c {
            UsersCmd::Add { name, a } => admin_cmd(&a, AdminRequest::UsersAdd { name }, |d| {
                let mut s = format!(
                    "Invite for {} (valid 24h, single use):\n  {}\n\nThe user runs:\n  postern enroll --user {} --invite {} --ca <api_url> --ca-pin <pin>",
                    d["user"].as_str().unwrap_or(""),
                    d["invite"].as_str().unwrap_or(""),
                    d["user"].as_str().unwrap_or(""),
                    d["invite"].as_str().unwrap_or("")
                );
                if d["has_roles"] == false {
                    s.push_str("\n\nNote: the policy gives this user no roles yet; add [users.NAME] roles = [...] before they log in.");
                }
                s
            }).await,
            UsersCmd::Ls { a } => admin_cmd(&a, AdminRequest::UsersLs, |d| {
                let mut s = format!("{:<24} {:<9} {:<7} {}", "NAME", "ENROLLED", "LOCKED", "ROLES");
                for u in d.as_array().into_iter().flatten() {
                    let roles: Vec<&str> = u["roles"].as_array().into_iter().flatten().filter_map(|r| r.as_str()).collect();
                    s.push_str(&format!("\n{:<24} {:<9} {:<7} {}", u["name"].as_str().unwrap_or(""), u["enrolled"], u["locked"], roles.join(",")));
                }
                s
            }).await,
            UsersCmd::Rm { name, a } => admin_cmd(&a, AdminRequest::UsersRm { name: name.clone() }, |_| format!("Removed user {name}; their certificates can no longer be renewed.")).await,
            UsersCmd::Reset { name, a } => admin_cmd(&a, AdminRequest::UsersReset { name }, |d| {
                format!("New invite for {} (valid 24h, single use):\n  {}", d["user"].as_str().unwrap_or(""), d["invite"].as_str().unwrap_or(""))
            }).await,
        },
        Cmd::Ca(CaCmd::Export { ca, a }) => admin_cmd(&a, AdminRequest::CaExport { ca }, |d| {
            d["keys"].as_array().into_iter().flatten().filter_map(|k| k.as_str()).collect::<Vec<_>>().join("\n")
        }).await,
        Cmd::Certs(CertsCmd::Ls { limit, a }) => admin_cmd(&a, AdminRequest::CertsLs { limit }, |d| {
            let mut s = format!("{:<8} {:<12} {:<20} {:<22} {:<8} {}", "SERIAL", "KIND", "SUBJECT", "VALID BEFORE", "REVOKED", "PRINCIPALS");
            for c in d.as_array().into_iter().flatten() {
                s.push_str(&format!(
                    "\n{:<8} {:<12} {:<20} {:<22} {:<8} {}",
                    c["serial"], c["kind"].as_str().unwrap_or(""), c["subject"].as_str().unwrap_or(""),
                    server::fmt_time(c["valid_before"].as_i64().unwrap_or(0)), c["revoked"], c["principals"].as_str().unwrap_or("")
                ));
            }
            s
        }).await,
        Cmd::Audit(AuditCmd::Tail { n, a }) => admin_cmd(&a, AdminRequest::AuditTail { n }, |d| {
            d.as_array().into_iter().flatten().map(|e| {
                format!("{:>6} {} {:<18} {:<20} {}", e["seq"], server::fmt_time(e["ts"].as_i64().unwrap_or(0)), e["kind"].as_str().unwrap_or(""), e["actor"].as_str().unwrap_or(""), e["detail"])
            }).collect::<Vec<_>>().join("\n")
        }).await,
        Cmd::Certs(CertsCmd::Sign { ca, key, principals, user, ttl, a }) => {
            let line = std::fs::read_to_string(&key).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", key.display()))?;
            admin_cmd(&a, AdminRequest::CertsSign { ca, key: line, principals, user, ttl }, |d| {
                d["certificate"].as_str().unwrap_or("").to_owned()
            }).await
        }
        Cmd::Tokens(TokensCmd::Add { kind, labels, ttl, a }) => admin_cmd(&a, AdminRequest::TokensAdd { kind, labels, ttl }, |d| {
            format!("{}\n\nSingle use, expires {}. On the server:\n  postern-shim join --ca <api_url> --ca-pin <pin> --token {} --name NAME",
                d["token"].as_str().unwrap_or(""), server::fmt_time(d["expires_at"].as_i64().unwrap_or(0)), d["token"].as_str().unwrap_or(""))
        }).await,
        Cmd::Tokens(TokensCmd::Ls { a }) => admin_cmd(&a, AdminRequest::TokensLs, |d| {
            let mut s = format!("{:<14} {:<8} {:<22} {}", "ID", "KIND", "EXPIRES", "LABELS");
            for t in d.as_array().into_iter().flatten() {
                s.push_str(&format!("\n{:<14} {:<8} {:<22} {}", t["id"].as_str().unwrap_or(""), t["kind"].as_str().unwrap_or(""), server::fmt_time(t["expires_at"].as_i64().unwrap_or(0)), t["labels"].as_str().unwrap_or("")));
            }
            s
        }).await,
        Cmd::Tokens(TokensCmd::Rm { token, a }) => admin_cmd(&a, AdminRequest::TokensRm { token }, |_| "Token removed.".into()).await,
        Cmd::Nodes(NodesCmd::Ls { a }) => admin_cmd(&a, AdminRequest::NodesLs { kind: Some("node".into()) }, |d| {
            let mut s = format!("{:<20} {:<22} {:<24} {:<22} {:<22} {}", "NAME", "ADDRESS", "LABELS", "JOINED", "LAST SYNC", "HOST CERT EXPIRES");
            for n in d.as_array().into_iter().flatten() {
                s.push_str(&format!("\n{:<20} {:<22} {:<24} {:<22} {:<22} {}",
                    n["name"].as_str().unwrap_or(""), n["address"].as_str().unwrap_or("-"), n["labels"].as_str().unwrap_or(""),
                    server::fmt_time(n["joined_at"].as_i64().unwrap_or(0)),
                    n["last_sync"].as_i64().map_or("never".into(), server::fmt_time),
                    n["host_cert_expiry"].as_i64().map_or("-".into(), server::fmt_time)));
            }
            s
        }).await,
        Cmd::Nodes(NodesCmd::Rm { name, a }) => admin_cmd(&a, AdminRequest::NodesRm { name: name.clone() }, |_| format!("Removed node {name}; its identity and host certificates no longer work.")).await,
        Cmd::Lock(LockCmd::Add { user, login, node, ttl, reason, a }) => {
            let (target, name) = match (user, login, node) {
                (Some(u), _, _) => ("user", u),
                (_, Some(l), _) => ("login", l),
                (_, _, Some(n)) => ("node", n),
                _ => anyhow::bail!("say what to lock: --user, --login or --node"),
            };
            admin_cmd(&a, AdminRequest::LockAdd { target: target.into(), name, ttl, reason }, |d| {
                format!("Lock {} on {} {} is in force; servers apply it at their next sync.", d["id"], d["target"].as_str().unwrap_or(""), d["name"].as_str().unwrap_or(""))
            }).await
        }
        Cmd::Lock(LockCmd::Ls { a }) => admin_cmd(&a, AdminRequest::LockLs, |d| {
            let mut s = format!("{:<6} {:<6} {:<20} {:<22} {}", "ID", "ON", "NAME", "EXPIRES", "REASON");
            for l in d.as_array().into_iter().flatten() {
                s.push_str(&format!("\n{:<6} {:<6} {:<20} {:<22} {}", l["id"], l["target"].as_str().unwrap_or(""), l["name"].as_str().unwrap_or(""),
                    l["expires"].as_i64().map_or("never".into(), server::fmt_time), l["reason"].as_str().unwrap_or("")));
            }
            s
        }).await,
        Cmd::Gateways(GatewaysCmd::Ls { a }) => admin_cmd(&a, AdminRequest::NodesLs { kind: Some("gateway".into()) }, |d| {
            let mut s = format!("{:<20} {:<28} {:<22} {}", "NAME", "ADDRESS", "JOINED", "LAST SEEN");
            for n in d.as_array().into_iter().flatten() {
                s.push_str(&format!("\n{:<20} {:<28} {:<22} {}",
                    n["name"].as_str().unwrap_or(""), n["address"].as_str().unwrap_or("-"),
                    server::fmt_time(n["joined_at"].as_i64().unwrap_or(0)),
                    n["last_sync"].as_i64().map_or("never".into(), server::fmt_time)));
            }
            s
        }).await,
        Cmd::Recordings(RecordingsCmd::Ls { user, node, limit, a }) => admin_cmd(&a, AdminRequest::RecordingsLs { user, node, limit }, |d| {
            let mut s = format!("{:<24} {:<16} {:<16} {:<16} {:<22} {:>9} {:>10}", "ID", "USER", "LOGIN", "NODE", "STARTED", "DURATION", "BYTES");
            for r in d.as_array().into_iter().flatten() {
                let (start, end) = (r["started_at"].as_u64().unwrap_or(0), r["ended_at"].as_u64().unwrap_or(0));
                s.push_str(&format!("\n{:<24} {:<16} {:<16} {:<16} {:<22} {:>8}s {:>10}{}",
                    r["id"].as_str().unwrap_or(""), r["user"].as_str().unwrap_or(""), r["login"].as_str().unwrap_or(""),
                    r["node"].as_str().unwrap_or(""), server::fmt_time(i64::try_from(start).unwrap_or(0)),
                    end.saturating_sub(start), r["bytes"].as_u64().unwrap_or(0), if r["interrupted"] == true { "  (interrupted)" } else { "" }));
            }
            s
        }).await,
        Cmd::Lock(LockCmd::Rm { id, a }) => admin_cmd(&a, AdminRequest::LockRm { id }, |_| format!("Lock {id} removed.")).await,
        Cmd::Audit(AuditCmd::Verify { a }) => {
            let data = admin::call(&server::socket_for(&a.config.config)?, &AdminRequest::AuditVerify).await?;
            let problems: Vec<String> = data["problems"].as_array().into_iter().flatten().filter_map(|p| p.as_str().map(str::to_owned)).collect();
            if a.json {
                println!("{data}");
            } else if problems.is_empty() {
                println!("audit log OK: {} events, hash chain intact", data["events"]);
            } else {
                println!("audit log TAMPERED ({} events checked):", data["events"]);
                for p in &problems {
                    println!("  {p}");
                }
            }
            Ok(if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

async fn admin_cmd(
    a: &AdminArgs,
    req: AdminRequest,
    human: impl FnOnce(&serde_json::Value) -> String,
) -> anyhow::Result<ExitCode> {
    let data = admin::call(&server::socket_for(&a.config.config)?, &req).await?;
    if a.json {
        println!("{data}");
    } else {
        println!("{}", human(&data));
    }
    Ok(ExitCode::SUCCESS)
}
