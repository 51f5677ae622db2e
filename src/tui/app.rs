//! The workbench's state: a plain state machine driven by keys and file updates, kept apart
//! from drawing and from side effects (which it returns as [`Effect`]s), so it is tested
//! without a terminal.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::catalog::{Candidate, DataRequest, ProfileEntry};
use super::watch::RunInfo;
use crate::data::DataSummary;
use crate::model::ModelSummary;
use crate::sources::hub::Download;
use crate::train::{ControlRequest, Profile, RunState};

/// The views, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Setup,
    Run,
    Runs,
    Profiles,
}

impl View {
    pub const ALL: [View; 4] = [View::Setup, View::Run, View::Runs, View::Profiles];

    pub fn title(self) -> &'static str {
        match self {
            View::Setup => "Setup",
            View::Run => "Run",
            View::Runs => "Runs",
            View::Profiles => "Profiles",
        }
    }
}

/// What the event loop must do for the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start a detached training process with this profile.
    Launch(Box<Profile>),
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
    InspectData(&'static str, DataRequest),
    /// Write a profile to the profiles folder under this name (overwriting).
    SaveProfile(String, Box<Profile>),
}

/// Which candidates a path field offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickFrom {
    Models,
    Datasets,
}

/// How a Setup field is edited and written into the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text, written as a TOML string.
    Text,
    /// A path, picked from candidates or typed; written as a TOML string.
    Path(PickFrom),
    /// A number or boolean, written as is.
    Number,
    /// One of fixed values (cycled with Left/Right), written as a TOML string.
    Choice(&'static [&'static str]),
    /// `true`/`false`.
    Bool,
    /// A comma-separated list, written as a TOML array of strings.
    List,
}

/// A field of the Setup form, bound to a profile key.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Profile key, e.g. `adapter.rank`.
    pub key: &'static str,
    pub label: &'static str,
    pub value: String,
    pub kind: Kind,
}

impl Field {
    /// The values Left/Right cycle through, if any.
    pub fn choices(&self) -> &'static [&'static str] {
        match self.kind {
            Kind::Choice(c) => c,
            Kind::Bool => &["true", "false"],
            _ => &[],
        }
    }

    /// The value as a TOML value for a `key=value` override.
    fn toml_value(&self) -> String {
        match self.kind {
            Kind::Text | Kind::Path(_) | Kind::Choice(_) => {
                toml::Value::String(self.value.clone()).to_string()
            }
            Kind::Number | Kind::Bool => self.value.clone(),
            Kind::List => toml::Value::Array(
                self.value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.into()))
                    .collect(),
            )
            .to_string(),
        }
    }
}

const METHODS: &[&str] = &["lors", "lors-exact", "sqft", "spp", "lora"];
const INITS: &[&str] = &["gradient", "standard", "gaussian", "orthogonal", "olora"];
const SCHEDULES: &[&str] = &["cosine", "linear", "constant"];
const OPTIMIZERS: &[&str] = &["adamw", "lora-rite"];
const PRUNE_METHODS: &[&str] = &["none", "magnitude", "wanda", "sparsegpt"];

fn field(key: &'static str, label: &'static str, value: String, kind: Kind) -> Field {
    Field {
        key,
        label,
        value,
        kind,
    }
}

fn plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The Setup view: every setting of a run, edited in place.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    pub fields: Vec<Field>,
    pub selected: usize,
    /// The text being typed into the selected field, while editing.
    pub editing: Option<String>,
    /// Why the current settings cannot launch (shown inline), if anything.
    pub error: Option<String>,
    /// What was detected about the model, or why it could not be read.
    pub model: Option<Result<ModelSummary, String>>,
    /// What was counted in the train and valid files, by field key.
    pub data: Vec<(&'static str, Result<DataSummary, String>)>,
    /// The hub download in progress for the model, if any.
    pub download: Option<Download>,
}

