//! The Sweeps view's state: the sweeps found under the runs folder, the comparison of one
//! sweep's trials (sortable by any column, with their curves and a parameter plot), and the
//! form that defines a new sweep from the Setup's settings.

use std::cmp::Ordering;
use std::path::PathBuf;

use super::setup::FieldId;
use super::watch::{RunInfo, SweepInfo};
use crate::sweep::runner::TrialRecord;
use crate::sweep::spec::Search;
use crate::sweep::{summary, TrialState};
use crate::train::overrides::toml_value;
use crate::train::{Override, Profile};

/// `4/6 done, 1 running, 1 stopped early` over `rows` (the trials of `sweep` as their runs
/// report them), and whether the sweep lost its scheduler.
pub fn progress(sweep: &SweepInfo, rows: &[TrialView]) -> String {
    let count = |state: TrialState| rows.iter().filter(|r| r.state() == state).count();
    let ended = rows.len() - count(TrialState::Pending) - count(TrialState::Running);
    let orphan = if sweep.orphaned() {
        "; its lors sweep is gone: R resumes"
    } else {
        ""
    };
    format!(
        "{ended}/{} done, {} running, {} stopped early{orphan}",
        rows.len(),
        count(TrialState::Running),
        count(TrialState::StoppedEarly)
    )
}

/// A column of the trial table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Trial,
    /// The swept key at this place.
    Param(usize),
    State,
    /// Best validation loss and its perplexity.
    BestVal,
    TrainLoss,
    TokensPerS,
    PeakMemory,
    ZerosKept,
    Time,
}

/// The outcome columns, after the trial number and the swept keys.
const OUTCOMES: [Column; 7] = [
    Column::State,
    Column::BestVal,
    Column::TrainLoss,
    Column::TokensPerS,
    Column::PeakMemory,
    Column::ZerosKept,
    Column::Time,
];

impl Column {
    /// The header of the column (`axes` names the swept keys).
    pub fn header(self, axes: &[String]) -> String {
        match self {
            Column::Trial => "trial".into(),
            Column::Param(i) => axes
                .get(i)
                .map_or("?", |k| k.rsplit('.').next().unwrap_or(k))
                .into(),
            Column::State => "state".into(),
            Column::BestVal => "val/ppl".into(),
            Column::TrainLoss => "train".into(),
            Column::TokensPerS => "tok/s".into(),
            Column::PeakMemory => "MiB".into(),
            Column::ZerosKept => "0s".into(),
            Column::Time => "time".into(),
        }
    }
}

/// One trial with the run it became (once it started).
#[derive(Debug, Clone, Copy)]
pub struct TrialView<'a> {
    pub record: &'a TrialRecord,
    pub run: Option<&'a RunInfo>,
}

/// A value to sort by: numbers before text, missing values last.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum SortValue {
    Number(f64),
    Text(String),
}

impl<'a> TrialView<'a> {
    /// The trial's state, its own run's where the sweep's record is behind.
    pub fn state(&self) -> TrialState {
        let run = self.run.and_then(|r| r.status.as_ref()).map(|s| s.state);
        self.record.current_state(run)
    }

    /// The cell of `column` (`axes` names the swept keys).
    pub fn cell(&self, column: Column, axes: &[String]) -> String {
        let num = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
        match column {
            Column::Trial => format!("t{:03}", self.record.trial.index),
            Column::Param(i) => self.param(axes, i).map_or("-".into(), |v| match v {
                toml::Value::Float(f) => format!("{f:.1e}"),
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            // A trial whose SLURM job waits in the queue says so, and why, as `squeue`
            // abbreviates it (`PD Resources`).
            Column::State => match &self.record.job {
                Some(job) if self.state() == TrialState::Running && !job.state.is_running() => {
                    job.state.short()
                }
                _ => self.state().to_string(),
            },
            Column::BestVal => self
                .best_val()
                .map_or("-".into(), |b| format!("{b:.3}/{:.1}", b.exp())),
            Column::TrainLoss => num(self.summary(|s| s.last_train_loss()), 3),
            Column::TokensPerS => num(self.summary(|s| s.tokens_per_s()), 0),
            Column::PeakMemory => num(
                self.summary(|s| s.peak_bytes.map(|b| b as f64 / (1 << 20) as f64)),
                0,
            ),
            Column::ZerosKept => self
                .run
                .and_then(|r| r.summary.zeros_kept)
                .map_or("-", |k| if k { "yes" } else { "NO" })
                .into(),
            Column::Time => num(self.summary(|s| s.seconds), 0),
        }
    }

    fn param(&self, axes: &[String], i: usize) -> Option<&'a toml::Value> {
        self.record.trial.values.get(axes.get(i)?)
    }

    fn summary(&self, f: impl Fn(&crate::train::RunSummary) -> Option<f64>) -> Option<f64> {
        self.run.and_then(|r| f(&r.summary))
    }

    /// The best validation loss so far.
    pub fn best_val(&self) -> Option<f64> {
        self.summary(|s| s.best_eval_loss())
    }

    fn sort_value(&self, column: Column, axes: &[String]) -> Option<SortValue> {
        let number = |v: Option<f64>| v.map(SortValue::Number);
        match column {
            Column::Trial => number(Some(self.record.trial.index as f64)),
            Column::Param(i) => {
                let v = self.param(axes, i)?;
                Some(summary::numeric(v).map_or_else(
                    || SortValue::Text(self.cell(column, axes)),
                    SortValue::Number,
                ))
            }
            Column::State | Column::ZerosKept => Some(SortValue::Text(self.cell(column, axes))),
            Column::BestVal => number(self.best_val()),
            Column::TrainLoss => number(self.summary(|s| s.last_train_loss())),
            Column::TokensPerS => number(self.summary(|s| s.tokens_per_s())),
            Column::PeakMemory => number(self.summary(|s| s.peak_bytes.map(|b| b as f64))),
            Column::Time => number(self.summary(|s| s.seconds)),
        }
    }
}

/// What the chart under the trial table shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChartMode {
    /// Validation loss per step, one symbol per trial.
    #[default]
    Valid,
    /// Training loss per step, smoothed by an EMA.
    Train,
    /// Best validation loss against a swept value, one point per trial.
    Param,
}

