//! The training loop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::boost::{self, Booster};
use super::checkpoint::{self, TrainerState};
use super::grad_init::{gradient_init, GradInitReport, InitProgress};
use super::optim::{lr_at, Optimizer};
use super::peft;
use super::profile::{Profile, TrainSection};
use super::rank_reg::RankRegularizer;
use super::run_dir::{now_s, ControlRequest, EvalStage, MetricRow, RunDir, RunState, Status};
use crate::adapters::{flat_ramp, FlatNoise, Init};
use crate::data::{
    load_blocks, read_records, records_to_blocks, split_records, Batcher, Block, TextTokenizer,
};
use crate::device::{gpu_memory, reset_gpu_peak};
use crate::error::{LorsError, Result};
use crate::eval::{evaluate, EvalResult};
use crate::memory;
use crate::model::{merged_sparsity, AdapterSpec, CausalLm, Gradients, ModelDir};

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

/// The model and data of a profile, ready to train.
pub struct Prepared {
    pub model_dir: ModelDir,
    pub model: CausalLm,
    pub tokenizer: TextTokenizer,
    pub train: Batcher,
    pub valid: Vec<Block>,
    pub skipped_records: usize,
}

/// The profile's model with freshly initialised adapters (seeded by `train.seed`).
pub fn load_adapted(profile: &Profile, model_dir: &ModelDir) -> Result<CausalLm> {
    let spec = AdapterSpec {
        config: profile.adapter.adapter_config(),
        targets: profile.adapter.target_modules.clone(),
        frozen_blocks: profile.adapter.frozen_blocks,
    };
    load_with(profile, model_dir, Some(&spec))
}

/// The model in `model_dir` as the profile computes (dtype, device), with adapters when
/// `spec` is given.
fn load_with(
    profile: &Profile,
    model_dir: &ModelDir,
    spec: Option<&AdapterSpec>,
) -> Result<CausalLm> {
    let mut rng = ChaCha8Rng::seed_from_u64(profile.train.seed);
    CausalLm::from_source(
        &model_dir.config,
        &model_dir.weights()?,
        profile.model.dtype.dtype(),
        &profile.train.device.open()?,
        spec,
        &mut rng,
    )
}

/// Load the model (with adapters) and the data of a profile.
pub fn prepare(profile: &Profile) -> Result<Prepared> {
    let model_dir = ModelDir::open(&profile.model.path)?;
    let d = &profile.data;
    model_dir
        .config
        .check_positions("data.seq_len", d.seq_len, d.allow_long_sequences)?;
    let tokenizer = model_dir.tokenizer()?;
    let opts = d.block_options();
    let (train_blocks, valid, skipped) = match &d.valid {
        Some(valid_path) => {
            let train = load_blocks(&d.train, &tokenizer, &opts)?;
            let valid = load_blocks(valid_path, &tokenizer, &opts)?;
            (train.blocks, valid.blocks, train.skipped + valid.skipped)
        }
        None => {
            let set = read_records(&d.train, d.format, d.skip_bad_records)?;
            let (train, valid) = split_records(set.records, d.valid_fraction, profile.train.seed);
            let valid = if valid.is_empty() {
                Vec::new()
            } else {
                records_to_blocks(&valid, &tokenizer, &opts)?
            };
            (
                records_to_blocks(&train, &tokenizer, &opts)?,
                valid,
                set.skipped,
            )
        }
    };
    let train = Batcher::new(train_blocks, profile.train.batch_size, profile.train.seed)?;
    let model = load_adapted(profile, &model_dir)?;
    let vocab = model_dir.config.vocab_size;
    if tokenizer.vocab_size() > vocab {
        return Err(LorsError::invalid(
            "model.path",
            format!(
                "the tokenizer has {} tokens but the model only {vocab}",
                tokenizer.vocab_size()
            ),
        ));
    }
    Ok(Prepared {
        model_dir,
        model,
        tokenizer,
        train,
        valid,
        skipped_records: skipped,
    })
}

