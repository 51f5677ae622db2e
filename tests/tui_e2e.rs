//! The real `lors` binary in a terminal (tmux, 80x24): launch the bundled default from Setup,
//! watch the loss panel fill and the run finish, quit, and check the run directory; and a
//! run that outlives the TUI that started it is re-attached by the next one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lors::train::{ControlRequest, Profile, RunDir, RunState};

struct Tmux {
    socket: String,
    session: &'static str,
}

impl Tmux {
    fn start(session: &'static str, cwd: &Path, args: &[&str]) -> Self {
        Self::start_with_env(session, cwd, &[], args)
    }

    /// [`start`](Self::start) with `env` set for the program.
    fn start_with_env(
        session: &'static str,
        cwd: &Path,
        env: &[(&str, &Path)],
        args: &[&str],
    ) -> Self {
        let socket = format!("lors-e2e-{}-{session}", std::process::id());
        let mut cmd = Command::new("tmux");
        cmd.args([
            "-L",
            &socket,
            "new-session",
            "-d",
            "-x",
            "80",
            "-y",
            "24",
            "-s",
            session,
        ]);
        for (name, value) in env {
            cmd.arg("-e").arg(format!("{name}={}", value.display()));
        }
        cmd.arg("-c")
            .arg(cwd)
            .arg(env!("CARGO_BIN_EXE_lors"))
            .args(args);
        assert!(cmd.status().expect("tmux must be installed").success());
        Self { socket, session }
    }

    fn send(&self, keys: &str) {
        Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", self.session, keys])
            .status()
            .unwrap();
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", self.session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session", "-t", self.session])
            .status()
            .unwrap()
            .success()
    }

    fn wait_for(&self, what: &str, secs: u64) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "no {what:?} on screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The demo profile with absolute paths and `steps` steps, written into `dir`.
fn demo_profile(dir: &Path, steps: usize) -> PathBuf {
    let mut p = Profile::load(
        &repo().join("profiles/demo.toml"),
        &[lors::train::Override::new("train.max_steps", steps as i64)],
    )
    .unwrap();
    p.resolve_paths(&repo());
    p.train.eval_every = 4;
    p.train.save_every = 0;
    let path = dir.join("profile.toml");
    std::fs::write(&path, p.to_toml()).unwrap();
    path
}

/// `lors tui --runs-dir RUNS --profile PROFILE` and `extra` arguments.
fn tui_args<'a>(runs: &'a Path, profile: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "tui",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--profile",
        profile.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args
}

fn only_run(runs: &Path) -> RunDir {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("profile.toml").is_file())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    RunDir::open(&dirs[0]).unwrap()
}

/// Keep an 80x24 capture of a view next to the test binaries (`target/tmp/tui-screens/`).
fn keep_screen(name: &str, screen: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tui-screens");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.txt")), screen).unwrap();
}

