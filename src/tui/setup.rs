//! The Setup form: the settings of a run as typed fields ([`FieldId`]) that read their value
//! from a [`Profile`] and write it back as an [`Override`], so a profile key is spelled once,
//! here, and the choice lists come from the enums' `ALL`. An optional key left empty (the
//! validation file, the run name) is not written.

use std::path::{Path, PathBuf};

use super::catalog::DataRequest;
use crate::adapters::{Init, Method};
use crate::data::DataSummary;
use crate::device::{ComputeDtype, DeviceSpec};
use crate::model::ModelSummary;
use crate::model::Recompute;
use crate::prune::PruneMethod;
use crate::sources::hub::Download;
use crate::sparsity::Layout;
use crate::train::optim::OptimizerName;
use crate::train::optim::Schedule;
use crate::train::overrides::toml_value;
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
    /// A comma-separated list, written as a TOML array of strings.
    List,
}

/// The `none` choice of the prune step.
pub const NO_PRUNE: &str = "none";

macro_rules! fields {
    ($($id:ident => $key:literal, $label:literal, $kind:expr;)*) => {
        /// A setting of the Setup form, in display order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum FieldId { $($id),* }

        impl FieldId {
            pub const ALL: &'static [FieldId] = &[$(FieldId::$id),*];

            /// The profile key it sets.
            pub fn key(self) -> &'static str {
                match self { $(FieldId::$id => $key),* }
            }

            /// Its name on screen.
            pub fn label(self) -> &'static str {
                match self { $(FieldId::$id => $label),* }
            }

            pub fn kind(self) -> Kind {
                match self { $(FieldId::$id => $kind),* }
            }
        }
    };
}

fields! {
    Model => "model.path", "model", Kind::Path(PickFrom::Models);
    PruneMethod => "prune.method", "prune first", Kind::Choice;
    PrunePattern => "prune.pattern", "prune pattern", Kind::Text;
    PruneSparsity => "prune.sparsity", "prune sparsity", Kind::Number;
    TrainData => "data.train", "train data", Kind::Path(PickFrom::Datasets);
    ValidData => "data.valid", "valid data", Kind::Path(PickFrom::Datasets);
    SeqLen => "data.seq_len", "seq_len", Kind::Number;
    ValidFraction => "data.valid_fraction", "valid fraction", Kind::Number;
    Dtype => "model.dtype", "dtype", Kind::Choice;
    Method => "adapter.method", "method", Kind::Choice;
    Rank => "adapter.rank", "rank", Kind::Number;
    Alpha => "adapter.alpha", "alpha", Kind::Number;
    Rslora => "adapter.rslora", "rslora", Kind::Bool;
    Init => "adapter.init", "init", Kind::Choice;
    InitSamples => "adapter.init_samples", "init samples", Kind::Number;
    StableGamma => "adapter.stable_gamma", "stable_gamma", Kind::Number;
    Targets => "adapter.target_modules", "targets", Kind::List;
    FrozenBlocks => "adapter.frozen_blocks", "frozen blocks", Kind::Number;
    OrthReg => "adapter.orth_reg", "orth. reg", Kind::Number;
    RankKeep => "adapter.rank_keep", "rank keep", Kind::Number;
    BoostEvery => "adapter.boost_every", "XGBLoRA round", Kind::Number;
    Sora => "adapter.sora", "SoRA gates", Kind::Bool;
    SoraThreshold => "adapter.sora_threshold", "SoRA ξ", Kind::Number;
    Flat => "adapter.flat", "Flat-LoRA", Kind::Bool;
    FlatRho => "adapter.flat_rho", "Flat-LoRA ρ", Kind::Number;
    Optimizer => "optim.name", "optimizer", Kind::Choice;
    Lr => "optim.lr", "lr", Kind::Number;
    WeightDecay => "optim.weight_decay", "weight decay", Kind::Number;
    Schedule => "optim.schedule", "schedule", Kind::Choice;
    Warmup => "optim.warmup_steps", "warmup steps", Kind::Number;
    GradClip => "optim.grad_clip", "grad clip", Kind::Number;
    Steps => "train.max_steps", "steps", Kind::Number;
    Batch => "train.batch_size", "batch", Kind::Number;
    Accum => "train.grad_accum", "accumulation", Kind::Number;
    Recompute => "train.recompute", "recompute", Kind::Choice;
    Seed => "train.seed", "seed", Kind::Number;
    Device => "train.device", "device", Kind::Choice;
    EvalEvery => "train.eval_every", "eval every", Kind::Number;
    SaveEvery => "train.save_every", "save every", Kind::Number;
    MergeAtEnd => "train.merge_at_end", "merge at end", Kind::Bool;
    RunName => "train.run_name", "run name", Kind::Text;
}