/// The model, prune step and data fields.
fn source_fields(p: &Profile) -> Vec<Field> {
    let path = |p: &Path| p.display().to_string();
    let prune = p.prune.as_ref();
    vec![
        field(
            "model.path",
            "model",
            path(&p.model.path),
            Kind::Path(PickFrom::Models),
        ),
        field(
            "prune.method",
            "prune first",
            prune.map_or("none".into(), |s| s.method.to_string()),
            Kind::Choice(PRUNE_METHODS),
        ),
        field(
            "prune.pattern",
            "prune pattern",
            prune.map_or("unstructured".into(), |s| s.pattern.clone()),
            Kind::Text,
        ),
        field(
            "prune.sparsity",
            "prune sparsity",
            prune.map_or("0.5".into(), |s| s.sparsity.to_string()),
            Kind::Number,
        ),
        field(
            "data.train",
            "train data",
            path(&p.data.train),
            Kind::Path(PickFrom::Datasets),
        ),
        field(
            "data.valid",
            "valid data",
            p.data.valid.as_deref().map(path).unwrap_or_default(),
            Kind::Path(PickFrom::Datasets),
        ),
        field(
            "data.seq_len",
            "seq_len",
            p.data.seq_len.to_string(),
            Kind::Number,
        ),
    ]
}

/// The adapter fields.
fn adapter_fields(p: &Profile) -> Vec<Field> {
    vec![
        field(
            "adapter.method",
            "method",
            p.adapter.method.name().into(),
            Kind::Choice(METHODS),
        ),
        field(
            "adapter.rank",
            "rank",
            p.adapter.rank.to_string(),
            Kind::Number,
        ),
        field(
            "adapter.alpha",
            "alpha",
            format!("{:?}", p.adapter.alpha),
            Kind::Number,
        ),
        field(
            "adapter.rslora",
            "rslora",
            p.adapter.rslora.to_string(),
            Kind::Bool,
        ),
        field(
            "adapter.init",
            "init",
            p.adapter.init.name().into(),
            Kind::Choice(INITS),
        ),
        field(
            "adapter.init_samples",
            "init samples",
            p.adapter.init_samples.to_string(),
            Kind::Number,
        ),
        field(
            "adapter.stable_gamma",
            "stable_gamma",
            format!("{:?}", p.adapter.stable_gamma),
            Kind::Number,
        ),
        field(
            "adapter.target_modules",
            "targets",
            p.adapter.target_modules.join(","),
            Kind::List,
        ),
    ]
}

/// The method zoo's options (see the README's Method zoo).
fn zoo_fields(p: &Profile) -> Vec<Field> {
    vec![
        field(
            "adapter.frozen_blocks",
            "frozen blocks",
            p.adapter.frozen_blocks.to_string(),
            Kind::Number,
        ),
        field(
            "adapter.orth_reg",
            "orth. reg",
            format!("{:?}", p.adapter.orth_reg),
            Kind::Number,
        ),
        field(
            "adapter.rank_keep",
            "rank keep",
            p.adapter.rank_keep.to_string(),
            Kind::Number,
        ),
        field(
            "adapter.boost_every",
            "XGBLoRA round",
            p.adapter.boost_every.to_string(),
            Kind::Number,
        ),
        field(
            "adapter.sora",
            "SoRA gates",
            p.adapter.sora.to_string(),
            Kind::Bool,
        ),
        field(
            "adapter.sora_threshold",
            "SoRA ξ",
            format!("{:?}", p.adapter.sora_threshold),
            Kind::Number,
        ),
    ]
}

/// The optimiser and training fields.
fn training_fields(p: &Profile) -> Vec<Field> {
    vec![
        field(
            "optim.name",
            "optimizer",
            p.optim.name.name().into(),
            Kind::Choice(OPTIMIZERS),
        ),
        field("optim.lr", "lr", format!("{:e}", p.optim.lr), Kind::Number),
        field(
            "optim.weight_decay",
            "weight decay",
            format!("{:?}", p.optim.weight_decay),
            Kind::Number,
        ),
        field(
            "optim.schedule",
            "schedule",
            plain(&p.optim.schedule),
            Kind::Choice(SCHEDULES),
        ),
        field(
            "optim.warmup_steps",
            "warmup steps",
            p.optim.warmup_steps.to_string(),
            Kind::Number,
        ),
        field(
            "train.max_steps",
            "steps",
            p.train.max_steps.unwrap_or(100).to_string(),
            Kind::Number,
        ),
        field(
            "train.batch_size",
            "batch",
            p.train.batch_size.to_string(),
            Kind::Number,
        ),
        field(
            "train.grad_accum",
            "accumulation",
            p.train.grad_accum.to_string(),
            Kind::Number,
        ),
        field("train.seed", "seed", p.train.seed.to_string(), Kind::Number),
        field(
            "train.device",
            "device",
            p.train.device.clone(),
            Kind::Choice(crate::device::available_devices()),
        ),
    ]
}

