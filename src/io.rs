//! Atomic file output: write to a temporary sibling, flush, then rename over the target, so
//! an interrupted save never leaves a half-written file where a good one was. Temporaries are
//! named `.<name>.tmp-<pid>` (and `.<name>.old-<pid>` while a directory is being replaced), so
//! those of dead processes can be found and cleaned up ([`clean_stale_temps`]). Outputs the
//! user names are checked first ([`check_output_dir`]): nothing is replaced unless asked.
//! Also the checkpoint file-format helpers every reader shares ([`index_shards`],
//! [`storage_dtype_name`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use candle_core::{DType, Tensor};

use crate::error::{LorsError, Result};

/// What a temporary sibling is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TempKind {
    /// Being written; becomes the target on success.
    New,
    /// The target's previous content, moved aside while a directory is replaced.
    Old,
}

impl TempKind {
    fn tag(self) -> &'static str {
        match self {
            TempKind::New => "tmp",
            TempKind::Old => "old",
        }
    }
}

fn temp_sibling(path: &Path, kind: TempKind) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}-{}", kind.tag(), std::process::id()))
}

/// The target name, kind and owner pid of a temporary's file name.
fn parse_temp_name(name: &str) -> Option<(&str, TempKind, u32)> {
    let rest = name.strip_prefix('.')?;
    let (stem, pid) = rest.rsplit_once('-')?;
    let pid = pid.parse().ok()?;
    [TempKind::New, TempKind::Old].into_iter().find_map(|kind| {
        let target = stem.strip_suffix(&format!(".{}", kind.tag()))?;
        (!target.is_empty()).then_some((target, kind, pid))
    })
}

/// Whether process `pid` is still running (a zombie, dead but not yet reaped, is not).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let exists = unsafe { libc::kill(pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    // `/proc/<pid>/stat` is `pid (comm) S ...`; the state follows the last `)`.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| !matches!(state, "Z" | "X")),
        Err(_) => true,
    }
}

/// Remove the temporaries that dead processes left in `dir` (an interrupted save or
/// replacement); a moved-aside previous version whose target is gone is moved back instead.
/// Returns how many were cleaned.
pub fn clean_stale_temps(dir: &Path) -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut cleaned = 0;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some((target, kind, pid)) = name.to_str().and_then(parse_temp_name) else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let target = dir.join(target);
        let result = if kind == TempKind::Old && !target.exists() {
            std::fs::rename(&path, &target)
        } else if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        result.map_err(|e| LorsError::io(&path, e))?;
        cleaned += 1;
    }
    Ok(cleaned)
}

/// `path` made absolute with `.`, `..` and symbolic links resolved as far as it exists.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            canonical(parent).join(name)
        }
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
    }
}

/// Check that a directory the user named as an output may be written, and return it as an
/// absolute path. A missing or empty directory is fine; a non-empty one only with `force`;
/// never a file, nor (even with `force`) a directory that is or contains one of `protected`
/// (each with what it is, e.g. `("run directory", run)`): replacing it would delete it.
pub fn check_output_dir(out: &Path, force: bool, protected: &[(&str, &Path)]) -> Result<PathBuf> {
    let out = canonical(out);
    let refuse = |detail: String| {
        Err(LorsError::OutputRefused {
            path: out.clone(),
            detail,
        })
    };
    if !out.exists() {
        return Ok(out);
    }
    if !out.is_dir() {
        return refuse("exists and is not a directory; choose another --out".into());
    }
    let empty = std::fs::read_dir(&out)
        .map_err(|e| LorsError::io(&out, e))?
        .next()
        .is_none();
    if empty {
        return Ok(out);
    }
    if !force {
        return refuse(
            "exists and is not empty; choose another --out, or pass --force to replace it".into(),
        );
    }
    for (what, path) in protected {
        let path = canonical(path);
        if path.starts_with(&out) {
            let relation = if path == out { "is" } else { "contains" };
            return refuse(format!(
                "{relation} the {what} ({}); replacing it would delete it, even with --force",
                path.display()
            ));
        }
    }
    Ok(out)
}

/// Check that a file the user named as an output may be written, and return it as an
/// absolute path: a missing file is fine, an existing one only with `force`, never a
/// directory, nor (even with `force`) one of `protected` (each with what it is).
pub fn check_output_file(out: &Path, force: bool, protected: &[(&str, &Path)]) -> Result<PathBuf> {
    let out = canonical(out);
    let refuse = |detail: String| {
        Err(LorsError::OutputRefused {
            path: out.clone(),
            detail,
        })
    };
    if out.is_dir() {
        return refuse("is a directory; name a file".into());
    }
    if let Some((what, _)) = protected.iter().find(|(_, p)| canonical(p) == out) {
        return refuse(format!(
            "is the {what}; writing it would destroy it, even with --force"
        ));
    }
    if out.exists() && !force {
        return refuse("exists; choose another name, or pass --force to replace it".into());
    }
    Ok(out)
}

