//! The Runs view: every run in a table (a column per scored task where the width allows),
//! and the train-loss curves of the marked ones.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Color;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table, TableState};
use ratatui::Frame;

use super::{
    accuracy_text, at_or_before, draw_overlay, eval_job_text, state_text, view_points, Curve,
};
use crate::tui::app::App;
use crate::tui::text::fit_middle;
use crate::tui::theme::{Theme, SYMBOLS};
use crate::tui::watch::RunInfo;

/// Width of a per-task accuracy column of the Runs table.
const TASK_COLUMN: u16 = 6;

/// The columns every row has, with their gaps.
const FIXED: u16 = 84;
/// The model, progress and start columns, with their gaps: shown where the width left after
/// the task columns (scores come first) holds them.
const WIDE_COLUMNS: u16 = 16 + 5 + 11 + 3;

/// The Runs table: a row per run, with a column per scored task where the width allows.
fn runs_table<'a>(app: &'a App, overlay: &[&RunInfo], width: u16, theme: Theme) -> Table<'a> {
    let mut tasks: Vec<crate::eval::Task> = crate::eval::Task::ALL
        .iter()
        .copied()
        .filter(|t| {
            app.runs
                .iter()
                .any(|r| r.task_accuracy().iter().any(|a| a.task == *t))
        })
        .collect();
    tasks.truncate((width.saturating_sub(FIXED) / TASK_COLUMN) as usize);
    let wide = width >= FIXED + tasks.len() as u16 * TASK_COLUMN + WIDE_COLUMNS;
    // Below 80 columns only the run, its state, method, rank and validation loss; below 100
    // no init (the Run view shows it), so names get the width.
    let keep: &[usize] = match width {
        0..80 => &[0, 1, 2, 3, 5],
        80..100 => &[0, 1, 2, 3, 5, 6, 7],
        _ => &[0, 1, 2, 3, 4, 5, 6, 7],
    };
    let mut widths: Vec<u16> = [0, 13, 12, 3, 8, 12, 4, 5]
        .iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, w)| *w)
        .collect();
    let mut header: Vec<String> = [
        "  run", "state", "method", "r", "init", "val/ppl", "acc", "time",
    ]
    .iter()
    .enumerate()
    .filter(|(i, _)| keep.contains(i))
    .map(|(_, h)| h.to_string())
    .collect();
    if wide {
        widths.extend([16, 5, 11]);
        header.extend(["model", "done", "started"].map(String::from));
    }
    widths.extend(tasks.iter().map(|_| TASK_COLUMN - 1));
    header.extend(tasks.iter().map(|t| t.short_name().to_string()));
    // The name column takes what the others leave (borders and one-column gaps aside).
    let others: u16 = widths.iter().sum::<u16>() + widths.len() as u16 - 1;
    let name_width = width.saturating_sub(2 + others).max(14);
    let slots = overlay_slots(overlay);
    let rows: Vec<Row> = app
        .runs
        .iter()
        .map(|r| {
            let mark = overlay
                .iter()
                .zip(&slots)
                .find(|(o, _)| o.path == r.path)
                .map_or(' ', |(_, &slot)| SYMBOLS[slot % SYMBOLS.len()]);
            let cells = run_cells(app, r, mark, &tasks, wide, name_width as usize);
            let cells = cells
                .into_iter()
                .enumerate()
                .filter(|(i, _)| *i >= 8 || keep.contains(i))
                .map(|(_, c)| c);
            Row::new(cells.collect::<Vec<_>>())
        })
        .collect();
    widths[0] = name_width;
    let widths: Vec<Constraint> = widths.into_iter().map(Constraint::Length).collect();
    Table::new(rows, widths)
        .header(Row::new(header).style(theme.fg(Color::Cyan)))
        .row_highlight_style(theme.selected())
        .block(theme.block(&format!("Runs (by {}; o to change)", app.run_order.name())))
}

/// One run's cells: name (with its overlay symbol, fitted to `name_width`), state, method,
/// rank, init, best validation loss/perplexity, mean accuracy after training, time, when
/// `wide` the model, progress and start, and each task's accuracy.
fn run_cells(
    app: &App,
    r: &RunInfo,
    mark: char,
    tasks: &[crate::eval::Task],
    wide: bool,
    name_width: usize,
) -> Vec<String> {
    let (method, rank, init) = r.profile.as_ref().map_or(("?".into(), 0, "?".into()), |p| {
        (
            p.method_label(),
            p.adapter.rank,
            p.adapter.init.name().to_string(),
        )
    });
    let best = r
        .best_eval()
        .map_or("-".into(), |b| format!("{b:.3}/{:.2}", b.exp()));
    let dur = r
        .status
        .as_ref()
        .map_or("-".into(), |s| format!("{:.0}s", s.elapsed_s));
    let state = match r.eval_job.as_ref().filter(|_| eval_job_text(r).is_some()) {
        Some(j) if j.total > 0 => format!("eval {}%", 100 * j.done / j.total),
        Some(_) => "eval".into(),
        None => state_text(app, r),
    };
    let accuracy = r.task_accuracy();
    let mut cells = vec![
        format!(
            "{mark} {}",
            fit_middle(&r.name, name_width.saturating_sub(2))
        ),
        state,
        method,
        rank.to_string(),
        init,
        best,
        accuracy_text(r.mean_accuracy_after()),
        dur,
    ];
    if wide {
        cells.extend(wide_cells(r));
    }
    cells.extend(
        tasks
            .iter()
            .map(|t| accuracy_text(accuracy.iter().find(|a| a.task == *t).and_then(|a| a.after))),
    );
    cells
}

