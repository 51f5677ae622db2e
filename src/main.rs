//! The `lors` command line.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

mod cli;

use lors::bench::layer::{self, LayerBenchConfig};
use lors::device::{check_compute, ComputeDtype, DeviceSpec};
use lors::sparsity::Layout;

#[derive(Parser)]
#[command(
    name = "lors",
    version,
    about = "Fine-tune sparse LLMs with LoRS, keeping them exactly as sparse",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand, `lors` opens the workbench with these options.
    #[command(flatten)]
    tui: TuiArgs,
}

#[derive(Subcommand)]
enum Command {
    /// The interactive workbench (also what `lors` alone opens).
    Tui(TuiArgs),
    /// Train headless from a profile (or resume a run).
    Train(cli::train::TrainArgs),
    /// Run a profile's `[sweep]`: trials as detached runs, early stopping, a final table.
    Sweep(cli::sweep::SweepArgs),
    /// A Markdown table and SVG charts of runs and sweeps, to share.
    Report(cli::report::ReportArgs),
    /// Re-run a run from its recorded profile and check that its metrics match.
    Replay(cli::train::ReplayArgs),
    /// Perplexity (a data file, WikiText-2) and zero-shot task accuracy of a model or a run.
    Eval(cli::eval::EvalArgs),
    /// Greedy text generation.
    Generate(cli::model::GenerateArgs),
    /// Prune a model (magnitude, Wanda, SparseGPT; unstructured or N:M).
    Prune(cli::prune::PruneArgs),
    /// Show a model's architecture and the sparsity of each layer.
    Inspect(cli::prune::InspectArgs),
    /// Export a run's merged model as a Hugging Face directory.
    Merge(cli::model::MergeArgs),
    /// Export a run's merged model (or a model directory) as a GGUF file llama.cpp runs,
    /// every pruned weight still zero.
    Export(cli::model::ExportArgs),
    /// Download a hub model or data file into the Hugging Face cache (resumable).
    Fetch(cli::source::FetchArgs),
    /// Convert a GGUF file into a Hugging Face directory.
    Convert(cli::source::ConvertArgs),
    /// Token shards: a profile's data tokenised once for its runs.
    #[command(subcommand)]
    Data(cli::data::DataCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Write a random Llama checkpoint (for benchmarks), optionally pruned by magnitude.
    RandomModel(cli::bench::RandomModelArgs),
}

#[derive(Args)]
struct TuiArgs {
    /// Runs folder to watch and launch into.
    #[arg(long, default_value = "runs")]
    runs_dir: std::path::PathBuf,
    /// Profile the Setup view starts from (default: the bundled demo profile).
    #[arg(long)]
    profile: Option<std::path::PathBuf>,
    /// Folder of saved profiles (the Profiles view).
    #[arg(long, default_value = "profiles")]
    profiles_dir: std::path::PathBuf,
    /// Folder of models and data offered in Setup beside the search paths (default: the
    /// bundled demo model and data).
    #[arg(long)]
    assets_dir: Option<std::path::PathBuf>,
    /// More folders to look for models and data files in (repeatable; also
    /// `LORS_SEARCH_PATH`, colon-separated).
    #[arg(long = "search", value_name = "DIR")]
    search: Vec<std::path::PathBuf>,
    /// Write redraw statistics (draws, seconds) to this JSON file on exit.
    #[arg(long, value_name = "FILE")]
    stats: Option<std::path::PathBuf>,
}

fn tui(args: TuiArgs) -> Result<()> {
    let mut extra = args.search;
    if let Some(paths) = std::env::var_os("LORS_SEARCH_PATH") {
        extra.extend(std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()));
    }
    let bundled = cli::bundled_default()?;
    lors::tui::run(&lors::tui::TuiOptions {
        search: lors::tui::catalog::SearchPaths {
            assets: args.assets_dir.unwrap_or(bundled.assets),
            runs: args.runs_dir.clone(),
            extra,
            hf_cache: Some(lors::sources::hub::cache_dir()).filter(|d| d.is_dir()),
        },
        runs_dir: args.runs_dir,
        profile: args.profile.unwrap_or(bundled.profile),
        profiles_dir: args.profiles_dir,
        stats: args.stats,
    })?;
    Ok(())
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Every method on one random sparse layer: forward+backward time, bytes kept between
    /// forward and backward, peak bytes, each also as a ratio to lora.
    Layer(LayerArgs),
    /// The same short training with each method: tokens/s and peak memory, as ratios to lora.
    Train(cli::bench::TrainBenchArgs),
}

