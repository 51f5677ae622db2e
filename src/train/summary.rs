//! What a run achieved, read from its run directory: the rows of `lors report`'s run table,
//! of a sweep's trial table, and the workbench's run list.

use std::path::Path;

use super::{MetricRow, Profile, RunDir};

/// What one run achieved, read from its directory (what is not there yet stays `None`); the
/// workbench keeps one per watched run, fed row by row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunSummary {
    pub name: String,
    /// The method with its zoo options, rank and learning rate, from its profile.
    pub setup: Option<String>,
    pub state: Option<crate::train::RunState>,
    /// Largest step peak of heap memory, bytes.
    pub peak_bytes: Option<usize>,
    /// Whether every adapted layer's merged weight kept the base's zeros, at the last check.
    pub zeros_kept: Option<bool>,
    pub seconds: Option<f64>,
    /// (step, train loss) and (step, validation loss).
    pub train_curve: Vec<(usize, f64)>,
    pub eval_curve: Vec<(usize, f64)>,
    /// Tokens/s of every step.
    speeds: Vec<f64>,
}

impl RunSummary {
    /// An empty summary of the run in `dir` with `profile`.
    pub fn new(dir: &Path, profile: Option<&Profile>) -> Self {
        RunSummary {
            name: dir
                .file_name()
                .map_or("run".into(), |n| n.to_string_lossy().into_owned()),
            setup: profile.map(|p| {
                format!(
                    "{} r{} lr {:.1e}",
                    p.method_label(),
                    p.adapter.rank,
                    p.optim.lr
                )
            }),
            ..Self::default()
        }
    }

    /// The summary of the run in `dir`.
    pub fn read(dir: &Path) -> Self {
        let run = RunDir::at(dir);
        let profile = Profile::load(&run.profile_path(), &[]).ok();
        let mut s = Self::new(dir, profile.as_ref());
        for row in run.read_metrics().unwrap_or_default() {
            s.add(&row);
        }
        if let Ok(status) = run.read_status() {
            s.set_status(&status);
        }
        s
    }

    /// Take one metrics row into the curves and outcomes.
    pub fn add(&mut self, row: &MetricRow) {
        match row {
            MetricRow::Train {
                step,
                loss,
                tokens_per_s,
                step_peak_bytes,
                ..
            } => {
                self.train_curve.push((*step, *loss));
                self.speeds.push(*tokens_per_s);
                self.peak_bytes = Some(self.peak_bytes.unwrap_or(0).max(*step_peak_bytes));
            }
            MetricRow::Eval {
                step, eval_loss, ..
            } => self.eval_curve.push((*step, *eval_loss)),
            MetricRow::Sparsity { layers, .. } => {
                self.zeros_kept = Some(layers.iter().all(|l| l.pattern_preserved));
            }
            _ => {}
        }
    }

    /// Forget the metrics (their file was rewritten by a resume), keeping the status.
    pub fn clear_metrics(&mut self) {
        *self = Self {
            name: std::mem::take(&mut self.name),
            setup: self.setup.take(),
            state: self.state,
            seconds: self.seconds,
            ..Self::default()
        };
    }

    /// Take the run's state and time from its status.
    pub fn set_status(&mut self, status: &crate::train::Status) {
        self.state = Some(status.state);
        self.seconds = Some(status.elapsed_s);
    }

    pub fn best_eval_loss(&self) -> Option<f64> {
        self.eval_curve.iter().map(|p| p.1).min_by(f64::total_cmp)
    }

    pub fn last_train_loss(&self) -> Option<f64> {
        self.train_curve.last().map(|p| p.1)
    }

    /// Median tokens/s over the steps.
    pub fn tokens_per_s(&self) -> Option<f64> {
        let mut speeds = self.speeds.clone();
        speeds.sort_by(f64::total_cmp);
        speeds.get(speeds.len() / 2).copied()
    }

    /// The outcome cells of a table row, in the order of [`OUTCOME_COLUMNS`].
    pub fn outcome_cells(&self) -> String {
        let best = self.best_eval_loss();
        [
            cell(best, 4),
            cell(best.map(f64::exp), 3),
            cell(self.last_train_loss(), 4),
            cell(self.tokens_per_s(), 0),
            cell(self.peak_bytes.map(|b| b as f64 / (1 << 20) as f64), 1),
            self.zeros_kept
                .map_or("-", |k| if k { "yes" } else { "NO" })
                .to_string(),
            cell(self.seconds, 0),
        ]
        .join(" | ")
    }
}

/// The outcome columns shared by the run and trial tables.
pub const OUTCOME_COLUMNS: [&str; 7] = [
    "best val loss",
    "val ppl",
    "last train loss",
    "tokens/s",
    "step peak MiB",
    "zeros kept",
    "time s",
];

/// A Markdown table header: `leading` columns, then the outcome columns.
pub fn table_header(leading: &[&str]) -> String {
    let columns: Vec<&str> = leading.iter().copied().chain(OUTCOME_COLUMNS).collect();
    format!(
        "| {} |\n|{}\n",
        columns.join(" | "),
        "---|".repeat(columns.len())
    )
}

/// `value` with `digits` decimals, or `-`.
fn cell(value: Option<f64>, digits: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.digits$}"))
}
