//! Data and crash safety through the real binary: outputs never clobber what the user did not
//! ask to lose, signals checkpoint and stop a run, a dead run is found out, one process owns a
//! run, and a run killed with SIGKILL at random moments resumes to exactly the metrics of an
//! uninterrupted one.

#[path = "support/fixture.rs"]
mod fixture;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fixture::{fixture, profile, Fixture};
use lors::train::run_dir::reproducible;
use lors::train::{checkpoint, RunDir, RunState};
use rand::{Rng, SeedableRng};

fn lors() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lors"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed:\n{}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Write the fixture's profile with `key=value` overrides and return its path.
fn profile_file(f: &Fixture, name: &str, overrides: &[&str]) -> PathBuf {
    let path = f.root.join(format!("{name}.toml"));
    std::fs::write(&path, profile(f, overrides).to_toml()).unwrap();
    path
}

/// Names under `dir` (recursively) that are temporaries of an atomic write.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && (name.contains(".tmp-") || name.contains(".old-")) {
            found.push(p.clone());
        }
        if p.is_dir() {
            found.extend(temporaries(&p));
        }
    }
    found
}

/// Every metrics row of a run as JSON, without times and memory.
fn reproducible_rows(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| reproducible(&serde_json::from_str(l).unwrap()))
        .collect()
}