#[derive(Args)]
struct LayerArgs {
    /// Input features.
    #[arg(long = "in", default_value_t = 2048)]
    in_features: usize,
    /// Output features.
    #[arg(long = "out", default_value_t = 2048)]
    out_features: usize,
    /// Tokens in the batch (rows of x).
    #[arg(long, default_value_t = 2048)]
    tokens: usize,
    /// Adapter rank.
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Fraction of weights kept (unstructured pattern only).
    #[arg(long, default_value_t = 0.5)]
    density: f64,
    /// `unstructured` or N:M such as `2:4`.
    #[arg(long, default_value_t = Layout::Unstructured)]
    pattern: Layout,
    /// f32, f16 or f64 on the CPU; bf16 or f32 on CUDA.
    #[arg(long, default_value = "f32")]
    dtype: ComputeDtype,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// First compare every method on the device with an f64 CPU reference (small layer).
    #[arg(long)]
    verify: bool,
    /// Worker threads for the matmuls (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Measured runs per method (after one warm-up round).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seed of the random layer and adapters.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn bench_layer(args: LayerArgs) -> Result<()> {
    let pattern = args.pattern.with_sparsity(1.0 - args.density)?;
    check_compute(args.dtype, args.device, "--dtype")?;
    let device = args.device.open()?;
    let config = LayerBenchConfig {
        in_features: args.in_features,
        out_features: args.out_features,
        tokens: args.tokens,
        rank: args.rank,
        pattern: args.pattern,
        density: pattern.density(),
        dtype: args.dtype,
        device: args.device,
        memory: if device.is_cpu() { "heap" } else { "gpu pool" }.into(),
        runs: args.runs,
        threads: candle_core::utils::get_num_threads(),
        seed: args.seed,
    };
    let report = layer::run(&config, pattern, args.dtype.dtype(), &device, args.verify)
        .context("layer benchmark failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", layer::render_table(&report));
    }
    Ok(())
}

/// Errors are for the user to read: anyhow's message and causes, never a backtrace (which
/// `RUST_BACKTRACE=1`, common in a Rust developer's shell, would add to a typo in a profile;
/// anyhow reads `RUST_LIB_BACKTRACE` first, and panics keep theirs).
fn main() -> Result<()> {
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Train(args)) => cli::train::train(args),
        Some(Command::Sweep(args)) => cli::sweep::run(args),
        Some(Command::Report(args)) => cli::report::run(args),
        Some(Command::Replay(args)) => cli::train::replay(args),
        Some(Command::Eval(args)) => cli::eval::eval(args),
        Some(Command::Generate(args)) => cli::model::generate(args),
        Some(Command::Merge(args)) => cli::model::merge(args),
        Some(Command::Export(args)) => cli::model::export(args),
        Some(Command::Fetch(args)) => cli::source::fetch(args),
        Some(Command::Data(command)) => cli::data::run(command),
        Some(Command::Convert(args)) => cli::source::convert(args),
        Some(Command::Prune(args)) => cli::prune::prune(args),
        Some(Command::Inspect(args)) => cli::prune::inspect(args),
        Some(Command::Bench(BenchCommand::Train(args))) => cli::bench::train(args),
        Some(Command::RandomModel(args)) => cli::bench::random_model(args),
        Some(Command::Bench(BenchCommand::Layer(args))) => {
            if let Some(n) = args.threads {
                // Read by rayon and candle when their thread pools start, which is later.
                std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            }
            bench_layer(args)
        }
        Some(Command::Tui(args)) => tui(args),
        None => tui(cli.tui),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The workbench's options work with and without `tui`, and do not mix with another
    /// subcommand.
    #[test]
    fn workbench_options_work_without_the_tui_subcommand() {
        let cli = Cli::try_parse_from(["lors", "--search", "/data", "--runs-dir", "r"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.tui.search, vec![PathBuf::from("/data")]);
        assert_eq!(cli.tui.runs_dir, PathBuf::from("r"));
        let cli = Cli::try_parse_from(["lors", "tui", "--search", "/data"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Tui(a)) if a.search == [PathBuf::from("/data")])
        );
        assert!(
            Cli::try_parse_from(["lors", "--search", "/d", "train", "--profile", "p"]).is_err()
        );
        let plain = Cli::try_parse_from(["lors"]).unwrap();
        assert_eq!(plain.tui.profile, None, "the bundled default");
        assert_eq!(plain.tui.runs_dir, PathBuf::from("runs"));
    }
}
