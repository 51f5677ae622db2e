//! The Profiles view: the saved profiles, each summarised.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::Color;
use ratatui::widgets::{Paragraph, Row, Table, TableState};
use ratatui::Frame;

use crate::tui::app::App;
use crate::tui::theme::Theme;

pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
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
