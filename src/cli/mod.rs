//! The command line, apart from `main`: its arguments and the `serve` command.

pub mod args;
pub mod serve;
