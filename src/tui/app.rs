//! The workbench's state: a plain state machine driven by keys and file updates, kept apart
//! from drawing and from side effects (which it returns as [`Effect`]s), so it is tested
//! without a terminal.

use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::watch::RunInfo;
use crate::model::ModelConfig;
use crate::train::{ControlRequest, Profile, RunState};

/// The views, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Setup,
    Run,
    Runs,
}

impl View {
    pub const ALL: [View; 3] = [View::Setup, View::Run, View::Runs];

    pub fn title(self) -> &'static str {
        match self {
            View::Setup => "Setup",
            View::Run => "Run",
            View::Runs => "Runs",
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
    /// Read the model config at this path (for validation and the detection line).
    InspectModel(PathBuf),
}

/// A field of the Setup form, bound to a profile key.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Profile key, e.g. `adapter.rank`.
    pub key: &'static str,
    pub label: &'static str,
    pub value: String,
    /// Allowed values for a choice field (cycled with Left/Right); empty for free text.
    pub choices: &'static [&'static str],
    /// Whether the value is written as a TOML string.
    pub quoted: bool,
}

const METHODS: &[&str] = &["lors", "lors-exact", "sqft", "spp", "lora"];
const INITS: &[&str] = &["gradient", "standard", "gaussian"];
const SCHEDULES: &[&str] = &["cosine", "linear", "constant"];
const BOOLS: &[&str] = &["true", "false"];
const DEVICES: &[&str] = &["cpu"];

fn field(
    key: &'static str,
    label: &'static str,
    value: &str,
    choices: &'static [&'static str],
    quoted: bool,
) -> Field {
    Field {
        key,
        label,
        value: value.to_string(),
        choices,
        quoted,
    }
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
    /// What was detected about the model.
    pub model: Option<ModelConfig>,
    pub model_error: Option<String>,
}

impl Setup {
    /// The form filled from a profile.
    pub fn from_profile(p: &Profile) -> Self {
        let s = |v: &dyn std::fmt::Display| v.to_string();
        let path = |p: &Path| p.display().to_string();
        let fields = vec![
            field("model.path", "model", &path(&p.model.path), &[], true),
            field("data.train", "train data", &path(&p.data.train), &[], true),
            field(
                "data.valid",
                "valid data",
                &p.data.valid.as_deref().map(path).unwrap_or_default(),
                &[],
                true,
            ),
            field("data.seq_len", "seq_len", &s(&p.data.seq_len), &[], false),
            field(
                "adapter.method",
                "method",
                p.adapter.method.name(),
                METHODS,
                true,
            ),
            field("adapter.rank", "rank", &s(&p.adapter.rank), &[], false),
            field(
                "adapter.alpha",
                "alpha",
                &format!("{:?}", p.adapter.alpha),
                &[],
                false,
            ),
            field(
                "adapter.rslora",
                "rslora",
                &s(&p.adapter.rslora),
                BOOLS,
                false,
            ),
            field(
                "adapter.init",
                "init",
                &serde_plain(&p.adapter.init),
                INITS,
                true,
            ),
            field(
                "adapter.init_samples",
                "init samples",
                &s(&p.adapter.init_samples),
                &[],
                false,
            ),
            field(
                "adapter.stable_gamma",
                "stable_gamma",
                &format!("{:?}", p.adapter.stable_gamma),
                &[],
                false,
            ),
            field(
                "optim.lr",
                "learning rate",
                &format!("{:e}", p.optim.lr),
                &[],
                false,
            ),
            field(
                "optim.schedule",
                "schedule",
                &serde_plain(&p.optim.schedule),
                SCHEDULES,
                true,
            ),
            field(
                "optim.warmup_steps",
                "warmup steps",
                &s(&p.optim.warmup_steps),
                &[],
                false,
            ),
            field(
                "train.max_steps",
                "steps",
                &s(&p.train.max_steps.unwrap_or(100)),
                &[],
                false,
            ),
            field(
                "train.batch_size",
                "batch",
                &s(&p.train.batch_size),
                &[],
                false,
            ),
            field(
                "train.grad_accum",
                "accumulation",
                &s(&p.train.grad_accum),
                &[],
                false,
            ),
            field("train.seed", "seed", &s(&p.train.seed), &[], false),
            field("train.device", "device", &p.train.device, DEVICES, true),
        ];
        Self {
            fields,
            selected: 0,
            editing: None,
            error: None,
            model: None,
            model_error: None,
        }
    }

