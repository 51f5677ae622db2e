//! `lors data prepare`: tokenise a profile's data into token shards ahead of its runs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use lors::model::ModelDir;
use lors::train::{Override, Profile};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Tokenise a profile's data once into token shards (`data.shard_dir`, default
    /// ~/.cache/lors/shards) that its runs, sweep trials and ranks then memory-map; a run
    /// does this itself on first use.
    Prepare(PrepareArgs),
}

#[derive(Args)]
pub struct PrepareArgs {
    /// Profile (TOML) whose data to prepare (default: the bundled demo profile).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Override a profile value, e.g. `--set data.seq_len=512` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<Override>,
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Prepare(args) => prepare(args),
    }
}

fn prepare(args: PrepareArgs) -> Result<()> {
    let path = match args.profile {
        Some(p) => p,
        None => super::bundled_default()?.profile,
    };
    let mut profile = Profile::load(&path, &args.overrides)?;
    super::source::resolve_and_fetch(&mut profile)?;
    let tokenizer = ModelDir::open(&profile.model.path)?.tokenizer()?;
    let shards = lors::train::data_shards(&profile, &tokenizer)
        .with_context(|| format!("cannot prepare the data of {}", path.display()))?;
    for note in shards.notes() {
        println!("{note}");
    }
    let blocks = |s: &lors::data::shards::Shard| s.train.len();
    let valid = match (&shards.valid, &shards.train.valid) {
        (Some(v), _) => blocks(v),
        (None, Some(held)) => held.len(),
        (None, None) => 0,
    };
    println!(
        "{} training and {valid} validation sequences of {} tokens",
        blocks(&shards.train),
        profile.data.seq_len
    );
    Ok(())
}
