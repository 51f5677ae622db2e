//! Pruning a dense model into the sparse one LoRS fine-tunes: magnitude, Wanda and SparseGPT,
//! unstructured or N:M, layer-wise and sequential as in the reference implementations
//! (calibration activations pass through the already-pruned earlier layers, and memory holds
//! one decoder layer's inputs at a time).

mod sparsegpt;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use nalgebra::DMatrix;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use sparsegpt::sparsegpt;

use crate::data::{Batch, Blocks, IdWidth};
use crate::error::{LorsError, Result};
use crate::model::{write_model_dir, CausalLm, ModelDir, ModuleId, Proj, WeightSource};
use crate::sparsity::{mask_from_scores, BitMask, Layout, Pattern};

/// Pruning algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "lowercase")]
pub enum PruneMethod {
    /// `|W|`.
    Magnitude,
    /// `|W_ij|·‖X_j‖₂` over the calibration inputs.
    Wanda,
    /// The OBS solver with weight updates.
    SparseGpt,
}

crate::named!(PruneMethod, "prune.method");

/// Density of one pruned layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrunedLayer {
    pub name: String,
    pub density: f64,
}

/// `sparsity.json` of a pruned model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneReport {
    pub method: PruneMethod,
    pub pattern: String,
    pub calibration: Option<CalibrationInfo>,
    pub density: f64,
    pub seconds: f64,
    pub layers: Vec<PrunedLayer>,
}

/// Where the calibration data came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationInfo {
    pub file: PathBuf,
    pub nsamples: usize,
    pub seq_len: usize,
    pub seed: u64,
}

/// Pick `nsamples` blocks at random (seeded) for calibration.
pub fn calibration_blocks(blocks: &Blocks, nsamples: usize, seed: u64) -> Result<Blocks> {
    if blocks.is_empty() {
        return Err(LorsError::invalid(
            "prune.calib",
            "the calibration data makes no sequence",
        ));
    }
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order.truncate(nsamples.max(1));
    blocks.select(&order)
}

/// Pruned weights (f32) with their masks, by tensor name.
pub type PrunedWeights = HashMap<String, (Tensor, BitMask)>;

/// Per-layer input statistics gathered over the calibration data.
enum Stats {
    /// Σ x_j² per input column.
    SquaredNorms(Vec<f64>),
    /// Σ x·xᵀ (in x in).
    Gram(DMatrix<f64>),
}

impl Stats {
    fn add(&mut self, x: &Tensor) -> Result<()> {
        let in_f = x.dim(candle_core::D::Minus1)?;
        let x2 = x.reshape(((), in_f))?.to_dtype(DType::F32)?;
        match self {
            Stats::SquaredNorms(acc) => {
                let s = x2.sqr()?.sum(0)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                acc.iter_mut().zip(s).for_each(|(a, v)| *a += v);
            }
            Stats::Gram(acc) => {
                let g = x2.t()?.matmul(&x2)?.to_dtype(DType::F64)?;
                let v = g.flatten_all()?.to_vec1::<f64>()?;
                *acc += DMatrix::from_row_slice(in_f, in_f, &v);
            }
        }
        Ok(())
    }
}

/// Prune one weight given its statistics (none for magnitude).
fn prune_weight(
    w: &Tensor,
    stats: Option<&Stats>,
    tokens: usize,
    pattern: Pattern,
    method: PruneMethod,
) -> Result<(Tensor, BitMask)> {
    let (rows, cols) = w.dims2()?;
    let values = w.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let (values, mask) = match (method, stats) {
        (PruneMethod::Magnitude, _) => {
            let scores: Vec<f64> = values.iter().map(|v| v.abs()).collect();
            (values, mask_from_scores(&scores, rows, cols, pattern)?)
        }
        (PruneMethod::Wanda, Some(Stats::SquaredNorms(sq))) => {
            let norms: Vec<f64> = sq.iter().map(|s| s.sqrt()).collect();
            let scores: Vec<f64> = values
                .iter()
                .enumerate()
                .map(|(i, v)| v.abs() * norms[i % cols])
                .collect();
            (values, mask_from_scores(&scores, rows, cols, pattern)?)
        }
        (PruneMethod::SparseGpt, Some(Stats::Gram(g))) => {
            let h = g * (2.0 / tokens.max(1) as f64);
            sparsegpt(&values, rows, cols, &h, pattern)?
        }
        _ => {
            return Err(LorsError::invalid(
                "prune",
                "missing calibration statistics",
            ))
        }
    };
    let mut values = values;
    mask.apply(&mut values);
    let t = Tensor::from_vec(values, (rows, cols), w.device())?;
    Ok((t, mask))
}

