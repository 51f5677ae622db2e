//! Running a sweep: each trial is a detached `lors train` (so trials outlive the sweep
//! process, the terminal and an SSH drop), at most `concurrency` at once per device; the
//! sweep watches their metrics, stops the ones ASHA rejects at a rung (through the run's
//! control file), and records everything in `state.json`, so `lors sweep --resume DIR` after
//! a crash of the sweep process picks up where it was: finished trials stay, live trials are
//! watched again, dead ones resume from their checkpoints.
//!
//! A sweep directory `<runs>/<name>/` holds `sweep.toml` (the profile with its `[sweep]`),
//! `state.json`, each trial's profile and log (`t000.toml`, `t000.log`), and once asked from
//! the workbench, `report/` and `report.log` (`lors report`); the trials' run directories are
//! `<runs>/<name>-t000`, … beside it, so the workbench lists them as runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::asha::{Asha, Decision};
use super::spec::{Executor, SweepSpec, Trial};
use crate::error::{LorsError, Result};
use crate::io::{spawn_detached, write_atomic, write_json_atomic};
use crate::slurm::{self, JobState};
use crate::train::{ControlRequest, MetricRow, Override, Profile, RunDir, RunState, RunsFolder};

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrialState {
    Pending,
    Running,
    Finished,
    /// Stopped by early stopping at a rung.
    StoppedEarly,
    /// Its run failed or stopped for another reason.
    Failed,
}

impl std::fmt::Display for TrialState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrialState::Pending => "pending",
            TrialState::Running => "running",
            TrialState::Finished => "finished",
            TrialState::StoppedEarly => "stopped early",
            TrialState::Failed => "failed",
        })
    }
}

/// One trial's record in `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    pub trial: Trial,
    pub state: TrialState,
    /// The trial's run directory.
    pub run_dir: PathBuf,
    /// Evaluations seen so far (step, validation loss).
    pub evals: Vec<(usize, f64)>,
    /// Why it failed, or the rung it was stopped at.
    pub note: Option<String>,
    /// Its SLURM job and that job's last state (executor `slurm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<TrialJob>,
}

/// A trial's SLURM job as the sweep last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialJob {
    pub id: String,
    #[serde(flatten)]
    pub state: JobState,
    /// The signal the sweep had SLURM send it (a stopped trial that ran on past its grace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signalled: Option<String>,
}

impl TrialJob {
    /// Whether SLURM ended the job from outside (cancelled, preempted, timed out, its node
    /// failed) or it is long gone: its run checkpointed on the signal, or could not write.
    fn interrupted(&self) -> bool {
        ["CANCELLED", "PREEMPTED", "TIMEOUT", "NODE_FAIL", "GONE"]
            .iter()
            .any(|s| self.state.state.starts_with(s))
    }

    /// A job just submitted (pending until SLURM says more).
    fn submitted(id: String) -> Self {
        Self {
            id,
            state: JobState {
                state: "PENDING".into(),
                reason: None,
            },
            signalled: None,
        }
    }
}

impl TrialRecord {
    /// The SLURM job name of the trial: its run directory's name.
    fn job_name(&self) -> String {
        self.run_dir
            .file_name()
            .map_or("lors-trial".into(), |n| n.to_string_lossy().into_owned())
    }
}

impl TrialRecord {
    /// The trial's state given its run's own (`run`): the sweep's record, unless that says
    /// `running` and the run has ended since (a scheduler that died could not record it;
    /// the run's status owns the truth).
    pub fn current_state(&self, run: Option<RunState>) -> TrialState {
        match (self.state, run) {
            (TrialState::Running, Some(RunState::Finished)) => TrialState::Finished,
            (
                TrialState::Running,
                Some(RunState::Failed | RunState::Crashed | RunState::Stopped),
            ) => TrialState::Failed,
            (recorded, _) => recorded,
        }
    }
}

/// An early-stopping report, in the order the sweep saw them (replayed on resume).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub trial: usize,
    pub step: usize,
    pub loss: f64,
    pub decision: Decision,
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepState {
    pub trials: Vec<TrialRecord>,
    pub reports: Vec<Report>,
    /// The process scheduling the trials, while one does.
    #[serde(default)]
    pub pid: Option<u32>,
}

