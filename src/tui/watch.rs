//! Watching run and sweep directories: status and profile re-read when they change, metrics
//! tailed from the last complete line. Works for runs started by the TUI, headless, or before the
//! TUI was opened.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::eval::{EvalProgress, EvalReport, Task, TaskScore};
use crate::gpu_monitor::{read_gpus, GpuStatus};
use crate::model::{LayerSparsity, SparsityReport};
use crate::sweep::{Sweep, SweepState};
use crate::train::RunSummary;
use crate::train::{EvalStage, MetricRow, Profile, ReplayVerdict, RunDir, Status};

/// What the TUI knows of one run.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    pub path: PathBuf,
    pub name: String,
    pub status: Option<Status>,
    pub profile: Option<Profile>,
    /// The curves and outcomes, as `lors report` reads them.
    pub summary: RunSummary,
    /// The latest train row.
    pub last: Option<MetricRow>,
    /// Memory per step for the sparkline: the GPU pool's bytes on a GPU, else the RSS.
    pub memory: Vec<u64>,
    /// The latest per-layer densities (base and would-be merged), with their step.
    pub sparsity: Option<(usize, Vec<LayerSparsity>)>,
    /// Zero-shot task scores of the profile's `[eval]`, before and after training.
    pub tasks: Vec<(EvalStage, TaskScore)>,
    /// The newest evaluation job started from the workbench (`<run>/eval/`), and the report
    /// of the newest one that finished.
    pub eval_job: Option<EvalProgress>,
    pub eval_report: Option<EvalReport>,
    eval_job_mtime: Option<SystemTime>,
    /// A replay's verdict against its original, once written.
    pub replay: Option<ReplayVerdict>,
    /// The merged export's `sparsity.json`, once the export is there.
    pub merged: Option<SparsityReport>,
    /// Lines for the event log (init, evals, status messages and errors).
    pub events: Vec<String>,
    /// What finished since the run was first read and deserves the footer (a merge, a
    /// replay's verdict); the workbench takes them.
    pub news: Vec<String>,
    /// The last lines of the run's process output ([`RunDir::newest_log`]), and which file
    /// and version they come from.
    pub log_tail: Vec<String>,
    log_seen: Option<(PathBuf, SystemTime)>,
    log_looked: bool,
    /// The run's process now, while one works on it: CPU use (100% per busy core, over the
    /// last second or more) and resident memory.
    pub process: Option<ProcessReading>,
    /// The GPUs while a process works on the run (NVML, in CUDA builds).
    pub gpus: Option<GpuStatus>,
    /// The run's SLURM job as SLURM reports it, while the run is active in one.
    pub job: Option<crate::slurm::JobState>,
    job_read: Option<std::time::Instant>,
    cpu_sample: Option<(f64, std::time::Instant)>,
    /// Whether the run was read before (what it holds at the first read is not news).
    read_before: bool,
    offset: u64,
    status_mtime: Option<SystemTime>,
    /// Metrics lines already logged: re-reading a file a resume truncated rebuilds the curves
    /// but does not log their events again.
    logged_rows: std::collections::HashSet<String>,
}

/// A run's process as the OS sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcessReading {
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
}

/// The least time between two CPU readings of a run's process.
const CPU_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One task's accuracy before and after training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskAccuracy {
    pub task: Task,
    pub before: Option<f64>,
    pub after: Option<f64>,
}

impl RunInfo {
    /// When the run started (Unix seconds): its status's last write less its elapsed time.
    pub fn started_at(&self) -> Option<f64> {
        self.status.as_ref().map(|s| s.updated_at - s.elapsed_s)
    }

    /// Best evaluation loss so far.
    pub fn best_eval(&self) -> Option<f64> {
        self.summary.best_eval_loss()
    }

