//! The run directory: `profile.toml`, `metrics.jsonl`, `status.json`, `checkpoints/`. Other
//! processes (the TUI) read these while the run goes on: status is replaced atomically and
//! metrics are appended one whole line at a time.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{LorsError, Result};
use crate::io::{write_atomic, write_json_atomic};
use crate::model::LayerSparsity;

/// Life cycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Initializing,
    Running,
    Paused,
    Finished,
    Failed,
    Stopped,
}

/// `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: RunState,
    pub step: usize,
    pub total_steps: usize,
    pub elapsed_s: f64,
    pub eta_s: Option<f64>,
    pub pid: u32,
    /// Seconds since the Unix epoch of this write.
    pub updated_at: f64,
    pub last_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    pub message: Option<String>,
    pub error: Option<String>,
    /// Id of the last control request the run has acted on.
    #[serde(default)]
    pub control_ack: u64,
}

/// What another process (the TUI) asks a running training to do, between two steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlRequest {
    Pause,
    Resume,
    Stop,
    /// Save a checkpoint now and go on.
    Checkpoint,
}

/// `control.json`: the latest request, numbered so that each is acted on once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub id: u64,
    pub request: ControlRequest,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MetricRow {
    Train {
        step: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens_per_s: f64,
        elapsed_s: f64,
        live_bytes: usize,
        /// Peak heap bytes during the step.
        peak_bytes: usize,
        /// `peak_bytes` minus the heap bytes live when the step began (activations, grads).
        step_peak_bytes: usize,
        rss_bytes: Option<u64>,
        /// GPU memory after the step (absent on the CPU); its peak is the step's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gpu: Option<crate::device::GpuMemory>,
    },
    Eval {
        step: usize,
        eval_loss: f64,
        eval_ppl: f64,
    },
    Init {
        seconds: f64,
        layers: usize,
        sequences: usize,
        sweeps: usize,
    },
    /// A checkpoint was saved after this step.
    Checkpoint { step: usize },
    /// Per adapted layer: density of the base weight and of the would-be merged weight
    /// (written when training starts and at each evaluation).
    Sparsity {
        step: usize,
        layers: Vec<LayerSparsity>,
    },
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

/// Seconds since the Unix epoch.
pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl RunDir {
    /// Create a new run directory (an error if it exists).
    pub fn create(path: &Path) -> Result<Self> {
        if path.exists() {
            return Err(LorsError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "run directory exists"),
            ));
        }
        std::fs::create_dir_all(path.join("checkpoints")).map_err(|e| LorsError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Open an existing run directory.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("profile.toml").is_file() {
            return Err(LorsError::parse(
                path,
                "not a run directory (no profile.toml)",
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn profile_path(&self) -> PathBuf {
        self.path.join("profile.toml")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }
    pub fn status_path(&self) -> PathBuf {
        self.path.join("status.json")
    }
    pub fn checkpoints_path(&self) -> PathBuf {
        self.path.join("checkpoints")
    }
    pub fn control_path(&self) -> PathBuf {
        self.path.join("control.json")
    }

    /// Ask the run to pause, resume, stop or checkpoint; returns the request's id, which
    /// `status.json`'s `control_ack` reaches once the run has acted on it.
    pub fn request(&self, request: ControlRequest) -> Result<u64> {
        let id = self.read_control()?.map_or(1, |c| c.id + 1);
        write_json_atomic(&self.control_path(), &Control { id, request })?;
        Ok(id)
    }

    /// The latest control request, if any.
    pub fn read_control(&self) -> Result<Option<Control>> {
        let p = self.control_path();
        match std::fs::read_to_string(&p) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| LorsError::parse(&p, e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LorsError::io(&p, e)),
        }
    }

    pub fn write_profile(&self, text: &str) -> Result<()> {
        write_atomic(&self.profile_path(), text.as_bytes())
    }

    pub fn write_status(&self, status: &Status) -> Result<()> {
        write_json_atomic(&self.status_path(), status)
    }

    pub fn read_status(&self) -> Result<Status> {
        let p = self.status_path();
        let text = std::fs::read_to_string(&p).map_err(|e| LorsError::io(&p, e))?;
        serde_json::from_str(&text).map_err(|e| LorsError::parse(&p, e.to_string()))
    }

    /// Append one metrics row as a single write of a whole line.
    pub fn append_metric(&self, row: &MetricRow) -> Result<()> {
        let p = self.metrics_path();
        let mut line =
            serde_json::to_string(row).map_err(|e| LorsError::parse(&p, e.to_string()))?;
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| LorsError::io(&p, e))?;
        f.write_all(line.as_bytes())
            .map_err(|e| LorsError::io(&p, e))
    }

    /// Every complete metrics row (a partial last line, being written, is ignored).
    pub fn read_metrics(&self) -> Result<Vec<MetricRow>> {
        let p = self.metrics_path();
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LorsError::io(&p, e)),
        };
        let mut rows = Vec::new();
        for (i, line) in text.split_inclusive('\n').enumerate() {
            if !line.ends_with('\n') {
                break;
            }
            rows.push(
                serde_json::from_str(line.trim_end()).map_err(|e| LorsError::Record {
                    path: p.clone(),
                    line: i + 1,
                    detail: e.to_string(),
                })?,
            );
        }
        Ok(rows)
    }

    /// Drop metric rows after `step` (when resuming from a checkpoint at `step`).
    pub fn truncate_metrics_after(&self, step: usize) -> Result<()> {
        let rows: Vec<MetricRow> = self
            .read_metrics()?
            .into_iter()
            .filter(|r| match r {
                MetricRow::Train { step: s, .. }
                | MetricRow::Eval { step: s, .. }
                | MetricRow::Sparsity { step: s, .. }
                | MetricRow::Checkpoint { step: s } => *s <= step,
                MetricRow::Init { .. } => true,
            })
            .collect();
        let mut text = String::new();
        for r in &rows {
            text.push_str(&serde_json::to_string(r).expect("rows serialize"));
            text.push('\n');
        }
        write_atomic(&self.metrics_path(), text.as_bytes())
    }

    /// The newest checkpoint directory, if any.
    pub fn latest_checkpoint(&self) -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.checkpoints_path())
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-"))
                    && p.join("trainer_state.json").is_file()
            })
            .collect();
        dirs.sort();
        dirs.pop()
    }
}

