//! A profile's `[sweep]` section: the axes (any profile key, as a list of values or a range),
//! grid or seeded random search with a trial budget, the concurrency, and early stopping.
//!
//! ```toml
//! [sweep]
//! search = "random"        # grid (default) | random
//! trials = 6               # random: the budget; grid: at most this many combinations
//! seed = 0
//! concurrency = 1          # trials at once per device (slurm: jobs in flight)
//! executor = "local"       # local (default) | slurm: each trial a batch job
//! stop_grace_s = 60        # slurm: a stopped trial still running this long later gets SIGTERM
//! adapter.rank = [4, 8]
//! optim.lr = { log_uniform = [1e-4, 1e-2] }
//!
//! [sweep.early_stop]
//! rungs = [20, 40]         # steps where validation losses are compared
//! reduction = 3            # keep the best 1/3 at each rung
//!
//! [sweep.slurm]            # with executor = "slurm"; every key optional
//! partition = "gpu"
//! gres = "gpu:1"
//! time = "2:00:00"
//! setup = "module load cuda"
//! ntasks = 2               # ranks per trial: one data-parallel run (--features mpi)
//! launcher = "mpirun"      # what starts the ranks (default: srun --mpi=pmix)
//! ```

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{LorsError, Result};
use crate::slurm::SlurmSettings;
use crate::train::Override;

/// How trials are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Search {
    /// Every combination of the listed values, in key order (the last key varies fastest).
    #[default]
    Grid,
    /// `trials` independent draws, seeded.
    Random,
}

/// The values one swept key takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Axis {
    List(Vec<toml::Value>),
    /// `exp(U(ln lo, ln hi))`.
    LogUniform(f64, f64),
    Uniform(f64, f64),
    /// An integer in `lo..=hi`.
    IntUniform(i64, i64),
}

/// The most trials a sweep may have.
pub const MAX_TRIALS: usize = 10_000;

/// The range kinds a `{ kind = [lo, hi] }` table may name.
const RANGES: [&str; 3] = ["log_uniform", "uniform", "int_uniform"];

/// Successive halving (ASHA) on validation loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStop {
    /// Steps at which trials are compared, increasing.
    pub rungs: Vec<usize>,
    /// η: each rung keeps the best `1/η` of the trials that reached it.
    #[serde(default = "default_reduction")]
    pub reduction: f64,
}

fn default_reduction() -> f64 {
    3.0
}

/// Where trials run.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Executor {
    /// Detached processes on this machine.
    #[default]
    Local,
    /// SLURM batch jobs (`[sweep.slurm]`), followed with `squeue`.
    Slurm(Box<SlurmSettings>),
}

impl Executor {
    /// Data-parallel ranks per trial (`[sweep.slurm] ntasks`; 1 locally).
    pub fn ranks(&self) -> usize {
        match self {
            Executor::Local => 1,
            Executor::Slurm(settings) => settings.ranks(),
        }
    }
}

/// A parsed `[sweep]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSpec {
    pub search: Search,
    pub trials: Option<usize>,
    pub seed: u64,
    /// Trials at once on each device.
    pub concurrency: usize,
    /// Swept keys (dotted profile keys) in key order.
    pub axes: Vec<(String, Axis)>,
    pub early_stop: Option<EarlyStop>,
    pub executor: Executor,
    /// Seconds a SLURM trial that early stopping asked to stop (through its control file) may
    /// run on before SLURM signals it (`scancel --full --signal=TERM`: it checkpoints and ends).
    pub stop_grace_s: u64,
}

/// One trial: its number and the value of each swept key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub index: usize,
    pub values: BTreeMap<String, toml::Value>,
}

impl Trial {
    /// The overrides that make the trial's profile from the base.
    pub fn overrides(&self) -> Vec<Override> {
        self.values
            .iter()
            .map(|(k, v)| Override::new(k, v.clone()))
            .collect()
    }

