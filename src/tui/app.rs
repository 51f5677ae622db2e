//! The workbench's state: a plain state machine driven by keys and file updates, kept apart
//! from drawing and from side effects (which it returns as [`Effect`]s), so it is tested
//! without a terminal. A key goes to the open [`Modal`] if there is one, else through the
//! binding table ([`super::keys`]) to an [`Action`] of the current view ([`super::actions`]).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use fuzzy_matcher::skim::SkimMatcherV2;
use fuzzy_matcher::FuzzyMatcher;

use super::catalog::{Candidate, DataRequest, ProfileEntry};
use super::input::TextInput;
use super::keys::{self, Action, Scope};
use super::setup::FieldId;
use super::setup::Setup;
use super::sweeps::{Board, FormField};
use super::watch::RunInfo;
use super::watch::SweepInfo;
use crate::data::DataSummary;
use crate::model::ModelSummary;
use crate::sources::hub::Download;
use crate::sweep::TrialState;
use crate::train::{ControlRequest, Profile, RunState};

/// The views, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Setup,
    Run,
    Runs,
    Sweeps,
    Profiles,
}

impl View {
    pub const ALL: [View; 5] = [
        View::Setup,
        View::Run,
        View::Runs,
        View::Sweeps,
        View::Profiles,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Setup => "Setup",
            View::Run => "Run",
            View::Runs => "Runs",
            View::Sweeps => "Sweeps",
            View::Profiles => "Profiles",
        }
    }
}

/// What the event loop must do for the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start a detached training process with this profile.
    Launch(Box<Profile>),
    /// Start a detached `lors sweep` over this base profile with this `[sweep]` table.
    /// (With the sweep's name, if given.)
    LaunchSweep(Box<Profile>, toml::Table, Option<String>),
    /// Start a detached `lors sweep --resume` on this sweep directory.
    ResumeSweep(PathBuf),
    /// Start a detached `lors train --resume` on this run directory.
    ResumeRun(PathBuf),
    /// Write `lors report` of this sweep into its `report/`, detached.
    Report(PathBuf),
    /// Send a control request to a run.
    Control(PathBuf, ControlRequest),
    /// Delete a run directory.
    Delete(PathBuf),
    /// Re-run a run from its recorded profile and seed, into a new run.
    Replay(PathBuf),
    /// Export a run's merged model.
    Merge(PathBuf),
    /// Score zero-shot tasks on a finished run, in the background.
    Evaluate(PathBuf, Box<crate::eval::TaskSuite>),
    /// Describe the model at this path (for validation and the Detected panel).
    InspectModel(PathBuf),
    /// Count the records and tokens of the data file behind a Setup field.
    InspectData(FieldId, DataRequest),
    /// Write a profile to the profiles folder under this name (overwriting).
    SaveProfile(String, Box<Profile>),
}

/// The model picker's knowledge of a model: the size of its weights when the inspection was
/// asked for (a changed size asks again), and the result once in.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    pub bytes: Option<u64>,
    pub result: Option<Result<ModelSummary, String>>,
}

/// Models up to this size are inspected for the picker as it opens (reading their weights);
/// bigger ones show their size until picked.
pub const PICKER_INSPECTS_UP_TO: u64 = 2 << 30;

/// A list of candidates for a path field, filtered by what is typed (fuzzy, best first);
/// the entry after the candidates takes the typed text itself as the path or hub id.
#[derive(Debug, Clone, PartialEq)]
pub struct Picker {
    pub field: FieldId,
    pub items: Vec<Candidate>,
    /// The typed text: the filter, and the last entry's path.
    pub filter: TextInput,
    /// The entry under the cursor among [`shown`](Self::shown) and the typed entry after them.
    pub selected: usize,
}

impl Picker {
    /// A picker over `items` with the cursor on `current`'s entry (or the typed one).
    pub fn new(field: FieldId, items: Vec<Candidate>, current: &Path) -> Self {
        let selected = items
            .iter()
            .position(|c| c.path == current)
            .unwrap_or(items.len());
        Self {
            field,
            items,
            filter: TextInput::default(),
            selected,
        }
    }

