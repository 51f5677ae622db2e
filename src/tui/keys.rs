//! Every key binding in one table: it drives the dispatch ([`action_for`]), the footer
//! ([`footer`]) and the help screen ([`help_lines`]), so the three never disagree.

use crossterm::event::KeyCode;

/// Where a binding applies: everywhere, or in one view (or mode of a view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Setup,
    Run,
    Runs,
    /// The Sweeps view's comparison of trials.
    Sweeps,
    /// The Sweeps view's form that defines a new sweep.
    SweepForm,
    Profiles,
}

impl Scope {
    /// Every scope, global first (the order of the help and the docs).
    pub const ALL: [Scope; 7] = [
        Scope::Global,
        Scope::Setup,
        Scope::Run,
        Scope::Runs,
        Scope::Sweeps,
        Scope::SweepForm,
        Scope::Profiles,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Scope::Global => "everywhere",
            Scope::Setup => "Setup",
            Scope::Run => "Run",
            Scope::Runs => "Runs",
            Scope::Sweeps => "Sweeps",
            Scope::SweepForm => "new sweep",
            Scope::Profiles => "Profiles",
        }
    }
}

/// What a key asks for; its meaning in the current view is up to the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    Help,
    NextView,
    PrevView,
    /// Show the view numbered by the key's place in the binding's keys.
    ShowView,
    /// Up/Down: the previous/next row or field.
    Move,
    /// Left/Right: the previous/next choice.
    Cycle,
    /// PgUp/PgDn in a form: the previous/next section.
    MoveSection,
    /// Enter: edit, pick, open or load, depending on the view.
    Activate,
    Launch,
    Save,
    AddPrune,
    NewSweep,
    Pause,
    Checkpoint,
    Stop,
    Merge,
    LogScale,
    Zoom,
    Mark,
    Evaluate,
    Order,
    Replay,
    EditProfile,
    Delete,
    SortNext,
    SortReverse,
    NextSweep,
    ChartMode,
    /// `[`/`]`: less/more smoothing.
    Smooth,
    NextParam,
    Promote,
    /// Resume a stopped or crashed run, or a sweep whose scheduler is gone.
    Resume,
    /// Write the shown sweep's `lors report`.
    Report,
    /// Show the run's output log instead of its events, or back.
    OutputLog,
    /// Scroll the Run view's Sparsity list.
    ScrollLayers,
    /// Move the loss chart's cursor a step back or on (its values shown).
    Cursor,
    /// Scroll the Run view's events or output back and forth.
    ScrollLog,
    Back,
}

/// One binding: its keys, its action, a short footer label (empty: not in the footer) and
/// its line in the help screen.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    pub scope: Scope,
    pub keys: &'static [KeyCode],
    pub action: Action,
    pub footer: &'static str,
    pub help: &'static str,
}

const fn bind(
    scope: Scope,
    keys: &'static [KeyCode],
    action: Action,
    footer: &'static str,
    help: &'static str,
) -> Binding {
    Binding {
        scope,
        keys,
        action,
        footer,
        help,
    }
}

use Action as A;
use KeyCode::{BackTab, Char, Down, Enter, Esc, Left, PageDown, PageUp, Right, Tab, Up, F};
use Scope as S;

const UP_DOWN: &[KeyCode] = &[Up, Down];
const LEFT_RIGHT: &[KeyCode] = &[Left, Right];
const DIGITS: &[KeyCode] = &[Char('1'), Char('2'), Char('3'), Char('4'), Char('5')];

