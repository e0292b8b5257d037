//! One harness for Postern's end-to-end tests: temporary directories, `posternd` on a free
//! loopback port, the `postern` CLI with its own `$HOME`, and a stock `sshd`, all cleaned up on
//! drop, so that each test reads like a user story.
//!
//! One module per subject: `ca` (the posternd under test), `person` (a user: enrolling,
//! `postern login`, ssh through the gateway), `sshd` (test accounts and a stock sshd from the
//! distribution's pristine sshd_config, Debian 12 or the Debian 13 chroot), `node` (a server
//! joined with postern-shim), `gateway` (postern-gate and the cluster of the gateway stories),
//! `pg` (a real PostgreSQL server), `forward` (a TCP forwarder a test stops and starts: one
//! posternd as two instances), `scrape` (the probes and metrics over plain HTTP), and `util`
//! (binaries, ports, running commands, waiting for log lines). Everything a test
//! uses is re-exported here, so tests name `postern_tests::Ca`, not its module.
//!
//! The binaries are taken from the cargo target directory (`scripts/test` builds them first).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod ca;
mod forward;
mod gateway;
mod node;
mod person;
mod pg;
mod scrape;
mod sshd;
mod util;

pub use ca::{curl, ha_mode, Ca};
pub use forward::Forwarder;
pub use gateway::{pkcs8_v1, Gate, GateCluster};
pub use node::{installed_shim, installed_shim_in, shim_logs_to_stderr, Node};
pub use person::{base32_decode, Person};
pub use pg::{PgTls, Postgres};
pub use scrape::{http_get, listening_ports, metric};
pub use sshd::{
    distribution_sshd_config, distribution_sshd_config_from, ensure_bash_login, ensure_test_login,
    Distro, Sshd, DEFAULT_DEBIAN13_ROOT, TEST_BASH_LOGIN, TEST_LOGIN,
};
pub use util::{
    bin, bin_dir, free_port, log_when, now, plain_log, run, run_with_input, sha256_hex, text,
    with_hosts,
};
