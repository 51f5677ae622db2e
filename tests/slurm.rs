//! The SLURM executor against a real SLURM: a one-node cluster on this machine, which
//! `scripts/slurm-up.sh` installs (Debian's slurm-wlm and munge) and starts when it is not up
//! (CI runs the script first; it needs root). The bundled demo sweep runs through
//! `executor = "slurm"` exactly as through `executor = "local"`; a sweep killed while its jobs
//! are queued and running resumes without running a trial twice; a trial whose job is
//! cancelled goes on from its checkpoint to the uninterrupted curve.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lors::sweep::{SweepState, TrialState};
use lors::train::run_dir::compare_metrics;
use lors::train::{RunDir, RunState};

#[path = "support/cluster.rs"]
mod cluster;
use cluster::{read_state, slurm_up, wait_run};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled demo sweep with `executor` in its `[sweep]`, `set` replacing lines of it, and
/// `tail` (tables such as `[sweep.slurm]`) after it, written into `dir`.
fn demo_sweep(dir: &Path, executor: &str, tail: &str, set: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(repo().join("profiles/sweep-demo.toml")).unwrap();
    for (from, to) in set {
        assert!(text.contains(from), "{from}");
        text = text.replace(from, to);
    }
    let text = text.replace(
        "[sweep]\n",
        &format!("[sweep]\nexecutor = \"{executor}\"\n"),
    );
    let text = format!("{text}\n{tail}");
    let path = dir.join(format!("sweep-{executor}.toml"));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn lors(args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lors"));
    cmd.args(args).current_dir(repo());
    cmd
}

fn sweep(profile: &Path, out: &Path) -> String {
    succeed(
        lors(&["sweep".as_ref(), "--profile".as_ref(), profile.as_os_str()])
            .arg("--out")
            .arg(out),
    )
}

/// `lors sweep` started in the background.
fn spawn_sweep(profile: &Path, out: &Path) -> std::process::Child {
    lors(&["sweep".as_ref(), "--profile".as_ref(), profile.as_os_str()])
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Run `cmd` to its end: its standard output, or a panic showing its errors.
fn succeed(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `lors train` of the demo profile into `dir` with `set` (`--set`s) and `extra` flags; what
/// it printed.
fn train_demo(dir: &Path, set: &[&str], extra: &[&str]) -> String {
    let demo = [
        "train".as_ref(),
        "--profile".as_ref(),
        "profiles/demo.toml".as_ref(),
    ];
    succeed(lors(&demo).args(set).arg("--run-dir").arg(dir).args(extra))
}

/// `lors train --resume DIR --slurm`.
fn resubmit(dir: &Path) -> String {
    succeed(&mut lors(&[
        "train".as_ref(),
        "--resume".as_ref(),
        dir.as_os_str(),
        "--slurm".as_ref(),
    ]))
}

/// Wait (at most `secs`) until the sweep's state satisfies `ready`.
fn wait_for(dir: &Path, secs: u64, what: &str, ready: impl Fn(&SweepState) -> bool) -> SweepState {
    let start = Instant::now();
    loop {
        if let Some(s) = read_state(dir).filter(|s| ready(s)) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(secs), "never {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every trial's train steps once each, in order: no trial ran twice.
fn assert_each_step_once(state: &SweepState) {
    for t in &state.trials {
        let steps: Vec<usize> = RunDir::open(&t.run_dir)
            .unwrap()
            .read_metrics()
            .unwrap()
            .iter()
            .filter_map(|r| match r {
                lors::train::MetricRow::Train { step, .. } => Some(*step),
                _ => None,
            })
            .collect();
        let expected: Vec<usize> = (1..=steps.len()).collect();
        assert_eq!(steps, expected, "t{:03}", t.trial.index);
    }
}

#[test]
fn the_demo_sweep_on_slurm_equals_the_local_one_bit_for_bit() {
    let _cluster = slurm_up();
    let tmp = tempfile::tempdir().unwrap();
    let local_dir = tmp.path().join("local/sw");
    let slurm_dir = tmp.path().join("slurm/sw");
    sweep(&demo_sweep(tmp.path(), "local", "", &[]), &local_dir);
    sweep(&demo_sweep(tmp.path(), "slurm", "", &[]), &slurm_dir);
    let (local, slurm) = (
        read_state(&local_dir).unwrap(),
        read_state(&slurm_dir).unwrap(),
    );
    assert_eq!(slurm.trials.len(), 6);
    let early = slurm.count(TrialState::StoppedEarly);
    assert!(early > 0 && early < 6, "ASHA stopped {early}");
    let mut jobs = std::collections::BTreeSet::new();
    for (l, s) in local.trials.iter().zip(&slurm.trials) {
        let job = s.job.as_ref().expect("a SLURM trial records its job");
        assert_eq!(job.state.state, "COMPLETED", "t{:03}", s.trial.index);
        jobs.insert(job.id.clone());
        assert_eq!((l.state, &l.note), (s.state, &s.note));
        let bits =
            |e: &[(usize, f64)]| e.iter().map(|(s, l)| (*s, l.to_bits())).collect::<Vec<_>>();
        assert_eq!(bits(&l.evals), bits(&s.evals), "t{:03}", s.trial.index);
        let rows = compare_metrics(
            &RunDir::open(&l.run_dir).unwrap(),
            &RunDir::open(&s.run_dir).unwrap(),
        )
        .unwrap_or_else(|e| panic!("t{:03}: {e}", s.trial.index));
        assert!(rows > 0);
    }
    // One job per trial: each ended exactly once.
    assert_eq!(jobs.len(), 6);
    assert_eq!(local.reports, slurm.reports);
    assert_each_step_once(&slurm);
}

/// `kill -SIG pid` (the test cluster's one node is this machine).
fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// A sweep process and the trial processes frozen under it; whatever happens, they are
/// woken and the sweep killed at the end (a failed test leaves no frozen job on the node).
struct Frozen {
    sweep: std::process::Child,
    pids: std::collections::BTreeSet<u32>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &pid in &self.pids {
            kill("CONT", pid);
        }
        let _ = self.sweep.kill();
        let _ = self.sweep.wait();
    }
}

/// A trial that early stopping stops but that does not answer (frozen with SIGSTOP while it
/// waits at its rung, so it cannot read its control file) gets SIGTERM from SLURM once
/// `stop_grace_s` has passed; woken, it checkpoints on that signal and ends, stopped early and
/// not resubmitted. Trials told to go on are woken at once.
#[test]
fn a_stopped_trial_that_does_not_answer_gets_sigterm_after_its_grace() {
    let _cluster = slurm_up();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sw");
    let set = [("concurrency = 1 ", "stop_grace_s = 1\nconcurrency = 1 ")];
    let mut run = Frozen {
        sweep: spawn_sweep(&demo_sweep(tmp.path(), "slurm", "", &set), &dir),
        pids: Default::default(),
    };
    // (trial, rung step, pid) of each trial frozen at a rung, until its verdict is in.
    let mut frozen: Vec<(usize, usize, u32)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut woken_by_term = std::collections::BTreeSet::new();
    let start = Instant::now();
    while run.sweep.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the sweep never ended"
        );
        let Some(state) = read_state(&dir) else {
            continue;
        };
        for t in &state.trials {
            let i = t.trial.index;
            let Some(status) = RunDir::open(&t.run_dir)
                .ok()
                .and_then(|r| r.read_status().ok())
            else {
                continue;
            };
            if status.state == RunState::Paused && seen.insert((i, status.step)) {
                run.pids.insert(status.pid);
                kill("STOP", status.pid);
                frozen.push((i, status.step, status.pid));
            }
        }
        frozen.retain(|&(i, step, pid)| {
            let told_on = state.reports.iter().any(|r| {
                r.trial == i
                    && r.step == step
                    && r.decision == lors::sweep::asha::Decision::Continue
            });
            let signalled = state.trials[i]
                .job
                .as_ref()
                .and_then(|j| j.signalled.clone());
            if signalled.is_some() {
                woken_by_term.insert(i);
            }
            let wake = told_on || signalled.is_some();
            if wake {
                kill("CONT", pid);
            }
            !wake
        });
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(run.sweep.wait().unwrap().success());
    let state = read_state(&dir).unwrap();
    assert!(
        !woken_by_term.is_empty(),
        "no frozen trial was stopped: {:?}",
        state.reports
    );
    for &i in &woken_by_term {
        let t = &state.trials[i];
        let job = t.job.as_ref().unwrap();
        let log = std::fs::read_to_string(dir.join(format!("t{i:03}.log"))).unwrap();
        let status = RunDir::open(&t.run_dir).unwrap().read_status().unwrap();
        let what = format!("t{i:03} {t:?}\n{status:?}\n{log}");
        assert_eq!(job.signalled.as_deref(), Some("TERM"), "{what}");
        assert_eq!(t.state, TrialState::StoppedEarly, "{what}");
        assert_eq!(job.state.state, "COMPLETED", "{what}");
        assert!(
            log.contains("signal: saving a checkpoint and stopping"),
            "the process never saw the signal: {what}"
        );
        assert_eq!(status.state, RunState::Stopped, "{what}");
        let rung = t.evals.last().unwrap().0;
        assert_eq!(status.step, rung, "t{i:03} trained past its rung");
    }
    let jobs: std::collections::BTreeSet<&str> = state
        .trials
        .iter()
        .map(|t| t.job.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(jobs.len(), 6, "a trial was submitted again");
    assert_each_step_once(&state);
}

/// Kill the sweep process while one job runs and others wait (3 at once on a 2-CPU node,
/// 2 CPUs each: one runs, two are queued), resume: the queued and running jobs are followed,
/// not submitted again, and every trial runs once.
#[test]
fn a_sweep_killed_with_jobs_queued_and_running_resumes_without_running_one_twice() {
    let _cluster = slurm_up();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sw");
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let tail = format!("[sweep.slurm]\ncpus_per_task = {cpus}\n");
    let set = [
        ("max_steps = 60", "max_steps = 200"),
        ("concurrency = 1 ", "concurrency = 3 "),
    ];
    let profile = demo_sweep(tmp.path(), "slurm", &tail, &set);
    let mut first = spawn_sweep(&profile, &dir);
    let in_flight = |s: &SweepState| {
        let job =
            |t: &&lors::sweep::runner::TrialRecord| t.job.as_ref().map(|j| j.state.state.clone());
        let states: Vec<String> = s.trials.iter().filter_map(|t| job(&t)).collect();
        states.iter().any(|s| s == "RUNNING") && states.iter().any(|s| s == "PENDING")
    };
    let killed = wait_for(&dir, 120, "a job running and one queued", in_flight);
    first.kill().unwrap();
    first.wait().unwrap();
    let followed: Vec<(usize, String)> = killed
        .trials
        .iter()
        .filter_map(|t| Some((t.trial.index, t.job.as_ref()?.id.clone())))
        .collect();
    succeed(&mut lors(&[
        "sweep".as_ref(),
        "--resume".as_ref(),
        dir.as_os_str(),
    ]));
    let state = read_state(&dir).unwrap();
    assert!(state.is_done());
    for (i, id) in followed {
        let job = state.trials[i].job.as_ref().unwrap();
        assert_eq!(&job.id, &id, "t{i:03} was submitted again");
    }
    for t in &state.trials {
        assert!(
            matches!(t.state, TrialState::Finished | TrialState::StoppedEarly),
            "t{:03} {}: {:?}",
            t.trial.index,
            t.state,
            t.note
        );
    }
    assert_each_step_once(&state);
}

/// `scancel` a running trial's job after its first checkpoint (SLURM cancels it: SIGTERM, the
/// run checkpoints and stops), or kill its process outright (the job FAILS, the run has no
/// chance to write): either way the sweep submits it again with `--resume`, and its curve is
/// the uninterrupted one (the same trial run locally).
#[test]
fn a_cancelled_or_killed_trial_resumes_from_its_checkpoint_to_the_uninterrupted_curve() {
    let _cluster = slurm_up();
    let tmp = tempfile::tempdir().unwrap();
    let one_trial = [
        ("max_steps = 60", "max_steps = 300"),
        ("adapter.rank = [4, 8]", "adapter.rank = [4]"),
        ("optim.lr = [5e-3, 2e-2, 5e-2]", "optim.lr = [2e-2]"),
        ("rungs = [20, 40]", "rungs = [280]"),
    ];
    let local_dir = tmp.path().join("local/sw");
    sweep(&demo_sweep(tmp.path(), "local", "", &one_trial), &local_dir);
    let local = read_state(&local_dir).unwrap();
    let local_run = RunDir::open(&local.trials[0].run_dir).unwrap();
    for (how, scancel) in [
        ("cancelled", &[][..]),
        ("killed", &["--full", "--signal=KILL"][..]),
    ] {
        let dir = tmp.path().join(how).join("sw");
        let profile = demo_sweep(&tmp.path().join(how), "slurm", "", &one_trial);
        let mut running = spawn_sweep(&profile, &dir);
        // After its first checkpoint (every 20 steps), interrupt the job.
        let checkpointed = |s: &SweepState| {
            let run = RunDir::open(&s.trials[0].run_dir);
            run.is_ok_and(|r| {
                r.latest_checkpoint().is_some() && r.read_status().is_ok_and(|s| s.step < 250)
            })
        };
        let before = wait_for(&dir, 120, "checkpointed", checkpointed);
        let job = before.trials[0].job.clone().unwrap();
        let out = Command::new("scancel")
            .args(scancel)
            .arg(&job.id)
            .status()
            .unwrap();
        assert!(out.success());
        assert!(running.wait().unwrap().success());
        let state = read_state(&dir).unwrap();
        let t = &state.trials[0];
        assert_eq!(t.state, TrialState::Finished, "{how}: {:?}", t.note);
        assert_ne!(
            t.job.as_ref().unwrap().id,
            job.id,
            "{how}: a new job went on"
        );
        compare_metrics(&local_run, &RunDir::open(&t.run_dir).unwrap())
            .unwrap_or_else(|e| panic!("{how}: {e}"));
        assert_each_step_once(&state);
    }
}

/// A partition the cluster does not have is sbatch's own refusal, naming the settings, and
/// no trial is left looking as if it ran; without SLURM's client the error says so.
#[test]
fn a_partition_the_cluster_lacks_and_a_missing_sbatch_are_clear_errors() {
    let _cluster = slurm_up();
    let tmp = tempfile::tempdir().unwrap();
    let profile = demo_sweep(
        tmp.path(),
        "slurm",
        "[sweep.slurm]\npartition = \"nope\"\n",
        &[],
    );
    let dir = tmp.path().join("sw");
    let out = lors(&["sweep".as_ref(), "--profile".as_ref(), profile.as_os_str()])
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("slurm") && err.contains("sbatch refused") && err.contains("partition"),
        "{err}"
    );
    let state = read_state(&dir).unwrap();
    assert!(state
        .trials
        .iter()
        .all(|t| t.state == TrialState::Pending && t.job.is_none()));
    // No SLURM client on the PATH (only the directory of `env`).
    let out = lors(&["sweep".as_ref(), "--resume".as_ref(), dir.as_os_str()])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is SLURM's client on the PATH?"), "{err}");
    // A job no one knows any more (this cluster keeps no accounting: `sacct` refuses) is no
    // error, only absent: the sweep takes it as gone and asks the run's own status.
    let gone = lors::slurm::states(&["999999".into()]).unwrap();
    assert!(gone.is_empty(), "{gone:?}");
}

/// `lors train --slurm` submits the run as a job, printing its directory and job id; the run
/// records its job, ends, and its curve is the local run's.
#[test]
fn a_single_run_submitted_to_slurm_trains_like_a_local_one() {
    let _cluster = slurm_up();
    let tmp = tempfile::tempdir().unwrap();
    let (cluster_dir, local_dir) = (tmp.path().join("on-slurm"), tmp.path().join("local"));
    let steps = ["--set", "train.max_steps=30"];
    let printed = train_demo(
        &cluster_dir,
        &steps,
        &["--slurm", "--slurm-set", "cpus_per_task=1"],
    );
    let job = printed
        .lines()
        .find_map(|l| l.strip_prefix("SLURM job: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id in {printed:?}"))
        .to_string();
    assert!(
        printed.contains(&cluster_dir.display().to_string()),
        "{printed}"
    );
    let run = RunDir::open(&cluster_dir).unwrap();
    let done = wait_run(&run, 120, "finished", |s| !s.state.is_active());
    assert_eq!(done.state, RunState::Finished, "{done:?}");
    assert_eq!(done.slurm_job, Some(job));
    train_demo(&local_dir, &steps, &[]);
    compare_metrics(&RunDir::open(&local_dir).unwrap(), &run).unwrap();
}

/// A job that ends before its run begins (here its setup line fails, as when the compute
/// node cannot see the sweep's folder) fails its trial with SLURM's state and the question to
/// ask, instead of leaving it running forever.
#[test]
fn a_job_that_ends_before_its_run_begins_fails_its_trial_clearly() {
    let _cluster = slurm_up();
    let tmp = tempfile::tempdir().unwrap();
    let one_trial = [
        ("adapter.rank = [4, 8]", "adapter.rank = [4]"),
        ("optim.lr = [5e-3, 2e-2, 5e-2]", "optim.lr = [2e-2]"),
    ];
    let tail = "[sweep.slurm]\nsetup = \"exit 3\"\n";
    let dir = tmp.path().join("sw");
    sweep(&demo_sweep(tmp.path(), "slurm", tail, &one_trial), &dir);
    let state = read_state(&dir).unwrap();
    let t = &state.trials[0];
    assert_eq!(t.state, TrialState::Failed);
    let note = t.note.as_deref().unwrap_or_default();
    assert!(
        note.contains("ended (FAILED) before the run began") && note.contains("share"),
        "{note}"
    );
}

/// A single run cancelled on the cluster after its first checkpoint is resubmitted with
/// `lors train --resume DIR --slurm` and ends on the uninterrupted curve.
#[test]
fn a_cancelled_single_run_resubmits_and_ends_on_the_uninterrupted_curve() {
    let _cluster = slurm_up();
    let tmp = tempfile::tempdir().unwrap();
    let (dir, local) = (tmp.path().join("on-slurm"), tmp.path().join("local"));
    let set = [
        "--set",
        "train.max_steps=400",
        "--set",
        "train.save_every=20",
    ];
    train_demo(&dir, &set, &["--slurm"]);
    let run = RunDir::open(&dir).unwrap();
    let start = Instant::now();
    while run.latest_checkpoint().is_none() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    let job = run
        .read_status()
        .unwrap()
        .slurm_job
        .expect("the run names its job");
    succeed(Command::new("scancel").arg(&job));
    wait_run(&run, 120, "ended", |s| !s.process_alive());
    resubmit(&dir);
    let done = wait_run(&run, 180, "finished", |s| s.state == RunState::Finished);
    assert_ne!(done.slurm_job, Some(job), "a new job finished it");
    train_demo(&local, &set, &[]);
    compare_metrics(&RunDir::open(&local).unwrap(), &run).unwrap();
}

/// Stopping a run whose job still waits in the queue (the workbench's `s`) cancels the job
/// and records the run as stopped (the run cannot read its control file yet); resubmitted,
/// it trains from the start.
#[test]
fn stopping_a_queued_run_cancels_its_job_and_it_can_be_resubmitted() {
    let _cluster = slurm_up();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("queued");
    let later = [
        "--slurm",
        "--slurm-set",
        "extra_args=[\"--begin=now+1hour\"]",
    ];
    train_demo(&dir, &["--set", "train.max_steps=10"], &later);
    let run = RunDir::open(&dir).unwrap();
    let job = run.read_status().unwrap().slurm_job.unwrap();
    let said = run.stop().unwrap();
    assert!(
        said.contains(&format!("cancelled SLURM job {job}")),
        "{said}"
    );
    assert_eq!(run.read_status().unwrap().state, RunState::Stopped);
    let queue = succeed(Command::new("squeue").args(["-h", "-j", &job]));
    assert!(queue.trim().is_empty(), "{queue}");
    resubmit(&dir);
    wait_run(&run, 120, "finished", |s| s.state == RunState::Finished);
}