impl ChartMode {
    fn next(self) -> Self {
        match self {
            ChartMode::Valid => ChartMode::Train,
            ChartMode::Train => ChartMode::Param,
            ChartMode::Param => ChartMode::Valid,
        }
    }
}

/// The EMA weights `[`/`]` step through.
pub const SMOOTHING: [f64; 6] = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99];

/// The comparison of one sweep's trials.
#[derive(Debug, Clone, Default)]
pub struct Board {
    /// The sweep shown (the filter), by directory.
    pub sweep: Option<PathBuf>,
    /// The selected row of the sorted table.
    pub row: usize,
    pub sort: Option<Column>,
    pub descending: bool,
    pub chart: ChartMode,
    /// Index into [`SMOOTHING`].
    pub smoothing: usize,
    /// The swept key the parameter plot uses.
    pub param: usize,
    /// The form defining a new sweep, while open.
    pub form: Option<SweepForm>,
}

impl Board {
    /// The sweep shown, from `sweeps`.
    pub fn current<'a>(&self, sweeps: &'a [SweepInfo]) -> Option<&'a SweepInfo> {
        let dir = self.sweep.as_ref()?;
        sweeps.iter().find(|s| &s.dir == dir)
    }

    /// The table's columns for `sweep`.
    pub fn columns(sweep: &SweepInfo) -> Vec<Column> {
        std::iter::once(Column::Trial)
            .chain((0..sweep.axes.len()).map(Column::Param))
            .chain(OUTCOMES)
            .collect()
    }

    /// The trials of `sweep` with their runs, in the chosen order (missing values last).
    pub fn rows<'a>(&self, sweep: &'a SweepInfo, runs: &'a [RunInfo]) -> Vec<TrialView<'a>> {
        let mut rows: Vec<TrialView> = sweep
            .state
            .trials
            .iter()
            .map(|record| TrialView {
                record,
                run: runs
                    .iter()
                    .find(|r| r.path.file_name() == record.run_dir.file_name()),
            })
            .collect();
        let column = self.sort.unwrap_or(Column::Trial);
        rows.sort_by(|a, b| {
            let (x, y) = (
                a.sort_value(column, &sweep.axes),
                b.sort_value(column, &sweep.axes),
            );
            let order = match (x, y) {
                (Some(x), Some(y)) => {
                    let o = x.partial_cmp(&y).unwrap_or(Ordering::Equal);
                    if self.descending {
                        o.reverse()
                    } else {
                        o
                    }
                }
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            order.then(a.record.trial.index.cmp(&b.record.trial.index))
        });
        rows
    }

    /// Sort by the next column of `sweep`'s table.
    pub fn next_sort(&mut self, sweep: &SweepInfo) {
        let columns = Self::columns(sweep);
        let i = self
            .sort
            .and_then(|c| columns.iter().position(|x| *x == c))
            .map_or(0, |i| (i + 1) % columns.len());
        self.sort = Some(columns[i]);
        self.descending = false;
    }

    pub fn next_chart(&mut self) {
        self.chart = self.chart.next();
    }

    /// Show the sweep after the current one in `sweeps`.
    pub fn next_sweep(&mut self, sweeps: &[SweepInfo]) {
        if sweeps.is_empty() {
            return;
        }
        let i = self
            .sweep
            .as_ref()
            .and_then(|d| sweeps.iter().position(|s| &s.dir == d))
            .map_or(0, |i| (i + 1) % sweeps.len());
        self.sweep = Some(sweeps[i].dir.clone());
        self.row = 0;
        self.param = 0;
    }

    /// The EMA weight of the train chart.
    pub fn smoothing(&self) -> f64 {
        SMOOTHING[self.smoothing]
    }

    /// Less (`step < 0`) or more smoothing.
    pub fn smooth(&mut self, step: isize) {
        self.smoothing =
            (self.smoothing as isize + step).clamp(0, SMOOTHING.len() as isize - 1) as usize;
    }
}