/// The fields of metric rows that a replay must reproduce exactly (times and memory differ).
fn comparable(rows: &[MetricRow]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| match r {
            MetricRow::Train {
                step,
                loss,
                lr,
                grad_norm,
                ..
            } => Some(format!(
                "step {step}: loss {loss} ({:016x}) lr {lr} grad_norm {grad_norm} ({:016x})",
                loss.to_bits(),
                grad_norm.to_bits()
            )),
            MetricRow::Eval {
                step, eval_loss, ..
            } => Some(format!(
                "step {step}: eval_loss {eval_loss} ({:016x})",
                eval_loss.to_bits()
            )),
            MetricRow::Init { .. } | MetricRow::Sparsity { .. } | MetricRow::Checkpoint { .. } => {
                None
            }
        })
        .collect()
}

/// Compare two runs' loss, lr, grad-norm and eval-loss curves bit for bit; the number of
/// rows compared when they are equal.
pub fn compare_metrics(original: &RunDir, other: &RunDir) -> Result<usize> {
    let a = comparable(&original.read_metrics()?);
    let b = comparable(&other.read_metrics()?);
    if let Some((x, y)) = a.iter().zip(&b).find(|(x, y)| x != y) {
        return Err(LorsError::invalid(
            "replay",
            format!("metrics differ:\n  original: {x}\n  other:    {y}"),
        ));
    }
    if a.len() != b.len() {
        return Err(LorsError::invalid(
            "replay",
            format!(
                "the original has {} metric rows, the other run {}",
                a.len(),
                b.len()
            ),
        ));
    }
    Ok(a.len())
}
