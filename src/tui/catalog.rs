//! What the Setup and Profiles views offer: model and dataset candidates found on disk, saved
//! profiles, and the inspections of a picked model or data file. Everything here reads files;
//! the state machine only receives the results.

use std::path::{Path, PathBuf};

use crate::data::{summarize_file, DataSummary};
use crate::model::{inspect_model, ModelDir, ModelSummary};
use crate::sources::hub::Download;
use crate::sources::{fetch_model, HubRef, HubSettings};
use crate::train::{Profile, RunDir};

/// A model directory or data file the user can pick.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub path: PathBuf,
    /// Where it was found: `assets`, `runs`, `search`, `hf-cache`.
    pub origin: &'static str,
    /// What to show (a hub id for cached hub models, else the path).
    pub label: String,
    /// Its size: a data file's, or a model's weight files together.
    pub bytes: Option<u64>,
}

/// A saved profile in the profiles folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileEntry {
    pub path: PathBuf,
    pub name: String,
    /// The parsed profile (a sweep profile's base), or why it does not parse.
    pub profile: Result<Profile, String>,
    /// A sweep profile's `[sweep]` table and its number of trials.
    pub sweep: Option<(toml::Table, usize)>,
}

impl ProfileEntry {
    /// One line: method, rank, init, steps and model.
    pub fn summary(&self) -> String {
        let sweep = self
            .sweep
            .as_ref()
            .map_or(String::new(), |(_, n)| format!("sweep of {n} trials (l): "));
        match &self.profile {
            Ok(p) => format!(
                "{sweep}{} r{} {} {} steps, {}",
                p.adapter.method,
                p.adapter.rank,
                p.adapter.init.name(),
                p.train
                    .max_steps
                    .map_or_else(|| "epochs".into(), |s| s.to_string()),
                p.model
                    .path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            ),
            Err(e) => format!("invalid: {e}"),
        }
    }
}

/// Where candidates are looked for.
#[derive(Debug, Clone, Default)]
pub struct SearchPaths {
    /// Bundled assets (`assets/`).
    pub assets: PathBuf,
    /// The runs folder: pruned and merged outputs of runs are candidates too.
    pub runs: PathBuf,
    /// Folders given with `--search` or `LORS_SEARCH_PATH`.
    pub extra: Vec<PathBuf>,
    /// The Hugging Face hub cache, when there is one.
    pub hf_cache: Option<PathBuf>,
}

fn children(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn is_model_dir(p: &Path) -> bool {
    p.join("config.json").is_file()
        && (p.join("model.safetensors").is_file()
            || p.join("model.safetensors.index.json").is_file())
}

fn is_data_file(p: &Path) -> bool {
    p.is_file()
        && matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "json" | "txt" | "raw" | "parquet")
        )
        && p.file_name().and_then(|n| n.to_str()) != Some("config.json")
}

fn candidate(path: PathBuf, origin: &'static str) -> Candidate {
    Candidate {
        label: path.display().to_string(),
        bytes: size_on_disk(&path),
        path,
        origin,
    }
}

/// A file's size, or the size of a model directory's `*.safetensors` files (links followed,
/// as in the hub cache).
fn size_on_disk(p: &Path) -> Option<u64> {
    if p.is_file() {
        return p.metadata().ok().map(|m| m.len());
    }
    let weights = children(p)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "safetensors"))
        .map(|f| f.metadata().map(|m| m.len()));
    weights.sum::<std::io::Result<u64>>().ok()
}

impl SearchPaths {
    /// Model directories: in the assets, in run outputs (`pruned/`, `merged/`), in the
    /// search folders (the folder itself and two levels below) and in the hub cache.
    pub fn models(&self) -> Vec<Candidate> {
        let mut out = Vec::new();
        for d in children(&self.assets)
            .into_iter()
            .filter(|p| is_model_dir(p))
        {
            out.push(candidate(d, "assets"));
        }
        for run in children(&self.runs) {
            let run = RunDir::at(&run);
            for model in [run.pruned_path(), run.merged_path()] {
                if is_model_dir(&model) {
                    out.push(candidate(model, "runs"));
                }
            }
        }
        for root in &self.extra {
            walk(root, 2, &mut |p| {
                if is_model_dir(p) {
                    out.push(candidate(p.to_path_buf(), "search"));
                }
            });
        }
        if let Some(cache) = &self.hf_cache {
            out.extend(hub_models(cache));
        }
        out.dedup_by(|a, b| a.path == b.path);
        out
    }

