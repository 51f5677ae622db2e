//! `lors report`: shareable results of runs ([`RunSummary`]) and sweeps, which writes a Markdown table with SVG charts (plotters) for people who
//! read results outside the terminal: validation and smoothed training loss curves of every
//! run, and for a sweep the best validation loss against each numeric swept value.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::{LorsError, Result};
use crate::io::write_atomic;
use crate::sweep::{summary, Sweep};
use crate::train::summary::{table_header, RunSummary};

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