    /// Each scored task's `acc` before and after training, in the order first scored; a
    /// workbench evaluation of the finished run counts as "after" for tasks the run itself
    /// did not score after training.
    pub fn task_accuracy(&self) -> Vec<TaskAccuracy> {
        let mut out: Vec<TaskAccuracy> = Vec::new();
        let job = self.eval_report.iter().flat_map(|r| &r.tasks);
        let rows = self.tasks.iter().map(|(stage, score)| (*stage, score));
        let has_after = |task: Task| {
            self.tasks
                .iter()
                .any(|(s, t)| *s == EvalStage::After && t.task == task)
        };
        let job = job
            .filter(|t| !has_after(t.task))
            .map(|t| (EvalStage::After, t));
        for (stage, score) in rows.chain(job) {
            let i = match out.iter().position(|t| t.task == score.task) {
                Some(i) => i,
                None => {
                    out.push(TaskAccuracy {
                        task: score.task,
                        before: None,
                        after: None,
                    });
                    out.len() - 1
                }
            };
            let slot = match stage {
                EvalStage::Before => &mut out[i].before,
                EvalStage::After => &mut out[i].after,
            };
            *slot = Some(score.acc.value);
        }
        out
    }

    /// The mean `acc` after training over the tasks scored then.
    pub fn mean_accuracy_after(&self) -> Option<f64> {
        let after: Vec<f64> = self
            .task_accuracy()
            .iter()
            .filter_map(|t| t.after)
            .collect();
        (!after.is_empty()).then(|| after.iter().sum::<f64>() / after.len() as f64)
    }

    /// Read the newest workbench evaluation's progress (and its report once finished) when
    /// its file changed; true when it did.
    fn refresh_eval_job(&mut self) -> bool {
        let Ok(entries) = std::fs::read_dir(RunDir::at(&self.path).eval_path()) else {
            return false;
        };
        let newest = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".progress.json"))
            .max();
        let Some(path) = newest else {
            return false;
        };
        let m = mtime(&path);
        if m == self.eval_job_mtime {
            return false;
        }
        self.eval_job_mtime = m;
        let Ok(job) = crate::eval::read_progress(&path) else {
            return false;
        };
        if job.state == crate::eval::JobState::Finished {
            let report = std::fs::read_to_string(&job.report)
                .ok()
                .and_then(|t| serde_json::from_str::<EvalReport>(&t).ok());
            if let Some(r) = report {
                self.events.push(format!(
                    "evaluation finished: mean acc {}",
                    r.mean_acc.map_or("-".into(), |m| format!("{m:.4}"))
                ));
                self.eval_report = Some(r);
            }
        } else if let Some(e) = &job.error {
            self.events.push(format!("error: evaluation failed: {e}"));
        }
        self.eval_job = Some(job);
        true
    }
}

/// How much of a log's end the Run view reads.
const LOG_TAIL_BYTES: u64 = 16 << 10;