/// A field of the new-sweep form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormField {
    /// The sweep's name (empty: `sweep-<model>-<time>`).
    Name,
    /// The swept setting of axis 0 or 1.
    Key(usize),
    /// Its values.
    Values(usize),
    Search,
    Trials,
    Concurrency,
    Rungs,
    Reduction,
}

impl FormField {
    pub const ALL: [FormField; 10] = [
        FormField::Name,
        FormField::Key(0),
        FormField::Values(0),
        FormField::Key(1),
        FormField::Values(1),
        FormField::Search,
        FormField::Trials,
        FormField::Concurrency,
        FormField::Rungs,
        FormField::Reduction,
    ];

    /// Whether Left/Right cycle it (else it is typed).
    pub fn is_choice(self) -> bool {
        matches!(self, FormField::Key(_) | FormField::Search)
    }

    pub fn label(self) -> String {
        match self {
            FormField::Name => "name".into(),
            FormField::Key(i) => format!("axis {}", i + 1),
            FormField::Values(_) => "  values".into(),
            FormField::Search => "search".into(),
            FormField::Trials => "trials (random)".into(),
            FormField::Concurrency => "at once".into(),
            FormField::Rungs => "rungs (steps)".into(),
            FormField::Reduction => "keep 1/η, η".into(),
        }
    }
}

/// The settings of a new sweep: up to two swept Setup fields with their values (a list such as
/// `4, 8`, or any TOML value such as `{ log_uniform = [1e-4, 1e-2] }`), the search, and
/// early stopping. It is checked by the same code as a profile's `[sweep]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepForm {
    /// The sweep directory's name; empty for the default.
    pub name: String,
    pub axes: [(Option<FieldId>, String); 2],
    pub search: Search,
    pub trials: String,
    pub concurrency: String,
    /// Comma-separated steps; empty for no early stopping.
    pub rungs: String,
    pub reduction: String,
    pub selected: usize,
    /// Why the sweep cannot launch, if it cannot.
    pub error: Option<String>,
}

impl SweepForm {
    /// A 2 × 3 grid over rank and learning rate around `base`, comparing trials at a quarter
    /// and half of its steps.
    pub fn new(base: &Profile) -> Self {
        let rank = base.adapter.rank.max(2);
        let lr = base.optim.lr;
        let steps = base.train.max_steps.unwrap_or(100).max(4);
        Self {
            name: String::new(),
            axes: [
                (Some(FieldId::RANK), format!("{}, {}", rank / 2, rank)),
                (
                    Some(FieldId::LR),
                    format!("{:e}, {:e}, {:e}", lr / 2.0, lr, lr * 2.0),
                ),
            ],
            search: Search::Grid,
            trials: "6".into(),
            concurrency: "1".into(),
            rungs: format!("{}, {}", steps / 4, steps / 2),
            reduction: "3".into(),
            selected: 0,
            error: None,
        }
    }

    pub fn selected_field(&self) -> FormField {
        FormField::ALL[self.selected]
    }

    /// The field's value as shown.
    pub fn text(&self, f: FormField) -> String {
        match f {
            FormField::Name if self.name.is_empty() => "(sweep-<model>-<time>)".into(),
            FormField::Name => self.name.clone(),
            FormField::Key(i) => self.axes[i].0.map_or("(none)", |id| id.key()).into(),
            FormField::Values(i) => self.axes[i].1.clone(),
            FormField::Search => match self.search {
                Search::Grid => "grid".into(),
                Search::Random => "random".into(),
            },
            FormField::Trials => self.trials.clone(),
            FormField::Concurrency => self.concurrency.clone(),
            FormField::Rungs => self.rungs.clone(),
            FormField::Reduction => self.reduction.clone(),
        }
    }

