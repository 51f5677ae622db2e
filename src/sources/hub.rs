//! Models and data files on the Hugging Face Hub, through the hf-hub crate, in the standard
//! cache layout shared with Python's `huggingface_hub` (`HF_HOME`, `HF_HUB_CACHE`,
//! `HF_TOKEN`, `HF_ENDPOINT` and `HF_HUB_OFFLINE` are honoured).
//!
//! A model is fetched as the files a run needs (config, tokenizer, safetensors or the shards
//! its index names), each only when the cache lacks it. hf-hub downloads into
//! `blobs/<etag>.part` and resumes from there; every finished download is checked against
//! the size the hub announced, so a truncated file is removed instead of being taken for a
//! complete one.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::api::Progress;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{LorsError, Result};
use crate::io::index_shards;

/// Files of a model repo that a run reads besides the weights, if the repo has them.
const MODEL_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// A model or dataset repo (at a revision), and for datasets a file in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    pub dataset: bool,
    pub repo_id: String,
    pub revision: String,
    /// A file inside the repo (datasets only).
    pub file: Option<String>,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(['.', '-'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn split_revision(s: &str) -> (&str, String) {
    match s.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, rev.to_string()),
        _ => (s.trim_end_matches('@'), "main".to_string()),
    }
}

impl HubRef {
    /// Parse `org/name[@rev]` or `hf://org/name[@rev]` (a model) or
    /// `hf://datasets/org/name[@rev]/path/to/file` (a data file). Anything else is `None`.
    pub fn parse(spec: &str) -> Option<Self> {
        if let Some(rest) = spec.strip_prefix("hf://datasets/") {
            let mut parts = rest.splitn(3, '/');
            let (org, name_rev, file) = (parts.next()?, parts.next()?, parts.next()?);
            let (name, revision) = split_revision(name_rev);
            return (is_name(org) && is_name(name) && !file.is_empty()).then(|| Self {
                dataset: true,
                repo_id: format!("{org}/{name}"),
                revision,
                file: Some(file.to_string()),
            });
        }
        let rest = spec.strip_prefix("hf://").unwrap_or(spec);
        let rest = rest.strip_prefix("models/").unwrap_or(rest);
        let (id, revision) = split_revision(rest);
        let (org, name) = id.split_once('/')?;
        (is_name(org) && is_name(name)).then(|| Self {
            dataset: false,
            repo_id: id.to_string(),
            revision,
            file: None,
        })
    }

    /// The reference a path stands for: a path that exists locally is never a hub id, nor
    /// is a missing one inside a folder that exists here (`runs/model` with a `runs/`): that
    /// is a local path not written yet, whose error should say so, not a network error.
    pub fn from_path(path: &Path) -> Option<Self> {
        let in_local_folder = path
            .parent()
            .is_some_and(|p| !p.as_os_str().is_empty() && p.is_dir());
        if path.exists() || in_local_folder {
            return None;
        }
        Self::parse(path.to_str()?)
    }

    fn repo(&self) -> Repo {
        let kind = if self.dataset {
            RepoType::Dataset
        } else {
            RepoType::Model
        };
        Repo::with_revision(self.repo_id.clone(), kind, self.revision.clone())
    }

    fn display(&self) -> String {
        let kind = if self.dataset { "dataset " } else { "" };
        format!("{kind}{}@{}", self.repo_id, self.revision)
    }
}

/// Where and how to reach the hub.
#[derive(Debug, Clone, PartialEq)]
pub struct HubSettings {
    pub endpoint: String,
    /// The hub cache folder (`.../huggingface/hub`).
    pub cache_dir: PathBuf,
    pub token: Option<String>,
    /// Use only the cache (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// The Hugging Face home folder: `HF_HOME`, else `~/.cache/huggingface`.
fn hf_home() -> PathBuf {
    env("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env("HOME").unwrap_or_else(|| ".".into())).join(".cache/huggingface")
    })
}