    /// The `key=value` overrides the form stands for.
    pub fn overrides(&self) -> Vec<String> {
        self.fields
            .iter()
            .filter(|f| !(f.key == "data.valid" && f.value.is_empty()))
            .map(|f| {
                if f.quoted {
                    format!("{}={}", f.key, toml::Value::String(f.value.clone()))
                } else {
                    format!("{}={}", f.key, f.value)
                }
            })
            .collect()
    }

    /// The profile the form describes on top of `base`, or why it is invalid. Besides the
    /// profile's own checks, the rank must fit the smallest adapted layer of the model.
    pub fn profile(&self, base: &Profile) -> Result<Profile, String> {
        // The form sets max_steps, so a base profile counted in epochs drops that key.
        let mut text = toml::Table::try_from(base).map_err(|e| e.to_string())?;
        if let Some(t) = text.get_mut("train").and_then(|t| t.as_table_mut()) {
            t.remove("epochs");
        }
        let p = Profile::parse(&text.to_string(), &self.overrides()).map_err(|e| e.to_string())?;
        if let Some(c) = &self.model {
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
        if let Some(e) = &self.model_error {
            return Err(format!("model: {e}"));
        }
        Ok(p)
    }
}

fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A question waiting for y/n.
#[derive(Debug, Clone, PartialEq)]
pub enum Confirm {
    Stop(PathBuf),
    Delete(PathBuf),
}

/// The whole UI state.
#[derive(Debug, Clone)]
pub struct App {
    pub view: View,
    pub help: bool,
    pub base: Profile,
    pub setup: Setup,
    pub runs: Vec<RunInfo>,
    /// Selected row of the Runs view.
    pub selected_run: usize,
    /// The run the Run view shows.
    pub focused: Option<PathBuf>,
    pub confirm: Option<Confirm>,
    pub log_scale: bool,
    /// Show only the last this many steps of the loss chart (`None`: all).
    pub zoom_last: Option<usize>,
    /// One line of feedback in the footer.
    pub notice: Option<String>,
    pub quit: bool,
}

impl App {
    pub fn new(base: Profile) -> Self {
        Self {
            view: View::Setup,
            help: false,
            setup: Setup::from_profile(&base),
            base,
            runs: Vec::new(),
            selected_run: 0,
            focused: None,
            confirm: None,
            log_scale: false,
            zoom_last: None,
            notice: None,
            quit: false,
        }
    }

    /// The run shown in the Run view.
    pub fn focused_run(&self) -> Option<&RunInfo> {
        let path = self.focused.as_ref()?;
        self.runs.iter().find(|r| &r.path == path)
    }

    /// New run data from the watcher; a run launched from here is focused once it appears.
    pub fn set_runs(&mut self, runs: Vec<RunInfo>) {
        self.runs = runs;
        self.selected_run = self.selected_run.min(self.runs.len().saturating_sub(1));
        if self.focused.is_none() {
            self.focused = self.runs.last().map(|r| r.path.clone());
        }
    }

    /// The model config read for the Setup view (or why it could not be read).
    pub fn set_model(&mut self, result: Result<ModelConfig, String>) {
        match result {
            Ok(c) => {
                self.setup.model = Some(c);
                self.setup.model_error = None;
            }
            Err(e) => {
                self.setup.model = None;
                self.setup.model_error = Some(e);
            }
        }
        self.revalidate();
    }

