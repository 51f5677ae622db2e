//! Drawing: one function per view, from the state alone. Plain ASCII borders and markers, so
//! it reads the same over any SSH terminal; colours are dropped under `NO_COLOR`.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::{border, Marker};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Borders, Chart, Clear, Dataset, Gauge, GraphType, List, ListItem, ListState,
    Paragraph, Row, Sparkline, Table, TableState, Wrap,
};
use ratatui::Frame;

use super::app::{App, Confirm, View};
use super::watch::RunInfo;
use crate::memory::human_bytes;
use crate::train::MetricRow;

/// Colours, or none under `NO_COLOR`.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    pub fn from_env() -> Self {
        Self {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    fn selected(&self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
}

fn block(title: &str) -> Block<'_> {
    Block::default()
        .borders(Borders::ALL)
        .border_set(border::PLAIN)
        .title(format!(" {title} "))
}

/// Draw the whole screen.
pub fn draw(f: &mut Frame, app: &App, theme: Theme) {
    let area = f.area();
    let [tabs, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
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
    f.render_widget(Paragraph::new(Line::from(spans)), tabs);
    match app.view {
        View::Setup => draw_setup(f, body, app, theme),
        View::Run => draw_run(f, body, app, theme),
        View::Runs => draw_runs(f, body, app, theme),
    }
    // The global keys come first so that a narrow terminal still shows them.
    let keys = match app.view {
        View::Setup => "Up/Down field  Enter edit  Left/Right choose  l launch",
        View::Run => "p pause/resume  c checkpoint  s stop  g log  z zoom",
        View::Runs => "Up/Down select  Enter open  e edit  d delete",
    };
    let line = match &app.notice {
        Some(n) => format!(" q quit  ? help  Tab view | {n}"),
        None => format!(" q quit  ? help  Tab view | {keys}"),
    };
    f.render_widget(Paragraph::new(line).style(theme.selected()), footer);
    if app.help {
        draw_help(f, area);
    }
    if let Some(c) = &app.confirm {
        let text = match c {
            Confirm::Stop(p) => format!("Stop {}? It checkpoints first. (y/n)", name(p)),
            Confirm::Delete(p) => format!("Delete {} and all its files? (y/n)", name(p)),
        };
        let r = centered(area, 60, 3);
        f.render_widget(Clear, r);
        f.render_widget(Paragraph::new(text).block(block("confirm")), r);
    }
}

fn name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn draw_setup(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let s = &app.setup;
    let [form, info] = Layout::vertical([Constraint::Min(3), Constraint::Length(4)]).areas(area);
    let items: Vec<ListItem> = s
        .fields
        .iter()
        .enumerate()
        .map(|(i, fl)| {
            let value = match (&s.editing, i == s.selected) {
                (Some(buf), true) => format!("{buf}_"),
                _ if !fl.choices.is_empty() => format!("< {} >", fl.value),
                _ => fl.value.clone(),
            };
            ListItem::new(format!("{:<14} {value}", fl.label))
        })
        .collect();
    let mut state = ListState::default().with_selected(Some(s.selected));
    f.render_stateful_widget(
        List::new(items)
            .block(block("Setup"))
            .highlight_style(theme.selected()),
        form,
        &mut state,
    );
    let mut lines = Vec::new();
    match (&s.model, &s.model_error) {
        (Some(c), _) => lines.push(Line::from(format!(
            "model: {:?}, hidden {}, {} layers, {} heads ({} kv), vocab {}",
            c.architecture, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.vocab_size
        ))),
        (None, Some(e)) => lines.push(Line::styled(format!("model: {e}"), theme.fg(Color::Red))),
        (None, None) => lines.push(Line::from(
            "model: (press Enter on the model field to inspect)",
        )),
    }
    match &s.error {
        Some(e) => lines.push(Line::styled(format!("invalid: {e}"), theme.fg(Color::Red))),
        None => lines.push(Line::styled("ready to launch (l)", theme.fg(Color::Green))),
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(block("Detected")),
        info,
    );
}

fn state_text(r: &RunInfo) -> String {
    r.status
        .as_ref()
        .map(|s| format!("{:?}", s.state).to_lowercase())
        .unwrap_or_else(|| "starting".into())
}

fn draw_run(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let Some(run) = app.focused_run() else {
        f.render_widget(
            Paragraph::new("No run yet: launch one from Setup (l), or open one from Runs.")
                .block(block("Run")),
            area,
        );
        return;
    };
    let [head, middle, log] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(6),
        Constraint::Length(5),
    ])
    .areas(area);
    let (step, total, eta, elapsed) = run.status.as_ref().map_or((0, 0, None, 0.0), |s| {
        (s.step, s.total_steps, s.eta_s, s.elapsed_s)
    });
    let ratio = if total > 0 {
        step as f64 / total as f64
    } else {
        0.0
    };
    let label = format!(
        "{} {} step {step}/{total}  elapsed {:.0}s  ETA {}",
        run.name,
        state_text(run),
        elapsed,
        eta.map_or("-".into(), |e| format!("{e:.0}s"))
    );
    f.render_widget(
        Gauge::default()
            .block(block("Progress"))
            .gauge_style(theme.fg(Color::Green))
            .ratio(ratio.clamp(0.0, 1.0))
            .label(label),
        head,
    );
    let wide = middle.width >= 100;
    let [chart_area, side] = if wide {
        Layout::horizontal([Constraint::Min(40), Constraint::Length(36)]).areas(middle)
    } else {
        Layout::horizontal([Constraint::Min(30), Constraint::Length(26)]).areas(middle)
    };
    draw_loss(f, chart_area, app, run, theme);
    draw_side(f, side, run);
    let lines: Vec<Line> = run
        .events
        .iter()
        .rev()
        .take(log.height.saturating_sub(2) as usize)
        .rev()
        .map(|e| {
            if e.starts_with("error") {
                Line::styled(e.clone(), theme.fg(Color::Red))
            } else {
                Line::from(e.clone())
            }
        })
        .collect();
    f.render_widget(Paragraph::new(lines).block(block("Events")), log);
}

