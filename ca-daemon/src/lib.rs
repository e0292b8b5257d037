//! The parts of `posternd` that are definitions rather than behaviour: its command line and
//! its configuration file. The daemon uses them from here, and `man/` renders posternd(8) and
//! checks posternd.toml(5) against the same code.

pub mod cli;
pub mod config;