/// The hub cache folder as `huggingface_hub` finds it: `HF_HUB_CACHE`, else `HF_HOME/hub`.
pub fn cache_dir() -> PathBuf {
    env("HF_HUB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("hub"))
}

impl HubSettings {
    /// From the environment, as `huggingface_hub` reads it. The token is `HF_TOKEN`, else
    /// the file `huggingface-cli login` writes (`HF_TOKEN_PATH` or `HF_HOME/token`).
    pub fn from_env() -> Self {
        let token = env("HF_TOKEN").or_else(|| {
            let path = env("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home().join("token"));
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        Self {
            endpoint: env("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            cache_dir: cache_dir(),
            token,
            offline: env("HF_HUB_OFFLINE")
                .is_some_and(|v| matches!(v.to_lowercase().as_str(), "1" | "true" | "yes" | "on")),
        }
    }

    fn api(&self) -> Result<Api> {
        ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .with_retries(2)
            .build()
            .map_err(|e| LorsError::Hub {
                repo: self.endpoint.clone(),
                detail: e.to_string(),
            })
    }
}

/// Download progress of one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Download {
    pub file: String,
    pub done: u64,
    pub total: u64,
}

/// Forwards hf-hub's progress and remembers the announced size.
struct Forward<'a> {
    file: String,
    done: u64,
    total: &'a std::cell::Cell<u64>,
    report: &'a mut dyn FnMut(&Download),
}

impl Forward<'_> {
    fn send(&mut self) {
        (self.report)(&Download {
            file: self.file.clone(),
            done: self.done,
            total: self.total.get(),
        });
    }
}

impl Progress for Forward<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        self.total.set(size as u64);
        self.done = 0;
    }
    fn update(&mut self, size: usize) {
        self.done += size as u64;
        self.send();
    }
    fn finish(&mut self) {
        self.send();
    }
}

/// A readable reason for a failed hub request.
fn explain(r: &HubRef, settings: &HubSettings, e: ApiError) -> String {
    if let ApiError::RequestError(err) = &e {
        match err.as_ref() {
            ureq::Error::Status(401, _) => {
                return format!(
                    "401 unauthorized at {}: the repo does not exist, or it is private or \
                     gated and needs a token with access (HF_TOKEN, or `huggingface-cli \
                     login`){}",
                    settings.endpoint,
                    if settings.token.is_some() {
                        "; the token given was refused"
                    } else {
                        "; no token is set"
                    }
                )
            }
            ureq::Error::Status(403, _) => {
                return format!(
                    "403 forbidden at {}: the repo is gated and this token has no access \
                     (accept its terms on the hub page, then use a token of that account)",
                    settings.endpoint
                )
            }
            ureq::Error::Status(404, _) => {
                return format!(
                    "404 not found at {}: no such repo, revision `{}` or file",
                    settings.endpoint, r.revision
                )
            }
            ureq::Error::Status(code, _) => {
                return format!("the hub answered {code} at {}", settings.endpoint)
            }
            ureq::Error::Transport(t) => return format!("cannot reach {}: {t}", settings.endpoint),
        }
    }
    e.to_string()
}

fn is_network_error(e: &ApiError) -> bool {
    matches!(e, ApiError::RequestError(err) if matches!(err.as_ref(), ureq::Error::Transport(_)))
}

/// A hub repo at one revision, fetched file by file into the cache.
struct Fetcher<'a> {
    r: &'a HubRef,
    settings: &'a HubSettings,
    cache: hf_hub::CacheRepo,
}

impl<'a> Fetcher<'a> {
    fn new(r: &'a HubRef, settings: &'a HubSettings) -> Self {
        Self {
            r,
            settings,
            cache: Cache::new(settings.cache_dir.clone()).repo(r.repo()),
        }
    }

    fn error(&self, detail: String) -> LorsError {
        LorsError::Hub {
            repo: self.r.display(),
            detail,
        }
    }

