//! The Run view: one run's progress, loss chart, stats and memory, events, sparsity and task
//! accuracy.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Color;
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Sparkline, Wrap};
use ratatui::Frame;

use super::{accuracy_text, ascii_bar, at_or_before, eval_job_text, state_text, view_points};
use crate::memory::human_bytes;
use crate::train::{MetricRow, RunState};
use crate::tui::app::App;
use crate::tui::plot::{self, Plot, Series};
use crate::tui::theme::{Theme, ASCII_BARS};
use crate::tui::watch::RunInfo;

pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
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
    draw_header(f, head, app, run, theme);
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
        draw_log(f, log, app, run, theme);
        draw_sparsity(f, sparsity, app, run, theme);
        draw_accuracy(f, accuracy, run, theme);
    } else {
        let [log, sparsity] =
            Layout::horizontal([Constraint::Min(30), Constraint::Percentage(45)]).areas(bottom);
        draw_log(f, log, app, run, theme);
        draw_sparsity(f, sparsity, app, run, theme);
    }
}

/// The run's name (its SLURM job, a replay's verdict) over its progress: bar, state, steps,
/// elapsed time and, while running, the ETA.
fn draw_header(f: &mut Frame, head: Rect, app: &App, run: &RunInfo, theme: Theme) {
    let (step, total, elapsed) = run
        .status
        .as_ref()
        .map_or((0, 0, 0.0), |s| (s.step, s.total_steps, s.elapsed_s));
    // An ETA only while the run is running: a stopped, crashed or paused one has none.
    let eta = run
        .status
        .as_ref()
        .filter(|s| s.state == RunState::Running)
        .and_then(|s| s.eta_s)
        .map_or(String::new(), |e| format!("  ETA {e:.0}s"));
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
            "{} {} step {step}/{total}  elapsed {elapsed:.0}s{eta}",
            ascii_bar(ratio, (head.width as usize / 4).clamp(5, 30)),
            state_text(app, run),
        ),
    };
    // A run in a SLURM job names it and, while it waits, why (`PD Resources`); a replay
    // says whether it reproduced its original, bit for bit.
    let dot = if theme.ascii { " - " } else { " · " };
    let mut title = run.name.clone();
    match (
        run.status.as_ref().and_then(|s| s.slurm_job.as_ref()),
        &run.job,
    ) {
        (Some(id), Some(job)) => title += &format!("{dot}SLURM job {id} {}", job.short()),
        (Some(id), None) => title += &format!("{dot}SLURM job {id}"),
        _ => {}
    }
    if let Some(v) = &run.replay {
        title += &format!("{dot}{}", v.summary().lines().next().unwrap_or(""));
    }
    f.render_widget(Paragraph::new(text).block(theme.block(&title)), head);
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

/// The losses at the chart's cursor: `step 120: train 2.3101, valid 2.2840` (the validation
/// loss of the newest evaluation at or before that step).
fn cursor_text(app: &App, run: &RunInfo) -> Option<String> {
    let &(step, train) = run.summary.train_curve.get(app.cursor?)?;
    Some(match at_or_before(&run.summary.eval_curve, step) {
        Some((at, v)) if at == step => format!("step {step}: train {train:.4}, valid {v:.4}"),
        Some((at, v)) => format!("step {step}: train {train:.4}, valid {v:.4} (step {at})"),
        None => format!("step {step}: train {train:.4}"),
    })
}

fn draw_loss(f: &mut Frame, area: Rect, app: &App, run: &RunInfo, theme: Theme) {
    let start = app.zoom_last.map_or(f64::MIN, |n| {
        let last = run.summary.train_curve.last();
        last.map_or(0.0, |l| l.0 as f64 - n as f64)
    });
    let train = view_points(&run.summary.train_curve, start, app.log_scale);
    let eval = view_points(&run.summary.eval_curve, start, app.log_scale);
    let title = format!(
        "loss{}: {}{}",
        if app.log_scale { " (log scale)" } else { "" },
        if theme.braille() {
            "train (line)  valid (dots)"
        } else {
            "* train  o valid"
        },
        app.zoom_last
            .map_or(String::new(), |n| format!(", last {n} steps"))
    );
    let title = match cursor_text(app, run) {
        Some(at) => format!("{title} | {at}"),
        None => title,
    };
    if train.is_empty() {
        f.render_widget(
            Paragraph::new("waiting for the first step...").block(theme.block(&title)),
            area,
        );
        return;
    }
    plot::render(
        f,
        area,
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
            log_y: app.log_scale,
        },
        theme,
    );
}

