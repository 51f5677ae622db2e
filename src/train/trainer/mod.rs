//! The training engine's run: [`train`] owns the run directory, reports through one
//! [`Reporter`](reporter::Reporter) (status, metrics, events), and drives the loop over a
//! [`Session`](session::Session): control requests, steps, evaluation and checkpoints, then
//! the end of the run (exports, task scores).

mod prepare;
mod reporter;
mod session;

use std::sync::atomic::{AtomicBool, Ordering};

pub use prepare::{
    data_shards, load_adapted, load_trained, prepare, DataShards, Prepared, TrainedModel,
};
use reporter::Reporter;
use session::{prune_stage, Saver, Session};

use crate::data::TextTokenizer;
use crate::error::Result;
use crate::eval::EvalResult;
use crate::model::{CausalLm, ModelDir};
use crate::train::grad_init::{GradInitReport, InitProgress};
use crate::train::peft;
use crate::train::profile::Profile;
use crate::train::run_dir::{ControlRequest, EvalStage, MetricRow, RunDir, RunState};

/// Something that happened during a run, for progress displays.
#[derive(Debug, Clone)]
pub enum Event {
    /// Training (re)starts at `step` of `total`.
    Started {
        step: usize,
        total: usize,
    },
    /// Prune step progress (decoder layers done of total).
    PruneProgress {
        done: usize,
        total: usize,
    },
    /// The prune step finished.
    Pruned(crate::prune::PruneReport),
    /// Gradient initialisation progress (passes and layers done, ETA).
    InitProgress(InitProgress),
    InitDone(GradInitReport),
    /// `[eval]` task progress (items done of the task's total).
    TaskProgress {
        stage: EvalStage,
        task: crate::eval::Task,
        done: usize,
        total: usize,
    },
    Metric(MetricRow),
    Checkpoint(std::path::PathBuf),
    /// Something the user should know that does not stop the run (a skipped broken
    /// checkpoint, a previous process that died).
    Notice(String),
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub state: RunState,
    pub step: usize,
    pub last_eval: Option<EvalResult>,
}

/// How [`train`] begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run: initialise the adapters.
    Fresh,
    /// Continue from the newest intact checkpoint (from scratch when there is none). A run
    /// whose `profile.toml` no longer matches the one its checkpoint recorded is refused
    /// unless `accept_profile_change`.
    Resume { accept_profile_change: bool },
}