fn total_steps(profile: &Profile, train: &Batcher) -> usize {
    let t = &profile.train;
    t.max_steps.unwrap_or_else(|| {
        (t.epochs.unwrap_or(1) * train.batches_per_epoch() / t.grad_accum).max(1)
    })
}

/// Variables with their checkpoint names.
type Named = Vec<(String, Var)>;

/// The trainable tensors with their checkpoint names: `[A, B]` per adapted layer in layer
/// order (the rank regulariser and LoRA-RITE read them in these pairs), and SoRA's gates,
/// one per adapted layer (none without SoRA).
fn trainable(model: &CausalLm) -> (Named, Named) {
    let (mut pairs, mut gates) = (Vec::new(), Vec::new());
    for (m, l) in model.adapted() {
        for (part, v) in l.trainable() {
            pairs.push((peft::peft_name(&m, part), v.clone()));
        }
        if let Some(g) = l.gate() {
            gates.push((peft::peft_name(&m, peft::GATE_PART), g.clone()));
        }
    }
    (pairs, gates)
}

/// A fresh optimiser over `model`'s adapter pairs and SoRA gates.
fn fresh_optimizer(profile: &Profile, model: &CausalLm) -> Result<Optimizer> {
    let threshold = profile.adapter.sora_threshold;
    let (pairs, gates) = trainable(model);
    Optimizer::new(pairs, gates, &profile.optim, threshold)
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

/// Memory the gradient initialisation may use for its probes at once.
const GRAD_INIT_BUDGET_BYTES: usize = 1 << 30;

struct Loop<'a> {
    profile: &'a Profile,
    run: &'a RunDir,
    status: Status,
    started: Instant,
    /// Time spent paused (excluded from elapsed times and the ETA), and the current pause.
    paused: Duration,
    pause_began: Option<Instant>,
}

