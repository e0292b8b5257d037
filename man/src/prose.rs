//! What a command page says beyond its clap definition: the one-line name, the description,
//! examples, exit status, environment, files and related pages.
//!
//! Text is plain; `` `code` `` is set in bold. Every example that runs one of Postern's
//! commands is parsed by that command's clap definition in the tests, so a renamed or removed
//! flag breaks the build of the pages, not the reader's shell.

/// The prose of one command page.
pub struct Prose {
    /// The NAME line after the dash.
    pub name: &'static str,
    /// Paragraphs added to DESCRIPTION, after the command's own description.
    pub description: &'static [&'static str],
    /// EXAMPLES.
    pub examples: &'static [Example],
    /// EXIT STATUS: code, meaning.
    pub exit_status: &'static [(&'static str, &'static str)],
    /// ENVIRONMENT: variable, meaning.
    pub environment: &'static [(&'static str, &'static str)],
    /// FILES: path, meaning.
    pub files: &'static [(&'static str, &'static str)],
    /// SEE ALSO, as `page(section)`.
    pub see_also: &'static [&'static str],
}

/// One example: what it does, and the command lines (shell syntax).
pub struct Example {
    /// What it does.
    pub what: &'static str,
    /// The command lines.
    pub commands: &'static [&'static str],
}

const USAGE_ERROR: (&str, &str) = (
    "2",
    "Usage error: unknown command or flag, missing or invalid value. Nothing was done.",
);

const POSTERN_LOG: (&str, &str) = (
    "POSTERN_LOG",
    "Which log lines go to standard error, as a tracing filter: `error`, `warn`, `info` \
     (the default) or `debug`, optionally per module (`info,posternd=debug`).",
);

