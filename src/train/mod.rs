//! The training engine: profiles, data, initialisation, the loop, evaluation, checkpoints
//! and the run directory that other processes watch.

pub mod boost;
pub mod checkpoint;
pub mod grad_init;
pub mod loss;
pub mod optim;
pub mod overrides;
pub mod peft;
pub mod profile;
pub mod rank_reg;
pub mod run_dir;
pub mod schema;
pub mod summary;
mod trainer;

pub use overrides::Override;
pub use profile::profile_differences;
pub use profile::Profile;
pub use run_dir::{
    Control, ControlRequest, EvalStage, MetricRow, ReplayVerdict, RunDir, RunState, RunsFolder,
    Status,
};
pub use summary::RunSummary;
pub use trainer::{
    data_shards, load_adapted, load_trained, prepare, train, DataShards, Event, Prepared,
    RunOutcome, Start, TrainedModel,
};
