//! `lors report`: a Markdown table and SVG charts of runs and sweeps, to share.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct ReportArgs {
    /// Run or sweep directories.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Folder for `report.md` and its charts (created; files of the same names are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Weight of the past in the training curves' moving average (0: raw curves).
    #[arg(long, default_value_t = 0.6)]
    pub smoothing: f64,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let files = lors::report::write_report(&args.inputs, &args.out, args.smoothing)
        .with_context(|| format!("writing the report into {}", args.out.display()))?;
    println!("report {}", files.markdown.display());
    for chart in files.charts {
        println!("chart  {}", chart.display());
    }
    Ok(())
}
