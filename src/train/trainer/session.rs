//! A run's session: what it trains (the prepared model and data, the optimiser, the trainer
//! state), how it starts (a prune step, a restored checkpoint, or freshly initialised
//! adapters), and one optimiser step: forward and backward over the micro-batches, then the
//! update.

use std::time::Instant;

use candle_core::{DType, Tensor, Var};

use super::prepare::{fresh_optimizer, prepare, total_steps, trainable, Prepared};
use super::reporter::Reporter;
use super::{Event, Start};
use crate::adapters::{flat_ramp, FlatNoise, Init};
use crate::device::{gpu_memory, reset_gpu_peak};
use crate::error::{LorsError, Result};
use crate::eval::{evaluate, EvalResult};
use crate::memory;
use crate::model::{merged_sparsity, Gradients};
use crate::train::boost::{self, Booster};
use crate::train::checkpoint::{self, Snapshot, TrainerState};
use crate::train::grad_init::gradient_init;
use crate::train::optim::{lr_at, Optimizer};
use crate::train::peft;
use crate::train::profile::{profile_differences, Profile, TrainSection};
use crate::train::rank_reg::RankRegularizer;
use crate::train::run_dir::{Exchange, MetricRow, RunState};

/// Memory the gradient initialisation may use for its probes at once.
const GRAD_INIT_BUDGET_BYTES: usize = 1 << 30;

/// Saves checkpoints of one run: its profile as trained, and the profile file as recorded
/// (what a resume compares).
pub(super) struct Saver<'a> {
    pub profile: &'a Profile,
    pub recorded_toml: String,
}

impl Saver<'_> {
    /// Save `snap` into the run's checkpoints, recording it in the metrics.
    pub fn save(&self, rep: &mut Reporter, snap: &Snapshot) -> Result<()> {
        if !rep.writes {
            return Ok(());
        }
        let dir = checkpoint::save(
            &rep.run.checkpoints_path(),
            snap,
            self.profile,
            &self.recorded_toml,
        )?;
        rep.run.append_metric(&MetricRow::Checkpoint {
            step: snap.state.step,
        })?;
        rep.emit(Event::Checkpoint(dir));
        Ok(())
    }
}

/// The profile to train: `original`, or with a prune step, the same on the model it prunes
/// into the run directory (once; a resume finds it there).
pub(super) fn prune_stage(rep: &mut Reporter, original: &Profile) -> Result<Profile> {
    let Some(settings) = original.prune.clone() else {
        return Ok(original.clone());
    };
    let out = rep.run.pruned_path();
    // In a data-parallel run rank 0 prunes; the others wait and read what it wrote.
    if !rep.writes {
        crate::dist::barrier();
    }
    if rep.writes && !out.join("sparsity.json").is_file() {
        let label = format!("pruning ({})", settings.method);
        rep.set_status(RunState::Initializing, 0, Some(label.clone()))?;
        let model = &original.model.path;
        let report = crate::prune::prune_to_dir(model, &settings, &out, &mut |done, total| {
            let message = format!("{label}: {done}/{total} decoder layers");
            rep.progress(Event::PruneProgress { done, total }, message);
        })?;
        rep.end_stage()?;
        rep.emit(Event::Pruned(report));
    }
    if rep.writes {
        crate::dist::barrier();
    }
    let mut pruned = original.clone();
    pruned.model.path = out;
    Ok(pruned)
}

/// What a run trains: the prepared model and data, the optimiser, and where it stands.
pub(super) struct Session<'a> {
    pub profile: &'a Profile,
    pub p: Prepared,
    opt: Optimizer,
    /// The adapters' `[A, B]` pairs, then SoRA's gates.
    vars: Vec<Var>,
    /// How many of `vars` are the pairs' tensors.
    pairs: usize,
    /// Boosting's finished rounds (empty without boosting).
    rounds: Vec<Booster>,
    pub state: TrainerState,
    pub total: usize,
    /// The state before the newest finite step's update: kept if the next step diverges.
    last_good: Option<Snapshot>,
}