    /// The candidates that match the filter, best first (all, in order, without one).
    pub fn shown(&self) -> Vec<&Candidate> {
        let pattern = self.filter.value();
        if pattern.is_empty() {
            return self.items.iter().collect();
        }
        let matcher = SkimMatcherV2::default();
        let mut scored: Vec<(i64, &Candidate)> = self
            .items
            .iter()
            .filter_map(|c| Some((matcher.fuzzy_match(&c.label, pattern)?, c)))
            .collect();
        scored.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
        scored.into_iter().map(|(_, c)| c).collect()
    }
}

/// A question waiting for y/n.
#[derive(Debug, Clone, PartialEq)]
pub enum Confirm {
    Stop(PathBuf),
    Delete(PathBuf),
    Overwrite(String, Box<Profile>),
}

/// A profile name being typed, and the profile it will save.
#[derive(Debug, Clone, PartialEq)]
pub struct Naming {
    pub input: TextInput,
    pub profile: Box<Profile>,
}

/// Which field a text edit goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditTarget {
    Setup(FieldId),
    Sweep(FormField),
}

/// Text being typed into a field.
#[derive(Debug, Clone, PartialEq)]
pub struct Editing {
    pub target: EditTarget,
    pub input: TextInput,
}

/// The one thing in front of the views that takes the keys, if any.
#[derive(Debug, Clone, PartialEq)]
pub enum Modal {
    /// The key list of the current view (any key closes it).
    Help,
    Picker(Picker),
    Naming(Naming),
    Editing(Editing),
    Confirm(Confirm),
}

/// How the Runs view orders its runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunOrder {
    /// Newest first (by start; a run without a status yet is being created: newest).
    #[default]
    Newest,
    /// By directory name.
    Name,
    /// Best validation loss first.
    ValidLoss,
    /// Highest mean task accuracy after training first.
    Accuracy,
}

impl RunOrder {
    pub fn name(self) -> &'static str {
        match self {
            RunOrder::Newest => "newest",
            RunOrder::Name => "name",
            RunOrder::ValidLoss => "validation loss",
            RunOrder::Accuracy => "mean accuracy",
        }
    }

    pub(super) fn next(self) -> Self {
        match self {
            RunOrder::Newest => RunOrder::ValidLoss,
            RunOrder::ValidLoss => RunOrder::Accuracy,
            RunOrder::Accuracy => RunOrder::Name,
            RunOrder::Name => RunOrder::Newest,
        }
    }

    /// Sort `runs` (runs without the value last, by name).
    fn sort(self, runs: &mut [RunInfo]) {
        let key = |r: &RunInfo| match self {
            RunOrder::Name => None,
            RunOrder::Newest => Some(-r.started_at().unwrap_or(f64::INFINITY)),
            RunOrder::ValidLoss => r.best_eval(),
            RunOrder::Accuracy => r.mean_accuracy_after().map(|a| -a),
        };
        runs.sort_by(|a, b| match (key(a), key(b)) {
            (Some(x), Some(y)) => x.total_cmp(&y).then_with(|| a.path.cmp(&b.path)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.path.cmp(&b.path),
        });
    }
}