impl SweepState {
    /// Whether a scheduling process is alive.
    pub fn scheduler_alive(&self) -> bool {
        self.pid.is_some_and(crate::io::process_alive)
    }

    /// Trials in `state`.
    pub fn count(&self, state: TrialState) -> usize {
        self.trials.iter().filter(|t| t.state == state).count()
    }

    /// Whether every trial has ended.
    pub fn is_done(&self) -> bool {
        self.trials
            .iter()
            .all(|t| !matches!(t.state, TrialState::Pending | TrialState::Running))
    }
}

/// A sweep directory with its parsed profile and state.
pub struct Sweep {
    pub dir: PathBuf,
    /// The profile text without `[sweep]`, the trials' base.
    base: String,
    pub spec: SweepSpec,
    pub state: SweepState,
    asha: Option<Asha>,
    /// The crashed status each trial was last relaunched from (its `updated_at`).
    relaunched: std::collections::HashMap<usize, f64>,
    /// When early stopping asked each trial to stop (this process saw it first).
    stop_asked: std::collections::HashMap<usize, std::time::Instant>,
}

const SWEEP_FILE: &str = "sweep.toml";
const STATE_FILE: &str = "state.json";
/// How often the sweep looks at its trials.
const POLL: Duration = Duration::from_millis(300);

/// Split a profile's text into its `[sweep]` table and the rest.
fn split_sweep(path: &Path, text: &str) -> Result<(toml::Table, String)> {
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| LorsError::parse(path, e.to_string()))?;
    let sweep = match table.remove("sweep") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => return Err(LorsError::parse(path, "`sweep` must be a section")),
        None => return Err(LorsError::parse(path, "no [sweep] section to run")),
    };
    let base = toml::to_string(&table).map_err(|e| LorsError::parse(path, e.to_string()))?;
    Ok((sweep, base))
}

/// A sweep profile: its base profile (with `overrides`), its `[sweep]` table, and that table
/// parsed, with every axis value checked against the base (errors name `sweep.<key>`).
pub fn load_profile(
    path: &Path,
    overrides: &[Override],
) -> Result<(Profile, toml::Table, SweepSpec)> {
    let text = std::fs::read_to_string(path).map_err(|e| LorsError::io(path, e))?;
    let (sweep_table, base_text) = split_sweep(path, &text)?;
    let base = Profile::parse(&base_text, overrides)?;
    let spec = check_sweep(&base, &sweep_table)?;
    Ok((base, sweep_table, spec))
}

/// The `[sweep]` table parsed, with every axis value checked against `base` and the ranks
/// each trial runs on (errors name `sweep.<key>`).
pub fn check_sweep(base: &Profile, sweep_table: &toml::Table) -> Result<SweepSpec> {
    let spec = SweepSpec::from_table(sweep_table)?;
    if let Executor::Slurm(settings) = &spec.executor {
        settings.check("sweep.slurm.")?;
    }
    let base_table =
        toml::Table::try_from(base).map_err(|e| LorsError::invalid("sweep", e.to_string()))?;
    for (key, value) in spec.probe_values() {
        let probe = Override::new(&key, value.clone());
        Profile::from_table(base_table.clone(), &[probe])
            .map_err(|e| LorsError::invalid(format!("sweep.{key}"), format!("`{value}`: {e}")))?;
    }
    check_trial_ranks(&spec, &base_table)?;
    Ok(spec)
}

/// An error unless each trial's micro-batches split over its ranks (`ntasks`); it names
/// the swept `train.grad_accum` value when that is the trial's.
fn check_trial_ranks(spec: &SweepSpec, base_table: &toml::Table) -> Result<()> {
    let ranks = spec.executor.ranks();
    if ranks == 1 {
        return Ok(());
    }
    for trial in spec.trials() {
        let profile = Profile::from_table(base_table.clone(), &trial.overrides())?;
        if let Err(e) = profile.check_ranks(ranks) {
            return Err(match trial.values.get("train.grad_accum") {
                Some(v) => LorsError::invalid("sweep.train.grad_accum", format!("`{v}`: {e}")),
                None => e,
            });
        }
    }
    Ok(())
}

