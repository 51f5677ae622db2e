//! Profiles: every setting of a run, as TOML. Unknown keys and bad values are errors that
//! name the key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::optim::{OptimSection, OptimizerName};
use super::Override;
use crate::adapters::{AdapterConfig, Init, Method};
use crate::data::{BlockOptions, DataFormat};
use crate::device::{check_compute, ComputeDtype, DeviceSpec};
use crate::error::{LorsError, Result};
use crate::model::{Proj, Recompute};

/// The model to fine-tune.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face model directory.
    pub path: PathBuf,
    /// Compute dtype: `f32` (or `f16`) on the CPU, `bf16` or `f32` on CUDA; the checkpoint's
    /// storage dtype is converted on load. Adapters and optimiser state stay f32.
    #[serde(default)]
    pub dtype: ComputeDtype,
}

/// Packing of tokenised records into sequences.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Packing {
    /// Pack documents, pad instruction records.
    #[default]
    Auto,
    /// Concatenate everything and cut into `seq_len` blocks.
    Pack,
    /// One padded sequence per record.
    Pad,
}

/// Training and validation data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training records (`.jsonl`, `.json`, `.parquet`, `.txt`), or `hf://datasets/...`.
    pub train: PathBuf,
    /// A separate validation file; otherwise `valid_fraction` of the training records.
    #[serde(default)]
    pub valid: Option<PathBuf>,
    /// Without a `valid` file: hold out this fraction of the training records.
    #[serde(default)]
    pub valid_fraction: f64,
    /// How to read records: `auto` (by the file and its fields), `text` or `alpaca`.
    #[serde(default)]
    pub format: DataFormat,
    /// Tokens per training sequence.
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// How tokenised records become sequences.
    #[serde(default)]
    pub packing: Packing,
    /// Count the prompt of instruction records in the loss.
    #[serde(default)]
    pub train_on_prompt: bool,
    /// Skip bad records (and count them) instead of failing.
    #[serde(default)]
    pub skip_bad_records: bool,
    /// Allow `seq_len` beyond the model's `max_position_embeddings`.
    #[serde(default)]
    pub allow_long_sequences: bool,
    /// Where the data's token shards are kept (tokenised once, shared by runs, trials and
    /// ranks); on a cluster, a folder every node sees. Default: `~/.cache/lors/shards`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_dir: Option<PathBuf>,
}

fn default_seq_len() -> usize {
    256
}

impl DataSection {
    /// Where this data's token shards are kept.
    pub fn shard_dir(&self) -> PathBuf {
        self.shard_dir
            .clone()
            .unwrap_or_else(crate::data::shards::default_shard_dir)
    }

    /// How this section turns records into training sequences.
    pub fn block_options(&self) -> BlockOptions {
        BlockOptions {
            format: self.format,
            seq_len: self.seq_len,
            pack: match self.packing {
                Packing::Auto => None,
                Packing::Pack => Some(true),
                Packing::Pad => Some(false),
            },
            train_on_prompt: self.train_on_prompt,
            skip_bad: self.skip_bad_records,
        }
    }
}

