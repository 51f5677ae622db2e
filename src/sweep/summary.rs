//! The comparison of a sweep's trials: one row per trial with its swept values, state and
//! outcomes read from its run directory, sortable by best validation loss.

use super::runner::{SweepState, TrialRecord, TrialState};
use crate::train::{MetricRow, RunDir};

/// What one trial achieved.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialRow {
    pub index: usize,
    pub label: String,
    pub state: TrialState,
    pub best_eval_loss: Option<f64>,
    pub last_train_loss: Option<f64>,
    /// Median over its steps.
    pub tokens_per_s: Option<f64>,
    /// Largest step peak of heap memory, bytes.
    pub peak_bytes: Option<usize>,
    /// Whether every adapted layer's merged weight kept the base's zeros, at the last check.
    pub zeros_kept: Option<bool>,
    pub seconds: Option<f64>,
}

impl TrialRow {
    /// The row of `record`, from its run's metrics and status (absent ones stay `None`).
    pub fn read(record: &TrialRecord) -> Self {
        let run = RunDir {
            path: record.run_dir.clone(),
        };
        let metrics = run.read_metrics().unwrap_or_default();
        let mut speeds = Vec::new();
        let (mut last_train_loss, mut peak_bytes, mut zeros_kept) = (None, None, None);
        for row in &metrics {
            match row {
                MetricRow::Train {
                    loss,
                    tokens_per_s,
                    step_peak_bytes,
                    ..
                } => {
                    last_train_loss = Some(*loss);
                    speeds.push(*tokens_per_s);
                    peak_bytes = Some(peak_bytes.unwrap_or(0).max(*step_peak_bytes));
                }
                MetricRow::Sparsity { layers, .. } => {
                    zeros_kept = Some(layers.iter().all(|l| l.pattern_preserved));
                }
                _ => {}
            }
        }
        speeds.sort_by(f64::total_cmp);
        Self {
            index: record.trial.index,
            label: record.trial.label(),
            state: record.state,
            best_eval_loss: record.evals.iter().map(|e| e.1).min_by(f64::total_cmp),
            last_train_loss,
            tokens_per_s: speeds.get(speeds.len() / 2).copied(),
            peak_bytes,
            zeros_kept,
            seconds: run.read_status().ok().map(|s| s.elapsed_s),
        }
    }
}

/// Every trial's row, best validation loss first (trials without one last, by index).
pub fn rows(state: &SweepState) -> Vec<TrialRow> {
    let mut rows: Vec<TrialRow> = state.trials.iter().map(TrialRow::read).collect();
    rows.sort_by(|a, b| match (a.best_eval_loss, b.best_eval_loss) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.index.cmp(&b.index),
    });
    rows
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[TrialRow]) -> String {
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    let mut out = String::from(
        "| trial | values | state | best val loss | val ppl | last train loss | tokens/s | \
         step peak MiB | zeros kept | time s |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| t{:03} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.index,
            r.label,
            r.state,
            opt(r.best_eval_loss, 4),
            opt(r.best_eval_loss.map(f64::exp), 3),
            opt(r.last_train_loss, 4),
            opt(r.tokens_per_s, 0),
            opt(r.peak_bytes.map(|b| b as f64 / (1 << 20) as f64), 1),
            r.zeros_kept.map_or("-", |k| if k { "yes" } else { "NO" }),
            opt(r.seconds, 0),
        ));
    }
    out
}
