//! `lors bench train`: the same short training with each method, tokens/s and peak memory
//! side by side, each as a ratio to `lora`.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde::Serialize;

use super::median;
use crate::adapters::{Init, Method};
use crate::error::Result;
use crate::memory;
use crate::train::{self, Event, MetricRow, Profile, RunDir};

/// Measurements of one method's run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBenchResult {
    pub method: String,
    /// Median tokens/s over the measured steps.
    pub tokens_per_s: f64,
    /// Largest heap peak of a measured step.
    pub peak_bytes: usize,
    /// Largest peak above the step's starting heap (activations and gradients).
    pub step_peak_bytes: usize,
    /// Largest GPU memory-pool peak of a measured step (training on a GPU only).
    pub gpu_peak_bytes: Option<u64>,
    /// Dense-equivalent TFLOP/s of the linear layers, forward and input gradient
    /// (`4 · linear weights · tokens/s`), at the median tokens/s.
    pub linear_tflops: f64,
    pub tokens_vs_lora: f64,
    pub peak_vs_lora: f64,
    pub step_peak_vs_lora: f64,
}

/// What one measured step reported.
#[derive(Debug, Clone)]
struct StepRow {
    tokens_per_s: f64,
    peak_bytes: usize,
    step_peak_bytes: usize,
    gpu_peak_bytes: Option<u64>,
}

/// Run `steps` optimiser steps per method (the first `warmup` not measured), into run
/// directories under `out`, in two rounds: the methods in order, then in reverse. The first
/// run of a process pays for faulting in its heap (measured: 15-25% fewer tokens/s than the
/// same method run second), so each method's figures are medians over both positions.
pub fn run(
    base: &Profile,
    methods: &[Method],
    steps: usize,
    warmup: usize,
    out: &Path,
    on_method: &mut dyn FnMut(Method),
) -> Result<Vec<TrainBenchResult>> {
    let linear_parameters = crate::model::ModelDir::open(&base.model.path)?
        .config
        .linear_parameters();
    let mut rows_of: Vec<Vec<StepRow>> = vec![Vec::new(); methods.len()];
    let order: Vec<usize> = (0..methods.len()).chain((0..methods.len()).rev()).collect();
    for (round, &m) in order.iter().enumerate() {
        let method = methods[m];
        on_method(method);
        let p = bench_profile(base, method, warmup + steps);
        let round = round / methods.len();
        let run = RunDir::create(&out.join(format!("{}-{round}", method.name())), &p)?;
        let rows = &mut rows_of[m];
        train::train(
            &p,
            &run,
            train::Start::Fresh,
            &AtomicBool::new(false),
            &mut |e| {
                if let Event::Metric(MetricRow::Train {
                    step,
                    tokens_per_s,
                    peak_bytes,
                    step_peak_bytes,
                    gpu,
                    ..
                }) = e
                {
                    if *step > warmup {
                        rows.push(StepRow {
                            tokens_per_s: *tokens_per_s,
                            peak_bytes: *peak_bytes,
                            step_peak_bytes: *step_peak_bytes,
                            gpu_peak_bytes: gpu.map(|g| g.peak_bytes),
                        });
                    }
                }
            },
        )?;
    }
    Ok(summarize(methods, &rows_of, linear_parameters))
}

/// `base` for one method's measured run: `steps` steps, nothing but training (no validation,
/// checkpoints, merge or tasks); spp starts from the standard init (no gradient init there).
fn bench_profile(base: &Profile, method: Method, steps: usize) -> Profile {
    let mut p = base.clone();
    p.adapter.method = method;
    if method == Method::Spp && p.adapter.init == Init::Gradient {
        p.adapter.init = Init::Standard;
    }
    p.train.max_steps = Some(steps);
    p.train.epochs = None;
    p.train.eval_every = 0;
    p.train.save_every = 0;
    p.train.merge_at_end = false;
    p.data.valid = None;
    p.data.valid_fraction = 0.0;
    p.eval = None;
    p
}

/// Each method's median tokens/s and peak memory over its measured steps, as ratios to
/// `lora` when it was measured.
fn summarize(
    methods: &[Method],
    rows_of: &[Vec<StepRow>],
    linear_parameters: usize,
) -> Vec<TrainBenchResult> {
    let mut results = Vec::new();
    for (method, rows) in methods.iter().zip(rows_of) {
        let tps: Vec<f64> = rows.iter().map(|r| r.tokens_per_s).collect();
        let tokens_per_s = median(&tps);
        results.push(TrainBenchResult {
            method: method.to_string(),
            tokens_per_s,
            peak_bytes: rows.iter().map(|r| r.peak_bytes).max().unwrap_or(0),
            step_peak_bytes: rows.iter().map(|r| r.step_peak_bytes).max().unwrap_or(0),
            gpu_peak_bytes: rows.iter().filter_map(|r| r.gpu_peak_bytes).max(),
            linear_tflops: 4.0 * linear_parameters as f64 * tokens_per_s / 1e12,
            tokens_vs_lora: f64::NAN,
            peak_vs_lora: f64::NAN,
            step_peak_vs_lora: f64::NAN,
        });
    }
    if let Some(lora) = results.iter().find(|r| r.method == "lora").cloned() {
        for r in &mut results {
            r.tokens_vs_lora = r.tokens_per_s / lora.tokens_per_s;
            r.peak_vs_lora = r.peak_bytes as f64 / lora.peak_bytes.max(1) as f64;
            r.step_peak_vs_lora = r.step_peak_bytes as f64 / lora.step_peak_bytes.max(1) as f64;
        }
    }
    results
}

/// A ratio to `lora` with two decimals, or `-` when `lora` was not measured.
fn ratio_text(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".into()
    }
}

/// Results as a text table (with a GPU peak column when the runs were on a GPU).
pub fn render_table(results: &[TrainBenchResult]) -> String {
    let gpu = results.iter().any(|r| r.gpu_peak_bytes.is_some());
    let mut s = format!(
        "{:<11} {:>10} {:>8} {:>13} {:>12} {:>8} {:>14} {:>8}",
        "method",
        "tokens/s",
        "x lora",
        "lin. TFLOP/s",
        "peak heap",
        "x lora",
        "step peak",
        "x lora"
    );
    if gpu {
        s.push_str(&format!(" {:>12} {:>8}", "GPU peak", "x lora"));
    }
    s.push('\n');
    let lora_gpu = results
        .iter()
        .find(|r| r.method == "lora")
        .and_then(|r| r.gpu_peak_bytes);
    for r in results {
        s.push_str(&format!(
            "{:<11} {:>10.1} {:>8} {:>13.1} {:>12} {:>8} {:>14} {:>8}",
            r.method,
            r.tokens_per_s,
            ratio_text(r.tokens_vs_lora),
            r.linear_tflops,
            memory::human_bytes(r.peak_bytes as f64),
            ratio_text(r.peak_vs_lora),
            memory::human_bytes(r.step_peak_bytes as f64),
            ratio_text(r.step_peak_vs_lora),
        ));
        if gpu {
            let peak = r.gpu_peak_bytes.unwrap_or(0);
            let ratio = lora_gpu.map_or(f64::NAN, |l| peak as f64 / l.max(1) as f64);
            s.push_str(&format!(
                " {:>12} {:>8}",
                memory::human_bytes(peak as f64),
                ratio_text(ratio)
            ));
        }
        s.push('\n');
    }
    s
}
