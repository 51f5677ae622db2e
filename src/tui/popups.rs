//! The popups in front of the views, one per [`Modal`]: help, the path picker, the profile
//! name, and y/n questions. A text edit is drawn in place by its view.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::widgets::{Clear, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;

use super::app::{App, Confirm, Modal, Picker};
use super::catalog::Candidate;
use super::input::TextInput;
use super::keys;
use super::text::fit_middle;
use super::theme::Theme;
use crate::memory::human_bytes;

/// Draw the open modal, if any.
pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    match &app.modal {
        None | Some(Modal::Editing(_)) => {}
        Some(Modal::Help) => draw_help(f, area, app, theme),
        Some(Modal::Picker(p)) => draw_picker(f, area, app, p, theme),
        Some(Modal::Naming(n)) => {
            let title = format!("save profile as {}/<name>.toml", app.profiles_dir.display());
            draw_input(f, centered(area, 60, 3), &n.input, &title, theme);
        }
        Some(Modal::Confirm(c)) => draw_confirm(f, area, c, theme),
    }
}

/// The keys that answer a [`Modal::Confirm`].
const CONFIRM_KEYS: &str = "y: yes   any other key (n, Esc, Enter): no";

/// A yes/no question, wrapped to the screen, naming what it acts on (a deletion its whole
/// path) and the keys that answer it.
fn draw_confirm(f: &mut Frame, area: Rect, c: &Confirm, theme: Theme) {
    let question = match c {
        Confirm::Stop(p) => format!("Stop {}? It checkpoints first.", name(p)),
        Confirm::Delete(p) => format!("Delete {} and all its files?", p.display()),
        Confirm::Overwrite(n, _) => format!("Profile {n} exists. Overwrite it?"),
    };
    let text = Paragraph::new(format!("{question}\n\n{CONFIRM_KEYS}")).wrap(Wrap { trim: true });
    let width = area.width.min(72);
    let height = text.line_count(width.saturating_sub(2)) as u16 + 2;
    let r = centered(area, width, height);
    f.render_widget(Clear, r);
    f.render_widget(text.block(theme.block("confirm")), r);
}

/// The footer's hints while a modal takes the keys.
pub fn hints(app: &App) -> Option<String> {
    Some(
        match app.modal.as_ref()? {
            Modal::Help => "any key closes the help",
            Modal::Picker(_) => "type to filter  Up/Dn choose  Enter pick  Esc cancel",
            Modal::Naming(_) | Modal::Editing(_) => {
                "type  Lt/Rt Home/End move  ^U ^W delete  Enter ok  Esc cancel"
            }
            Modal::Confirm(_) => CONFIRM_KEYS,
        }
        .to_string(),
    )
}

fn name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What a picker says about a candidate: a model's sparsity once inspected (its size
/// until then), a data file's size.
fn about(app: &App, c: &Candidate) -> String {
    let size = c.bytes.map_or(String::new(), |b| human_bytes(b as f64));
    match app.inspected.get(&c.path).map(|i| &i.result) {
        Some(Some(Ok(m))) if m.is_dense() => format!("dense, {size}"),
        Some(Some(Ok(m))) => format!("{}, {size}", m.pattern()),
        Some(Some(Err(_))) => format!("unreadable, {size}"),
        Some(None) => format!("inspecting..., {size}"),
        None => size,
    }
}

/// A `width`×`height` rectangle in the middle of `area`.
pub fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

/// A one-line text box in `r` with its title, the terminal's cursor at the input's.
fn draw_input(f: &mut Frame, r: Rect, input: &TextInput, title: &str, theme: Theme) {
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(input.value()).block(theme.block(title)), r);
    let x = (r.x + 1 + input.cursor() as u16).min(r.right().saturating_sub(2));
    f.set_cursor_position((x, r.y + 1));
}

/// The typed filter above the candidates it leaves, best first, and the typed entry.
fn draw_picker(f: &mut Frame, area: Rect, app: &App, p: &Picker, theme: Theme) {
    let r = centered(
        area,
        area.width.saturating_sub(8),
        area.height.saturating_sub(6),
    );
    // Each entry's path elided in the middle so that what is known of it stays in view.
    let inner = r.width.saturating_sub(2) as usize;
    let mut items: Vec<ListItem> = p
        .shown()
        .iter()
        .map(|c| {
            let tail = format!(" [{}] {}", c.origin, about(app, c));
            let room = inner.saturating_sub(tail.chars().count()).max(20);
            ListItem::new(format!("{}{tail}", fit_middle(&c.label, room)))
        })
        .collect();
    items.push(ListItem::new(match p.filter.value() {
        "" => "(type to filter, or a path or hub id; Enter here edits the value)".to_string(),
        typed => format!("use \"{typed}\" as typed"),
    }));
    let [filter, list] = Layout::vertical([Constraint::Length(3), Constraint::Min(1)]).areas(r);
    let title = format!("pick {}: type to filter", p.field.key());
    draw_input(f, filter, &p.filter, &title, theme);
    f.render_widget(Clear, list);
    let mut state = ListState::default().with_selected(Some(p.selected));
    f.render_stateful_widget(
        List::new(items)
            .block(theme.block("Up/Dn, Enter picks, Esc cancels"))
            .highlight_style(theme.selected()),
        list,
        &mut state,
    );
}

/// The current view's keys and the global ones, from the key table.
fn draw_help(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let lines = keys::help_lines(app.scope());
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(20) as u16 + 4;
    let r = centered(area, width, lines.len() as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines.join("\n")).block(theme.block("keys (any key closes)")),
        r,
    );
}
