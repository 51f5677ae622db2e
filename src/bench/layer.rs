//! `lors bench layer`: every method on the same random sparse layer, forward + backward.
//!
//! Per method it measures the median step time, the bytes the layer keeps alive between its
//! forward and its backward (heap growth across the forward, minus the output itself), and
//! the peak heap bytes of the step above what was live before it.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::median;
use crate::adapters::{normal, AdaptedLinear, AdapterConfig, Method, SparseLinear};
use crate::error::{LorsError, Result};
use crate::memory;
use crate::sparsity::{magnitude_mask, Pattern};

/// Shape and settings of the benchmarked layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerBenchConfig {
    pub in_features: usize,
    pub out_features: usize,
    pub tokens: usize,
    pub rank: usize,
    pub pattern: String,
    pub density: f64,
    pub dtype: String,
    pub runs: usize,
    pub threads: usize,
    pub seed: u64,
}

/// Measurements of one method.
#[derive(Debug, Clone, Serialize)]
pub struct MethodResult {
    pub method: String,
    /// Forward+backward times of every measured run, in milliseconds.
    pub times_ms: Vec<f64>,
    pub median_ms: f64,
    /// Heap bytes alive after forward that were not before, excluding the output `y`.
    pub kept_bytes: usize,
    /// Peak heap bytes during the step above the bytes live before it.
    pub peak_bytes: usize,
    pub time_vs_lora: f64,
    pub kept_vs_lora: f64,
    pub peak_vs_lora: f64,
}

/// The whole benchmark result.
#[derive(Debug, Clone, Serialize)]
pub struct LayerBenchReport {
    pub config: LayerBenchConfig,
    /// Bytes of one out x in tensor in this dtype, for reading `kept_bytes`.
    pub weight_bytes: usize,
    pub results: Vec<MethodResult>,
}

struct Sample {
    time_ms: f64,
    kept_bytes: usize,
    peak_bytes: usize,
}

/// Parse the dtype names the CLI accepts.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "f64" => Ok(DType::F64),
        "bf16" => Err(LorsError::UnsupportedDType {
            dtype: DType::BF16,
            what: "matmul on the CPU (candle's CPU backend has no bf16 matmul; use f32 here \
                   and bf16 on CUDA)"
                .into(),
        }),
        other => Err(LorsError::invalid(
            "dtype",
            format!("`{other}` is not f32, f16 or f64"),
        )),
    }
}

/// Measure one forward+backward of `layer`; `x` is a variable so `grad_x` is computed too.
fn step(layer: &AdaptedLinear, x: &Var, upstream: &Tensor) -> Result<Sample> {
    let before = memory::live_bytes();
    memory::reset_peak();
    let start = Instant::now();
    let y = layer.forward(x.as_tensor())?;
    let after_forward = memory::live_bytes();
    let y_bytes = y.elem_count() * y.dtype().size_in_bytes();
    let loss = (&y * upstream)?.sum_all()?;
    let grads = loss.backward()?;
    let time_ms = start.elapsed().as_secs_f64() * 1e3;
    let peak_bytes = memory::peak_bytes().saturating_sub(before);
    for (name, var) in layer.trainable() {
        if grads.get(var).is_none() {
            return Err(LorsError::invalid(
                "bench",
                format!("{} produced no gradient for {name}", layer.config().method),
            ));
        }
    }
    drop((grads, loss, y));
    Ok(Sample {
        time_ms,
        kept_bytes: after_forward.saturating_sub(before + y_bytes),
        peak_bytes,
    })
}

