//! Shareable results: what a run achieved ([`RunSummary`], also the rows of a sweep's table),
//! and `lors report`, which writes a Markdown table with SVG charts (plotters) for people who
//! read results outside the terminal: validation and smoothed training loss curves of every
//! run, and for a sweep the best validation loss against each numeric swept value.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::{LorsError, Result};
use crate::io::write_atomic;
use crate::sweep::{summary, Sweep};
use crate::train::{MetricRow, Profile, RunDir};

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
        let run = RunDir {
            path: dir.to_path_buf(),
        };
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

/// The files a report wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub charts: Vec<PathBuf>,
}

/// Write the report of `inputs` (run directories and sweep directories) into `out`:
/// `report.md` and its charts. Training curves are smoothed by an exponential moving
/// average with weight `smoothing` on the past (0: raw).
pub fn write_report(inputs: &[PathBuf], out: &Path, smoothing: f64) -> Result<ReportFiles> {
    if !(0.0..1.0).contains(&smoothing) {
        return Err(LorsError::invalid(
            "--smoothing",
            format!("{smoothing} must be in [0, 1)"),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| LorsError::io(out, e))?;
    let mut md = String::from("# lors report\n");
    let mut charts = Vec::new();
    let mut runs = Vec::new();
    for input in inputs {
        if input.join("sweep.toml").is_file() {
            let sweep = Sweep::open(input)?;
            let name = file_name(input);
            md.push_str(&format!("\n## Sweep `{name}`\n\n"));
            md.push_str(&summary::markdown(&summary::rows(&sweep.state)));
            for chart in value_charts(&sweep, out, &name)? {
                md.push_str(&format!("\n![{0}]({0})\n", file_name(&chart)));
                charts.push(chart);
            }
            runs.extend(
                sweep
                    .state
                    .trials
                    .iter()
                    .map(|t| RunSummary::read(&t.run_dir)),
            );
        } else if input.join("profile.toml").is_file() {
            runs.push(RunSummary::read(input));
        } else {
            return Err(LorsError::parse(
                input,
                "neither a run nor a sweep directory",
            ));
        }
    }
    md.push_str("\n## Runs\n\n");
    md.push_str(&runs_table(&runs));
    let curves = out.join("loss.svg");
    loss_chart(&curves, &runs, smoothing)?;
    md.push_str(&format!(
        "\n![loss curves](loss.svg)\n\nValidation loss (points and lines) and training loss \
         (thin, EMA {smoothing}) per step.\n"
    ));
    charts.push(curves);
    let markdown = out.join("report.md");
    write_atomic(&markdown, md.as_bytes())?;
    Ok(ReportFiles { markdown, charts })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or("report".into(), |n| n.to_string_lossy().into_owned())
}

/// The Markdown table of `runs`.
fn runs_table(runs: &[RunSummary]) -> String {
    let mut t = table_header(&["run", "setup", "state"]);
    for r in runs {
        t.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.name,
            r.setup.as_deref().unwrap_or("-"),
            r.state.map_or("-".into(), |s| s.to_string()),
            r.outcome_cells(),
        ));
    }
    t
}

/// `points` smoothed by an exponential moving average with weight `w` on the past.
pub fn ema(points: &[(usize, f64)], w: f64) -> Vec<(f64, f64)> {
    let mut acc = None;
    points
        .iter()
        .map(|&(x, y)| {
            let s = acc.map_or(y, |a: f64| w * a + (1.0 - w) * y);
            acc = Some(s);
            (x as f64, s)
        })
        .collect()
}

fn chart_error(path: &Path, e: impl std::fmt::Display) -> LorsError {
    LorsError::io(path, std::io::Error::other(e.to_string()))
}

/// The range of `values` with a margin, never empty.
fn padded(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.05).max(1e-6);
    lo - pad..hi + pad
}

/// Validation curves (lines with points) and smoothed training curves (thin) of every run.
fn loss_chart(path: &Path, runs: &[RunSummary], smoothing: f64) -> Result<()> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_error(path, e))?;
    let train: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| ema(&r.train_curve, smoothing))
        .collect();
    let xs = train.iter().flatten().map(|p| p.0).chain([0.0]);
    let ys = train
        .iter()
        .flatten()
        .map(|p| p.1)
        .chain(runs.iter().flat_map(|r| r.eval_curve.iter().map(|p| p.1)));
    let mut chart = ChartBuilder::on(&root)
        .caption("loss per step", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(padded(xs), padded(ys))
        .map_err(|e| chart_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()
        .map_err(|e| chart_error(path, e))?;
    for (i, (run, train)) in runs.iter().zip(&train).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                train.iter().copied(),
                color.mix(0.5).stroke_width(1),
            ))
            .map_err(|e| chart_error(path, e))?;
        let eval: Vec<(f64, f64)> = run.eval_curve.iter().map(|&(s, l)| (s as f64, l)).collect();
        chart
            .draw_series(LineSeries::new(eval.iter().copied(), color.stroke_width(2)))
            .map_err(|e| chart_error(path, e))?
            .label(run.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(eval.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| chart_error(path, e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| chart_error(path, e))?;
    root.present().map_err(|e| chart_error(path, e))
}

/// For each numeric swept key: best validation loss per trial against its value (log10 of it
/// when the values span more than a factor of 10), as `<sweep>-<key>.svg` in `out`.
fn value_charts(sweep: &Sweep, out: &Path, name: &str) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (key, _) in &sweep.spec.axes {
        let points: Vec<(f64, f64)> = sweep
            .state
            .trials
            .iter()
            .filter_map(|t| {
                let x = summary::numeric(t.trial.values.get(key)?)?;
                let best = t.evals.iter().map(|e| e.1).min_by(f64::total_cmp)?;
                Some((x, best))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let path = out.join(format!("{name}-{key}.svg"));
        value_chart(&path, key, &points)?;
        written.push(path);
    }
    Ok(written)
}

fn value_chart(path: &Path, key: &str, points: &[(f64, f64)]) -> Result<()> {
    // Values over more than a decade (learning rates) are plotted by their log10.
    let log = summary::log_axis(&points.iter().map(|p| p.0).collect::<Vec<_>>());
    let x_desc = if log {
        format!("log10 {key}")
    } else {
        key.to_string()
    };
    let points: Vec<(f64, f64)> = points
        .iter()
        .map(|&(x, y)| (if log { x.log10() } else { x }, y))
        .collect();
    let root = SVGBackend::new(path, (640, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("best validation loss against {key}"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(
            padded(points.iter().map(|p| p.0)),
            padded(points.iter().map(|p| p.1)),
        )
        .map_err(|e| chart_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("best val loss")
        .draw()
        .map_err(|e| chart_error(path, e))?;
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 5, BLUE.filled())))
        .map_err(|e| chart_error(path, e))?;
    root.present().map_err(|e| chart_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_weights_the_past() {
        let pts = [(1, 4.0), (2, 2.0), (3, 2.0)];
        assert_eq!(ema(&pts, 0.0), vec![(1.0, 4.0), (2.0, 2.0), (3.0, 2.0)]);
        assert_eq!(ema(&pts, 0.5), vec![(1.0, 4.0), (2.0, 3.0), (3.0, 2.5)]);
    }
}