fn draw_loss(f: &mut Frame, area: Rect, app: &App, run: &RunInfo, theme: Theme) {
    let transform = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
        let start = app.zoom_last.map_or(0.0, |n| {
            run.train_loss.last().map_or(0.0, |l| l.0 - n as f64)
        });
        pts.iter()
            .filter(|p| p.0 >= start)
            .map(|&(x, y)| (x, if app.log_scale { y.max(1e-9).ln() } else { y }))
            .collect()
    };
    let train = transform(&run.train_loss);
    let eval = transform(&run.eval_loss);
    let all = train.iter().chain(&eval);
    let (x0, x1) = all
        .clone()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = all.fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let title = format!(
        "loss{}{}",
        if app.log_scale { " (ln)" } else { "" },
        app.zoom_last
            .map_or(String::new(), |n| format!(", last {n} steps"))
    );
    if train.is_empty() {
        f.render_widget(
            Paragraph::new("waiting for the first step...").block(block(&title)),
            area,
        );
        return;
    }
    let datasets = vec![
        Dataset::default()
            .name("train")
            .marker(Marker::Dot)
            .graph_type(GraphType::Line)
            .style(theme.fg(Color::Cyan))
            .data(&train),
        Dataset::default()
            .name("valid")
            .marker(Marker::Dot)
            .graph_type(GraphType::Scatter)
            .style(theme.fg(Color::Yellow))
            .data(&eval),
    ];
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let chart = Chart::new(datasets)
        .block(block(&title))
        .x_axis(
            Axis::default()
                .bounds([x0, x1.max(x0 + 1.0)])
                .labels([format!("{x0:.0}"), format!("{x1:.0}")]),
        )
        .y_axis(
            Axis::default()
                .bounds([y0 - pad, y1 + pad])
                .labels([format!("{y0:.2}"), format!("{y1:.2}")]),
        );
    f.render_widget(chart, area);
}