impl Setup {
    /// The form filled from a profile.
    pub fn from_profile(p: &Profile) -> Self {
        let fields = [
            source_fields(p),
            adapter_fields(p),
            zoo_fields(p),
            training_fields(p),
        ]
        .concat();
        Self {
            fields,
            selected: 0,
            editing: None,
            error: None,
            model: None,
            data: Vec::new(),
            download: None,
        }
    }

    /// The field bound to `key`.
    pub fn field(&self, key: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.key == key)
    }

    fn value(&self, key: &str) -> &str {
        self.field(key).map_or("", |f| f.value.as_str())
    }

    fn set(&mut self, key: &str, value: &str) {
        if let Some(f) = self.fields.iter_mut().find(|f| f.key == key) {
            f.value = value.to_string();
        }
    }

    fn pruning(&self) -> bool {
        self.value("prune.method") != "none"
    }

    /// The `key=value` overrides the form stands for. The prune keys count only when a prune
    /// method is chosen; they calibrate on the training data at the training `seq_len`.
    pub fn overrides(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .fields
            .iter()
            .filter(|f| !(f.key == "data.valid" && f.value.is_empty()))
            .filter(|f| self.pruning() || !f.key.starts_with("prune."))
            .map(|f| format!("{}={}", f.key, f.toml_value()))
            .collect();
        if self.pruning() {
            let calib = toml::Value::String(self.value("data.train").into());
            out.push(format!("prune.calib={calib}"));
            out.push(format!("prune.seq_len={}", self.value("data.seq_len")));
        }
        out
    }

    /// The profile the form describes on top of `base`, or why it is invalid. Besides the
    /// profile's own checks, the model must be readable and the rank must fit its smallest
    /// adapted layer.
    pub fn profile(&self, base: &Profile) -> Result<Profile, String> {
        let mut text = toml::Table::try_from(base).map_err(|e| e.to_string())?;
        // The form sets max_steps, so a base profile counted in epochs drops that key; the
        // form owns the prune step and the validation file.
        if let Some(t) = text.get_mut("train").and_then(|t| t.as_table_mut()) {
            t.remove("epochs");
        }
        // A cleared validation file means none, not the base profile's.
        if self.value("data.valid").is_empty() {
            if let Some(d) = text.get_mut("data").and_then(|t| t.as_table_mut()) {
                d.remove("valid");
            }
        }
        text.remove("prune");
        let p = Profile::parse(&text.to_string(), &self.overrides()).map_err(|e| e.to_string())?;
        match &self.model {
            Some(Err(e)) => return Err(format!("model: {e}")),
            Some(Ok(m)) => {
                let c = &m.config;
                let smallest = [
                    c.hidden_size,
                    c.num_kv_heads * c.head_dim,
                    c.num_heads * c.head_dim,
                    c.intermediate_size,
                ]
                .into_iter()
                .min()
                .unwrap_or(0);
                if p.adapter.rank > smallest {
                    return Err(format!(
                        "rank {} is larger than this model's smallest layer side ({smallest})",
                        p.adapter.rank
                    ));
                }
            }
            None => {}
        }
        for (key, info) in &self.data {
            if let Err(e) = info {
                return Err(format!("{key}: {e}"));
            }
        }
        Ok(p)
    }

    /// Data inspections the current fields call for (train, and valid when given).
    fn data_requests(&self, base: &Profile) -> Vec<Effect> {
        let Ok(seq_len) = self.value("data.seq_len").parse::<usize>() else {
            return Vec::new();
        };
        let mut options = base.data.clone();
        options.seq_len = seq_len;
        ["data.train", "data.valid"]
            .into_iter()
            .filter(|k| !self.value(k).is_empty())
            .map(|k| {
                Effect::InspectData(
                    k,
                    DataRequest {
                        path: PathBuf::from(self.value(k)),
                        model: PathBuf::from(self.value("model.path")),
                        options: options.clone(),
                    },
                )
            })
            .collect()
    }
}