/// The adapter and its initialisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdapterSection {
    /// `lors`, `lors-exact`, `sqft`, `spp` or `lora` (dense adapters; the merge is not sparse).
    #[serde(default = "default_method")]
    pub method: Method,
    /// The adapters' rank r (A is r×in, B is out×r).
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// The scale numerator: s = alpha/r, or alpha/√r with `rslora`.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Rank-stabilised scaling s = alpha/√r (arXiv 2312.03732).
    #[serde(default = "yes")]
    pub rslora: bool,
    /// How A and B start: `gradient` is LoRS's (from the top singular vectors of the masked
    /// gradient); the others are PEFT's initialisers.
    #[serde(default)]
    pub init: Init,
    /// Calibration sequences for `init = "gradient"`.
    #[serde(default = "default_init_samples")]
    pub init_samples: usize,
    /// `A = Vᵣᵀ / stable_gamma` for `init = "gradient"`.
    #[serde(default = "default_stable_gamma")]
    pub stable_gamma: f64,
    /// The projections that get adapters, by their PEFT names (`q_proj`, ..., `down_proj`).
    #[serde(default = "default_targets")]
    pub target_modules: Vec<Proj>,
    /// Start from this adapter (PEFT safetensors) instead of an initialiser.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Freeze the first k decoder blocks: no adapters there and no backward through them
    /// (the cheap idea of SHERL, arXiv 2407.07523).
    #[schemars(!skip_serializing_if)]
    #[serde(default, skip_serializing_if = "is_zero")]
    pub frozen_blocks: usize,
    /// RM-LoRA's orthogonality regulariser `λ(‖AAᵀ − I‖ + ‖BᵀB − I‖)`; 0: off.
    #[schemars(!skip_serializing_if)]
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub orth_reg: f64,
    /// RM-LoRA's random rank masks: per step only this many of the r components get a
    /// gradient; 0: all.
    #[schemars(!skip_serializing_if)]
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rank_keep: usize,
    /// SoRA (arXiv 2311.11696): a trainable gate per rank component, `s·B·diag(g)·A`, that
    /// a proximal L1 step can zero (the live rank shrinks per layer).
    #[schemars(!skip_serializing_if)]
    #[serde(default, skip_serializing_if = "is_default")]
    pub sora: bool,
    /// Flat-LoRA (arXiv 2409.14396): train each step against a masked random perturbation
    /// of the merged weight, `σ_i = γ_t·ρ·‖W'_i‖/√in` with a cosine ramp `γ_t`.
    #[schemars(!skip_serializing_if)]
    #[serde(default, skip_serializing_if = "is_default")]
    pub flat: bool,
    /// Flat-LoRA's ρ.
    #[schemars(!skip_serializing_if)]
    #[serde(
        default = "default_flat_rho",
        skip_serializing_if = "is_default_flat_rho"
    )]
    pub flat_rho: f64,
    /// XGBLoRA (arXiv 2410.19694): every this many steps, fold the adapter into the frozen
    /// weights through the mask and start a fresh one (0: off).
    #[schemars(!skip_serializing_if)]
    #[serde(default, skip_serializing_if = "is_zero")]
    pub boost_every: usize,
    /// SoRA's soft-threshold ξ, applied to the gates after each step.
    #[schemars(!skip_serializing_if)]
    #[serde(
        default = "default_sora_threshold",
        skip_serializing_if = "is_default_sora_threshold"
    )]
    pub sora_threshold: f64,
}

fn default_flat_rho() -> f64 {
    0.05
}

fn is_default_flat_rho(x: &f64) -> bool {
    *x == default_flat_rho()
}

fn default_sora_threshold() -> f64 {
    1e-3
}

fn is_default_sora_threshold(x: &f64) -> bool {
    *x == default_sora_threshold()
}

fn is_default<T: Default + PartialEq>(x: &T) -> bool {
    *x == T::default()
}