#[test]
fn launch_watch_finish_and_quit_in_a_real_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let profiles = tmp.path().join("profiles");
    let stats = tmp.path().join("stats.json");
    let profile = demo_profile(tmp.path(), 8);
    let assets = repo().join("assets");
    let tui = Tmux::start(
        "e2e",
        &repo(),
        &[
            "tui",
            "--runs-dir",
            runs.to_str().unwrap(),
            "--profile",
            profile.to_str().unwrap(),
            "--assets-dir",
            assets.to_str().unwrap(),
            "--profiles-dir",
            profiles.to_str().unwrap(),
            "--stats",
            stats.to_str().unwrap(),
        ],
    );
    tui.wait_for("ready to launch", 30);
    // Pick the bundled model and dataset from their lists.
    tui.send("Enter");
    let screen = tui.wait_for("pick model", 10);
    assert!(screen.contains("demo-model [assets]"), "{screen}");
    keep_screen("setup-picker", &screen);
    tui.send("Enter");
    // PgDn: the next section's first key, `data.train`.
    tui.send("NPage");
    tui.send("Enter");
    let screen = tui.wait_for("pick data.train", 10);
    assert!(screen.contains("train.jsonl [assets]"), "{screen}");
    tui.send("Enter");
    // The picker closes (Setup's footer is back), then the data's check comes in.
    tui.wait_for("l/F5 launch", 10);
    let screen = tui.wait_for("ready to launch", 30);
    assert!(
        screen.contains("unstructured 50.0% sparse") && screen.contains("sequences of 64"),
        "{screen}"
    );
    keep_screen("setup", &screen);
    tui.send("l");
    let screen = tui.wait_for("finished step 8/8", 180);
    assert!(
        screen.contains("tok/s")
            && screen.contains("step 8: eval loss")
            && screen.contains("zero pattern kept on all 14 layers"),
        "{screen}"
    );
    keep_screen("run", &screen);
    tui.send("3");
    tui.send("Space");
    let screen = tui.wait_for("loss of the marked runs", 10);
    assert!(screen.contains("finished"), "{screen}");
    keep_screen("runs", &screen);
    tui.send("5");
    tui.send("w");
    tui.send("e2e-saved");
    tui.send("Enter");
    tui.wait_for("saved", 10);
    tui.send("5");
    let screen = tui.wait_for("e2e-saved", 10);
    keep_screen("profiles", &screen);
    assert!(Profile::load(&profiles.join("e2e-saved.toml"), &[]).is_ok());
    tui.send("?");
    keep_screen("help", &tui.wait_for("load into Setup", 10));
    tui.send("x");
    tui.send("q");
    let start = Instant::now();
    while tui.alive() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the TUI did not quit"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = only_run(&runs);
    assert_eq!(run.read_status().unwrap().state, RunState::Finished);
    let train_rows = run
        .read_metrics()
        .unwrap()
        .iter()
        .filter(|r| matches!(r, lors::train::MetricRow::Train { .. }))
        .count();
    assert_eq!(train_rows, 8);
    assert!(run.path.join("merged/sparsity.json").is_file());
    // Redraws are capped at 10 per second.
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let (draws, secs) = (
        stats["draws"].as_f64().unwrap(),
        stats["seconds"].as_f64().unwrap(),
    );
    eprintln!("redraws: {draws} in {secs:.1} s");
    assert!(draws > 5.0 && draws / secs <= 10.5, "{stats}");
}

#[test]
fn a_run_outlives_its_tui_and_the_next_tui_reattaches() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let profile = demo_profile(tmp.path(), 100_000);
    let args = tui_args(&runs, &profile, &[]);
    let first = Tmux::start("first", &repo(), &args);
    first.wait_for("ready to launch", 30);
    first.send("l");
    first.wait_for("running step", 120);
    first.send("q");
    drop(first);
    let run = only_run(&runs);
    let step = run.read_status().unwrap().step;
    let start = Instant::now();
    while run.read_status().unwrap().step < step + 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the run stopped with its TUI"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = Tmux::start("second", &repo(), &args);
    second.send("3");
    let screen = second.wait_for("running", 30);
    // At 80 columns a long name keeps its start and its end, the start time, which tells
    // runs apart.
    let name = run.path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(screen.contains(&name[name.len() - 6..]), "{screen}");
    second.send("2");
    second.wait_for("running step", 30);
    run.request(ControlRequest::Stop).unwrap();
    second.wait_for("stopped step", 60);
    assert_eq!(run.read_status().unwrap().state, RunState::Stopped);
}

