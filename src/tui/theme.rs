//! How the screen may look: colours (unless `NO_COLOR`), box-drawing borders (unless the
//! locale is not UTF-8 or `LORS_ASCII` is set), and the symbols and colours of overlaid
//! curves.

use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::{bar, border};
use ratatui::widgets::{Block, Borders};

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

pub const ASCII_BARS: bar::Set = bar::Set {
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

/// Colours of overlaid curves, in order.
const SERIES_COLORS: [Color; 6] = [
    Color::Cyan,
    Color::Yellow,
    Color::Green,
    Color::Magenta,
    Color::Red,
    Color::Blue,
];

/// Symbols of overlaid curves, in order.
pub const SYMBOLS: [char; 8] = ['*', 'o', '+', 'x', '#', '@', '%', '&'];

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

    pub fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    pub fn selected(&self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }

    /// A form's section heading.
    pub fn heading(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    pub fn warn(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }

    /// Whether charts may use Braille dots (4× the resolution): on a UTF-8 terminal with
    /// colours, which tell the curves apart once their symbols are dots.
    pub fn braille(&self) -> bool {
        !self.ascii && self.color
    }

    /// The colour of the `i`th overlaid curve.
    pub fn series_color(&self, i: usize) -> Color {
        SERIES_COLORS[i % SERIES_COLORS.len()]
    }

    pub fn block<'a>(&self, title: &str) -> Block<'a> {
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
