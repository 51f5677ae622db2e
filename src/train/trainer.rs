//! The training loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::checkpoint::{self, TrainerState};
use super::eval::{evaluate, EvalResult};
use super::grad_init::{gradient_init, GradInitReport};
use super::loss::causal_lm_loss;
use super::optim::{lr_at, AdamW};
use super::profile::Profile;
use super::run_dir::{now_s, ControlRequest, MetricRow, RunDir, RunState, Status};
use crate::adapters::Init;
use crate::data::{
    load_blocks, read_records, records_to_blocks, split_records, Batcher, Block, TextTokenizer,
};
use crate::device::{gpu_memory, parse_device, reset_gpu_peak};
use crate::error::{LorsError, Result};
use crate::memory;
use crate::model::{merged_sparsity, parse_dtype, AdapterSpec, CausalLm, ModelDir};

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
    /// Gradient initialisation progress (layers done of total).
    InitProgress {
        done: usize,
        total: usize,
    },
    InitDone(GradInitReport),
    Metric(MetricRow),
    Checkpoint(std::path::PathBuf),
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
    };
    let mut rng = ChaCha8Rng::seed_from_u64(profile.train.seed);
    CausalLm::from_source(
        &model_dir.config,
        &model_dir.weights()?,
        parse_dtype(&profile.model.dtype)?,
        &parse_device(&profile.train.device)?,
        Some(&spec),
        &mut rng,
    )
}