/// The bindings, global ones first: scope, keys, action, footer label, help line.
#[rustfmt::skip]
pub const BINDINGS: &[Binding] = &[
    bind(S::Global, &[Char('q')], A::Quit, "quit", "quit (runs and sweeps keep going)"),
    bind(S::Global, &[Char('?')], A::Help, "help", "the keys of this view"),
    bind(S::Global, &[Tab], A::NextView, "view", "next view"),
    bind(S::Global, &[BackTab], A::PrevView, "", "previous view"),
    bind(S::Global, DIGITS, A::ShowView, "", "show Setup, Run, Runs, Sweeps, Profiles"),
    bind(S::Setup, UP_DOWN, A::Move, "", "previous / next field"),
    bind(S::Setup, &[PageUp, PageDown], A::MoveSection, "", "previous / next section"),
    bind(S::Setup, &[Enter], A::Activate, "edit", "edit text, or pick a model or data file"),
    bind(S::Setup, LEFT_RIGHT, A::Cycle, "", "previous / next choice (the `< >` fields)"),
    bind(S::Setup, &[Char('l'), F(5)], A::Launch, "launch", "launch a run"),
    bind(S::Setup, &[Char('w')], A::Save, "save", "save as a profile"),
    bind(S::Setup, &[Char('S')], A::NewSweep, "sweep", "define a sweep from these settings"),
    bind(S::Setup, &[Char('P')], A::AddPrune, "prune", "add a prune step (wanda 50%)"),
    bind(S::Run, &[Char('p')], A::Pause, "pause", "pause or resume"),
    bind(S::Run, &[Char('c')], A::Checkpoint, "checkpoint", "checkpoint now"),
    bind(S::Run, &[Char('s')], A::Stop, "stop", "stop (asks; checkpoints first)"),
    bind(S::Run, &[Char('m')], A::Merge, "merge", "merge and export a finished run"),
    bind(S::Run, &[Char('g')], A::LogScale, "log", "log scale"),
    bind(S::Run, &[Char('z')], A::Zoom, "zoom", "only the last 50 steps"),
    bind(S::Run, &[Char('o')], A::OutputLog, "", "the run's output log instead of its events"),
    bind(S::Run, UP_DOWN, A::ScrollLayers, "", "scroll the Sparsity panel's layers"),
    bind(S::Run, LEFT_RIGHT, A::Cursor, "", "move the chart's cursor: the losses at a step"),
    bind(S::Run, &[PageUp, PageDown], A::ScrollLog, "", "scroll the events or output back / on"),
    bind(S::Runs, UP_DOWN, A::Move, "", "select a run"),
    bind(S::Runs, &[Char(' ')], A::Mark, "mark", "mark for the loss overlay"),
    bind(S::Runs, LEFT_RIGHT, A::Cursor, "", "move the overlay's cursor: each run's loss at a step"),
    bind(S::Runs, &[Enter], A::Activate, "open", "open in Run"),
    bind(S::Runs, &[Char('v')], A::Evaluate, "evaluate", "score its [eval] tasks"),
    bind(S::Runs, &[Char('o')], A::Order, "order", "order: newest, val loss, accuracy, name"),
    bind(S::Runs, &[Char('r')], A::Replay, "replay", "replay (same profile and seed)"),
    bind(S::Runs, &[Char('e')], A::EditProfile, "edit", "open its profile in Setup"),
    bind(S::Runs, &[Char('d')], A::Delete, "delete", "delete (asks)"),
    bind(S::Runs, &[Char('R')], A::Resume, "resume", "resume a stopped or crashed run"),
    bind(S::Sweeps, UP_DOWN, A::Move, "", "select a trial"),
    bind(S::Sweeps, &[Char('f')], A::NextSweep, "sweep", "show the next sweep"),
    bind(S::Sweeps, &[Char('s')], A::SortNext, "sort", "sort by the next column"),
    bind(S::Sweeps, &[Char('S')], A::SortReverse, "", "reverse the order"),
    bind(S::Sweeps, &[Char('c')], A::ChartMode, "chart", "chart: valid, train (EMA), lr plot"),
    bind(S::Sweeps, &[Char('['), Char(']')], A::Smooth, "", "less / more EMA smoothing"),
    bind(S::Sweeps, &[Char('a')], A::NextParam, "", "the plot's swept parameter"),
    bind(S::Sweeps, &[Char('w')], A::Promote, "promote", "save the trial's profile"),
    bind(S::Sweeps, &[Char('e')], A::EditProfile, "setup", "open the trial in Setup"),
    bind(S::Sweeps, &[Enter], A::Activate, "", "open the trial in Run"),
    bind(S::Sweeps, &[Char('n')], A::NewSweep, "new", "define a new sweep"),
    bind(S::Sweeps, &[Char('R')], A::Resume, "", "resume a sweep whose lors sweep is gone"),
    bind(S::Sweeps, &[Char('p')], A::Report, "", "write the sweep's report (lors report)"),
    bind(S::SweepForm, UP_DOWN, A::Move, "", "previous / next field"),
    bind(S::SweepForm, &[Enter], A::Activate, "edit", "edit the field"),
    bind(S::SweepForm, LEFT_RIGHT, A::Cycle, "", "previous / next choice (the `< >` fields)"),
    bind(S::SweepForm, &[Char('l')], A::Launch, "launch", "launch the sweep (detached)"),
    bind(S::SweepForm, &[Esc], A::Back, "back", "back to the trials"),
    bind(S::Profiles, UP_DOWN, A::Move, "", "select a profile"),
    bind(S::Profiles, &[Enter], A::Activate, "load", "load into Setup (a sweep's base)"),
    bind(S::Profiles, &[Char('l')], A::Launch, "launch", "launch a sweep profile's sweep"),
    bind(S::Profiles, &[Char('w')], A::Save, "save", "save Setup as a profile"),
];