/// Run the benchmark: `warmup` unmeasured rounds, then `config.runs` measured rounds, each
/// round running every method once in turn.
pub fn run(config: &LayerBenchConfig, pattern: Pattern, dtype: DType) -> Result<LayerBenchReport> {
    if config.runs == 0 {
        return Err(LorsError::invalid("runs", "must be at least 1"));
    }
    let device = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let (out_f, in_f) = (config.out_features, config.in_features);
    let dense = normal(
        (out_f, in_f),
        1.0 / (in_f as f64).sqrt(),
        DType::F64,
        &device,
        &mut rng,
    )?;
    let mask = magnitude_mask(&dense, pattern)?;
    let mut pruned = dense.flatten_all()?.to_vec1::<f64>()?;
    mask.apply(&mut pruned);
    let weight = Tensor::from_vec(pruned, (out_f, in_f), &device)?.to_dtype(dtype)?;
    let x = Var::from_tensor(
        &normal((config.tokens, in_f), 1.0, DType::F64, &device, &mut rng)?.to_dtype(dtype)?,
    )?;
    let upstream =
        normal((config.tokens, out_f), 1.0, DType::F64, &device, &mut rng)?.to_dtype(dtype)?;

    let mut layers = Vec::new();
    for method in Method::ALL {
        let base = SparseLinear::new(weight.clone(), None, Some(mask.clone()))?;
        let adapter = AdapterConfig {
            method,
            rank: config.rank,
            ..AdapterConfig::default()
        };
        let layer = AdaptedLinear::new(base, &adapter, &mut rng)?;
        // A nonzero B (SPP: column scale), so every path does real work.
        let [(_, a), (_, b)] = layer.trainable();
        let b_value = normal(b.dims2()?, 0.01, DType::F64, &device, &mut rng)?;
        layer.set_adapter(&a.as_tensor().clone(), &b_value)?;
        layers.push(layer);
    }

    let warmup = 1;
    let mut samples: Vec<Vec<Sample>> = layers.iter().map(|_| Vec::new()).collect();
    for round in 0..warmup + config.runs {
        for (layer, out) in layers.iter().zip(samples.iter_mut()) {
            let s = step(layer, &x, &upstream)?;
            if round >= warmup {
                out.push(s);
            }
        }
    }

    let mut results: Vec<MethodResult> = layers
        .iter()
        .zip(&samples)
        .map(|(layer, s)| {
            let times: Vec<f64> = s.iter().map(|s| s.time_ms).collect();
            MethodResult {
                method: layer.config().method.to_string(),
                median_ms: median(&times),
                times_ms: times,
                kept_bytes: s.iter().map(|s| s.kept_bytes).max().unwrap_or(0),
                peak_bytes: s.iter().map(|s| s.peak_bytes).max().unwrap_or(0),
                time_vs_lora: f64::NAN,
                kept_vs_lora: f64::NAN,
                peak_vs_lora: f64::NAN,
            }
        })
        .collect();
    let lora = results
        .iter()
        .find(|r| r.method == Method::Lora.name())
        .cloned()
        .expect("lora is benchmarked");
    for r in &mut results {
        r.time_vs_lora = r.median_ms / lora.median_ms;
        r.kept_vs_lora = r.kept_bytes as f64 / lora.kept_bytes.max(1) as f64;
        r.peak_vs_lora = r.peak_bytes as f64 / lora.peak_bytes.max(1) as f64;
    }
    Ok(LayerBenchReport {
        config: config.clone(),
        weight_bytes: out_f * in_f * dtype.size_in_bytes(),
        results,
    })
}

/// The report as a text table.
pub fn render_table(report: &LayerBenchReport) -> String {
    let c = &report.config;
    let mut s = format!(
        "layer {}x{} ({} pattern, density {:.2}), {} tokens, rank {}, {}, {} threads, median of {} runs\n\
         (one out x in weight = {})\n\n",
        c.out_features,
        c.in_features,
        c.pattern,
        c.density,
        c.tokens,
        c.rank,
        c.dtype,
        c.threads,
        c.runs,
        memory::human_bytes(report.weight_bytes as f64),
    );
    s.push_str(&format!(
        "{:<11} {:>12} {:>8} {:>14} {:>8} {:>12} {:>8}\n",
        "method", "fwd+bwd ms", "x lora", "kept fwd->bwd", "x lora", "peak", "x lora"
    ));
    for r in &report.results {
        s.push_str(&format!(
            "{:<11} {:>12.1} {:>8.2} {:>14} {:>8.2} {:>12} {:>8.2}\n",
            r.method,
            r.median_ms,
            r.time_vs_lora,
            memory::human_bytes(r.kept_bytes as f64),
            r.kept_vs_lora,
            memory::human_bytes(r.peak_bytes as f64),
            r.peak_vs_lora,
        ));
    }
    s
}
