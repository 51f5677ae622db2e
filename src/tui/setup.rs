//! The Setup form: every key of a profile ([`profile_keys`], from the profile's own types)
//! as a field that reads its value from a [`Profile`] and writes it back as an [`Override`].
//! A field left empty is not written: the profile's default (or none) holds. Whole optional
//! sections are written only when chosen: `[prune]` with a prune method, `[eval]` with tasks.

use std::path::PathBuf;
use std::sync::OnceLock;

use super::catalog::DataRequest;
use crate::data::DataSummary;
use crate::device::DeviceSpec;
use crate::model::ModelSummary;
use crate::sources::hub::Download;
use crate::train::overrides::toml_value;
use crate::train::schema::{profile_keys, ProfileKey, ValueType};
use crate::train::{Override, Profile};

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
    /// A number, written as is.
    Number,
    /// One of [`FieldId::choices`] (cycled with Left/Right), written as a TOML string.
    Choice,
    /// `true`/`false`.
    Bool,
    /// A comma-separated list, written as a TOML array.
    List,
    /// Comma-separated `name=value` pairs, written as a TOML table of strings.
    Table,
}

/// The `none` choice of the prune step (no `[prune]` section).
pub const NO_PRUNE: &str = "none";

/// Keys the workbench decides itself: its runs folder holds every run it launches.
const OWNED_BY_THE_WORKBENCH: [&str; 1] = ["train.output_dir"];

/// A setting of the Setup form: one profile key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldId(&'static str);

impl FieldId {
    pub const MODEL: Self = Self("model.path");
    pub const DTYPE: Self = Self("model.dtype");
    pub const PRUNE_METHOD: Self = Self("prune.method");
    pub const PRUNE_PATTERN: Self = Self("prune.pattern");
    pub const PRUNE_SPARSITY: Self = Self("prune.sparsity");
    /// Left empty: the training data.
    pub const PRUNE_CALIB: Self = Self("prune.calib");
    /// Left empty: the training `seq_len`.
    pub const PRUNE_SEQ_LEN: Self = Self("prune.seq_len");
    pub const TRAIN_DATA: Self = Self("data.train");
    pub const VALID_DATA: Self = Self("data.valid");
    pub const SEQ_LEN: Self = Self("data.seq_len");
    pub const METHOD: Self = Self("adapter.method");
    pub const RANK: Self = Self("adapter.rank");
    pub const LR: Self = Self("optim.lr");
    pub const MAX_STEPS: Self = Self("train.max_steps");
    pub const DEVICE: Self = Self("train.device");
    pub const RUN_NAME: Self = Self("train.run_name");
    pub const EVAL_TASKS: Self = Self("eval.tasks");

