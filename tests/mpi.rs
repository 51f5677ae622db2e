//! Data-parallel training over MPI against one process: `mpirun -n N lors train` (a build
//! with `--features mpi`, Open MPI from Debian: `scripts/mpi-up.sh`) gives the single
//! process's loss, learning-rate, gradient-norm and evaluation curve and checkpoints bit for
//! bit, for every method and the options that keep extra state, with 2 and 3 ranks; a world
//! size that does not divide the step's micro-batches is a clear error; a build without the
//! feature refuses to run as one of many ranks.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `lors train` of the demo profile for 12 steps with `grad_accum` micro-batches of 4 and
/// `set`, into `dir`.
fn train_args(dir: &Path, grad_accum: usize, set: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--profile",
        "profiles/demo.toml",
        "--set",
        "train.max_steps=12",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.eval_every=6",
        "--set",
        "train.save_every=6",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--set".into(), format!("train.grad_accum={grad_accum}")]);
    for s in set {
        args.extend(["--set".into(), s.to_string()]);
    }
    args.extend(["--run-dir".into(), dir.display().to_string()]);
    args
}

/// The tests that need MPI (`cargo test --features mpi --test mpi`).
#[cfg(feature = "mpi")]
mod ranks {
    use super::*;
    use lors::train::run_dir::compare_metrics;
    use lors::train::RunDir;

    /// The command's output, or a panic with its errors.
    fn succeed(cmd: &mut Command) -> String {
        let out = cmd.current_dir(repo()).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        text
    }

    /// `mpirun -n ranks` of this build's `lors` (as root, oversubscribing the 2 cores).
    fn mpirun(ranks: usize) -> Command {
        let mut cmd = Command::new("mpirun");
        cmd.args(["--allow-run-as-root", "--oversubscribe", "-n"])
            .arg(ranks.to_string())
            .arg(env!("CARGO_BIN_EXE_lors"))
            .env("RAYON_NUM_THREADS", "1");
        cmd
    }

    /// Every safetensors file of a run's newest checkpoint, by name, with its bytes.
    fn checkpoint_files(run: &Path) -> Vec<(String, Vec<u8>)> {
        let newest = RunDir::open(run).unwrap().latest_checkpoint().unwrap();
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&newest)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&p).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn ranks_train_bit_for_bit_like_one_process_for_every_method_and_option() {
        let tmp = tempfile::tempdir().unwrap();
        let cases: [(&str, usize, &[&str]); 9] = [
            ("lors", 2, &[]),
            ("lors-exact", 2, &["adapter.method=\"lors-exact\""]),
            ("sqft", 2, &["adapter.method=\"sqft\""]),
            (
                "spp",
                2,
                &["adapter.method=\"spp\"", "adapter.init=\"standard\""],
            ),
            ("lora", 2, &["adapter.method=\"lora\""]),
            ("sora", 2, &["adapter.sora=true"]),
            ("lora-rite", 2, &["optim.name=\"lora-rite\""]),
            (
                "boost-flat",
                2,
                &["adapter.boost_every=5", "adapter.flat=true"],
            ),
            ("lors-3-ranks", 3, &[]),
        ];
        for (name, ranks, set) in cases {
            let (one, many) = (tmp.path().join(format!("{name}-1")), tmp.path().join(name));
            succeed(Command::new(env!("CARGO_BIN_EXE_lors")).args(train_args(&one, ranks, set)));
            succeed(mpirun(ranks).args(train_args(&many, ranks, set)));
            let rows = compare_metrics(&RunDir::open(&one).unwrap(), &RunDir::open(&many).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(rows >= 12, "{name}: {rows} rows");
            assert_eq!(checkpoint_files(&one), checkpoint_files(&many), "{name}");
        }
    }

    #[test]
    fn a_world_size_that_does_not_divide_the_micro_batches_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let out = mpirun(2)
            .args(train_args(&tmp.path().join("run"), 3, &[]))
            .current_dir(repo())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("train.grad_accum") && err.contains("do not split over 2 ranks"),
            "{err}"
        );
    }

    /// Ranks started with different settings (`mpirun A : B`) stop at once, naming it.
    #[test]
    fn ranks_with_different_profiles_are_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let out = mpirun(1)
            .args(train_args(&dir, 2, &[]))
            .args([":", "-n", "1", env!("CARGO_BIN_EXE_lors")])
            .args(train_args(&dir, 2, &["optim.lr=0.5"]))
            .current_dir(repo())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("rank 1's profile differs from rank 0's"),
            "{err}"
        );
        assert!(
            RunDir::open(&dir).unwrap().checkpoints().is_empty(),
            "nothing trained"
        );
    }

    /// A rank killed mid-run ends the job (the launcher stops the others); `--resume` on
    /// as many ranks goes on from the newest checkpoint to the uninterrupted run's curve.
    #[test]
    fn a_job_whose_rank_was_killed_resumes_to_the_uninterrupted_curve() {
        let tmp = tempfile::tempdir().unwrap();
        let (one, many) = (tmp.path().join("one"), tmp.path().join("many"));
        let long = [
            "train.max_steps=400",
            "train.save_every=20",
            "train.eval_every=100",
        ];
        succeed(Command::new(env!("CARGO_BIN_EXE_lors")).args(train_args(&one, 2, &long)));
        let mut job = mpirun(2)
            .args(train_args(&many, 2, &long))
            .current_dir(repo())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let run = loop {
            let checkpointed = RunDir::open(&many)
                .ok()
                .filter(|r| r.checkpoints().len() >= 2);
            if let Some(run) = checkpointed {
                break run;
            }
            assert!(start.elapsed().as_secs() < 120, "no checkpoint");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // Rank 1: the `lors` process that is not rank 0 (whose pid the status holds).
        let root = run.read_status().unwrap().pid;
        let pids = Command::new("pgrep").args(["-x", "lors"]).output().unwrap();
        let rank1: Vec<u32> = String::from_utf8_lossy(&pids.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|&p: &u32| p != root)
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.contains(&*many.to_string_lossy()))
            })
            .collect();
        assert_eq!(rank1.len(), 1, "{rank1:?}");
        Command::new("kill")
            .args(["-9", &rank1[0].to_string()])
            .status()
            .unwrap();
        assert!(
            !job.wait().unwrap().success(),
            "the job ends when a rank dies"
        );
        let status = run.read_status().unwrap();
        assert!(status.step < 400, "{status:?}");
        succeed(mpirun(2).args(["train", "--resume"]).arg(&many));
        let rows = compare_metrics(&RunDir::open(&one).unwrap(), &run).unwrap();
        assert!(rows > 400, "{rows}");
        assert_eq!(checkpoint_files(&one), checkpoint_files(&many));
    }
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_be_one_of_many_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lors"))
        .args(train_args(&tmp.path().join("run"), 2, &[]))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .current_dir(repo())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--features mpi"), "{err}");
    assert!(!tmp.path().join("run").exists(), "nothing is written");
}