fn is_zero_f64(x: &f64) -> bool {
    *x == 0.0
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn default_method() -> Method {
    Method::Lors
}
fn default_rank() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn yes() -> bool {
    true
}
fn default_init_samples() -> usize {
    128
}
fn default_stable_gamma() -> f64 {
    1.0
}
fn default_targets() -> Vec<Proj> {
    Proj::ALL.to_vec()
}

impl Default for AdapterSection {
    fn default() -> Self {
        toml::from_str("").expect("every adapter field has a default")
    }
}

impl AdapterSection {
    /// RM-LoRA's options for a run seeded by `seed`.
    pub fn rank_regularizer(&self, seed: u64) -> super::rank_reg::RankRegularizer {
        super::rank_reg::RankRegularizer {
            lambda: self.orth_reg,
            keep: self.rank_keep,
            seed,
        }
    }

    /// The per-layer adapter settings.
    pub fn adapter_config(&self) -> AdapterConfig {
        AdapterConfig {
            method: self.method,
            rank: self.rank,
            alpha: self.alpha,
            rslora: self.rslora,
            init: self.init,
            sora: self.sora,
        }
    }
}

/// Steps, batches, evaluation, checkpoints and output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimiser steps; or give `epochs`.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Passes over the training data (instead of `max_steps`).
    #[serde(default)]
    pub epochs: Option<usize>,
    /// Sequences per micro-batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Micro-batches per optimiser step (the step's batch is `batch_size × grad_accum`).
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Seeds initialisation and data order: the same seed gives the same loss curve.
    #[serde(default)]
    pub seed: u64,
    /// Evaluate every this many steps (0: only at the end).
    #[serde(default)]
    pub eval_every: usize,
    /// Limit evaluation to this many batches (all when absent).
    #[serde(default)]
    pub eval_batches: Option<usize>,
    /// Checkpoint every this many steps (0: only at the end).
    #[serde(default)]
    pub save_every: usize,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a `--features cuda` build).
    #[serde(default)]
    pub device: DeviceSpec,
    /// Where `lors train` puts run directories (the workbench uses its runs folder).
    #[serde(default = "default_output")]
    pub output_dir: PathBuf,
    /// Name of the run directory (default: method, rank and a timestamp).
    #[serde(default)]
    pub run_name: Option<String>,
    /// Export the merged model into the run directory when training ends.
    #[serde(default)]
    pub merge_at_end: bool,
    /// Pause after these steps until a resume or a stop arrives (a sweep's rungs: a trial
    /// waits for its early-stopping verdict, so where it stops does not depend on timing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(!skip_serializing_if)]
    pub pause_at: Vec<usize>,
    /// What each decoder block keeps for its backward: `selective` (the products of matrix
    /// multiplications; fastest) or `block` (only its input; least memory, one more forward).
    #[serde(default)]
    pub recompute: Recompute,
}

fn default_batch() -> usize {
    8
}
fn one() -> usize {
    1
}
fn default_output() -> PathBuf {
    PathBuf::from("runs")
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub model: ModelSection,
    /// Prune `model.path` first and fine-tune the pruned model (dense → sparse → LoRS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<crate::prune::PruneSettings>,
    pub data: DataSection,
    #[serde(default)]
    pub adapter: AdapterSection,
    #[serde(default)]
    pub optim: OptimSection,
    pub train: TrainSection,
    /// Zero-shot tasks scored before training and after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<crate::eval::TaskSuite>,
}

