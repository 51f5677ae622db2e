//! Subcommands of the `lors` binary.

pub mod bench;
pub mod eval;
pub mod model;
pub mod prune;
pub mod report;
pub mod source;
pub mod sweep;
pub mod train;
