//! The Sweeps view: one sweep's trials compared (swept values, state and outcomes, sortable
//! by any column) over a chart of their validation curves, smoothed training curves, or best
//! validation loss against a swept value; or the form that defines a new sweep.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Color;
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

use super::{draw_fields, draw_overlay, view_points, Curve, FormLine};
use crate::report::ema;
use crate::sweep::summary::{log_axis, numeric};
use crate::tui::app::{App, EditTarget};
use crate::tui::sweeps::{progress, Board, ChartMode, Column, FormField, SweepForm, TrialView};
use crate::tui::theme::{Theme, SYMBOLS};
use crate::tui::watch::SweepInfo;

pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    if let Some(form) = &app.board.form {
        return draw_form(f, area, app, form, theme);
    }
    let Some(sweep) = app.board.current(&app.sweeps) else {
        let text = match &app.board.sweep {
            Some(dir) => format!("waiting for the sweep in {} to start...", dir.display()),
            None => "No sweeps yet: S in Setup (or n here) defines one from the Setup's \
                     settings; `lors sweep --profile FILE` runs one headless."
                .into(),
        };
        f.render_widget(
            Paragraph::new(text)
                .wrap(Wrap { trim: true })
                .block(theme.block("Sweeps")),
            area,
        );
        return;
    };
    let shown = Shown {
        board: &app.board,
        sweep,
        rows: app.board.rows(sweep, &app.runs),
        theme,
    };
    let table_h = (shown.rows.len() as u16 + 3).min(area.height / 2).max(5);
    let [table_area, chart_area] =
        Layout::vertical([Constraint::Length(table_h), Constraint::Min(4)]).areas(area);
    shown.draw_table(f, table_area);
    shown.draw_chart(f, chart_area);
}

/// The sweep shown, its trials in the board's order, and how to draw them.
struct Shown<'a> {
    board: &'a Board,
    sweep: &'a SweepInfo,
    rows: Vec<TrialView<'a>>,
    theme: Theme,
}

fn width(column: Column) -> u16 {
    match column {
        Column::Trial => 6,
        Column::Param(_) => 7,
        Column::State => 13,
        Column::BestVal => 11,
        Column::TrainLoss | Column::TokensPerS => 6,
        Column::PeakMemory | Column::Time => 5,
        Column::ZerosKept => 3,
    }
}

