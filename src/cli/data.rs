//! `lors data prepare` (tokenise a profile's data into token shards ahead of its runs) and
//! `lors data clean` (remove the shards no run can ask for any more).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use lors::data::shards;
use lors::model::ModelDir;
use lors::train::{Override, Profile};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Tokenise a profile's data once into token shards (`data.shard_dir`, default
    /// ~/.cache/lors/shards) that its runs, sweep trials and ranks then memory-map; a run
    /// does this itself on first use.
    Prepare(PrepareArgs),
    /// Remove stale token shards: those whose data file is gone or has changed since, and
    /// builds that did not finish.
    Clean(CleanArgs),
}

#[derive(Args)]
pub struct CleanArgs {
    /// The shards folder (default: ~/.cache/lors/shards; a profile's `data.shard_dir`).
    #[arg(long)]
    pub shard_dir: Option<PathBuf>,
    /// List what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
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
        DataCommand::Clean(args) => clean(args),
    }
}

fn clean(args: CleanArgs) -> Result<()> {
    let dir = args.shard_dir.unwrap_or_else(shards::default_shard_dir);
    let stale = shards::stale_shards(&dir)?;
    let mut freed = 0;
    for shard in &stale {
        if !args.dry_run {
            shards::remove(shard)?;
        }
        freed += shard.bytes;
        println!(
            "{} ({}): {}",
            shard.dir.display(),
            human(shard.bytes),
            shard.why
        );
    }
    let verb = if args.dry_run { "would free" } else { "freed" };
    println!(
        "{} stale shards in {}, {verb} {}",
        stale.len(),
        dir.display(),
        human(freed)
    );
    Ok(())
}

fn human(bytes: u64) -> String {
    lors::memory::human_bytes(bytes as f64)
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
    let blocks = |s: &shards::Shard| s.train.len();
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