    /// Every field, in the profile's order but with the optional sections (`[prune]`,
    /// `[eval]`) after the others.
    pub fn all() -> &'static [FieldId] {
        static ALL: OnceLock<Vec<FieldId>> = OnceLock::new();
        ALL.get_or_init(|| {
            let mut keys: Vec<&ProfileKey> = profile_keys()
                .iter()
                .filter(|k| !OWNED_BY_THE_WORKBENCH.contains(&k.key.as_str()))
                .collect();
            keys.sort_by_key(|k| k.optional_section);
            keys.into_iter().map(|k| FieldId(k.key.as_str())).collect()
        })
    }

    /// The field of a profile key, if the form has one.
    pub fn of(key: &str) -> Option<FieldId> {
        Self::all().iter().copied().find(|f| f.0 == key)
    }

    fn spec(self) -> &'static ProfileKey {
        profile_keys()
            .iter()
            .find(|k| k.key == self.0)
            .expect("fields are profile keys")
    }

    /// The profile key it sets.
    pub fn key(self) -> &'static str {
        self.0
    }

    /// Its section (the form's heading).
    pub fn section(self) -> &'static str {
        self.spec().section
    }

    /// Its name on screen, under its section's heading.
    pub fn label(self) -> String {
        self.spec().name().replace('_', " ")
    }

    /// Its doc comment.
    pub fn doc(self) -> &'static str {
        &self.spec().doc
    }

    pub fn kind(self) -> Kind {
        match self {
            Self::MODEL => return Kind::Path(PickFrom::Models),
            Self::TRAIN_DATA | Self::VALID_DATA => return Kind::Path(PickFrom::Datasets),
            Self::DEVICE => return Kind::Choice,
            _ => {}
        }
        match &self.spec().value {
            ValueType::Bool => Kind::Bool,
            ValueType::Integer | ValueType::Number => Kind::Number,
            ValueType::Text => Kind::Text,
            ValueType::Choice(_) => Kind::Choice,
            ValueType::List(_) => Kind::List,
            ValueType::Table(_) => Kind::Table,
        }
    }

    /// The values Left/Right cycle through, if any.
    pub fn choices(self) -> Vec<String> {
        match (self, &self.spec().value) {
            (Self::DEVICE, _) => DeviceSpec::available()
                .iter()
                .map(|d| d.to_string())
                .collect(),
            (Self::PRUNE_METHOD, ValueType::Choice(names)) => std::iter::once(NO_PRUNE.to_string())
                .chain(names.clone())
                .collect(),
            (_, ValueType::Choice(names)) => names.clone(),
            (_, ValueType::Bool) => vec!["true".into(), "false".into()],
            _ => Vec::new(),
        }
    }

    /// What an empty value means, as the form shows it.
    pub fn placeholder(self) -> String {
        let spec = self.spec();
        match self {
            Self::PRUNE_CALIB => "(the train data)".into(),
            Self::PRUNE_SEQ_LEN => "(the data seq_len)".into(),
            _ if spec.nullable => "(none)".into(),
            _ => match &spec.default {
                Some(v) => format!("(default {})", shown(v)),
                None => "(required)".into(),
            },
        }
    }

    /// The choices of a list's items, for the help line (`eval.tasks`, `target_modules`).
    pub fn item_choices(self) -> Option<&'static [String]> {
        match &self.spec().value {
            ValueType::List(item) => match &**item {
                ValueType::Choice(names) => Some(names),
                _ => None,
            },
            _ => None,
        }
    }

    /// `value` as the TOML value it stands for.
    pub fn toml_value(self, value: &str) -> toml::Value {
        let scalar = |s: &str, ty: &ValueType| match ty {
            ValueType::Bool | ValueType::Integer | ValueType::Number => {
                toml_value(s).unwrap_or_else(|| toml::Value::String(s.into()))
            }
            _ => toml::Value::String(s.into()),
        };
        let items = || value.split(',').map(str::trim).filter(|s| !s.is_empty());
        match &self.spec().value {
            ValueType::List(item) => toml::Value::Array(items().map(|s| scalar(s, item)).collect()),
            ValueType::Table(item) => toml::Value::Table(
                items()
                    .map(|pair| match pair.split_once('=') {
                        Some((k, v)) => (k.trim().to_string(), scalar(v.trim(), item)),
                        None => (pair.to_string(), toml::Value::String(String::new())),
                    })
                    .collect(),
            ),
            ty => scalar(value, ty),
        }
    }

    /// Whether a sweep can vary it (paths, text and lists cannot).
    pub fn sweepable(self) -> bool {
        matches!(self.kind(), Kind::Number | Kind::Choice | Kind::Bool)
            && !matches!(self, FieldId::DEVICE | FieldId::PRUNE_METHOD)
            && !self.spec().optional_section
    }

    /// Its value in `profile` (serialised as `table`), as the form shows it.
    fn read(self, table: &toml::Table) -> String {
        let spec = self.spec();
        let in_profile = table.get(spec.section).and_then(|s| s.get(spec.name()));
        match (self, in_profile) {
            (_, Some(v)) => shown(v),
            (Self::PRUNE_METHOD, None) => NO_PRUNE.into(),
            // Without a prune step, calibrate on the training data at its seq_len.
            (Self::PRUNE_CALIB | Self::PRUNE_SEQ_LEN, None) => String::new(),
            (_, None) => spec.default.as_ref().map(shown).unwrap_or_default(),
        }
    }
}

