//! Starting a run as a detached `lors train` process in its own session, so it survives the
//! TUI quitting and the SSH connection dropping; the TUI then only watches its directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{LorsError, Result};
use crate::train::run_dir::now_s;
use crate::train::Profile;

/// Launch `profile` into a new run directory under `runs_dir`; returns that directory. The
/// profile and the process's output go to `runs_dir/.launch/<run>.{toml,log}`.
pub fn launch(profile: &Profile, runs_dir: &Path) -> Result<PathBuf> {
    let name = format!(
        "{}-r{}-{}",
        profile.adapter.method,
        profile.adapter.rank,
        (now_s() * 1000.0) as u64
    );
    let run_dir = runs_dir.join(&name);
    let launch_dir = runs_dir.join(".launch");
    std::fs::create_dir_all(&launch_dir).map_err(|e| LorsError::io(&launch_dir, e))?;
    let profile_path = launch_dir.join(format!("{name}.toml"));
    crate::io::write_atomic(&profile_path, profile.to_toml().as_bytes())?;
    let log_path = launch_dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| LorsError::io(&log_path, e))?;
    let err_log = log.try_clone().map_err(|e| LorsError::io(&log_path, e))?;
    let exe = std::env::current_exe().map_err(|e| LorsError::io(Path::new("lors"), e))?;
    let mut cmd = Command::new(exe);
    cmd.arg("train")
        .arg("--profile")
        .arg(&profile_path)
        .arg("--run-dir")
        .arg(&run_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| LorsError::io(&profile_path, e))?;
    // Reap the child if it ends while the TUI still runs.
    std::thread::spawn(move || child.wait());
    Ok(run_dir)
}
