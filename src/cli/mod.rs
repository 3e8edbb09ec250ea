//! The command line, apart from `main`: its arguments, the config file, and `serve`.

pub mod args;
pub mod config;
pub mod serve;