    /// Data files (`.jsonl`, `.json`, `.parquet`, `.txt`, `.raw`) in the assets and the search
    /// folders.
    pub fn datasets(&self) -> Vec<Candidate> {
        let mut out = Vec::new();
        walk(&self.assets, 2, &mut |p| {
            let in_model = p.components().any(|c| c.as_os_str() == "demo-model");
            if is_data_file(p) && !in_model && !is_task_file(p) {
                out.push(candidate(p.to_path_buf(), "assets"));
            }
        });
        for root in &self.extra {
            walk(root, 2, &mut |p| {
                let in_model = p.parent().is_some_and(is_model_dir);
                if is_data_file(p) && !in_model && !is_task_file(p) {
                    out.push(candidate(p.to_path_buf(), "search"));
                }
            });
        }
        out
    }
}

/// Whether `p` holds a zero-shot task's items (scored by `[eval]`, not trained on): a file in a
/// `tasks` folder, or one named after a task (`boolq.jsonl`, `hellaswag-validation.parquet`).
fn is_task_file(p: &Path) -> bool {
    let in_tasks = p
        .parent()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "tasks");
    let stem = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let named = crate::eval::Task::ALL.iter().any(|t| {
        stem.strip_prefix(t.name())
            .is_some_and(|rest| rest.starts_with(['.', '-']))
    });
    in_tasks || named
}

/// Visit `root` and everything up to `depth` levels below it (in name order).
fn walk(root: &Path, depth: usize, visit: &mut dyn FnMut(&Path)) {
    visit(root);
    if depth > 0 && root.is_dir() {
        for c in children(root) {
            walk(&c, depth - 1, visit);
        }
    }
}

/// Snapshots of hub model repos in a hub cache (`models--org--name/snapshots/<rev>/`).
fn hub_models(cache: &Path) -> Vec<Candidate> {
    let mut out = Vec::new();
    for repo in children(cache) {
        let Some(id) = repo
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("models--"))
            .map(|n| n.replace("--", "/"))
        else {
            continue;
        };
        for snap in children(&repo.join("snapshots")) {
            if is_model_dir(&snap) {
                let rev: String = snap
                    .file_name()
                    .map(|n| n.to_string_lossy().chars().take(8).collect())
                    .unwrap_or_default();
                out.push(Candidate {
                    label: format!("{id}@{rev}"),
                    bytes: size_on_disk(&snap),
                    path: snap,
                    origin: "hf-cache",
                });
            }
        }
    }
    out
}

/// Every `*.toml` in the profiles folder, parsed.
pub fn list_profiles(dir: &Path) -> Vec<ProfileEntry> {
    children(dir)
        .into_iter()
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("toml"))
        .map(|path| read_profile_entry(&path))
        .collect()
}

/// A saved profile: a plain one, or a sweep profile (its base and its `[sweep]`).
fn read_profile_entry(path: &Path) -> ProfileEntry {
    let is_sweep = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
        .is_some_and(|t| t.contains_key("sweep"));
    let (profile, sweep) = if is_sweep {
        match crate::sweep::runner::load_profile(path, &[]) {
            Ok((base, table, spec)) => (Ok(base), Some((table, spec.trials().len()))),
            Err(e) => (Err(e.to_string()), None),
        }
    } else {
        (Profile::load(path, &[]).map_err(|e| e.to_string()), None)
    };
    ProfileEntry {
        name: path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        profile,
        sweep,
        path: path.to_path_buf(),
    }
}

/// Describe the model at `path` (architecture, size, dtype, per-layer sparsity). A hub id is
/// fetched into the cache first, reporting download progress.
pub fn inspect_model_at(
    path: &Path,
    progress: &mut dyn FnMut(&Download),
) -> Result<ModelSummary, String> {
    let local = match HubRef::from_path(path).filter(|r| !r.dataset) {
        Some(r) => {
            fetch_model(&r, &HubSettings::from_env(), progress).map_err(|e| e.to_string())?
        }
        None => path.to_path_buf(),
    };
    let dir = ModelDir::open(&local).map_err(|e| e.to_string())?;
    inspect_model(&dir).map_err(|e| e.to_string())
}

/// A data file to describe with a model's tokenizer, as a profile would read it.
#[derive(Debug, Clone, PartialEq)]
pub struct DataRequest {
    pub path: PathBuf,
    pub model: PathBuf,
    pub options: crate::train::profile::DataSection,
}

/// Records and tokens of a data file, tokenised with the model's tokenizer.
pub fn inspect_data(req: &DataRequest) -> Result<DataSummary, String> {
    let dir = ModelDir::open(&req.model).map_err(|e| format!("model: {e}"))?;
    let tok = dir.tokenizer().map_err(|e| e.to_string())?;
    summarize_file(&req.path, &tok, &req.options.block_options()).map_err(|e| e.to_string())
}
