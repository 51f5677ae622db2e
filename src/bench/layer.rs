//! `lors bench layer`: every method on the same random sparse layer, forward + backward.
//!
//! Per method it measures the median step time as the training engine runs a layer (the
//! graph-free forward and the layer's own backward, in a run of its own, from an idle device
//! to its last kernel), the bytes the layer's op keeps in candle's graph between its forward
//! and its backward (growth across the forward, minus the output itself), and the peak
//! bytes of that recorded step above what was live before it. On the CPU these are heap bytes
//! (the counting allocator); on a GPU, bytes of the device's memory pool, which is where
//! candle's CUDA tensors live. With `verify`, every method's output and gradients on the
//! chosen device are first compared with an f64 CPU reference.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::median;
use crate::adapters::{normal, AdaptedLinear, AdapterConfig, Method, SparseLinear};
use crate::device::{gpu_memory, reset_gpu_peak, ComputeDtype, DeviceSpec};
use crate::error::{LorsError, Result};
use crate::memory;
use crate::sparsity::{magnitude_mask, Layout, Pattern};

/// Shape and settings of the benchmarked layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerBenchConfig {
    pub in_features: usize,
    pub out_features: usize,
    pub tokens: usize,
    pub rank: usize,
    pub pattern: Layout,
    pub density: f64,
    pub dtype: ComputeDtype,
    pub device: DeviceSpec,
    /// What the byte figures count: `heap` (CPU) or `gpu pool` (CUDA).
    pub memory: String,
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
    /// Dense-equivalent TFLOP/s of the layer's two big products, forward `x·Wᵀ` and input
    /// gradient `grad_y·W` (`4·tokens·out·in` per step), at the median time.
    pub tflops: f64,
    pub time_vs_lora: f64,
    pub kept_vs_lora: f64,
    pub peak_vs_lora: f64,
}

/// One method's agreement with the f64 CPU reference (largest difference over the largest
/// reference magnitude, per tensor).
#[derive(Debug, Clone, Serialize)]
pub struct VerifyResult {
    pub method: String,
    pub y: f64,
    pub grad_x: f64,
    pub grad_a: f64,
    pub grad_b: f64,
    /// The tolerance every figure is held to.
    pub tolerance: f64,
}

/// The whole benchmark result.
#[derive(Debug, Clone, Serialize)]
pub struct LayerBenchReport {
    pub config: LayerBenchConfig,
    /// Bytes of one out x in tensor in this dtype, for reading `kept_bytes`.
    pub weight_bytes: usize,
    /// The check against the CPU reference, when asked for.
    pub verify: Vec<VerifyResult>,
    pub results: Vec<MethodResult>,
}

struct Sample {
    time_ms: f64,
    kept_bytes: usize,
    peak_bytes: usize,
}

/// Bytes live now and the peak since the last reset, on the heap (CPU) or in the GPU's pool;
/// on a GPU this waits for the queued work.
fn live_and_peak(device: &Device) -> Result<(usize, usize)> {
    Ok(match gpu_memory(device)? {
        Some(g) => (g.used_bytes as usize, g.peak_bytes as usize),
        None => (memory::live_bytes(), memory::peak_bytes()),
    })
}

/// Wall time of one forward+backward as the training engine runs a layer (the graph-free
/// forward, then the layer's own backward for the output gradient `upstream`, which is the
/// gradient of `Σ y ⊙ upstream`), from an idle device to the end of its last kernel.
fn timed_step(layer: &AdaptedLinear, x: &Var, upstream: &Tensor) -> Result<f64> {
    let (device, x) = (x.device(), x.as_tensor());
    device.synchronize()?;
    let start = Instant::now();
    let y = layer.infer(x)?;
    let grads = layer.backward(x, upstream)?;
    device.synchronize()?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    drop((y, grads));
    Ok(ms)
}

/// Memory of one forward+backward, in a run of its own (reading GPU memory waits for the
/// device, which would distort a timed run).
fn memory_step(layer: &AdaptedLinear, x: &Var, upstream: &Tensor) -> Result<(usize, usize)> {
    let device = x.device();
    let (before, _) = live_and_peak(device)?;
    memory::reset_peak();
    reset_gpu_peak(device)?;
    let y = layer.forward(x.as_tensor())?;
    let (after_forward, _) = live_and_peak(device)?;
    let y_bytes = y.elem_count() * y.dtype().size_in_bytes();
    let grads = (&y * upstream)?.sum_all()?.backward()?;
    let (_, peak) = live_and_peak(device)?;
    drop((grads, y));
    Ok((
        after_forward.saturating_sub(before + y_bytes),
        peak.saturating_sub(before),
    ))
}

