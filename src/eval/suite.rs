//! A set of tasks to evaluate, with where each task's data is: the `[eval]` section of a
//! profile, and what `lors eval --tasks` builds from its flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::choice::{score_task, ItemScore, TaskScore};
use super::tasks::{load_items, Task};
use crate::data::TextTokenizer;
use crate::error::{LorsError, Result};
use crate::model::CausalLm;

/// Tasks, their data, and how many items of each to score.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSuite {
    pub tasks: Vec<Task>,
    /// A folder holding `<task>.jsonl`, `<task>.json` or `<task>.parquet` for each task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// A file (or `hf://datasets/...` reference) per task; before `data_dir`.
    #[schemars(!skip_serializing_if)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<Task, PathBuf>,
    /// Score only the first N items of each task (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// The extensions a task file in `data_dir` may have, in the order they are looked for.
const TASK_FILE_EXTENSIONS: [&str; 3] = ["jsonl", "json", "parquet"];

/// One task's result and its items' scores.
pub struct TaskOutcome {
    pub score: TaskScore,
    pub items: Vec<ItemScore>,
}

impl TaskSuite {
    /// Check the suite; errors name the key (`eval.tasks`, `eval.limit`, `eval.data`).
    pub fn validate(&self) -> Result<()> {
        if self.tasks.is_empty() {
            return Err(LorsError::invalid(
                "eval.tasks",
                format!("no tasks (some of: {})", Task::choices()),
            ));
        }
        if let Some(t) = self
            .tasks
            .iter()
            .enumerate()
            .find_map(|(i, t)| self.tasks[..i].contains(t).then_some(t))
        {
            return Err(LorsError::invalid("eval.tasks", format!("`{t}` twice")));
        }
        if self.limit == Some(0) {
            return Err(LorsError::invalid("eval.limit", "must be at least 1"));
        }
        if let Some(t) = self.data.keys().find(|t| !self.tasks.contains(t)) {
            return Err(LorsError::invalid(
                "eval.data",
                format!("a file for `{t}`, which is not in `eval.tasks`"),
            ));
        }
        if let Some(t) = self
            .tasks
            .iter()
            .find(|t| self.data_dir.is_none() && !self.data.contains_key(t))
        {
            return Err(LorsError::invalid(
                "eval.data",
                format!("no file for `{t}`: give `eval.data.{t}` or `eval.data_dir`"),
            ));
        }
        Ok(())
    }

    /// Make relative paths absolute against `base`; hub references stay as written.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            let hub = p.to_str().is_some_and(|s| s.starts_with("hf://"));
            if p.is_relative() && !hub {
                *p = base.join(&*p);
            }
        };
        self.data.values_mut().for_each(resolve);
        self.data_dir.iter_mut().for_each(resolve);
    }

    /// The data file of `task`: its `data` entry, else the first of `<task>.jsonl`,
    /// `<task>.json`, `<task>.parquet` in `data_dir`.
    pub fn file(&self, task: Task) -> Result<PathBuf> {
        if let Some(p) = self.data.get(&task) {
            return Ok(p.clone());
        }
        let dir = self
            .data_dir
            .as_ref()
            .ok_or_else(|| LorsError::invalid("eval.data", format!("no file for `{task}`")))?;
        let candidates = TASK_FILE_EXTENSIONS.map(|ext| dir.join(format!("{task}.{ext}")));
        candidates
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or_else(|| {
                LorsError::parse(
                    dir,
                    format!(
                        "no data for `{task}`: none of {} is there",
                        TASK_FILE_EXTENSIONS
                            .map(|e| format!("{task}.{e}"))
                            .join(", ")
                    ),
                )
            })
    }

    /// Load every task's items first (so a bad file fails before any scoring), then score
    /// them; `progress` hears `(task, items done, items of the task)`.
    pub fn run(
        &self,
        model: &CausalLm,
        tok: &TextTokenizer,
        progress: &mut dyn FnMut(Task, usize, usize),
    ) -> Result<Vec<TaskOutcome>> {
        let loaded = self
            .tasks
            .iter()
            .map(|&t| Ok((t, load_items(t, &self.file(t)?, self.limit)?)))
            .collect::<Result<Vec<_>>>()?;
        loaded
            .into_iter()
            .map(|(task, items)| {
                let total = items.len();
                let (score, items) = score_task(model, tok, task, &items, &mut |done| {
                    progress(task, done, total)
                })?;
                Ok(TaskOutcome { score, items })
            })
            .collect()
    }
}

/// The mean `acc` over tasks (as the papers' "average" column).
pub fn mean_accuracy(scores: &[TaskScore]) -> Option<f64> {
    (!scores.is_empty())
        .then(|| scores.iter().map(|s| s.acc.value).sum::<f64>() / scores.len() as f64)
}

/// Perplexity of one text, and how it was windowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerplexityReport {
    pub data: PathBuf,
    pub seq_len: usize,
    pub result: super::EvalResult,
}

/// What `lors eval` writes with `--out`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub model: PathBuf,
    /// The run checkpoint whose adapter was applied (a run directory given as the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<PerplexityReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wikitext2: Option<PerplexityReport>,
    #[serde(default)]
    pub tasks: Vec<TaskScore>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_logprobs: Option<crate::eval::TokenLogprobs>,
}
