//! The workbench's state: a plain state machine driven by keys and file updates, kept apart
//! from drawing and from side effects (which it returns as [`Effect`]s), so it is tested
//! without a terminal. A key goes to the open [`Modal`] if there is one, else through the
//! binding table ([`super::keys`]) to an [`Action`] of the current view ([`super::actions`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::catalog::{Candidate, DataRequest, ProfileEntry};
use super::keys::{self, Action, Scope};
use super::setup::FieldId;
use super::setup::Setup;
use super::sweeps::{Board, FormField, SweepInfo};
use super::watch::RunInfo;
use crate::data::DataSummary;
use crate::model::ModelSummary;
use crate::sources::hub::Download;
use crate::train::{ControlRequest, Profile};

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
    LaunchSweep(Box<Profile>, toml::Table),
    /// Start a detached `lors sweep --resume` on this sweep directory.
    ResumeSweep(PathBuf),
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

/// A list of candidates for a path field, with "type a path" as the last entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Picker {
    pub field: FieldId,
    pub items: Vec<Candidate>,
    pub selected: usize,
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
    pub text: String,
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
    pub text: String,
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
    /// By directory name (launch time for launched runs).
    #[default]
    Name,
    /// Best validation loss first.
    ValidLoss,
    /// Highest mean task accuracy after training first.
    Accuracy,
}

impl RunOrder {
    pub fn name(self) -> &'static str {
        match self {
            RunOrder::Name => "name",
            RunOrder::ValidLoss => "validation loss",
            RunOrder::Accuracy => "mean accuracy",
        }
    }

    pub(super) fn next(self) -> Self {
        match self {
            RunOrder::Name => RunOrder::ValidLoss,
            RunOrder::ValidLoss => RunOrder::Accuracy,
            RunOrder::Accuracy => RunOrder::Name,
        }
    }

    /// Sort `runs` (runs without the value last, by name).
    fn sort(self, runs: &mut [RunInfo]) {
        let key = |r: &RunInfo| match self {
            RunOrder::Name => None,
            RunOrder::ValidLoss => r.best_eval(),
            RunOrder::Accuracy => r.mean_accuracy_after().map(|a| -a),
        };
        runs.sort_by(|a, b| match (key(a), key(b)) {
            (Some(x), Some(y)) => x.total_cmp(&y),
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
    pub datasets: Vec<Candidate>,
    pub log_scale: bool,
    /// Show only the last this many steps of the loss chart (`None`: all).
    pub zoom_last: Option<usize>,
    /// One line of feedback in the footer.
    pub notice: Option<String>,
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
            datasets: Vec::new(),
            log_scale: false,
            zoom_last: None,
            notice: None,
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
    pub fn edit_text(&self, target: EditTarget) -> Option<&str> {
        match &self.modal {
            Some(Modal::Editing(e)) if e.target == target => Some(&e.text),
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
            self.focused = self.runs.last().map(|r| r.path.clone());
        }
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

    /// The description of the model at `path`, if it is still the one in Setup.
    pub fn set_model(&mut self, path: &Path, result: Result<ModelSummary, String>) {
        if self.setup.model_path() != path {
            return;
        }
        self.setup.download = None;
        self.setup.model = Some(result);
        self.revalidate();
    }

    /// The count of a data file, if the request still matches the Setup.
    pub fn set_data(
        &mut self,
        field: FieldId,
        req: &DataRequest,
        result: Result<DataSummary, String>,
    ) {
        let current = self.setup.data_requests(&self.base);
        if !current.contains(&(field, req.clone())) {
            return;
        }
        self.setup.data.retain(|(f, _)| *f != field);
        self.setup.data.push((field, result));
        self.setup
            .data
            .sort_by_key(|(f, _)| *f != FieldId::TrainData);
        self.revalidate();
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
        self.revalidate();
        match id {
            FieldId::Model => {
                self.setup.model = None;
                self.setup.data.clear();
                self.inspections()
            }
            FieldId::TrainData | FieldId::ValidData | FieldId::SeqLen => {
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
            return self.modal_key(modal, key.code);
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
                    Scope::Run => self.run_action(action),
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
    fn modal_key(&mut self, modal: Modal, key: KeyCode) -> Vec<Effect> {
        match modal {
            Modal::Help => Vec::new(),
            Modal::Confirm(c) => self.confirm_key(c, key),
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
            text: String::new(),
            profile: Box::new(profile),
        }));
    }

    fn naming_key(&mut self, mut n: Naming, key: KeyCode) -> Vec<Effect> {
        match key {
            KeyCode::Char(c) => n.text.push(c),
            KeyCode::Backspace => {
                n.text.pop();
            }
            KeyCode::Esc => return Vec::new(),
            KeyCode::Enter => {
                let name = n.text.trim().trim_end_matches(".toml").to_string();
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
            _ => {}
        }
        self.modal = Some(Modal::Naming(n));
        Vec::new()
    }

    fn picker_key(&mut self, mut p: Picker, key: KeyCode) -> Vec<Effect> {
        let n = p.items.len() + 1;
        match key {
            KeyCode::Up => p.selected = (p.selected + n - 1) % n,
            KeyCode::Down => p.selected = (p.selected + 1) % n,
            KeyCode::Esc => return Vec::new(),
            KeyCode::Enter => {
                self.setup.select(p.field);
                return match p.items.get(p.selected) {
                    Some(c) => {
                        self.setup.set(p.field, &c.path.display().to_string());
                        self.field_changed(p.field)
                    }
                    None => {
                        self.start_editing(EditTarget::Setup(p.field));
                        Vec::new()
                    }
                };
            }
            _ => {}
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
        self.modal = Some(Modal::Editing(Editing { target, text }));
    }

    fn edit_key(&mut self, mut e: Editing, key: KeyCode) -> Vec<Effect> {
        match key {
            KeyCode::Char(c) => e.text.push(c),
            KeyCode::Backspace => {
                e.text.pop();
            }
            KeyCode::Esc => return Vec::new(),
            KeyCode::Enter => return self.finish_edit(e),
            _ => {}
        }
        self.modal = Some(Modal::Editing(e));
        Vec::new()
    }

    fn finish_edit(&mut self, e: Editing) -> Vec<Effect> {
        match e.target {
            EditTarget::Setup(id) if self.setup.value(id) != e.text => {
                self.setup.set(id, &e.text);
                self.field_changed(id)
            }
            EditTarget::Setup(_) => Vec::new(),
            EditTarget::Sweep(f) => {
                if let Some(slot) = self.board.form.as_mut().and_then(|form| form.text_mut(f)) {
                    *slot = e.text;
                }
                self.check_sweep_form();
                Vec::new()
            }
        }
    }
}