/// The whole UI state.
#[derive(Debug, Clone)]
pub struct App {
    pub view: View,
    pub modal: Option<Modal>,
    pub base: Profile,
    pub setup: Setup,
    /// Where saved profiles go (the TUI's `--profiles-dir`).
    pub profiles_dir: PathBuf,
    pub runs: Vec<RunInfo>,
    /// Selected row of the Runs view.
    pub selected_run: usize,
    /// Runs whose loss curves the Runs view overlays.
    pub marked: BTreeSet<PathBuf>,
    pub run_order: RunOrder,
    /// The run the Run view shows.
    pub focused: Option<PathBuf>,
    pub sweeps: Vec<SweepInfo>,
    /// The Sweeps view: which sweep, its order, chart and the new-sweep form.
    pub board: Board,
    pub profiles: Vec<ProfileEntry>,
    pub selected_profile: usize,
    pub models: Vec<Candidate>,
    /// What the model picker knows of each model: inspected (or being inspected) at this
    /// size of its weights, and the result once in.
    pub inspected: HashMap<PathBuf, Inspection>,
    pub datasets: Vec<Candidate>,
    pub log_scale: bool,
    /// The Run view shows the run's output log instead of its events.
    pub show_output: bool,
    /// The Run view's scroll: layers skipped at the top of the Sparsity list, and lines back
    /// from the end of the events or output.
    pub layers_top: usize,
    pub log_back: usize,
    /// The loss chart's cursor: an index into the focused run's train steps (none: off).
    pub cursor: Option<usize>,
    /// The Runs overlay's cursor: a step among the marked runs' train steps (none: off).
    pub overlay_step: Option<usize>,
    /// Show only the last this many steps of the loss chart (`None`: all).
    pub zoom_last: Option<usize>,
    /// One line of feedback in the footer.
    pub notice: Option<String>,
    /// A launch asked for while the Setup's checks were running: it happens when they end.
    pub launch_waiting: bool,
    /// The profile of the newest launch and its run directory, while that run is starting.
    pub starting: Option<(Box<Profile>, PathBuf)>,
    pub quit: bool,
}

