//! The popups in front of the views, one per [`Modal`]: help, the path picker, the profile
//! name, and y/n questions. A text edit is drawn in place by its view.

use ratatui::layout::Rect;
use ratatui::widgets::{Clear, List, ListItem, ListState, Paragraph};
use ratatui::Frame;

use super::app::{App, Confirm, Modal, Picker};
use super::keys;
use super::theme::Theme;

/// Draw the open modal, if any.
pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    match &app.modal {
        None | Some(Modal::Editing(_)) => {}
        Some(Modal::Help) => draw_help(f, area, app, theme),
        Some(Modal::Picker(p)) => draw_picker(f, area, p, theme),
        Some(Modal::Naming(n)) => {
            let r = centered(area, 60, 3);
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(format!("{}_", n.text)).block(theme.block(&format!(
                    "save profile as {}/<name>.toml",
                    app.profiles_dir.display()
                ))),
                r,
            );
        }
        Some(Modal::Confirm(c)) => {
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
}

/// The footer's hints while a modal takes the keys.
pub fn hints(app: &App) -> Option<String> {
    Some(
        match app.modal.as_ref()? {
            Modal::Help => "any key closes the help",
            Modal::Picker(_) => "Up/Dn choose  Enter pick  Esc cancel",
            Modal::Naming(_) | Modal::Editing(_) => "type  Enter ok  Esc cancel",
            Modal::Confirm(_) => "y yes  any other key no",
        }
        .to_string(),
    )
}

fn name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
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

fn draw_picker(f: &mut Frame, area: Rect, p: &Picker, theme: Theme) {
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
            .block(theme.block(&format!("pick {} (Enter, Esc)", p.field.label())))
            .highlight_style(theme.selected()),
        r,
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