impl Profile {
    /// Read a profile file, applying `overrides` (`adapter.rank=16`).
    pub fn load(path: &Path, overrides: &[Override]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LorsError::io(path, e))?;
        let error = match Self::parse(&text, overrides) {
            Ok(profile) => return Ok(profile),
            Err(e) => e,
        };
        // The file's own mistakes name the file; one only the overrides make (a mistyped
        // `--set` key) is the command line's.
        let file_alone = || Self::parse(&text, &[]).err().map(|e| e.to_string());
        if !overrides.is_empty() && file_alone() != Some(error.to_string()) {
            return Err(match error {
                LorsError::Parse { detail, .. } => LorsError::invalid("--set", detail),
                other => other,
            });
        }
        Err(match error {
            LorsError::InvalidValue { field, reason } => {
                LorsError::parse(path, format!("`{field}`: {reason}"))
            }
            LorsError::Parse { detail, .. } => LorsError::parse(path, detail),
            other => other,
        })
    }

    /// Parse profile text with overrides, and validate it.
    pub fn parse(text: &str, overrides: &[Override]) -> Result<Self> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| LorsError::parse(Path::new("profile"), e.to_string()))?;
        Self::from_table(table, overrides)
    }

    /// A profile's table with overrides, validated.
    pub fn from_table(mut value: toml::Table, overrides: &[Override]) -> Result<Self> {
        if value.contains_key("sweep") {
            return Err(LorsError::invalid(
                "sweep",
                "this profile defines a sweep; run it with `lors sweep --profile FILE`",
            ));
        }
        for o in overrides {
            o.apply(&mut value)?;
        }
        // toml puts the key on a line of its own (`expected usize\nin `adapter.rank``): one
        // line reads better in the workbench and the terminal.
        let profile: Profile = value.try_into().map_err(|e: toml::de::Error| {
            LorsError::parse(
                Path::new("profile"),
                e.to_string().trim().replace('\n', " "),
            )
        })?;
        profile.validate()?;
        Ok(profile)
    }

    /// The method with the zoo options that change it, e.g. `lors-exact+sora+rite`: what
    /// the Runs view and reports show to tell runs apart.
    pub fn method_label(&self) -> String {
        let a = &self.adapter;
        let mut label = a.method.to_string();
        let tags = [
            (a.init == Init::Orthogonal).then(|| "orthinit".to_string()),
            (a.init == Init::Olora).then(|| "olora".to_string()),
            (a.frozen_blocks > 0).then(|| format!("f{}", a.frozen_blocks)),
            (a.orth_reg > 0.0).then(|| "orth".to_string()),
            (a.rank_keep > 0).then(|| format!("k{}", a.rank_keep)),
            a.sora.then(|| "sora".to_string()),
            a.flat.then(|| "flat".to_string()),
            (a.boost_every > 0).then(|| format!("xgb{}", a.boost_every)),
            (self.optim.name == OptimizerName::LoraRite).then(|| "rite".to_string()),
        ];
        for tag in tags.into_iter().flatten() {
            label.push('+');
            label.push_str(&tag);
        }
        label
    }

    /// The profile as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("profiles serialize")
    }

    /// Check values; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, r: String| Err(LorsError::invalid(k, r));
        if self.data.seq_len < 2 {
            return bad(
                "data.seq_len",
                format!("{} must be at least 2", self.data.seq_len),
            );
        }
        if !(0.0..1.0).contains(&self.data.valid_fraction) {
            return bad(
                "data.valid_fraction",
                format!("{} must be in [0, 1)", self.data.valid_fraction),
            );
        }
        if let Some(p) = &self.prune {
            p.validate()?;
        }
        validate_adapter(&self.adapter)?;
        self.optim.validate()?;
        if self.optim.name == OptimizerName::LoraRite && self.adapter.method == Method::Spp {
            return bad("optim.name", format!("lora-rite {NEEDS_A_PAIR}"));
        }
        check_compute(self.model.dtype, self.train.device, "model.dtype")?;
        validate_train(&self.train)?;
        if let Some(e) = &self.eval {
            e.validate()?;
        }
        Ok(())
    }

    /// An error unless `ranks` data-parallel processes can share each step: every rank
    /// computes the same number of its micro-batches (`train.grad_accum`).
    pub fn check_ranks(&self, ranks: usize) -> Result<()> {
        let accum = self.train.grad_accum;
        if accum.is_multiple_of(ranks) {
            return Ok(());
        }
        Err(LorsError::invalid(
            "train.grad_accum",
            format!(
                "{accum} micro-batches per step do not split over {ranks} ranks: make it a \
                 multiple of the number of ranks (the global batch is batch_size × grad_accum)"
            ),
        ))
    }

    /// Make relative paths absolute (against `base`), so the recorded profile replays anywhere.
    pub fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        // A model or data path that is not there but reads as a hub id stays as written.
        let abs_or_hub = |p: &mut PathBuf, dataset: bool| {
            let hub = !base.join(&*p).exists()
                && p.to_str()
                    .and_then(crate::sources::HubRef::parse)
                    .is_some_and(|r| r.dataset == dataset);
            if !hub {
                abs(p);
            }
        };
        abs_or_hub(&mut self.model.path, false);
        abs_or_hub(&mut self.data.train, true);
        if let Some(v) = self.data.valid.as_mut() {
            abs_or_hub(v, true);
        }
        if let Some(v) = self.data.shard_dir.as_mut() {
            abs(v);
        }
        if let Some(v) = self.adapter.init_from.as_mut() {
            abs(v);
        }
        if let Some(v) = self.prune.as_mut().and_then(|p| p.calib.as_mut()) {
            abs_or_hub(v, true);
        }
        abs(&mut self.train.output_dir);
        if let Some(e) = self.eval.as_mut() {
            e.resolve_paths(base);
        }
    }
}