/// Optional keys: left empty, the form does not write them (the profile's default holds).
const OPTIONAL: [FieldId; 2] = [FieldId::ValidData, FieldId::RunName];

/// The steps the form shows for a profile counted in epochs.
const DEFAULT_STEPS: usize = 100;

impl FieldId {
    /// The values Left/Right cycle through, if any.
    pub fn choices(self) -> Vec<String> {
        fn names<T: ToString>(all: &[T]) -> Vec<String> {
            all.iter().map(T::to_string).collect()
        }
        match self {
            FieldId::PruneMethod => std::iter::once(NO_PRUNE.to_string())
                .chain(names(PruneMethod::ALL))
                .collect(),
            FieldId::Method => names(Method::ALL),
            FieldId::Init => names(Init::ALL),
            FieldId::Optimizer => names(OptimizerName::ALL),
            FieldId::Schedule => names(Schedule::ALL),
            FieldId::Recompute => names(Recompute::ALL),
            FieldId::Device => names(DeviceSpec::available()),
            FieldId::Dtype => names(ComputeDtype::ALL),
            _ if self.kind() == Kind::Bool => names(&[true, false]),
            _ => Vec::new(),
        }
    }

    /// Its value in `p`, as the form shows it.
    pub fn read(self, p: &Profile) -> String {
        let path = |p: &Path| p.display().to_string();
        let prune = p.prune.as_ref();
        let a = &p.adapter;
        match self {
            FieldId::Model => path(&p.model.path),
            FieldId::PruneMethod => prune.map_or(NO_PRUNE.into(), |s| s.method.to_string()),
            FieldId::PrunePattern => prune.map_or(Layout::default(), |s| s.pattern).to_string(),
            FieldId::PruneSparsity => prune.map_or("0.5".into(), |s| s.sparsity.to_string()),
            FieldId::TrainData => path(&p.data.train),
            FieldId::ValidData => p.data.valid.as_deref().map(path).unwrap_or_default(),
            FieldId::SeqLen => p.data.seq_len.to_string(),
            FieldId::ValidFraction => format!("{:?}", p.data.valid_fraction),
            FieldId::Dtype => p.model.dtype.to_string(),
            FieldId::Method => a.method.name().into(),
            FieldId::Rank => a.rank.to_string(),
            FieldId::Alpha => format!("{:?}", a.alpha),
            FieldId::Rslora => a.rslora.to_string(),
            FieldId::Init => a.init.name().into(),
            FieldId::InitSamples => a.init_samples.to_string(),
            FieldId::StableGamma => format!("{:?}", a.stable_gamma),
            FieldId::Targets => a
                .target_modules
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(","),
            FieldId::FrozenBlocks => a.frozen_blocks.to_string(),
            FieldId::OrthReg => format!("{:?}", a.orth_reg),
            FieldId::RankKeep => a.rank_keep.to_string(),
            FieldId::BoostEvery => a.boost_every.to_string(),
            FieldId::Sora => a.sora.to_string(),
            FieldId::SoraThreshold => format!("{:?}", a.sora_threshold),
            FieldId::Flat => a.flat.to_string(),
            FieldId::FlatRho => format!("{:?}", a.flat_rho),
            FieldId::Optimizer => p.optim.name.name().into(),
            FieldId::Lr => format!("{:e}", p.optim.lr),
            FieldId::WeightDecay => format!("{:?}", p.optim.weight_decay),
            FieldId::Schedule => p.optim.schedule.name().into(),
            FieldId::Warmup => p.optim.warmup_steps.to_string(),
            FieldId::GradClip => format!("{:?}", p.optim.grad_clip),
            FieldId::Steps => p.train.max_steps.unwrap_or(DEFAULT_STEPS).to_string(),
            FieldId::Batch => p.train.batch_size.to_string(),
            FieldId::Accum => p.train.grad_accum.to_string(),
            FieldId::Recompute => p.train.recompute.name().into(),
            FieldId::Seed => p.train.seed.to_string(),
            FieldId::Device => p.train.device.to_string(),
            FieldId::EvalEvery => p.train.eval_every.to_string(),
            FieldId::SaveEvery => p.train.save_every.to_string(),
            FieldId::MergeAtEnd => p.train.merge_at_end.to_string(),
            FieldId::RunName => p.train.run_name.clone().unwrap_or_default(),
        }
    }

