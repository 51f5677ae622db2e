//! Drawing, from the state alone: the tab bar, one file per view, the popups, and the
//! footer with the current view's keys (from the key table).

mod profiles;
mod run;
mod runs;
mod setup;
mod sweeps;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier};
use ratatui::text::{Line, Span};
use ratatui::widgets::{List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;

use super::app::{App, View};
use super::input::TextInput;
use super::keys;
use super::plot::{self, Plot, Series};
use super::popups;
use super::text::fit_middle;
use super::theme::{Theme, SYMBOLS};
use super::watch::RunInfo;
use crate::train::RunState;

/// The smallest terminal the views are laid out for; below it the screen says so.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 20;

/// Draw the whole screen.
pub fn draw(f: &mut Frame, app: &App, theme: Theme) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        f.render_widget(
            Paragraph::new(format!(
                "lors: terminal too small ({}x{}); {MIN_WIDTH}x{MIN_HEIGHT} or more please \
                 (80x24 and up shows everything). q quits.",
                area.width, area.height
            ))
            .wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let [tabs, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_tabs(f, tabs, app, theme);
    match app.view {
        View::Setup => setup::draw(f, body, app, theme),
        View::Run => run::draw(f, body, app, theme),
        View::Runs => runs::draw(f, body, app, theme),
        View::Sweeps => sweeps::draw(f, body, app, theme),
        View::Profiles => profiles::draw(f, body, app, theme),
    }
    let width = footer.width.saturating_sub(1) as usize;
    let hints = popups::hints(app).unwrap_or_else(|| keys::footer(app.scope(), width));
    let line = match &app.notice {
        Some(n) => format!(" {n}"),
        None => format!(" {hints}"),
    };
    f.render_widget(Paragraph::new(line).style(theme.selected()), footer);
    popups::draw(f, area, app, theme);
}

fn draw_tabs(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let mut spans = vec![Span::styled(
        " lors ",
        theme.fg(Color::Cyan).add_modifier(Modifier::BOLD),
    )];
    for (i, v) in View::ALL.iter().enumerate() {
        let label = format!(" {}:{} ", i + 1, v.title());
        spans.push(if *v == app.view {
            Span::styled(label, theme.selected())
        } else {
            Span::raw(label)
        });
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// A run's state as its status says, with a sweep trial that early stopping ended named
/// `stopped early` (its status alone says `stopped`, as for a stop the user asked for).
pub(crate) fn state_text(app: &App, r: &RunInfo) -> String {
    match r.status.as_ref().map(|s| s.state) {
        Some(RunState::Stopped) if app.stopped_early(&r.path) => "stopped early".into(),
        Some(state) => state.to_string(),
        None => "starting".into(),
    }
}

/// `[#####.....]` of `width` characters.
fn ascii_bar(ratio: f64, width: usize) -> String {
    let filled = ((ratio.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// An accuracy as `.660`, or `-`.
fn accuracy_text(a: Option<f64>) -> String {
    a.map_or("  -".into(), |a| {
        format!("{a:.3}").trim_start_matches('0').to_string()
    })
}

/// The workbench evaluation of the run, while it runs: `eval hellaswag 40/100`.
fn eval_job_text(run: &RunInfo) -> Option<String> {
    let job = run.eval_job.as_ref()?;
    let alive = job.state == crate::eval::JobState::Running && crate::io::process_alive(job.pid);
    alive.then(|| {
        let task = job.task.map_or("starting".into(), |t| t.to_string());
        format!(
            "eval {}/{} {task} {}/{}",
            job.tasks_done + 1,
            job.tasks_total,
            job.done,
            job.total
        )
    })
}

/// Points from `start` on, with y in log scale when asked.
fn view_points(pts: &[(usize, f64)], start: f64, log: bool) -> Vec<(f64, f64)> {
    pts.iter()
        .map(|&(x, y)| (x as f64, y))
        .filter(|p| p.0 >= start)
        .map(|(x, y)| (x, if log { y.max(1e-9).ln() } else { y }))
        .collect()
}

/// A curve of an overlay: its key (the `key`th symbol and colour, as the tables mark their
/// rows), its points, and whether they are joined by a line.
type Curve = (usize, Vec<(f64, f64)>, bool);

/// Curves on shared axes (`log_y`: their y values are logarithms, labelled in units).
fn draw_overlay(
    f: &mut Frame,
    area: Rect,
    title: &str,
    curves: &[Curve],
    log_y: bool,
    theme: Theme,
) {
    let series = curves
        .iter()
        .map(|&(i, ref points, line)| Series {
            symbol: SYMBOLS[i % SYMBOLS.len()],
            style: theme.fg(theme.series_color(i)),
            points,
            line,
        })
        .collect();
    let plot = Plot {
        block: theme.block(title),
        series,
        log_y,
    };
    plot::render(f, area, plot, theme);
}

/// A curve's newest point at or before `step`.
fn at_or_before(curve: &[(usize, f64)], step: usize) -> Option<(usize, f64)> {
    curve.iter().rev().find(|(s, _)| *s <= step).copied()
}

/// One line of a form: its label and value, whether Left/Right cycle the value, and the text
/// being typed into it, if it is being edited; a heading to show above it, if any.
struct FormLine<'a> {
    heading: Option<String>,
    label: String,
    value: String,
    choice: bool,
    typed: Option<&'a TextInput>,
}

/// A form as a list, `label value` per line (labels padded to `width`) under their headings:
/// the typed text with the terminal's cursor in it while a field is edited, `< value >` for
/// choices, a value too long for the column as its start and end ([`fit_middle`]).
/// `selected` counts fields, not headings.
fn draw_fields<'a>(
    f: &mut Frame,
    area: Rect,
    title: &str,
    lines: impl Iterator<Item = FormLine<'a>>,
    selected: usize,
    width: usize,
    theme: Theme,
) {
    let mut cursor = None;
    let mut items: Vec<ListItem> = Vec::new();
    let mut selected_row = 0;
    // Columns for a value inside the borders after its label (a long path shows its end).
    let room = (area.width as usize).saturating_sub(2 + width + 1);
    for (i, l) in lines.enumerate() {
        if let Some(heading) = l.heading {
            items.push(ListItem::new(Line::styled(heading, theme.heading())));
        }
        if i == selected {
            selected_row = items.len();
        }
        let shown = match l.typed {
            Some(input) => {
                cursor = Some((items.len(), input.cursor()));
                input.value().to_string()
            }
            None if l.choice => format!("< {} >", l.value),
            None => fit_middle(&l.value, room),
        };
        items.push(ListItem::new(format!("{:<width$} {shown}", l.label)));
    }
    let mut state = ListState::default().with_selected(Some(selected_row));
    f.render_stateful_widget(
        List::new(items)
            .block(theme.block(title))
            .highlight_style(theme.selected()),
        area,
        &mut state,
    );
    if let Some((row, column)) = cursor {
        let x = area.x as usize + 1 + width + 1 + column;
        let y = (area.y as usize + 1 + row).saturating_sub(state.offset());
        let right = area.right().saturating_sub(2) as usize;
        f.set_cursor_position((x.min(right) as u16, y as u16));
    }
}
