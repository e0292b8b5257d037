//! `posternd`'s command line: every subcommand and flag with its help and examples. It is a
//! library module so that `man/` renders posternd(8) from the very definitions the daemon parses.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

/// The command line as a `clap::Command` (for the man page).
pub fn command() -> clap::Command {
    Cli::command()
}

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
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Clone)]
pub struct ConfigArg {
    /// The daemon's configuration file.
    #[arg(
        long,
        default_value = "/etc/postern/posternd.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
}

#[derive(Args, Clone)]
pub struct AdminArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print one JSON value instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a new CA: config, sample policy, CA keys, API certificate and database.
    #[command(
        after_help = "Example:\n  posternd init --data-dir /var/lib/postern --cluster prod.example.com\n\nSeveral instances on one PostgreSQL database (high availability):\n  posternd init --data-dir /var/lib/postern --cluster prod.example.com --listen 10.0.0.1:3080 \\\n      --storage 'postgres://postern@db.example.com/postern?sslmode=require' \\\n      --storage-password-file /etc/postern/db-password --storage-ca-file /etc/postern/db-ca.pem \\\n      --recordings-dir /srv/postern/recordings\n  # copy /var/lib/postern/ca/ to the second host privately (it holds the CA keys), then there:\n  posternd init --data-dir /var/lib/postern --keys-from /root/postern-first --listen 10.0.0.2:3080 \\\n      --storage 'postgres://postern@db.example.com/postern?sslmode=require' \\\n      --storage-password-file /etc/postern/db-password --storage-ca-file /etc/postern/db-ca.pem\n\nPrints the CA pin (sha256:...) that clients pass as --ca-pin. Refuses to overwrite an existing CA, and a database that belongs to another CA."
    )]
    Init {
        /// Where to create everything.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The cluster's DNS-style name; servers are reached as NAME.<cluster>. Required,
        /// except with --keys-from (the cluster of that instance).
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// Address the HTTPS API listens on.
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:3080")]
        listen: std::net::SocketAddr,
        /// Extra DNS names or IP addresses for the API certificate.
        #[arg(long = "api-name", value_name = "NAME")]
        api_names: Vec<String>,
        /// Keep the tables in PostgreSQL (shared by several instances) instead of the embedded
        /// SQLite file: postgres://USER@HOST:PORT/DATABASE?sslmode=require|disable. The URL must
        /// not hold the password (see --storage-password-file).
        #[arg(long, value_name = "URL")]
        storage: Option<String>,
        /// A file (mode 0600) holding the database user's password; the config names the file.
        #[arg(long, value_name = "FILE", requires = "storage")]
        storage_password_file: Option<PathBuf>,
        /// PEM roots that verify the database's TLS certificate (with sslmode=require).
        #[arg(long, value_name = "FILE", requires = "storage")]
        storage_ca_file: Option<PathBuf>,
        /// Make another instance of the CA in DIR (an instance's data directory) on the same
        /// database: the same CA keys, pin, cluster and policy, copied file to file.
        #[arg(long, value_name = "DIR", requires = "storage")]
        keys_from: Option<PathBuf>,
        /// Where recordings are kept (default: recordings/ in the data directory); every
        /// instance on one database names one shared directory.
        #[arg(long, value_name = "DIR")]
        recordings_dir: Option<PathBuf>,
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
    /// The policy in the database, for several instances on PostgreSQL (one instance on
    /// SQLite reads its policy file).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Where the tables live: move an installation from SQLite to PostgreSQL.
    #[command(subcommand)]
    Storage(StorageCmd),
}

#[derive(Subcommand)]
pub enum StorageCmd {
    /// Copy every table of this (stopped) SQLite installation into an empty PostgreSQL
    /// database, verify the copy (every row, the audit chain with its signed checkpoints, each
    /// recording's SHA-256), and point the config at PostgreSQL.
    #[command(
        after_help = "Example:\n  systemctl stop posternd\n  posternd storage migrate --config /var/lib/postern/posternd.toml \\\n      --to 'postgres://postern@db.example.com/postern?sslmode=require' \\\n      --storage-password-file /etc/postern/db-password --storage-ca-file /etc/postern/db-ca.pem \\\n      --recordings-dir /srv/postern/recordings\n  systemctl start posternd\n\nThe SQLite file is left as it was, and the old config is kept as posternd.toml.before-migrate:\nputting that back is the way back (before anything was written to PostgreSQL)."
    )]
    Migrate {
        /// The PostgreSQL database (empty): postgres://USER@HOST:PORT/DATABASE?sslmode=…
        #[arg(long, value_name = "URL")]
        to: String,
        /// A file (mode 0600) holding the database user's password.
        #[arg(long, value_name = "FILE")]
        storage_password_file: Option<PathBuf>,
        /// PEM roots that verify the database's TLS certificate (with sslmode=require).
        #[arg(long, value_name = "FILE")]
        storage_ca_file: Option<PathBuf>,
        /// Copy the recordings here (a directory every instance will share).
        #[arg(long, value_name = "DIR")]
        recordings_dir: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file, show the change against the version in force, and make it
    /// the next version (audited), in force on every instance within a second.
    #[command(
        after_help = "Examples:\n  posternd policy apply policy.toml --dry-run   # validate and show the change only\n  posternd policy apply policy.toml\n  posternd policy apply policy.toml --if-version 7\n\nErrors name FILE:LINE:COLUMN and change nothing. A file equal to the version in force\nmakes no new version. With one instance on SQLite, edit the policy file instead:\nposternd reloads it when it changes and at SIGHUP."
    )]
    Apply {
        /// The policy (TOML, postern-policy.toml(5)).
        file: std::path::PathBuf,
        /// Only validate and show the change.
        #[arg(long)]
        dry_run: bool,
        /// Refuse unless version N is in force (another admin's change in between is not
        /// overwritten unseen).
        #[arg(long, value_name = "N")]
        if_version: Option<i64>,
        #[command(flatten)]
        a: AdminArgs,
    },
    /// Print the policy in force (or one version of it).
    #[command(
        after_help = "Examples:\n  posternd policy show\n  posternd policy show --version 3 > policy-v3.toml"
    )]
    Show {
        /// One version instead of the one in force.
        #[arg(long, value_name = "N")]
        version: Option<i64>,
        #[command(flatten)]
        a: AdminArgs,
    },
    /// List the policy's versions: when, by whom, and the SHA-256 of each.
    #[command(after_help = "Example:\n  posternd policy history")]
    History {
        #[command(flatten)]
        a: AdminArgs,
    },
}