/// A random pruned layer per method on `device` in `dtype`, with the input `x` and the
/// upstream gradient: every method gets the same weight, mask, `x` and upstream, and a
/// nonzero `B` (SPP: column scale) so every path does real work.
struct Problem {
    layers: Vec<AdaptedLinear>,
    x: Var,
    upstream: Tensor,
}

impl Problem {
    #[allow(clippy::too_many_arguments)]
    fn new(
        (out_f, in_f, tokens): (usize, usize, usize),
        rank: usize,
        pattern: Pattern,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let cpu = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let dense = normal(
            (out_f, in_f),
            1.0 / (in_f as f64).sqrt(),
            DType::F64,
            &cpu,
            &mut rng,
        )?;
        let mask = magnitude_mask(&dense, pattern)?;
        let mut pruned = dense.flatten_all()?.to_vec1::<f64>()?;
        mask.apply(&mut pruned);
        let put = |t: Tensor| -> Result<Tensor> { Ok(t.to_device(device)?.to_dtype(dtype)?) };
        let weight = put(Tensor::from_vec(pruned, (out_f, in_f), &cpu)?)?;
        let x = Var::from_tensor(&put(normal(
            (tokens, in_f),
            1.0,
            DType::F64,
            &cpu,
            &mut rng,
        )?)?)?;
        let upstream = put(normal((tokens, out_f), 1.0, DType::F64, &cpu, &mut rng)?)?;
        let mut layers = Vec::new();
        for &method in Method::ALL {
            let base = SparseLinear::new(weight.clone(), None, Some(mask.clone()))?;
            let adapter = AdapterConfig {
                method,
                rank,
                ..AdapterConfig::default()
            };
            let layer = AdaptedLinear::new(base, &adapter, &mut rng)?;
            let [(_, a), (_, b)] = layer.trainable();
            let b_value = normal(b.dims2()?, 0.01, DType::F64, &cpu, &mut rng)?;
            layer.set_adapter(&a.as_tensor().clone(), &b_value)?;
            layers.push(layer);
        }
        Ok(Self {
            layers,
            x,
            upstream,
        })
    }

    /// Output and gradients (x, A, B) of layer `i`, as f64 on the CPU.
    fn outputs(&self, i: usize) -> Result<[Tensor; 4]> {
        let layer = &self.layers[i];
        let y = layer.forward(self.x.as_tensor())?;
        let grads = (&y * &self.upstream)?.sum_all()?.backward()?;
        let [(_, a), (_, b)] = layer.trainable();
        let get = |v: &Tensor| -> Result<Tensor> {
            let g = grads.get(v).ok_or_else(|| {
                LorsError::invalid(
                    "verify",
                    format!("{} gave no gradient", layer.config().method),
                )
            })?;
            Ok(g.to_device(&Device::Cpu)?.to_dtype(DType::F64)?)
        };
        Ok([
            y.to_device(&Device::Cpu)?.to_dtype(DType::F64)?,
            get(self.x.as_tensor())?,
            get(a.as_tensor())?,
            get(b.as_tensor())?,
        ])
    }
}

/// Compare every method on `device` in `dtype` with the same problem in f64 on the CPU, on a
/// small layer (96 x 128, 64 tokens, rank 8), and check that the masked methods' merged
/// weights keep the zero pattern there. Tolerances, relative to the largest reference
/// magnitude: 1e-4 for f32 (products of 128 terms in f32 against f64), 3e-2 for bf16 (8-bit
/// mantissas: inputs, adapters and outputs rounded to bf16, about 4e-3 each).
pub fn verify(pattern: Pattern, dtype: DType, device: &Device) -> Result<Vec<VerifyResult>> {
    let dims = (96, 128, 64);
    let reference = Problem::new(dims, 8, pattern, DType::F64, &Device::Cpu, 7)?;
    let tested = Problem::new(dims, 8, pattern, dtype, device, 7)?;
    let tolerance = if dtype == DType::BF16 { 3e-2 } else { 1e-4 };
    let mut out = Vec::new();
    for (i, layer) in tested.layers.iter().enumerate() {
        let method = layer.config().method;
        let want = reference.outputs(i)?;
        let got = tested.outputs(i)?;
        let mut rel = [0f64; 4];
        for (r, (w, g)) in rel.iter_mut().zip(want.iter().zip(&got)) {
            let scale = w
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?
                .max(f64::MIN_POSITIVE);
            *r = (w - g)?.abs()?.max_all()?.to_scalar::<f64>()? / scale;
        }
        let result = VerifyResult {
            method: method.to_string(),
            y: rel[0],
            grad_x: rel[1],
            grad_a: rel[2],
            grad_b: rel[3],
            tolerance,
        };
        if rel.iter().any(|r| r.is_nan() || *r > tolerance) {
            return Err(LorsError::invalid(
                "verify",
                format!("{method} on {device:?} disagrees with the f64 CPU reference: {result:?}"),
            ));
        }
        if method.is_masked() {
            // merge() fails unless the merged weight is nonzero exactly where M keeps one.
            layer.merge()?;
        }
        out.push(result);
    }
    Ok(out)
}