    /// The cached file, if the cache has it for this revision.
    fn cached(&self, file: &str) -> Option<PathBuf> {
        self.cache.get(file)
    }

    /// Download `file` (which must not be cached), checking its size.
    fn download(
        &self,
        api: &Api,
        file: &str,
        report: &mut dyn FnMut(&Download),
    ) -> Result<PathBuf> {
        let total = std::cell::Cell::new(0);
        let forward = Forward {
            file: file.to_string(),
            done: 0,
            total: &total,
            report,
        };
        let path = api
            .repo(self.r.repo())
            .download_with_progress(file, forward)
            .map_err(|e| {
                let detail = match &e {
                    ApiError::RequestError(_) => explain(self.r, self.settings, e),
                    _ => format!(
                        "download failed: {e}; what arrived is kept as a `.part` file in the \
                         cache and the next attempt resumes from it"
                    ),
                };
                self.error(format!("{file}: {detail}"))
            })?;
        let len = std::fs::metadata(&path)
            .map_err(|e| LorsError::io(&path, e))?
            .len();
        if len != total.get() {
            // hf-hub renames whatever it received into place: take it out again.
            if let Ok(blob) = std::fs::canonicalize(&path) {
                let _ = std::fs::remove_file(blob);
            }
            let _ = std::fs::remove_file(&path);
            return Err(self.error(format!(
                "{file}: truncated download ({len} of {} bytes); the partial file was \
                 removed, run again to download it",
                total.get()
            )));
        }
        Ok(path)
    }

    /// Those of `files` the cache lacks.
    fn missing(&self, files: &[String]) -> Vec<String> {
        files
            .iter()
            .filter(|f| self.cached(f).is_none())
            .cloned()
            .collect()
    }

    /// Files missing from the cache, as a sentence with what to do about it.
    fn missing_help(&self, missing: &[String]) -> String {
        format!(
            "not in the cache ({}): missing {}. Give a local directory instead, or download \
             it where there is network (`lors fetch {}`, or `huggingface-cli download {}`) \
             into this cache",
            self.settings.cache_dir.display(),
            missing.join(", "),
            self.r.display(),
            self.r.repo_id
        )
    }

    /// The files of the repo at this revision; a network failure says what the cache lacks.
    fn list(&self, api: &Api, missing: &[String]) -> Result<Vec<String>> {
        match api.repo(self.r.repo()).info() {
            Ok(info) => Ok(info.siblings.into_iter().map(|s| s.rfilename).collect()),
            Err(e) if is_network_error(&e) => Err(self.error(format!(
                "{}; and the repo is {}",
                explain(self.r, self.settings, e),
                self.missing_help(missing)
            ))),
            Err(e) => Err(self.error(explain(self.r, self.settings, e))),
        }
    }

    /// `files` from the cache when there, else downloaded (they must be in `listing`).
    fn fetch(
        &self,
        api: &Api,
        listing: &[String],
        files: &[String],
        report: &mut dyn FnMut(&Download),
    ) -> Result<Vec<PathBuf>> {
        if let Some(absent) = files.iter().find(|f| !listing.contains(f)) {
            return Err(self.error(format!(
                "the repo has no file `{absent}` (it has: {})",
                listing.join(", ")
            )));
        }
        files
            .iter()
            .map(|file| match self.cached(file) {
                Some(p) => Ok(p),
                None => self.download(api, file, report),
            })
            .collect()
    }

    /// `files` if all are cached; else, offline, an error naming the missing ones.
    fn all_cached(&self, files: &[String]) -> Result<Option<Vec<PathBuf>>> {
        let missing = self.missing(files);
        if missing.is_empty() {
            return Ok(Some(files.iter().filter_map(|f| self.cached(f)).collect()));
        }
        if self.settings.offline {
            return Err(self.error(format!(
                "HF_HUB_OFFLINE is set and the repo is {}",
                self.missing_help(&missing)
            )));
        }
        Ok(None)
    }
}