/// postern(1).
pub static POSTERN: Prose = Prose {
    name: "log in to a Postern cluster for stock ssh, scp and sftp",
    description: &[
        "`postern login` asks for your Postern password and one-time code, generates a new \
         Ed25519 key on this machine, and has the cluster's certificate authority (posternd(8)) \
         sign it. It writes the key, the SSH certificate, a known_hosts file that trusts the \
         cluster's host CA, and an ssh_config block into ~/.ssh/postern/CLUSTER/, and makes \
         ~/.ssh/config include that block. From then on stock `ssh`, `scp` and `sftp` reach \
         every server of the cluster as NAME.CLUSTER through the cluster's gateway \
         (postern-gate(8)), with no further help from `postern`.",
        "The certificate is short-lived (12 hours unless the policy says otherwise). \
         `postern renew` replaces it without a password, proving possession of the key with \
         the X.509 identity issued at login, until the renewal deadline the policy sets after \
         the last password login (7 days by default). `postern renew --install-timer` \
         renews daily.",
        "The private key never leaves this machine. Every file is written atomically, and \
         `postern` refuses to write through a symbolic link under ~/.ssh/postern. The CA, \
         its pin and the user name given at `postern enroll` or the first `postern login` are \
         remembered, so later logins need no flags.",
    ],
    examples: &[
        Example {
            what: "First time, with the invite your administrator gave you (the CA address \
                   and pin come from them too), pasted when asked:",
            commands: &[
                "postern enroll --ca https://ca.example.com:3080 --ca-pin sha256:4f1c0a... --user alice --invite-stdin",
                "postern login",
            ],
        },
        Example {
            what: "Every day: sign in, then use ssh as usual; servers are NAME.CLUSTER:",
            commands: &["postern login", "ssh alice@web1.prod.example.com", "scp report.txt deploy@web1.prod.example.com:/tmp/"],
        },
        Example {
            what: "Renew without a password every day until the renewal deadline:",
            commands: &["postern renew --install-timer"],
        },
        Example {
            what: "Sign in from a script, with a longer certificate in ssh-agent:",
            commands: &["printf '%s\\n' \"$PW\" | postern login --password-stdin --otp \"$(oathtool --totp -b \"$SEED\")\" --ttl 24h --agent --json"],
        },
        Example {
            what: "See what the certificate allows and when it expires, then sign out:",
            commands: &["postern status", "postern logout"],
        },
        Example {
            what: "Replay one of your recorded sessions at four times its speed:",
            commands: &["postern recordings ls --node web1", "postern play s-5f3a9c --speed 4"],
        },
    ],
    exit_status: &[
        ("0", "Success."),
        (
            "1",
            "Error: the CA is unreachable or answered something unexpected, a file could not \
             be read or written, or (for `status`) nobody is logged in.",
        ),
        USAGE_ERROR,
        (
            "3",
            "Refused: wrong password or one-time code, account or login locked, denied by the \
             policy, or the renewal window is over (run `postern login`).",
        ),
    ],
    environment: &[
        (
            "HOME",
            "Where ~/.ssh is. When unset, the home directory of the passwd database is used; \
             a relative HOME is an error.",
        ),
        (
            "XDG_CONFIG_HOME",
            "Where `renew --install-timer` puts the systemd user units (default \
             ~/.config/systemd/user).",
        ),
        (
            "POSTERN_FORCE_CRON",
            "When 1, `renew --install-timer` installs a crontab line even where a systemd user \
             manager runs.",
        ),
        (
            "SSH_AUTH_SOCK",
            "The ssh-agent that `login --agent` adds the key and certificate to; `renew` \
             refreshes the certificate there when the login used --agent.",
        ),
    ],
    files: &[
        (
            "~/.ssh/postern/current.json",
            "The cluster of the last login, with the CA URL, pin and user that `postern login` \
             reuses.",
        ),
        (
            "~/.ssh/postern/CLUSTER/",
            "One folder per cluster: id_ed25519 and id_ed25519.pub (the key), \
             id_ed25519-cert.pub (the SSH certificate), known_hosts (an @cert-authority line for \
             the host CA), ssh_config (Host *.CLUSTER with ProxyJump, CertificateFile, \
             IdentityFile, UserKnownHostsFile), tls.crt and tls.key (the X.509 identity used by \
             `renew`, `recordings` and `play`), ca.crt (the service CA) and profile.json (what \
             was granted).",
        ),
        (
            "~/.ssh/config",
            "Starts with Include ~/.ssh/postern/*/ssh_config, added once by the first login.",
        ),
        (
            "~/.config/systemd/user/postern-renew.timer",
            "The daily renewal installed by `renew --install-timer`, with postern-renew.service \
             beside it; without systemd, a crontab line marked # postern-renew.",
        ),
    ],
    see_also: &[
        "ssh(1)",
        "ssh_config(5)",
        "ssh-agent(1)",
        "posternd(8)",
        "postern-gate(8)",
        "postern-shim(8)",
        "postern-policy.toml(5)",
    ],
};