fn wait_for_train_rows(run: &Path, n: usize, child: &mut Child) {
    let start = Instant::now();
    loop {
        let rows = std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"kind\":\"train\""))
            .count();
        if rows >= n {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `lors train --profile p --run-dir run` in the background, output discarded.
fn spawn_train(p: &Path, run: &Path) -> Child {
    lors()
        .args(["train", "--profile"])
        .arg(p)
        .arg("--run-dir")
        .arg(run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[test]
fn outputs_never_clobber_inputs_or_existing_directories() {
    let f = fixture();
    let p = profile_file(
        &f,
        "short",
        &[
            "train.max_steps=2",
            "train.eval_every=0",
            "train.save_every=0",
        ],
    );
    let run = f.root.join("runs/r");
    run_ok(
        lors()
            .args(["train", "--profile"])
            .arg(&p)
            .arg("--run-dir")
            .arg(&run),
    );
    let model = f.root.join("model");
    let merge = |out: &Path, force: bool| {
        let mut cmd = lors();
        cmd.args(["merge", "--run"]).arg(&run).arg("--out").arg(out);
        if force {
            cmd.arg("--force");
        }
        cmd
    };
    // A non-empty directory is kept unless --force.
    let keep = f.root.join("keep");
    std::fs::create_dir_all(&keep).unwrap();
    std::fs::write(keep.join("notes.txt"), "mine").unwrap();
    let err = run_err(&mut merge(&keep, false));
    assert!(
        err.contains("not empty") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(keep.join("notes.txt")).unwrap(),
        "mine"
    );
    // Even with --force: never the run, the base model, or a folder holding them.
    for (out, what) in [
        (run.clone(), "is the run directory"),
        (model.clone(), "is the base model"),
        (f.root.clone(), "contains the"),
    ] {
        let err = run_err(&mut merge(&out, true));
        assert!(err.contains(what), "{err}");
    }
    let err = run_err(merge(Path::new("."), true).current_dir(&f.root));
    assert!(err.contains("contains the"), "{err}");
    assert!(run.join("profile.toml").is_file() && model.join("config.json").is_file());
    // A new directory is written; replacing it needs --force and leaves no temporaries.
    let out = f.root.join("exports/merged");
    run_ok(&mut merge(&out, false));
    assert!(run_err(&mut merge(&out, false)).contains("not empty"));
    run_ok(&mut merge(&out, true));
    assert!(out.join("model.safetensors").is_file());
    assert_eq!(temporaries(&f.root), Vec::<PathBuf>::new());
    // prune, convert and random-model check their --out the same way.
    let err = run_err(
        lors()
            .args(["prune", "--method", "magnitude", "--model"])
            .arg(&model)
            .arg("--out")
            .arg(&model)
            .arg("--force"),
    );
    assert!(err.contains("is the model to prune"), "{err}");
    let gguf = keep.join("m.gguf");
    std::fs::write(&gguf, b"GGUF").unwrap();
    let err = run_err(
        lors()
            .args(["convert", "--gguf"])
            .arg(&gguf)
            .arg("--out")
            .arg(&keep)
            .arg("--force"),
    );
    assert!(err.contains("contains the GGUF file"), "{err}");
    let err = run_err(lors().args(["random-model", "--out"]).arg(&keep));
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(keep.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn signals_checkpoint_and_stop_and_a_second_one_exits_at_once() {
    let f = fixture();
    let p = profile_file(
        &f,
        "long",
        &[
            "train.max_steps=100000",
            "train.eval_every=0",
            "train.save_every=0",
        ],
    );
    for (i, sig) in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT]
        .into_iter()
        .enumerate()
    {
        let run = f.root.join(format!("runs/sig{i}"));
        let mut child = spawn_train(&p, &run);
        wait_for_train_rows(&run, 2, &mut child);
        signal(&child, sig);
        let status = child.wait().unwrap();
        assert!(status.success(), "signal {sig}: {status}");
        let dir = RunDir::open(&run).unwrap();
        let s = dir.read_status().unwrap();
        assert_eq!(s.state, RunState::Stopped, "signal {sig}");
        let ckpt = dir.latest_checkpoint().expect("a checkpoint at the stop");
        assert!(ckpt.ends_with(format!("step-{:06}", s.step)));
        checkpoint::verify(&ckpt).unwrap();
    }
    // A second signal exits at once: sent during a long evaluation (the first one only
    // stops the run after it), it ends the process with 130 and no half-written checkpoint.
    std::fs::write(f.root.join("big-valid.jsonl"), fixture::sentences(20000)).unwrap();
    let valid = format!(
        "data.valid=\"{}\"",
        f.root.join("big-valid.jsonl").display()
    );
    let p = profile_file(
        &f,
        "slow-eval",
        &["train.max_steps=100", "train.eval_every=1", valid.as_str()],
    );
    let run = f.root.join("runs/twice");
    let mut child = spawn_train(&p, &run);
    wait_for_train_rows(&run, 1, &mut child);
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let dir = RunDir::open(&run).unwrap();
    for c in dir.checkpoints() {
        checkpoint::verify(&c).unwrap();
    }
}

#[test]
fn a_killed_run_is_marked_crashed_and_one_process_owns_a_run() {
    let f = fixture();
    let p = profile_file(
        &f,
        "long",
        &[
            "train.max_steps=100000",
            "train.eval_every=0",
            "train.save_every=5",
        ],
    );
    let run = f.root.join("runs/owned");
    let mut child = spawn_train(&p, &run);
    wait_for_train_rows(&run, 6, &mut child);
    // A second process may not resume a run that is alive.
    let err = run_err(lors().arg("train").arg("--resume").arg(&run));
    assert!(err.contains("in use by another lors process"), "{err}");
    let dir = RunDir::open(&run).unwrap();
    assert!(dir.lock().is_err());
    assert_eq!(
        dir.mark_crashed_if_dead().unwrap(),
        None,
        "alive is not crashed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The TUI's watcher finds the dead run and records it as crashed, at its last step.
    let mut watcher = lors::tui::watch::Watcher::new(&f.root.join("runs"));
    watcher.refresh();
    let info = &watcher.runs[0];
    let s = info.status.as_ref().unwrap();
    assert_eq!(s.state, RunState::Crashed);
    let last_train = info.summary.train_curve.last().unwrap().0;
    assert_eq!(s.step, last_train);
    assert!(s.error.as_ref().unwrap().contains("--resume"), "{s:?}");
    assert_eq!(dir.read_status().unwrap().state, RunState::Crashed);
    assert!(info.events.iter().any(|e| e.starts_with("crashed")));
}

/// Kill `lors train` with SIGKILL at random moments (start-up, gradient init, steps,
/// evaluations, checkpoint writes), resuming after each, until the run finishes; its metrics
/// must equal an uninterrupted run's row for row (floats bit for bit) and no temporary may
/// survive. Returns the number of kills.
fn kill_and_resume(
    f: &Fixture,
    p: &Path,
    name: &str,
    reference: &[serde_json::Value],
    span: Duration,
    rng: &mut impl Rng,
) -> usize {
    let run = f.root.join("runs").join(name);
    let mut kills = 0;
    let mut first = true;
    loop {
        let mut cmd = lors();
        if first {
            cmd.args(["train", "--profile"])
                .arg(p)
                .arg("--run-dir")
                .arg(&run);
        } else {
            cmd.arg("train").arg("--resume").arg(&run);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(span.mul_f64(rng.random::<f64>()));
        match child.try_wait().unwrap() {
            Some(status) => {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                assert!(status.success(), "{name}: {err}");
                break;
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                first = first && !run.join("profile.toml").is_file();
            }
        }
    }
    assert_eq!(
        reproducible_rows(&run),
        reference,
        "{name} after {kills} kills"
    );
    assert_eq!(temporaries(&run), Vec::<PathBuf>::new(), "{name}");
    kills
}

#[test]
fn fifty_random_kills_resume_to_exactly_the_uninterrupted_metrics() {
    let f = fixture();
    let p = profile_file(
        &f,
        "kills",
        &[
            "train.max_steps=24",
            "train.eval_every=4",
            "train.save_every=2",
        ],
    );
    let reference_run = f.root.join("runs/reference");
    let start = Instant::now();
    run_ok(
        lors()
            .args(["train", "--profile"])
            .arg(&p)
            .arg("--run-dir")
            .arg(&reference_run),
    );
    let span = start.elapsed();
    let reference = reproducible_rows(&reference_run);
    assert!(reference.iter().filter(|r| r["kind"] == "train").count() == 24);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (mut kills, mut runs) = (0, 0);
    while kills < 50 {
        kills += kill_and_resume(
            &f,
            &p,
            &format!("killed-{runs}"),
            &reference,
            span,
            &mut rng,
        );
        runs += 1;
    }
    eprintln!("{kills} kills over {runs} runs, each resumed to the reference metrics");
}