fn draw_side(f: &mut Frame, area: Rect, run: &RunInfo) {
    let [stats, spark] = Layout::vertical([Constraint::Min(5), Constraint::Length(4)]).areas(area);
    let mut lines = Vec::new();
    if let Some(MetricRow::Train {
        loss,
        lr,
        grad_norm,
        tokens_per_s,
        live_bytes,
        peak_bytes,
        rss_bytes,
        ..
    }) = &run.last
    {
        lines.push(format!("loss     {loss:.4}"));
        lines.push(format!("lr       {lr:.2e}"));
        lines.push(format!("grad     {grad_norm:.3}"));
        lines.push(format!("tok/s    {tokens_per_s:.0}"));
        lines.push(format!(
            "RSS      {}",
            rss_bytes.map_or("-".into(), |b| human_bytes(b as f64))
        ));
        lines.push(format!("live     {}", human_bytes(*live_bytes as f64)));
        lines.push(format!("peak     {}", human_bytes(*peak_bytes as f64)));
    }
    if let Some(best) = run.best_eval() {
        lines.push(format!("best val {best:.4} (ppl {:.2})", best.exp()));
    }
    if let Some(p) = &run.profile {
        lines.push(
            format!(
                "{} r{} {:?}",
                p.adapter.method, p.adapter.rank, p.adapter.init
            )
            .to_lowercase(),
        );
    }
    let text: Vec<Line> = lines.into_iter().map(Line::from).collect();
    f.render_widget(Paragraph::new(text).block(block("Stats")), stats);
    let data: Vec<u64> = run.rss.iter().map(|b| b / 1024).collect();
    f.render_widget(Sparkline::default().block(block("RSS")).data(&data), spark);
}

fn draw_runs(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    if app.runs.is_empty() {
        f.render_widget(Paragraph::new("No runs yet.").block(block("Runs")), area);
        return;
    }
    let rows: Vec<Row> = app
        .runs
        .iter()
        .map(|r| {
            let (method, rank, init) =
                r.profile.as_ref().map_or(("?".into(), 0, "?".into()), |p| {
                    (
                        p.adapter.method.to_string(),
                        p.adapter.rank,
                        format!("{:?}", p.adapter.init).to_lowercase(),
                    )
                });
            let best = r
                .best_eval()
                .map_or("-".into(), |b| format!("{b:.3} / {:.2}", b.exp()));
            let dur = r
                .status
                .as_ref()
                .map_or("-".into(), |s| format!("{:.0}s", s.elapsed_s));
            Row::new(vec![
                r.name.clone(),
                state_text(r),
                method,
                rank.to_string(),
                init,
                best,
                dur,
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Min(14),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(4),
            Constraint::Length(8),
            Constraint::Length(14),
            Constraint::Length(6),
        ],
    )
    .header(
        Row::new(vec![
            "run",
            "state",
            "method",
            "r",
            "init",
            "val loss/ppl",
            "time",
        ])
        .style(theme.fg(Color::Cyan)),
    )
    .row_highlight_style(theme.selected())
    .block(block("Runs"));
    let mut state = TableState::default().with_selected(Some(app.selected_run));
    f.render_stateful_widget(table, area, &mut state);
}

fn draw_help(f: &mut Frame, area: Rect) {
    let text = "\
Tab / Shift-Tab, 1 2 3   switch view (Setup, Run, Runs)
?                        this help (any key closes it)
q, Ctrl-C                quit (runs keep going)
Setup: Up/Down field, Enter edit text (Enter ok, Esc cancel),
       Left/Right cycle a choice, l or F5 launch
Run:   p pause/resume, c checkpoint now, s stop (asks),
       g log-scale loss, z last 50 steps / all
Runs:  Up/Down select, Enter open in Run,
       e open its profile in Setup, d delete (asks)";
    let r = centered(area, 66, 12);
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(text).block(block("help")), r);
}