/// posternd(8).
pub static POSTERND: Prose = Prose {
    name: "Postern certificate authority daemon",
    description: &[
        "`posternd` holds the cluster's four keys: the user CA, which signs the certificates \
         people log in with; the host CA, which signs every server's and the gateway's host \
         certificates; the node-access CA, which signs the short-lived certificates the \
         gateway uses to log in to servers (servers trust only this one, so nobody bypasses the \
         recording gateway); and the service X.509 CA, which issues the mTLS identities of \
         servers, gateways and logged-in users. Clients pin the service CA by the SHA-256 pin \
         `posternd init` prints.",
        "`posternd serve` runs the HTTPS API that postern(1), postern-shim(8) and \
         postern-gate(8) use: enrolment and login with password and TOTP, password-less \
         renewal, joining of servers and gateways with single-use tokens, policy bundles, the \
         KRL, locks, session events and recordings. Every issued certificate and every event \
         is written to a hash-chained audit log in the same database transaction, with a \
         checkpoint (its sequence number and hash) signed by the audit key DATA_DIR/ca/audit.key, \
         which the database does not hold. The newest checkpoint is logged as a line \
         `postern-audit-checkpoint seq=N hash=H sig=S` to syslog (facility auth) and to \
         standard error whenever a newer event was signed (at most every second), and is \
         sent to every joined server, whose postern-shim logs it to that server's syslog: \
         `audit verify --checkpoints FILE` finds with these copies a log whose newest events \
         were deleted. An installation older than checkpoints gets its audit key at its first \
         start, and the events already logged are signed then.",
        "The policy file (postern-policy.toml(5)) is reloaded on SIGHUP and whenever its \
         content changes (checked every second). A policy with an error is reported with \
         file, line and column, audited, and ignored: the last good policy stays in force. \
         `serve` stops on SIGTERM or SIGINT. It refuses to start when a CA key file is not mode \
         0600 in a 0700 directory owned by its user.",
        "Logins lock after repeated failures, and names that are not users lock the same \
         way, so that a lock says nothing about whether a user exists. Failures count from \
         the last successful login and are not forgotten when a lock ends: the 5th, 10th, \
         15th, 20th and 25th failures lock the account for 15 minutes, 30 minutes, 1, 2 and 4 \
         hours, and the 30th locks it hard, until `posternd users reset NAME`, which also \
         sets new credentials (someone has been guessing). During a lock every attempt is \
         refused unchecked and counts nothing, a right password and code included. An \
         attacker who knows the password thus gets 30 guesses at the one-time code in 7 \
         hours 45 minutes, each right with a probability of 3 in 1,000,000 (the codes of the \
         current time step and its two neighbours are accepted): a chance of about 1 in \
         11,000, and then none. (With a fresh start after every 15-minute lock, 480 guesses a \
         day found the code in 1.9 years on average.) `posternd users ls` shows each user's \
         failures and lock. A name that is not a user is never logged or audited, since it \
         may be a password typed into the wrong field: the per-minute failure summaries \
         (auth.failures events) show it as <unknown> and a short tag that is the same for \
         the same name until the daemon restarts.",
        "The admin commands (users, ca, certs, audit, tokens, nodes, lock, gateways, \
         recordings) ask the running daemon through its admin socket, DATA_DIR/admin.sock, \
         which they find through --config; only root and the daemon's own user may use it. \
         With --json they print the daemon's answer as one JSON value.",
    ],
    examples: &[
        Example {
            what: "Try Postern on this machine (creates ./postern-data, a user admin, and \
                   serves on 127.0.0.1:3080):",
            commands: &["posternd quickstart"],
        },
        Example {
            what: "Create a CA for real use, check it, and run it:",
            commands: &[
                "posternd init --data-dir /var/lib/postern --cluster prod.example.com --api-name ca.prod.example.com",
                "posternd check-config --config /var/lib/postern/posternd.toml",
                "posternd serve --config /var/lib/postern/posternd.toml",
            ],
        },
        Example {
            what: "Invite a user (then give them a role under [users.alice] in the policy):",
            commands: &["posternd users add alice --config /var/lib/postern/posternd.toml"],
        },
        Example {
            what: "Let a server join with the labels env=prod and team=web (the token is \
                   printed once), then run the join on the server:",
            commands: &[
                "posternd tokens add --kind node --name web1 --labels env=prod,team=web",
                "POSTERN_JOIN_TOKEN=TOKEN postern-shim join --ca https://ca.prod.example.com:3080 --ca-pin sha256:4f1c0a... --name web1 --pam",
            ],
        },
        Example {
            what: "Stop a user at once: no new certificates, live gateway sessions cut, \
                   servers refuse at their next sync:",
            commands: &[
                "posternd lock add --user alice --reason 'laptop stolen'",
                "posternd lock ls",
                "posternd lock rm 1",
            ],
        },
        Example {
            what: "Check a policy edit, then see what happened lately and whether the audit \
                   log is intact:",
            commands: &[
                "posternd check-config --print",
                "posternd audit tail -n 50",
                "posternd audit verify",
            ],
        },
        Example {
            what: "Sign a host key by hand (break-glass; capped by the policy and audited):",
            commands: &["posternd certs sign --ca host --key ssh_host_ed25519_key.pub --principal web1 --principal web1.prod.example.com"],
        },
    ],
    exit_status: &[
        ("0", "Success."),
        (
            "1",
            "Error: the configuration or the policy is invalid (`check-config`), `serve` could \
             not start, an admin command could not reach the daemon or was refused, or \
             `audit verify` found the hash chain broken, an event without a valid signed \
             checkpoint, or a log shorter than a checkpoint given with --checkpoints.",
        ),
        USAGE_ERROR,
    ],
    environment: &[POSTERN_LOG],
    files: &[
        (
            "/etc/postern/posternd.toml",
            "The configuration read by default (--config); see posternd.toml(5). `init` writes \
             one into the data directory.",
        ),
        (
            "/etc/postern/policy.toml",
            "The policy, as named by the configuration's policy key; see \
             postern-policy.toml(5).",
        ),
        (
            "DATA_DIR/ca/",
            "The CA keys (user_ca, host_ca, node_ca, service_ca.key), the API's TLS key and \
             the audit checkpoint key (audit.key, its public half audit.pub), each mode 0600 \
             in a directory of mode 0700. DATA_DIR is the configuration's \
             data_dir, /var/lib/postern on a packaged system.",
        ),
        (
            "DATA_DIR/posternd.db",
            "The SQLite database: users, certificates, nodes, tokens, locks, audit log.",
        ),
        ("DATA_DIR/admin.sock", "The admin socket (mode 0600)."),
        (
            "DATA_DIR/recordings/",
            "Session recordings uploaded by gateways, one asciicast v2 file ID.cast each.",
        ),
    ],
    see_also: &[
        "posternd.toml(5)",
        "postern-policy.toml(5)",
        "postern(1)",
        "postern-gate(8)",
        "postern-shim(8)",
        "sshd(8)",
        "ssh-keygen(1)",
    ],
};

