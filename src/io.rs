//! Atomic file output: write to a temporary sibling, flush, then rename over the target, so
//! an interrupted save never leaves a half-written file where a good one was.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::error::{LorsError, Result};

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(LorsError::io(path, e));
    }
    Ok(())
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
/// an existing one only once the new one is complete).
pub fn build_dir_atomic(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_sibling(dest);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| LorsError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| LorsError::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dest.exists() {
        let old = dest.with_file_name(format!(
            ".{}.old-{}",
            dest.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        std::fs::rename(dest, &old).map_err(|e| LorsError::io(dest, e))?;
        std::fs::rename(&tmp, dest).map_err(|e| LorsError::io(dest, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| LorsError::io(&old, e))?;
    } else {
        std::fs::rename(&tmp, dest).map_err(|e| LorsError::io(dest, e))?;
    }
    Ok(())
}