/// A sweep profile's text: `base` with `sweep_table` as its `[sweep]` section.
pub fn sweep_profile_text(base: &Profile, sweep_table: &toml::Table) -> Result<String> {
    let section =
        toml::Table::from_iter([("sweep".to_string(), toml::Value::Table(sweep_table.clone()))]);
    let section =
        toml::to_string(&section).map_err(|e| LorsError::invalid("sweep", e.to_string()))?;
    Ok(format!("{}\n{section}", base.to_toml()))
}

impl Sweep {
    /// Set up a new sweep from the profile at `profile_path` (with `overrides` applied to
    /// the base) in `dir` (default: `<train.output_dir>/sweep-<time>`); every axis value is
    /// checked against the profile first, and errors name the key.
    pub fn create(profile_path: &Path, overrides: &[Override], dir: Option<&Path>) -> Result<Self> {
        let (mut base, sweep_table, spec) = load_profile(profile_path, overrides)?;
        let cwd = std::env::current_dir().map_err(|e| LorsError::io(Path::new("."), e))?;
        base.resolve_paths(&cwd);
        let base_text = base.to_toml();
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => RunsFolder::new(&base.train.output_dir).new_sweep(&base),
        };
        if dir.join(STATE_FILE).exists() {
            return Err(LorsError::invalid(
                "--out",
                format!(
                    "{} already holds a sweep; resume it with --resume",
                    dir.display()
                ),
            ));
        }
        std::fs::create_dir_all(&dir).map_err(|e| LorsError::io(&dir, e))?;
        let name = dir
            .file_name()
            .map_or("sweep".into(), |n| n.to_string_lossy().into_owned());
        let runs = dir.parent().unwrap_or(Path::new(".")).to_path_buf();
        let trials = spec
            .trials()
            .into_iter()
            .map(|trial| TrialRecord {
                run_dir: runs.join(format!("{name}-t{:03}", trial.index)),
                trial,
                state: TrialState::Pending,
                evals: Vec::new(),
                note: None,
                job: None,
            })
            .collect();
        let sweep_text = sweep_profile_text(&base, &sweep_table)?;
        write_atomic(&dir.join(SWEEP_FILE), sweep_text.as_bytes())?;
        let sweep = Self {
            asha: spec.early_stop.as_ref().map(Asha::new),
            dir,
            base: base_text,
            spec,
            // The process that sets a sweep up runs it.
            state: SweepState {
                trials,
                reports: Vec::new(),
                pid: Some(std::process::id()),
            },
            relaunched: Default::default(),
            stop_asked: Default::default(),
        };
        sweep.save()?;
        Ok(sweep)
    }

    /// Open the sweep in `dir` to resume it; early stopping is rebuilt from its reports.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(SWEEP_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| LorsError::io(&path, e))?;
        let (sweep_table, base) = split_sweep(&path, &text)?;
        let spec = SweepSpec::from_table(&sweep_table)?;
        let state_path = dir.join(STATE_FILE);
        let state_text =
            std::fs::read_to_string(&state_path).map_err(|e| LorsError::io(&state_path, e))?;
        let state = serde_json::from_str(&state_text)
            .map_err(|e| LorsError::parse(&state_path, e.to_string()))?;
        let mut state: SweepState = state;
        let mut asha = spec.early_stop.as_ref().map(Asha::new);
        if let Some(a) = &mut asha {
            for r in &state.reports {
                a.report(r.trial, r.step, r.loss);
            }
        }
        // A trial launched just before a crash whose process never created its run starts
        // again, unless it is a SLURM job that is still queued or running; a pending trial
        // whose job was submitted but not recorded takes that job.
        let slurm = matches!(spec.executor, Executor::Slurm(_));
        for t in &mut state.trials {
            let queued = || t.job.as_ref().is_some_and(|j| job_active(&j.id));
            if t.state == TrialState::Running
                && !t.run_dir.join("profile.toml").is_file()
                && !(slurm && queued())
            {
                t.state = TrialState::Pending;
            }
            if slurm && t.state == TrialState::Pending {
                if let Some(id) = slurm::active_jobs_named(&t.job_name())?.pop() {
                    t.job = Some(TrialJob::submitted(id));
                    t.state = TrialState::Running;
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            base,
            spec,
            state,
            asha,
            relaunched: Default::default(),
            stop_asked: Default::default(),
        })
    }

    fn save(&self) -> Result<()> {
        write_json_atomic(&self.dir.join(STATE_FILE), &self.state)
    }

    /// The profile of trial `i`: the base with its values, evaluating at every rung.
    pub fn trial_profile(&self, i: usize) -> Result<Profile> {
        let mut profile = Profile::parse(&self.base, &self.state.trials[i].trial.overrides())?;
        if let Some(e) = &self.spec.early_stop {
            let every = profile.train.eval_every;
            if every == 0 || e.rungs.iter().any(|r| r % every != 0) {
                profile.train.eval_every = e.rungs.iter().fold(0, |g, r| gcd(g, *r));
            }
            // Each trial waits at a rung for its verdict: it stops exactly there, however
            // fast the sweep looks (the same table locally and on a cluster).
            profile.train.pause_at = e.rungs.clone();
        }
        Ok(profile)
    }

    /// Run until every trial has ended, calling `progress` after each change. Refused while
    /// another live process schedules the sweep (two would start its trials twice).
    pub fn run(&mut self, progress: &mut dyn FnMut(&SweepState)) -> Result<()> {
        let me = std::process::id();
        if let Some(pid) = self
            .state
            .pid
            .filter(|&p| p != me && crate::io::process_alive(p))
        {
            return Err(LorsError::invalid(
                "--resume",
                format!("{} is being run by process {pid}", self.dir.display()),
            ));
        }
        self.state.pid = Some(me);
        self.save()?;
        progress(&self.state);
        while !self.state.is_done() {
            let mut changed = self.refresh_jobs()?;
            for i in 0..self.state.trials.len() {
                if self.state.trials[i].state == TrialState::Running {
                    changed |= self.watch(i)?;
                }
            }
            changed |= self.start_pending()?;
            if changed {
                self.save()?;
                progress(&self.state);
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// Start pending trials while their device has room.
    fn start_pending(&mut self) -> Result<bool> {
        let mut started = false;
        for i in 0..self.state.trials.len() {
            if self.state.trials[i].state != TrialState::Pending {
                continue;
            }
            let profile = self.trial_profile(i)?;
            // Locally, per device; on SLURM, jobs in flight (the cluster places them).
            let local = self.spec.executor == Executor::Local;
            let busy = (0..self.state.trials.len())
                .filter(|&j| self.state.trials[j].state == TrialState::Running)
                .filter(|&j| {
                    !local
                        || self
                            .trial_profile(j)
                            .is_ok_and(|p| p.train.device == profile.train.device)
                })
                .count();
            if busy >= self.spec.concurrency {
                continue;
            }
            self.launch(i, &profile)?;
            started = true;
        }
        Ok(started)
    }

    /// Start trial `i` as a detached `lors train` (resuming its run when one is there).
    fn launch(&mut self, i: usize, profile: &Profile) -> Result<()> {
        let stem = format!("t{:03}", i);
        let profile_path = self.dir.join(format!("{stem}.toml"));
        write_atomic(&profile_path, profile.to_toml().as_bytes())?;
        let record = &mut self.state.trials[i];
        let args: Vec<std::ffi::OsString> = if record.run_dir.join("profile.toml").is_file() {
            vec![
                "train".into(),
                "--resume".into(),
                record.run_dir.clone().into(),
            ]
        } else {
            vec![
                "train".into(),
                "--profile".into(),
                profile_path.into(),
                "--run-dir".into(),
                record.run_dir.clone().into(),
            ]
        };
        let log = self.dir.join(format!("{stem}.log"));
        match &self.spec.executor {
            Executor::Local => spawn_detached(&args, &log)?,
            Executor::Slurm(settings) => {
                let cwd = std::env::current_dir().map_err(|e| LorsError::io(&self.dir, e))?;
                let id = slurm::submit(settings, &record.job_name(), &args, &log, &cwd)?;
                record.job = Some(TrialJob::submitted(id));
            }
        }
        record.state = TrialState::Running;
        Ok(())
    }

    /// Read the SLURM states of the running trials' jobs (one `squeue`); whether any changed.
    fn refresh_jobs(&mut self) -> Result<bool> {
        if self.spec.executor == Executor::Local {
            return Ok(false);
        }
        let running = |t: &&mut TrialRecord| t.state == TrialState::Running;
        let ids: Vec<String> = self
            .state
            .trials
            .iter_mut()
            .filter(running)
            .filter_map(|t| Some(t.job.as_ref()?.id.clone()))
            .collect();
        // SLURM refusing to answer this round (a busy controller) is no news: the jobs keep
        // their last states until it answers; a client that cannot run at all is an error.
        let states = match slurm::states(&ids) {
            Ok(states) => states,
            Err(e) if slurm::refused(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut changed = false;
        for t in self.state.trials.iter_mut().filter(running) {
            let Some(job) = t.job.as_mut() else { continue };
            // A job neither squeue, scontrol nor sacct knows has long ended.
            let now = states.get(&job.id).cloned().unwrap_or(JobState {
                state: "GONE".into(),
                reason: None,
            });
            changed |= job.state != now;
            job.state = now;
        }
        Ok(changed)
    }

    /// Look at running trial `i`: new evaluations go to early stopping, an ended run ends
    /// the trial, a dead one is resumed from its checkpoint. Whether anything changed.
    fn watch(&mut self, i: usize) -> Result<bool> {
        let run_dir = self.state.trials[i].run_dir.clone();
        // On SLURM, whether the trial's job still lives (as of this round's `squeue`).
        let job = self.state.trials[i].job.clone();
        let job_ended = job.as_ref().map(|j| !j.state.is_active());
        let interrupted = job.as_ref().is_some_and(TrialJob::interrupted);
        let Ok(run) = RunDir::open(&run_dir) else {
            // Its process has not created it yet; a job that ended first failed.
            return Ok(job_ended == Some(true) && self.fail_unstarted(i));
        };
        let mut changed = self.take_evals(i, &run)?;
        let Ok(status) = run.read_status() else {
            return Ok(changed);
        };
        if status.state == RunState::Paused {
            self.repeat_verdict(i, &run, &status)?;
        }
        if status.state.is_active() {
            changed |= self.enforce_stop(i);
        }
        let record = &mut self.state.trials[i];
        let asked_to_stop = record
            .note
            .as_deref()
            .is_some_and(|n| n.starts_with("rung"));
        let died = status.state == RunState::Crashed || job_ended == Some(true);
        match status.state {
            // On SLURM a trial ends with its job, which may still be ending its ranks (a
            // job in flight holds its resources); then the job's end is the verdict.
            _ if !status.state.is_active() && job_ended == Some(false) => return Ok(changed),
            RunState::Finished => record.state = TrialState::Finished,
            RunState::Stopped if asked_to_stop => record.state = TrialState::StoppedEarly,
            // Early stopping's loser whose process ended without saying so (killed after the
            // signal) stays stopped, at the rung it checkpointed at: never run again.
            _ if asked_to_stop && died => record.state = TrialState::StoppedEarly,
            // A job SLURM cancelled, preempted or timed out checkpointed on the signal and
            // stopped: it goes on from there, in a new job.
            RunState::Stopped if interrupted => return self.relaunch(i, &status),
            RunState::Stopped | RunState::Failed => {
                record.state = TrialState::Failed;
                record.note = status.error.or(status.message);
            }
            // Its job ended under it (killed without a chance to write): resume.
            RunState::Initializing | RunState::Running | RunState::Paused
                if job_ended == Some(true) =>
            {
                return self.relaunch(i, &status)
            }
            RunState::Initializing | RunState::Running | RunState::Paused
                if job_ended.is_some() =>
            {
                return Ok(changed);
            }
            RunState::Crashed => return self.relaunch(i, &status).map(|r| r | changed),
            RunState::Initializing | RunState::Running | RunState::Paused => {
                // A dead process is marked crashed here and resumed at the next look.
                return Ok(changed | run.mark_crashed_if_dead()?.is_some());
            }
        }
        Ok(true)
    }

    /// Fail trial `i`, whose job ended before its run began, saying what to check; true.
    fn fail_unstarted(&mut self, i: usize) -> bool {
        let record = &mut self.state.trials[i];
        let Some(job) = &record.job else {
            return false;
        };
        let log = self.dir.join(format!("t{i:03}.log"));
        record.note = Some(format!(
            "SLURM job {} ended ({}) before the run began: does the compute node see {} (a \
             filesystem the nodes share)? Its log: {}",
            job.id,
            job.state,
            self.dir.display(),
            log.display()
        ));
        record.state = TrialState::Failed;
        true
    }

    /// A trial waiting at a rung whose verdict it has not received (sent before the sweep
    /// process was restarted, or lost with it) gets it again, unless a request is pending.
    fn repeat_verdict(&self, i: usize, run: &RunDir, status: &crate::train::Status) -> Result<()> {
        let verdict = self
            .state
            .reports
            .iter()
            .find(|r| r.trial == i && r.step == status.step);
        let pending = run
            .read_control()?
            .is_some_and(|c| c.id > status.control_ack);
        match verdict.map(|r| r.decision) {
            Some(Decision::Continue) if !pending => run.request(ControlRequest::Resume).map(|_| ()),
            Some(Decision::Stop) if !pending => run.request(ControlRequest::Stop).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// A SLURM trial that early stopping asked to stop (through its control file) and that
    /// still runs `stop_grace_s` later gets SIGTERM from SLURM (it checkpoints and stops); its
    /// job records the signal. A job that ended meanwhile cannot be signalled, and need not be.
    fn enforce_stop(&mut self, i: usize) -> bool {
        let grace = Duration::from_secs(self.spec.stop_grace_s);
        let record = &mut self.state.trials[i];
        let asked = record
            .note
            .as_deref()
            .is_some_and(|n| n.starts_with("rung"));
        let Some(job) = record
            .job
            .as_mut()
            .filter(|j| asked && j.signalled.is_none())
        else {
            return false;
        };
        let now = std::time::Instant::now();
        let since = *self.stop_asked.entry(i).or_insert(now);
        let signalled = now - since >= grace && slurm::signal(&job.id, "TERM").is_ok();
        if signalled {
            job.signalled = Some("TERM".into());
        }
        signalled
    }

    /// Resume trial `i` from its newest checkpoint, once per ended process (the status it
    /// left, by its `updated_at`; the new process rewrites it when it starts).
    fn relaunch(&mut self, i: usize, status: &crate::train::Status) -> Result<bool> {
        if self.relaunched.get(&i) == Some(&status.updated_at) {
            return Ok(false);
        }
        self.relaunched.insert(i, status.updated_at);
        let profile = self.trial_profile(i)?;
        self.launch(i, &profile)?;
        Ok(true)
    }

    /// Record the trial's new evaluations; at a rung, ask early stopping and stop the run
    /// when it says so.
    fn take_evals(&mut self, i: usize, run: &RunDir) -> Result<bool> {
        let evals: Vec<(usize, f64)> = run
            .read_metrics()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| match r {
                MetricRow::Eval {
                    step, eval_loss, ..
                } => Some((*step, *eval_loss)),
                _ => None,
            })
            .collect();
        let record = &mut self.state.trials[i];
        if evals.len() <= record.evals.len() {
            return Ok(false);
        }
        let new = evals[record.evals.len()..].to_vec();
        record.evals = evals;
        let Some(asha) = &mut self.asha else {
            return Ok(true);
        };
        for (step, loss) in new {
            if !asha.due(i, step) {
                continue;
            }
            let decision = asha.report(i, step, loss);
            self.state.reports.push(Report {
                trial: i,
                step,
                loss,
                decision,
            });
            match decision {
                Decision::Stop if record.note.is_none() => {
                    record.note = Some(format!("rung at step {step}: loss {loss:.4}"));
                    run.request(ControlRequest::Stop)?;
                }
                Decision::Stop => {}
                // It waits at the rung (`pause_at`): on it goes.
                Decision::Continue => {
                    run.request(ControlRequest::Resume)?;
                }
            }
        }
        Ok(true)
    }
}

/// Whether SLURM has job `id` queued or running (a SLURM that cannot be asked: yes).
fn job_active(id: &str) -> bool {
    let id = id.to_string();
    slurm::states(std::slice::from_ref(&id))
        .map(|s| s.get(&id).is_some_and(JobState::is_active))
        .unwrap_or(true)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
