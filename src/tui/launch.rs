//! Starting `lors` subcommands (train, replay, merge, eval) as detached processes in their own
//! session, so they survive the TUI quitting and the SSH connection dropping; the TUI then
//! only watches their directories.

use std::path::{Path, PathBuf};

use crate::error::{LorsError, Result};
use crate::io::spawn_detached;
use crate::train::run_dir::now_s;
use crate::train::{Profile, RunDir, RunsFolder};

/// Milliseconds since the epoch: distinct names for a run's logs and evaluations.
fn stamp() -> String {
    ((now_s() * 1000.0) as u64).to_string()
}

/// Write `text` to `.launch/<name>.toml` in `runs` and start `lors <command> --profile FILE
/// <out_flag> <out>` detached, its output going to `.launch/<name>.log`.
fn launch_profile(
    runs: &RunsFolder,
    out: &Path,
    text: &str,
    command: &str,
    out_flag: &str,
) -> Result<()> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let launch_dir = runs.launch_dir();
    std::fs::create_dir_all(&launch_dir).map_err(|e| LorsError::io(&launch_dir, e))?;
    let profile_path = runs.launch_file(&name, "toml");
    crate::io::write_atomic(&profile_path, text.as_bytes())?;
    spawn_detached(
        &[
            command.into(),
            "--profile".into(),
            profile_path.into(),
            out_flag.into(),
            out.into(),
        ],
        &runs.launch_file(&name, "log"),
    )
}

/// Launch `profile` into a new run directory under `runs_dir` (its `train.run_name`, else
/// its default name); returns that directory. The profile and the process's output go to
/// `runs_dir/.launch/<run>.{toml,log}`.
pub fn launch(profile: &Profile, runs_dir: &Path) -> Result<PathBuf> {
    let runs = RunsFolder::new(runs_dir);
    let run_dir = runs.new_run(profile);
    launch_profile(&runs, &run_dir, &profile.to_toml(), "train", "--run-dir")?;
    Ok(run_dir)
}

/// Start `lors sweep` over `base` with `sweep` as its `[sweep]` section, in a new sweep
/// directory under `runs_dir` named `name` (`-2`, ... when taken; default
/// `sweep-<model>-<time>`; its trials go beside it); returns that directory. The sweep
/// profile and the sweep process's output go to `runs_dir/.launch/<sweep>.{toml,log}`.
pub fn sweep(
    base: &Profile,
    sweep: &toml::Table,
    name: Option<&str>,
    runs_dir: &Path,
) -> Result<PathBuf> {
    let runs = RunsFolder::new(runs_dir);
    let dir = match name {
        Some(n) => runs.fresh(n),
        None => runs.new_sweep(base),
    };
    let text = crate::sweep::sweep_profile_text(base, sweep)?;
    launch_profile(&runs, &dir, &text, "sweep", "--out")?;
    Ok(dir)
}

/// Resume the sweep in `dir` whose `lors sweep` is gone (`lors sweep --resume`); returns its
/// log, `<dir>/resume-<stamp>.log`.
pub fn resume_sweep(dir: &Path) -> Result<PathBuf> {
    resume("sweep", dir)
}

/// Resume the stopped or crashed run in `dir` from its newest checkpoint (`lors train
/// --resume`); returns its log, `<dir>/resume-<stamp>.log`.
pub fn resume_run(dir: &Path) -> Result<PathBuf> {
    resume("train", dir)
}

/// `lors <command> --resume <dir>`, detached, logging to `<dir>/resume-<stamp>.log`.
fn resume(command: &str, dir: &Path) -> Result<PathBuf> {
    let log = RunDir::at(dir).resume_log_path(&stamp());
    spawn_detached(&[command.into(), "--resume".into(), dir.into()], &log)?;
    Ok(log)
}

/// Replay `run` (same profile and seed) into a new run beside it; `lors replay` compares the
/// curves bit for bit when done and reports the result in its log.
pub fn replay(run: &Path, runs_dir: &Path) -> Result<PathBuf> {
    let runs = RunsFolder::new(runs_dir);
    let out = runs.new_replay(run);
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    spawn_detached(
        &[
            "replay".into(),
            run.into(),
            "--out".into(),
            out.clone().into(),
        ],
        &runs.launch_file(&name, "log"),
    )?;
    Ok(out)
}

/// Write `lors report` of the sweep in `dir` into `<dir>/report/`, detached; returns the
/// report's Markdown file and the log, `<dir>/report.log`.
pub fn report(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (out, log) = (dir.join("report"), dir.join("report.log"));
    spawn_detached(
        &[
            "report".into(),
            dir.into(),
            "--out".into(),
            out.clone().into(),
        ],
        &log,
    )?;
    Ok((out.join("report.md"), log))
}

/// Export `run`'s merged model to `<run>/merged`; returns the log file.
pub fn merge(run: &Path) -> Result<PathBuf> {
    let log = RunDir::at(run).merge_log_path();
    spawn_detached(&["merge".into(), "--run".into(), run.into()], &log)?;
    Ok(log)
}

/// Score `suite` on a finished run in the background: its merged export when there is one,
/// else its newest checkpoint's adapter on the base model. Everything goes to
/// `<run>/eval/eval-<stamp>.{toml,json,progress.json,log}`; returns the progress file.
pub fn evaluate(run: &Path, suite: &crate::eval::TaskSuite) -> Result<PathBuf> {
    let dir = RunDir::at(run).eval_path();
    std::fs::create_dir_all(&dir).map_err(|e| LorsError::io(&dir, e))?;
    let name = format!("eval-{}", stamp());
    let suite_path = dir.join(format!("{name}.toml"));
    let text =
        toml::to_string_pretty(suite).map_err(|e| LorsError::parse(&suite_path, e.to_string()))?;
    crate::io::write_atomic(&suite_path, text.as_bytes())?;
    let merged = RunDir::at(run).merged_path();
    let model = if merged.join("config.json").is_file() {
        merged
    } else {
        run.to_path_buf()
    };
    let progress = dir.join(format!("{name}.progress.json"));
    spawn_detached(
        &[
            "eval".into(),
            "--model".into(),
            model.into(),
            "--suite".into(),
            suite_path.into(),
            "--out".into(),
            dir.join(format!("{name}.json")).into(),
            "--progress".into(),
            progress.clone().into(),
        ],
        &dir.join(format!("{name}.log")),
    )?;
    Ok(progress)
}
