//! The parts of `postern-gate` that are definitions rather than behaviour: its command line
//! and its configuration file. The gateway uses them from here, and `man/` renders
//! postern-gate(8) and checks postern-gate.toml(5) against the same code.

pub mod cli;
pub mod config;
