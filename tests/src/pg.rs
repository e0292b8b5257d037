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
        let pg = Postgres {
            dir,
            bin,
            port: free_port(),
        };
        pg.pg_ctl_start();
        let out = pg.psql("postgres", "CREATE DATABASE postern");
        assert!(out.status.success(), "createdb: {}", text(&out));
        pg
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
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                self.port,
                self.dir.path().display()
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
        run(Command::new("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
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
