//! Drawing: one function per view and one per panel, from the state alone. Charts, gauges and
//! sparklines use plain ASCII; borders are box-drawing lines on UTF-8 terminals and `+-|`
//! otherwise (or with `LORS_ASCII=1`); colours are dropped under `NO_COLOR`.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::{bar, border};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Clear, List, ListItem, ListState, Paragraph, Row, Sparkline, Table, TableState,
    Wrap,
};
use ratatui::Frame;

use super::app::{App, Confirm, Kind, View};
use super::plot::{Plot, Series};
use super::watch::RunInfo;
use crate::memory::human_bytes;
use crate::train::{MetricRow, RunState};

/// How the screen may look: colours (unless `NO_COLOR`) and box-drawing borders (unless
/// the locale is not UTF-8 or `LORS_ASCII` is set).
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub color: bool,
    pub ascii: bool,
}

const ASCII_BORDER: border::Set = border::Set {
    top_left: "+",
    top_right: "+",
    bottom_left: "+",
    bottom_right: "+",
    vertical_left: "|",
    vertical_right: "|",
    horizontal_top: "-",
    horizontal_bottom: "-",
};

const ASCII_BARS: bar::Set = bar::Set {
    full: "#",
    seven_eighths: "#",
    three_quarters: "=",
    five_eighths: "=",
    half: "-",
    three_eighths: "-",
    one_quarter: "_",
    one_eighth: "_",
    empty: " ",
};

/// Symbols of overlaid curves, in order.
const SYMBOLS: [char; 8] = ['*', 'o', '+', 'x', '#', '@', '%', '&'];

