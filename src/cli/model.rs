//! `lors generate` and `lors merge`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use lors::io::check_output_dir;
use lors::model::{export_merged, generate_greedy, CausalLm, ModelDir};
use lors::train::{load_trained, RunDir};

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
    /// Output directory (default: <run>/merged, replaced if it exists).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace `--out` if it exists and is not empty (never when it is or holds an input).
    #[arg(long)]
    pub force: bool,
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let dir = ModelDir::open(&args.model)?;
    let model = CausalLm::load_frozen(&dir)?;
    let tok = dir.tokenizer()?;
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
    let trained = load_trained(&run, args.checkpoint.as_deref())?;
    let (model, model_dir, ckpt) = (&trained.model, &trained.base, &trained.checkpoint);
    let out = match &args.out {
        Some(out) => check_output_dir(
            out,
            args.force,
            &[
                ("run directory", &run.path),
                ("base model", &model_dir.path),
            ],
        )?,
        None => run.path.join("merged"),
    };
    let report = export_merged(model, model_dir, &out)?;
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