    /// `rank=4 lr=3.2e-4`: the last part of each key and a short value.
    pub fn label(&self) -> String {
        let short = |v: &toml::Value| match v {
            toml::Value::Float(f) => format!("{f:.2e}"),
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        self.values
            .iter()
            .map(|(k, v)| format!("{}={}", k.rsplit('.').next().unwrap_or(k), short(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `value` of the setting `key` as a `T` (`what` says what it should be).
fn typed<T: serde::de::DeserializeOwned>(key: &str, value: &toml::Value, what: &str) -> Result<T> {
    value
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| bad(key, format!("{what}: {}", e.message())))
}

fn bad(key: &str, reason: impl Into<String>) -> LorsError {
    LorsError::invalid(format!("sweep.{key}"), reason)
}

impl SweepSpec {
    /// Parse the `[sweep]` table; errors name the key (`sweep.adapter.rank`).
    pub fn from_table(table: &toml::Table) -> Result<Self> {
        let mut spec = SweepSpec {
            search: Search::Grid,
            trials: None,
            seed: 0,
            concurrency: 1,
            axes: Vec::new(),
            early_stop: None,
            executor: Executor::Local,
            stop_grace_s: 60,
        };
        let mut axes = toml::Table::new();
        let mut slurm: Option<SlurmSettings> = None;
        let mut executor = "local".to_string();
        for (key, value) in table {
            match key.as_str() {
                "executor" => executor = typed(key, value, "local or slurm")?,
                "slurm" => slurm = Some(typed(key, value, "a table of sbatch settings")?),
                "search" => spec.search = typed(key, value, "grid or random")?,
                "trials" => spec.trials = Some(typed(key, value, "a number of trials")?),
                "seed" => spec.seed = typed(key, value, "an integer seed")?,
                "concurrency" => spec.concurrency = typed(key, value, "trials at once")?,
                "stop_grace_s" => spec.stop_grace_s = typed(key, value, "seconds")?,
                "early_stop" => {
                    spec.early_stop = Some(typed(key, value, "rungs = [steps], reduction")?)
                }
                _ => {
                    axes.insert(key.clone(), value.clone());
                }
            }
        }
        spec.executor = match (executor.as_str(), slurm) {
            ("local", None) => Executor::Local,
            ("slurm", settings) => Executor::Slurm(Box::new(settings.unwrap_or_default())),
            ("local", Some(_)) => {
                return Err(bad("slurm", "needs executor = \"slurm\""));
            }
            (other, _) => return Err(bad("executor", format!("`{other}` is not local or slurm"))),
        };
        collect_axes("", &axes, &mut spec.axes)?;
        spec.check()?;
        Ok(spec)
    }

    /// Settings that do not depend on the profile.
    fn check(&self) -> Result<()> {
        if self.axes.is_empty() {
            return Err(LorsError::invalid(
                "sweep",
                "sweeps no key: add e.g. `adapter.rank = [4, 8]`",
            ));
        }
        if self.trials == Some(0) || self.trials > Some(MAX_TRIALS) {
            return Err(bad("trials", format!("must be 1 to {MAX_TRIALS}")));
        }
        if self.concurrency == 0 {
            return Err(bad("concurrency", "must be at least 1"));
        }
        if self.search == Search::Random && self.trials.is_none() {
            return Err(bad("trials", "random search needs a trial budget"));
        }
        if self.search == Search::Grid {
            if let Some((key, _)) = self.axes.iter().find(|(_, a)| !matches!(a, Axis::List(_))) {
                return Err(bad(
                    key,
                    "a range needs search = \"random\" (a grid takes lists)",
                ));
            }
            let combinations = self
                .axes
                .iter()
                .try_fold(1usize, |n, (_, axis)| match axis {
                    Axis::List(v) => n.checked_mul(v.len()),
                    _ => Some(n),
                });
            if self.trials.is_none() && combinations.is_none_or(|n| n > MAX_TRIALS) {
                return Err(bad(
                    "trials",
                    format!("the grid has over {MAX_TRIALS} combinations; cap it with trials"),
                ));
            }
        }
        if let Some(e) = &self.early_stop {
            let increasing = e.rungs.windows(2).all(|w| w[0] < w[1]);
            if e.rungs.is_empty() || e.rungs[0] == 0 || !increasing {
                return Err(bad(
                    "early_stop.rungs",
                    "give increasing step counts, from 1",
                ));
            }
            if !(e.reduction.is_finite() && e.reduction > 1.0) {
                return Err(bad(
                    "early_stop.reduction",
                    format!("{} must be > 1", e.reduction),
                ));
            }
        }
        Ok(())
    }

    /// The trials, in order: a grid's combinations (at most `trials`), or `trials` seeded
    /// draws (the same seed gives the same trials).
    pub fn trials(&self) -> Vec<Trial> {
        let values = match self.search {
            Search::Grid => self.grid(),
            Search::Random => {
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
                let n = self.trials.expect("checked: random search has a budget");
                (0..n).map(|_| self.draw(&mut rng)).collect()
            }
        };
        values
            .into_iter()
            .enumerate()
            .map(|(index, values)| Trial { index, values })
            .collect()
    }

    fn grid(&self) -> Vec<BTreeMap<String, toml::Value>> {
        let mut out = vec![BTreeMap::new()];
        for (key, axis) in &self.axes {
            let Axis::List(values) = axis else {
                unreachable!("checked: a grid has lists only")
            };
            out = out
                .into_iter()
                .flat_map(|partial| {
                    values.iter().map(move |v| {
                        let mut next = partial.clone();
                        next.insert(key.clone(), v.clone());
                        next
                    })
                })
                .collect();
        }
        out.truncate(self.trials.unwrap_or(usize::MAX));
        out
    }

    fn draw(&self, rng: &mut ChaCha8Rng) -> BTreeMap<String, toml::Value> {
        self.axes
            .iter()
            .map(|(key, axis)| {
                let value = match axis {
                    Axis::List(values) => values[rng.random_range(0..values.len())].clone(),
                    Axis::LogUniform(lo, hi) => {
                        toml::Value::Float(rng.random_range(lo.ln()..=hi.ln()).exp())
                    }
                    Axis::Uniform(lo, hi) => toml::Value::Float(rng.random_range(*lo..=*hi)),
                    Axis::IntUniform(lo, hi) => toml::Value::Integer(rng.random_range(*lo..=*hi)),
                };
                (key.clone(), value)
            })
            .collect()
    }

    /// The candidate values of each axis to check against the profile: a list's values, a
    /// range's ends.
    pub fn probe_values(&self) -> Vec<(String, toml::Value)> {
        self.axes
            .iter()
            .flat_map(|(key, axis)| {
                let values = match axis {
                    Axis::List(v) => v.clone(),
                    Axis::LogUniform(lo, hi) | Axis::Uniform(lo, hi) => {
                        vec![toml::Value::Float(*lo), toml::Value::Float(*hi)]
                    }
                    Axis::IntUniform(lo, hi) => {
                        vec![toml::Value::Integer(*lo), toml::Value::Integer(*hi)]
                    }
                };
                values.into_iter().map(move |v| (key.clone(), v))
            })
            .collect()
    }
}

/// The axes under `table` (dotted keys below `prefix`): an array is a list of values, a table
/// with one range kind is a range, another table a section to walk into.
fn collect_axes(prefix: &str, table: &toml::Table, out: &mut Vec<(String, Axis)>) -> Result<()> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Array(values) if values.is_empty() => {
                return Err(bad(&key, "is an empty list"));
            }
            toml::Value::Array(values) => out.push((key, Axis::List(values.clone()))),
            toml::Value::Table(t)
                if t.len() == 1 && RANGES.contains(&t.keys().next().unwrap().as_str()) =>
            {
                let axis = range(&key, t)?;
                out.push((key, axis));
            }
            toml::Value::Table(t) => collect_axes(&key, t, out)?,
            other => {
                return Err(bad(
                    &key,
                    format!(
                        "`{other}` is a single value; give a list [a, b] or a range \
                         {{ log_uniform = [lo, hi] }} (also uniform, int_uniform)"
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// A `{ kind = [lo, hi] }` range of `key`.
fn range(key: &str, t: &toml::Table) -> Result<Axis> {
    let (kind, ends) = t.iter().next().expect("one entry");
    let ends = ends
        .as_array()
        .filter(|e| e.len() == 2)
        .ok_or_else(|| bad(key, format!("{kind} takes [lo, hi]")))?;
    let float = |v: &toml::Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
    let (lo, hi) = match (float(&ends[0]), float(&ends[1])) {
        (Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() && lo < hi => (lo, hi),
        _ => return Err(bad(key, format!("{kind} needs numbers lo < hi"))),
    };
    match kind.as_str() {
        "log_uniform" if lo <= 0.0 => Err(bad(key, "log_uniform needs lo > 0")),
        "log_uniform" => Ok(Axis::LogUniform(lo, hi)),
        "uniform" => Ok(Axis::Uniform(lo, hi)),
        _ => match (ends[0].as_integer(), ends[1].as_integer()) {
            (Some(lo), Some(hi)) => Ok(Axis::IntUniform(lo, hi)),
            _ => Err(bad(key, "int_uniform needs integers")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<SweepSpec> {
        let t: toml::Table = toml::from_str(text).unwrap();
        SweepSpec::from_table(t["sweep"].as_table().unwrap())
    }

    #[test]
    fn a_grid_is_every_combination_in_key_order() {
        let s = spec("[sweep]\nadapter.rank = [4, 8]\noptim.lr = [1e-3, 2e-3, 5e-3]\n").unwrap();
        let trials = s.trials();
        assert_eq!(trials.len(), 6);
        assert_eq!(
            trials[1].overrides(),
            [
                Override::new("adapter.rank", 4),
                Override::new("optim.lr", 0.002)
            ]
        );
        assert_eq!(trials[5].label(), "rank=8 lr=5.00e-3");
        let capped = spec("[sweep]\ntrials = 4\nadapter.rank = [4, 8]\noptim.lr = [1, 2, 3]\n");
        assert_eq!(capped.unwrap().trials().len(), 4);
    }

    #[test]
    fn random_search_is_seeded_and_stays_in_range() {
        let text = "[sweep]\nsearch = \"random\"\ntrials = 20\nseed = 5\n\
                    optim.lr = { log_uniform = [1e-4, 1e-2] }\n\
                    adapter.rank = { int_uniform = [2, 16] }\n\
                    adapter.method = [\"lors\", \"lors-exact\"]\n";
        let (a, b) = (spec(text).unwrap().trials(), spec(text).unwrap().trials());
        assert_eq!(a, b, "the same seed gives the same trials");
        let other = spec(&text.replace("seed = 5", "seed = 6"))
            .unwrap()
            .trials();
        assert_ne!(a, other);
        for t in &a {
            let lr = t.values["optim.lr"].as_float().unwrap();
            let rank = t.values["adapter.rank"].as_integer().unwrap();
            assert!(
                (1e-4..=1e-2).contains(&lr) && (2..=16).contains(&rank),
                "{t:?}"
            );
        }
        let methods: std::collections::BTreeSet<_> = a
            .iter()
            .map(|t| t.values["adapter.method"].to_string())
            .collect();
        assert_eq!(
            methods.len(),
            2,
            "both listed values are drawn over 20 trials"
        );
    }

    #[test]
    fn bad_specs_are_errors_naming_the_key() {
        for (text, key) in [
            ("[sweep]\nadapter.rank = []\n", "sweep.adapter.rank"),
            ("[sweep]\nadapter.rank = 4\n", "sweep.adapter.rank"),
            (
                "[sweep]\nsearch = \"random\"\ntrials = 2\noptim.lr = { log_uniform = [0.0, 1e-2] }\n",
                "sweep.optim.lr",
            ),
            (
                "[sweep]\nsearch = \"random\"\ntrials = 2\noptim.lr = { uniform = [1e-2, 1e-4] }\n",
                "sweep.optim.lr",
            ),
            (
                "[sweep]\nsearch = \"random\"\ntrials = 2\nadapter.rank = { int_uniform = [2.5, 8] }\n",
                "sweep.adapter.rank",
            ),
            ("[sweep]\noptim.lr = { log_uniform = [1e-4, 1e-2] }\n", "sweep.optim.lr"),
            ("[sweep]\nsearch = \"random\"\nadapter.rank = [4]\n", "sweep.trials"),
            ("[sweep]\nsearch = \"sideways\"\nadapter.rank = [4]\n", "sweep.search"),
            ("[sweep]\nseed = 1\n", "sweep"),
            ("[sweep]\ntrials = 20000\nadapter.rank = [4]\n", "sweep.trials"),
            (
                "[sweep]\na = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nb = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n\
                 c = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nd = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nx = [1, 2]\n",
                "sweep.trials",
            ),
            (
                "[sweep]\nadapter.rank = [4]\n[sweep.early_stop]\nrungs = [20, 10]\n",
                "sweep.early_stop.rungs",
            ),
            (
                "[sweep]\nadapter.rank = [4]\n[sweep.early_stop]\nrungs = [10]\nreduction = 1\n",
                "sweep.early_stop.reduction",
            ),
        ] {
            let err = spec(text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
    }
}