    fn revalidate(&mut self) {
        self.setup.error = self.setup.profile(&self.base).err();
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
                },
                _ => {
                    self.notice = Some("cancelled".into());
                    Vec::new()
                }
            };
        }
        if self.setup.editing.is_some() {
            return self.edit_key(key);
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
            KeyCode::Tab => {
                let i = View::ALL.iter().position(|v| *v == self.view).unwrap_or(0);
                self.view = View::ALL[(i + 1) % View::ALL.len()];
                return Vec::new();
            }
            KeyCode::BackTab => {
                let i = View::ALL.iter().position(|v| *v == self.view).unwrap_or(0);
                self.view = View::ALL[(i + View::ALL.len() - 1) % View::ALL.len()];
                return Vec::new();
            }
            KeyCode::Char('1') => self.view = View::Setup,
            KeyCode::Char('2') => self.view = View::Run,
            KeyCode::Char('3') => self.view = View::Runs,
            _ => {}
        }
        match self.view {
            View::Setup => self.setup_key(key),
            View::Run => self.run_key(key),
            View::Runs => self.runs_key(key),
        }
    }

    fn setup_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let n = self.setup.fields.len();
        match key.code {
            KeyCode::Up => self.setup.selected = (self.setup.selected + n - 1) % n,
            KeyCode::Down => self.setup.selected = (self.setup.selected + 1) % n,
            KeyCode::Left | KeyCode::Right => {
                let f = &mut self.setup.fields[self.setup.selected];
                if !f.choices.is_empty() {
                    let i = f.choices.iter().position(|c| *c == f.value).unwrap_or(0);
                    let step = if key.code == KeyCode::Right {
                        1
                    } else {
                        f.choices.len() - 1
                    };
                    f.value = f.choices[(i + step) % f.choices.len()].to_string();
                    self.revalidate();
                }
            }
            KeyCode::Enter => {
                let f = &self.setup.fields[self.setup.selected];
                if f.choices.is_empty() {
                    self.setup.editing = Some(f.value.clone());
                }
            }
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
                f.value = value;
                let inspect = (f.key == "model.path").then(|| PathBuf::from(&f.value));
                self.revalidate();
                if let Some(p) = inspect {
                    return vec![Effect::InspectModel(p)];
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn run_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let Some(run) = self.focused_run() else {
            return Vec::new();
        };
        let path = run.path.clone();
        let state = run.status.as_ref().map(|s| s.state);
        let live = matches!(
            state,
            Some(RunState::Running | RunState::Paused | RunState::Initializing)
        );
        match key.code {
            KeyCode::Char('p') if live => {
                let req = if state == Some(RunState::Paused) {
                    ControlRequest::Resume
                } else {
                    ControlRequest::Pause
                };
                return vec![Effect::Control(path, req)];
            }
            KeyCode::Char('c') if live => {
                return vec![Effect::Control(path, ControlRequest::Checkpoint)]
            }
            KeyCode::Char('s') if live => {
                self.confirm = Some(Confirm::Stop(path));
            }
            KeyCode::Char('g') => self.log_scale = !self.log_scale,
            KeyCode::Char('z') => {
                self.zoom_last = match self.zoom_last {
                    None => Some(50),
                    Some(_) => None,
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn runs_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let n = self.runs.len();
        if n == 0 {
            return Vec::new();
        }
        match key.code {
            KeyCode::Up => self.selected_run = (self.selected_run + n - 1) % n,
            KeyCode::Down => self.selected_run = (self.selected_run + 1) % n,
            KeyCode::Enter => {
                self.focused = Some(self.runs[self.selected_run].path.clone());
                self.view = View::Run;
            }
            KeyCode::Char('e') => {
                if let Some(p) = &self.runs[self.selected_run].profile {
                    self.setup = Setup::from_profile(p);
                    self.base = p.clone();
                    self.view = View::Setup;
                    let model = p.model.path.clone();
                    self.revalidate();
                    return vec![Effect::InspectModel(model)];
                }
            }
            KeyCode::Char('d') => {
                self.confirm = Some(Confirm::Delete(self.runs[self.selected_run].path.clone()));
            }
            _ => {}
        }
        Vec::new()
    }
}
