//! The part of `postern` that is a definition rather than behaviour: its command line. The
//! CLI parses with it from here, and `man/` renders postern(1) from the same code.

pub mod cli;
