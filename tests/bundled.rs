//! The bundled default: the profiles parse (sweep profiles with every value their axes take),
//! the demo profile trains and exports, `assets/` is exactly what its generator writes, and
//! the binary trains the default compiled into it from an empty folder.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use lors::model::random::{random_weights, small_config, write_checkpoint};
use lors::sparsity::Pattern;
use lors::train::{self, Profile, RunDir, RunState};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_profile_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(repo().join("profiles")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let table: toml::Table = toml::from_str(&text).unwrap();
            if table.contains_key("sweep") {
                // A sweep profile: its base and every value its axes take.
                let (_, _, spec) = lors::sweep::runner::load_profile(&path, &[])
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(!spec.trials().is_empty());
            } else {
                Profile::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            n += 1;
        }
    }
    assert!(n >= 3);
}

#[test]
fn demo_profile_trains_and_exports_a_still_sparse_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().display().to_string();
    let mut p = Profile::load(
        &repo().join("profiles/demo.toml"),
        &[
            "train.max_steps=4"
                .parse::<lors::train::Override>()
                .unwrap(),
            "train.eval_every=2"
                .parse::<lors::train::Override>()
                .unwrap(),
            lors::train::Override::new("train.output_dir", out),
        ],
    )
    .unwrap();
    p.resolve_paths(&repo());
    let run = RunDir::create(&tmp.path().join("demo"), &p).unwrap();
    let outcome = train::train(
        &p,
        &run,
        train::Start::Fresh,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(outcome.state, RunState::Finished);
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.path.join("merged/sparsity.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["pattern_preserved"], true);
    assert_eq!(report["density_after"], 0.5);
}

fn same_files(a: &Path, b: &Path) {
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "assets/demo-model/{f} differs from what `lors random-model` writes (assets/README.md)"
        );
    }
}

#[test]
fn demo_model_is_what_the_generator_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = small_config(64, 2, 4, 2, 128);
    let weights =
        random_weights(&config, 2026, Some(Pattern::Unstructured { sparsity: 0.5 })).unwrap();
    write_checkpoint(tmp.path(), &config, &weights).unwrap();
    same_files(tmp.path(), &repo().join("assets/demo-model"));
}

/// `lors train` without a profile, in an empty folder with a fresh cache, trains the bundled
/// default (compiled into the binary, written under the cache) into the folder's `runs/`.
#[test]
fn train_without_a_profile_runs_the_bundled_default_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (here, cache) = (tmp.path().join("empty"), tmp.path().join("cache"));
    std::fs::create_dir_all(&here).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lors"))
        .args([
            "train",
            "--set",
            "train.max_steps=3",
            "--set",
            "train.eval_every=0",
        ])
        .current_dir(&here)
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<PathBuf> = std::fs::read_dir(here.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = RunDir::open(&runs[0]).unwrap();
    assert_eq!(run.read_status().unwrap().state, RunState::Finished);
    let p = Profile::load(&run.profile_path(), &[]).unwrap();
    assert!(p.model.path.starts_with(cache.join("lors/bundled")));
    assert_eq!(p.train.max_steps, Some(3));
    // The live bytes after the gradient init are the tensors' (the demo's model, adapters
    // and optimiser state are ~7 MiB), not the ~1 GiB per thread of scratch that the
    // solvers' matrix kernels reserve (and never touch) on the threads they run on.
    assert_eq!(p.adapter.init, lors::adapters::Init::Gradient);
    for row in run.read_metrics().unwrap() {
        if let lors::train::MetricRow::Train { live_bytes, .. } = row {
            assert!(live_bytes < 64 << 20, "live bytes {live_bytes}");
        }
    }
}

/// A user's mistake reads as the message and its cause, without a backtrace even where
/// `RUST_BACKTRACE=1` is set (as in many Rust developers' shells); a mistyped `--set` key is
/// the command line's error, not the profile file's.
#[test]
fn a_bad_setting_is_a_message_not_a_backtrace() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lors"))
        .args([
            "train",
            "--profile",
            "profiles/demo.toml",
            "--set",
            "train.nope=1",
        ])
        .current_dir(repo())
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.starts_with("Error: invalid value for `--set`: unknown field `nope`"),
        "{err}"
    );
    assert!(err.contains("expected one of `max_steps`"), "{err}");
    assert!(
        !err.contains("demo.toml"),
        "the file is not to blame: {err}"
    );
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
}
