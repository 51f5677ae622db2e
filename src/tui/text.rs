//! Fitting text into the columns a terminal leaves.

/// `name` in at most `width` characters: when longer, its start and its end around `~`, so
/// names that differ only at the end (a run's time) still read apart.
pub fn fit_middle(name: &str, width: usize) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= width || width < 5 {
        return name.to_string();
    }
    let tail = (width - 1) * 3 / 5;
    let head = width - 1 - tail;
    let (start, end) = (&chars[..head], &chars[chars.len() - tail..]);
    format!(
        "{}~{}",
        start.iter().collect::<String>(),
        end.iter().collect::<String>()
    )
}
