//! `lors fetch` (hub models and data files into the Hugging Face cache, with progress) and
//! `lors convert` (GGUF files into Hugging Face directories).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use lors::device::ComputeDtype;
use lors::io::check_output_dir;
use lors::sources::hub::Download;
use lors::sources::{convert_gguf, fetch_file, fetch_model, HubRef, HubSettings};

#[derive(Args)]
pub struct FetchArgs {
    /// `org/name[@revision]` (a model), or `hf://datasets/org/name[@revision]/path/file`.
    pub spec: String,
}

/// A progress bar per file, fed by hub download events.
fn progress_bar() -> impl FnMut(&Download) {
    let mut current: Option<(String, ProgressBar)> = None;
    move |d: &Download| {
        if current.as_ref().is_none_or(|(f, _)| f != &d.file) {
            if let Some((_, bar)) = current.take() {
                bar.finish();
            }
            let bar = ProgressBar::new(d.total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:30} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .expect("valid template"),
            );
            bar.set_message(d.file.clone());
            current = Some((d.file.clone(), bar));
        }
        if let Some((_, bar)) = &current {
            bar.set_length(d.total);
            bar.set_position(d.done);
            if d.done >= d.total {
                bar.finish();
            }
        }
    }
}

/// Fetch a hub model or data file into the cache, showing progress; its local path.
pub fn fetch_path(spec: &Path, dataset: bool) -> Result<PathBuf> {
    let Some(r) = HubRef::from_path(spec).filter(|r| r.dataset == dataset) else {
        return Ok(spec.to_path_buf());
    };
    let settings = HubSettings::from_env();
    let mut bar = progress_bar();
    Ok(if dataset {
        fetch_file(&r, &settings, &mut bar)?
    } else {
        fetch_model(&r, &settings, &mut bar)?
    })
}

/// Make `profile`'s paths absolute (against the current directory) and fetch its hub model
/// and data files first, with progress bars.
pub fn resolve_and_fetch(profile: &mut lors::train::Profile) -> Result<()> {
    use anyhow::Context;
    let cwd = std::env::current_dir().context("no current directory")?;
    profile.resolve_paths(&cwd);
    fetch_path(&profile.model.path, false)?;
    for data in [Some(&profile.data.train), profile.data.valid.as_ref()]
        .into_iter()
        .flatten()
    {
        fetch_path(data, true)?;
    }
    Ok(())
}

pub fn fetch(args: FetchArgs) -> Result<()> {
    let Some(r) = HubRef::parse(&args.spec) else {
        bail!(
            "`{}` is not a hub reference: use org/name[@revision] for a model, or \
             hf://datasets/org/name[@revision]/path/to/file for a data file",
            args.spec
        );
    };
    let path = fetch_path(Path::new(&args.spec), r.dataset)?;
    println!("{}", path.display());
    Ok(())
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The GGUF file (Llama family: llama, qwen2; F32, F16, BF16, Q4_0, Q4_1, Q8_0, K-quants).
    #[arg(long)]
    pub gguf: PathBuf,
    /// The Hugging Face directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists and is not empty (never when it is or holds an input).
    #[arg(long)]
    pub force: bool,
    /// Dtype of the dequantised weights: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: ComputeDtype,
}

pub fn convert(args: ConvertArgs) -> Result<()> {
    let dtype = args.dtype.dtype();
    let out = check_output_dir(&args.out, args.force, &[("GGUF file", &args.gguf)])?;
    let r = convert_gguf(&args.gguf, &out, dtype)?;
    println!(
        "{} -> {}: {} model, {} tensors ({}), {} tokenizer with {} tokens, weights in {}",
        args.gguf.display(),
        args.out.display(),
        r.architecture,
        r.tensor_types.values().sum::<usize>(),
        super::type_counts(&r.tensor_types),
        r.tokenizer,
        r.vocab_size,
        r.dtype
    );
    Ok(())
}
