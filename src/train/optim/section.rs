//! The `[optim]` section: which optimiser, its hyperparameters and the learning-rate
//! schedule.

use serde::{Deserialize, Serialize};

use super::OptimizerName;
use crate::error::{LorsError, Result};

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "kebab-case")]
pub enum Schedule {
    #[default]
    Cosine,
    Linear,
    Constant,
}

crate::named!(Schedule, "optim.schedule");

/// The optimiser and the schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// `adamw`, or `lora-rite` (transformation-invariant, per A/B pair; not for spp).
    #[schemars(!skip_serializing_if)]
    #[serde(default, skip_serializing_if = "OptimizerName::is_default")]
    pub name: OptimizerName,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub warmup_steps: usize,
    /// Clip the global gradient norm to this value (0 disables clipping).
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
}

fn default_lr() -> f64 {
    1e-3
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_clip() -> f64 {
    1.0
}

impl Default for OptimSection {
    fn default() -> Self {
        toml::from_str("").expect("every optim field has a default")
    }
}

impl OptimSection {
    /// Check the settings: every value finite and in its range.
    pub fn validate(&self) -> Result<()> {
        let o = self;
        let bad = |k: &str, r: String| Err(LorsError::invalid(k, r));
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad("optim.lr", format!("{} must be positive", o.lr));
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return bad("optim.betas", format!("{:?} must be in [0, 1)", o.betas));
        }
        for (key, value, zero_ok) in [
            ("optim.eps", o.eps, false),
            ("optim.weight_decay", o.weight_decay, true),
            ("optim.grad_clip", o.grad_clip, true),
        ] {
            let in_range = if zero_ok { value >= 0.0 } else { value > 0.0 };
            if !(value.is_finite() && in_range) {
                let range = if zero_ok {
                    "finite and >= 0"
                } else {
                    "finite and > 0"
                };
                return bad(key, format!("{value} must be {range}"));
            }
        }
        Ok(())
    }
}