fn draw_stats(f: &mut Frame, area: Rect, run: &RunInfo, theme: Theme) {
    let [stats, memory] = Layout::vertical([Constraint::Length(7), Constraint::Min(5)]).areas(area);
    let mut lines = Vec::new();
    if let Some(MetricRow::Train {
        loss,
        lr,
        grad_norm,
        tokens_per_s,
        ..
    }) = &run.last
    {
        lines.push(format!("loss  {loss:.4}"));
        lines.push(format!("lr    {lr:.2e}  grad {grad_norm:.2}"));
        lines.push(format!("tok/s {tokens_per_s:.0}"));
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
    draw_memory(f, memory, run, theme);
}

/// The memory readings: the process now (while one works on the run), then the last step's
/// (RSS; on a GPU its pool and the device, else the heap), above a sparkline of the steps.
fn memory_lines(run: &RunInfo) -> Vec<String> {
    let bytes = |b: Option<u64>| b.map_or("-".into(), |b| human_bytes(b as f64));
    let mut mem = Vec::new();
    if let Some(p) = run.process {
        let cpu = p.cpu_percent.map_or("-".into(), |c| format!("{c:.0}%"));
        // 24 columns at 80: `now  CPU 164% 24.0 MiB`.
        mem.push(format!("now  CPU {cpu} {}", bytes(p.rss_bytes)));
    }
    if let Some(gpus) = &run.gpus {
        mem.extend(gpus.lines(|b| human_bytes(b as f64)));
    }
    let Some(MetricRow::Train {
        live_bytes,
        peak_bytes,
        rss_bytes,
        gpu,
        ..
    }) = &run.last
    else {
        return mem;
    };
    mem.push(format!("RSS  {}", bytes(*rss_bytes)));
    match gpu {
        // On a GPU the tensors live in its memory: this process's pool (now, step peak)
        // and the whole device (used / total), next to the host's RSS.
        Some(g) => {
            mem.push(format!(
                "GPU  {} pk {}",
                bytes(Some(g.used_bytes)),
                bytes(Some(g.peak_bytes))
            ));
            mem.push(format!(
                "dev  {}/{}",
                bytes(Some(g.device_used_bytes)),
                bytes(Some(g.device_total_bytes))
            ));
        }
        None => {
            mem.push(format!("live {}", bytes(Some(*live_bytes as u64))));
            mem.push(format!("peak {}", bytes(Some(*peak_bytes as u64))));
        }
    }
    mem
}

fn draw_memory(f: &mut Frame, area: Rect, run: &RunInfo, theme: Theme) {
    let block = theme.block("Memory");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let mem = memory_lines(run);
    let [numbers, spark] =
        Layout::vertical([Constraint::Length(mem.len() as u16), Constraint::Min(0)]).areas(inner);
    f.render_widget(
        Paragraph::new(mem.into_iter().map(Line::from).collect::<Vec<_>>()),
        numbers,
    );
    let width = spark.width as usize;
    let shown = &run.memory[run.memory.len().saturating_sub(width)..];
    // Bars from just below the smallest reading, so the changes show (not a wall from 0).
    let floor = shown.iter().min().copied().unwrap_or(0);
    let data: Vec<u64> = shown.iter().map(|b| (b - floor) / 1024 + 1).collect();
    // Flat memory stays a low line (the scale's top is at least 8 KiB above the floor).
    let top = data.iter().max().copied().unwrap_or(1).max(8);
    let bars = if theme.ascii {
        ASCII_BARS
    } else {
        ratatui::symbols::bar::NINE_LEVELS
    };
    f.render_widget(
        Sparkline::default()
            .data(&data)
            .max(top)
            .bar_set(bars)
            .style(theme.fg(Color::Magenta)),
        spark,
    );
}

/// The run's events, or (`o`) the last lines of its process's output.
fn draw_log(f: &mut Frame, area: Rect, app: &App, run: &RunInfo, theme: Theme) {
    let rows = area.height.saturating_sub(2) as usize;
    // The last `rows` lines, or as many back as PgUp went (the newest line's position).
    let back = |lines: &[String]| app.log_back.min(lines.len().saturating_sub(rows));
    let last = |lines: &[String]| {
        let end = lines.len() - back(lines);
        lines[end.saturating_sub(rows)..end].to_vec()
    };
    let shown = if app.show_output {
        &run.log_tail
    } else {
        &run.events
    };
    let scrolled = match back(shown) {
        0 => String::new(),
        n => format!(", {n} lines back"),
    };
    let (title, lines) = match app.show_output {
        false => (format!("Events (o: output{scrolled})"), last(&run.events)),
        true if run.log_tail.is_empty() => (
            "Output (o: events)".to_string(),
            vec!["no output log: a run started in a terminal writes it there".into()],
        ),
        true => (format!("Output (o: events{scrolled})"), last(&run.log_tail)),
    };
    let lines: Vec<Line> = lines
        .into_iter()
        .map(|e| {
            if e.starts_with("error") || e.starts_with("Error") {
                Line::styled(e, theme.fg(Color::Red))
            } else {
                Line::from(e)
            }
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(theme.block(&title)),
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

fn draw_sparsity(f: &mut Frame, area: Rect, app: &App, run: &RunInfo, theme: Theme) {
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
    // Up/Down scroll the layers (the summary lines stay).
    let rows = (area.height as usize)
        .saturating_sub(2 + lines.len())
        .max(1);
    let top = app.layers_top.min(by_drift.len().saturating_sub(rows));
    for l in by_drift.into_iter().skip(top) {
        let rank = l.live_rank.map(|r| format!(" r{r}")).unwrap_or_default();
        lines.push(Line::from(format!(
            "{:<12} {:.3} -> {:.3}{rank}",
            short_layer(&l.name),
            l.density_before,
            l.density_after
        )));
    }
    let title = match top {
        0 => "Sparsity (base -> merged)".to_string(),
        _ => format!("Sparsity from layer {}", top + 1),
    };
    f.render_widget(Paragraph::new(lines).block(theme.block(&title)), area);
}