    /// `value` as a TOML value for a `key=value` override.
    pub fn toml_value(self, value: &str) -> toml::Value {
        match self.kind() {
            Kind::Text | Kind::Path(_) | Kind::Choice => toml::Value::String(value.into()),
            Kind::Number | Kind::Bool => {
                toml_value(value).unwrap_or_else(|| toml::Value::String(value.into()))
            }
            Kind::List => toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.into()))
                    .collect(),
            ),
        }
    }

    /// Whether a sweep can vary it (paths and lists cannot).
    pub fn sweepable(self) -> bool {
        matches!(self.kind(), Kind::Number | Kind::Choice | Kind::Bool)
            && !matches!(self, FieldId::Device | FieldId::PruneMethod)
    }
}

/// The Setup view: every setting of a run, edited in place.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// The value of each [`FieldId::ALL`], in that order.
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
        Self {
            values: FieldId::ALL.iter().map(|f| f.read(p)).collect(),
            selected: 0,
            error: None,
            model: None,
            data: Vec::new(),
            download: None,
        }
    }

    /// The fields with their values, in display order.
    pub fn fields(&self) -> impl Iterator<Item = (FieldId, &str)> {
        FieldId::ALL
            .iter()
            .copied()
            .zip(self.values.iter().map(String::as_str))
    }

    /// The selected field.
    pub fn selected_field(&self) -> FieldId {
        FieldId::ALL[self.selected]
    }

    pub fn value(&self, id: FieldId) -> &str {
        &self.values[Self::index(id)]
    }

    pub fn set(&mut self, id: FieldId, value: &str) {
        self.values[Self::index(id)] = value.to_string();
    }

    fn index(id: FieldId) -> usize {
        FieldId::ALL
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
        let n = FieldId::ALL.len() as isize;
        self.selected = (self.selected as isize + step).rem_euclid(n) as usize;
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
        self.value(FieldId::PruneMethod) != NO_PRUNE
    }

    /// The overrides the form stands for. The prune keys count only when a prune method is
    /// chosen; they calibrate on the training data at the training `seq_len`.
    pub fn overrides(&self) -> Vec<Override> {
        let prune_keys = [
            FieldId::PruneMethod,
            FieldId::PrunePattern,
            FieldId::PruneSparsity,
        ];
        let mut out: Vec<Override> = self
            .fields()
            .filter(|(id, v)| !(OPTIONAL.contains(id) && v.is_empty()))
            .filter(|(id, _)| self.pruning() || !prune_keys.contains(id))
            .map(|(id, v)| Override::new(id.key(), id.toml_value(v)))
            .collect();
        if self.pruning() {
            let train = self.value(FieldId::TrainData);
            out.push(Override::new("prune.calib", train));
            let seq_len = self.value(FieldId::SeqLen);
            out.push(Override::new(
                "prune.seq_len",
                FieldId::SeqLen.toml_value(seq_len),
            ));
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
        // A cleared optional field (the validation file, the run name) means none, not the
        // base profile's.
        for id in OPTIONAL.into_iter().filter(|id| self.value(*id).is_empty()) {
            let (section, key) = id.key().split_once('.').expect("keys are section.key");
            if let Some(t) = text.get_mut(section).and_then(|t| t.as_table_mut()) {
                t.remove(key);
            }
        }
        text.remove("prune");
        let p = Profile::from_table(text, &self.overrides()).map_err(|e| e.to_string())?;
        self.check_rank(&p)?;
        for (id, info) in &self.data {
            if let Err(e) = info {
                return Err(format!("{}: {e}", id.key()));
            }
        }
        Ok(p)
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
        PathBuf::from(self.value(FieldId::Model))
    }

    /// Data inspections the current fields call for (train, and valid when given).
    pub fn data_requests(&self, base: &Profile) -> Vec<(FieldId, DataRequest)> {
        let Ok(seq_len) = self.value(FieldId::SeqLen).parse::<usize>() else {
            return Vec::new();
        };
        let mut options = base.data.clone();
        options.seq_len = seq_len;
        [FieldId::TrainData, FieldId::ValidData]
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
