//! The run directory, the contract other processes (the workbench, sweeps, `lors report`)
//! read while the run goes on. Its entries:
//!
//! - `profile.toml`: every setting, paths made absolute;
//! - `status.json`: state, step, ETA, error, pid (replaced atomically);
//! - `metrics.jsonl`: one JSON row per step, evaluation, init and task score (appended one
//!   whole line at a time; cut back to the checkpoint on resume);
//! - `checkpoints/step-N/`: adapter in PEFT naming, optimiser state, trainer state, the
//!   profile trained with, and `manifest.json` (sizes and SHA-256, written last);
//! - `control.json`: requests to the running process (pause, checkpoint, stop), written by
//!   one process at a time under the advisory lock `.control.lock`;
//! - `.lock`: the advisory lock of the process that owns the run;
//! - `pruned/`: the model of a profile's `[prune]` step; `merged/`: the merged export with
//!   `sparsity.json`; `adapter/`: SoRA's rank-lowered PEFT adapter; `eval/`: detached
//!   evaluations' results; `merge.log` and `resume-<time>.log`: the output of a detached
//!   merge and of resumes started from the workbench;
//! - `replay.json`: in a replay, its verdict against the original ([`ReplayVerdict`]), written
//!   when the replay ends.
//!
//! A runs folder ([`RunsFolder`]) holds runs, sweeps, and `.launch/`, the profiles and logs
//! of the workbench's detached launches. A run's default name is the model, method, rank and
//! local time ([`RunDir::default_name`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{LorsError, Result};
use crate::io::{process_alive, write_atomic, write_json_atomic};
use crate::model::LayerSparsity;

/// Life cycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "lowercase")]
pub enum RunState {
    Initializing,
    Running,
    Paused,
    Finished,
    Failed,
    Stopped,
    /// Its process died without a word (killed, out of memory): found by whoever looks next.
    Crashed,
}

crate::named!(RunState, "state");

impl RunState {
    /// Whether a process should be working on the run.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RunState::Initializing | RunState::Running | RunState::Paused
        )
    }
}

/// `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: RunState,
    pub step: usize,
    pub total_steps: usize,
    pub elapsed_s: f64,
    pub eta_s: Option<f64>,
    pub pid: u32,
    /// Seconds since the Unix epoch of this write.
    pub updated_at: f64,
    pub last_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    pub message: Option<String>,
    pub error: Option<String>,
    /// Id of the last control request the run has acted on.
    #[serde(default)]
    pub control_ack: u64,
    /// The SLURM job the process runs in (`SLURM_JOB_ID`), if any: then the job's state,
    /// not a local process id, says whether it lives (the process may run on another node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job: Option<String>,
}

impl Status {
    /// A run that has not begun: `initializing`, written by process `pid` with `message`
    /// (the SLURM job from the environment, if any).
    pub fn initial(pid: u32, message: &str) -> Self {
        Self {
            state: RunState::Initializing,
            step: 0,
            total_steps: 0,
            elapsed_s: 0.0,
            eta_s: None,
            pid,
            updated_at: now_s(),
            last_loss: None,
            best_eval_loss: None,
            message: Some(message.into()),
            error: None,
            control_ack: 0,
            slurm_job: std::env::var("SLURM_JOB_ID").ok(),
        }
    }

    /// Whether the process that writes this status still lives: its SLURM job is queued or
    /// running, or (outside SLURM) its process id is alive here. A SLURM that cannot be
    /// asked counts as alive (nothing is marked crashed on a guess).
    pub fn process_alive(&self) -> bool {
        match &self.slurm_job {
            Some(job) => crate::slurm::states(std::slice::from_ref(job))
                .map(|s| s.get(job).is_some_and(crate::slurm::JobState::is_active))
                .unwrap_or(true),
            None => process_alive(self.pid),
        }
    }
}

/// What a rank of a data-parallel step sent and how long the exchange took.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub ranks: usize,
    /// Bytes this rank sent (its micro-batches' gradients and losses); every rank receives
    /// `ranks` times as many.
    pub bytes_sent: usize,
    /// Seconds in the all-gathers (waiting for the slowest rank included).
    pub seconds: f64,
}

/// What another process (the TUI) asks a running training to do, between two steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlRequest {
    Pause,
    Resume,
    Stop,
    /// Save a checkpoint now and go on.
    Checkpoint,
}

