//! Running `lors` commands as SLURM batch jobs: the `[sweep.slurm]` settings, `sbatch` to
//! submit, `squeue` (then `scontrol`, for jobs that have just left the queue) to follow and
//! `scancel` to stop. SLURM is the scheduler; this only speaks its commands. A job runs the
//! same `lors` binary with the same arguments a local process would get, so the run directory
//! (on the filesystem the login and compute nodes share) is where its state lives.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::error::{LorsError, Result};

/// What each job asks SLURM for (`[sweep.slurm]`; every key optional: the cluster's
/// defaults hold).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    pub partition: Option<String>,
    /// Generic resources, e.g. `gpu:1`.
    pub gres: Option<String>,
    /// Time limit, as `sbatch --time` takes it (`2:00:00`).
    pub time: Option<String>,
    pub cpus_per_task: Option<u32>,
    /// Memory per node, as `sbatch --mem` takes it (`32G`).
    pub mem: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// More `sbatch` arguments, as given.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// A shell line run before `lors` in the job (`module load cuda`).
    pub setup: Option<String>,
    /// Processes per job (`sbatch --ntasks`): above 1, one data-parallel run over MPI with
    /// that many ranks, started by `launcher` (needs a `lors` built with `--features mpi`).
    pub ntasks: Option<u32>,
    /// The shell words that start the job's ranks, before the `lors` command: `srun
    /// --mpi=pmix` (the default with `ntasks` above 1: Open MPI joins its ranks through
    /// PMIx), `mpirun`, or `srun` alone where the cluster's `MpiDefault` is pmix.
    pub launcher: Option<String>,
}

impl SlurmSettings {
    /// Ranks per job (1 unless `ntasks` says more).
    pub fn ranks(&self) -> usize {
        self.ntasks.map_or(1, |n| n as usize)
    }

    /// What starts `lors` in the job: the launcher, `srun --mpi=pmix` for several ranks,
    /// else nothing.
    fn launcher(&self) -> &str {
        match (&self.launcher, self.ranks()) {
            (Some(words), _) => words,
            (None, 1) => "",
            (None, _) => "srun --mpi=pmix",
        }
    }

    /// An error for settings no job could run: no ranks, or several ranks from a build
    /// without MPI (each would train alone into the same run directory). Errors name
    /// `{section}ntasks` (`sweep.slurm.`).
    pub fn check(&self, section: &str) -> Result<()> {
        let key = format!("{section}ntasks");
        if self.ntasks == Some(0) {
            return Err(LorsError::invalid(key, "needs at least 1 process"));
        }
        if self.ranks() > 1 && !cfg!(feature = "mpi") {
            return Err(LorsError::invalid(
                key,
                format!(
                    "{} ranks per job need a lors built with MPI: `cargo build --release \
                     --features mpi` (this one was built without it)",
                    self.ranks()
                ),
            ));
        }
        Ok(())
    }
}

/// A job's state as SLURM names it (`PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `TIMEOUT`,
/// `PREEMPTED`, `CANCELLED`, `NODE_FAIL`, `OUT_OF_MEMORY`...) and, while it waits, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    pub state: String,
    pub reason: Option<String>,
}

impl JobState {
    /// Whether the job is still queued or running (its process may still write).
    pub fn is_active(&self) -> bool {
        matches!(
            self.state.as_str(),
            "PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING" | "SUSPENDED" | "REQUEUED"
        ) || self.state.starts_with("RESV_DEL_HOLD")
    }

    /// Whether its process runs (not queued, held or ended).
    pub fn is_running(&self) -> bool {
        matches!(self.state.as_str(), "RUNNING" | "COMPLETING")
    }

    /// As a narrow column shows it: `PD Resources` for a pending job (squeue's
    /// abbreviation and its reason), else the state.
    pub fn short(&self) -> String {
        match &self.reason {
            Some(r) if self.state == "PENDING" => format!("PD {r}"),
            _ if self.state == "PENDING" => "PD".into(),
            _ => self.state.clone(),
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            Some(r) if self.state == "PENDING" => write!(f, "PENDING ({r})"),
            _ => f.write_str(&self.state),
        }
    }
}

