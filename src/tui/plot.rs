//! Line charts: drawn with plain ASCII characters (one symbol per series), so that curves
//! read the same on any terminal, with or without colour, and overlaid runs stay apart by
//! their symbols; or, where the terminal is UTF-8 with colours, ratatui's own `Chart` with
//! Braille dots (4× the resolution), the series told apart by colour.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::symbols::Marker;
use ratatui::text::Span;
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType, Widget};
use ratatui::Frame;

use super::theme::Theme;

/// One curve.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    pub symbol: char,
    pub style: Style,
    /// (x, y) in increasing x.
    pub points: &'a [(f64, f64)],
    /// Join consecutive points (a line) or mark only the points.
    pub line: bool,
}

/// Curves on shared axes, with the y range and the x range labelled.
#[derive(Debug, Clone)]
pub struct Plot<'a> {
    pub block: Block<'a>,
    pub series: Vec<Series<'a>>,
    /// The y values are natural logarithms: the axis is labelled in the metric's own units.
    pub log_y: bool,
}

/// `[min, max]` of the values, widened when empty or flat.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        (0.0, 1.0)
    } else if hi - lo < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

/// An x-axis label: whole numbers (steps) as they are, small values (learning rates) in
/// scientific notation.
fn x_label(v: f64) -> String {
    if v.fract() == 0.0 || v.abs() >= 10.0 {
        format!("{v:.0}")
    } else if v.abs() < 0.1 {
        format!("{v:.1e}")
    } else {
        format!("{v:.2}")
    }
}

/// A y-axis label of `v`, or of `e^v` on a log axis.
fn y_text(v: f64, log: bool) -> String {
    y_label(if log { v.exp() } else { v })
}

fn y_label(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Widget for Plot<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let inner = self.block.inner(area);
        self.block.render(area, buf);
        let all = || self.series.iter().flat_map(|s| s.points.iter());
        let (x0, x1) = range(all().map(|p| p.0));
        let (y0, y1) = range(all().map(|p| p.1));
        let labels = [y_text(y1, self.log_y), y_text(y0, self.log_y)];
        let margin = labels.iter().map(|l| l.len()).max().unwrap_or(0) as u16 + 1;
        if inner.width <= margin + 2 || inner.height < 3 {
            return;
        }
        let plot = Rect::new(
            inner.x + margin,
            inner.y,
            inner.width - margin,
            inner.height - 1,
        );
        buf.set_string(inner.x, plot.y, &labels[0], Style::default());
        buf.set_string(inner.x, plot.bottom() - 1, &labels[1], Style::default());
        let (xl, xr) = (x_label(x0), x_label(x1));
        buf.set_string(plot.x, inner.bottom() - 1, &xl, Style::default());
        let right = plot.right().saturating_sub(xr.len() as u16);
        if right > plot.x + xl.len() as u16 {
            buf.set_string(right, inner.bottom() - 1, &xr, Style::default());
        }
        let (w, h) = ((plot.width - 1) as f64, (plot.height - 1) as f64);
        let cell =
            |x: f64, y: f64| -> (f64, f64) { ((x - x0) / (x1 - x0) * w, (y1 - y) / (y1 - y0) * h) };
        for s in &self.series {
            let mut put = |cx: f64, cy: f64| {
                let (cx, cy) = (cx.round(), cy.round());
                if (0.0..=w).contains(&cx) && (0.0..=h).contains(&cy) {
                    buf[(plot.x + cx as u16, plot.y + cy as u16)]
                        .set_char(s.symbol)
                        .set_style(s.style);
                }
            };
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|&(x, y)| cell(x, y))
                .collect();
            if s.line && pts.len() > 1 {
                for pair in pts.windows(2) {
                    let ((ax, ay), (bx, by)) = (pair[0], pair[1]);
                    let n = (bx - ax).abs().max((by - ay).abs()).ceil().max(1.0) as usize;
                    for i in 0..=n {
                        let t = i as f64 / n as f64;
                        put(ax + (bx - ax) * t, ay + (by - ay) * t);
                    }
                }
            } else {
                for (x, y) in pts {
                    put(x, y);
                }
            }
        }
    }
}

/// Draw `plot`: as a Braille `Chart` when the theme allows, else in ASCII.
pub fn render(f: &mut Frame, area: Rect, plot: Plot<'_>, theme: Theme) {
    if !theme.braille() {
        f.render_widget(plot, area);
        return;
    }
    let all = || plot.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = range(all().map(|p| p.0));
    let (y0, y1) = range(all().map(|p| p.1));
    let datasets = plot
        .series
        .iter()
        .map(|s| {
            let (marker, kind) = if s.line {
                (Marker::Braille, GraphType::Line)
            } else {
                (Marker::Dot, GraphType::Scatter)
            };
            Dataset::default()
                .marker(marker)
                .graph_type(kind)
                .style(s.style)
                .data(s.points)
        })
        .collect();
    let labels = |lo: f64, hi: f64, fmt: &dyn Fn(f64) -> String| {
        vec![Span::raw(fmt(lo)), Span::raw(fmt(hi))]
    };
    let log_y = plot.log_y;
    let chart = Chart::new(datasets)
        .block(plot.block)
        .x_axis(
            Axis::default()
                .bounds([x0, x1])
                .labels(labels(x0, x1, &x_label)),
        )
        .y_axis(
            Axis::default()
                .bounds([y0, y1])
                .labels(labels(y0, y1, &|v| y_text(v, log_y))),
        );
    f.render_widget(chart, area);
}
