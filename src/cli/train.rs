//! `lors train` and `lors replay`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use lors::slurm::SlurmSettings;
use lors::train::RunState;
use lors::train::{
    self, Event, MetricRow, Override, Profile, RunDir, RunOutcome, RunsFolder, Start,
};

#[derive(Args)]
pub struct TrainArgs {
    /// Profile (TOML) to run (default: the bundled demo profile).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Override a profile value, e.g. `--set adapter.rank=16` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<Override>,
    /// Run directory (default: <train.output_dir>/<run_name or model-method-rank-time>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Start from this adapter (PEFT safetensors, e.g. a checkpoint's adapter_model.safetensors).
    #[arg(long, value_name = "FILE")]
    pub init_from: Option<PathBuf>,
    /// Resume the run in this directory from its newest intact checkpoint.
    #[arg(long, conflicts_with_all = ["profile", "overrides", "init_from"])]
    pub resume: Option<PathBuf>,
    /// With --resume: go on even though the run's profile.toml was edited since the
    /// checkpoint (the differing keys are listed otherwise).
    #[arg(long, requires = "resume")]
    pub accept_profile_change: bool,
    /// Run as a SLURM batch job instead of here: prints the run directory and the job id
    /// (with --resume: resubmits the run).
    #[arg(long)]
    pub slurm: bool,
    /// A SLURM setting of the job, e.g. `--slurm-set partition=gpu --slurm-set gres=gpu:1`
    /// (the keys of `[sweep.slurm]`; repeatable).
    #[arg(long = "slurm-set", value_name = "KEY=VALUE", requires = "slurm")]
    pub slurm_settings: Vec<String>,
}

#[derive(Args)]
pub struct ReplayArgs {
    /// The run to replay.
    pub run: PathBuf,
    /// Directory of the new run (default: beside the original, with `-replay-<time>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Ctrl-C, SIGTERM and SIGHUP ask the run to checkpoint and stop between steps; a second
/// signal exits at once (a checkpoint being written then stays a temporary, removed by the
/// next start). Signals are counted apart from the stop flag, which a stop through the
/// control file sets too: a signal after such a stop is still the first.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let signals = std::sync::atomic::AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if signals.fetch_add(1, Ordering::SeqCst) > 0 {
            eprintln!("\nsecond signal: exiting without a checkpoint");
            std::process::exit(130);
        }
        s.store(true, Ordering::SeqCst);
        eprintln!("\nsignal: saving a checkpoint and stopping after this step");
    })
    .context("cannot install the signal handler")?;
    Ok(stop)
}

fn default_run_dir(profile: &Profile) -> PathBuf {
    RunsFolder::new(&profile.train.output_dir).new_run(profile)
}

/// Run with a progress bar; prints evaluations and the outcome.
fn run_with_progress(profile: &Profile, run: &RunDir, start: Start) -> Result<RunOutcome> {
    let stop = stop_flag()?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta}]",
        )
        .expect("valid template"),
    );
    // Rank 0 alone of a data-parallel run shows progress.
    let root = lors::dist::ranks().is_root();
    if !root {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut on_event = |e: &Event| {
        if root {
            show_event(&bar, e)
        }
    };
    let outcome = train::train(profile, run, start, &stop, &mut on_event);
    bar.finish_and_clear();
    let outcome = outcome.with_context(|| format!("run {} failed", run.path.display()))?;
    if root {
        println!(
            "run {} {:?} at step {}",
            run.path.display(),
            outcome.state,
            outcome.step
        );
    }
    Ok(outcome)
}

/// Start a run in a fresh directory with `profile` recorded (paths made absolute). Hub models
/// and data files are fetched first, with progress bars.
/// In a data-parallel run rank 0 names and creates the directory; the others open it.
fn start(mut profile: Profile, run_dir: Option<PathBuf>) -> Result<(Profile, RunDir)> {
    super::source::resolve_and_fetch(&mut profile)?;
    let dir = run_dir.unwrap_or_else(|| default_run_dir(&profile));
    let dir = PathBuf::from(lors::dist::from_root(&dir.to_string_lossy()));
    let created = match lors::dist::ranks().is_root() {
        true => RunDir::create(&dir, &profile).map(|_| ()),
        false => Ok(()),
    };
    lors::dist::barrier();
    created?;
    Ok((profile, RunDir::open(&dir)?))
}

/// The `--slurm-set` settings, checked with the profile they will run: their ranks must
/// divide its micro-batches.
fn slurm_settings(pairs: &[String], profile: &Profile) -> Result<SlurmSettings> {
    let settings = lors::slurm::settings_from_pairs(pairs)?;
    settings.check("--slurm-set ")?;
    profile.check_ranks(settings.ranks())?;
    Ok(settings)
}

/// Submit `lors train --resume DIR` for `run` as a SLURM job: on hold until the run's status
/// names the job (whose liveness SLURM then answers), then released.
fn submit(run: &RunDir, mut settings: SlurmSettings) -> Result<()> {
    settings.extra_args.push("--hold".into());
    let args = [
        "train".into(),
        "--resume".into(),
        run.path.clone().into_os_string(),
    ];
    let name = run
        .path
        .file_name()
        .map_or("lors-run".into(), |n| n.to_string_lossy().into_owned());
    let log = run.path.join("slurm.log");
    let cwd = std::env::current_dir().context("no current directory")?;
    let id = lors::slurm::submit(&settings, &name, &args, &log, &cwd)?;
    let mut status = run
        .read_status()
        .unwrap_or_else(|_| lors::train::Status::initial(0, ""));
    status.state = RunState::Initializing;
    status.slurm_job = Some(id.clone());
    status.message = Some(format!("queued in SLURM as job {id}"));
    run.write_status(&status)?;
    lors::slurm::release(&id)?;
    println!(
        "run directory: {}\nSLURM job: {id} (log: {})",
        run.path.display(),
        log.display()
    );
    Ok(())
}

