//! Data-parallel training over MPI against one process: `mpirun -n N lors train` (a build
//! with `--features mpi`, Open MPI from Debian: `scripts/mpi-up.sh`) gives the single
//! process's loss, learning-rate, gradient-norm and evaluation curve and checkpoints bit for
//! bit, for every method and the options that keep extra state, with 2 and 3 ranks; a world
//! size that does not divide the step's micro-batches is a clear error; a build without the
//! feature refuses to run as one of many ranks. Under SLURM (the tests' one-node cluster,
//! `scripts/slurm-up.sh`) ranks started by `srun`, a batch job of several tasks (`lors train
//! --slurm --slurm-set ntasks=2`) and a sweep whose trials are such jobs train the same.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The demo profile's settings for 12 steps with `grad_accum` micro-batches of 4, and `set`,
/// as `--set` arguments.
fn demo_sets(grad_accum: usize, set: &[&str]) -> Vec<String> {
    let steps = [
        "train.max_steps=12",
        "train.batch_size=4",
        "train.eval_every=6",
        "train.save_every=6",
    ];
    let accum = format!("train.grad_accum={grad_accum}");
    let mut sets: Vec<&str> = steps.to_vec();
    sets.push(&accum);
    sets.extend(set);
    sets.iter()
        .flat_map(|s| ["--set".to_string(), s.to_string()])
        .collect()
}

/// `lors train` of the demo profile with [`demo_sets`], into `dir`.
fn train_args(dir: &Path, grad_accum: usize, set: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", "--profile", "profiles/demo.toml"]
        .map(String::from)
        .to_vec();
    args.extend(demo_sets(grad_accum, set));
    args.extend(["--run-dir".into(), dir.display().to_string()]);
    args
}