/// The complete lines in the last `bytes` of the file at `path`, a progress bar's carriage
/// returns taken as line ends (the latest state of each bar is its last piece).
fn tail_lines(path: &Path, bytes: u64) -> Vec<String> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(bytes);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text
        .split(['\n', '\r'])
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // cut in the middle
    }
    lines
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl RunInfo {
    fn new(path: &Path) -> Self {
        let profile = Profile::load(&path.join("profile.toml"), &[]).ok();
        Self {
            path: path.to_path_buf(),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            summary: RunSummary::new(path, profile.as_ref()),
            profile,
            ..Self::default()
        }
    }

    /// Read what changed since the last call; true when anything did.
    pub fn refresh(&mut self) -> bool {
        let run = RunDir::at(&self.path);
        let first_read = !std::mem::replace(&mut self.read_before, true);
        // Metrics first, so that a run's last evaluation is logged before its end.
        let mut changed = self.tail_metrics(&run.metrics_path());
        let m = mtime(&run.status_path());
        if m != self.status_mtime {
            self.status_mtime = m;
            if let Ok(s) = run.read_status() {
                // The log gets state changes and errors; progress messages only show in the
                // Run view's header.
                let before = self.status.as_ref();
                if let Some(e) = s
                    .error
                    .as_ref()
                    .filter(|e| before.and_then(|b| b.error.as_ref()) != Some(*e))
                {
                    self.events.push(format!("error: {e}"));
                } else if before.map(|b| b.state) != Some(s.state) {
                    let state = s.state.to_string();
                    self.events.push(match &s.message {
                        Some(m) if *m != state => format!("{state}: {m}"),
                        _ => state,
                    });
                }
                self.summary.set_status(&s);
                self.status = Some(s);
                changed = true;
            }
        }
        changed |= self.refresh_eval_job();
        changed |= self.refresh_outputs(&run, first_read);
        changed |= self.refresh_log_tail(&run);
        changed |= self.read_process();
        changed | self.notice_crash(&run)
    }

    /// Read the CPU use and resident memory of the run's process while it is active (at most
    /// once per [`CPU_INTERVAL`]); true when the reading changed.
    fn read_process(&mut self) -> bool {
        let job = self
            .status
            .as_ref()
            .filter(|s| s.state.is_active())
            .and_then(|s| s.slurm_job.clone());
        if let Some(id) = job {
            return self.read_job(&id);
        }
        self.job = None;
        // A SLURM job's process id is one on its compute node, not here.
        let pid = self
            .status
            .as_ref()
            .filter(|s| s.state.is_active() && s.slurm_job.is_none())
            .map(|s| s.pid);
        let Some(pid) = pid.filter(|&p| crate::io::process_alive(p)) else {
            let had = self.process.take().is_some();
            self.gpus = None;
            self.cpu_sample = None;
            return had;
        };
        let now = std::time::Instant::now();
        if self.cpu_sample.is_some_and(|(_, t)| now - t < CPU_INTERVAL) {
            return false;
        }
        let cpu = crate::memory::process_cpu_seconds(pid);
        let cpu_percent = match (cpu, self.cpu_sample) {
            (Some(c), Some((before, t))) => Some(100.0 * (c - before) / (now - t).as_secs_f64()),
            _ => None,
        };
        self.cpu_sample = cpu.map(|c| (c, now));
        self.process = Some(ProcessReading {
            cpu_percent: cpu_percent.or(self.process.and_then(|p| p.cpu_percent)),
            rss_bytes: crate::memory::process_rss_bytes(pid),
        });
        self.gpus = Some(read_gpus(Some(pid)));
        true
    }

    /// Ask SLURM for the run's job (at most once per [`CPU_INTERVAL`]); true when its state
    /// changed.
    fn read_job(&mut self, id: &str) -> bool {
        let now = std::time::Instant::now();
        if self.job_read.is_some_and(|t| now - t < CPU_INTERVAL) {
            return false;
        }
        self.job_read = Some(now);
        let id = id.to_string();
        let state = crate::slurm::states(std::slice::from_ref(&id))
            .ok()
            .and_then(|mut s| s.remove(&id));
        let changed = self.job != state;
        self.job = state;
        changed
    }

    /// Re-read the last lines of the run's process output when it changed (looked for at the
    /// first read and while a process works on the run); true when it did.
    fn refresh_log_tail(&mut self, run: &RunDir) -> bool {
        let active = self.status.as_ref().is_none_or(|s| s.state.is_active());
        if !active && std::mem::replace(&mut self.log_looked, true) {
            return false;
        }
        let Some(path) = run.newest_log() else {
            return false;
        };
        let seen = mtime(&path).map(|m| (path.clone(), m));
        if seen.is_none() || seen == self.log_seen {
            return false;
        }
        self.log_seen = seen;
        self.log_tail = tail_lines(&path, LOG_TAIL_BYTES);
        true
    }

    /// Pick up a replay's verdict and a merged export when they appear; after the first read
    /// they are news as well as events.
    fn refresh_outputs(&mut self, run: &RunDir, first_read: bool) -> bool {
        let mut found = Vec::new();
        if self.replay.is_none() {
            if let Some(v) = run.read_replay() {
                found.push(v.summary());
                self.replay = Some(v);
            }
        }
        if self.merged.is_none() {
            let report = std::fs::read_to_string(run.merged_path().join("sparsity.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<SparsityReport>(&t).ok());
            if let Some(r) = report {
                found.push(format!(
                    "merge finished: {} (density {:.4} -> {:.4}, zeros {})",
                    run.merged_path().display(),
                    r.density_before,
                    r.density_after,
                    if r.pattern_preserved {
                        "kept"
                    } else {
                        "NOT kept"
                    }
                ));
                self.merged = Some(r);
            }
        }
        if !first_read {
            self.news
                .extend(found.iter().map(|f| format!("{}: {f}", self.name)));
        }
        let changed = !found.is_empty();
        self.events.extend(found);
        changed
    }

    /// A run whose status says its process works on it, while that process is gone, is
    /// recorded as crashed (see [`RunDir::mark_crashed_if_dead`]); true when it was.
    fn notice_crash(&mut self, run: &RunDir) -> bool {
        // A SLURM run by the job state read at most once a second (not a `squeue` per
        // refresh); `mark_crashed_if_dead` asks again before it writes.
        let alive = |s: &Status| match &s.slurm_job {
            Some(_) => self.job_read.is_none() || self.job.as_ref().is_some_and(|j| j.is_active()),
            None => s.process_alive(),
        };
        let looks_dead = self
            .status
            .as_ref()
            .is_some_and(|s| s.state.is_active() && !alive(s));
        if !looks_dead {
            return false;
        }
        match run.mark_crashed_if_dead() {
            Ok(Some(s)) => {
                self.events
                    .push(format!("crashed: {}", s.error.clone().unwrap_or_default()));
                self.status_mtime = mtime(&run.status_path());
                self.summary.set_status(&s);
                self.status = Some(s);
                true
            }
            Ok(None) => false,
            Err(e) => {
                self.events
                    .push(format!("cannot mark the run crashed: {e}"));
                false
            }
        }
    }

    fn tail_metrics(&mut self, path: &Path) -> bool {
        let Ok(mut f) = std::fs::File::open(path) else {
            return false;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Rewritten (a resume truncated it): read again from the start.
            self.offset = 0;
            self.summary.clear_metrics();
            self.memory.clear();
            self.tasks.clear();
        }
        if len == self.offset || f.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        let mut text = String::new();
        if f.read_to_string(&mut text).is_err() {
            return false;
        }
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        for line in text[..complete].lines() {
            let first_time = self.logged_rows.insert(line.to_string());
            match serde_json::from_str::<MetricRow>(line) {
                Ok(row) => self.add(row, first_time),
                Err(e) if first_time => self.events.push(format!("unreadable metrics line: {e}")),
                Err(_) => {}
            }
        }
        self.offset += complete as u64;
        complete > 0
    }

    /// Take `row` into the curves and state; its event goes to the log when `log`.
    fn add(&mut self, row: MetricRow, log: bool) {
        let before = self.events.len();
        self.take(row);
        if !log {
            self.events.truncate(before);
        }
    }

    fn take(&mut self, row: MetricRow) {
        self.summary.add(&row);
        match &row {
            MetricRow::Train { rss_bytes, gpu, .. } => {
                self.memory
                    .push(gpu.map_or(rss_bytes.unwrap_or(0), |g| g.used_bytes));
                self.last = Some(row);
            }
            MetricRow::Eval {
                step,
                eval_loss,
                eval_ppl,
            } => {
                self.events.push(format!(
                    "step {step}: eval loss {eval_loss:.4}, ppl {eval_ppl:.3}"
                ));
            }
            MetricRow::Init {
                seconds, layers, ..
            } => self
                .events
                .push(format!("gradient init: {layers} layers in {seconds:.2} s")),
            MetricRow::Checkpoint { step } => {
                self.events.push(format!("step {step}: checkpoint saved"));
            }
            MetricRow::Sparsity { step, layers } => {
                self.sparsity = Some((*step, layers.clone()));
            }
            MetricRow::Task { stage, score, .. } => {
                self.events.push(format!(
                    "{stage} training: {} acc {:.4} ({} items)",
                    score.task, score.acc.value, score.items
                ));
                self.tasks.push((*stage, score.clone()));
            }
        }
    }
}

/// Every run and sweep under a runs folder, kept up to date.
#[derive(Debug, Default)]
pub struct Watcher {
    pub root: PathBuf,
    pub runs: Vec<RunInfo>,
    pub sweeps: Vec<SweepInfo>,
}

impl Watcher {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            ..Self::default()
        }
    }

    /// Pick up new sweep directories and re-read changed ones; true when anything changed.
    fn refresh_sweeps(&mut self, dirs: &[PathBuf]) -> bool {
        let sweep_dirs: Vec<&PathBuf> = dirs.iter().filter(|d| is_sweep_dir(d)).collect();
        let before = self.sweeps.len();
        self.sweeps.retain(|s| sweep_dirs.contains(&&s.dir));
        let mut changed = self.sweeps.len() != before;
        for s in &mut self.sweeps {
            changed |= s.refresh();
        }
        for d in sweep_dirs {
            if !self.sweeps.iter().any(|s| &s.dir == d) {
                if let Ok(info) = SweepInfo::read(d) {
                    self.sweeps.push(info);
                    changed = true;
                }
            }
        }
        self.sweeps.sort_by(|a, b| a.dir.cmp(&b.dir));
        changed
    }

    /// Pick up new run directories and read what changed; true when anything did.
    pub fn refresh(&mut self) -> bool {
        let mut changed = false;
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            let all: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            changed |= self.refresh_sweeps(&all);
            let mut dirs: Vec<PathBuf> = all
                .into_iter()
                .filter(|p| p.join("profile.toml").is_file())
                .collect();
            dirs.sort();
            let before = self.runs.len();
            self.runs.retain(|r| dirs.contains(&r.path));
            changed |= self.runs.len() != before;
            for d in dirs {
                if !self.runs.iter().any(|r| r.path == d) {
                    self.runs.push(RunInfo::new(&d));
                    changed = true;
                }
            }
            self.runs.sort_by(|a, b| a.path.cmp(&b.path));
        }
        for r in &mut self.runs {
            changed |= r.refresh();
        }
        changed
    }

    /// What finished since the last call (see [`RunInfo::news`]), oldest first.
    pub fn take_news(&mut self) -> Vec<String> {
        self.runs
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r.news))
            .collect()
    }
}

