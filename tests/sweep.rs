//! Sweeps end to end with the `lors` binary on the tiny fixture model: a sweep whose own
//! process is killed mid-way and resumed ends with every trial run once and accounted for;
//! bad sweep specs are errors that name the key.

// Shared support; this file uses part of it.
#[allow(dead_code)]
#[path = "support/fixture.rs"]
mod fixture;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fixture::{fixture, profile_text, Fixture};
use lors::sweep::{asha::Decision, Sweep, SweepState, TrialState};
use lors::train::{RunDir, RunState};

/// The fixture's profile with a `[sweep]` of 2 ranks x 2 learning rates, early stopping at
/// step 3 (η = 2).
fn sweep_profile(f: &Fixture, sweep: &str) -> std::path::PathBuf {
    let path = f.root.join("sweep.toml");
    std::fs::write(&path, format!("{}\n{sweep}", profile_text(f))).unwrap();
    path
}

const GRID: &str = "[sweep]\nadapter.rank = [2, 4]\noptim.lr = [0.005, 0.05]\n\
                    [sweep.early_stop]\nrungs = [3]\nreduction = 2\n";

/// `lors sweep --resume dir`, run to its end.
fn resume(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lors"))
        .args(["sweep", "--resume"])
        .arg(dir)
        .output()
        .unwrap()
}