impl<'a> Session<'a> {
    /// Load `profile`'s model and data and restore or initialise the adapters; `recorded` is
    /// the run's profile as its file holds it (a resume refuses an edited one).
    pub fn open(
        rep: &mut Reporter,
        profile: &'a Profile,
        recorded: &Profile,
        start: Start,
    ) -> Result<Self> {
        let p = prepare(profile)?;
        for note in &p.data_notes {
            rep.notice(note.clone());
        }
        let total = total_steps(profile, &p.train);
        rep.status.total_steps = total;
        let (named, gates) = trainable(&p.model);
        let pairs = named.len();
        // The pairs first, then the gates: the order of the optimiser's gradients.
        let vars = named.iter().chain(&gates).map(|(_, v)| v.clone()).collect();
        let opt = fresh_optimizer(profile, &p.model)?;
        let mut s = Self {
            profile,
            p,
            opt,
            vars,
            pairs,
            state: TrainerState {
                step: 0,
                seed: profile.train.seed,
                batches_seen: 0,
                best_eval_loss: None,
            },
            rounds: Vec::new(),
            total,
            last_good: None,
        };
        s.start(rep, recorded, start)?;
        rep.emit(Event::Started {
            step: s.state.step,
            total,
        });
        Ok(s)
    }

    /// Where training begins: a restored checkpoint on a resume (metrics cut back to it,
    /// the boosting rounds it kept replayed), else freshly initialised adapters at step 0
    /// (metrics started anew).
    fn start(&mut self, rep: &mut Reporter, recorded: &Profile, start: Start) -> Result<()> {
        if let Start::Resume {
            accept_profile_change,
        } = start
        {
            let restored = self.restore_latest(rep, recorded, accept_profile_change)?;
            if rep.writes {
                rep.run
                    .truncate_metrics_to(restored.as_ref().map(|(s, _)| s.step))?;
            }
            if let Some((state, rounds)) = restored {
                rep.status.best_eval_loss = state.best_eval_loss;
                (self.state, self.rounds) = (state, rounds);
                return Ok(());
            }
        }
        self.init_adapters(rep)?;
        self.record_sparsity(rep)
    }

    /// Restore the newest checkpoint that verifies and loads (older ones are tried when the
    /// newest is broken); `None` when there is none. A checkpoint recorded with a profile
    /// other than `recorded` is an error unless `accept_change`.
    fn restore_latest(
        &mut self,
        rep: &mut Reporter,
        recorded: &Profile,
        accept_change: bool,
    ) -> Result<Option<(TrainerState, Vec<Booster>)>> {
        for dir in rep.run.checkpoints() {
            let restored = checkpoint::verify(&dir).and_then(|()| {
                if let Some(then) = checkpoint::recorded_profile(&dir)? {
                    let changed = profile_differences(&then, recorded);
                    if !changed.is_empty() && !accept_change {
                        return Err(LorsError::ProfileChanged {
                            path: rep.run.profile_path(),
                            keys: changed.join(", "),
                        });
                    }
                }
                let boost_every = recorded.adapter.boost_every;
                checkpoint::restore(&dir, &mut self.p.model, &mut self.opt, boost_every)
            });
            match restored {
                Ok(restored) => return Ok(Some(restored)),
                Err(e @ LorsError::ProfileChanged { .. }) => return Err(e),
                Err(e) => rep.notice(format!("skipping checkpoint {}: {e}", dir.display())),
            }
        }
        Ok(None)
    }