/// `control.json`: the latest request, numbered so that each is acted on once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub id: u64,
    pub request: ControlRequest,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MetricRow {
    Train {
        step: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens_per_s: f64,
        elapsed_s: f64,
        live_bytes: usize,
        /// Peak heap bytes during the step.
        peak_bytes: usize,
        /// `peak_bytes` minus the heap bytes live when the step began (activations, grads).
        step_peak_bytes: usize,
        rss_bytes: Option<u64>,
        /// GPU memory after the step (absent on the CPU); its peak is the step's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gpu: Option<crate::device::GpuMemory>,
        /// A data-parallel step's exchange (absent for one process).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exchange: Option<Exchange>,
    },
    Eval {
        step: usize,
        eval_loss: f64,
        eval_ppl: f64,
    },
    Init {
        seconds: f64,
        layers: usize,
        sequences: usize,
        sweeps: usize,
    },
    /// A checkpoint was saved after this step.
    Checkpoint { step: usize },
    /// Per adapted layer: density of the base weight and of the would-be merged weight
    /// (written when training starts and at each evaluation).
    Sparsity {
        step: usize,
        layers: Vec<LayerSparsity>,
    },
    /// A zero-shot task of the profile's `[eval]`, scored before training (the model as it
    /// was, pruned) or after it (the merged model).
    Task {
        step: usize,
        stage: EvalStage,
        score: crate::eval::TaskScore,
    },
}

/// When a run scores its `[eval]` tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "lowercase")]
pub enum EvalStage {
    Before,
    After,
}

crate::named!(EvalStage, "stage");

/// `replay.json`: whether a replay reproduced its original's metrics bit for bit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayVerdict {
    pub original: PathBuf,
    /// The metric rows compared (timings and memory readings left out).
    pub rows: usize,
    /// The first difference, if any.
    pub difference: Option<String>,
}

impl ReplayVerdict {
    /// `same bits as <original> (N rows)` or `DIFFERS from <original>: ...`.
    pub fn summary(&self) -> String {
        let name = self.original.file_name().map_or_else(
            || self.original.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        match &self.difference {
            None => format!("replay: same bits as {name} ({} metric rows)", self.rows),
            Some(d) => format!("replay: DIFFERS from {name}: {d}"),
        }
    }
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

/// Ownership of a run directory: an advisory lock on `<run>/.lock`, released when dropped or
/// when the process dies, however it dies.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// How long [`RunDir::lock`] waits for a lock held briefly by a watcher's liveness check.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The last part of a model path or hub id (`stories260K` for `../shared/models/stories260K`).
fn model_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
}

/// The local time as `MMDD-HHMM-SS`: short, sortable within a year, readable.
pub fn local_stamp() -> String {
    chrono::Local::now().format("%m%d-%H%M-%S").to_string()
}

/// A folder of runs (`train.output_dir`): run directories, sweep directories, and
/// `.launch/`, the profiles and logs of the workbench's detached launches.
#[derive(Debug, Clone)]
pub struct RunsFolder {
    pub path: PathBuf,
}

impl RunsFolder {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    /// `.launch/`.
    pub fn launch_dir(&self) -> PathBuf {
        self.path.join(".launch")
    }

    /// `.launch/<name>.<ext>`.
    pub fn launch_file(&self, name: &str, ext: &str) -> PathBuf {
        self.launch_dir().join(format!("{name}.{ext}"))
    }

    /// `<folder>/<name>`, or `<name>-2`, `<name>-3`, ... when that is taken.
    pub fn fresh(&self, name: &str) -> PathBuf {
        let taken = |p: &Path| p.exists() || self.launch_file(&file_name(p), "toml").exists();
        let first = self.path.join(name);
        if !taken(&first) {
            return first;
        }
        (2..)
            .map(|n| self.path.join(format!("{name}-{n}")))
            .find(|p| !taken(p))
            .expect("some suffix is free")
    }

    /// A new run's directory: the profile's `train.run_name`, else its default name.
    pub fn new_run(&self, profile: &super::Profile) -> PathBuf {
        match &profile.train.run_name {
            Some(name) => self.path.join(name),
            None => self.fresh(&RunDir::default_name(profile)),
        }
    }