/// Prune every q/k/v/o/gate/up/down weight of `model` (loaded without adapters) layer by layer,
/// calling `progress(layer, layers)` after each decoder layer. Returns the pruned weights
/// (f32) with their masks, by tensor name, and each layer's density.
pub fn prune_model(
    model: &mut CausalLm,
    calib: &Blocks,
    method: PruneMethod,
    pattern: Pattern,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(PrunedWeights, Vec<PrunedLayer>)> {
    let needs_data = method != PruneMethod::Magnitude;
    if needs_data && calib.is_empty() {
        return Err(LorsError::invalid(
            "prune.calib",
            "no calibration sequences",
        ));
    }
    let indices: Vec<usize> = (0..calib.len()).collect();
    let batches: Vec<Batch> = indices
        .chunks(8)
        .map(|c| Batch::from_blocks(calib, c, DType::F32))
        .collect::<Result<_>>()?;
    let tokens = calib.len() * calib.seq_len();
    let mut xs: Vec<Tensor> = if needs_data {
        batches
            .iter()
            .map(|b| model.embed_tokens(&b.ids))
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let mut out = HashMap::new();
    let mut layers = Vec::new();
    let n_blocks = model.num_blocks();
    for i in 0..n_blocks {
        let modules: Vec<(ModuleId, Tensor)> = model
            .linears()
            .into_iter()
            .filter(|(m, _)| m.layer == i)
            .map(|(m, l)| (m, l.base().weight().clone()))
            .collect();
        let mut stats: HashMap<Proj, Stats> = HashMap::new();
        if needs_data {
            for x in &xs {
                model.block_with_taps(i, x, &mut |proj, input| {
                    let in_f = input.dim(candle_core::D::Minus1)?;
                    let entry = stats.entry(proj).or_insert_with(|| match method {
                        PruneMethod::SparseGpt => Stats::Gram(DMatrix::zeros(in_f, in_f)),
                        _ => Stats::SquaredNorms(vec![0.0; in_f]),
                    });
                    entry.add(input)
                })?;
            }
        }
        for (module, w) in modules {
            let (pruned, mask) = prune_weight(&w, stats.get(&module.proj), tokens, pattern, method)
                .map_err(|e| LorsError::invalid(module.to_string(), e.to_string()))?;
            layers.push(PrunedLayer {
                name: module.to_string(),
                density: mask.density(),
            });
            model.replace_weight(module, pruned.clone())?;
            out.insert(format!("{module}.weight"), (pruned, mask));
        }
        if needs_data {
            xs = xs
                .iter()
                .map(|x| model.block_with_taps(i, x, &mut |_, _| Ok(())))
                .collect::<Result<_>>()?;
        }
        progress(i + 1, n_blocks);
    }
    if layers.is_empty() {
        return Err(LorsError::invalid(
            "prune",
            "the model has no layers to prune",
        ));
    }
    Ok((out, layers))
}

/// Write a pruned model: the base directory's tensors with the pruned ones (cast to each
/// tensor's stored dtype, zeros kept exact), tokenizer files, and `sparsity.json`.
pub fn write_pruned(
    base: &ModelDir,
    out: &std::path::Path,
    pruned: PrunedWeights,
    mut report: PruneReport,
) -> Result<PruneReport> {
    let src = base.weights()?;
    let mut tensors = HashMap::new();
    for name in src.names() {
        let stored = src.tensor(&name)?;
        let t = match pruned.get(&name) {
            Some((p, mask)) => mask.nudge_kept_zeros(&p.to_dtype(stored.dtype())?)?.0,
            None => stored,
        };
        tensors.insert(name, t);
    }
    let (kept, total) = report.layers.iter().fold((0.0, 0.0), |(k, t), l| {
        let n = tensors
            .get(&format!("{}.weight", l.name))
            .map_or(0.0, |t| t.elem_count() as f64);
        (k + l.density * n, t + n)
    });
    report.density = kept / total.max(1.0);
    write_model_dir(base, out, tensors, &report)?;
    Ok(report)
}

/// A prune step: the CLI's arguments, and a profile's `[prune]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneSettings {
    pub method: PruneMethod,
    /// `unstructured` or N:M such as `2:4`.
    #[serde(default)]
    pub pattern: Layout,
    /// Unstructured sparsity in (0, 1).
    #[serde(default = "default_sparsity")]
    pub sparsity: f64,
    /// Calibration data (not needed for magnitude).
    #[serde(default)]
    pub calib: Option<PathBuf>,
    #[serde(default = "default_nsamples")]
    pub nsamples: usize,
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    #[serde(default)]
    pub seed: u64,
}

fn default_sparsity() -> f64 {
    0.5
}
fn default_nsamples() -> usize {
    128
}
fn default_seq_len() -> usize {
    2048
}

impl PruneSettings {
    /// The sparsity pattern these settings ask for.
    pub fn pattern(&self) -> Result<Pattern> {
        self.pattern.with_sparsity(self.sparsity)
    }

    /// Check the values that do not need the model.
    pub fn validate(&self) -> Result<()> {
        self.pattern()?;
        if self.method != PruneMethod::Magnitude && self.calib.is_none() {
            return Err(LorsError::invalid(
                "prune.calib",
                format!("{} needs calibration data", self.method),
            ));
        }
        if self.nsamples == 0 || self.seq_len < 2 {
            return Err(LorsError::invalid(
                "prune.nsamples",
                "nsamples must be at least 1 and seq_len at least 2",
            ));
        }
        Ok(())
    }
}

/// Prune the model in `model_dir` as `settings` say and write it to `out`.
pub fn prune_to_dir(
    model_dir: &std::path::Path,
    settings: &PruneSettings,
    out: &std::path::Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PruneReport> {
    settings.validate()?;
    let pattern = settings.pattern()?;
    let dir = ModelDir::open(model_dir)?;
    dir.config
        .check_positions("prune.seq_len", settings.seq_len, false)?;
    let mut model = CausalLm::load_frozen(&dir)?;
    let (calib, info) = match &settings.calib {
        Some(path) if settings.method != PruneMethod::Magnitude => {
            let opts = crate::data::BlockOptions::evaluation(settings.seq_len);
            let data = crate::data::load_blocks(path, &dir.tokenizer()?, &opts)?;
            let blocks = calibration_blocks(&data.blocks, settings.nsamples, settings.seed)?;
            let info = CalibrationInfo {
                file: path.clone(),
                nsamples: blocks.len(),
                seq_len: settings.seq_len,
                seed: settings.seed,
            };
            (blocks, Some(info))
        }
        _ => (Blocks::owned(Vec::new(), Vec::new(), IdWidth::U16, 1), None),
    };
    let start = std::time::Instant::now();
    let (pruned, layers) = prune_model(&mut model, &calib, settings.method, pattern, progress)?;
    let report = PruneReport {
        method: settings.method,
        pattern: pattern.to_string(),
        calibration: info,
        density: 0.0,
        seconds: start.elapsed().as_secs_f64(),
        layers,
    };
    write_pruned(&dir, out, pruned, report)
}