    /// Initialise fresh adapters as the profile says (from a file, or from gradients).
    fn init_adapters(&mut self, rep: &mut Reporter) -> Result<()> {
        let (profile, p) = (self.profile, &self.p);
        if let Some(path) = &profile.adapter.init_from {
            return peft::load_adapter(path, &p.model);
        }
        if profile.adapter.init != Init::Gradient {
            return Ok(());
        }
        let label = "gradient init";
        rep.set_status(RunState::Initializing, 0, Some(label.into()))?;
        let t = &profile.train;
        let n = profile.adapter.init_samples.div_ceil(t.batch_size);
        let batches = (0..n)
            .map(|i| p.train.batch(i, DType::F32))
            .collect::<Result<Vec<_>>>()?;
        let report = gradient_init(
            &p.model,
            &batches,
            profile.adapter.stable_gamma,
            GRAD_INIT_BUDGET_BYTES,
            t.recompute,
            t.seed,
            &mut |progress| {
                let message = format!("{label}: {progress}");
                rep.progress(Event::InitProgress(progress), message);
            },
        )?;
        rep.end_stage()?;
        rep.append(&MetricRow::Init {
            seconds: report.seconds,
            layers: report.layers,
            sequences: report.sequences,
            sweeps: report.sweeps,
        })?;
        rep.emit(Event::InitDone(report));
        Ok(())
    }

    /// Record the per-layer base and would-be merged densities at the current step.
    pub fn record_sparsity(&self, rep: &mut Reporter) -> Result<()> {
        rep.metric(MetricRow::Sparsity {
            step: self.state.step,
            layers: merged_sparsity(&self.p.model)?,
        })
    }

    /// The validation loss (none without validation data).
    pub fn validate(&self) -> Result<Option<EvalResult>> {
        let (p, t) = (&self.p, &self.profile.train);
        let Some(valid) = p.valid.as_ref().filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let limit = t.eval_batches.map(|b| b * t.batch_size);
        Ok(Some(evaluate(&p.model, valid, t.batch_size, limit)?))
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

    pub fn snapshot(&self) -> Result<Snapshot> {
        Snapshot::capture(&self.state, &self.p.model, &self.opt, &self.rounds)
    }

    /// One optimiser step, returning its metrics row (`elapsed_s` is the run's active time).
    /// A non-finite loss or gradient norm is an error, after `saver` kept the last finite
    /// step's parameters.
    pub fn step(&mut self, rep: &mut Reporter, saver: &Saver) -> Result<MetricRow> {
        let started = rep.active_clock();
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
            let last_good = self.last_good.as_ref();
            return Err(diverged(before.step + 1, &g, last_good, (rep, saver)));
        }
        self.last_good = Some(Snapshot::capture(
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
            exchange: g.exchange,
        })
    }
}

/// The loss, gradients and gradient norm of one optimiser step (accumulated over
/// `grad_accum` micro-batches), before the update.
struct StepGrads {
    loss: f64,
    grads: Vec<Tensor>,
    grad_norm: f64,
    exchange: Option<Exchange>,
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
    let ((mut grads, loss), exchange) = match crate::dist::ranks().size {
        1 => (accumulate(p, vars, t, state)?, None),
        _ => {
            let (grads, loss, exchange) = accumulate_over_ranks(p, vars, t, state)?;
            ((grads, loss), Some(exchange))
        }
    };
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
        loss,
        grads,
        grad_norm,
        exchange,
    })
}

/// Each of `vars`' gradient in `store`.
fn gradients_of(store: &Gradients, vars: &[Var]) -> Result<Vec<Tensor>> {
    vars.iter()
        .map(|var| {
            store.get(var).cloned().ok_or_else(|| {
                LorsError::invalid("train", "an adapter tensor received no gradient")
            })
        })
        .collect()
}

/// One process: the step's `grad_accum` micro-batches' gradients accumulated in order (the
/// store adds each micro-batch's to the sum so far), and the mean of their losses.
fn accumulate(
    p: &Prepared,
    vars: &[Var],
    t: &TrainSection,
    state: &mut TrainerState,
) -> Result<(Vec<Tensor>, f64)> {
    let mut store = Gradients::new();
    let mut loss_sum = 0.0;
    let weight = 1.0 / t.grad_accum as f64;
    for _ in 0..t.grad_accum {
        let (sum, count) = micro_batch(p, t, state.batches_seen, &mut store)?;
        state.batches_seen += 1;
        loss_sum += sum / count.max(1.0) * weight;
    }
    Ok((gradients_of(&store, vars)?, loss_sum))
}