impl Theme {
    pub fn from_env() -> Self {
        let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        let locale = ["LC_ALL", "LC_CTYPE", "LANG"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
            .unwrap_or_default()
            .to_uppercase();
        Self {
            color: !set("NO_COLOR"),
            ascii: set("LORS_ASCII") || !(locale.contains("UTF-8") || locale.contains("UTF8")),
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

    fn warn(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }

    fn block<'a>(&self, title: &str) -> Block<'a> {
        Block::default()
            .borders(Borders::ALL)
            .border_set(if self.ascii {
                ASCII_BORDER
            } else {
                border::PLAIN
            })
            .title(format!(" {title} "))
    }
}

/// Draw the whole screen.
pub fn draw(f: &mut Frame, app: &App, theme: Theme) {
    let area = f.area();
    if area.width < 40 || area.height < 10 {
        f.render_widget(
            Paragraph::new(format!(
                "lors: terminal too small ({}x{}); 80x24 or more please. q quits.",
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
        View::Profiles => draw_profiles(f, body, app, theme),
    }
    // The global keys come first so that a narrow terminal still shows them.
    let keys = match app.view {
        View::Setup => "Enter edit  Lt/Rt choose  l launch  w save  P prune",
        View::Run => "p pause  c checkpoint  s stop  m merge  g log  z zoom",
        View::Runs => "Space mark  Enter open  v evaluate  o order  r replay  e edit  d delete",
        View::Profiles => "Enter load into Setup  w save Setup as profile",
    };
    let line = match &app.notice {
        Some(n) => format!(" q quit  ? help  Tab view | {n}"),
        None => format!(" q quit  ? help  Tab view | {keys}"),
    };
    f.render_widget(Paragraph::new(line).style(theme.selected()), footer);
    if let Some(p) = &app.picker {
        draw_picker(f, area, app, p, theme);
    }
    if let Some(name) = &app.naming {
        let r = centered(area, 60, 3);
        f.render_widget(Clear, r);
        f.render_widget(
            Paragraph::new(format!("{name}_")).block(theme.block(&format!(
                "save profile as {}/<name>.toml (Enter, Esc)",
                app.profiles_dir.display()
            ))),
            r,
        );
    }
    if app.help {
        draw_help(f, area, theme);
    }
    if let Some(c) = &app.confirm {
        let text = match c {
            Confirm::Stop(p) => format!("Stop {}? It checkpoints first. (y/n)", name(p)),
            Confirm::Delete(p) => format!("Delete {} and all its files? (y/n)", name(p)),
            Confirm::Overwrite(n, _) => format!("Profile {n} exists. Overwrite it? (y/n)"),
        };
        let r = centered(area, 60, 3);
        f.render_widget(Clear, r);
        f.render_widget(Paragraph::new(text).block(theme.block("confirm")), r);
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
    let [form, info] = if area.width >= 110 {
        Layout::horizontal([Constraint::Length(60), Constraint::Min(40)]).areas(area)
    } else {
        Layout::vertical([Constraint::Min(5), Constraint::Length(8)]).areas(area)
    };
    let items: Vec<ListItem> = s
        .fields
        .iter()
        .enumerate()
        .map(|(i, fl)| {
            let value = match (&s.editing, i == s.selected) {
                (Some(buf), true) => format!("{buf}_"),
                _ if !fl.choices().is_empty() => format!("< {} >", fl.value),
                _ if matches!(fl.kind, Kind::Path(_)) && fl.value.is_empty() => "(none)".into(),
                _ => fl.value.clone(),
            };
            ListItem::new(format!("{:<14} {value}", fl.label))
        })
        .collect();
    let mut state = ListState::default().with_selected(Some(s.selected));
    f.render_stateful_widget(
        List::new(items)
            .block(theme.block("Setup"))
            .highlight_style(theme.selected()),
        form,
        &mut state,
    );
    f.render_widget(
        Paragraph::new(detected_lines(app, theme))
            .wrap(Wrap { trim: true })
            .block(theme.block("Detected")),
        info,
    );
}

/// The Detected panel's lines about the model: architecture and size, and its sparsity (or
/// a warning when it is dense), or why it cannot be read, or its download's progress.
fn model_lines(s: &super::app::Setup, theme: Theme) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    match &s.model {
        Some(Ok(m)) => {
            let c = &m.config;
            lines.push(Line::from(format!(
                "model: {:?} {:.2}M params {}, hidden {}, {} layers, heads {}/{} kv, vocab {}",
                c.architecture,
                m.parameters as f64 / 1e6,
                m.dtype,
                c.hidden_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.vocab_size
            )));
            let pruning = s.field("prune.method").is_some_and(|f| f.value != "none");
            if m.is_dense() && !pruning {
                lines.push(Line::styled(
                    "DENSE model: masked methods keep nothing sparse. P adds a prune step \
                     (wanda 50%), or set `prune first`.",
                    theme.warn(),
                ));
            } else {
                let (lo, hi) = m.layers.iter().fold((f64::MAX, f64::MIN), |(a, b), l| {
                    (a.min(l.density), b.max(l.density))
                });
                lines.push(Line::from(format!(
                    "sparsity: {}, density {:.3} (layers {lo:.3}-{hi:.3})",
                    m.pattern(),
                    m.density()
                )));
            }
        }
        Some(Err(e)) => lines.push(Line::styled(format!("model: {e}"), theme.fg(Color::Red))),
        None => lines.push(Line::from(match &s.download {
            Some(d) => format!(
                "model: downloading {} {} / {}",
                d.file,
                human_bytes(d.done as f64),
                human_bytes(d.total as f64)
            ),
            None => "model: inspecting...".into(),
        })),
    }
    lines
}

/// What the Detected panel says about the model, the prune step and the data.
fn detected_lines(app: &App, theme: Theme) -> Vec<Line<'static>> {
    let s = &app.setup;
    let mut lines = model_lines(s, theme);
    if let Some(p) = s.field("prune.method").filter(|f| f.value != "none") {
        let pattern = s.field("prune.pattern").map_or("", |f| f.value.as_str());
        let sparsity = s.field("prune.sparsity").map_or("", |f| f.value.as_str());
        lines.push(Line::from(format!(
            "prune step: {} {} {} before training, calibrated on the train data",
            p.value,
            pattern,
            if pattern == "unstructured" {
                sparsity
            } else {
                ""
            }
        )));
    }
    for (key, info) in &s.data {
        let label = key.trim_start_matches("data.");
        lines.push(match info {
            Ok(d) => Line::from(format!(
                "{label}: {} records ({}{}), {} tokens = {} sequences of {}",
                d.records,
                d.format,
                if d.skipped > 0 {
                    format!(", {} skipped", d.skipped)
                } else {
                    String::new()
                },
                d.tokens,
                d.sequences,
                s.field("data.seq_len").map_or("", |f| f.value.as_str())
            )),
            Err(e) => Line::styled(format!("{label}: {e}"), theme.fg(Color::Red)),
        });
    }
    match &s.error {
        Some(e) => lines.push(Line::styled(format!("invalid: {e}"), theme.fg(Color::Red))),
        None => lines.push(Line::styled("ready to launch (l)", theme.fg(Color::Green))),
    }
    lines
}

fn draw_picker(f: &mut Frame, area: Rect, app: &App, p: &super::app::Picker, theme: Theme) {
    let label = app.setup.fields[p.field].label;
    let mut items: Vec<ListItem> = p
        .items
        .iter()
        .map(|c| ListItem::new(format!("{} [{}]", c.label, c.origin)))
        .collect();
    items.push(ListItem::new("(type a path or hub id...)"));
    let r = centered(
        area,
        area.width.saturating_sub(8),
        area.height.saturating_sub(6),
    );
    f.render_widget(Clear, r);
    let mut state = ListState::default().with_selected(Some(p.selected));
    f.render_stateful_widget(
        List::new(items)
            .block(theme.block(&format!("pick {label} (Enter, Esc)")))
            .highlight_style(theme.selected()),
        r,
        &mut state,
    );
}

fn state_text(r: &RunInfo) -> String {
    r.status
        .as_ref()
        .map(|s| s.state.to_string())
        .unwrap_or_else(|| "starting".into())
}

/// `[#####.....]` of `width` characters.
fn ascii_bar(ratio: f64, width: usize) -> String {
    let filled = ((ratio.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

fn draw_run(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let Some(run) = app.focused_run() else {
        f.render_widget(
            Paragraph::new("No run yet: launch one from Setup (l), or open one from Runs.")
                .block(theme.block("Run")),
            area,
        );
        return;
    };
    let bottom_h = if area.height >= 30 { 10 } else { 6 };
    let [head, middle, bottom] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(6),
        Constraint::Length(bottom_h),
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
    let initializing = run
        .status
        .as_ref()
        .filter(|s| s.state == RunState::Initializing);
    let text = match initializing.and_then(|s| s.message.as_ref()) {
        // Pruning or gradient-init progress before the first step.
        Some(m) => format!("initializing: {m}  elapsed {elapsed:.0}s"),
        None => format!(
            "{} {} step {step}/{total}  elapsed {:.0}s  ETA {}",
            ascii_bar(ratio, (head.width as usize / 4).clamp(5, 30)),
            state_text(run),
            elapsed,
            eta.map_or("-".into(), |e| format!("{e:.0}s"))
        ),
    };
    f.render_widget(Paragraph::new(text).block(theme.block(&run.name)), head);
    let side_w = if middle.width >= 100 { 36 } else { 26 };
    let [chart_area, side] =
        Layout::horizontal([Constraint::Min(30), Constraint::Length(side_w)]).areas(middle);
    draw_loss(f, chart_area, app, run, theme);
    draw_stats(f, side, run, theme);
    let evaluates = run.profile.as_ref().is_some_and(|p| p.eval.is_some())
        || run.eval_job.is_some()
        || !run.tasks.is_empty();
    if evaluates {
        let [log, sparsity, accuracy] = Layout::horizontal([
            Constraint::Min(20),
            Constraint::Percentage(30),
            Constraint::Length(30),
        ])
        .areas(bottom);
        draw_events(f, log, run, theme);
        draw_sparsity(f, sparsity, run, theme);
        draw_accuracy(f, accuracy, run, theme);
    } else {
        let [log, sparsity] =
            Layout::horizontal([Constraint::Min(30), Constraint::Percentage(45)]).areas(bottom);
        draw_events(f, log, run, theme);
        draw_sparsity(f, sparsity, run, theme);
    }
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

/// Each task's `acc` before training (the pruned model) and after (the merged one).
fn draw_accuracy(f: &mut Frame, area: Rect, run: &RunInfo, theme: Theme) {
    let table = run.task_accuracy();
    let mean = |pick: fn(&crate::tui::watch::TaskAccuracy) -> Option<f64>| {
        let xs: Vec<f64> = table.iter().filter_map(pick).collect();
        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    let mut lines = match (eval_job_text(run), &run.eval_job) {
        (Some(text), Some(job)) => {
            let ratio = job.done as f64 / job.total.max(1) as f64;
            let width = (area.width as usize).saturating_sub(4).min(26);
            vec![
                Line::styled(text, theme.fg(Color::Yellow)),
                Line::from(ascii_bar(ratio, width)),
            ]
        }
        _ if table.is_empty() => vec![Line::from("scored before and after training")],
        _ => vec![Line::from(format!(
            "{:<13} {} -> {}",
            "mean",
            accuracy_text(mean(|t| t.before)),
            accuracy_text(mean(|t| t.after))
        ))],
    };
    lines.extend(table.iter().map(|t| {
        Line::from(format!(
            "{:<13} {} -> {}",
            t.task.name(),
            accuracy_text(t.before),
            accuracy_text(t.after)
        ))
    }));
    f.render_widget(
        Paragraph::new(lines).block(theme.block("Accuracy (before -> after)")),
        area,
    );
}

/// Points from `start` on, with y in log scale when asked.
fn view_points(pts: &[(f64, f64)], start: f64, log: bool) -> Vec<(f64, f64)> {
    pts.iter()
        .filter(|p| p.0 >= start)
        .map(|&(x, y)| (x, if log { y.max(1e-9).ln() } else { y }))
        .collect()
}

fn draw_loss(f: &mut Frame, area: Rect, app: &App, run: &RunInfo, theme: Theme) {
    let start = app.zoom_last.map_or(f64::MIN, |n| {
        run.train_loss.last().map_or(0.0, |l| l.0 - n as f64)
    });
    let train = view_points(&run.train_loss, start, app.log_scale);
    let eval = view_points(&run.eval_loss, start, app.log_scale);
    let title = format!(
        "loss{}: * train  o valid{}",
        if app.log_scale { " (ln)" } else { "" },
        app.zoom_last
            .map_or(String::new(), |n| format!(", last {n} steps"))
    );
    if train.is_empty() {
        f.render_widget(
            Paragraph::new("waiting for the first step...").block(theme.block(&title)),
            area,
        );
        return;
    }
    f.render_widget(
        Plot {
            block: theme.block(&title),
            series: vec![
                Series {
                    symbol: '*',
                    style: theme.fg(Color::Cyan),
                    points: &train,
                    line: true,
                },
                Series {
                    symbol: 'o',
                    style: theme.fg(Color::Yellow),
                    points: &eval,
                    line: false,
                },
            ],
        },
        area,
    );
}

fn draw_stats(f: &mut Frame, area: Rect, run: &RunInfo, theme: Theme) {
    let [stats, memory] = Layout::vertical([Constraint::Length(7), Constraint::Min(5)]).areas(area);
    let mut lines = Vec::new();
    let mut mem = Vec::new();
    if let Some(MetricRow::Train {
        loss,
        lr,
        grad_norm,
        tokens_per_s,
        live_bytes,
        peak_bytes,
        rss_bytes,
        gpu,
        ..
    }) = &run.last
    {
        lines.push(format!("loss  {loss:.4}"));
        lines.push(format!("lr    {lr:.2e}  grad {grad_norm:.2}"));
        lines.push(format!("tok/s {tokens_per_s:.0}"));
        mem.push(format!(
            "RSS  {}",
            rss_bytes.map_or("-".into(), |b| human_bytes(b as f64))
        ));
        match gpu {
            // On a GPU the tensors live in its memory: this process's pool (now, step peak)
            // and the whole device (used / total), next to the host's RSS.
            Some(g) => {
                mem.push(format!(
                    "GPU  {} pk {}",
                    human_bytes(g.used_bytes as f64),
                    human_bytes(g.peak_bytes as f64)
                ));
                mem.push(format!(
                    "dev  {}/{}",
                    human_bytes(g.device_used_bytes as f64),
                    human_bytes(g.device_total_bytes as f64)
                ));
            }
            None => {
                mem.push(format!("live {}", human_bytes(*live_bytes as f64)));
                mem.push(format!("peak {}", human_bytes(*peak_bytes as f64)));
            }
        }
    }
    if let Some(best) = run.best_eval() {
        lines.push(format!("best  {best:.4} ppl {:.2}", best.exp()));
    }
    if let Some(p) = &run.profile {
        lines.push(format!(
            "{} r{} {}",
            p.method_label(),
            p.adapter.rank,
            p.adapter.init.name()
        ));
    }
    let text: Vec<Line> = lines.into_iter().map(Line::from).collect();
    f.render_widget(Paragraph::new(text).block(theme.block("Stats")), stats);
    let block = theme.block("Memory");
    let inner = block.inner(memory);
    f.render_widget(block, memory);
    let n = mem.len() as u16;
    let [numbers, spark] =
        Layout::vertical([Constraint::Length(n), Constraint::Min(0)]).areas(inner);
    f.render_widget(
        Paragraph::new(mem.into_iter().map(Line::from).collect::<Vec<_>>()),
        numbers,
    );
    let width = spark.width as usize;
    let data: Vec<u64> = run.memory[run.memory.len().saturating_sub(width)..]
        .iter()
        .map(|b| b / 1024)
        .collect();
    f.render_widget(
        Sparkline::default()
            .data(&data)
            .bar_set(ASCII_BARS)
            .style(theme.fg(Color::Magenta)),
        spark,
    );
}

fn draw_events(f: &mut Frame, area: Rect, run: &RunInfo, theme: Theme) {
    let lines: Vec<Line> = run
        .events
        .iter()
        .rev()
        .take(area.height.saturating_sub(2) as usize)
        .rev()
        .map(|e| {
            if e.starts_with("error") {
                Line::styled(e.clone(), theme.fg(Color::Red))
            } else {
                Line::from(e.clone())
            }
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(theme.block("Events")),
        area,
    );
}

/// `model.layers.3.self_attn.q_proj` as `3.q_proj`.
fn short_layer(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["model", "layers", i, _, leaf] => format!("{i}.{leaf}"),
        _ => name.to_string(),
    }
}

fn draw_sparsity(f: &mut Frame, area: Rect, run: &RunInfo, theme: Theme) {
    let Some((step, layers)) = &run.sparsity else {
        f.render_widget(
            Paragraph::new("written when training starts and at each eval")
                .wrap(Wrap { trim: true })
                .block(theme.block("Sparsity")),
            area,
        );
        return;
    };
    let n = layers.len().max(1) as f64;
    let base = layers.iter().map(|l| l.density_before).sum::<f64>() / n;
    let merged = layers.iter().map(|l| l.density_after).sum::<f64>() / n;
    let kept = layers.iter().filter(|l| l.pattern_preserved).count();
    let mut lines = vec![
        Line::from(format!("step {step}: base {base:.3} merged {merged:.3}")),
        if kept == layers.len() {
            Line::styled(
                format!("zero pattern kept on all {kept} layers"),
                theme.fg(Color::Green),
            )
        } else {
            Line::styled(
                format!(
                    "DRIFT: {} of {} layers lose zeros",
                    layers.len() - kept,
                    layers.len()
                ),
                theme.warn(),
            )
        },
    ];
    let ranks: Vec<usize> = layers.iter().filter_map(|l| l.live_rank).collect();
    if let Some(min) = ranks.iter().min() {
        let live = ranks.iter().sum::<usize>();
        lines.push(Line::from(format!(
            "SoRA: {live} live ranks, {min}..{}/layer",
            ranks.iter().max().expect("not empty")
        )));
    }
    // The layers that drift most first.
    let mut by_drift: Vec<_> = layers.iter().collect();
    by_drift.sort_by(|a, b| {
        (b.density_after - b.density_before).total_cmp(&(a.density_after - a.density_before))
    });
    for l in by_drift {
        let rank = l.live_rank.map(|r| format!(" r{r}")).unwrap_or_default();
        lines.push(Line::from(format!(
            "{:<12} {:.3} -> {:.3}{rank}",
            short_layer(&l.name),
            l.density_before,
            l.density_after
        )));
    }
    f.render_widget(
        Paragraph::new(lines).block(theme.block("Sparsity (base -> merged)")),
        area,
    );
}

/// Width of a per-task accuracy column of the Runs table.
const TASK_COLUMN: u16 = 6;

/// The Runs table: a row per run, with a column per scored task where the width allows.
fn runs_table<'a>(app: &'a App, overlay: &[&RunInfo], width: u16, theme: Theme) -> Table<'a> {
    let mut tasks: Vec<crate::eval::Task> = crate::eval::Task::ALL
        .into_iter()
        .filter(|t| {
            app.runs
                .iter()
                .any(|r| r.task_accuracy().iter().any(|a| a.task == *t))
        })
        .collect();
    tasks.truncate((width.saturating_sub(84) / TASK_COLUMN) as usize);
    let rows: Vec<Row> = app
        .runs
        .iter()
        .map(|r| {
            let mark = overlay
                .iter()
                .position(|o| o.path == r.path)
                .map_or(' ', |i| SYMBOLS[i % SYMBOLS.len()]);
            run_row(r, mark, &tasks)
        })
        .collect();
    let mut widths = vec![
        Constraint::Min(14),
        Constraint::Length(8),
        Constraint::Length(14),
        Constraint::Length(3),
        Constraint::Length(8),
        Constraint::Length(12),
        Constraint::Length(4),
        Constraint::Length(5),
    ];
    widths.extend(tasks.iter().map(|_| Constraint::Length(TASK_COLUMN - 1)));
    let mut header: Vec<String> = [
        "  run", "state", "method", "r", "init", "val/ppl", "acc", "time",
    ]
    .map(String::from)
    .to_vec();
    header.extend(tasks.iter().map(|t| t.short_name().to_string()));
    Table::new(rows, widths)
        .header(Row::new(header).style(theme.fg(Color::Cyan)))
        .row_highlight_style(theme.selected())
        .block(theme.block(&format!("Runs (by {}; o to change)", app.run_order.name())))
}

/// One run's row: name (with its overlay symbol), state, method, rank, init, best
/// validation loss/perplexity, mean accuracy after training, time, and each task's accuracy.
fn run_row(r: &RunInfo, mark: char, tasks: &[crate::eval::Task]) -> Row<'static> {
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
        None => state_text(r),
    };
    let accuracy = r.task_accuracy();
    let mut cells = vec![
        format!("{mark} {}", r.name),
        state,
        method,
        rank.to_string(),
        init,
        best,
        accuracy_text(r.mean_accuracy_after()),
        dur,
    ];
    cells.extend(
        tasks
            .iter()
            .map(|t| accuracy_text(accuracy.iter().find(|a| a.task == *t).and_then(|a| a.after))),
    );
    Row::new(cells)
}

fn draw_runs(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
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
    let curves: Vec<Vec<(f64, f64)>> = overlay
        .iter()
        .map(|r| view_points(&r.train_loss, f64::MIN, app.log_scale))
        .collect();
    let colors = [
        Color::Cyan,
        Color::Yellow,
        Color::Green,
        Color::Magenta,
        Color::Red,
        Color::Blue,
    ];
    let series = curves
        .iter()
        .enumerate()
        .map(|(i, pts)| Series {
            symbol: SYMBOLS[i % SYMBOLS.len()],
            style: theme.fg(colors[i % colors.len()]),
            points: pts,
            line: true,
        })
        .collect();
    f.render_widget(
        Plot {
            block: theme.block("train loss of the marked runs (symbol in the run column)"),
            series,
        },
        chart_area,
    );
}

fn draw_profiles(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    if app.profiles.is_empty() {
        f.render_widget(
            Paragraph::new("No saved profiles yet: w saves the current Setup.")
                .block(theme.block("Profiles")),
            area,
        );
        return;
    }
    let rows: Vec<Row> = app
        .profiles
        .iter()
        .map(|p| Row::new(vec![p.name.clone(), p.summary()]))
        .collect();
    let table = Table::new(rows, [Constraint::Length(24), Constraint::Min(20)])
        .header(Row::new(vec!["profile", "summary"]).style(theme.fg(Color::Cyan)))
        .row_highlight_style(theme.selected())
        .block(theme.block("Profiles"));
    let mut state = TableState::default().with_selected(Some(app.selected_profile));
    f.render_stateful_widget(table, area, &mut state);
}

fn draw_help(f: &mut Frame, area: Rect, theme: Theme) {
    let text = "\
Tab / Shift-Tab, 1-4   switch view (Setup, Run, Runs, Profiles)
?                      this help (any key closes it)
q, Ctrl-C              quit (runs keep going)
Setup: Up/Down field, Enter edit text or pick a model/data
       file (Enter ok, Esc cancel), Left/Right cycle a choice,
       P add a prune step, w save as profile, l or F5 launch
Run:   p pause/resume, c checkpoint now, s stop (asks),
       m merge/export when finished, g log scale, z last 50
Runs:  Up/Down select, Space mark for the loss overlay,
       Enter open in Run, v evaluate its [eval] tasks (in the
       background), o order by name/val loss/accuracy,
       r replay, e open profile in Setup, d delete (asks)
Profiles: Enter load into Setup, w save Setup as a profile";
    let r = centered(area, 66, 16);
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(text).block(theme.block("help")), r);
}
