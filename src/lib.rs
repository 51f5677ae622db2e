//! `lors`: fine-tuning sparse (pruned) LLMs with LoRS, a low-rank adaptation that keeps the
//! model exactly as sparse as it was (arXiv 2501.08582), with SQFT, SPP and LoRA baselines.
//!
//! Modules mirror the architecture; `docs/architecture.md` maps every one of them.

pub mod adapters;
pub mod bench;
pub mod bundled;
mod cpu;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod eval;
pub mod gguf;
pub mod gpu_monitor;
pub mod io;
pub mod memory;
pub mod model;
pub mod names;
pub mod prune;
pub mod report;
pub mod slurm;
pub mod sources;
pub mod sparsity;
pub mod sweep;
pub mod train;
pub mod tui;

pub use error::{LorsError, Result};