/// Run (or resume) the training that `run`'s profile describes, owning the run directory
/// (see [`RunDir::lock`]) while it does. `stop` is polled between steps (Ctrl-C, SIGTERM,
/// SIGHUP): the run then checkpoints and ends as `stopped`. A NaN or infinite loss or gradient
/// norm ends it as `failed`, with a checkpoint of the last finite step's parameters.
pub fn train(
    profile: &Profile,
    run: &RunDir,
    start: Start,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<RunOutcome> {
    let ranks = crate::dist::ranks();
    check_ranks(profile, run)?;
    // In a data-parallel run rank 0 alone owns and writes the run directory.
    let _lock = match ranks.is_root() {
        true => Some(run.lock()?),
        false => None,
    };
    if ranks.is_root() {
        for dir in [&run.path, &run.checkpoints_path()] {
            crate::io::clean_stale_temps(dir)?;
        }
    }
    let mut rep = Reporter::new(run, on_event);
    if let Ok(previous) = run.read_status() {
        if previous.state.is_active() && previous.pid != std::process::id() {
            rep.notice(format!(
                "the previous process (pid {}) died at step {} without a word",
                previous.pid, previous.step
            ));
        }
        // A resume's elapsed time goes on from the earlier processes' (their repeated steps
        // after the checkpoint included: time spent on the run).
        if matches!(start, Start::Resume { .. }) {
            rep.continue_from(previous.elapsed_s);
        }
    }
    rep.status.control_ack = run.read_control()?.map_or(0, |c| c.id);
    rep.write_status()?;
    let result = run_loop(&mut rep, profile, start, stop);
    if let Err(e) = &result {
        rep.status.error = Some(e.to_string());
        let step = rep.status.step;
        rep.set_status(RunState::Failed, step, None)?;
    }
    result
}

/// In a data-parallel run: every rank runs the same profile in the same run directory, and
/// the world size divides each step's micro-batches (`train.grad_accum`).
fn check_ranks(profile: &Profile, run: &RunDir) -> Result<()> {
    let size = crate::dist::ranks().size;
    if size == 1 {
        return Ok(());
    }
    crate::dist::check_same("profile", profile.to_toml().as_bytes())?;
    crate::dist::check_same("run directory", run.path.to_string_lossy().as_bytes())?;
    profile.check_ranks(size)
}

/// The run from its prune step to its end: `recorded` is the run's profile as its file holds
/// it.
fn run_loop(
    rep: &mut Reporter,
    recorded: &Profile,
    start: Start,
    stop: &AtomicBool,
) -> Result<RunOutcome> {
    let profile = &prune_stage(rep, recorded)?;
    let t = &profile.train;
    let mut s = Session::open(rep, profile, recorded, start)?;
    // After `open`, which cut the metrics back to the checkpoint it resumes from.
    let root = crate::dist::ranks().is_root();
    if root && profile.eval.is_some() && !rep.run.has_task_rows(EvalStage::Before)? {
        let model = s.p.model.without_adapters();
        let (step, tok) = (s.state.step, &s.p.tokenizer);
        evaluate_tasks(rep, profile, &model, tok, EvalStage::Before, step)?;
    }
    let (first_step, loop_start) = (s.state.step, rep.active_s());
    let mut last_eval = None;
    let saver = Saver {
        profile,
        recorded_toml: recorded.to_toml(),
    };
    rep.set_status(RunState::Running, s.state.step, Some("training".into()))?;
    while s.state.step < s.total {
        follow_control(rep, stop, &mut |rep| saver.save(rep, &s.snapshot()?), false)?;
        // A stop any rank was asked for (a signal, the control file) stops every rank here.
        if crate::dist::any(stop.load(Ordering::SeqCst)) {
            saver.save(rep, &s.snapshot()?)?;
            let step = s.state.step;
            return end_run(
                rep,
                RunState::Stopped,
                step,
                "stopped by request",
                last_eval,
            );
        }
        let row = s.step(rep, &saver)?;
        if let MetricRow::Train { loss, .. } = row {
            rep.status.last_loss = Some(loss);
        }
        rep.metric(row)?;
        let step = s.state.step;
        let done = (step - first_step) as f64;
        let active = rep.active_s() - loop_start;
        rep.status.eta_s = Some(active / done * (s.total - step) as f64);
        let total = s.total;
        let due = |every: usize| (every > 0 && step.is_multiple_of(every)) || step == total;
        if due(t.eval_every) {
            last_eval = evaluate_step(rep, &mut s)?.or(last_eval);
        }
        if due(t.save_every) {
            saver.save(rep, &s.snapshot()?)?;
        }
        rep.set_status(RunState::Running, step, None)?;
        if t.pause_at.contains(&step) && step < total {
            follow_control(rep, stop, &mut |rep| saver.save(rep, &s.snapshot()?), true)?;
        }
    }
    if crate::dist::ranks().is_root() {
        finish(rep, &s)?;
    }
    end_run(rep, RunState::Finished, s.state.step, "finished", last_eval)
}

/// Act on new control requests: a pause (or `pause_here`, at a `pause_at` step) blocks here
/// (status `paused`) until a resume, a stop or Ctrl-C; a checkpoint is saved at once (staying
/// paused if paused); a stop sets `stop` for the loop to checkpoint and end.
fn follow_control(
    rep: &mut Reporter,
    stop: &AtomicBool,
    save_now: &mut dyn FnMut(&mut Reporter) -> Result<()>,
    pause_here: bool,
) -> Result<()> {
    let mut paused = pause_here;
    if paused {
        rep.pause();
        let step = rep.status.step;
        rep.set_status(
            RunState::Paused,
            step,
            Some("paused: waiting to go on".into()),
        )?;
    }
    loop {
        let new = rep
            .run
            .read_control()?
            .filter(|c| c.id > rep.status.control_ack);
        if let Some(c) = new {
            let step = rep.status.step;
            match c.request {
                ControlRequest::Pause => {
                    paused = true;
                    rep.pause();
                }
                ControlRequest::Resume => paused = false,
                ControlRequest::Stop => {
                    stop.store(true, Ordering::SeqCst);
                    paused = false;
                }
                ControlRequest::Checkpoint => save_now(rep)?,
            }
            rep.status.control_ack = c.id;
            let (state, message) = if paused {
                (RunState::Paused, "paused")
            } else {
                (RunState::Running, "training")
            };
            rep.set_status(state, step, Some(message.into()))?;
        }
        if !paused || stop.load(Ordering::SeqCst) {
            rep.unpause();
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Evaluate after a step (recording the loss and the best so far) and record the sparsity.
fn evaluate_step(rep: &mut Reporter, s: &mut Session) -> Result<Option<EvalResult>> {
    let result = s.validate()?;
    if let Some(e) = &result {
        rep.metric(MetricRow::Eval {
            step: s.state.step,
            eval_loss: e.loss,
            eval_ppl: e.perplexity,
        })?;
        let best = s
            .state
            .best_eval_loss
            .map_or(e.loss, |b: f64| b.min(e.loss));
        s.state.best_eval_loss = Some(best);
        rep.status.best_eval_loss = Some(best);
    }
    s.record_sparsity(rep)?;
    Ok(result)
}

/// End the run as `state` at `step` with `message`.
fn end_run(
    rep: &mut Reporter,
    state: RunState,
    step: usize,
    message: &str,
    last_eval: Option<EvalResult>,
) -> Result<RunOutcome> {
    rep.set_status(state, step, Some(message.into()))?;
    Ok(RunOutcome {
        state,
        step,
        last_eval,
    })
}

/// The end of a finished run: SoRA's folded adapter (`adapter/`), the merged export (when
/// asked), then the `[eval]` tasks on the merged model (what the user ships), or without an
/// export on the trained adapters.
fn finish(rep: &mut Reporter, s: &Session) -> Result<()> {
    let profile = s.profile;
    if profile.adapter.sora {
        peft::export_folded_adapter(&s.p.model, profile, &rep.run.adapter_path())?;
    }
    let merged = rep.run.merged_path();
    if profile.train.merge_at_end {
        let msg = Some("exporting merged model".into());
        rep.set_status(RunState::Running, s.state.step, msg)?;
        crate::model::export_merged(&s.p.model, &s.p.model_dir, &merged)?;
    }
    if profile.eval.is_none() {
        return Ok(());
    }
    let export = match profile.train.merge_at_end {
        true => Some(prepare::load_with(
            profile,
            &ModelDir::open(&merged)?,
            None,
        )?),
        false => None,
    };
    let model = export.as_ref().unwrap_or(&s.p.model);
    let (step, tok) = (s.state.step, &s.p.tokenizer);
    evaluate_tasks(rep, profile, model, tok, EvalStage::After, step)
}

/// Score the profile's `[eval]` tasks on `model` and append a row per task as `stage` at
/// `step`; the status message follows the items.
fn evaluate_tasks(
    rep: &mut Reporter,
    profile: &Profile,
    model: &CausalLm,
    tok: &TextTokenizer,
    stage: EvalStage,
    step: usize,
) -> Result<()> {
    let Some(suite) = &profile.eval else {
        return Ok(());
    };
    let outcomes = suite.run(model, tok, &mut |task, done, total| {
        let event = Event::TaskProgress {
            stage,
            task,
            done,
            total,
        };
        rep.progress(event, format!("{stage} eval, {task}: {done}/{total} items"));
    })?;
    rep.end_stage()?;
    for o in outcomes {
        rep.metric(MetricRow::Task {
            step,
            stage,
            score: o.score,
        })?;
    }
    Ok(())
}
