//! Postern's man pages. The command pages, postern(1), posternd(8), postern-gate(8) and
//! postern-shim(8), are rendered from the binaries' clap definitions (each binary's
//! `src/cli.rs`) plus the prose in [`prose`]; the file pages, postern-policy.toml(5),
//! posternd.toml(5) and postern-gate.toml(5), are written by hand beside this crate.
//!
//! `scripts/man` writes the rendered pages into `man/`, where they are committed so that
//! packaging needs no Rust. The tests fail when a committed page is stale, when an example
//! does not parse, when a configuration key exists in code but not in its page, and when
//! `man` warns about any page.

pub mod prose;
pub mod render;

use std::path::{Path, PathBuf};

use crate::prose::Prose;

/// A page rendered from a command's clap definition.
pub struct CommandPage {
    /// The file name in `man/`, e.g. `posternd.8`.
    pub file: &'static str,
    /// The manual section, e.g. `8`.
    pub section: &'static str,
    /// The command line, exactly as the binary parses it.
    pub command: clap::Command,
    /// What clap does not know: name line, description, examples, exit status, files.
    pub prose: &'static Prose,
}

/// Every command page.
pub fn command_pages() -> Vec<CommandPage> {
    vec![
        CommandPage {
            file: "postern.1",
            section: "1",
            command: postern::cli::command(),
            prose: &prose::POSTERN,
        },
        CommandPage {
            file: "posternd.8",
            section: "8",
            command: posternd::cli::command(),
            prose: &prose::POSTERND,
        },
        CommandPage {
            file: "postern-gate.8",
            section: "8",
            command: postern_gate::cli::command(),
            prose: &prose::POSTERN_GATE,
        },
        CommandPage {
            file: "postern-shim.8",
            section: "8",
            command: postern_shim::cli::command(),
            prose: &prose::POSTERN_SHIM,
        },
    ]
}

/// The hand-written pages of the configuration and policy files.
pub const FILE_PAGES: [&str; 3] = [
    "postern-policy.toml.5",
    "posternd.toml.5",
    "postern-gate.toml.5",
];

/// The `man/` folder, where every page lives.
pub fn man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}