#[derive(Subcommand)]
pub enum GatewaysCmd {
    /// List joined gateways: name, public address, when they joined and were last seen.
    #[command(
        after_help = "Examples:\n  posternd gateways ls\n  posternd gateways ls --json\n\nA gateway joins with a token of kind gateway:\n  posternd tokens add --kind gateway --name gate1\n  POSTERN_JOIN_TOKEN=TOKEN postern-gate join --ca URL --ca-pin PIN --name gate1\nRemove one with `posternd nodes rm NAME`."
    )]
    Ls {
        #[command(flatten)]
        a: AdminArgs,
    },
}

#[derive(Subcommand)]
pub enum RecordingsCmd {
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
pub enum TokensCmd {
    /// Create a single-use join token (printed once; only its id is stored in the clear).
    #[command(
        after_help = "Examples:\n  posternd tokens add --kind node --name web1 --labels env=prod,team=web\n  posternd tokens add --kind node --name web1 --replace\n  posternd tokens add --kind gateway --name gate1 --ttl 10m --json\n\nOn the server:\n  POSTERN_JOIN_TOKEN=TOKEN postern-shim join --ca URL --ca-pin PIN --name web1\n\nA token joins exactly the name it was made for. It does not replace a node or gateway that already has that name unless made with --replace, and never turns a node into a gateway or the reverse. Its labels are the node's complete label set: a join that asks for other labels is refused."
    )]
    Add {
        /// What may join with it.
        #[arg(long, value_parser = ["node", "gateway"])]
        kind: String,
        /// The one name that may join with it (a server's or gateway's name, one DNS label).
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Allow the join to replace the existing node (or gateway) of that name: its host
        /// certificates and identity stop working.
        #[arg(long)]
        replace: bool,
        /// The joined node's labels: its complete label set (a join asking for others is refused).
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
pub enum NodesCmd {
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
pub enum LockCmd {
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
pub enum UsersCmd {
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
    /// List users: enrolled, login failures since the last success, lock, roles.
    #[command(
        after_help = "Example:\n  posternd users ls --json\n\nFAILURES counts every failed login since the last successful one, across locks. LOCKED is `no`, `until TIME` (a timed lock: 15 minutes at the 5th failure, doubling at each 5 more) or `hard` (at the 30th failure: only `posternd users reset` ends it)."
    )]
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
    /// Clear a user's password, TOTP, failures and lock (also a hard lock), revoke their
    /// certificates, and print a new invite.
    #[command(
        after_help = "Example:\n  posternd users reset alice\n\nThis is how a hard lock ends: after 30 failed logins someone may know the password, so the user enrols again with the new invite."
    )]
    Reset {
        /// The user name.
        name: String,
        #[command(flatten)]
        a: AdminArgs,
    },
}

#[derive(Subcommand)]
pub enum CaCmd {
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
pub enum CertsCmd {
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
pub enum AuditCmd {
    /// Show the last events.
    #[command(after_help = "Example:\n  posternd audit tail -n 50")]
    Tail {
        /// How many events.
        #[arg(short = 'n', default_value_t = 20)]
        n: u32,
        #[command(flatten)]
        a: AdminArgs,
    },
    /// Check the hash chain and every event's signed checkpoint; exit 1 and name the first bad
    /// event when it was tampered with.
    #[command(
        after_help = "Examples:\n  posternd audit verify\n  posternd audit verify --checkpoints /var/log/auth.log --checkpoints web1-auth.log\n\nWithout --checkpoints, a log whose newest events were deleted together with their\ncheckpoints looks complete. Give the logs where posternd and the shims wrote their\n`postern-audit-checkpoint seq=N hash=H sig=S` lines (syslog, journalctl output) and verify\nfails when the log ends before the newest of them. Lines that do not carry this CA's audit\nkey's signature (DATA_DIR/ca/audit.pub) are counted and ignored."
    )]
    Verify {
        /// A log file holding checkpoint lines emitted off this host (repeatable).
        #[arg(long, value_name = "FILE")]
        checkpoints: Vec<std::path::PathBuf>,
        #[command(flatten)]
        a: AdminArgs,
    },
}
