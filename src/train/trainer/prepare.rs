//! Preparing a run: the profile's model with its adapters and its data, the trainable
//! tensors under their checkpoint names, a fresh optimiser; and loading a trained run back.

use std::path::{Path, PathBuf};

use candle_core::Var;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::shards::{self, Origin, Shard, ShardRequest};
use crate::data::{Batcher, Blocks, HoldOut, TextTokenizer};
use crate::error::{LorsError, Result};
use crate::model::{AdapterSpec, CausalLm, ModelDir};
use crate::train::optim::Optimizer;
use crate::train::profile::Profile;
use crate::train::run_dir::RunDir;
use crate::train::{boost, checkpoint, peft};

/// The model and data of a profile, ready to train.
pub struct Prepared {
    pub model_dir: ModelDir,
    pub model: CausalLm,
    pub tokenizer: TextTokenizer,
    pub train: Batcher,
    /// Validation blocks (none: no evaluation).
    pub valid: Option<Blocks>,
    /// Where the data's blocks came from, one line per shard (built, or reused).
    pub data_notes: Vec<String>,
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
pub(super) fn load_with(
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
    let data = data_shards(profile, &tokenizer)?;
    let data_notes = data.notes();
    let valid = match data.valid {
        Some(v) => Some(v.train),
        None => data.train.valid,
    };
    let train = Batcher::new(
        data.train.train,
        profile.train.batch_size,
        profile.train.seed,
    )?;
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
        data_notes,
    })
}

/// The token shards of a profile's data.
pub struct DataShards {
    /// The training file's (with its held-out part when the profile names no validation file).
    pub train: Shard,
    /// The validation file's.
    pub valid: Option<Shard>,
}

impl DataShards {
    /// Where each shard came from, a line each (see [`shard_note`]).
    pub fn notes(&self) -> Vec<String> {
        [Some(&self.train), self.valid.as_ref()]
            .into_iter()
            .flatten()
            .map(shard_note)
            .collect()
    }
}

/// The profile's data as token shards, built where missing (what a run does first; `lors
/// data prepare` does only this).
pub fn data_shards(profile: &Profile, tokenizer: &TextTokenizer) -> Result<DataShards> {
    let d = &profile.data;
    let shard_dir = d.shard_dir();
    let request = |data, hold_out| ShardRequest {
        data,
        tokenizer,
        opts: d.block_options(),
        hold_out,
        shard_dir: &shard_dir,
    };
    let hold_out = (d.valid.is_none() && d.valid_fraction > 0.0).then_some(HoldOut {
        fraction: d.valid_fraction,
        seed: profile.train.seed,
    });
    let train = shards::open_or_build(&request(&d.train, hold_out))?;
    let valid = d
        .valid
        .as_ref()
        .map(|v| shards::open_or_build(&request(v, None)))
        .transpose()?;
    Ok(DataShards { train, valid })
}

/// `data: 400 records, 43417 tokens, tokenised in 0.4 s into <dir>` (or reused).
fn shard_note(s: &Shard) -> String {
    let how = match &s.origin {
        Origin::Built { seconds } => format!("tokenised in {seconds:.1} s into"),
        Origin::Rebuilt { seconds, damage } => {
            format!("tokenised again in {seconds:.1} s ({damage}) into")
        }
        Origin::Reused { build_seconds } => {
            format!("reused (tokenising took {build_seconds:.1} s):")
        }
    };
    let skipped = match s.skipped {
        0 => String::new(),
        n => format!(" ({n} bad records skipped)"),
    };
    format!(
        "data: {} records{skipped}, {} tokens, {how} {}",
        s.records,
        s.tokens,
        s.dir.display()
    )
}

pub(super) fn total_steps(profile: &Profile, train: &Batcher) -> usize {
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
pub(super) fn trainable(model: &CausalLm) -> (Named, Named) {
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
pub(super) fn fresh_optimizer(profile: &Profile, model: &CausalLm) -> Result<Optimizer> {
    let threshold = profile.adapter.sora_threshold;
    let (pairs, gates) = trainable(model);
    Optimizer::new(pairs, gates, &profile.optim, threshold)
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