    /// A replay of `run` beside it: `<run>-replay-<local time>`.
    pub fn new_replay(&self, run: &Path) -> PathBuf {
        let name = file_name(run);
        let name = if name.is_empty() { "run".into() } else { name };
        self.fresh(&format!("{name}-replay-{}", local_stamp()))
    }

    /// A new sweep's directory: `sweep-<model>-<local time>`.
    pub fn new_sweep(&self, base: &super::Profile) -> PathBuf {
        self.fresh(&format!(
            "sweep-{}-{}",
            model_name(&base.model.path),
            local_stamp()
        ))
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// Seconds since the Unix epoch.
pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl RunDir {
    /// Create a new run directory recording `profile` (an error if it exists). It appears
    /// whole or not at all, so an interrupted start leaves nothing in the way of a retry.
    pub fn create(path: &Path, profile: &super::Profile) -> Result<Self> {
        if path.exists() {
            return Err(LorsError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "run directory exists"),
            ));
        }
        let text = profile.to_toml();
        crate::io::build_dir_atomic(path, |tmp| {
            std::fs::create_dir(tmp.join("checkpoints")).map_err(|e| LorsError::io(tmp, e))?;
            write_atomic(&tmp.join("profile.toml"), text.as_bytes())
        })?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Open an existing run directory.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("profile.toml").is_file() {
            return Err(LorsError::parse(
                path,
                "not a run directory (no profile.toml)",
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn profile_path(&self) -> PathBuf {
        self.path.join("profile.toml")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }
    pub fn status_path(&self) -> PathBuf {
        self.path.join("status.json")
    }
    pub fn checkpoints_path(&self) -> PathBuf {
        self.path.join("checkpoints")
    }
    pub fn control_path(&self) -> PathBuf {
        self.path.join("control.json")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.path.join(".lock")
    }
    /// The model a profile's `[prune]` step wrote.
    pub fn pruned_path(&self) -> PathBuf {
        self.path.join("pruned")
    }
    /// The merged export.
    pub fn merged_path(&self) -> PathBuf {
        self.path.join("merged")
    }
    /// SoRA's rank-lowered adapter.
    pub fn adapter_path(&self) -> PathBuf {
        self.path.join("adapter")
    }
    /// Detached evaluations' suites, progress, results and logs.
    pub fn eval_path(&self) -> PathBuf {
        self.path.join("eval")
    }
    /// The output of a detached merge.
    pub fn merge_log_path(&self) -> PathBuf {
        self.path.join("merge.log")
    }
    /// The output of a resume started at `stamp`.
    pub fn resume_log_path(&self, stamp: &str) -> PathBuf {
        self.path.join(format!("resume-{stamp}.log"))
    }

    /// A replay's verdict.
    pub fn replay_path(&self) -> PathBuf {
        self.path.join("replay.json")
    }

    pub fn write_replay(&self, verdict: &ReplayVerdict) -> Result<()> {
        write_json_atomic(&self.replay_path(), verdict)
    }

    /// The replay verdict, if this run is a finished replay.
    pub fn read_replay(&self) -> Option<ReplayVerdict> {
        let text = std::fs::read_to_string(self.replay_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The newest output of a process that worked on the run: a resume's log, else the
    /// workbench launch's (`<runs>/.launch/<run>.log`); none for a run started in a terminal.
    pub fn newest_log(&self) -> Option<PathBuf> {
        let name = self.path.file_name()?.to_string_lossy().into_owned();
        let launch = RunsFolder::new(self.path.parent()?).launch_file(&name, "log");
        let resumes = std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten();
        let resumes = resumes.map(|e| e.path()).filter(|p| {
            let n = file_name(p);
            n.starts_with("resume-") && n.ends_with(".log")
        });
        let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        resumes
            .chain(launch.is_file().then_some(launch))
            .max_by_key(modified)
    }

    /// The paths of the run at `path`, whether or not it exists yet.
    pub fn at(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    /// A run's name when its profile names none: the model, the method and rank, and the
    /// local time, e.g. `stories260K-lors-r8-1204-2215-07`.
    pub fn default_name(profile: &super::Profile) -> String {
        format!(
            "{}-{}-r{}-{}",
            model_name(&profile.model.path),
            profile.adapter.method,
            profile.adapter.rank,
            local_stamp()
        )
    }

    /// Take ownership of the run; an error if another process has it.
    pub fn lock(&self) -> Result<RunLock> {
        let file = crate::io::open_lock_file(&self.lock_path())?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(RunLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let owner = self
                        .read_status()
                        .map(|s| format!(" (pid {})", s.pid))
                        .unwrap_or_default();
                    return Err(LorsError::Locked {
                        path: self.path.clone(),
                        detail: format!(
                            "the run is in use by another lors process{owner}; wait for it \
                             to end, or stop it (`s` in the TUI, or Ctrl-C)"
                        ),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(LorsError::io(&self.lock_path(), e))
                }
            }
        }
    }

    /// Stop the run: through its control file (it checkpoints first), or, for a run
    /// whose SLURM job has not started (it cannot read the file yet), by cancelling the job and
    /// recording the run as stopped. What was done, for the footer.
    pub fn stop(&self) -> Result<String> {
        let status = self.read_status().ok();
        let queued = status.as_ref().and_then(|s| {
            let id = s.slurm_job.clone()?;
            let states = crate::slurm::states(std::slice::from_ref(&id)).ok()?;
            (s.state == RunState::Initializing && states.get(&id)?.state == "PENDING").then_some(id)
        });
        let (Some(id), Some(mut status)) = (queued, status) else {
            self.request(ControlRequest::Stop)?;
            return Ok("stop requested".into());
        };
        crate::slurm::cancel(&id)?;
        status.state = RunState::Stopped;
        status.message = Some(format!("SLURM job {id} cancelled before it started"));
        self.write_status(&status)?;
        Ok(format!("cancelled SLURM job {id} (it had not started)"))
    }

    /// When the status says a process works on the run but that process is gone (and holds
    /// no lock), record the run as `crashed` at its last complete step; the new status then.
    pub fn mark_crashed_if_dead(&self) -> Result<Option<Status>> {
        let dead = |s: &Status| s.state.is_active() && !s.process_alive();
        if !self.read_status().is_ok_and(|s| dead(&s)) {
            return Ok(None);
        }
        let file = crate::io::open_lock_file(&self.lock_path())?;
        if file.try_lock().is_err() {
            return Ok(None);
        }
        // Read again under the lock: a resume may have begun in between.
        let mut status = self.read_status()?;
        if !dead(&status) {
            return Ok(None);
        }
        let last_step = self
            .read_metrics()?
            .iter()
            .filter_map(|r| match r {
                MetricRow::Train { step, .. } => Some(*step),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        status.step = status.step.max(last_step);
        status.state = RunState::Crashed;
        status.eta_s = None;
        status.updated_at = now_s();
        status.error = Some(format!(
            "process {} ended without a word after step {} (killed, or out of memory?); \
             `lors train --resume` continues from the newest checkpoint",
            status.pid, status.step
        ));
        self.write_status(&status)?;
        Ok(Some(status))
    }

    /// Ask the run to pause, resume, stop or checkpoint; returns the request's id, which
    /// `status.json`'s `control_ack` reaches once the run has acted on it. Writers take turns
    /// (no request is lost to a concurrent one), and a stop the run has not acted on yet is
    /// kept over any other request (a sweep's verdict must not undo a user's stop).
    pub fn request(&self, request: ControlRequest) -> Result<u64> {
        let _turn = crate::io::wait_for_lock(&self.path.join(".control.lock"))?;
        let current = self.read_control()?;
        if let Some(c) = current.filter(|c| c.request == ControlRequest::Stop) {
            let acked = self.read_status().map_or(0, |s| s.control_ack);
            if c.id > acked {
                return Ok(c.id);
            }
        }
        let id = current.map_or(1, |c| c.id + 1);
        write_json_atomic(&self.control_path(), &Control { id, request })?;
        Ok(id)
    }

    /// The latest control request, if any.
    pub fn read_control(&self) -> Result<Option<Control>> {
        let p = self.control_path();
        match std::fs::read_to_string(&p) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| LorsError::parse(&p, e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LorsError::io(&p, e)),
        }
    }

    pub fn write_profile(&self, text: &str) -> Result<()> {
        write_atomic(&self.profile_path(), text.as_bytes())
    }

    pub fn write_status(&self, status: &Status) -> Result<()> {
        write_json_atomic(&self.status_path(), status)
    }

    pub fn read_status(&self) -> Result<Status> {
        let p = self.status_path();
        let text = std::fs::read_to_string(&p).map_err(|e| LorsError::io(&p, e))?;
        serde_json::from_str(&text).map_err(|e| LorsError::parse(&p, e.to_string()))
    }

    /// Append one metrics row as a single write of a whole line.
    pub fn append_metric(&self, row: &MetricRow) -> Result<()> {
        let p = self.metrics_path();
        let mut line =
            serde_json::to_string(row).map_err(|e| LorsError::parse(&p, e.to_string()))?;
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| LorsError::io(&p, e))?;
        f.write_all(line.as_bytes())
            .map_err(|e| LorsError::io(&p, e))
    }

    /// Whether the metrics hold task scores of `stage`.
    pub fn has_task_rows(&self, stage: EvalStage) -> Result<bool> {
        Ok(self
            .read_metrics()?
            .iter()
            .any(|r| matches!(r, MetricRow::Task { stage: s, .. } if *s == stage)))
    }

    /// Every complete metrics row (a partial last line, being written, is ignored).
    pub fn read_metrics(&self) -> Result<Vec<MetricRow>> {
        let p = self.metrics_path();
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LorsError::io(&p, e)),
        };
        let mut rows = Vec::new();
        for (i, line) in text.split_inclusive('\n').enumerate() {
            if !line.ends_with('\n') {
                break;
            }
            rows.push(
                serde_json::from_str(line.trim_end()).map_err(|e| LorsError::Record {
                    path: p.clone(),
                    line: i + 1,
                    detail: e.to_string(),
                })?,
            );
        }
        Ok(rows)
    }

    /// Keep the metric rows of a resume point: those up to `step` ending with its checkpoint
    /// row (it is missing when the process died between saving the checkpoint and logging
    /// it), or none when the run restarts from scratch.
    pub fn truncate_metrics_to(&self, step: Option<usize>) -> Result<()> {
        let mut rows: Vec<MetricRow> = match step {
            None => Vec::new(),
            Some(step) => self
                .read_metrics()?
                .into_iter()
                .filter(|r| match r {
                    MetricRow::Checkpoint { step: s } => *s < step,
                    MetricRow::Train { step: s, .. }
                    | MetricRow::Eval { step: s, .. }
                    | MetricRow::Sparsity { step: s, .. }
                    | MetricRow::Task { step: s, .. } => *s <= step,
                    MetricRow::Init { .. } => true,
                })
                .chain([MetricRow::Checkpoint { step }])
                .collect(),
        };
        let mut text = String::new();
        for r in rows.drain(..) {
            text.push_str(&serde_json::to_string(&r).expect("rows serialize"));
            text.push('\n');
        }
        write_atomic(&self.metrics_path(), text.as_bytes())
    }

    /// Checkpoint directories (`checkpoints/step-N`), newest first.
    pub fn checkpoints(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.checkpoints_path()) else {
            return Vec::new();
        };
        let mut dirs: Vec<(usize, PathBuf)> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let step = p
                    .file_name()?
                    .to_str()?
                    .strip_prefix("step-")?
                    .parse()
                    .ok()?;
                p.is_dir().then_some((step, p))
            })
            .collect();
        dirs.sort();
        dirs.into_iter().rev().map(|(_, p)| p).collect()
    }

    /// The newest checkpoint that verifies (see [`super::checkpoint::verify`]), if any.
    pub fn latest_checkpoint(&self) -> Option<PathBuf> {
        self.checkpoints()
            .into_iter()
            .find(|dir| super::checkpoint::verify(dir).is_ok())
    }
}

/// Fields of metric rows that differ between two runs of one profile (times, memory, and
/// a data-parallel step's exchange, which one process does not have).
const VOLATILE_FIELDS: [&str; 9] = [
    "tokens_per_s",
    "elapsed_s",
    "live_bytes",
    "peak_bytes",
    "step_peak_bytes",
    "rss_bytes",
    "gpu",
    "seconds",
    "exchange",
];

/// A metrics row (as JSON) without its [`VOLATILE_FIELDS`]: what a replay or a resumed run
/// must reproduce exactly. Floats compare bit for bit (they are parsed exactly).
pub fn reproducible(row: &serde_json::Value) -> serde_json::Value {
    let mut row = row.clone();
    if let Some(fields) = row.as_object_mut() {
        fields.retain(|k, _| !VOLATILE_FIELDS.contains(&k.as_str()));
    }
    row
}

/// The train and eval rows of a run, reproducible part only.
fn comparable(run: &RunDir) -> Result<Vec<serde_json::Value>> {
    run.read_metrics()?
        .iter()
        .filter(|r| matches!(r, MetricRow::Train { .. } | MetricRow::Eval { .. }))
        .map(|r| {
            serde_json::to_value(r)
                .map(|v| reproducible(&v))
                .map_err(|e| LorsError::parse(&run.metrics_path(), e.to_string()))
        })
        .collect()
}

/// Compare two runs' loss, lr, grad-norm and eval-loss curves bit for bit; the number of
/// rows compared when they are equal, else an error saying where they differ.
pub fn compare_metrics(original: &RunDir, other: &RunDir) -> Result<usize> {
    let verdict = replay_verdict(original, other)?;
    match verdict.difference {
        None => Ok(verdict.rows),
        Some(d) => Err(LorsError::invalid("replay", d)),
    }
}

/// [`compare_metrics`] as the verdict a replay records.
pub fn replay_verdict(original: &RunDir, other: &RunDir) -> Result<ReplayVerdict> {
    let a = comparable(original)?;
    let b = comparable(other)?;
    let difference = if let Some((x, y)) = a.iter().zip(&b).find(|(x, y)| x != y) {
        Some(format!("metrics differ:\n  original: {x}\n  other:    {y}"))
    } else if a.len() != b.len() {
        Some(format!(
            "the original has {} metric rows, the other run {}",
            a.len(),
            b.len()
        ))
    } else {
        None
    };
    Ok(ReplayVerdict {
        original: original.path.clone(),
        rows: a.len().min(b.len()),
        difference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_requests_each_get_an_id_and_a_pending_stop_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir {
            path: tmp.path().to_path_buf(),
        };
        let mut status = Status::initial(1, "training");
        run.write_status(&status).unwrap();
        // Eight writers at once: the ids are 1..=8, none lost to another.
        let mut ids: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| run.request(ControlRequest::Checkpoint).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        ids.sort();
        assert_eq!(ids, (1..=8).collect::<Vec<u64>>());
        // A stop not yet acted on outlives a later resume; once acted on, it is replaced.
        let stop = run.request(ControlRequest::Stop).unwrap();
        assert_eq!(run.request(ControlRequest::Resume).unwrap(), stop);
        assert_eq!(
            run.read_control().unwrap().unwrap().request,
            ControlRequest::Stop
        );
        status.control_ack = stop;
        run.write_status(&status).unwrap();
        assert_eq!(run.request(ControlRequest::Resume).unwrap(), stop + 1);
    }

    #[test]
    fn default_names_read_model_method_rank_and_time_and_never_collide() {
        let tmp = tempfile::tempdir().unwrap();
        let mut profile: crate::train::Profile = toml::from_str(
            "[model]\npath = \"../shared/models/stories260K\"\n[data]\ntrain = \"x.jsonl\"\n\
             [train]\nmax_steps = 1",
        )
        .unwrap();
        profile.adapter.rank = 4;
        let name = RunDir::default_name(&profile);
        assert!(name.starts_with("stories260K-lors-r4-"), "{name}");
        let stamp = name.trim_start_matches("stories260K-lors-r4-");
        assert_eq!(stamp.len(), "1204-2215-07".len(), "{name}");

        let runs = RunsFolder::new(tmp.path());
        let first = runs.fresh("x");
        assert_eq!(first, tmp.path().join("x"));
        std::fs::create_dir(&first).unwrap();
        assert_eq!(runs.fresh("x"), tmp.path().join("x-2"));
        // A launch in flight (its profile written, its directory not yet) is taken too.
        std::fs::create_dir_all(runs.launch_dir()).unwrap();
        std::fs::write(runs.launch_file("x-2", "toml"), "").unwrap();
        assert_eq!(runs.fresh("x"), tmp.path().join("x-3"));
        profile.train.run_name = Some("mine".into());
        assert_eq!(runs.new_run(&profile), tmp.path().join("mine"));
        let sweep = runs.new_sweep(&profile);
        assert!(
            file_name(&sweep).starts_with("sweep-stories260K-"),
            "{sweep:?}"
        );
    }
}