/// Load the model (with adapters) and the data of a profile.
pub fn prepare(profile: &Profile) -> Result<Prepared> {
    let model_dir = ModelDir::open(&profile.model.path)?;
    let tokenizer = model_dir.tokenizer()?;
    let d = &profile.data;
    let opts = d.block_options();
    let (train_blocks, valid, skipped) = match &d.valid {
        Some(valid_path) => {
            let train = load_blocks(&d.train, &tokenizer, &opts)?;
            let valid = load_blocks(valid_path, &tokenizer, &opts)?;
            (
                train.blocks,
                valid.blocks,
                train.records.skipped + valid.records.skipped,
            )
        }
        None => {
            let set = read_records(&d.train, d.format, d.skip_bad_records)?;
            let (train, valid) = split_records(&set.records, d.valid_fraction, profile.train.seed);
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

/// Named trainable variables of the model, in module order.
fn trainable(model: &CausalLm) -> Vec<(String, Var)> {
    model
        .adapted()
        .into_iter()
        .flat_map(|(m, l)| {
            l.trainable()
                .map(|(part, v)| (checkpoint::peft_name(&m, part), v.clone()))
        })
        .collect()
}

struct Loop<'a> {
    profile: &'a Profile,
    run: &'a RunDir,
    status: Status,
    started: Instant,
}

impl Loop<'_> {
    fn set_status(&mut self, state: RunState, step: usize, message: Option<String>) -> Result<()> {
        self.status.state = state;
        self.status.step = step;
        self.status.elapsed_s = self.started.elapsed().as_secs_f64();
        self.status.updated_at = now_s();
        if message.is_some() {
            self.status.message = message;
        }
        self.run.write_status(&self.status)
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
                    ControlRequest::Pause => paused = true,
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

/// Run (or resume) the training that `run`'s profile describes. `stop` is polled between
/// steps (Ctrl-C): the run then checkpoints and ends as `stopped`. A NaN or infinite loss
/// ends it as `failed` with a checkpoint of the last good step.
pub fn train(
    profile: &Profile,
    run: &RunDir,
    resume: bool,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<RunOutcome> {
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
    };
    lp.status.control_ack = run.read_control()?.map_or(0, |c| c.id);
    lp.run.write_status(&lp.status)?;
    let result = train_inner(&mut lp, resume, stop, on_event);
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

fn train_inner(
    lp: &mut Loop,
    resume: bool,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<RunOutcome> {
    let pruned_profile;
    let profile = match &lp.profile.prune {
        Some(settings) => {
            let out = lp.run.path.join("pruned");
            if !out.join("sparsity.json").is_file() {
                lp.set_status(
                    RunState::Initializing,
                    0,
                    Some(format!("pruning ({})", settings.method)),
                )?;
                let (model, settings) = (lp.profile.model.path.clone(), settings.clone());
                let mut status_error = None;
                let report =
                    crate::prune::prune_to_dir(&model, &settings, &out, &mut |done, total| {
                        on_event(&Event::PruneProgress { done, total });
                        let msg = format!(
                            "pruning ({}): {done}/{total} decoder layers",
                            settings.method
                        );
                        if let Err(e) = lp.set_status(RunState::Initializing, 0, Some(msg)) {
                            status_error.get_or_insert(e);
                        }
                    })?;
                if let Some(e) = status_error {
                    return Err(e);
                }
                on_event(&Event::Pruned(report));
            }
            let mut p = lp.profile.clone();
            p.model.path = out;
            pruned_profile = p;
            &pruned_profile
        }
        None => lp.profile,
    };
    let t = &profile.train;
    let p = prepare(profile)?;
    let total = total_steps(profile, &p.train);
    lp.status.total_steps = total;
    let mut opt = AdamW::new(trainable(&p.model), &profile.optim)?;
    let mut state = TrainerState {
        step: 0,
        seed: t.seed,
        batches_seen: 0,
        best_eval_loss: None,
    };
    let resumed_from = if resume {
        lp.run.latest_checkpoint()
    } else {
        None
    };
    if let Some(dir) = &resumed_from {
        state = checkpoint::restore(dir, &p.model, &mut opt)?;
        lp.run.truncate_metrics_after(state.step)?;
        lp.status.best_eval_loss = state.best_eval_loss;
    } else if let Some(path) = &profile.adapter.init_from {
        checkpoint::load_adapter(path, &p.model)?;
    } else if profile.adapter.init == Init::Gradient {
        lp.set_status(
            RunState::Initializing,
            0,
            Some("gradient initialisation".into()),
        )?;
        let n = profile.adapter.init_samples.div_ceil(t.batch_size);
        let batches = (0..n)
            .map(|i| p.train.batch(i, DType::F32))
            .collect::<Result<Vec<_>>>()?;
        let mut status_error = None;
        let report = gradient_init(
            &p.model,
            &batches,
            profile.adapter.stable_gamma,
            1 << 30,
            t.seed,
            &mut |done, total| {
                on_event(&Event::InitProgress { done, total });
                let msg = format!("gradient init: {done}/{total} layers");
                if let Err(e) = lp.set_status(RunState::Initializing, 0, Some(msg)) {
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
    }
    on_event(&Event::Started {
        step: state.step,
        total,
    });
    if resumed_from.is_none() {
        record_sparsity(lp.run, &p.model, state.step, on_event)?;
    }
    let tokens_per_step = (t.batch_size * t.grad_accum * profile.data.seq_len) as f64;
    let vars: Vec<Var> = trainable(&p.model).into_iter().map(|(_, v)| v).collect();
    let first_step = state.step;
    let loop_start = Instant::now();
    let mut last_eval = None;
    let save =
        |state: &TrainerState, opt: &AdamW, on_event: &mut dyn FnMut(&Event)| -> Result<()> {
            let dir = checkpoint::save(&lp.run.checkpoints_path(), state, &p.model, opt, profile)?;
            lp.run
                .append_metric(&MetricRow::Checkpoint { step: state.step })?;
            on_event(&Event::Checkpoint(dir));
            Ok(())
        };
    lp.set_status(RunState::Running, state.step, Some("training".into()))?;
    while state.step < total {
        lp.follow_control(stop, &mut || save(&state, &opt, &mut *on_event))?;
        if stop.load(Ordering::SeqCst) {
            save(&state, &opt, on_event)?;
            lp.set_status(
                RunState::Stopped,
                state.step,
                Some("stopped by request".into()),
            )?;
            return Ok(RunOutcome {
                state: RunState::Stopped,
                step: state.step,
                last_eval,
            });
        }
        let step_start = Instant::now();
        let device = p.model.device();
        reset_gpu_peak(device)?;
        memory::reset_peak();
        let live_at_start = memory::live_bytes();
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut loss_sum = 0.0;
        for _ in 0..t.grad_accum {
            let batch = p.train.batch(state.batches_seen, DType::F32)?;
            state.batches_seen += 1;
            let logits = p.model.forward(&batch.ids)?;
            let (loss, _) = causal_lm_loss(&logits, &batch.ids, &batch.loss_mask)?;
            let loss = (loss / t.grad_accum as f64)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let store = loss.backward()?;
            for (acc, var) in grads.iter_mut().zip(&vars) {
                let g = store.get(var).ok_or_else(|| {
                    LorsError::invalid("train", "an adapter tensor received no gradient")
                })?;
                *acc = Some(match acc.take() {
                    Some(a) => (a + g)?,
                    None => g.clone(),
                });
            }
        }
        if !loss_sum.is_finite() {
            save(&state, &opt, on_event)?;
            return Err(LorsError::Diverged {
                step: state.step + 1,
                loss: loss_sum,
            });
        }
        let grads: Vec<Tensor> = grads.into_iter().map(|g| g.expect("accumulated")).collect();
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
        let clip = profile.optim.grad_clip;
        let scale = if clip > 0.0 && grad_norm > clip {
            clip / grad_norm
        } else {
            1.0
        };
        let lr = lr_at(&profile.optim, state.step, total);
        opt.step(&grads, lr, scale)?;
        state.step += 1;
        // Reading GPU memory waits for the step's kernels, so the time below includes them.
        let gpu = gpu_memory(device)?;
        let step_s = step_start.elapsed().as_secs_f64();
        let row = MetricRow::Train {
            step: state.step,
            loss: loss_sum,
            lr,
            grad_norm,
            tokens_per_s: tokens_per_step / step_s,
            elapsed_s: lp.started.elapsed().as_secs_f64(),
            live_bytes: memory::live_bytes(),
            peak_bytes: memory::peak_bytes(),
            step_peak_bytes: memory::peak_bytes().saturating_sub(live_at_start),
            rss_bytes: memory::rss_bytes(),
            gpu,
        };
        lp.run.append_metric(&row)?;
        on_event(&Event::Metric(row));
        let done = (state.step - first_step) as f64;
        lp.status.eta_s =
            Some(loop_start.elapsed().as_secs_f64() / done * (total - state.step) as f64);
        lp.status.last_loss = Some(loss_sum);
        let is_last = state.step == total;
        if (t.eval_every > 0 && state.step.is_multiple_of(t.eval_every)) || is_last {
            if let Some(e) = lp.eval(&p)? {
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
                last_eval = Some(e);
            }
            record_sparsity(lp.run, &p.model, state.step, on_event)?;
        }
        if (t.save_every > 0 && state.step.is_multiple_of(t.save_every)) || is_last {
            save(&state, &opt, on_event)?;
        }
        lp.set_status(RunState::Running, state.step, None)?;
    }
    if t.merge_at_end {
        lp.set_status(
            RunState::Running,
            state.step,
            Some("exporting merged model".into()),
        )?;
        crate::model::export_merged(&p.model, &p.model_dir, &lp.run.path.join("merged"))?;
    }
    lp.set_status(RunState::Finished, state.step, Some("finished".into()))?;
    Ok(RunOutcome {
        state: RunState::Finished,
        step: state.step,
        last_eval,
    })
}