/// The adapter settings' ranges, and the method/init pairs that exist.
fn validate_adapter(a: &AdapterSection) -> Result<()> {
    let bad = |k: &str, r: String| Err(LorsError::invalid(k, r));
    if a.rank == 0 {
        return bad("adapter.rank", "must be at least 1".into());
    }
    if !(a.alpha.is_finite() && a.alpha > 0.0) {
        return bad("adapter.alpha", format!("{} must be positive", a.alpha));
    }
    if a.init == Init::Gradient && a.init_samples == 0 {
        return bad("adapter.init_samples", "must be at least 1".into());
    }
    if matches!(a.init, Init::Gradient | Init::Orthogonal | Init::Olora) && a.method == Method::Spp
    {
        return bad(
            "adapter.init",
            format!("{} init is not defined for spp", a.init.name()),
        );
    }
    if a.boost_every > 0 && (a.method == Method::Lora || a.init == Init::Olora) {
        let why = match a.method {
            Method::Lora => "folds each round through the mask; lora is unmasked",
            _ => "restarts each round from B = 0; olora starts from its own QR pair",
        };
        return bad("adapter.boost_every", why.into());
    }
    if a.init == Init::Olora && a.init_from.is_some() {
        return bad(
            "adapter.init_from",
            "starts from a file, while init = \"olora\" subtracts its own QR start".into(),
        );
    }
    if a.init == Init::Orthogonal && !a.rank.is_multiple_of(2) {
        return bad(
            "adapter.rank",
            format!("{} is odd; orthogonal init needs an even rank", a.rank),
        );
    }
    if !(a.stable_gamma.is_finite() && a.stable_gamma > 0.0) {
        return bad(
            "adapter.stable_gamma",
            format!("{} must be positive", a.stable_gamma),
        );
    }
    if !(a.orth_reg.is_finite() && a.orth_reg >= 0.0) {
        return bad("adapter.orth_reg", format!("{} must be ≥ 0", a.orth_reg));
    }
    if !(a.flat_rho.is_finite() && a.flat_rho >= 0.0) {
        return bad("adapter.flat_rho", format!("{} must be ≥ 0", a.flat_rho));
    }
    if !(a.sora_threshold.is_finite() && a.sora_threshold >= 0.0) {
        let value = a.sora_threshold;
        return bad("adapter.sora_threshold", format!("{value} must be ≥ 0"));
    }
    if a.method == Method::Spp {
        let pair_options = [
            ("adapter.orth_reg", a.orth_reg > 0.0),
            ("adapter.rank_keep", a.rank_keep > 0),
            ("adapter.sora", a.sora),
            ("adapter.flat", a.flat),
            ("adapter.boost_every", a.boost_every > 0),
        ];
        if let Some((key, _)) = pair_options.into_iter().find(|(_, on)| *on) {
            return bad(key, NEEDS_A_PAIR.into());
        }
    }
    Ok(())
}

/// Why an option on the low-rank pair does not apply to `spp`.
const NEEDS_A_PAIR: &str = "works on a low-rank pair A, B, which spp does not have";

/// Steps, batches and the run name.
fn validate_train(t: &TrainSection) -> Result<()> {
    let bad = |k: &str, r: String| Err(LorsError::invalid(k, r));
    match (t.max_steps, t.epochs) {
        (None, None) => return bad("train.max_steps", "give max_steps or epochs".into()),
        (Some(_), Some(_)) => {
            return bad(
                "train.max_steps",
                "give max_steps or epochs, not both".into(),
            )
        }
        (Some(0), _) | (_, Some(0)) => return bad("train.max_steps", "must be at least 1".into()),
        _ => {}
    }
    if t.batch_size == 0 {
        return bad("train.batch_size", "must be at least 1".into());
    }
    if t.grad_accum == 0 {
        return bad("train.grad_accum", "must be at least 1".into());
    }
    if let Some(name) = &t.run_name {
        crate::io::check_plain_name(name, "train.run_name")?;
    }
    Ok(())
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
