//! `lors prune` and `lors inspect`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use lors::eval::perplexity_of_file;
use lors::io::check_output_dir;
use lors::model::{inspect_model, CausalLm, ModelDir};
use lors::prune::{prune_to_dir, PruneSettings};
use lors::sparsity::Layout;

#[derive(Args)]
pub struct PruneArgs {
    /// Dense (or less sparse) model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// magnitude, wanda or sparsegpt.
    #[arg(long, default_value = "wanda")]
    pub method: String,
    /// Unstructured sparsity in (0, 1) (ignored with --pattern N:M).
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
    /// `unstructured` or N:M such as `2:4`.
    #[arg(long, default_value_t = Layout::Unstructured)]
    pub pattern: Layout,
    /// Calibration data (JSONL/JSON records or plain text); not needed for magnitude.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub nsamples: usize,
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists and is not empty (never when it is or holds an input).
    #[arg(long)]
    pub force: bool,
    /// Print perplexity on this file before and after pruning.
    #[arg(long)]
    pub eval: Option<PathBuf>,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
}

pub fn prune(args: PruneArgs) -> Result<()> {
    let settings = PruneSettings {
        method: args.method.parse()?,
        pattern: args.pattern,
        sparsity: args.sparsity,
        calib: args.calib.clone(),
        nsamples: args.nsamples,
        seq_len: args.seq_len,
        seed: args.seed,
    };
    let dir = ModelDir::open(&args.model)?;
    let mut inputs = vec![("model to prune", dir.path.as_path())];
    inputs.extend(args.calib.as_deref().map(|c| ("calibration data", c)));
    let out = check_output_dir(&args.out, args.force, &inputs)?;
    let evaluate_on = |model_dir: &ModelDir, label: &str| -> Result<()> {
        if let Some(path) = &args.eval {
            let seq_len = 256.min(model_dir.config.max_position_embeddings);
            let model = CausalLm::load_frozen(model_dir)?;
            let r = perplexity_of_file(&model, &model_dir.tokenizer()?, path, seq_len, 8, None)?;
            println!(
                "{label}: perplexity {:.4} on {}",
                r.perplexity,
                path.display()
            );
        }
        Ok(())
    };
    evaluate_on(&dir, "before")?;
    let report = prune_to_dir(&args.model, &settings, &out, &mut |done, total| {
        eprintln!("pruned decoder layer {done}/{total}")
    })
    .with_context(|| format!("pruning {} failed", args.model.display()))?;
    println!(
        "{} {}: density {:.4} over {} layers in {:.2} s -> {}",
        report.method,
        report.pattern,
        report.density,
        report.layers.len(),
        report.seconds,
        args.out.display()
    );
    evaluate_on(&ModelDir::open(&args.out)?, "after")
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let dir = ModelDir::open(&args.model)?;
    let m = inspect_model(&dir)?;
    let c = &m.config;
    println!(
        "{}: {:?}, {:.1}M parameters, hidden {}, {} layers, {} heads ({} kv), vocab {}, stored {}",
        args.model.display(),
        c.architecture,
        m.parameters as f64 / 1e6,
        c.hidden_size,
        c.num_layers,
        c.num_heads,
        c.num_kv_heads,
        c.vocab_size,
        m.dtype
    );
    for l in &m.layers {
        let nm = l
            .n_of_m
            .map(|(n, m)| format!("  {n}:{m}"))
            .unwrap_or_default();
        println!("  {:<40} density {:.4}{nm}", l.name, l.density);
    }
    println!("overall: {}", m.pattern());
    Ok(())
}
