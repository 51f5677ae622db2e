//! `lors generate`, `lors merge` and `lors export`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use lors::gguf::export::{export_gguf, GgufType};
use lors::io::{check_output_dir, check_output_file};
use lors::model::{
    export_merged, generate_greedy, merged_tensors, CausalLm, ModelDir, WeightSource,
};
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

#[derive(Args)]
pub struct ExportArgs {
    /// A run directory (its adapter merged, as `lors merge` does) or a model directory (a
    /// merged export, a pruned model).
    #[arg(long)]
    pub from: PathBuf,
    /// The GGUF file to write (llama.cpp's layout; Llama-family models).
    #[arg(long)]
    pub gguf: PathBuf,
    /// Tensor type of the 2-D weights: f32, f16, bf16, q8_0 or q4_0 (the types whose
    /// zeros stay exact; norms are F32).
    #[arg(long = "type", default_value = "f16", value_parser = clap::value_parser!(GgufType))]
    pub tensor_type: GgufType,
    /// With a run: the checkpoint to merge (default: the run's latest).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Replace `--gguf` if it exists.
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
        None => run.merged_path(),
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

/// The weights, config and tokenizer folder of an export's input: a run's merged model, or a
/// model directory's own weights.
fn export_input(
    from: &Path,
    checkpoint: Option<&Path>,
) -> Result<(HashMap<String, candle_core::Tensor>, ModelDir)> {
    if let Ok(run) = RunDir::open(from) {
        let trained = load_trained(&run, checkpoint)?;
        // The merge itself refuses a masked method's update that would change the zeros.
        let (tensors, _) = merged_tensors(&trained.model, &trained.base)?;
        return Ok((tensors, trained.base));
    }
    if checkpoint.is_some() {
        anyhow::bail!(
            "{}: --checkpoint needs a run directory (this has no profile.toml)",
            from.display()
        );
    }
    let dir = ModelDir::open(from)?;
    let weights = dir.weights()?;
    let tensors = weights
        .names()
        .into_iter()
        .map(|n| {
            let t = weights.tensor(&n)?;
            Ok((n, t))
        })
        .collect::<lors::Result<_>>()?;
    Ok((tensors, dir))
}

pub fn export(args: ExportArgs) -> Result<()> {
    let out = check_output_file(&args.gguf, args.force, &[("input", &args.from)])?;
    let (tensors, dir) = export_input(&args.from, args.checkpoint.as_deref())?;
    let r = export_gguf(
        &dir.config,
        &tensors,
        &dir.path,
        &args.from,
        &out,
        args.tensor_type,
    )
    .with_context(|| format!("exporting {} as GGUF", args.from.display()))?;
    println!(
        "{} -> {}: {} tensors ({}), {} tokenizer; {} zero weights, all read back as zero; \
         {} kept weights rounded to zero by {}; {} -0.0 written as +0.0; {} nudged",
        args.from.display(),
        out.display(),
        r.tensor_types.values().sum::<usize>(),
        super::type_counts(&r.tensor_types),
        r.tokenizer,
        r.zeros,
        r.kept_rounded_to_zero,
        r.tensor_type,
        r.negative_zeros_cleared,
        r.nudged,
    );
    Ok(())
}