    /// The text of a typed field (not a choice).
    pub fn text_mut(&mut self, f: FormField) -> Option<&mut String> {
        match f {
            FormField::Name => Some(&mut self.name),
            FormField::Values(i) => Some(&mut self.axes[i].1),
            FormField::Trials => Some(&mut self.trials),
            FormField::Concurrency => Some(&mut self.concurrency),
            FormField::Rungs => Some(&mut self.rungs),
            FormField::Reduction => Some(&mut self.reduction),
            FormField::Key(_) | FormField::Search => None,
        }
    }

    pub fn move_selection(&mut self, step: isize) {
        let n = FormField::ALL.len() as isize;
        self.selected = (self.selected as isize + step).rem_euclid(n) as usize;
    }

    /// Cycle the selected choice (the swept setting, the search) by `step`.
    pub fn cycle(&mut self, step: isize) {
        match self.selected_field() {
            FormField::Key(i) => {
                // The second axis may be none.
                let choices: Vec<Option<FieldId>> = (i == 1)
                    .then_some(None)
                    .into_iter()
                    .chain(
                        FieldId::all()
                            .iter()
                            .filter(|f| f.sweepable())
                            .map(|f| Some(*f)),
                    )
                    .collect();
                let at = choices
                    .iter()
                    .position(|c| *c == self.axes[i].0)
                    .unwrap_or(0);
                let n = choices.len() as isize;
                self.axes[i].0 = choices[(at as isize + step).rem_euclid(n) as usize];
            }
            FormField::Search => {
                self.search = match self.search {
                    Search::Grid => Search::Random,
                    Search::Random => Search::Grid,
                }
            }
            _ => {}
        }
    }

    /// The `[sweep]` table the form stands for, or which field is wrong.
    pub fn table(&self) -> Result<toml::Table, String> {
        let mut t = toml::Table::new();
        let search = self.text(FormField::Search);
        t.insert("search".into(), toml::Value::String(search));
        if self.search == Search::Random {
            t.insert("trials".into(), number(FormField::Trials, &self.trials)?);
        }
        t.insert(
            "concurrency".into(),
            number(FormField::Concurrency, &self.concurrency)?,
        );
        for (id, values) in self.axes.iter().filter_map(|(id, v)| Some(((*id)?, v))) {
            Override::new(id.key(), axis_values(values))
                .apply(&mut t)
                .map_err(|e| e.to_string())?;
        }
        if !self.rungs.trim().is_empty() {
            let rungs = number(FormField::Rungs, &format!("[{}]", self.rungs))?;
            let reduction = number(FormField::Reduction, &self.reduction)?;
            let early = toml::Table::from_iter([
                ("rungs".to_string(), rungs),
                ("reduction".to_string(), reduction),
            ]);
            t.insert("early_stop".into(), toml::Value::Table(early));
        }
        Ok(t)
    }
}

/// `text` read as a TOML value (a number, or a list of them), or an error naming `field`.
fn number(field: FormField, text: &str) -> Result<toml::Value, String> {
    toml_value(text).ok_or_else(|| format!("{}: `{text}` is not a number", field.label().trim()))
}

/// An axis's values: a TOML list or range as typed, else a bare comma list (`4, 8`), else a
/// list of words (`lors, lors-exact`).
fn axis_values(text: &str) -> toml::Value {
    toml_value(text)
        .filter(|v| v.is_array() || v.is_table())
        .or_else(|| toml_value(&format!("[{text}]")))
        .unwrap_or_else(|| {
            toml::Value::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.into()))
                    .collect(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_values_read_lists_ranges_and_words() {
        assert_eq!(axis_values("4, 8").to_string(), "[4, 8]");
        assert_eq!(axis_values("[1e-3, 2e-3]").to_string(), "[0.001, 0.002]");
        assert_eq!(
            axis_values("lors, lors-exact").to_string(),
            r#"["lors", "lors-exact"]"#
        );
        assert!(axis_values("{ log_uniform = [1e-4, 1e-2] }").is_table());
    }

    #[test]
    fn the_form_is_checked_like_a_profile_sweep() {
        let base = Profile::parse(
            "[model]\npath = \"m\"\n[data]\ntrain = \"t.txt\"\n[train]\nmax_steps = 40\n",
            &[],
        )
        .unwrap();
        let form = SweepForm::new(&base);
        let spec = crate::sweep::check_sweep(&base, &form.table().unwrap()).unwrap();
        assert_eq!(spec.trials().len(), 6);
        assert_eq!(spec.early_stop.unwrap().rungs, vec![10, 20]);
        let mut bad = form.clone();
        bad.axes[0].1 = "4, eight".into();
        let err = crate::sweep::check_sweep(&base, &bad.table().unwrap()).unwrap_err();
        assert!(err.to_string().contains("sweep.adapter.rank"), "{err}");
        bad.rungs = "ten".into();
        assert!(bad.table().unwrap_err().contains("rungs"));
    }
}