const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// Resolve a model repo to its snapshot directory in the cache, holding everything a run
/// reads (config, tokenizer, weights), fetching only what is missing. A fully cached model
/// needs no network; offline, anything missing is an error that names it.
pub fn fetch_model(
    r: &HubRef,
    settings: &HubSettings,
    report: &mut dyn FnMut(&Download),
) -> Result<PathBuf> {
    let f = Fetcher::new(r, settings);
    let mut files = vec!["config.json".to_string(), "tokenizer.json".to_string()];
    // What the cache holds decides single file or shards.
    match (f.cached(SINGLE), f.cached(INDEX)) {
        (None, Some(index)) => {
            files.push(INDEX.into());
            files.extend(index_shards(&index)?);
        }
        _ => files.push(SINGLE.into()),
    }
    if let Some(paths) = f.all_cached(&files)? {
        return Ok(snapshot_dir(&paths[0]));
    }
    let api = settings.api()?;
    let listing = f.list(&api, &f.missing(&files))?;
    let sharded = !listing.iter().any(|x| x == SINGLE);
    if sharded && !listing.iter().any(|x| x == INDEX) {
        return Err(f.error(format!(
            "the repo has no safetensors weights (it has: {}); lors reads safetensors, \
             and GGUF files through `lors convert --gguf`",
            listing.join(", ")
        )));
    }
    let mut files: Vec<String> = MODEL_FILES
        .iter()
        .filter(|x| {
            ["config.json", "tokenizer.json"].contains(x) || listing.iter().any(|l| l == *x)
        })
        .map(|x| x.to_string())
        .collect();
    files.push(if sharded { INDEX } else { SINGLE }.to_string());
    let paths = f.fetch(&api, &listing, &files, report)?;
    if sharded {
        f.fetch(
            &api,
            &listing,
            &index_shards(paths.last().expect("index"))?,
            report,
        )?;
    }
    Ok(snapshot_dir(&paths[0]))
}

/// Resolve one file of a dataset repo to its path in the cache, fetching it if missing.
pub fn fetch_file(
    r: &HubRef,
    settings: &HubSettings,
    report: &mut dyn FnMut(&Download),
) -> Result<PathBuf> {
    let file = r
        .file
        .clone()
        .ok_or_else(|| LorsError::invalid("hub reference", "a dataset reference needs a file"))?;
    let f = Fetcher::new(r, settings);
    let files = [file];
    if let Some(mut paths) = f.all_cached(&files)? {
        return Ok(paths.remove(0));
    }
    let api = settings.api()?;
    let listing = f.list(&api, &files)?;
    Ok(f.fetch(&api, &listing, &files, report)?.remove(0))
}

fn snapshot_dir(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// A model path as given (a local directory, or a hub id fetched silently into the cache).
pub fn resolve_model_path(path: &Path) -> Result<PathBuf> {
    match HubRef::from_path(path).filter(|r| !r.dataset) {
        Some(r) => fetch_model(&r, &HubSettings::from_env(), &mut |_| {}).map_err(|e| match e {
            LorsError::Hub { repo, detail } if !path.starts_with("hf:") => LorsError::Hub {
                repo,
                detail: format!(
                    "`{}` is not a local directory; as a hub id: {detail}",
                    path.display()
                ),
            },
            other => other,
        }),
        None => Ok(path.to_path_buf()),
    }
}

/// A data path as given (a local file, or `hf://datasets/...` fetched into the cache).
pub fn resolve_data_path(path: &Path) -> Result<PathBuf> {
    match HubRef::from_path(path).filter(|r| r.dataset) {
        Some(r) => fetch_file(&r, &HubSettings::from_env(), &mut |_| {}),
        None => Ok(path.to_path_buf()),
    }
}