impl Shown<'_> {
    /// The trials, the sorted column's header marked `^` (ascending) or `v`.
    fn draw_table(&self, f: &mut Frame, area: Rect) {
        let (board, sweep, rows, theme) = (self.board, self.sweep, &self.rows, self.theme);
        let columns = Board::columns(sweep);
        let header: Vec<String> = columns
            .iter()
            .map(|c| {
                let mark = match board.sort {
                    Some(s) if s == *c && board.descending => "v",
                    Some(s) if s == *c => "^",
                    _ => "",
                };
                format!("{}{mark}", c.header(&sweep.axes))
            })
            .collect();
        let body: Vec<Row> = rows
            .iter()
            .map(|r| {
                let i = r.record.trial.index;
                let cells = columns.iter().map(|c| {
                    let text = r.cell(*c, &sweep.axes);
                    match c {
                        Column::Trial => {
                            Cell::from(format!("{}{text}", SYMBOLS[i % SYMBOLS.len()]))
                                .style(theme.fg(theme.series_color(i)))
                        }
                        _ => Cell::from(text),
                    }
                });
                Row::new(cells)
            })
            .collect();
        let title = format!("{}: {}", sweep.name, progress(sweep, rows));
        // The state column widens for a queued job's reason (`PENDING (Resources)`).
        let state_width = rows
            .iter()
            .map(|r| r.cell(Column::State, &sweep.axes).chars().count() as u16)
            .max()
            .unwrap_or(0)
            .clamp(width(Column::State), 28);
        let widths = columns.iter().map(|c| match c {
            Column::State => Constraint::Length(state_width),
            other => Constraint::Length(width(*other)),
        });
        let table = Table::new(body, widths)
            .header(Row::new(header).style(theme.fg(Color::Cyan)))
            .row_highlight_style(theme.selected())
            .block(theme.block(&title));
        let mut state = TableState::default().with_selected(Some(board.row));
        f.render_stateful_widget(table, area, &mut state);
    }

    fn draw_chart(&self, f: &mut Frame, area: Rect) {
        let (board, rows, theme) = (self.board, &self.rows, self.theme);
        // Each trial keeps its symbol and colour (by its index) however the table is sorted.
        let summaries = rows
            .iter()
            .map(|r| (r.record.trial.index, r.run.map(|run| &run.summary)));
        match board.chart {
            ChartMode::Valid => {
                let curves: Vec<Curve> = summaries
                    .map(|(i, s)| {
                        let points =
                            s.map_or(Vec::new(), |s| view_points(&s.eval_curve, f64::MIN, false));
                        (i, points, true)
                    })
                    .collect();
                let title = "validation loss per step (c: chart)";
                draw_overlay(f, area, title, &curves, false, theme);
            }
            ChartMode::Train => {
                let w = board.smoothing();
                let curves: Vec<Curve> = summaries
                    .map(|(i, s)| (i, s.map_or(Vec::new(), |s| ema(&s.train_curve, w)), true))
                    .collect();
                let title = format!("train loss, EMA {w} ([ ] smoothing, c: chart)");
                draw_overlay(f, area, &title, &curves, false, theme);
            }
            ChartMode::Param => self.draw_param_plot(f, area),
        }
    }

    /// Best validation loss against the chosen swept value, one point (symbol) per trial.
    fn draw_param_plot(&self, f: &mut Frame, area: Rect) {
        let Some(key) = self.sweep.axes.get(self.board.param) else {
            return;
        };
        let values: Vec<(usize, Option<(f64, f64)>)> = self
            .rows
            .iter()
            .map(|r| {
                let point = (|| {
                    let x = numeric(r.record.trial.values.get(key)?)?;
                    Some((x, r.best_val()?))
                })();
                (r.record.trial.index, point)
            })
            .collect();
        let xs: Vec<f64> = values.iter().filter_map(|(_, p)| p.map(|p| p.0)).collect();
        let log = log_axis(&xs);
        let points: Vec<Curve> = values
            .iter()
            .map(|&(i, p)| {
                let point = p.map(|(x, y)| (if log { x.log10() } else { x }, y));
                (i, point.into_iter().collect(), false)
            })
            .collect();
        let title = format!(
            "best val loss against {}{key} (a: next key)",
            if log { "log10 " } else { "" }
        );
        draw_overlay(f, area, &title, &points, false, self.theme);
    }
}

/// The new-sweep form, and what it would launch.
fn draw_form(f: &mut Frame, area: Rect, app: &App, form: &SweepForm, theme: Theme) {
    let [fields, info] = Layout::vertical([Constraint::Length(11), Constraint::Min(3)]).areas(area);
    let lines = FormField::ALL.iter().map(|field| FormLine {
        heading: None,
        label: field.label(),
        value: form.text(*field),
        choice: field.is_choice(),
        typed: app.edit_text(EditTarget::Sweep(*field)),
    });
    let title = "new sweep over the Setup's settings";
    draw_fields(f, fields, title, lines, form.selected, 16, theme);
    let status = match &form.error {
        Some(e) => Line::styled(format!("invalid: {e}"), theme.fg(Color::Red)),
        None => Line::styled(
            "ready: l launches it (detached; it outlives the TUI)",
            theme.fg(Color::Green),
        ),
    };
    let lines = vec![
        status,
        Line::from("values: 4, 8  or  lors, lors-exact  or  { log_uniform = [1e-4, 1e-2] }"),
        Line::from("rungs: steps where ASHA keeps the best 1/η by val loss (empty: none)"),
    ];
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(theme.block("sweep")),
        info,
    );
}