/// A run killed without a word (`kill -9`) shows as crashed in the Runs view, and `R` resumes
/// it there from its newest checkpoint: it trains again, past the step it died at.
#[test]
fn a_killed_run_is_resumed_from_the_workbench() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let profile = demo_profile(tmp.path(), 100_000);
    let p = Profile::load(
        &profile,
        &["train.save_every=3"
            .parse::<lors::train::Override>()
            .unwrap()],
    )
    .unwrap();
    std::fs::write(&profile, p.to_toml()).unwrap();
    let t = Tmux::start("resume", &repo(), &tui_args(&runs, &profile, &[]));
    t.wait_for("ready to launch", 30);
    t.send("l");
    t.wait_for("running step", 120);
    let run = only_run(&runs);
    let start = Instant::now();
    while run.latest_checkpoint().is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(100));
    }
    let died = run.read_status().unwrap();
    let killed = Command::new("kill")
        .args(["-9", &died.pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    t.send("3");
    keep_screen("runs-crashed", &t.wait_for("crashed", 30));
    t.send("R");
    t.wait_for("running step", 120);
    let start = Instant::now();
    loop {
        let s = run.read_status().unwrap();
        if s.state == RunState::Running && s.pid != died.pid && s.step > died.step {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not resumed: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    run.request(ControlRequest::Stop).unwrap();
    t.wait_for("stopped step", 60);
}

/// With no checkout around it (an empty folder, a fresh cache), plain `lors` opens on the
/// bundled default, written under the cache, and launches into the folder's own `runs/`.
#[test]
fn the_workbench_starts_in_an_empty_folder_on_the_bundled_default() {
    let tmp = tempfile::tempdir().unwrap();
    let (here, cache) = (tmp.path().join("empty"), tmp.path().join("cache"));
    std::fs::create_dir_all(&here).unwrap();
    let t = Tmux::start_with_env("empty", &here, &[("XDG_CACHE_HOME", &cache)], &[]);
    keep_screen("empty-folder-setup", &t.wait_for("ready to launch", 60));
    t.send("l");
    t.wait_for("running step", 120);
    let run = only_run(&here.join("runs"));
    run.request(ControlRequest::Stop).unwrap();
    t.wait_for("stopped step", 60);
    t.send("q");
    let p = Profile::load(&run.profile_path(), &[]).unwrap();
    let bundled = cache.join("lors/bundled");
    assert!(
        p.model.path.starts_with(&bundled),
        "{}",
        p.model.path.display()
    );
    assert!(
        p.data.train.starts_with(&bundled),
        "{}",
        p.data.train.display()
    );
    assert_eq!(
        std::fs::read_dir(&here).unwrap().count(),
        1,
        "only runs/ is written here"
    );
}

/// A run whose profile has `[eval]` shows each task's accuracy before and after training in
/// the Run view's Accuracy panel (80x24); from the Runs view, `v` scores the finished run again
/// as a detached job whose report agrees with the run's own after-training rows.
#[test]
fn accuracy_before_and_after_and_a_background_evaluation() {
    use lors::eval::{read_progress, JobState, Task, TaskSuite};
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let path = demo_profile(tmp.path(), 4);
    let mut p = Profile::load(&path, &[]).unwrap();
    p.eval = Some(TaskSuite {
        tasks: vec![Task::Hellaswag, Task::ArcEasy],
        data_dir: Some(repo().join("assets/tasks")),
        limit: Some(5),
        ..TaskSuite::default()
    });
    std::fs::write(&path, p.to_toml()).unwrap();
    let tui = Tmux::start("accuracy", &repo(), &tui_args(&runs, &path, &[]));
    tui.wait_for("ready to launch", 30);
    tui.send("l");
    let screen = tui.wait_for("finished step 4/4", 180);
    let screen = if screen.contains("arc_easy") {
        screen
    } else {
        tui.wait_for("arc_easy", 10)
    };
    assert!(
        screen.contains("Accuracy (before -> after)")
            && screen.contains("mean")
            && screen.contains("hellaswag")
            && screen.contains(" -> ."),
        "{screen}"
    );
    keep_screen("run-accuracy", &screen);
    let run = only_run(&runs);
    tui.send("3");
    tui.send("v");
    tui.wait_for("evaluating 2 tasks", 10);
    let eval_dir = run.path.join("eval");
    let start = Instant::now();
    let job = loop {
        let progress = std::fs::read_dir(&eval_dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with(".progress.json"));
        if let Some(job) = progress.and_then(|p| read_progress(&p).ok()) {
            if job.state != JobState::Running {
                break job;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the evaluation did not end"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(job.state, JobState::Finished, "{job:?}");
    let screen = tui.wait_for("finished", 10);
    keep_screen("runs-accuracy", &screen);
    let report: lors::eval::EvalReport =
        serde_json::from_str(&std::fs::read_to_string(&job.report).unwrap()).unwrap();
    let after: Vec<(Task, f64)> = run
        .read_metrics()
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            lors::train::MetricRow::Task {
                stage: lors::train::EvalStage::After,
                score,
                ..
            } => Some((score.task, score.acc.value)),
            _ => None,
        })
        .collect();
    let job_scores: Vec<(Task, f64)> = report.tasks.iter().map(|t| (t.task, t.acc.value)).collect();
    assert_eq!(job_scores, after);
}

/// The sweep a run directory folder holds (the only one).
fn only_sweep(runs: &Path) -> lors::sweep::Sweep {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("state.json").is_file())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    lors::sweep::Sweep::open(&dirs[0]).unwrap()
}

/// Define a 2 ranks × 3 learning rates sweep in the TUI (80x24) on the bundled demo, launch
/// it, watch its trials run one at a time with some stopped early, sort them by best
/// validation loss, promote the winner to a profile, quit, and find the sweep intact in a new
/// TUI.
#[test]
fn a_sweep_defined_watched_sorted_and_promoted_in_a_real_terminal() {
    use lors::sweep::TrialState;
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let profiles = tmp.path().join("profiles");
    let profile = demo_profile(tmp.path(), 32);
    let args = tui_args(
        &runs,
        &profile,
        &["--profiles-dir", profiles.to_str().unwrap()],
    );
    let tui = Tmux::start("sweep", &repo(), &args);
    tui.wait_for("ready to launch", 30);
    tui.send("S");
    let screen = tui.wait_for("new sweep over the Setup", 10);
    assert!(
        screen.contains("< adapter.rank >")
            && screen.contains("2, 4")
            && screen.contains("ready: l"),
        "{screen}"
    );
    keep_screen("sweep-form", &screen);
    tui.send("l");
    tui.wait_for("running", 60);
    // At most one trial at a time on the CPU, while the TUI shows them running.
    let start = Instant::now();
    let mut watched = None;
    loop {
        let sweep = only_sweep(&runs);
        assert!(sweep.state.count(TrialState::Running) <= 1, "concurrency 1");
        if sweep.state.is_done() {
            break;
        }
        let screen = tui.screen();
        if watched.is_none() && screen.contains("1 running") && screen.contains("finished") {
            watched = Some(screen);
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the sweep did not end"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    keep_screen(
        "sweep-running",
        &watched.expect("a screen with trials running"),
    );
    let sweep = only_sweep(&runs);
    assert_eq!(sweep.state.trials.len(), 6);
    assert!(
        sweep.state.count(TrialState::StoppedEarly) >= 1,
        "{:?}",
        sweep.state.trials
    );
    let screen = tui.wait_for("6/6 done", 10);
    assert!(screen.contains("stopped early"), "{screen}");
    // Sort by best validation loss: s steps through trial, rank, lr, state, val.
    for _ in 0..5 {
        tui.send("s");
    }
    let screen = tui.wait_for("val/ppl^", 10);
    keep_screen("sweep-sorted", &screen);
    let rows = lors::sweep::summary::rows(&sweep.state);
    let best = &rows[0];
    let best_row = screen
        .lines()
        .position(|l| l.contains(&format!("t{:03}", best.index)))
        .expect("the winner is listed");
    let header = screen.lines().position(|l| l.contains("val/ppl^")).unwrap();
    assert_eq!(best_row, header + 1, "the winner comes first:\n{screen}");
    // Promote it (the selected first row) to a profile.
    tui.send("w");
    tui.wait_for("save profile as", 10);
    tui.send("sweep-best");
    tui.send("Enter");
    tui.wait_for("saved", 10);
    let promoted = Profile::load(&profiles.join("sweep-best.toml"), &[]).unwrap();
    let winner = Profile::load(
        &sweep.state.trials[best.index].run_dir.join("profile.toml"),
        &[],
    )
    .unwrap();
    assert_eq!(
        (promoted.adapter.rank, promoted.optim.lr),
        (winner.adapter.rank, winner.optim.lr)
    );
    tui.send("q");
    drop(tui);
    // A new TUI finds the sweep as it was.
    let again = Tmux::start("sweep-again", &repo(), &args);
    again.wait_for("ready to launch", 30);
    again.send("4");
    let screen = again.wait_for("6/6 done", 10);
    assert!(screen.contains("stopped early"), "{screen}");
    keep_screen("sweep-reopened", &screen);
    again.send("q");
}

/// The workbench on a login node watching a sweep on SLURM (a real one-node cluster, started
/// by `scripts/slurm-up.sh` when it is not up): queued trials say PENDING and why, running
/// ones run, and a stop asked from the workbench is honoured by the trial's job.
#[test]
fn the_workbench_follows_a_sweep_on_slurm_and_stops_a_trial() {
    let up = Command::new(repo().join("scripts/slurm-up.sh"))
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let sweep_text = std::fs::read_to_string(repo().join("profiles/sweep-demo.toml"))
        .unwrap()
        .replace("max_steps = 60", "max_steps = 3000")
        .replace("concurrency = 1 ", "concurrency = 3 ")
        .replace("[sweep]\n", "[sweep]\nexecutor = \"slurm\"\n");
    let sweep_profile = tmp.path().join("sweep.toml");
    std::fs::write(
        &sweep_profile,
        format!("{sweep_text}\n[sweep.slurm]\ncpus_per_task = {cpus}\n"),
    )
    .unwrap();
    let dir = runs.join("cluster");
    let sweep = Command::new(env!("CARGO_BIN_EXE_lors"))
        .args(["sweep", "--profile"])
        .arg(&sweep_profile)
        .arg("--out")
        .arg(&dir)
        .current_dir(repo())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Whatever happens, leave nothing running or queued for the next test.
    struct Cleanup(std::process::Child, PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let state = std::fs::read_to_string(self.1.join("state.json")).unwrap_or_default();
            let state: Option<lors::sweep::SweepState> = serde_json::from_str(&state).ok();
            for job in state
                .iter()
                .flat_map(|s| &s.trials)
                .filter_map(|t| t.job.as_ref())
            {
                let _ = Command::new("scancel").arg(&job.id).status();
            }
        }
    }
    let _cleanup = Cleanup(sweep, dir.clone());
    let profile = demo_profile(tmp.path(), 8);
    let args = tui_args(&runs, &profile, &[]);
    let tui = Tmux::start("slurm", &repo(), &args);
    tui.wait_for("ready to launch", 30);
    tui.send("4");
    let screen = tui.wait_for("PD Resources", 60);
    keep_screen("slurm-sweep-queued", &screen);
    let screen = tui.wait_for("running", 60);
    assert!(screen.contains("cluster"), "{screen}");
    // The first trial runs (it took the node's CPUs): open it and stop it.
    tui.send("Enter");
    tui.wait_for("running step", 60);
    tui.send("s");
    tui.wait_for("y: yes", 10);
    tui.send("y");
    let screen = tui.wait_for("stopped step", 60);
    keep_screen("slurm-trial-stopped", &screen);
    let state: lors::sweep::SweepState =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let stopped = RunDir::open(&state.trials[0].run_dir)
        .unwrap()
        .read_status()
        .unwrap();
    assert_eq!(stopped.state, lors::train::RunState::Stopped);
    assert!(stopped.slurm_job.is_some(), "{stopped:?}");
}