/// Each method's median time, throughput and largest memory over its `samples`, and the
/// ratios against LoRA's.
fn summarise(
    config: &LayerBenchConfig,
    layers: &[AdaptedLinear],
    samples: &[Vec<Sample>],
) -> Vec<MethodResult> {
    let flops = 4.0 * (config.tokens * config.out_features * config.in_features) as f64;
    let mut results: Vec<MethodResult> = layers
        .iter()
        .zip(samples)
        .map(|(layer, s)| {
            let times: Vec<f64> = s.iter().map(|s| s.time_ms).collect();
            let median_ms = median(&times);
            MethodResult {
                method: layer.config().method.to_string(),
                tflops: flops / (median_ms * 1e-3) / 1e12,
                median_ms,
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
    results
}

/// Run the benchmark on `device`: `warmup` unmeasured rounds, then `config.runs` measured
/// rounds, each round running every method once in turn.
pub fn run(
    config: &LayerBenchConfig,
    pattern: Pattern,
    dtype: DType,
    device: &Device,
    verify_first: bool,
) -> Result<LayerBenchReport> {
    if config.runs == 0 {
        return Err(LorsError::invalid("runs", "must be at least 1"));
    }
    let verified = if verify_first {
        verify(pattern, dtype, device)?
    } else {
        Vec::new()
    };
    let (out_f, in_f) = (config.out_features, config.in_features);
    let Problem {
        layers,
        x,
        upstream,
    } = Problem::new(
        (out_f, in_f, config.tokens),
        config.rank,
        pattern,
        dtype,
        device,
        config.seed,
    )?;

    let warmup = 1;
    let mut samples: Vec<Vec<Sample>> = layers.iter().map(|_| Vec::new()).collect();
    for round in 0..warmup + config.runs {
        for (layer, out) in layers.iter().zip(samples.iter_mut()) {
            let time_ms = timed_step(layer, &x, &upstream)?;
            let (kept_bytes, peak_bytes) = memory_step(layer, &x, &upstream)?;
            if round >= warmup {
                out.push(Sample {
                    time_ms,
                    kept_bytes,
                    peak_bytes,
                });
            }
        }
    }

    let results = summarise(config, &layers, &samples);
    Ok(LayerBenchReport {
        config: config.clone(),
        weight_bytes: out_f * in_f * dtype.size_in_bytes(),
        verify: verified,
        results,
    })
}

/// The report as a text table.
pub fn render_table(report: &LayerBenchReport) -> String {
    let c = &report.config;
    let mut s = format!(
        "layer {}x{} ({} pattern, density {:.2}), {} tokens, rank {}, {} on {}, {} threads, \
         median of {} runs\n(one out x in weight = {}; bytes are {} bytes; TFLOP/s counts \
         x·Wᵀ and grad_y·W, 4·tokens·out·in)\n\n",
        c.out_features,
        c.in_features,
        c.pattern,
        c.density,
        c.tokens,
        c.rank,
        c.dtype,
        c.device,
        c.threads,
        c.runs,
        memory::human_bytes(report.weight_bytes as f64),
        c.memory,
    );
    if !report.verify.is_empty() {
        s.push_str(&format!(
            "check against the f64 CPU reference (max |diff| / max |ref|, tolerance {:.0e}):\n",
            report.verify[0].tolerance
        ));
        for v in &report.verify {
            s.push_str(&format!(
                "  {:<11} y {:.1e}  grad_x {:.1e}  grad_A {:.1e}  grad_B {:.1e}\n",
                v.method, v.y, v.grad_x, v.grad_a, v.grad_b
            ));
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "{:<11} {:>12} {:>8} {:>9} {:>14} {:>8} {:>12} {:>8}\n",
        "method", "fwd+bwd ms", "x lora", "TFLOP/s", "kept fwd->bwd", "x lora", "peak", "x lora"
    ));
    for r in &report.results {
        s.push_str(&format!(
            "{:<11} {:>12.2} {:>8.2} {:>9.1} {:>14} {:>8.2} {:>12} {:>8.2}\n",
            r.method,
            r.median_ms,
            r.time_vs_lora,
            r.tflops,
            memory::human_bytes(r.kept_bytes as f64),
            r.kept_vs_lora,
            memory::human_bytes(r.peak_bytes as f64),
            r.peak_vs_lora,
        ));
    }
    s
}
