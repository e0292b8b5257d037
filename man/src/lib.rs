//! Postern's man pages. The command pages, postern(1), posternd(8), postern-gate(8) and
//! postern-shim(8), are roff templates (`man/templates/PAGE.in`) holding the prose, with
//! placeholders that [`render`] fills from the binaries' clap definitions (each binary's
//! `src/cli.rs`), as ripgrep fills its `rg.1` template; the file pages,
//! postern-policy.toml(5), posternd.toml(5) and postern-gate.toml(5), are written by hand
//! beside this crate.
//!
//! `scripts/man` writes the rendered pages into `man/`, where they are committed so that
//! packaging needs no Rust. The tests fail when a committed page is stale, when an example
//! does not parse, when a configuration key exists in code but not in its page, and when
//! `man` warns about any page.

pub mod render;

use std::path::{Path, PathBuf};

/// A page rendered from a command's clap definition.
pub struct CommandPage {
    /// The file name in `man/`, e.g. `posternd.8`; its template is `templates/FILE.in`.
    pub file: &'static str,
    /// The command line, exactly as the binary parses it.
    pub command: clap::Command,
    /// The page's roff template: what clap does not know (name line, description, examples,
    /// exit status, environment, files), with placeholders for what it does.
    pub template: &'static str,
}

/// Every command page.
pub fn command_pages() -> Vec<CommandPage> {
    vec![
        CommandPage {
            file: "postern.1",
            command: postern::cli::command(),
            template: include_str!("../templates/postern.1.in"),
        },
        CommandPage {
            file: "posternd.8",
            command: posternd::cli::command(),
            template: include_str!("../templates/posternd.8.in"),
        },
        CommandPage {
            file: "postern-gate.8",
            command: postern_gate::cli::command(),
            template: include_str!("../templates/postern-gate.8.in"),
        },
        CommandPage {
            file: "postern-shim.8",
            command: postern_shim::cli::command(),
            template: include_str!("../templates/postern-shim.8.in"),
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