pub fn train(args: TrainArgs) -> Result<()> {
    // One rank of a data-parallel run when an MPI launcher started this process.
    let _mpi = lors::dist::init()?;
    if let Some(dir) = args.resume {
        let run = RunDir::open(&dir)?;
        let profile = Profile::load(&run.profile_path(), &[])?;
        if args.slurm {
            if run
                .read_status()
                .is_ok_and(|s| s.state.is_active() && s.process_alive())
            {
                anyhow::bail!(
                    "{} is still running; stop it before resubmitting",
                    dir.display()
                );
            }
            return submit(&run, slurm_settings(&args.slurm_settings, &profile)?);
        }
        let start = Start::Resume {
            accept_profile_change: args.accept_profile_change,
        };
        run_with_progress(&profile, &run, start)?;
        return Ok(());
    }
    let path = match args.profile {
        Some(path) => path,
        None => super::bundled_default()?.profile,
    };
    let mut profile = Profile::load(&path, &args.overrides)?;
    if let Some(init) = args.init_from {
        profile.adapter.init_from = Some(init);
    }
    // Checked before the run directory is made.
    let slurm = match args.slurm {
        true => Some(slurm_settings(&args.slurm_settings, &profile)?),
        false => None,
    };
    let (profile, run) = start(profile, args.run_dir)?;
    if let Some(settings) = slurm {
        return submit(&run, settings);
    }
    if lors::dist::ranks().is_root() {
        println!("run directory: {}", run.path.display());
    }
    run_with_progress(&profile, &run, Start::Fresh)?;
    Ok(())
}

pub fn replay(args: ReplayArgs) -> Result<()> {
    let original = RunDir::open(&args.run)?;
    let profile = Profile::load(&original.profile_path(), &[])?;
    let out = args.out.unwrap_or_else(|| {
        let beside = args.run.parent().unwrap_or(std::path::Path::new("."));
        RunsFolder::new(beside).new_replay(&args.run)
    });
    let (profile, run) = start(profile, Some(out))?;
    println!(
        "replaying {} into {}",
        args.run.display(),
        run.path.display()
    );
    run_with_progress(&profile, &run, Start::Fresh)?;
    let verdict = train::run_dir::replay_verdict(&original, &run)?;
    run.write_replay(&verdict)?;
    match verdict.difference {
        None => println!(
            "metrics match bit for bit ({} rows of loss, lr, grad_norm and eval loss)",
            verdict.rows
        ),
        Some(d) => anyhow::bail!("replay: {d}"),
    }
    Ok(())
}

/// Print a line above the bar; a hidden bar (output not a terminal) swallows `println`, so
/// then plainly.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// What the progress bar shows of a run's event: progress in its message, results as lines.
fn show_event(bar: &ProgressBar, e: &Event) {
    match e {
        Event::Started { step, total } => {
            bar.set_length(*total as u64);
            bar.set_position(*step as u64);
        }
        Event::InitProgress(p) => bar.set_message(format!("gradient init: {p}")),
        Event::PruneProgress { done, total } => {
            bar.set_message(format!("pruning {done}/{total} decoder layers"))
        }
        Event::Pruned(r) => say(
            bar,
            format!(
                "pruned with {} ({}): density {:.4} in {:.2} s",
                r.method, r.pattern, r.density, r.seconds
            ),
        ),
        Event::InitDone(r) => say(
            bar,
            format!(
                "gradient init: {} layers from {} sequences in {:.2} s ({} sweep(s))",
                r.layers, r.sequences, r.seconds, r.sweeps
            ),
        ),
        Event::Metric(MetricRow::Train {
            step,
            loss,
            lr,
            tokens_per_s,
            ..
        }) => {
            bar.set_position(*step as u64);
            bar.set_message(format!(
                "loss {loss:.4}  lr {lr:.2e}  {tokens_per_s:.0} tok/s"
            ));
        }
        Event::Metric(MetricRow::Eval {
            step,
            eval_loss,
            eval_ppl,
        }) => say(
            bar,
            format!("step {step}: eval loss {eval_loss:.4}, perplexity {eval_ppl:.3}"),
        ),
        Event::TaskProgress {
            stage,
            task,
            done,
            total,
        } => bar.set_message(format!("{stage} training: {task} {done}/{total} items")),
        Event::Metric(MetricRow::Task { stage, score, .. }) => say(
            bar,
            format!(
                "{stage} training: {} acc {:.4}{} over {} items",
                score.task,
                score.acc.value,
                score
                    .acc_norm
                    .map_or(String::new(), |n| format!(", acc_norm {:.4}", n.value)),
                score.items
            ),
        ),
        Event::Metric(
            MetricRow::Init { .. } | MetricRow::Sparsity { .. } | MetricRow::Checkpoint { .. },
        ) => {}
        Event::Checkpoint(dir) => say(bar, format!("checkpoint {}", dir.display())),
        Event::Notice(text) => say(bar, format!("note: {text}")),
    }
}
