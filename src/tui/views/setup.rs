//! The Setup view: the form, and what was detected about the model, prune step and data.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Color;
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use super::{draw_fields, FormLine};
use crate::memory::human_bytes;
use crate::tui::app::{App, EditTarget};
use crate::tui::setup::{FieldId, Setup};
use crate::tui::theme::Theme;

pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let s = &app.setup;
    let [form, info] = if area.width >= 110 {
        Layout::horizontal([Constraint::Length(60), Constraint::Min(40)]).areas(area)
    } else {
        Layout::vertical([Constraint::Min(5), Constraint::Length(8)]).areas(area)
    };
    let mut previous = "";
    let lines = s.fields().map(|(id, value)| {
        let section = id.section();
        let heading = (section != previous).then(|| format!("[{section}]"));
        previous = section;
        FormLine {
            heading,
            label: id.label(),
            value: if value.is_empty() {
                id.placeholder()
            } else {
                value.to_string()
            },
            choice: !id.choices().is_empty(),
            typed: app.edit_text(EditTarget::Setup(id)),
        }
    });
    // The selected key and its place among the fields (the list scrolls).
    let title = format!(
        "Setup: {} {}/{}",
        s.selected_field().key(),
        s.selected + 1,
        FieldId::all().len()
    );
    draw_fields(f, form, &title, lines, s.selected, 20, theme);
    f.render_widget(
        Paragraph::new(detected_lines(app, theme))
            .wrap(Wrap { trim: true })
            .block(theme.block("Detected")),
        info,
    );
}

/// The Detected panel's lines about the model: architecture and size, and its sparsity (or
/// a warning when it is dense), or why it cannot be read, or its download's progress.
fn model_lines(s: &Setup, theme: Theme) -> Vec<Line<'static>> {
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
            if m.is_dense() && !s.pruning() {
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

/// The selected field's doc comment (and a list's choices): what the key does.
fn help_line(id: FieldId, theme: Theme) -> Line<'static> {
    let mut text = id.doc().to_string();
    if let Some(names) = id.item_choices() {
        text = format!("{text} (comma-separated: {})", names.join(", "));
    }
    if text.is_empty() {
        text = id.key().to_string();
    }
    Line::styled(text, theme.fg(Color::Cyan))
}

/// What the Detected panel says about the model, the prune step and the data.
fn detected_lines(app: &App, theme: Theme) -> Vec<Line<'static>> {
    let s = &app.setup;
    // Whether it can launch comes first: in a short panel the data counts are cut, not it.
    let mut lines = vec![
        launch_line(app, theme),
        help_line(s.selected_field(), theme),
    ];
    lines.extend(model_lines(s, theme));
    if s.pruning() {
        let pattern = s.value(FieldId::PRUNE_PATTERN);
        let unstructured = pattern.parse::<crate::sparsity::Layout>().ok()
            == Some(crate::sparsity::Layout::Unstructured);
        let sparsity = s.value(FieldId::PRUNE_SPARSITY);
        lines.push(Line::from(format!(
            "prune step: {} {} {} before training, calibrated on the train data",
            s.value(FieldId::PRUNE_METHOD),
            pattern,
            if unstructured { sparsity } else { "" }
        )));
    }
    for (id, info) in &s.data {
        let label = id.key();
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
                s.value(FieldId::SEQ_LEN)
            )),
            Err(e) => Line::styled(format!("{label}: {e}"), theme.fg(Color::Red)),
        });
    }
    lines
}

/// Whether the Setup can launch: invalid (why), still checking, or ready. Ready only once the
/// checks are in: until then `l` waits for them.
fn launch_line(app: &App, theme: Theme) -> Line<'static> {
    match (&app.setup.error, app.setup.checking(&app.base)) {
        (Some(e), _) => Line::styled(format!("invalid: {e}"), theme.fg(Color::Red)),
        (None, Some(what)) => Line::styled(
            format!("checking {what}... (l launches once it passes)"),
            theme.fg(Color::Yellow),
        ),
        (None, None) => Line::styled("ready to launch (l)", theme.fg(Color::Green)),
    }
}
