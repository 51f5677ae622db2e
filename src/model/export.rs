//! Export of a merged model: a Hugging Face directory that transformers and vLLM load as-is,
//! with the adapters merged and, for masked methods, exactly the base model's zeros.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{CausalLm, ModelDir, WeightSource};
use crate::adapters::MergeReport;
use crate::error::{LorsError, Result};
use crate::io::{build_dir_atomic, write_json_atomic, write_safetensors_atomic};

/// Density of one exported layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSparsity {
    pub name: String,
    pub density_before: f64,
    pub density_after: f64,
    pub pattern_preserved: bool,
    pub nudged: usize,
    /// The rank SoRA's gates leave (absent without SoRA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_rank: Option<usize>,
}

impl LayerSparsity {
    /// The entry of layer `name` from its merge report.
    pub fn new(name: &str, r: &MergeReport) -> Self {
        Self {
            name: name.to_string(),
            density_before: r.density_before,
            density_after: r.density_after,
            pattern_preserved: r.pattern_preserved,
            nudged: r.nudged,
            live_rank: None,
        }
    }
}

/// Density of every adapted layer's base weight and of its would-be merged weight (in the
/// model's compute dtype), without writing anything: what the TUI's sparsity panel shows.
pub fn merged_sparsity(model: &CausalLm) -> Result<Vec<LayerSparsity>> {
    model
        .adapted()
        .into_iter()
        .map(|(module, a)| {
            let mut layer = LayerSparsity::new(&module.to_string(), &a.merge()?.1);
            layer.live_rank = a.gate().map(|_| a.live_rank()).transpose()?;
            Ok(layer)
        })
        .collect()
}

/// `sparsity.json` of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparsityReport {
    pub method: String,
    /// Kept fraction over all adapted layers, before and after the merge.
    pub density_before: f64,
    pub density_after: f64,
    /// True when every adapted layer kept its zero pattern exactly.
    pub pattern_preserved: bool,
    pub layers: Vec<LayerSparsity>,
}

/// Files copied verbatim from the base model directory when present.
const COPIED_FILES: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
];

/// Write `model` (adapters merged) to `out` in the base checkpoint's dtypes: tensors the
/// adapters do not touch are copied bit for bit from `base`.
pub fn export_merged(model: &CausalLm, base: &ModelDir, out: &Path) -> Result<SparsityReport> {
    let (tensors, report) = merged_tensors(model, base)?;
    write_model_dir(base, out, tensors, &report)?;
    Ok(report)
}

/// Every tensor of `model` with its adapters merged, by Hugging Face name, in the base
/// checkpoint's dtypes (tensors the adapters do not touch as `base` holds them), and what the
/// merge did to sparsity.
pub fn merged_tensors(
    model: &CausalLm,
    base: &ModelDir,
) -> Result<(HashMap<String, Tensor>, SparsityReport)> {
    let source = base.weights()?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for name in source.names() {
        tensors.insert(name.clone(), source.tensor(&name)?);
    }
    let mut layers = Vec::new();
    let (mut kept_before, mut kept_after, mut total) = (0f64, 0f64, 0f64);
    let mut method = None;
    for (module, linear) in model.linears() {
        let path = module.to_string();
        let Some(adapted) = linear.adapted() else {
            continue;
        };
        method = Some(adapted.config().method);
        let key = format!("{path}.weight");
        let stored = tensors
            .get(&key)
            .ok_or_else(|| LorsError::parse(&base.path, format!("tensor `{key}` is missing")))?
            .dtype();
        let (merged, report) = linear.export_weight(stored)?;
        let n = merged.elem_count() as f64;
        kept_before += report.as_ref().map_or(1.0, |r| r.density_before) * n;
        kept_after += report.as_ref().map_or(1.0, |r| r.density_after) * n;
        total += n;
        if let Some(r) = report {
            layers.push(LayerSparsity::new(&path, &r));
        }
        tensors.insert(key, merged);
    }
    let report = SparsityReport {
        method: method
            .map(|m| m.to_string())
            .unwrap_or_else(|| "none".into()),
        density_before: if total > 0.0 {
            kept_before / total
        } else {
            1.0
        },
        density_after: if total > 0.0 { kept_after / total } else { 1.0 },
        pattern_preserved: layers.iter().all(|l| l.pattern_preserved),
        layers,
    };
    Ok((tensors, report))
}

/// Write a Hugging Face directory at `out` (atomically): `tensors` as `model.safetensors`, the
/// base model's config and tokenizer files copied, and `report` as `sparsity.json`.
pub fn write_model_dir<R: Serialize>(
    base: &ModelDir,
    out: &Path,
    tensors: HashMap<String, Tensor>,
    report: &R,
) -> Result<()> {
    build_dir_atomic(out, |dir| {
        write_safetensors_atomic(&dir.join("model.safetensors"), &tensors)?;
        for f in COPIED_FILES {
            let src = base.path.join(f);
            if src.is_file() {
                std::fs::copy(&src, dir.join(f)).map_err(|e| LorsError::io(&src, e))?;
            }
        }
        write_json_atomic(&dir.join("sparsity.json"), report)
    })
}