/// A SLURM command's output, or a clear error: not on the PATH, or its own message.
fn run(program: &str, args: &[OsString], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        LorsError::invalid(
            "slurm",
            format!("cannot run `{program}` ({e}): is SLURM's client on the PATH?"),
        )
    })?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .map_err(|e| LorsError::invalid("slurm", format!("{program}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LorsError::invalid("slurm", format!("{program}: {e}")))?;
    if !out.status.success() {
        let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(LorsError::invalid(
            "slurm",
            format!("{program} refused: {message}"),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The batch script of a job: the setup line, then the launcher (if any) starting this `lors`
/// binary with `args`.
fn batch_script(settings: &SlurmSettings, args: &[OsString]) -> Result<String> {
    let exe = std::env::current_exe().map_err(|e| LorsError::io(Path::new("lors"), e))?;
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    let command: Vec<String> = std::iter::once(exe.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(quote)
        .collect();
    let setup = settings.setup.as_deref().unwrap_or("");
    let line: Vec<&str> = std::iter::once(settings.launcher())
        .filter(|l| !l.is_empty())
        .chain(command.iter().map(String::as_str))
        .collect();
    Ok(format!("#!/bin/sh\n{setup}\nexec {}\n", line.join(" ")))
}

/// Submit `lors <args>` as a job named `name`, its output to `log`, working in `dir`; its
/// job id.
pub fn submit(
    settings: &SlurmSettings,
    name: &str,
    args: &[OsString],
    log: &Path,
    dir: &Path,
) -> Result<String> {
    settings.check("")?;
    let mut sbatch: Vec<OsString> = vec![
        "--parsable".into(),
        format!("--job-name={name}").into(),
        "--output".into(),
        log.into(),
        "--chdir".into(),
        dir.into(),
    ];
    let options = [
        ("--partition", settings.partition.clone()),
        ("--gres", settings.gres.clone()),
        ("--time", settings.time.clone()),
        (
            "--cpus-per-task",
            settings.cpus_per_task.map(|n| n.to_string()),
        ),
        ("--mem", settings.mem.clone()),
        ("--account", settings.account.clone()),
        ("--qos", settings.qos.clone()),
        ("--ntasks", settings.ntasks.map(|n| n.to_string())),
    ];
    for (flag, value) in options {
        if let Some(v) = value {
            sbatch.push(format!("{flag}={v}").into());
        }
    }
    sbatch.extend(settings.extra_args.iter().map(OsString::from));
    let out = run("sbatch", &sbatch, Some(&batch_script(settings, args)?))?;
    // `--parsable` prints `id` or `id;cluster`.
    let id = out.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(LorsError::invalid(
            "slurm",
            format!("sbatch printed no job id: {out:?}"),
        ));
    }
    Ok(id)
}

/// The states of `ids`: from `squeue` while queued or running, else from `scontrol` while the
/// controller still remembers them, else from `sacct` where the cluster keeps accounting. A job
/// none of them knows is left out (long gone).
pub fn states(ids: &[String]) -> Result<HashMap<String, JobState>> {
    let mut out = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let list = ids.join(",");
    let args: Vec<OsString> = ["-h", "-o", "%i|%T|%r", "-j", &list]
        .iter()
        .map(OsString::from)
        .collect();
    // squeue refuses a list with an id it no longer knows; then each is asked alone. Any
    // other refusal (a controller too busy to answer) is an error, not a job gone.
    let queued = match run("squeue", &args, None) {
        Ok(text) => text,
        Err(e) if unknown_job(&e) => String::new(),
        Err(e) => return Err(e),
    };
    for line in queued.lines() {
        let mut parts = line.split('|');
        if let (Some(id), Some(state), reason) = (parts.next(), parts.next(), parts.next()) {
            let reason = reason.filter(|r| !r.is_empty() && *r != "None");
            out.insert(
                id.trim().to_string(),
                JobState {
                    state: state.to_string(),
                    reason: reason.map(String::from),
                },
            );
        }
    }
    let missing: Vec<&String> = ids.iter().filter(|id| !out.contains_key(*id)).collect();
    for id in missing {
        if let Some(state) = remembered(id)? {
            out.insert(id.clone(), state);
        }
    }
    let forgotten: Vec<&str> = ids
        .iter()
        .filter(|id| !out.contains_key(*id))
        .map(String::as_str)
        .collect();
    out.extend(accounted(&forgotten));
    Ok(out)
}

/// The final states `sacct` recorded for `ids`; none where the cluster keeps no accounting
/// (`sacct` then fails: "Slurm accounting storage is disabled").
fn accounted(ids: &[&str]) -> HashMap<String, JobState> {
    if ids.is_empty() {
        return HashMap::new();
    }
    let list = ids.join(",");
    let args: Vec<OsString> = ["-n", "-P", "-X", "-o", "JobID,State", "-j", &list]
        .iter()
        .map(OsString::from)
        .collect();
    run("sacct", &args, None)
        .map(|text| parse_sacct(&text))
        .unwrap_or_default()
}

/// `sacct -n -P -o JobID,State` rows (`12|COMPLETED`, `13|CANCELLED by 0`) by job id.
fn parse_sacct(text: &str) -> HashMap<String, JobState> {
    text.lines()
        .filter_map(|line| {
            let (id, state) = line.split_once('|')?;
            let state = state.split_whitespace().next()?;
            Some((
                id.trim().to_string(),
                JobState {
                    state: state.to_string(),
                    reason: None,
                },
            ))
        })
        .collect()
}

/// Whether `e` is a SLURM client's refusal (it ran and said no, as a busy controller does),
/// not a client that cannot run at all.
pub fn refused(e: &LorsError) -> bool {
    e.to_string().contains(" refused: ")
}

/// Whether a SLURM client refused only because it does not know a job id.
fn unknown_job(e: &LorsError) -> bool {
    e.to_string().contains("Invalid job id")
}

/// A job's state from `scontrol show job` (which knows ended jobs for a while); none when
/// the controller has forgotten it.
fn remembered(id: &str) -> Result<Option<JobState>> {
    let args: Vec<OsString> = ["show", "job", "-o", id]
        .iter()
        .map(OsString::from)
        .collect();
    let text = match run("scontrol", &args, None) {
        Ok(text) => text,
        Err(e) if unknown_job(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(String::from)
    };
    Ok(field("JobState=").map(|state| JobState {
        state,
        reason: field("Reason=").filter(|r| r != "None"),
    }))
}

/// The ids of jobs named `name` that are queued or running.
pub fn active_jobs_named(name: &str) -> Result<Vec<String>> {
    let args: Vec<OsString> = ["-h", "-o", "%i", "-n", name]
        .iter()
        .map(OsString::from)
        .collect();
    Ok(run("squeue", &args, None)?
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Send `signal` (`TERM`) to a job's processes, the batch script (which `exec`s lors)
/// included; the job goes on if they do.
pub fn signal(id: &str, signal: &str) -> Result<()> {
    let args: Vec<OsString> = [
        "--full".to_string(),
        format!("--signal={signal}"),
        id.into(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    run("scancel", &args, None).map(|_| ())
}

/// Let a job submitted on hold (`--hold` in `extra_args`) start.
pub fn release(id: &str) -> Result<()> {
    let args: Vec<OsString> = ["release", id].iter().map(OsString::from).collect();
    run("scontrol", &args, None).map(|_| ())
}

/// Settings from `key=value` pairs (`partition=gpu`, `cpus_per_task=8`), as the CLI gives
/// them; errors name `--slurm-set`.
pub fn settings_from_pairs(pairs: &[String]) -> Result<SlurmSettings> {
    let mut text = String::new();
    for pair in pairs {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            LorsError::invalid("--slurm-set", format!("`{pair}` is not key=value"))
        })?;
        // Numbers, lists and quoted strings are TOML; anything else is a string.
        let toml_already = value.parse::<u32>().is_ok() || value.starts_with(['[', '"']);
        let value = if toml_already {
            value.to_string()
        } else {
            format!("{value:?}")
        };
        text.push_str(&format!("{} = {value}\n", key.trim()));
    }
    toml::from_str(&text).map_err(|e| LorsError::invalid("--slurm-set", e.message().to_string()))
}

/// Cancel a job (SLURM's SIGTERM to a running one, then SIGKILL after its grace time).
pub fn cancel(id: &str) -> Result<()> {
    run("scancel", &[OsString::from(id)], None).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sacct_rows_give_each_job_its_final_state() {
        let states = parse_sacct("12|COMPLETED\n13|CANCELLED by 0\n14|TIMEOUT\n\n");
        assert_eq!(states["12"].state, "COMPLETED");
        assert_eq!(states["13"].state, "CANCELLED");
        assert_eq!(states["14"].state, "TIMEOUT");
        assert_eq!(states.len(), 3);
        assert!(states
            .values()
            .all(|s| s.reason.is_none() && !s.is_active()));
    }

    /// The last line of a job's script: the launcher (if any), then `lors` and its arguments.
    fn exec_line(settings: &str) -> String {
        let settings: SlurmSettings = toml::from_str(settings).unwrap();
        let script = batch_script(&settings, &["train".into()]).unwrap();
        let line = script.lines().last().unwrap().to_string();
        let exe = std::env::current_exe().unwrap();
        line.replace(&format!("'{}'", exe.display()), "LORS")
    }

    #[test]
    fn jobs_of_several_tasks_start_their_ranks_through_the_launcher() {
        assert_eq!(exec_line(""), "exec LORS 'train'");
        assert_eq!(exec_line("ntasks = 1"), "exec LORS 'train'");
        assert_eq!(exec_line("ntasks = 4"), "exec srun --mpi=pmix LORS 'train'");
        let mpirun = "ntasks = 4\nlauncher = \"mpirun -x FOO\"";
        assert_eq!(exec_line(mpirun), "exec mpirun -x FOO LORS 'train'");
        let zero: SlurmSettings = toml::from_str("ntasks = 0").unwrap();
        let err = zero.check("sweep.slurm.").unwrap_err().to_string();
        assert!(err.contains("sweep.slurm.ntasks"), "{err}");
    }
}
