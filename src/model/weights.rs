//! Locating and reading a Hugging Face model directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};

use super::ModelConfig;
use crate::error::{LorsError, Result};
use crate::io::index_shards;

/// A Hugging Face model directory: `config.json`, `model.safetensors` (or shards with
/// `model.safetensors.index.json`) and `tokenizer.json`.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub weight_files: Vec<PathBuf>,
}

impl ModelDir {
    /// Check that `path` holds a loadable model and read its config. A path that does not
    /// exist locally but reads as a hub id (`org/name[@rev]`) is fetched into the Hugging
    /// Face cache first (see [`crate::sources::hub`]); a `.gguf` file is converted once
    /// (see [`crate::sources::gguf`]).
    pub fn open(path: &Path) -> Result<Self> {
        let path = &crate::sources::resolve_model_path(path)?;
        let path = &crate::sources::resolve_gguf_path(path)?;
        if !path.is_dir() {
            return Err(LorsError::parse(path, "not a model directory"));
        }
        let config = ModelConfig::from_file(&path.join("config.json"))?;
        let single = path.join("model.safetensors");
        let index = path.join("model.safetensors.index.json");
        let weight_files = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            let files: Vec<PathBuf> = index_shards(&index)?.iter().map(|f| path.join(f)).collect();
            if let Some(missing) = files.iter().find(|f| !f.is_file()) {
                return Err(LorsError::parse(
                    &index,
                    format!("shard {} is missing", missing.display()),
                ));
            }
            files
        } else {
            return Err(LorsError::parse(
                path,
                "no model.safetensors or model.safetensors.index.json",
            ));
        };
        Ok(Self {
            path: path.to_path_buf(),
            config,
            weight_files,
        })
    }

    /// `tokenizer.json` of the model.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.path.join("tokenizer.json")
    }

    /// The model's tokenizer, with the config's end-of-sequence token.
    pub fn tokenizer(&self) -> Result<crate::data::TextTokenizer> {
        crate::data::TextTokenizer::from_file(
            &self.tokenizer_path(),
            self.config.eos_token_ids.first().copied(),
        )
    }

    /// Memory-map the weights.
    pub fn weights(&self) -> Result<SafetensorsSource> {
        // SAFETY: the files are not modified while mapped (they are inputs of a run).
        let st = unsafe { MmapedSafetensors::multi(&self.weight_files) }.map_err(|e| {
            LorsError::parse(
                &self.weight_files[0],
                format!("cannot read safetensors: {e}"),
            )
        })?;
        Ok(SafetensorsSource {
            st,
            path: self.path.clone(),
        })
    }
}

/// Where a model's named tensors come from.
pub trait WeightSource {
    /// The tensor `name` on the CPU in its stored dtype.
    fn tensor(&self, name: &str) -> Result<Tensor>;
    /// Whether `name` exists.
    fn contains(&self, name: &str) -> bool;
    /// Every tensor name, sorted.
    fn names(&self) -> Vec<String>;
}

/// Tensors of memory-mapped safetensors files.
pub struct SafetensorsSource {
    st: MmapedSafetensors,
    path: PathBuf,
}

impl SafetensorsSource {
    /// Elements over every stored tensor (read from the headers).
    pub fn parameter_count(&self) -> usize {
        self.st
            .tensors()
            .iter()
            .map(|(_, v)| v.shape().iter().product::<usize>())
            .sum()
    }
}

impl WeightSource for SafetensorsSource {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        if !self.contains(name) {
            return Err(LorsError::parse(
                &self.path,
                format!("tensor `{name}` is missing"),
            ));
        }
        self.st
            .load(name, &Device::Cpu)
            .map_err(|e| LorsError::parse(&self.path, format!("tensor `{name}`: {e}")))
    }

    fn contains(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.st.tensors().into_iter().map(|(n, _)| n).collect();
        names.sort();
        names
    }
}

impl WeightSource for HashMap<String, Tensor> {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        self.get(name)
            .cloned()
            .ok_or_else(|| LorsError::invalid("weights", format!("tensor `{name}` is missing")))
    }

    fn contains(&self, name: &str) -> bool {
        self.contains_key(name)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.keys().cloned().collect();
        names.sort();
        names
    }
}