/// postern-gate(8).
pub static POSTERN_GATE: Prose = Prose {
    name: "recording ProxyJump gateway of a Postern cluster",
    description: &[
        "Users reach every server of the cluster through `postern-gate`: the ssh_config block \
         that postern(1) writes names it as ProxyJump for Host *.CLUSTER. The gateway \
         authenticates the user by the certificate from `postern login`, finds the server in \
         the CA's inventory, and terminates the inner SSH connection itself: it presents a host \
         certificate for the server's name, asks posternd(8) to authorize this user, login and \
         server and to sign a node-access certificate for exactly that login (five minutes, \
         key id USER/SESSION), logs in to the server's stock sshd with it, and bridges every \
         channel.",
        "The gateway accepts the server's host certificate only when the host CA signed it \
         for the host key the CA certified when that server joined, with key id and a \
         principal equal to the server's name: a machine that was removed or replaced does not \
         pass for the server with the certificate it kept. It refuses user certificates that \
         carry critical options (it enforces none of them). With --egress-address at join, \
         node-access certificates carry source-address with those addresses, and servers \
         exempt them from sshd's PerSourcePenalties; without it, servers exempt the address \
         the CA saw the join come from. When the CA refuses a session, or the server's sshd \
         closes the connection before authentication or refuses the login, the user reads the \
         reason on standard error (exit status 255) rather than \"Permission denied\".",
        "Terminal sessions are recorded as asciicast v2 files in the state directory and \
         uploaded to the CA. In the policy's strict recording mode (the default) a byte of \
         server output reaches the user only after it was written to the recording, and a \
         recording that cannot be started refuses the session; in best-effort mode the session \
         goes on. File transfers (SFTP, scp) and port forwards are audit events, not \
         recordings, while the gateway can follow the transfer's protocol: from the first byte \
         it cannot (or when a terminal was requested), the channel is recorded like a command, \
         and so is every other subsystem. Locks cut live sessions at once. Recordings left by a crash are completed \
         and marked interrupted when `serve` starts.",
        "The address users are told to use has one source: posternd.toml(5)'s [gateway] \
         public_addr, which `postern login` writes as ProxyJump. The CA puts its host into the \
         host certificate of every gateway that joins, so `join` needs no --address; an \
         --address that differs from it is named too, with a warning that users go to \
         public_addr. Stock ssh accepts the gateway only when its certificate names the host it \
         connects to (otherwise: \"Host key verification failed\"), so `serve` asks the CA for \
         public_addr when it starts (or, when the CA cannot be asked, takes what it said at \
         join) and refuses to start when the certificate does not name its host, naming both. \
         Re-join with a token made with --replace, or set public_addr to a name the certificate \
         has and restart posternd(8). Without a public_addr `serve` starts with a warning, since \
         `postern login` then sends nobody through the gateway.",
        "`serve` runs until it is stopped by a signal. Its settings come from flags, then from \
         the configuration file given with --config (postern-gate.toml(5)), then from the \
         defaults.",
    ],
    examples: &[
        Example {
            what: "Join the cluster with a token from `posternd tokens add --kind gateway --name gate1`; \
                   the host certificate names the CA's [gateway] public_addr:",
            commands: &["POSTERN_JOIN_TOKEN=TOKEN postern-gate join --ca https://ca.example.com:3080 --ca-pin sha256:4f1c0a... --name gate1"],
        },
        Example {
            what: "After public_addr changed in posternd.toml, re-join so that the certificate names it \
                   (`serve` refuses to start until then):",
            commands: &[
                "posternd tokens add --kind gateway --name gate1 --replace",
                "POSTERN_JOIN_TOKEN=TOKEN postern-gate join --ca https://ca.example.com:3080 --ca-pin sha256:4f1c0a... --name gate1",
            ],
        },
        Example {
            what: "Serve, with the settings of /etc/postern/gate.toml:",
            commands: &["postern-gate serve --config /etc/postern/gate.toml"],
        },
        Example {
            what: "Serve on another port, for a test:",
            commands: &["postern-gate serve --state-dir /tmp/gate --listen 127.0.0.1:2222"],
        },
        Example {
            what: "What users run: nothing but ssh, after `postern login`:",
            commands: &["ssh alice@web1.prod.example.com"],
        },
    ],
    exit_status: &[
        ("0", "Success (`join`)."),
        (
            "1",
            "Error: the join was refused or the CA is unreachable, the state directory or the \
             configuration file is missing or invalid, the host certificate does not name the \
             host of the CA's [gateway] public_addr, or the listen address is taken.",
        ),
        USAGE_ERROR,
    ],
    environment: &[
        POSTERN_LOG,
        (
            "POSTERN_JOIN_TOKEN",
            "The join token, when --token is not given (keeps it out of the process list).",
        ),
    ],
    files: &[
        (
            "/etc/postern/gate.toml",
            "The configuration, read when named with --config; see postern-gate.toml(5).",
        ),
        (
            "/var/lib/postern-gate/",
            "The state directory (--state-dir): host_key and host_key-cert.pub (the gateway's \
             SSH host key and certificate), identity.key and identity.crt (its mTLS identity), \
             ca.crt (the service CA), joined.json (CA URL, pin, name, cluster, and the CA's public_addr \
             at join).",
        ),
        (
            "/var/lib/postern-gate/recordings/",
            "Recordings not yet uploaded to the CA.",
        ),
        (
            "/var/lib/postern-gate/events/",
            "Audit events the CA has not acknowledged yet, on disk before the operation they \
             describe goes through in strict recording; sent first when the gateway starts. \
             At most [audit] spool_max_bytes; see postern-gate.toml(5).",
        ),
    ],
    see_also: &[
        "postern-gate.toml(5)",
        "posternd(8)",
        "postern(1)",
        "postern-shim(8)",
        "postern-policy.toml(5)",
        "ssh(1)",
        "asciinema(1)",
    ],
};

