//! Hyperparameter sweeps: the `[sweep]` section (`spec`), early stopping by asynchronous
//! successive halving (`asha`), and the scheduler that runs trials as detached runs
//! (`runner`), plus the table that compares them (`summary`).

pub mod asha;
pub mod runner;
pub mod spec;
pub mod summary;

pub use runner::{check_sweep, sweep_profile_text, Sweep, SweepState, TrialState};
pub use spec::{SweepSpec, Trial};