/// Forward and backward of the run's `index`-th micro-batch (weighted 1/`grad_accum`), its
/// gradients added into `store`; its loss sum and token count.
fn micro_batch(
    p: &Prepared,
    t: &TrainSection,
    index: usize,
    store: &mut Gradients,
) -> Result<(f64, f64)> {
    let batch = p.train.batch(index, DType::F32)?;
    let weight = 1.0 / t.grad_accum as f64;
    p.model
        .loss_and_grads(&batch.ids, &batch.loss_mask, weight, t.recompute, store)
}

/// A data-parallel step: rank r computes micro-batches r, r + N, ... (each into a store of its
/// own, copied to the host), every rank gathers all of them and adds them in
/// micro-batch order, as [`accumulate`] does: the same bits on every rank and as one process
/// (tests/backward.rs checks that gradients computed apart add up to the accumulated ones).
fn accumulate_over_ranks(
    p: &Prepared,
    vars: &[Var],
    t: &TrainSection,
    state: &mut TrainerState,
) -> Result<(Vec<Tensor>, f64, Exchange)> {
    let ranks = crate::dist::ranks();
    let weight = 1.0 / t.grad_accum as f64;
    // Per micro-batch of mine: its loss sum and count, then every gradient's values (sent as
    // f32, or f64 when a gradient is f64: either way exactly).
    let mut mine: Vec<f64> = Vec::new();
    let mut losses: Vec<f64> = Vec::new();
    for k in (ranks.rank..t.grad_accum).step_by(ranks.size) {
        let mut store = Gradients::new();
        let (sum, count) = micro_batch(p, t, state.batches_seen + k, &mut store)?;
        losses.extend([sum, count]);
        for g in gradients_of(&store, vars)? {
            mine.extend(g.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?);
        }
    }
    state.batches_seen += t.grad_accum;
    let started = Instant::now();
    let wide = vars.iter().any(|v| v.dtype() == DType::F64);
    let all: Vec<f64> = match wide {
        true => crate::dist::all_gather_f64(&mine),
        false => {
            let narrow: Vec<f32> = mine.iter().map(|&v| v as f32).collect();
            let all = crate::dist::all_gather_f32(&narrow);
            all.into_iter().map(f64::from).collect()
        }
    };
    let all_losses = crate::dist::all_gather_f64(&losses);
    let exchange = Exchange {
        ranks: ranks.size,
        bytes_sent: mine.len() * if wide { 8 } else { 4 } + losses.len() * 8,
        seconds: started.elapsed().as_secs_f64(),
    };
    // Micro-batch k was rank k % N's (k / N)-th.
    let per_rank = t.grad_accum / ranks.size;
    let values_per_micro = mine.len() / per_rank;
    let at = |k: usize| (k % ranks.size) * per_rank + k / ranks.size;
    let mut grads: Vec<Tensor> = Vec::new();
    let mut loss_sum = 0.0;
    for k in 0..t.grad_accum {
        let (sum, count) = (all_losses[2 * at(k)], all_losses[2 * at(k) + 1]);
        loss_sum += sum / count.max(1.0) * weight;
        let mut offset = at(k) * values_per_micro;
        for (i, var) in vars.iter().enumerate() {
            let n = var.elem_count();
            let host = candle_core::Device::Cpu;
            let g = Tensor::from_slice(&all[offset..offset + n], var.shape(), &host)?
                .to_dtype(var.dtype())?
                .to_device(var.device())?;
            offset += n;
            match grads.get_mut(i) {
                Some(acc) => *acc = (&*acc + g)?,
                None => grads.push(g),
            }
        }
    }
    Ok((grads, loss_sum, exchange))
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
    last_good: Option<&Snapshot>,
    (rep, saver): (&mut Reporter, &Saver),
) -> LorsError {
    let what = if g.loss.is_finite() {
        format!("the gradient norm is {} (loss {})", g.grad_norm, g.loss)
    } else {
        format!("the loss is {}", g.loss)
    };
    let kept = match last_good {
        Some(snap) => match saver.save(rep, snap) {
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