/// Write `path` atomically: `fill` streams into a buffered temporary sibling, which is
/// flushed, synced and renamed over `path` only when `fill` succeeds (removed otherwise).
pub fn write_streamed_atomic(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    let tmp = temp_sibling(path, TempKind::New);
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| LorsError::io(path, e))?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| LorsError::io(path, e.into_error()))?;
        file.sync_all().map_err(|e| LorsError::io(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| LorsError::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The user's cache folder for lors: `$XDG_CACHE_HOME/lors`, else `~/.cache/lors`, else one
/// in the system's temporary folder.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("lors")
}

/// Open (creating) the lock file `path` without touching its contents.
pub fn open_lock_file(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| LorsError::io(path, e))
}

/// Wait for the exclusive advisory lock of `path` (released when the file is dropped).
pub fn wait_for_lock(path: &Path) -> Result<std::fs::File> {
    let file = open_lock_file(path)?;
    file.lock().map_err(|e| LorsError::io(path, e))?;
    Ok(file)
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_streamed_atomic(path, |f| {
        f.write_all(bytes).map_err(|e| LorsError::io(path, e))
    })
}

/// Serialize `value` as pretty JSON to `path` atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| LorsError::parse(path, e.to_string()))?;
    write_atomic(path, text.as_bytes())
}

/// Save tensors as safetensors (with `format: pt` metadata, as transformers expects) atomically.
pub fn write_safetensors_atomic(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let bytes = safetensors::serialize(sorted, Some(metadata))
        .map_err(|e| LorsError::parse(path, format!("cannot serialize tensors: {e}")))?;
    write_atomic(path, &bytes)
}

/// Build a directory under a temporary name with `fill`, then move it to `dest` (replacing
/// an existing one only once the new one is complete). Temporaries that dead processes left
/// beside `dest` are cleaned up first; this call's own are removed on every error path.
pub fn build_dir_atomic(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dest = &canonical(dest);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| LorsError::io(parent, e))?;
        clean_stale_temps(parent)?;
    }
    let tmp = temp_sibling(dest, TempKind::New);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| LorsError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| LorsError::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let result = if dest.exists() {
        replace_dir(&tmp, dest)
    } else {
        std::fs::rename(&tmp, dest).map_err(|e| LorsError::io(dest, e))
    };
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Move `dest` aside, `new` into its place, then delete the old one; `dest` is put back if
/// the second move fails.
fn replace_dir(new: &Path, dest: &Path) -> Result<()> {
    let old = temp_sibling(dest, TempKind::Old);
    std::fs::rename(dest, &old).map_err(|e| LorsError::io(dest, e))?;
    if let Err(e) = std::fs::rename(new, dest) {
        let _ = std::fs::rename(&old, dest);
        return Err(LorsError::io(dest, e));
    }
    std::fs::remove_dir_all(&old).map_err(|e| LorsError::io(&old, e))
}

/// Run `lors <args>` (this executable) detached in its own session, with stdout and stderr
/// going to `log`, so it survives its parent, the terminal and an SSH drop.
pub fn spawn_detached(args: &[OsString], log: &Path) -> Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LorsError::io(dir, e))?;
    }
    let out = std::fs::File::create(log).map_err(|e| LorsError::io(log, e))?;
    let err = out.try_clone().map_err(|e| LorsError::io(log, e))?;
    let exe = std::env::current_exe().map_err(|e| LorsError::io(Path::new("lors"), e))?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
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
    let mut child = cmd.spawn().map_err(|e| LorsError::io(log, e))?;
    // Reap the child if it ends while the TUI still runs.
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// The shard files a `model.safetensors.index.json` names, sorted and without repeats.
pub fn index_shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| LorsError::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| LorsError::parse(index, e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| LorsError::parse(index, "no `weight_map` object"))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// The `torch_dtype` name of a checkpoint storage dtype (f32, f16 or bf16); `what` names the
/// operation in the error for others.
pub fn storage_dtype_name(dtype: DType, what: &str) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("float32"),
        DType::F16 => Ok("float16"),
        DType::BF16 => Ok("bfloat16"),
        other => Err(LorsError::UnsupportedDType {
            dtype: other,
            what: format!("{what} (f32, f16 or bf16)"),
        }),
    }
}

/// A run's or sweep's name must be one plain path component, so it stays inside the runs
/// folder; the error names `field`.
pub fn check_plain_name(name: &str, field: &str) -> Result<()> {
    let mut parts = Path::new(name).components();
    let single = matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    );
    if !single || name.contains(['/', '\\', '\0']) {
        return Err(LorsError::invalid(
            field,
            format!("`{name}` must be a plain name (no `/`, `..` or absolute path)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_round_trip() {
        let dir = Path::new("/x/step-000004");
        for kind in [TempKind::New, TempKind::Old] {
            let tmp = temp_sibling(dir, kind);
            let name = tmp.file_name().unwrap().to_str().unwrap();
            assert_eq!(
                parse_temp_name(name),
                Some(("step-000004", kind, std::process::id()))
            );
        }
        assert_eq!(
            parse_temp_name(".a.b.tmp-12"),
            Some(("a.b", TempKind::New, 12))
        );
        for name in [
            "step-000004",
            ".tmp-12",
            ".x.tmp-",
            ".x.tmp-1a",
            "x.tmp-3",
            ".x.new-3",
        ] {
            assert_eq!(parse_temp_name(name), None, "{name}");
        }
    }

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Ended but not reaped: a zombie.
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!process_alive(pid));
        child.wait().unwrap();
        assert!(!process_alive(pid));
        assert!(!process_alive(u32::MAX));
    }
}
