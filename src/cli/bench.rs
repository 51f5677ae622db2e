//! `lors bench train` and `lors random-model`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use lors::adapters::Method;
use lors::bench::train as bench_train;
use lors::device::ComputeDtype;
use lors::model::random::{random_weights, small_config, write_checkpoint};
use lors::sparsity::Layout;
use lors::train::{Override, Profile, RunsFolder};

#[derive(Args)]
pub struct TrainBenchArgs {
    /// Profile of the training to benchmark.
    #[arg(long)]
    pub profile: PathBuf,
    /// Override a profile value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<Override>,
    /// Measured steps per method.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Unmeasured steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Methods, comma-separated.
    #[arg(
        long,
        default_value = "lors,lors-exact,sqft,spp,lora",
        value_delimiter = ','
    )]
    pub methods: Vec<Method>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RandomModelArgs {
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists and is not empty.
    #[arg(long)]
    pub force: bool,
    #[arg(long, default_value_t = 1024)]
    pub hidden: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 16)]
    pub heads: usize,
    #[arg(long, default_value_t = 16)]
    pub kv_heads: usize,
    #[arg(long, default_value_t = 2816)]
    pub intermediate: usize,
    /// `unstructured` (50%) or N:M such as `2:4`; `none` keeps the model dense.
    #[arg(long, default_value = "unstructured")]
    pub prune: String,
    /// `max_position_embeddings` written to config.json.
    #[arg(long, default_value_t = 1024)]
    pub max_positions: usize,
    /// Vocabulary size (default: the byte tokenizer's 259; larger ones give Llama-3-sized
    /// embeddings and heads, with the byte tokenizer still writing ids below 259).
    #[arg(long)]
    pub vocab: Option<usize>,
    /// Storage dtype of the weights: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: ComputeDtype,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn train(args: TrainBenchArgs) -> Result<()> {
    let mut profile = Profile::load(&args.profile, &args.overrides)?;
    profile.resolve_paths(&std::env::current_dir()?);
    let methods = args.methods;
    let out = RunsFolder::new(&profile.train.output_dir).fresh(&format!(
        "bench-train-{}",
        lors::train::run_dir::local_stamp()
    ));
    let results = bench_train::run(
        &profile,
        &methods,
        args.steps,
        args.warmup,
        &out,
        &mut |m| eprintln!("benchmarking {m} ({} + {} steps)", args.warmup, args.steps),
    )
    .context("training benchmark failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!(
            "{} steps per method after {} warm-up, batch {} x {} tokens (runs in {})",
            args.steps,
            args.warmup,
            profile.train.batch_size,
            profile.data.seq_len,
            out.display()
        );
        print!("{}", bench_train::render_table(&results));
    }
    Ok(())
}

pub fn random_model(args: RandomModelArgs) -> Result<()> {
    let prune = match args.prune.as_str() {
        "none" => None,
        other => Some(other.parse::<Layout>()?.with_sparsity(0.5)?),
    };
    let mut config = small_config(
        args.hidden,
        args.layers,
        args.heads,
        args.kv_heads,
        args.intermediate,
    );
    config.max_position_embeddings = Some(args.max_positions);
    if let Some(vocab) = args.vocab {
        anyhow::ensure!(
            vocab >= config.vocab_size,
            "--vocab {vocab} is smaller than the byte tokenizer's {}",
            config.vocab_size
        );
        config.vocab_size = vocab;
    }
    let dtype = args.dtype.dtype();
    config.torch_dtype = Some(lors::io::storage_dtype_name(dtype, "random-model")?.into());
    let weights = random_weights(&config, args.seed, prune)?
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(dtype)?)))
        .collect::<lors::Result<_>>()?;
    let out = lors::io::check_output_dir(&args.out, args.force, &[])?;
    write_checkpoint(&out, &config, &weights)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