/// The action `key` stands for in `scope` (a scope's own bindings before the global ones),
/// with the key's place among its binding's keys.
pub fn action_for(scope: Scope, key: KeyCode) -> Option<(Action, usize)> {
    let find = |s: Scope| {
        BINDINGS.iter().filter(|b| b.scope == s).find_map(|b| {
            let i = b.keys.iter().position(|k| *k == key)?;
            Some((b.action, i))
        })
    };
    find(scope).or_else(|| find(Scope::Global))
}

/// `Up`, `Enter`, `q`, `Space`: a key as the footer and help name it.
pub fn key_name(key: KeyCode) -> String {
    match key {
        Char(' ') => "Space".into(),
        Char(c) => c.to_string(),
        BackTab => "S-Tab".into(),
        Left => "Lt".into(),
        Right => "Rt".into(),
        PageUp => "PgUp".into(),
        PageDown => "PgDn".into(),
        Up => "Up".into(),
        Down => "Dn".into(),
        F(n) => format!("F{n}"),
        other => format!("{other:?}"),
    }
}

fn keys_text(b: &Binding) -> String {
    b.keys
        .iter()
        .map(|k| key_name(*k))
        .collect::<Vec<_>>()
        .join("/")
}

/// The footer's key hints that fit in `width` columns: the global ones, then `scope`'s, whole
/// hints only.
pub fn footer(scope: Scope, width: usize) -> String {
    let mut line = String::new();
    let hints = BINDINGS
        .iter()
        .filter(|b| !b.footer.is_empty() && (b.scope == Scope::Global || b.scope == scope))
        .map(|b| format!("{} {}", keys_text(b), b.footer));
    for hint in hints {
        let sep = if line.is_empty() { "" } else { "  " };
        if line.chars().count() + sep.len() + hint.chars().count() > width {
            break;
        }
        line.push_str(sep);
        line.push_str(&hint);
    }
    line
}

/// The help screen's lines for `scope`: its bindings, then the global ones.
pub fn help_lines(scope: Scope) -> Vec<String> {
    let section = |s: Scope| {
        std::iter::once(format!("{}:", s.title())).chain(
            BINDINGS
                .iter()
                .filter(move |b| b.scope == s)
                .map(|b| format!("  {:<10} {}", keys_text(b), b.help)),
        )
    };
    section(scope).chain(section(Scope::Global)).collect()
}

/// The key table as Markdown, a table per scope (`docs/workbench.md` holds it, and
/// `tests/docs.rs` keeps the two equal).
pub fn markdown() -> String {
    let mut out = String::new();
    for scope in Scope::ALL {
        out.push_str(&format!(
            "\n**{}**\n\n| keys | what |\n| --- | --- |\n",
            scope.title()
        ));
        for b in BINDINGS.iter().filter(|b| b.scope == scope) {
            out.push_str(&format!("| `{}` | {} |\n", keys_text(b), b.help));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The views' scopes (all but the global one).
    fn views() -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(|&s| s != Scope::Global)
    }

    /// No key means two things in one view (its own bindings and the global ones).
    #[test]
    fn no_key_is_bound_twice_in_a_scope() {
        for scope in views() {
            let mut seen = Vec::new();
            for b in BINDINGS
                .iter()
                .filter(|b| b.scope == scope || b.scope == Scope::Global)
            {
                for k in b.keys {
                    assert!(!seen.contains(k), "{k:?} twice in {scope:?}");
                    seen.push(*k);
                }
            }
        }
    }

    /// The footer keeps whole hints within its width; at 80 columns Setup's all fit.
    #[test]
    fn the_footer_fits_whole_hints() {
        for scope in views() {
            assert!(footer(scope, 79).chars().count() <= 79, "{scope:?}");
        }
        let setup = footer(Scope::Setup, 79);
        assert!(setup.ends_with("S sweep  P prune"), "{setup}");
        assert_eq!(footer(Scope::Setup, 30), "q quit  ? help  Tab view");
        assert_eq!(
            action_for(Scope::Sweeps, KeyCode::Char('3')),
            Some((Action::ShowView, 2))
        );
        assert_eq!(action_for(Scope::Run, KeyCode::Char('x')), None);
    }
}