/// Run `cmd`, which must fail: what it printed on stderr.
fn refused(cmd: &mut Command) -> String {
    let out = cmd.current_dir(repo()).output().unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[cfg(feature = "mpi")]
#[path = "support/cluster.rs"]
mod cluster;

/// The tests that need MPI (`cargo test --features mpi --test mpi`).
#[cfg(feature = "mpi")]
mod ranks {
    use super::cluster::{read_state, slurm_up, wait_run};
    use super::*;
    use lors::train::run_dir::compare_metrics;
    use lors::train::{MetricRow, RunDir};

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

    /// The data-parallel ranks each train row records (none: one process).
    fn ranks_of(run: &Path) -> Vec<Option<usize>> {
        let rows = RunDir::open(run).unwrap().read_metrics().unwrap();
        let ranks = rows.iter().filter_map(|r| match r {
            MetricRow::Train { exchange, .. } => Some(exchange.map(|e| e.ranks)),
            _ => None,
        });
        ranks.collect()
    }

    /// `many`, trained on `ranks` ranks, is `one`'s run bit for bit: at least `rows` metrics
    /// rows and the newest checkpoint's files; `what` names it in failures.
    fn assert_same_run(one: &Path, many: &Path, ranks: usize, rows: usize, what: &str) {
        assert!(
            ranks_of(many).iter().all(|&r| r == Some(ranks)),
            "{what}: {:?}",
            ranks_of(many)
        );
        let (a, b) = (RunDir::open(one).unwrap(), RunDir::open(many).unwrap());
        let n = compare_metrics(&a, &b).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(n >= rows, "{what}: {n} rows");
        assert_eq!(checkpoint_files(one), checkpoint_files(many), "{what}");
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
            assert_same_run(&one, &many, ranks, 12, name);
        }
    }

    #[test]
    fn a_world_size_that_does_not_divide_the_micro_batches_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = refused(mpirun(2).args(train_args(&tmp.path().join("run"), 3, &[])));
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
        let err = refused(
            mpirun(1)
                .args(train_args(&dir, 2, &[]))
                .args([":", "-n", "1", env!("CARGO_BIN_EXE_lors")])
                .args(train_args(&dir, 2, &["optim.lr=0.5"])),
        );
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
        assert_same_run(&one, &many, 2, 401, "resumed");
    }

    /// `lors train` of `args` submitted as a SLURM job with `settings`; waits for its end.
    fn train_on_slurm(args: &[String], settings: &[&str]) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lors"));
        cmd.args(args).arg("--slurm").env("RAYON_NUM_THREADS", "1");
        for s in settings {
            cmd.args(["--slurm-set", s]);
        }
        succeed(&mut cmd);
    }

    /// Ranks that SLURM starts, as `srun -n 2 --mpi=pmix` from a shell and as batch jobs of
    /// two tasks (`ntasks = 2`, started by the default launcher, `srun --mpi=pmix`, and by
    /// `mpirun`), train the single process's run bit for bit, every train row recording two
    /// ranks' exchange.
    #[test]
    fn ranks_slurm_starts_train_like_one_process() {
        let _cluster = slurm_up();
        let tmp = tempfile::tempdir().unwrap();
        let one = tmp.path().join("one");
        succeed(Command::new(env!("CARGO_BIN_EXE_lors")).args(train_args(&one, 2, &[])));
        let srun = tmp.path().join("srun");
        succeed(
            Command::new("srun")
                .args(["-n", "2", "--mpi=pmix", env!("CARGO_BIN_EXE_lors")])
                .args(train_args(&srun, 2, &[]))
                .env("RAYON_NUM_THREADS", "1"),
        );
        let jobs: [(&str, &[&str]); 2] = [
            ("job-srun", &["ntasks=2"]),
            (
                "job-mpirun",
                &["ntasks=2", "launcher=mpirun --allow-run-as-root"],
            ),
        ];
        for (name, settings) in jobs {
            let dir = tmp.path().join(name);
            train_on_slurm(&train_args(&dir, 2, &[]), settings);
            let run = RunDir::open(&dir).unwrap();
            let status = wait_run(&run, 300, "ended", |s| !s.state.is_active());
            let log = std::fs::read_to_string(dir.join("slurm.log")).unwrap_or_default();
            assert_eq!(
                status.state,
                lors::train::RunState::Finished,
                "{name}: {log}"
            );
        }
        for name in ["srun", "job-srun", "job-mpirun"] {
            assert_same_run(&one, &tmp.path().join(name), 2, 12, name);
        }
    }

    /// Tasks that `srun` starts without an MPI plugin (the test cluster's `MpiDefault` is
    /// none) could not join as ranks: each stops at once, saying what to use, and nothing is
    /// written.
    #[test]
    fn tasks_srun_starts_without_an_mpi_plugin_stop_with_a_clear_error() {
        let _cluster = slurm_up();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let err = refused(
            Command::new("srun")
                .args(["-n", "2", env!("CARGO_BIN_EXE_lors")])
                .args(train_args(&dir, 2, &[])),
        );
        assert!(
            err.contains("without an MPI plugin") && err.contains("srun --mpi=pmix"),
            "{err}"
        );
        assert!(!dir.exists(), "nothing is written");
    }

    /// A job of two ranks cancelled mid-run (`scancel`: SLURM's SIGTERM to both) stops both
    /// at one step with a checkpoint; resubmitted as two ranks, it ends on the uninterrupted
    /// single process's curve.
    #[test]
    fn a_cancelled_two_rank_job_resubmits_and_ends_on_the_uninterrupted_curve() {
        let _cluster = slurm_up();
        let tmp = tempfile::tempdir().unwrap();
        let (one, many) = (tmp.path().join("one"), tmp.path().join("many"));
        let long = ["train.max_steps=400", "train.save_every=20"];
        let two = ["ntasks=2"];
        succeed(Command::new(env!("CARGO_BIN_EXE_lors")).args(train_args(&one, 2, &long)));
        train_on_slurm(&train_args(&many, 2, &long), &two);
        let run = RunDir::open(&many).unwrap();
        let running = wait_run(&run, 120, "checkpointed", |_| {
            run.latest_checkpoint().is_some()
        });
        let job = running.slurm_job.expect("the run names its job");
        succeed(Command::new("scancel").arg(&job));
        let stopped = wait_run(&run, 120, "ended", |s| !s.process_alive());
        assert_eq!(stopped.state, lors::train::RunState::Stopped, "{stopped:?}");
        assert!(stopped.step < 400, "{stopped:?}");
        let resume = [
            "train".to_string(),
            "--resume".into(),
            many.display().to_string(),
        ];
        train_on_slurm(&resume, &two);
        let done = wait_run(&run, 300, "finished", |s| {
            s.state == lors::train::RunState::Finished && !s.process_alive()
        });
        assert_ne!(done.slurm_job, Some(job), "a new job finished it");
        assert_same_run(&one, &many, 2, 401, "resubmitted");
    }

    /// `lors sweep` of the demo profile (12 steps, 2 micro-batches) over adapter ranks 8, 4
    /// and 2 with early stopping at step 6, trials run by `executor` with `tail` after the `[sweep]`
    /// tables; its final state.
    fn demo_sweep(dir: &Path, executor: &str, tail: &str) -> lors::sweep::SweepState {
        let demo = std::fs::read_to_string(repo().join("profiles/demo.toml")).unwrap();
        let text = format!(
            "{demo}\n[sweep]\nexecutor = \"{executor}\"\nadapter.rank = [8, 4, 2]\n\
             [sweep.early_stop]\nrungs = [6]\nreduction = 3\n{tail}"
        );
        let (profile, out) = (dir.join(format!("{executor}.toml")), dir.join(executor));
        std::fs::write(&profile, text).unwrap();
        succeed(
            Command::new(env!("CARGO_BIN_EXE_lors"))
                .args(["sweep", "--profile"])
                .arg(&profile)
                .args(demo_sets(2, &[]))
                .arg("--out")
                .arg(&out)
                .env("RAYON_NUM_THREADS", "1"),
        );
        read_state(&out).unwrap()
    }

    /// A sweep whose trials are jobs of two ranks (`[sweep.slurm] ntasks = 2`), early stopping
    /// included, ends as the same sweep run locally in single processes, bit for bit.
    #[test]
    fn a_sweep_of_two_rank_jobs_equals_the_local_sweep() {
        let _cluster = slurm_up();
        let tmp = tempfile::tempdir().unwrap();
        let local = demo_sweep(tmp.path(), "local", "");
        let slurm = demo_sweep(
            tmp.path(),
            "slurm",
            "[sweep.slurm]\nntasks = 2\nlauncher = \"mpirun --allow-run-as-root\"\n",
        );
        assert_eq!(slurm.trials.len(), 3);
        let early = slurm.count(lors::sweep::TrialState::StoppedEarly);
        assert_eq!(early, 2, "ASHA keeps the first (best) of 3 at step 6");
        for (l, s) in local.trials.iter().zip(&slurm.trials) {
            let t = s.trial.index;
            assert_eq!(s.job.as_ref().unwrap().state.state, "COMPLETED", "t{t:03}");
            assert_eq!((l.state, &l.note), (s.state, &s.note), "t{t:03}");
            assert!(
                ranks_of(&s.run_dir).iter().all(|&r| r == Some(2)),
                "t{t:03}"
            );
            compare_metrics(
                &RunDir::open(&l.run_dir).unwrap(),
                &RunDir::open(&s.run_dir).unwrap(),
            )
            .unwrap_or_else(|e| panic!("t{t:03}: {e}"));
        }
        assert_eq!(local.reports, slurm.reports);
    }

    /// Ranks that could not share the steps are refused before anything is submitted or
    /// written: a job's `ntasks` that does not divide `grad_accum`, and a sweep with an axis
    /// value that does not.
    #[test]
    fn ranks_that_do_not_divide_the_micro_batches_are_refused_before_submitting() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let err = refused(
            Command::new(env!("CARGO_BIN_EXE_lors"))
                .args(train_args(&dir, 3, &[]))
                .args(["--slurm", "--slurm-set", "ntasks=2"]),
        );
        assert!(err.contains("do not split over 2 ranks"), "{err}");
        assert!(!dir.exists(), "nothing is written");
        let text = format!(
            "{}\n[sweep]\nexecutor = \"slurm\"\ntrain.grad_accum = [2, 3]\n\
             [sweep.slurm]\nntasks = 2\n",
            std::fs::read_to_string(repo().join("profiles/demo.toml")).unwrap()
        );
        let path = tmp.path().join("sweep.toml");
        std::fs::write(&path, text).unwrap();
        let err = refused(
            Command::new(env!("CARGO_BIN_EXE_lors"))
                .args(["sweep", "--profile"])
                .arg(&path)
                .arg("--out")
                .arg(tmp.path().join("sweep")),
        );
        assert!(
            err.contains("sweep.train.grad_accum") && err.contains("`3`"),
            "{err}"
        );
        assert!(!tmp.path().join("sweep").exists(), "nothing is written");
    }
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_submit_a_job_of_several_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let err = refused(
        Command::new(env!("CARGO_BIN_EXE_lors"))
            .args(train_args(&dir, 2, &[]))
            .args(["--slurm", "--slurm-set", "ntasks=2"]),
    );
    assert!(
        err.contains("--slurm-set ntasks") && err.contains("--features mpi"),
        "{err}"
    );
    assert!(!dir.exists(), "nothing is written");
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_be_one_of_many_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let err = refused(
        Command::new(env!("CARGO_BIN_EXE_lors"))
            .args(train_args(&tmp.path().join("run"), 2, &[]))
            .env("OMPI_COMM_WORLD_SIZE", "2"),
    );
    assert!(err.contains("--features mpi"), "{err}");
    assert!(!tmp.path().join("run").exists(), "nothing is written");
}