/// The model (its folder's name, `+prune` with a prune step), the steps done in percent, and
/// the local start time.
fn wide_cells(r: &RunInfo) -> [String; 3] {
    let model = r.profile.as_ref().map_or("?".into(), |p| {
        let name = p.model.path.file_name().map_or_else(
            || p.model.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        if p.prune.is_some() {
            format!("{name}+prune")
        } else {
            name
        }
    });
    let done = r
        .status
        .as_ref()
        .filter(|s| s.total_steps > 0)
        .map_or("-".into(), |s| format!("{}%", 100 * s.step / s.total_steps));
    let started = r
        .started_at()
        .and_then(|t| chrono::DateTime::from_timestamp(t as i64, 0))
        .map_or("-".into(), |t| {
            t.with_timezone(&chrono::Local)
                .format("%m-%d %H:%M")
                .to_string()
        });
    [model, done, started]
}

pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    if app.runs.is_empty() {
        f.render_widget(
            Paragraph::new("No runs yet.").block(theme.block("Runs")),
            area,
        );
        return;
    }
    let overlay: Vec<&RunInfo> = app
        .runs
        .iter()
        .filter(|r| app.marked.contains(&r.path))
        .collect();
    let [table_area, chart_area] = if overlay.is_empty() {
        [area, Rect::default()]
    } else {
        Layout::vertical([Constraint::Min(5), Constraint::Percentage(55)]).areas(area)
    };
    let table = runs_table(app, &overlay, table_area.width, theme);
    let mut state = TableState::default().with_selected(Some(app.selected_run));
    f.render_stateful_widget(table, table_area, &mut state);
    if overlay.is_empty() {
        return;
    }
    let slots = overlay_slots(&overlay);
    let log = app.log_scale;
    let curves: Vec<Curve> = overlay
        .iter()
        .zip(&slots)
        .flat_map(|(r, &slot)| {
            [
                (
                    slot,
                    view_points(&r.summary.train_curve, f64::MIN, log),
                    true,
                ),
                (
                    slot,
                    view_points(&r.summary.eval_curve, f64::MIN, log),
                    false,
                ),
            ]
        })
        .collect();
    let [chart, legend] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(chart_area);
    let scale = if log { " (log scale)" } else { "" };
    let title = match app.overlay_step {
        Some(step) => format!("loss{scale} at step {step} (Left/Right): train, in the legend"),
        None => format!("loss{scale} of the marked runs: train (line), validation (points)"),
    };
    draw_overlay(f, chart, &title, &curves, log, theme);
    // Every marked run gets its share of the legend line, its name elided in the middle.
    let share = (legend.width as usize / overlay.len()).saturating_sub(2);
    let spans: Vec<Span> = overlay
        .iter()
        .zip(&slots)
        .flat_map(|(r, &slot)| {
            // At the cursor: the train loss there, `-` for a run that did not reach it.
            let value = app.overlay_step.map(|step| {
                let curve = &r.summary.train_curve;
                let reached = curve.last().is_some_and(|&(last, _)| last >= step);
                match at_or_before(curve, step).filter(|_| reached) {
                    Some((_, loss)) => format!(" {loss:.4}"),
                    None => " -".into(),
                }
            });
            let value = value.unwrap_or_default();
            let room = share.saturating_sub(2 + value.len()).max(8);
            let name = fit_middle(&r.name, room);
            let label = format!("{} {name}{value}", SYMBOLS[slot % SYMBOLS.len()]);
            [
                Span::styled(label, theme.fg(theme.series_color(slot))),
                Span::raw("  "),
            ]
        })
        .collect();
    f.render_widget(Paragraph::new(Line::from(spans)), legend);
}

/// Each marked run's slot (its symbol and colour) from its name, so a run keeps them whatever
/// the table's order or the other marks (and on any machine); a run whose slot is taken (two
/// names hashing alike) takes the next free one.
fn overlay_slots(overlay: &[&RunInfo]) -> Vec<usize> {
    use std::hash::{Hash, Hasher};
    // Distinct (symbol, colour) pairs: SYMBOLS and the series colours cycle together.
    const SLOTS: usize = 24;
    let mut order: Vec<usize> = (0..overlay.len()).collect();
    order.sort_by(|&a, &b| overlay[a].name.cmp(&overlay[b].name));
    let mut taken = [false; SLOTS];
    let mut slots = vec![0; overlay.len()];
    for i in order {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        overlay[i].name.hash(&mut h);
        let mut slot = (h.finish() % SLOTS as u64) as usize;
        for _ in 0..SLOTS {
            if !taken[slot] {
                break;
            }
            slot = (slot + 1) % SLOTS;
        }
        taken[slot] = true;
        slots[i] = slot;
    }
    slots
}
