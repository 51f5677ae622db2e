//! `lors sweep`: run a profile's `[sweep]` headless (or resume one), with a progress bar and
//! the final table of trials.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use lors::sweep::{summary, Sweep, SweepState, TrialState};
use lors::train::Override;

#[derive(Args)]
pub struct SweepArgs {
    /// Profile (TOML) with a `[sweep]` section.
    #[arg(long, required_unless_present = "resume")]
    pub profile: Option<PathBuf>,
    /// Override a base profile value, e.g. `--set train.max_steps=60` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<Override>,
    /// Sweep directory (default: `<train.output_dir>/sweep-<time>`); trial runs go beside it.
    #[arg(long, conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Go on with the sweep in this directory (after the sweep process ended or crashed).
    #[arg(long, conflicts_with = "profile")]
    pub resume: Option<PathBuf>,
}

pub fn run(args: SweepArgs) -> Result<()> {
    let mut sweep = match (&args.resume, &args.profile) {
        (Some(dir), _) => {
            Sweep::open(dir).with_context(|| format!("resuming {}", dir.display()))?
        }
        (None, Some(profile)) => Sweep::create(profile, &args.overrides, args.out.as_deref())
            .with_context(|| format!("setting up the sweep of {}", profile.display()))?,
        (None, None) => unreachable!("clap requires --profile without --resume"),
    };
    println!(
        "sweep {}: {} trials, {} at once per device",
        sweep.dir.display(),
        sweep.state.trials.len(),
        sweep.spec.concurrency
    );
    let bar = ProgressBar::new(sweep.state.trials.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} trials  {msg}  [{elapsed}]")
            .expect("valid template"),
    );
    sweep.run(&mut |state: &SweepState| {
        let ended = state.trials.len()
            - state.count(TrialState::Pending)
            - state.count(TrialState::Running);
        bar.set_position(ended as u64);
        bar.set_message(format!(
            "{} running, {} stopped early, {} failed",
            state.count(TrialState::Running),
            state.count(TrialState::StoppedEarly),
            state.count(TrialState::Failed)
        ));
    })?;
    bar.finish();
    print!("{}", summary::markdown(&summary::rows(&sweep.state)));
    Ok(())
}