fn read_state(dir: &Path) -> Option<SweepState> {
    let text = std::fs::read_to_string(dir.join("state.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Kill the sweep process as soon as a trial runs, resume it, and check: every trial ended
/// (finished, or stopped early where a report said stop), each has exactly one run directory
/// whose status agrees, and the early-stopping reports replay to the same decisions. Then
/// `lors report`'s Markdown and charts for it.
#[test]
fn a_sweep_resumes_after_its_own_process_is_killed() {
    let f = fixture();
    let profile = sweep_profile(&f, GRID);
    let dir = f.root.join("runs/grid");
    let exe = env!("CARGO_BIN_EXE_lors");
    let mut first = Command::new(exe)
        .args(["sweep", "--profile"])
        .arg(&profile)
        .arg("--out")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let running = |s: SweepState| s.count(TrialState::Running) > 0;
    while !read_state(&dir).is_some_and(running) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no trial started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let killed = read_state(&dir).unwrap();
    assert!(!killed.is_done(), "killed mid-way: {killed:?}");
    assert_eq!(
        killed.pid,
        Some(first.id()),
        "the sweep records its process"
    );
    assert!(!killed.scheduler_alive());
    // While another live process holds the sweep, a resume is refused.
    let held = SweepState {
        pid: Some(std::process::id()),
        ..killed.clone()
    };
    let state_file = dir.join("state.json");
    std::fs::write(&state_file, serde_json::to_string(&held).unwrap()).unwrap();
    let refused = resume(&dir);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("is being run by process"),
        "{err}"
    );
    std::fs::write(&state_file, serde_json::to_string(&killed).unwrap()).unwrap();
    let out = resume(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = read_state(&dir).unwrap();
    assert!(state.is_done());
    assert_eq!(state.trials.len(), 4);
    for t in &state.trials {
        let status = RunDir::open(&t.run_dir).unwrap().read_status().unwrap();
        let stopped = state
            .reports
            .iter()
            .any(|r| r.trial == t.trial.index && r.decision == Decision::Stop);
        match t.state {
            TrialState::Finished => {
                assert_eq!((status.state, status.step), (RunState::Finished, 6))
            }
            TrialState::StoppedEarly => {
                assert!(stopped, "t{} stopped without a report", t.trial.index);
                assert_eq!(status.state, RunState::Stopped);
                assert!(status.step < 6);
            }
            other => panic!("t{} ended {other}: {:?}", t.trial.index, t.note),
        }
        assert!(
            stdout.contains(&format!("| t{:03} |", t.trial.index)),
            "{stdout}"
        );
    }
    // The first trial tokenised the data into shards (training and validation file); every
    // other trial process, and the resumed ones, reused them.
    let notes: Vec<String> = (0..4)
        .flat_map(|i| {
            let log = std::fs::read_to_string(dir.join(format!("t{i:03}.log"))).unwrap();
            log.lines()
                .filter(|l| l.contains("data: "))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    let built = notes.iter().filter(|n| n.contains("tokenised in")).count();
    let reused = notes.iter().filter(|n| n.contains("reused")).count();
    assert_eq!(built, 2, "{notes:#?}");
    assert_eq!(reused, notes.len() - 2, "{notes:#?}");
    assert!(reused >= 6, "{notes:#?}");
    // One run directory per trial, nothing else beside the sweep.
    let mut runs: Vec<String> = std::fs::read_dir(f.root.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "grid")
        .collect();
    runs.sort();
    assert_eq!(runs, ["grid-t000", "grid-t001", "grid-t002", "grid-t003"]);
    // The recorded reports replay to the same decisions (what a resume rebuilds).
    let mut asha =
        lors::sweep::asha::Asha::new(Sweep::open(&dir).unwrap().spec.early_stop.as_ref().unwrap());
    for r in &state.reports {
        assert_eq!(asha.report(r.trial, r.step, r.loss), r.decision);
    }
    assert_eq!(
        state.reports.len(),
        4,
        "each trial reported once, at step 3"
    );

    // The shareable report of the sweep: its table, a chart per swept key and the curves.
    let out = f.root.join("report");
    let files = lors::report::write_report(std::slice::from_ref(&dir), &out, 0.6).unwrap();
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    for t in &state.trials {
        assert!(
            md.contains(&format!("| t{:03} | {} |", t.trial.index, t.trial.label())),
            "{md}"
        );
        assert!(
            md.contains(&format!("| grid-t{:03} |", t.trial.index)),
            "{md}"
        );
    }
    let names: Vec<String> = files
        .charts
        .iter()
        .map(|c| c.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["grid-adapter.rank.svg", "grid-optim.lr.svg", "loss.svg"]
    );
    for chart in &files.charts {
        let svg = std::fs::read_to_string(chart).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<circle"),
            "{}",
            chart.display()
        );
        assert!(md.contains(&format!(
            "]({})",
            chart.file_name().unwrap().to_string_lossy()
        )));
    }
    let lr_chart = std::fs::read_to_string(out.join("grid-optim.lr.svg")).unwrap();
    assert!(lr_chart.contains("best validation loss against optim.lr"));
    assert!(
        lors::report::write_report(std::slice::from_ref(&f.root), &out, 0.6).is_err(),
        "not a run"
    );
}

/// An unknown key, a value the key does not take, an empty axis, a bad range and a profile
/// without `[sweep]` are errors naming what is wrong; nothing is created for them.
#[test]
fn bad_sweep_specs_are_errors_naming_the_key() {
    let f = fixture();
    for (sweep, key) in [
        ("[sweep]\nadapter.rnak = [2, 4]\n", "sweep.adapter.rnak"),
        (
            "[sweep]\nadapter.method = [\"lors\", \"lorz\"]\n",
            "sweep.adapter.method",
        ),
        ("[sweep]\noptim.lr = []\n", "sweep.optim.lr"),
        (
            "[sweep]\nsearch = \"random\"\ntrials = 3\noptim.lr = { log_uniform = [-1.0, 1.0] }\n",
            "sweep.optim.lr",
        ),
        ("[sweep]\nadapter.rank = [0, 4]\n", "sweep.adapter.rank"),
    ] {
        let profile = sweep_profile(&f, sweep);
        let dir = f.root.join("runs/bad");
        let err = Sweep::create(&profile, &[], Some(&dir))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(key), "{sweep}: {err}");
        assert!(!dir.join("state.json").exists());
    }
    // `lors train` points a sweep profile to `lors sweep`.
    let sweep = sweep_profile(&f, GRID);
    let err = lors::train::Profile::load(&sweep, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("lors sweep --profile"), "{err}");
    let plain = f.root.join("plain.toml");
    std::fs::write(&plain, profile_text(&f)).unwrap();
    let err = Sweep::create(&plain, &[], None).err().unwrap().to_string();
    assert!(err.contains("no [sweep] section"), "{err}");
}