/// A sweep directory as last read.
#[derive(Debug, Clone)]
pub struct SweepInfo {
    pub dir: PathBuf,
    pub name: String,
    /// The swept keys, in the sweep's order.
    pub axes: Vec<String>,
    pub state: SweepState,
    mtime: Option<SystemTime>,
}

impl SweepInfo {
    /// Read the sweep in `dir`.
    pub fn read(dir: &Path) -> Result<Self, String> {
        let sweep = Sweep::open(dir).map_err(|e| e.to_string())?;
        Ok(Self {
            dir: dir.to_path_buf(),
            name: dir
                .file_name()
                .map_or("sweep".into(), |n| n.to_string_lossy().into_owned()),
            axes: sweep.spec.axes.iter().map(|(k, _)| k.clone()).collect(),
            state: sweep.state,
            mtime: state_mtime(dir),
        })
    }

    /// Re-read the state when its file changed; true when it did.
    pub fn refresh(&mut self) -> bool {
        let m = state_mtime(&self.dir);
        if m == self.mtime {
            return false;
        }
        match Self::read(&self.dir) {
            Ok(fresh) => {
                *self = fresh;
                true
            }
            Err(_) => false,
        }
    }

    /// Whether trials are left but no process schedules them (it crashed or was killed).
    pub fn orphaned(&self) -> bool {
        !self.state.is_done() && !self.state.scheduler_alive()
    }
}

fn state_mtime(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join("state.json"))
        .and_then(|m| m.modified())
        .ok()
}

/// Whether `dir` holds a sweep.
pub fn is_sweep_dir(dir: &Path) -> bool {
    dir.join("sweep.toml").is_file() && dir.join("state.json").is_file()
}
