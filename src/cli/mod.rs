//! Subcommands of the `lors` binary.

pub mod bench;
pub mod model;
pub mod prune;
pub mod train;
