//! The progress file of a detached `lors eval` (`--progress FILE`), which the workbench
//! watches: which task, how many items, and how the job ended.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Task;
use crate::error::Result;

/// Where an evaluation job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Finished,
    Failed,
}

/// The contents of a progress file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalProgress {
    pub pid: u32,
    pub state: JobState,
    /// The task being scored (the last one once finished).
    pub task: Option<Task>,
    /// Items done of the task's total.
    pub done: usize,
    pub total: usize,
    /// Tasks finished of all.
    pub tasks_done: usize,
    pub tasks_total: usize,
    /// The JSON report the job writes when done.
    pub report: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Writes a progress file, at most every quarter second while running (and always on a state
/// change).
pub struct ProgressWriter {
    path: PathBuf,
    last: Option<std::time::Instant>,
    pub progress: EvalProgress,
}

impl ProgressWriter {
    pub fn new(path: &Path, report: &Path, tasks_total: usize) -> Self {
        Self {
            path: path.to_path_buf(),
            last: None,
            progress: EvalProgress {
                pid: std::process::id(),
                state: JobState::Running,
                task: None,
                done: 0,
                total: 0,
                tasks_done: 0,
                tasks_total,
                report: report.to_path_buf(),
                error: None,
            },
        }
    }

    /// Record `done` of `total` items of `task`; written when due.
    pub fn items(&mut self, task: Task, done: usize, total: usize) -> Result<()> {
        let p = &mut self.progress;
        if p.task != Some(task) {
            if p.task.is_some() {
                p.tasks_done += 1;
            }
            p.task = Some(task);
        }
        (p.done, p.total) = (done, total);
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(250));
        if due || done == total {
            self.write()?;
        }
        Ok(())
    }

    /// End the job as `state` (with the error of a failure).
    pub fn end(&mut self, state: JobState, error: Option<String>) -> Result<()> {
        self.progress.state = state;
        if state == JobState::Finished {
            self.progress.tasks_done = self.progress.tasks_total;
        }
        self.progress.error = error;
        self.write()
    }

    fn write(&mut self) -> Result<()> {
        self.last = Some(std::time::Instant::now());
        crate::io::write_json_atomic(&self.path, &self.progress)
    }
}

/// Read a progress file.
pub fn read_progress(path: &Path) -> Result<EvalProgress> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::LorsError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| crate::LorsError::parse(path, e.to_string()))
}
