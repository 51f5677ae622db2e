//! `lors eval`, `lors generate` and `lors merge`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::DType;
use clap::Args;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use lors::data::{load_blocks, BlockOptions, DataFormat, TextTokenizer};
use lors::model::{export_merged, generate_greedy, CausalLm, ModelDir};
use lors::train::{checkpoint, eval::evaluate, prepare, Profile, RunDir};

#[derive(Args)]
pub struct EvalArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Data file (JSONL/JSON records or plain text).
    #[arg(long)]
    pub data: PathBuf,
    /// Window length in tokens.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Evaluate only the first N windows.
    #[arg(long)]
    pub max_windows: Option<usize>,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt text (default: start from BOS alone).
    #[arg(long, default_value = "")]
    pub prompt: String,
    #[arg(long, default_value_t = 60)]
    pub max_new_tokens: usize,
}

#[derive(Args)]
pub struct MergeArgs {
    /// Run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Checkpoint directory (default: the run's latest).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Output directory (default: <run>/merged).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn load_plain(dir: &ModelDir) -> Result<CausalLm> {
    Ok(CausalLm::from_source(
        &dir.config,
        &dir.weights()?,
        DType::F32,
        None,
        &mut ChaCha8Rng::seed_from_u64(0),
    )?)
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let dir = ModelDir::open(&args.model)?;
    let model = load_plain(&dir)?;
    let tok = TextTokenizer::from_file(
        &dir.tokenizer_path(),
        dir.config.eos_token_ids.first().copied(),
    )?;
    let opts = BlockOptions {
        format: DataFormat::Auto,
        seq_len: args.seq_len,
        pack: Some(true),
        train_on_prompt: true,
        skip_bad: false,
    };
    let data = load_blocks(&args.data, &tok, &opts)?;
    let r = evaluate(&model, &data.blocks, args.batch_size, args.max_windows)?;
    println!(
        "{}: perplexity {:.4} (loss {:.4}) over {} windows of {} tokens ({} predictions)",
        args.data.display(),
        r.perplexity,
        r.loss,
        r.windows,
        args.seq_len,
        r.tokens
    );
    Ok(())
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let dir = ModelDir::open(&args.model)?;
    let model = load_plain(&dir)?;
    let tok = TextTokenizer::from_file(&dir.tokenizer_path(), None)?;
    let mut prompt = tok.encode(&args.prompt, true)?;
    if prompt.is_empty() {
        prompt = dir.config.bos_token_id.into_iter().collect();
    }
    if prompt.is_empty() {
        anyhow::bail!("empty prompt and the model has no bos_token_id");
    }
    let out = generate_greedy(&model, &prompt, args.max_new_tokens)?;
    println!("{}{}", args.prompt, tok.decode(&out)?);
    Ok(())
}

pub fn merge(args: MergeArgs) -> Result<()> {
    let run = RunDir::open(&args.run)?;
    let profile = Profile::load(&run.profile_path(), &[])?;
    let ckpt = match args.checkpoint {
        Some(c) => c,
        None => run
            .latest_checkpoint()
            .with_context(|| format!("{} has no checkpoint yet", args.run.display()))?,
    };
    let prepared = prepare(&profile)?;
    checkpoint::load_adapter(&ckpt.join("adapter_model.safetensors"), &prepared.model)?;
    let out = args.out.unwrap_or_else(|| run.path.join("merged"));
    let report = export_merged(&prepared.model, &prepared.model_dir, &out)?;
    println!(
        "merged {} ({}) into {}: density {:.4} -> {:.4} over {} adapted layers, zero pattern {}",
        ckpt.display(),
        report.method,
        out.display(),
        report.density_before,
        report.density_after,
        report.layers.len(),
        if report.pattern_preserved {
            "identical"
        } else {
            "CHANGED"
        }
    );
    Ok(())
}