/// A TOML value as a field shows it: strings bare, lists and tables comma-separated, small
/// and large numbers in exponent form (`2e-4`).
fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Float(x) if *x != 0.0 && (x.abs() < 1e-2 || x.abs() >= 1e6) => {
            format!("{x:e}")
        }
        toml::Value::Float(x) => format!("{x:?}"),
        toml::Value::Array(items) => items.iter().map(shown).collect::<Vec<_>>().join(", "),
        toml::Value::Table(t) => t
            .iter()
            .map(|(k, v)| format!("{k}={}", shown(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// The Setup view: every setting of a run, edited in place.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// The value of each of [`FieldId::all`], in that order.
    values: Vec<String>,
    pub selected: usize,
    /// Why the current settings cannot launch (shown inline), if anything.
    pub error: Option<String>,
    /// What was detected about the model, or why it could not be read.
    pub model: Option<Result<ModelSummary, String>>,
    /// What was counted in the train and valid files.
    pub data: Vec<(FieldId, Result<DataSummary, String>)>,
    /// The hub download in progress for the model, if any.
    pub download: Option<Download>,
}

impl Setup {
    /// The form filled from a profile.
    pub fn from_profile(p: &Profile) -> Self {
        let table = toml::Table::try_from(p).unwrap_or_default();
        Self {
            values: FieldId::all().iter().map(|f| f.read(&table)).collect(),
            selected: 0,
            error: None,
            model: None,
            data: Vec::new(),
            download: None,
        }
    }

    /// The fields with their values, in display order.
    pub fn fields(&self) -> impl Iterator<Item = (FieldId, &str)> {
        FieldId::all()
            .iter()
            .copied()
            .zip(self.values.iter().map(String::as_str))
    }

    /// The selected field.
    pub fn selected_field(&self) -> FieldId {
        FieldId::all()[self.selected]
    }

    pub fn value(&self, id: FieldId) -> &str {
        &self.values[Self::index(id)]
    }

    pub fn set(&mut self, id: FieldId, value: &str) {
        self.values[Self::index(id)] = value.to_string();
    }

    fn index(id: FieldId) -> usize {
        FieldId::all()
            .iter()
            .position(|f| *f == id)
            .expect("every field is listed")
    }

    /// Select `id`.
    pub fn select(&mut self, id: FieldId) {
        self.selected = Self::index(id);
    }

    /// Move the selection by `step` fields, wrapping.
    pub fn move_selection(&mut self, step: isize) {
        let n = FieldId::all().len() as isize;
        self.selected = (self.selected as isize + step).rem_euclid(n) as usize;
    }

    /// Select the first field of the next (`step` 1) or previous (-1) section, wrapping.
    pub fn move_section(&mut self, step: isize) {
        let all = FieldId::all();
        let section = all[self.selected].section();
        let starts: Vec<usize> = (0..all.len())
            .filter(|&i| i == 0 || all[i].section() != all[i - 1].section())
            .collect();
        let here = starts
            .iter()
            .position(|&i| all[i].section() == section)
            .unwrap_or(0) as isize;
        let next = (here + step).rem_euclid(starts.len() as isize) as usize;
        self.selected = starts[next];
    }

    /// Cycle the selected field's choice by `step`; true when it has choices.
    pub fn cycle(&mut self, step: isize) -> bool {
        let id = self.selected_field();
        let choices = id.choices();
        if choices.is_empty() {
            return false;
        }
        let i = choices
            .iter()
            .position(|c| *c == self.value(id))
            .unwrap_or(0) as isize;
        let next = &choices[(i + step).rem_euclid(choices.len() as isize) as usize];
        self.set(id, next);
        true
    }

    pub fn pruning(&self) -> bool {
        !matches!(self.value(FieldId::PRUNE_METHOD), NO_PRUNE | "")
    }

    /// Whether an optional section is chosen: `[prune]` with a method, `[eval]` with tasks.
    fn section_chosen(&self, section: &str) -> bool {
        match section {
            "prune" => self.pruning(),
            "eval" => !self.value(FieldId::EVAL_TASKS).trim().is_empty(),
            _ => true,
        }
    }

    /// The overrides the form stands for: every non-empty field of a chosen section. An
    /// empty prune calibration file or `seq_len` takes the training data's.
    pub fn overrides(&self) -> Vec<Override> {
        let inherited = |id: FieldId| match id {
            FieldId::PRUNE_CALIB => Some(FieldId::TRAIN_DATA),
            FieldId::PRUNE_SEQ_LEN => Some(FieldId::SEQ_LEN),
            _ => None,
        };
        self.fields()
            .filter(|(id, _)| self.section_chosen(id.section()))
            .filter_map(|(id, v)| match (v.is_empty(), inherited(id)) {
                (false, _) => Some(Override::new(id.key(), id.toml_value(v))),
                (true, Some(from)) => {
                    Some(Override::new(id.key(), from.toml_value(self.value(from))))
                }
                (true, None) => None,
            })
            .collect()
    }

    /// The profile the form describes on top of `base`, or why it is invalid. Besides the
    /// profile's own checks, the model must be readable, the rank must fit its smallest
    /// adapted layer and the data files must have been read.
    pub fn profile(&self, base: &Profile) -> Result<Profile, String> {
        let p = self.form_profile(base)?;
        self.check_rank(&p)?;
        for (id, info) in &self.data {
            if let Err(e) = info {
                return Err(format!("{}: {e}", id.key()));
            }
        }
        Ok(p)
    }

    /// The form's values on top of `base` (whose keys the form does not show stay), with
    /// only the profile's own checks.
    fn form_profile(&self, base: &Profile) -> Result<Profile, String> {
        let mut table = toml::Table::try_from(base).map_err(|e| e.to_string())?;
        // A field left empty means the default (or none), not the base profile's value; a
        // section not chosen is left out.
        for (id, v) in self.fields() {
            let section = id.section();
            if !self.section_chosen(section) {
                table.remove(section);
            } else if v.is_empty() {
                if let Some(t) = table.get_mut(section).and_then(|t| t.as_table_mut()) {
                    t.remove(&id.key()[section.len() + 1..]);
                }
            }
        }
        Profile::from_table(table, &self.overrides()).map_err(|e| e.to_string())
    }

    /// What is still being checked for the current values (the model, or a data file), if
    /// anything: until it is in, [`profile`](Self::profile) cannot know they are valid.
    pub fn checking(&self, base: &Profile) -> Option<&'static str> {
        if self.model.is_none() {
            return Some("the model");
        }
        let counted = |id: FieldId| self.data.iter().any(|(f, _)| *f == id);
        self.data_requests(base)
            .iter()
            .any(|(id, _)| !counted(*id))
            .then_some("the data")
    }

    /// The model must be readable and the rank must fit its smallest adapted layer.
    fn check_rank(&self, p: &Profile) -> Result<(), String> {
        let m = match &self.model {
            Some(Err(e)) => return Err(format!("model: {e}")),
            Some(Ok(m)) => m,
            None => return Ok(()),
        };
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
        Ok(())
    }

    /// The model path in the form.
    pub fn model_path(&self) -> PathBuf {
        PathBuf::from(self.value(FieldId::MODEL))
    }

    /// Data inspections the current fields call for (train, and valid when given), read
    /// with the form's data settings (the base profile's, with the form's `seq_len`, while
    /// the form does not parse).
    pub fn data_requests(&self, base: &Profile) -> Vec<(FieldId, DataRequest)> {
        let options = match self.form_profile(base) {
            Ok(p) => p.data,
            Err(_) => {
                let Ok(seq_len) = self.value(FieldId::SEQ_LEN).parse::<usize>() else {
                    return Vec::new();
                };
                let mut options = base.data.clone();
                options.seq_len = seq_len;
                options
            }
        };
        [FieldId::TRAIN_DATA, FieldId::VALID_DATA]
            .into_iter()
            .filter(|id| !self.value(*id).is_empty())
            .map(|id| {
                let request = DataRequest {
                    path: PathBuf::from(self.value(id)),
                    model: self.model_path(),
                    options: options.clone(),
                };
                (id, request)
            })
            .collect()
    }
}