impl Loop<'_> {
    /// Seconds since the start, pauses left out.
    fn active_s(&self) -> f64 {
        let now = self.pause_began.map_or(Duration::ZERO, |t| t.elapsed());
        let paused = self.paused + now;
        self.started.elapsed().saturating_sub(paused).as_secs_f64()
    }

    /// The start moved later by the pauses so far: its `elapsed()` is the active time while
    /// not paused (as during a step).
    fn active_clock(&self) -> Instant {
        self.started + self.paused
    }

    fn set_status(&mut self, state: RunState, step: usize, message: Option<String>) -> Result<()> {
        self.status.state = state;
        self.status.step = step;
        self.status.elapsed_s = self.active_s();
        self.status.updated_at = now_s();
        if message.is_some() {
            self.status.message = message;
        }
        self.run.write_status(&self.status)
    }

    /// The status message of a long stage's progress, `label: done/total unit`; the first
    /// error writing it is kept in `error` (the stage's callback cannot return it).
    fn stage_progress(
        &mut self,
        label: &str,
        unit: &str,
        (done, total): (usize, usize),
        error: &mut Option<LorsError>,
    ) {
        let msg = format!("{label}: {done}/{total} {unit}");
        let (state, step) = (self.status.state, self.status.step);
        if let Err(e) = self.set_status(state, step, Some(msg)) {
            error.get_or_insert(e);
        }
    }

    /// Act on new control requests: a pause blocks here (status `paused`) until a resume, a
    /// stop or Ctrl-C; a checkpoint is saved at once (staying paused if paused); a stop sets
    /// `stop` for the loop to checkpoint and end.
    fn follow_control(
        &mut self,
        stop: &AtomicBool,
        save_now: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let mut paused = false;
        loop {
            let new = self
                .run
                .read_control()?
                .filter(|c| c.id > self.status.control_ack);
            if let Some(c) = new {
                let step = self.status.step;
                match c.request {
                    ControlRequest::Pause => {
                        paused = true;
                        self.pause_began.get_or_insert_with(Instant::now);
                    }
                    ControlRequest::Resume => paused = false,
                    ControlRequest::Stop => {
                        stop.store(true, Ordering::SeqCst);
                        paused = false;
                    }
                    ControlRequest::Checkpoint => save_now()?,
                }
                self.status.control_ack = c.id;
                let (state, message) = if paused {
                    (RunState::Paused, "paused")
                } else {
                    (RunState::Running, "training")
                };
                self.set_status(state, step, Some(message.into()))?;
            }
            if !paused || stop.load(Ordering::SeqCst) {
                if let Some(began) = self.pause_began.take() {
                    self.paused += began.elapsed();
                }
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn eval(&self, p: &Prepared) -> Result<Option<EvalResult>> {
        if p.valid.is_empty() {
            return Ok(None);
        }
        Ok(Some(evaluate(
            &p.model,
            &p.valid,
            self.profile.train.batch_size,
            self.profile
                .train
                .eval_batches
                .map(|b| b * self.profile.train.batch_size),
        )?))
    }
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
    let _lock = run.lock()?;
    for dir in [&run.path, &run.checkpoints_path()] {
        crate::io::clean_stale_temps(dir)?;
    }
    if let Ok(previous) = run.read_status() {
        if previous.state.is_active() && previous.pid != std::process::id() {
            on_event(&Event::Notice(format!(
                "the previous process (pid {}) died at step {} without a word",
                previous.pid, previous.step
            )));
        }
    }
    let mut lp = Loop {
        profile,
        run,
        status: Status {
            state: RunState::Initializing,
            step: 0,
            total_steps: 0,
            elapsed_s: 0.0,
            eta_s: None,
            pid: std::process::id(),
            updated_at: now_s(),
            last_loss: None,
            best_eval_loss: None,
            message: Some("loading model and data".into()),
            error: None,
            control_ack: 0,
        },
        started: Instant::now(),
        paused: Duration::ZERO,
        pause_began: None,
    };
    lp.status.control_ack = run.read_control()?.map_or(0, |c| c.id);
    lp.run.write_status(&lp.status)?;
    let result = train_inner(&mut lp, start, stop, on_event);
    if let Err(e) = &result {
        lp.status.error = Some(e.to_string());
        let step = lp.status.step;
        lp.set_status(RunState::Failed, step, None)?;
    }
    result
}

/// Append the per-layer base and would-be merged densities as a metrics row.
fn record_sparsity(
    run: &RunDir,
    model: &CausalLm,
    step: usize,
    on_event: &mut dyn FnMut(&Event),
) -> Result<()> {
    let row = MetricRow::Sparsity {
        step,
        layers: merged_sparsity(model)?,
    };
    run.append_metric(&row)?;
    on_event(&Event::Metric(row));
    Ok(())
}

/// The profile to train: `lp.profile`, or with a prune step, the same on the model it
/// prunes into the run directory (once; a resume finds it there).
fn prune_stage(lp: &mut Loop, on_event: &mut dyn FnMut(&Event)) -> Result<Profile> {
    let Some(settings) = lp.profile.prune.clone() else {
        return Ok(lp.profile.clone());
    };
    let out = lp.run.pruned_path();
    if !out.join("sparsity.json").is_file() {
        let label = format!("pruning ({})", settings.method);
        lp.set_status(RunState::Initializing, 0, Some(label.clone()))?;
        let model = lp.profile.model.path.clone();
        let mut status_error = None;
        let report = crate::prune::prune_to_dir(&model, &settings, &out, &mut |done, total| {
            on_event(&Event::PruneProgress { done, total });
            lp.stage_progress(&label, "decoder layers", (done, total), &mut status_error);
        })?;
        if let Some(e) = status_error {
            return Err(e);
        }
        on_event(&Event::Pruned(report));
    }
    let mut pruned = lp.profile.clone();
    pruned.model.path = out;
    Ok(pruned)
}

/// Restore the newest checkpoint that verifies and loads (older ones are tried when the
/// newest is broken); `None` when there is none. A profile edited since the checkpoint is
/// an error unless `accept_change`.
fn restore_latest(
    lp: &Loop,
    p: &mut Prepared,
    opt: &mut Optimizer,
    accept_change: bool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Option<(TrainerState, Vec<Booster>)>> {
    for dir in lp.run.checkpoints() {
        let restored = checkpoint::verify(&dir).and_then(|()| {
            if let Some(recorded) = checkpoint::recorded_profile(&dir)? {
                let changed = profile_differences(&recorded, lp.profile);
                if !changed.is_empty() && !accept_change {
                    return Err(LorsError::ProfileChanged {
                        path: lp.run.profile_path(),
                        keys: changed.join(", "),
                    });
                }
            }
            let boost_every = lp.profile.adapter.boost_every;
            checkpoint::restore(&dir, &mut p.model, opt, boost_every)
        });
        match restored {
            Ok(restored) => return Ok(Some(restored)),
            Err(e @ LorsError::ProfileChanged { .. }) => return Err(e),
            Err(e) => on_event(&Event::Notice(format!(
                "skipping checkpoint {}: {e}",
                dir.display()
            ))),
        }
    }
    Ok(None)
}

/// The dotted keys whose values differ between two profiles.
pub fn profile_differences(a: &Profile, b: &Profile) -> Vec<String> {
    fn walk(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
        match (a, b) {
            (toml::Value::Table(x), toml::Value::Table(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    match (x.get(k), y.get(k)) {
                        (Some(u), Some(v)) => walk(&key, u, v, out),
                        _ => out.push(key),
                    }
                }
            }
            _ if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let value = |p: &Profile| toml::Value::try_from(p).expect("profiles serialize");
    let mut out = Vec::new();
    walk("", &value(a), &value(b), &mut out);
    out
}

/// Initialise fresh adapters as the profile says (from a file, or from gradients).
fn init_adapters(
    lp: &mut Loop,
    profile: &Profile,
    p: &Prepared,
    on_event: &mut dyn FnMut(&Event),
) -> Result<()> {
    if let Some(path) = &profile.adapter.init_from {
        return peft::load_adapter(path, &p.model);
    }
    if profile.adapter.init != Init::Gradient {
        return Ok(());
    }
    let label = "gradient init".to_string();
    lp.set_status(RunState::Initializing, 0, Some(label.clone()))?;
    let t = &profile.train;
    let n = profile.adapter.init_samples.div_ceil(t.batch_size);
    let batches = (0..n)
        .map(|i| p.train.batch(i, DType::F32))
        .collect::<Result<Vec<_>>>()?;
    let mut status_error = None;
    let report = gradient_init(
        &p.model,
        &batches,
        profile.adapter.stable_gamma,
        GRAD_INIT_BUDGET_BYTES,
        t.recompute,
        t.seed,
        &mut |progress| {
            on_event(&Event::InitProgress(progress));
            let (state, step) = (lp.status.state, lp.status.step);
            if let Err(e) = lp.set_status(state, step, Some(format!("{label}: {progress}"))) {
                status_error.get_or_insert(e);
            }
        },
    )?;
    if let Some(e) = status_error {
        return Err(e);
    }
    let row = MetricRow::Init {
        seconds: report.seconds,
        layers: report.layers,
        sequences: report.sequences,
        sweeps: report.sweeps,
    };
    lp.run.append_metric(&row)?;
    on_event(&Event::InitDone(report));
    Ok(())
}

/// The loss, gradients and gradient norm of one optimiser step (accumulated over
/// `grad_accum` micro-batches), before the update.
struct StepGrads {
    loss: f64,
    grads: Vec<Tensor>,
    grad_norm: f64,
}

/// Forward and backward over the step's micro-batches (each block running its own backward),
/// advancing `state.batches_seen`. `vars` holds the pairs' tensors (the first `pairs`), then
/// SoRA's gates.
fn compute_grads(
    p: &Prepared,
    (vars, pairs): (&[Var], usize),
    t: &TrainSection,
    regularizer: &RankRegularizer,
    state: &mut TrainerState,
) -> Result<StepGrads> {
    let mut store = Gradients::new();
    let mut loss_sum = 0.0;
    let weight = 1.0 / t.grad_accum as f64;
    for _ in 0..t.grad_accum {
        let batch = p.train.batch(state.batches_seen, DType::F32)?;
        state.batches_seen += 1;
        let (sum, count) = p.model.loss_and_grads(
            &batch.ids,
            &batch.loss_mask,
            weight,
            t.recompute,
            &mut store,
        )?;
        loss_sum += sum / count.max(1.0) * weight;
    }
    let mut grads = vars
        .iter()
        .map(|var| {
            store.get(var).cloned().ok_or_else(|| {
                LorsError::invalid("train", "an adapter tensor received no gradient")
            })
        })
        .collect::<Result<Vec<Tensor>>>()?;
    if regularizer.is_active() {
        regularizer.apply(&vars[..pairs], &mut grads[..pairs], state.step)?;
    }
    // Summed where the gradients live, in f64 and in order: one read from a GPU.
    let mut sq: Option<Tensor> = None;
    for g in &grads {
        let part = g.sqr()?.sum_all()?.to_dtype(DType::F64)?;
        sq = Some(match sq {
            Some(acc) => (acc + part)?,
            None => part,
        });
    }
    let grad_norm = sq.map_or(Ok(0.0), |s| s.to_scalar::<f64>())?.sqrt();
    Ok(StepGrads {
        loss: loss_sum,
        grads,
        grad_norm,
    })
}

/// The factor that clips a gradient of norm `norm` to `clip` (0: no clipping).
fn clip_scale(clip: f64, norm: f64) -> f64 {
    if clip > 0.0 && norm > clip {
        clip / norm
    } else {
        1.0
    }
}

/// The error for a non-finite step, after checkpointing the last finite step's parameters.
fn diverged(
    step: usize,
    g: &StepGrads,
    last_good: Option<&checkpoint::Snapshot>,
    save: &mut dyn FnMut(&checkpoint::Snapshot) -> Result<()>,
) -> LorsError {
    let what = if g.loss.is_finite() {
        format!("the gradient norm is {} (loss {})", g.grad_norm, g.loss)
    } else {
        format!("the loss is {}", g.loss)
    };
    let kept = match last_good {
        Some(snap) => match save(snap) {
            Ok(()) => format!(
                "checkpoint step-{:06} holds the parameters of the last finite step",
                snap.state.step
            ),
            Err(e) => format!("saving the last finite step's parameters failed: {e}"),
        },
        None => "no step was finite, so no checkpoint was kept".into(),
    };
    LorsError::Diverged { step, what, kept }
}

/// Where training begins: a restored checkpoint on a resume (metrics cut back to it, the
/// boosting rounds it kept replayed), else freshly initialised adapters at step 0 (metrics
/// started anew).
fn starting_state(
    lp: &mut Loop,
    profile: &Profile,
    p: &mut Prepared,
    opt: &mut Optimizer,
    start: Start,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(TrainerState, Vec<Booster>)> {
    if let Start::Resume {
        accept_profile_change,
    } = start
    {
        let restored = restore_latest(lp, p, opt, accept_profile_change, on_event)?;
        lp.run
            .truncate_metrics_to(restored.as_ref().map(|(s, _)| s.step))?;
        if let Some((state, rounds)) = restored {
            lp.status.best_eval_loss = state.best_eval_loss;
            return Ok((state, rounds));
        }
    }
    init_adapters(lp, profile, p, on_event)?;
    record_sparsity(lp.run, &p.model, 0, on_event)?;
    let state = TrainerState {
        step: 0,
        seed: profile.train.seed,
        batches_seen: 0,
        best_eval_loss: None,
    };
    Ok((state, Vec::new()))
}

/// Evaluate after a step (recording the loss and the best so far) and record the sparsity.
fn evaluate_step(
    lp: &mut Loop,
    p: &Prepared,
    state: &mut TrainerState,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Option<EvalResult>> {
    let result = lp.eval(p)?;
    if let Some(e) = &result {
        let row = MetricRow::Eval {
            step: state.step,
            eval_loss: e.loss,
            eval_ppl: e.perplexity,
        };
        lp.run.append_metric(&row)?;
        on_event(&Event::Metric(row));
        let best = state.best_eval_loss.map_or(e.loss, |b: f64| b.min(e.loss));
        state.best_eval_loss = Some(best);
        lp.status.best_eval_loss = Some(best);
    }
    record_sparsity(lp.run, &p.model, state.step, on_event)?;
    Ok(result)
}

/// What a run trains: the prepared model and data, the optimiser, and where it stands.
struct Session<'a> {
    profile: &'a Profile,
    p: Prepared,
    opt: Optimizer,
    /// The adapters' `[A, B]` pairs, then SoRA's gates.
    vars: Vec<Var>,
    /// How many of `vars` are the pairs' tensors.
    pairs: usize,
    /// Boosting's finished rounds (empty without boosting).
    rounds: Vec<Booster>,
    state: TrainerState,
    total: usize,
    /// The state before the newest finite step's update: kept if the next step diverges.
    last_good: Option<checkpoint::Snapshot>,
}

impl<'a> Session<'a> {
    /// Load the profile's model and data and restore or initialise the adapters.
    fn open(
        lp: &mut Loop,
        profile: &'a Profile,
        start: Start,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<Self> {
        let mut p = prepare(profile)?;
        let total = total_steps(profile, &p.train);
        lp.status.total_steps = total;
        let (named, gates) = trainable(&p.model);
        let pairs = named.len();
        // The pairs first, then the gates: the order of the optimiser's gradients.
        let vars = named.iter().chain(&gates).map(|(_, v)| v.clone()).collect();
        let mut opt = fresh_optimizer(profile, &p.model)?;
        let (state, rounds) = starting_state(lp, profile, &mut p, &mut opt, start, on_event)?;
        on_event(&Event::Started {
            step: state.step,
            total,
        });
        Ok(Self {
            profile,
            p,
            opt,
            vars,
            pairs,
            state,
            rounds,
            total,
            last_good: None,
        })
    }

    /// With boosting, fold the boosters into the base weights at the end of a round (not
    /// after the last step) and restart them with a fresh optimiser.
    fn end_boost_round_if_due(&mut self) -> Result<()> {
        let every = self.profile.adapter.boost_every;
        let step = self.state.step;
        if every == 0 || !step.is_multiple_of(every) || step >= self.total {
            return Ok(());
        }
        let (seed, round) = (self.profile.train.seed, self.rounds.len());
        let booster = boost::end_round(&mut self.p.model, seed, round)?;
        self.rounds.push(booster);
        self.opt = fresh_optimizer(self.profile, &self.p.model)?;
        Ok(())
    }

    /// With Flat-LoRA, perturb every adapted layer for the coming step (`on`), or stop.
    fn set_flat_noise(&self, on: bool) {
        let a = &self.profile.adapter;
        if !a.flat {
            return;
        }
        let (step, seed) = (self.state.step, self.profile.train.seed);
        let strength = flat_ramp(step, self.total) * a.flat_rho;
        for (layer, (_, l)) in self.p.model.adapted().into_iter().enumerate() {
            l.set_flat_noise(on.then_some(FlatNoise {
                seed,
                layer,
                step,
                strength,
            }));
        }
    }

    fn snapshot(&self) -> Result<checkpoint::Snapshot> {
        checkpoint::Snapshot::capture(&self.state, &self.p.model, &self.opt, &self.rounds)
    }

    /// One optimiser step, returning its metrics row (`elapsed_s` counted from `started`,
    /// which the loop moves later by the time spent paused).
    /// A non-finite loss or gradient norm is an error, after `save` kept the last finite
    /// step's parameters.
    fn step(
        &mut self,
        started: Instant,
        save: &mut dyn FnMut(&checkpoint::Snapshot) -> Result<()>,
    ) -> Result<MetricRow> {
        let t = &self.profile.train;
        let step_start = Instant::now();
        let device = self.p.model.device().clone();
        reset_gpu_peak(&device)?;
        memory::reset_peak();
        let live_at_start = memory::live_bytes();
        let before = self.state.clone();
        let regularizer = self.profile.adapter.rank_regularizer(t.seed);
        let vars = (self.vars.as_slice(), self.pairs);
        self.set_flat_noise(true);
        let g = compute_grads(&self.p, vars, t, &regularizer, &mut self.state);
        self.set_flat_noise(false);
        let g = g?;
        if !(g.loss.is_finite() && g.grad_norm.is_finite()) {
            return Err(diverged(before.step + 1, &g, self.last_good.as_ref(), save));
        }
        self.last_good = Some(checkpoint::Snapshot::capture(
            &before,
            &self.p.model,
            &self.opt,
            &self.rounds,
        )?);
        let optim = &self.profile.optim;
        let lr = lr_at(optim, self.state.step, self.total);
        self.opt
            .step(&g.grads, lr, clip_scale(optim.grad_clip, g.grad_norm))?;
        self.state.step += 1;
        self.end_boost_round_if_due()?;
        // Reading GPU memory waits for the step's kernels, so the time below includes them.
        let gpu = gpu_memory(&device)?;
        let tokens = (t.batch_size * t.grad_accum * self.profile.data.seq_len) as f64;
        Ok(MetricRow::Train {
            step: self.state.step,
            loss: g.loss,
            lr,
            grad_norm: g.grad_norm,
            tokens_per_s: tokens / step_start.elapsed().as_secs_f64(),
            elapsed_s: started.elapsed().as_secs_f64(),
            live_bytes: memory::live_bytes(),
            peak_bytes: memory::peak_bytes(),
            step_peak_bytes: memory::peak_bytes().saturating_sub(live_at_start),
            rss_bytes: memory::rss_bytes(),
            gpu,
        })
    }
}

/// End the run as `state` at `step` with `message`.
fn end_run(
    lp: &mut Loop,
    state: RunState,
    step: usize,
    message: &str,
    last_eval: Option<EvalResult>,
) -> Result<RunOutcome> {
    lp.set_status(state, step, Some(message.into()))?;
    Ok(RunOutcome {
        state,
        step,
        last_eval,
    })
}

fn train_inner(
    lp: &mut Loop,
    start: Start,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<RunOutcome> {
    let profile = &prune_stage(lp, on_event)?;
    let t = &profile.train;
    let mut s = Session::open(lp, profile, start, on_event)?;
    // After `open`, which cut the metrics back to the checkpoint it resumes from.
    if profile.eval.is_some() && !lp.run.has_task_rows(EvalStage::Before)? {
        let model = s.p.model.without_adapters();
        let step = s.state.step;
        let tok = &s.p.tokenizer;
        evaluate_tasks(lp, profile, &model, tok, EvalStage::Before, step, on_event)?;
    }
    let (first_step, loop_start) = (s.state.step, lp.active_s());
    let mut last_eval = None;
    let profile_toml = lp.profile.to_toml();
    let run = lp.run;
    let save = |snap: &checkpoint::Snapshot, on_event: &mut dyn FnMut(&Event)| -> Result<()> {
        let dir = checkpoint::save(&run.checkpoints_path(), snap, profile, &profile_toml)?;
        run.append_metric(&MetricRow::Checkpoint {
            step: snap.state.step,
        })?;
        on_event(&Event::Checkpoint(dir));
        Ok(())
    };
    lp.set_status(RunState::Running, s.state.step, Some("training".into()))?;
    while s.state.step < s.total {
        lp.follow_control(stop, &mut || save(&s.snapshot()?, &mut *on_event))?;
        if stop.load(Ordering::SeqCst) {
            save(&s.snapshot()?, on_event)?;
            let step = s.state.step;
            return end_run(lp, RunState::Stopped, step, "stopped by request", last_eval);
        }
        let row = s.step(lp.active_clock(), &mut |snap| save(snap, &mut *on_event))?;
        lp.run.append_metric(&row)?;
        if let MetricRow::Train { loss, .. } = row {
            lp.status.last_loss = Some(loss);
        }
        on_event(&Event::Metric(row));
        let step = s.state.step;
        let done = (step - first_step) as f64;
        let active = lp.active_s() - loop_start;
        lp.status.eta_s = Some(active / done * (s.total - step) as f64);
        let due = |every: usize| (every > 0 && step.is_multiple_of(every)) || step == s.total;
        if due(t.eval_every) {
            last_eval = evaluate_step(lp, &s.p, &mut s.state, on_event)?.or(last_eval);
        }
        if due(t.save_every) {
            save(&s.snapshot()?, on_event)?;
        }
        lp.set_status(RunState::Running, step, None)?;
    }
    finish(lp, profile, &s, on_event)?;
    end_run(lp, RunState::Finished, s.state.step, "finished", last_eval)
}

/// The end of a finished run: SoRA's folded adapter (`adapter/`), the merged export (when
/// asked), then the `[eval]` tasks on the merged model (what the user ships), or without an
/// export on the trained adapters.
fn finish(
    lp: &mut Loop,
    profile: &Profile,
    s: &Session,
    on_event: &mut dyn FnMut(&Event),
) -> Result<()> {
    if profile.adapter.sora {
        let dir = lp.run.adapter_path();
        peft::export_folded_adapter(&s.p.model, profile, &dir)?;
    }
    let merged = lp.run.merged_path();
    if profile.train.merge_at_end {
        let msg = Some("exporting merged model".into());
        lp.set_status(RunState::Running, s.state.step, msg)?;
        crate::model::export_merged(&s.p.model, &s.p.model_dir, &merged)?;
    }
    if profile.eval.is_none() {
        return Ok(());
    }
    let export = match profile.train.merge_at_end {
        true => Some(load_with(profile, &ModelDir::open(&merged)?, None)?),
        false => None,
    };
    let model = export.as_ref().unwrap_or(&s.p.model);
    let (step, tok) = (s.state.step, &s.p.tokenizer);
    evaluate_tasks(lp, profile, model, tok, EvalStage::After, step, on_event)
}

/// Score the profile's `[eval]` tasks on `model` and append a row per task as `stage` at
/// `step`; the status message follows the items.
fn evaluate_tasks(
    lp: &mut Loop,
    profile: &Profile,
    model: &CausalLm,
    tok: &TextTokenizer,
    stage: EvalStage,
    step: usize,
    on_event: &mut dyn FnMut(&Event),
) -> Result<()> {
    let Some(suite) = &profile.eval else {
        return Ok(());
    };
    let mut status_error = None;
    let outcomes = suite.run(model, tok, &mut |task, done, total| {
        on_event(&Event::TaskProgress {
            stage,
            task,
            done,
            total,
        });
        let label = format!("{stage} eval, {task}");
        lp.stage_progress(&label, "items", (done, total), &mut status_error);
    })?;
    if let Some(e) = status_error {
        return Err(e);
    }
    for o in outcomes {
        let row = MetricRow::Task {
            step,
            stage,
            score: o.score,
        };
        lp.run.append_metric(&row)?;
        on_event(&Event::Metric(row));
    }
    Ok(())
}

/// A run's trained model: the base it trained (the run's `pruned/` model when it began with a
/// prune step, with the boosting rounds the checkpoint kept folded in) with the adapter of one
/// of its checkpoints applied, unmerged.
pub struct TrainedModel {
    pub model: CausalLm,
    pub base: ModelDir,
    pub profile: Profile,
    pub checkpoint: PathBuf,
}

/// Load `run`'s model with the adapter of `checkpoint` (default: the newest).
pub fn load_trained(run: &RunDir, checkpoint: Option<&Path>) -> Result<TrainedModel> {
    let profile = Profile::load(&run.profile_path(), &[])?;
    let checkpoint = match checkpoint {
        Some(c) => c.to_path_buf(),
        None => run
            .latest_checkpoint()
            .ok_or_else(|| LorsError::parse(&run.path, "the run has no checkpoint yet"))?,
    };
    let base = if profile.prune.is_some() {
        run.pruned_path()
    } else {
        profile.model.path.clone()
    };
    let base = ModelDir::open(&base)?;
    let mut model = load_adapted(&profile, &base)?;
    boost::replay(&mut model, &checkpoint::read_boosters(&checkpoint)?)?;
    peft::load_adapter(&checkpoint.join(peft::ADAPTER_FILE), &model)?;
    Ok(TrainedModel {
        model,
        base,
        profile,
        checkpoint,
    })
}
