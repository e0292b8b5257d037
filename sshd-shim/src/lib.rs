//! The part of `postern-shim` that is a definition rather than behaviour: its command line.
//! The shim parses with it from here, and `man/` renders postern-shim(8) from the same code.

pub mod cli;
