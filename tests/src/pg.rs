//! A real PostgreSQL server for the high-availability stories: Debian's `postgresql` package,
//! `initdb` in a temporary directory as the unprivileged `postgres` user, listening on a free
//! loopback port, stopped (immediately) on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

use crate::util::{free_port, run, text};

/// A PostgreSQL server of the test's own.
pub struct Postgres {
    dir: TempDir,
    bin: PathBuf,
    /// The port it listens on at 127.0.0.1.
    pub port: u16,
    /// `-c` settings beyond the port and socket (TLS).
    settings: String,
    /// The password of `postern` when connections over TCP need one.
    password: Option<String>,
}

/// The TLS side of [`Postgres::start_tls`].
pub struct PgTls {
    /// The PEM file of the CA that signed the server's certificate (for `ca_file`).
    pub ca_file: PathBuf,
    /// A file that holds the password of `postern`, mode 0600 (for `password_file`).
    pub password_file: PathBuf,
    /// Another CA's PEM file, which did not sign the server's certificate.
    pub other_ca_file: PathBuf,
}

/// Runs openssl as `postgres` in `dir`, so that the key files belong to the server's user.
fn openssl(dir: &std::path::Path, args: &str) {
    let out = run(Command::new("runuser")
        .args(["-u", "postgres", "--", "sh", "-c"])
        .arg(format!("cd {} && openssl {args}", dir.display())));
    assert!(out.status.success(), "openssl {args}: {}", text(&out));
}

/// The folder of Debian's PostgreSQL server binaries (the newest installed).
fn server_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: scripts/test installs Debian's postgresql package")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("no /usr/lib/postgresql/*/bin/postgres: install Debian's postgresql package")
}

impl Postgres {
    /// initdb and start; creates the database `postern` owned by the user `postern`.
    pub fn start() -> Postgres {
        Postgres::start_with(false)
    }

    /// [`Postgres::start`] with TLS required on every TCP connection (`hostssl` only, with
    /// scram-sha-256 passwords), from a certificate for `127.0.0.1` that a CA of its own signs.
    pub fn start_tls() -> (Postgres, PgTls) {
        let pg = Postgres::start_with(true);
        let d = pg.dir.path();
        let tls = PgTls {
            ca_file: d.join("ca.crt"),
            password_file: d.join("password"),
            other_ca_file: d.join("other-ca.crt"),
        };
        (pg, tls)
    }

    fn start_with(tls: bool) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("postern-pg")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let bin = server_bin();
        let data = dir.path().join("data");
        let out = run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postern", "--no-sync", "-E", "UTF8"]));
        assert!(out.status.success(), "initdb: {}", text(&out));
        let mut pg = Postgres {
            dir,
            bin,
            port: free_port(),
            settings: String::new(),
            password: None,
        };
        if tls {
            let d = pg.dir.path();
            let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
            for ca in ["ca", "other-ca"] {
                openssl(
                    d,
                    &format!(
                        "req -x509 {ec} -keyout {ca}.key -out {ca}.crt -subj /CN=test-{ca} -days 2"
                    ),
                );
            }
            openssl(
                d,
                &format!("req {ec} -keyout server.key -out server.csr -subj /CN=127.0.0.1"),
            );
            std::fs::write(
                d.join("server.ext"),
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
            )
            .unwrap();
            openssl(
                d,
                "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
                 -out server.crt -days 2 -extfile server.ext",
            );
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256\n\
                 host all all 127.0.0.1/32 reject\n",
            )
            .unwrap();
            pg.settings = format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                d.display()
            );
        }
        pg.pg_ctl_start();
        if tls {
            // Over the socket (trust), before TCP needs it.
            let password = "pg-test-password-7f3a";
            let out = pg.psql_socket(
                "postgres",
                &format!("ALTER ROLE postern PASSWORD '{password}'"),
            );
            assert!(out.status.success(), "password: {}", text(&out));
            let f = pg.dir.path().join("password");
            std::fs::write(&f, format!("{password}\n")).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
            pg.password = Some(password.to_owned());
        }
        let out = pg.psql("postgres", "CREATE DATABASE postern");
        assert!(out.status.success(), "createdb: {}", text(&out));
        pg
    }

    /// psql over the server's Unix socket.
    fn psql_socket(&self, db: &str, sql: &str) -> std::process::Output {
        self.psql_at(self.dir.path().to_str().unwrap(), db, sql)
    }

    fn pg_ctl_start(&self) {
        let out = run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1{}",
                self.port,
                self.dir.path().display(),
                self.settings
            ))
            .args(["-w", "-t", "60", "start"]));
        assert!(out.status.success(), "pg_ctl start: {}", text(&out));
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: connections are cut).
    pub fn stop(&self) {
        let _ = run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]));
    }

    /// The server's log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// Starts it again after [`Postgres::stop`].
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// `postgres://postern@127.0.0.1:PORT/postern?sslmode=disable`.
    pub fn url(&self) -> String {
        format!(
            "postgres://postern@127.0.0.1:{}/postern?sslmode=disable",
            self.port
        )
    }

    /// Runs SQL with psql as `postern` in database `db`.
    pub fn psql(&self, db: &str, sql: &str) -> std::process::Output {
        self.psql_at("127.0.0.1", db, sql)
    }

    /// [`Postgres::psql`] through `host`: 127.0.0.1, or the folder of the server's socket.
    fn psql_at(&self, host: &str, db: &str, sql: &str) -> std::process::Output {
        let mut cmd = Command::new("psql");
        if let Some(p) = &self.password {
            cmd.env("PGPASSWORD", p).env("PGSSLMODE", "require");
        }
        run(cmd
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", host])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postern",
                "-d",
                db,
                "-c",
                sql,
            ]))
    }

    /// The answer of a query in database `postern`, trimmed.
    pub fn query(&self, sql: &str) -> String {
        let out = self.psql("postern", sql);
        assert!(out.status.success(), "{sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
