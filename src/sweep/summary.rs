//! The comparison of a sweep's trials: one row per trial with its swept values, state and
//! outcomes read from its run directory, best validation loss first.

use super::runner::{SweepState, TrialRecord, TrialState};
use crate::train::summary::{table_header, RunSummary};

/// What one trial achieved.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialRow {
    pub index: usize,
    pub label: String,
    pub state: TrialState,
    pub run: RunSummary,
}

impl TrialRow {
    /// The row of `record`, from its run directory.
    pub fn read(record: &TrialRecord) -> Self {
        let run = RunSummary::read(&record.run_dir);
        Self {
            index: record.trial.index,
            label: record.trial.label(),
            state: record.current_state(run.state),
            run,
        }
    }
}

/// Every trial's row, best validation loss first (trials without one last, by index).
pub fn rows(state: &SweepState) -> Vec<TrialRow> {
    let mut rows: Vec<TrialRow> = state.trials.iter().map(TrialRow::read).collect();
    rows.sort_by(
        |a, b| match (a.run.best_eval_loss(), b.run.best_eval_loss()) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.index.cmp(&b.index),
        },
    );
    rows
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[TrialRow]) -> String {
    let mut out = table_header(&["trial", "values", "state"]);
    for r in rows {
        out.push_str(&format!(
            "| t{:03} | {} | {} | {} |\n",
            r.index,
            r.label,
            r.state,
            r.run.outcome_cells()
        ));
    }
    out
}

/// A swept value as a number (to plot it against an outcome), if it is one.
pub fn numeric(v: &toml::Value) -> Option<f64> {
    v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
}

/// Whether values read better on a log axis: all positive and spanning more than a decade
/// (learning rates).
pub fn log_axis(xs: &[f64]) -> bool {
    let (lo, hi) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| {
            (l.min(*x), h.max(*x))
        });
    lo > 0.0 && hi / lo > 10.0
}