/// Whether `name` is a usable profile file name (no path separators or dots up front).
fn valid_profile_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl App {
    pub fn new(base: Profile) -> Self {
        Self {
            view: View::Setup,
            modal: None,
            setup: Setup::from_profile(&base),
            base,
            profiles_dir: "profiles".into(),
            runs: Vec::new(),
            selected_run: 0,
            marked: BTreeSet::new(),
            run_order: RunOrder::default(),
            focused: None,
            sweeps: Vec::new(),
            board: Board::default(),
            profiles: Vec::new(),
            selected_profile: 0,
            models: Vec::new(),
            inspected: HashMap::new(),
            datasets: Vec::new(),
            log_scale: false,
            show_output: false,
            layers_top: 0,
            log_back: 0,
            cursor: None,
            overlay_step: None,
            zoom_last: None,
            notice: None,
            launch_waiting: false,
            starting: None,
            quit: false,
        }
    }

    /// Where the keys go now: the current view, or the Sweeps view's form.
    pub fn scope(&self) -> Scope {
        match self.view {
            View::Setup => Scope::Setup,
            View::Run => Scope::Run,
            View::Runs => Scope::Runs,
            View::Sweeps if self.board.form.is_some() => Scope::SweepForm,
            View::Sweeps => Scope::Sweeps,
            View::Profiles => Scope::Profiles,
        }
    }

    /// The text being typed into `target`, while it is being edited.
    pub fn edit_text(&self, target: EditTarget) -> Option<&TextInput> {
        match &self.modal {
            Some(Modal::Editing(e)) if e.target == target => Some(&e.input),
            _ => None,
        }
    }

    /// The inspections to run for the current Setup (the model, then its data files).
    pub fn inspections(&self) -> Vec<Effect> {
        let mut out = vec![Effect::InspectModel(self.setup.model_path())];
        out.extend(self.data_inspections());
        out
    }

    fn data_inspections(&self) -> Vec<Effect> {
        self.setup
            .data_requests(&self.base)
            .into_iter()
            .map(|(id, req)| Effect::InspectData(id, req))
            .collect()
    }

    /// The run shown in the Run view.
    pub fn focused_run(&self) -> Option<&RunInfo> {
        let path = self.focused.as_ref()?;
        self.runs.iter().find(|r| &r.path == path)
    }

    /// At start: show the Run view when the focused run is still going (re-attaching after
    /// an SSH drop lands on it), else stay in Setup.
    pub fn open_on_active_run(&mut self) {
        if self
            .focused_run()
            .and_then(|r| r.status.as_ref())
            .is_some_and(|s| s.state.is_active())
        {
            self.view = View::Run;
        }
    }

    /// New run data from the watcher; a run launched from here is focused once it appears.
    pub fn set_runs(&mut self, runs: Vec<RunInfo>) {
        let selected = self.runs.get(self.selected_run).map(|r| r.path.clone());
        self.runs = runs;
        self.run_order.sort(&mut self.runs);
        self.selected_run = selected
            .and_then(|p| self.runs.iter().position(|r| r.path == p))
            .unwrap_or(self.selected_run)
            .min(self.runs.len().saturating_sub(1));
        self.marked
            .retain(|m| self.runs.iter().any(|r| &r.path == m));
        if self.focused.is_none() {
            self.focused = default_focus(&self.runs);
        }
        if let Some((_, dir)) = &self.starting {
            let started = self.runs.iter().any(|r| {
                &r.path == dir
                    && r.status
                        .as_ref()
                        .is_some_and(|s| s.state != RunState::Initializing)
            });
            if started {
                self.starting = None;
            }
        }
    }

    /// Whether the run at `run` is a sweep trial that early stopping ended (runs and trials
    /// are matched by folder name, as the Sweeps view does).
    pub fn stopped_early(&self, run: &Path) -> bool {
        self.sweeps.iter().flat_map(|s| &s.state.trials).any(|t| {
            t.state == TrialState::StoppedEarly && t.run_dir.file_name() == run.file_name()
        })
    }

    /// Whether `p` is the profile of a launch whose run has not started training yet.
    pub(super) fn still_starting(&self, p: &Profile) -> bool {
        self.starting.as_ref().is_some_and(|(q, _)| **q == *p)
    }

    /// New sweep data from the watcher; the Sweeps view shows the newest sweep until the
    /// user picks one.
    pub fn set_sweeps(&mut self, sweeps: Vec<SweepInfo>) {
        self.sweeps = sweeps;
        if self.board.current(&self.sweeps).is_none() {
            self.board.sweep = self.sweeps.last().map(|s| s.dir.clone());
            self.board.row = 0;
        }
    }

    /// The saved profiles and the model and dataset candidates.
    pub fn set_catalog(
        &mut self,
        profiles: Vec<ProfileEntry>,
        models: Vec<Candidate>,
        datasets: Vec<Candidate>,
    ) {
        self.profiles = profiles;
        self.selected_profile = self
            .selected_profile
            .min(self.profiles.len().saturating_sub(1));
        self.models = models;
        self.datasets = datasets;
    }

    /// Download progress of the model at `path` (a hub id), if it is still the one in Setup.
    pub fn set_download(&mut self, path: &Path, d: Download) {
        if self.setup.model_path() == path {
            self.setup.download = Some(d);
        }
    }

    /// The description of the model at `path`: for the picker, and for Setup if it is still
    /// the model there.
    pub fn set_model(&mut self, path: &Path, result: Result<ModelSummary, String>) -> Vec<Effect> {
        self.inspected
            .entry(path.to_path_buf())
            .or_insert(Inspection {
                bytes: None,
                result: None,
            })
            .result = Some(result.clone());
        if self.setup.model_path() != path {
            return Vec::new();
        }
        self.setup.download = None;
        self.setup.model = Some(result);
        self.checked()
    }

    /// The count of a data file, if the request still matches the Setup.
    pub fn set_data(
        &mut self,
        field: FieldId,
        req: &DataRequest,
        result: Result<DataSummary, String>,
    ) -> Vec<Effect> {
        let current = self.setup.data_requests(&self.base);
        if !current.contains(&(field, req.clone())) {
            return Vec::new();
        }
        self.setup.data.retain(|(f, _)| *f != field);
        self.setup.data.push((field, result));
        self.setup
            .data
            .sort_by_key(|(f, _)| *f != FieldId::TRAIN_DATA);
        self.checked()
    }

    /// A check came in: re-validate, and launch if a launch was waiting for the checks.
    fn checked(&mut self) -> Vec<Effect> {
        self.revalidate();
        if self.launch_waiting && self.setup.checking(&self.base).is_none() {
            return self.launch();
        }
        Vec::new()
    }

    pub(super) fn revalidate(&mut self) {
        self.setup.error = self.setup.profile(&self.base).err();
    }

    /// Open a profile in Setup (from Runs, Sweeps or Profiles) and inspect its model and data.
    pub(super) fn open_in_setup(&mut self, p: Profile) -> Vec<Effect> {
        self.setup = Setup::from_profile(&p);
        self.base = p;
        self.view = View::Setup;
        self.revalidate();
        self.inspections()
    }

    /// A field changed value: re-validate, and re-inspect what depends on it.
    pub(super) fn field_changed(&mut self, id: FieldId) -> Vec<Effect> {
        self.launch_waiting = false;
        self.revalidate();
        match id {
            FieldId::MODEL => {
                self.setup.model = None;
                self.setup.data.clear();
                self.inspections()
            }
            // The data's count depends on every `[data]` key (format, packing, seq_len...).
            _ if id.section() == "data" => {
                self.setup.data.clear();
                self.revalidate();
                self.data_inspections()
            }
            _ => Vec::new(),
        }
    }

    /// Handle one key.
    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && key.code == KeyCode::Char('c') {
            self.quit = true;
            return Vec::new();
        }
        if let Some(modal) = self.modal.take() {
            return self.modal_key(modal, key);
        }
        match keys::action_for(self.scope(), key.code) {
            Some((action, nth)) => self.perform(action, nth),
            None => Vec::new(),
        }
    }

    /// Carry out `action`; `nth` is the key's place among its binding's keys (Up is the
    /// first of Up/Down, so it moves back).
    pub fn perform(&mut self, action: Action, nth: usize) -> Vec<Effect> {
        let step = if nth == 0 { -1 } else { 1 };
        match action {
            Action::Quit => self.quit = true,
            Action::Help => self.modal = Some(Modal::Help),
            Action::NextView | Action::PrevView => {
                let n = View::ALL.len();
                let i = View::ALL.iter().position(|v| *v == self.view).unwrap_or(0);
                let step = if action == Action::NextView { 1 } else { n - 1 };
                self.view = View::ALL[(i + step) % n];
            }
            Action::ShowView => self.view = View::ALL[nth.min(View::ALL.len() - 1)],
            _ => {
                return match self.scope() {
                    Scope::Setup => self.setup_action(action, step),
                    Scope::Run => self.run_action(action, step),
                    Scope::Runs => self.runs_action(action, step),
                    Scope::Sweeps => self.sweeps_action(action, step),
                    Scope::SweepForm => self.sweep_form_action(action, step),
                    Scope::Profiles => self.profiles_action(action, step),
                    Scope::Global => Vec::new(),
                }
            }
        }
        Vec::new()
    }

    /// A key for the open modal; the modal stays open unless the key closes it.
    fn modal_key(&mut self, modal: Modal, key: KeyEvent) -> Vec<Effect> {
        match modal {
            Modal::Help => Vec::new(),
            Modal::Confirm(c) => self.confirm_key(c, key.code),
            Modal::Naming(n) => self.naming_key(n, key),
            Modal::Editing(e) => self.edit_key(e, key),
            Modal::Picker(p) => self.picker_key(p, key),
        }
    }

    fn confirm_key(&mut self, c: Confirm, key: KeyCode) -> Vec<Effect> {
        if key != KeyCode::Char('y') {
            self.notice = Some("cancelled".into());
            return Vec::new();
        }
        match c {
            Confirm::Stop(p) => vec![Effect::Control(p, ControlRequest::Stop)],
            Confirm::Delete(p) => vec![Effect::Delete(p)],
            Confirm::Overwrite(name, p) => vec![Effect::SaveProfile(name, p)],
        }
    }

    /// Start typing a name to save `profile` under in the profiles folder.
    pub(super) fn start_naming(&mut self, profile: Profile) {
        self.modal = Some(Modal::Naming(Naming {
            input: TextInput::default(),
            profile: Box::new(profile),
        }));
    }

    fn naming_key(&mut self, mut n: Naming, key: KeyEvent) -> Vec<Effect> {
        match key.code {
            KeyCode::Esc => return Vec::new(),
            KeyCode::Enter => {
                let name = n.input.value().trim().trim_end_matches(".toml").to_string();
                if !valid_profile_name(&name) {
                    self.notice = Some(format!(
                        "`{name}` is not a profile name (letters, digits, - _ .)"
                    ));
                    return Vec::new();
                }
                if self.profiles.iter().any(|p| p.name == name) {
                    self.modal = Some(Modal::Confirm(Confirm::Overwrite(name, n.profile)));
                    return Vec::new();
                }
                return vec![Effect::SaveProfile(name, n.profile)];
            }
            _ => {
                n.input.key(key);
            }
        }
        self.modal = Some(Modal::Naming(n));
        Vec::new()
    }

    /// Up/Down move (without wrapping), typing filters, Enter picks the entry under the
    /// cursor: a candidate, the typed text, or with nothing typed an edit of the current value.
    fn picker_key(&mut self, mut p: Picker, key: KeyEvent) -> Vec<Effect> {
        let last = p.shown().len();
        match key.code {
            KeyCode::Up => p.selected = p.selected.saturating_sub(1),
            KeyCode::Down => p.selected = (p.selected + 1).min(last),
            KeyCode::Esc => return Vec::new(),
            KeyCode::Enter => {
                self.setup.select(p.field);
                let picked = match p.shown().get(p.selected) {
                    Some(c) => c.path.display().to_string(),
                    None if p.filter.value().is_empty() => {
                        self.start_editing(EditTarget::Setup(p.field));
                        return Vec::new();
                    }
                    None => p.filter.value().trim().to_string(),
                };
                if picked == self.setup.value(p.field) {
                    return Vec::new();
                }
                self.setup.set(p.field, &picked);
                return self.field_changed(p.field);
            }
            _ => {
                if p.filter.key(key) {
                    p.selected = 0;
                }
            }
        }
        self.modal = Some(Modal::Picker(p));
        Vec::new()
    }

    /// Start typing into `target`, from its current value.
    pub(super) fn start_editing(&mut self, target: EditTarget) {
        let text = match target {
            EditTarget::Setup(id) => self.setup.value(id).to_string(),
            EditTarget::Sweep(f) => self
                .board
                .form
                .as_ref()
                .map_or(String::new(), |form| form.text(f)),
        };
        self.modal = Some(Modal::Editing(Editing {
            target,
            input: TextInput::new(&text),
        }));
    }

    fn edit_key(&mut self, mut e: Editing, key: KeyEvent) -> Vec<Effect> {
        match key.code {
            KeyCode::Esc => return Vec::new(),
            KeyCode::Enter => return self.finish_edit(e),
            _ => {
                e.input.key(key);
            }
        }
        self.modal = Some(Modal::Editing(e));
        Vec::new()
    }

    fn finish_edit(&mut self, e: Editing) -> Vec<Effect> {
        match e.target {
            EditTarget::Setup(id) if self.setup.value(id) != e.input.value() => {
                self.setup.set(id, e.input.value());
                self.field_changed(id)
            }
            EditTarget::Setup(_) => Vec::new(),
            EditTarget::Sweep(f) => {
                if let Some(slot) = self.board.form.as_mut().and_then(|form| form.text_mut(f)) {
                    *slot = e.input.value().to_string();
                }
                self.check_sweep_form();
                Vec::new()
            }
        }
    }
}

/// The run the Run view opens on: the newest one still going (re-attaching after an SSH
/// drop lands on it), else the newest. One without a status yet is just being created, so
/// it counts as newest.
fn default_focus(runs: &[RunInfo]) -> Option<PathBuf> {
    let started = |r: &&RunInfo| r.started_at().unwrap_or(f64::INFINITY);
    let newest = |runs: Vec<&RunInfo>| {
        runs.into_iter()
            .max_by(|a, b| started(a).total_cmp(&started(b)))
            .map(|r| r.path.clone())
    };
    let active = |r: &&RunInfo| r.status.as_ref().is_some_and(|s| s.state.is_active());
    newest(runs.iter().filter(active).collect()).or_else(|| newest(runs.iter().collect()))
}