/// A list of candidates for a path field, with "type a path" as the last entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Picker {
    pub field: usize,
    pub items: Vec<Candidate>,
    pub selected: usize,
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

    fn next(self) -> Self {
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

/// A question waiting for y/n.
#[derive(Debug, Clone, PartialEq)]
pub enum Confirm {
    Stop(PathBuf),
    Delete(PathBuf),
    Overwrite(String, Box<Profile>),
}

/// The whole UI state.
#[derive(Debug, Clone)]
pub struct App {
    pub view: View,
    pub help: bool,
    pub base: Profile,
    pub setup: Setup,
    pub picker: Option<Picker>,
    /// The profile name being typed (Save).
    pub naming: Option<String>,
    /// Where saved profiles go (the TUI's `--profiles-dir`).
    pub profiles_dir: std::path::PathBuf,
    pub runs: Vec<RunInfo>,
    /// Selected row of the Runs view.
    pub selected_run: usize,
    /// Runs whose loss curves the Runs view overlays.
    pub marked: BTreeSet<PathBuf>,
    pub run_order: RunOrder,
    /// The run the Run view shows.
    pub focused: Option<PathBuf>,
    pub profiles: Vec<ProfileEntry>,
    pub selected_profile: usize,
    pub models: Vec<Candidate>,
    pub datasets: Vec<Candidate>,
    pub confirm: Option<Confirm>,
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
            help: false,
            setup: Setup::from_profile(&base),
            base,
            picker: None,
            naming: None,
            profiles_dir: "profiles".into(),
            runs: Vec::new(),
            selected_run: 0,
            marked: BTreeSet::new(),
            run_order: RunOrder::default(),
            focused: None,
            profiles: Vec::new(),
            selected_profile: 0,
            models: Vec::new(),
            datasets: Vec::new(),
            confirm: None,
            log_scale: false,
            zoom_last: None,
            notice: None,
            quit: false,
        }
    }

    /// The inspections to run for the current Setup (the model, then its data files).
    pub fn inspections(&self) -> Vec<Effect> {
        let mut out = vec![Effect::InspectModel(PathBuf::from(
            self.setup.value("model.path"),
        ))];
        out.extend(self.setup.data_requests(&self.base));
        out
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
        if Path::new(self.setup.value("model.path")) == path {
            self.setup.download = Some(d);
        }
    }

    /// The description of the model at `path`, if it is still the one in Setup.
    pub fn set_model(&mut self, path: &Path, result: Result<ModelSummary, String>) {
        if Path::new(self.setup.value("model.path")) != path {
            return;
        }
        self.setup.download = None;
        self.setup.model = Some(result);
        self.revalidate();
    }

    /// The count of a data file, if the request still matches the Setup.
    pub fn set_data(
        &mut self,
        key: &'static str,
        req: &DataRequest,
        result: Result<DataSummary, String>,
    ) {
        let current = self.setup.data_requests(&self.base);
        if !current.contains(&Effect::InspectData(key, req.clone())) {
            return;
        }
        self.setup.data.retain(|(k, _)| *k != key);
        self.setup.data.push((key, result));
        self.setup.data.sort_by_key(|(k, _)| *k != "data.train");
        self.revalidate();
    }

    fn revalidate(&mut self) {
        self.setup.error = self.setup.profile(&self.base).err();
    }

    /// Open a profile in Setup (from Runs or Profiles) and inspect its model and data.
    fn open_in_setup(&mut self, p: Profile) -> Vec<Effect> {
        self.setup = Setup::from_profile(&p);
        self.base = p;
        self.view = View::Setup;
        self.revalidate();
        self.inspections()
    }

    /// Handle one key.
    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && key.code == KeyCode::Char('c') {
            self.quit = true;
            return Vec::new();
        }
        if let Some(c) = self.confirm.take() {
            return match key.code {
                KeyCode::Char('y') => match c {
                    Confirm::Stop(p) => vec![Effect::Control(p, ControlRequest::Stop)],
                    Confirm::Delete(p) => vec![Effect::Delete(p)],
                    Confirm::Overwrite(name, p) => vec![Effect::SaveProfile(name, p)],
                },
                _ => {
                    self.notice = Some("cancelled".into());
                    Vec::new()
                }
            };
        }
        if self.naming.is_some() {
            return self.naming_key(key);
        }
        if self.setup.editing.is_some() {
            return self.edit_key(key);
        }
        if self.picker.is_some() {
            return self.picker_key(key);
        }
        if self.help {
            self.help = false;
            return Vec::new();
        }
        match key.code {
            KeyCode::Char('q') => {
                self.quit = true;
                return Vec::new();
            }
            KeyCode::Char('?') => {
                self.help = true;
                return Vec::new();
            }
            KeyCode::Tab | KeyCode::BackTab => {
                let n = View::ALL.len();
                let i = View::ALL.iter().position(|v| *v == self.view).unwrap_or(0);
                let step = if key.code == KeyCode::Tab { 1 } else { n - 1 };
                self.view = View::ALL[(i + step) % n];
                return Vec::new();
            }
            KeyCode::Char(c @ '1'..='4') => {
                self.view = View::ALL[c as usize - '1' as usize];
                return Vec::new();
            }
            _ => {}
        }
        match self.view {
            View::Setup => self.setup_key(key),
            View::Run => self.run_key(key),
            View::Runs => self.runs_key(key),
            View::Profiles => self.profiles_key(key),
        }
    }

    /// Start typing a profile name to save the current Setup under.
    fn start_saving(&mut self) {
        match self.setup.profile(&self.base) {
            Ok(_) => self.naming = Some(String::new()),
            Err(e) => self.notice = Some(format!("cannot save: {e}")),
        }
    }

    fn naming_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let buf = self.naming.as_mut().expect("naming");
        match key.code {
            KeyCode::Char(c) => buf.push(c),
            KeyCode::Backspace => {
                buf.pop();
            }
            KeyCode::Esc => self.naming = None,
            KeyCode::Enter => {
                let name = self.naming.take().expect("naming");
                let name = name.trim().trim_end_matches(".toml").to_string();
                if !valid_profile_name(&name) {
                    self.notice = Some(format!(
                        "`{name}` is not a profile name (letters, digits, - _ .)"
                    ));
                    return Vec::new();
                }
                let profile = match self.setup.profile(&self.base) {
                    Ok(p) => Box::new(p),
                    Err(e) => {
                        self.notice = Some(format!("cannot save: {e}"));
                        return Vec::new();
                    }
                };
                if self.profiles.iter().any(|p| p.name == name) {
                    self.confirm = Some(Confirm::Overwrite(name, profile));
                    return Vec::new();
                }
                return vec![Effect::SaveProfile(name, profile)];
            }
            _ => {}
        }
        Vec::new()
    }

    fn setup_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let n = self.setup.fields.len();
        match key.code {
            KeyCode::Up => self.setup.selected = (self.setup.selected + n - 1) % n,
            KeyCode::Down => self.setup.selected = (self.setup.selected + 1) % n,
            KeyCode::Left | KeyCode::Right => {
                let f = &mut self.setup.fields[self.setup.selected];
                let choices = f.choices();
                if !choices.is_empty() {
                    let i = choices.iter().position(|c| *c == f.value).unwrap_or(0);
                    let step = if key.code == KeyCode::Right {
                        1
                    } else {
                        choices.len() - 1
                    };
                    f.value = choices[(i + step) % choices.len()].to_string();
                    self.revalidate();
                }
            }
            KeyCode::Enter => {
                let i = self.setup.selected;
                let f = &self.setup.fields[i];
                match f.kind {
                    Kind::Path(from) => {
                        let items = match from {
                            PickFrom::Models => self.models.clone(),
                            PickFrom::Datasets => self.datasets.clone(),
                        };
                        let selected = items
                            .iter()
                            .position(|c| c.path == Path::new(&f.value))
                            .unwrap_or(items.len());
                        self.picker = Some(Picker {
                            field: i,
                            items,
                            selected,
                        });
                    }
                    Kind::Choice(_) | Kind::Bool => {}
                    _ => self.setup.editing = Some(f.value.clone()),
                }
            }
            KeyCode::Char('P') => {
                // The offer of the dense-model warning: prune with Wanda to 50% first.
                self.setup.set("prune.method", "wanda");
                self.setup.set("prune.pattern", "unstructured");
                self.setup.set("prune.sparsity", "0.5");
                self.setup.selected = self
                    .setup
                    .fields
                    .iter()
                    .position(|f| f.key == "prune.method")
                    .unwrap_or(0);
                self.notice = Some("prune step: wanda, 50% unstructured".into());
                self.revalidate();
            }
            KeyCode::Char('w') => self.start_saving(),
            KeyCode::Char('l') | KeyCode::F(5) => {
                return match self.setup.profile(&self.base) {
                    Ok(p) => {
                        self.setup.error = None;
                        self.focused = None;
                        self.view = View::Run;
                        self.notice = Some("launching...".into());
                        vec![Effect::Launch(Box::new(p))]
                    }
                    Err(e) => {
                        self.setup.error = Some(e.clone());
                        self.notice = Some(format!("cannot launch: {e}"));
                        Vec::new()
                    }
                };
            }
            _ => {}
        }
        Vec::new()
    }

    /// A field changed value: re-validate, and re-inspect what depends on it.
    fn field_changed(&mut self, key: &str) -> Vec<Effect> {
        self.revalidate();
        match key {
            "model.path" => {
                self.setup.model = None;
                self.setup.data.clear();
                self.inspections()
            }
            "data.train" | "data.valid" | "data.seq_len" => {
                self.setup.data.clear();
                self.revalidate();
                self.setup.data_requests(&self.base)
            }
            _ => Vec::new(),
        }
    }

    fn picker_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let picker = self.picker.as_mut().expect("picker");
        let n = picker.items.len() + 1;
        match key.code {
            KeyCode::Up => picker.selected = (picker.selected + n - 1) % n,
            KeyCode::Down => picker.selected = (picker.selected + 1) % n,
            KeyCode::Esc => self.picker = None,
            KeyCode::Enter => {
                let picker = self.picker.take().expect("picker");
                self.setup.selected = picker.field;
                match picker.items.get(picker.selected) {
                    Some(c) => {
                        let f = &mut self.setup.fields[picker.field];
                        f.value = c.path.display().to_string();
                        let key = f.key;
                        return self.field_changed(key);
                    }
                    None => {
                        self.setup.editing = Some(self.setup.fields[picker.field].value.clone())
                    }
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn edit_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let buf = self.setup.editing.as_mut().expect("editing");
        match key.code {
            KeyCode::Char(c) => buf.push(c),
            KeyCode::Backspace => {
                buf.pop();
            }
            KeyCode::Esc => self.setup.editing = None,
            KeyCode::Enter => {
                let value = self.setup.editing.take().expect("editing");
                let f = &mut self.setup.fields[self.setup.selected];
                if f.value != value {
                    f.value = value;
                    let key = f.key;
                    return self.field_changed(key);
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn run_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        match key.code {
            KeyCode::Char('g') => self.log_scale = !self.log_scale,
            KeyCode::Char('z') => {
                self.zoom_last = match self.zoom_last {
                    None => Some(50),
                    Some(_) => None,
                }
            }
            _ => {}
        }
        let Some(run) = self.focused_run() else {
            return Vec::new();
        };
        let path = run.path.clone();
        let state = run.status.as_ref().map(|s| s.state);
        let live = state.is_some_and(RunState::is_active);
        match key.code {
            KeyCode::Char('p') if live => {
                let req = if state == Some(RunState::Paused) {
                    ControlRequest::Resume
                } else {
                    ControlRequest::Pause
                };
                vec![Effect::Control(path, req)]
            }
            KeyCode::Char('c') if live => vec![Effect::Control(path, ControlRequest::Checkpoint)],
            KeyCode::Char('s') if live => {
                self.confirm = Some(Confirm::Stop(path));
                Vec::new()
            }
            KeyCode::Char('m') if matches!(state, Some(RunState::Finished | RunState::Stopped)) => {
                vec![Effect::Merge(path)]
            }
            KeyCode::Char('m') => {
                self.notice = Some("merge/export needs a finished or stopped run".into());
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn runs_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let n = self.runs.len();
        if n == 0 {
            return Vec::new();
        }
        let path = self.runs[self.selected_run].path.clone();
        match key.code {
            KeyCode::Up => self.selected_run = (self.selected_run + n - 1) % n,
            KeyCode::Down => self.selected_run = (self.selected_run + 1) % n,
            KeyCode::Char(' ') => {
                // Toggle: unmark a marked run, else mark it.
                let was_marked = self.marked.remove(&path);
                if !was_marked {
                    self.marked.insert(path);
                }
            }
            KeyCode::Enter => {
                self.focused = Some(path);
                self.view = View::Run;
            }
            KeyCode::Char('r') => return vec![Effect::Replay(path)],
            KeyCode::Char('e') => {
                if let Some(p) = self.runs[self.selected_run].profile.clone() {
                    return self.open_in_setup(p);
                }
                self.notice = Some("this run has no readable profile".into());
            }
            KeyCode::Char('d') => self.confirm = Some(Confirm::Delete(path)),
            KeyCode::Char('v') => return self.evaluate_run(),
            KeyCode::Char('o') => {
                self.run_order = self.run_order.next();
                let runs = std::mem::take(&mut self.runs);
                self.set_runs(runs);
                self.notice = Some(format!("runs ordered by {}", self.run_order.name()));
            }
            _ => {}
        }
        Vec::new()
    }

    /// Score the selected run's `[eval]` tasks (or those of the workbench's profile) in the
    /// background, once it has ended.
    fn evaluate_run(&mut self) -> Vec<Effect> {
        let run = &self.runs[self.selected_run];
        let ended = run
            .status
            .as_ref()
            .is_some_and(|s| matches!(s.state, RunState::Finished | RunState::Stopped));
        let running = run.eval_job.as_ref().is_some_and(|j| {
            j.state == crate::eval::JobState::Running && crate::io::process_alive(j.pid)
        });
        let suite = run
            .profile
            .as_ref()
            .and_then(|p| p.eval.clone())
            .or_else(|| self.base.eval.clone());
        match suite {
            _ if !ended => self.notice = Some("evaluate needs a finished or stopped run".into()),
            _ if running => self.notice = Some("an evaluation of this run is running".into()),
            None => {
                self.notice = Some(
                    "no tasks: add an [eval] section to the run's or the workbench's profile"
                        .into(),
                )
            }
            Some(suite) => return vec![Effect::Evaluate(run.path.clone(), Box::new(suite))],
        }
        Vec::new()
    }

    fn profiles_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if key.code == KeyCode::Char('w') {
            self.start_saving();
            return Vec::new();
        }
        let n = self.profiles.len();
        if n == 0 {
            return Vec::new();
        }
        match key.code {
            KeyCode::Up => self.selected_profile = (self.selected_profile + n - 1) % n,
            KeyCode::Down => self.selected_profile = (self.selected_profile + 1) % n,
            KeyCode::Enter => {
                let entry = &self.profiles[self.selected_profile];
                match entry.profile.clone() {
                    Ok(p) => {
                        self.notice = Some(format!("loaded profile {}", entry.name));
                        return self.open_in_setup(p);
                    }
                    Err(e) => self.notice = Some(format!("cannot load {}: {e}", entry.name)),
                }
            }
            _ => {}
        }
        Vec::new()
    }
}