/// postern-shim(8).
pub static POSTERN_SHIM: Prose = Prose {
    name: "Postern helper for stock sshd: join, principals, PAM, sync",
    description: &[
        "`postern-shim join` generates the server's host key and mTLS identity, redeems a \
         single-use token at the CA, installs the host certificate, the node-access CA key, \
         the KRL and the first policy bundle into the state directory, and writes the sshd \
         drop-in 50-postern.conf (HostKey, HostCertificate, TrustedUserCAKeys, RevokedKeys, \
         AuthorizedPrincipalsCommand, AuthorizedPrincipalsCommandUser postern-shim, \
         AuthorizedPrincipalsFile none, AuthorizedKeysFile none, AuthorizedKeysCommand none, \
         PasswordAuthentication no, KbdInteractiveAuthentication no, HostbasedAuthentication \
         no, GSSAPIAuthentication no, MaxStartups 100:30:200, and on OpenSSH 9.8 and \
         later PerSourcePenaltyExemptList with the gateways' addresses). It checks the result \
         with `sshd -t`, then reads `sshd -T` and requires Postern's value for each of these \
         keywords: sshd keeps the first value it reads, so a line above the Include in \
         sshd_config (or in an earlier drop-in) silently wins. When either check fails, join \
         names the keywords, removes its drop-in again and leaves sshd as it was; otherwise it \
         reloads sshd. `sshd -T` without a connection does not evaluate Match blocks, so join \
         also reads sshd_config and the files it includes and refuses a Match block that sets \
         one of these keywords to another value. `sync` repeats both checks every time and \
         fails (exit status 1, also logged) when a later change reopened a way in. With \
         --keep-local-auth the \
         drop-in leaves AuthorizedKeysFile and the password keywords as sshd_config has them \
         (Debian's defaults accept ~/.ssh/authorized_keys, and passwords where the account \
         has one); such logins bypass the gateway, its recordings, locks and the KRL, so join \
         warns and `status` shows it. With --pam it adds \
         pam_exec lines for the account and session stages to sshd's PAM file, keeping a copy \
         as FILE.postern-backup.",
        "A join token (`posternd tokens add --kind node --name NAME`) joins exactly the name it \
         was made for, once. It replaces a node that already has that name only when it was \
         made with --replace, and never replaces a gateway. Its labels are the node's complete \
         label set: --labels only states what the server expects, and a join asking for a \
         label the token does not give is refused. Refused joins are audited (join.refused) \
         and leave the token unused.",
        "sshd then trusts only the node-access CA, whose certificates only the gateway \
         holds, and runs `postern-shim principals` for every certificate login. It answers from \
         local files only, within two seconds: it prints the login when the policy bundle lets \
         the certificate's Postern user (its key id up to the first /) use that login on this \
         server, and prints nothing otherwise. A missing, corrupt or stale bundle (older than \
         the policy's max_bundle_age), a lock, or a malformed argument is a refusal. Every \
         decision is logged to syslog (facility auth), since sshd discards the command's \
         standard error.",
        "`postern-shim pam`, run by pam_exec, refuses locked users, logins and nodes in the \
         account stage and reports session open and close to the CA, spooling the event when \
         the CA is unreachable.",
        "`postern-shim sync` fetches the policy bundle, locks, KRL and node-access CA key, \
         renews the host certificate when the CA says it is due (a third of its life left) or \
         at once with --renew, keeps the drop-in's PerSourcePenaltyExemptList equal to the \
         gateways' addresses the CA reports, and delivers spooled events. When the CA's \
         newest signed audit checkpoint changed, it logs it to syslog \
         (`postern-audit-checkpoint seq=N hash=H sig=S`): a copy off the CA's host, which \
         `posternd audit verify --checkpoints` reads. After installing a \
         renewed host certificate or a changed drop-in it reloads sshd (systemctl reload when \
         systemd runs the sshd named by the effective PidFile, SIGHUP to that pid otherwise) \
         and checks with ssh-keyscan at the joined address that sshd serves the new \
         certificate, failing otherwise: OpenSSH 9.8 and later (Debian 13) read \
         HostCertificate only when they start or reload, so without the reload a server keeps \
         presenting its old certificate until it expires and every session then fails the \
         gateway's host check. --no-reload leaves the reload to the admin. The \
         package's postern-shim-sync.timer runs it every five minutes; elsewhere, run it from \
         cron well within max_bundle_age. Every file is \
         replaced atomically: sshd refuses every key when RevokedKeys is unreadable or \
         truncated.",
    ],
    examples: &[
        Example {
            what: "Join this server with a token from `posternd tokens add --kind node --name web1 --labels env=prod` \
                   (in the environment: on the command line every local user could read it):",
            commands: &["POSTERN_JOIN_TOKEN=TOKEN postern-shim join --ca https://ca.example.com:3080 --ca-pin sha256:4f1c0a... --name web1 --pam"],
        },
        Example {
            what: "Join with the token in the environment, sshd listening on port 2222:",
            commands: &["POSTERN_JOIN_TOKEN=TOKEN postern-shim join --ca https://ca.example.com:3080 --ca-pin sha256:4f1c0a... --name web2 --address web2.internal:2222"],
        },
        Example {
            what: "Refresh policy, locks, KRL and the host certificate, then look at the result:",
            commands: &["postern-shim sync", "postern-shim status"],
        },
        Example {
            what: "What the drop-in makes sshd run for every certificate login:",
            commands: &["postern-shim principals %u %k %t %i %s"],
        },
    ],
    exit_status: &[
        (
            "0",
            "Success. For `principals`: the login is allowed, and it was printed. For `pam`: \
             the account is not locked, or a session event was sent or spooled.",
        ),
        (
            "1",
            "Error or refusal. For `principals`: denied, with nothing printed (also when the \
             two-second deadline is reached). For `pam`: the account stage refuses (a lock, or \
             no valid bundle). For `join`, `sync` and `status`: the CA refused or is \
             unreachable, `sshd -t` failed, or the server has not joined.",
        ),
        USAGE_ERROR,
    ],
    environment: &[
        (
            "POSTERN_JOIN_TOKEN",
            "The join token, when --token is not given (keeps it out of the process list).",
        ),
        (
            "PAM_TYPE, PAM_USER, PAM_RHOST, PAM_TTY",
            "Set by pam_exec(8) for `pam`: the stage (account, open_session, close_session), \
             the login and the session's origin.",
        ),
        (
            "SSH_AUTH_INFO_0",
            "Set by sshd(8) for PAM: the certificate the user logged in with, whose key id \
             names the Postern user and the gateway's session.",
        ),
    ],
    files: &[
        (
            "/var/lib/postern-shim/",
            "The state directory (--state-dir, mode 0755): ssh_host_ed25519_key and its \
             -cert.pub, node_access_ca.pub (TrustedUserCAKeys), revoked_keys.krl (RevokedKeys), \
             bundle.json (the policy slice for this server, with its locks), joined.json, \
             identity.key, identity.crt and ca.crt (the mTLS identity and the service CA), and \
             spool/ (events waiting for the CA).",
        ),
        (
            "/etc/ssh/sshd_config.d/50-postern.conf",
            "The drop-in `join` writes; re-run `join` rather than editing it.",
        ),
        (
            "/etc/pam.d/sshd",
            "Gets the pam_exec lines with `join --pam`.",
        ),
        (
            "/usr/libexec/postern/postern-shim",
            "The shim as sshd runs it: sshd requires a root-owned path without group- or \
             world-writable parents.",
        ),
    ],
    see_also: &[
        "sshd(8)",
        "sshd_config(5)",
        "pam_exec(8)",
        "posternd(8)",
        "postern-gate(8)",
        "postern-policy.toml(5)",
    ],
};
