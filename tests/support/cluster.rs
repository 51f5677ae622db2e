//! The one-node SLURM cluster of the tests (`scripts/slurm-up.sh`) and waiting on what its
//! jobs write (shared by the SLURM executor's and the data-parallel tests).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lors::sweep::SweepState;
use lors::train::{RunDir, Status};

/// The cluster is up (started here if it is not); the guard keeps a test binary's tests apart,
/// as their jobs share the node's CPUs.
pub fn slurm_up() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-up.sh"))
        .output()
        .expect("scripts/slurm-up.sh runs");
    assert!(
        out.status.success(),
        "no SLURM cluster: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    guard
}

/// The sweep's `state.json` in `dir`, once there.
pub fn read_state(dir: &Path) -> Option<SweepState> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).ok()?).ok()
}

/// Wait (at most `secs`) until the run's status satisfies `ready`; that status.
pub fn wait_run(run: &RunDir, secs: u64, what: &str, ready: impl Fn(&Status) -> bool) -> Status {
    let start = Instant::now();
    loop {
        let status = run.read_status().unwrap();
        if ready(&status) {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "never {what}: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
