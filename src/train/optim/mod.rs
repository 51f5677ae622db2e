//! Optimisers whose state can be saved and restored exactly (`optim.name`): AdamW over every
//! adapter tensor, or LoRA-RITE over each layer's `A`/`B` pair; and the learning-rate schedule.

mod adamw;
mod lora_rite;
mod section;
mod sora;

use std::collections::HashMap;

use candle_core::{Tensor, Var};

pub use adamw::AdamW;
pub use lora_rite::LoraRite;
pub use section::{OptimSection, Schedule};
pub use sora::SoraGates;

use crate::error::{LorsError, Result};

/// Which optimiser updates the adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "kebab-case")]
pub enum OptimizerName {
    /// Decoupled-weight-decay Adam, element-wise.
    #[default]
    Adamw,
    /// LoRA-RITE (arXiv 2410.20625): transformation-invariant preconditioning of each
    /// `A`/`B` pair; needs a low-rank pair (not `spp`).
    LoraRite,
}

crate::named!(OptimizerName, "optim.name");

impl OptimizerName {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The optimiser a profile names over the `A`/`B` pairs, and SoRA's gate step when the
/// adapters have gates.
pub struct Optimizer {
    pairs: PairOptimizer,
    gates: Option<SoraGates>,
}

/// The optimiser of the `A`/`B` pairs.
enum PairOptimizer {
    AdamW(AdamW),
    LoraRite(LoraRite),
}

impl Optimizer {
    /// Fresh state for `vars` (`[A, B]` per adapted layer, in order, with PEFT names) and
    /// SoRA's `gates` (none without SoRA), soft-thresholded by `gate_threshold` each step.
    pub fn new(
        vars: Vec<(String, Var)>,
        gates: Vec<(String, Var)>,
        config: &OptimSection,
        gate_threshold: f64,
    ) -> Result<Self> {
        let pairs = match config.name {
            OptimizerName::Adamw => PairOptimizer::AdamW(AdamW::new(vars, config)?),
            OptimizerName::LoraRite => PairOptimizer::LoraRite(LoraRite::new(vars, config)?),
        };
        let gates = match gates.is_empty() {
            true => None,
            false => Some(SoraGates::new(gates, config, gate_threshold)?),
        };
        Ok(Self { pairs, gates })
    }

    /// Steps taken.
    pub fn step_count(&self) -> usize {
        match &self.pairs {
            PairOptimizer::AdamW(o) => o.step_count(),
            PairOptimizer::LoraRite(o) => o.step_count(),
        }
    }

    /// One update with `grads` (the pairs' in order, then the gates'), scaled by
    /// `grad_scale` (for clipping), at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        let gates = self.gates.as_ref().map_or(0, SoraGates::count);
        let (pairs, gate_grads) = grads.split_at(grads.len() - gates);
        match &mut self.pairs {
            PairOptimizer::AdamW(o) => o.step(pairs, lr, grad_scale)?,
            PairOptimizer::LoraRite(o) => o.step(pairs, lr, grad_scale)?,
        }
        match &mut self.gates {
            Some(g) => g.step(gate_grads, lr, grad_scale),
            None => Ok(()),
        }
    }

    /// The state to checkpoint, by name.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = match &self.pairs {
            PairOptimizer::AdamW(o) => o.state_tensors(),
            PairOptimizer::LoraRite(o) => o.state_tensors(),
        };
        if let Some(g) = &self.gates {
            out.extend(g.state_tensors());
        }
        out
    }

    /// Restore the state saved by [`state_tensors`](Self::state_tensors) after `step` steps.
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        match &mut self.pairs {
            PairOptimizer::AdamW(o) => o.restore(state, step)?,
            PairOptimizer::LoraRite(o) => o.restore(state, step)?,
        }
        match &mut self.gates {
            Some(g) => g.restore(state, step),
            None => Ok(()),
        }
    }
}

/// The saved state tensor `key`, which must have `dims`; errors name the key.
fn saved_state<'a>(
    state: &'a HashMap<String, Tensor>,
    key: &str,
    dims: &[usize],
) -> Result<&'a Tensor> {
    let t = state.get(key).ok_or_else(|| {
        LorsError::invalid(
            "checkpoint",
            format!("optimizer state `{key}` is missing (saved by another optimizer?)"),
        )
    })?;
    if t.dims() != dims {
        return Err(LorsError::shape(
            format!("optimizer state `{key}`"),
            format!("{dims:?}"),
            format!("{:?}", t.dims()),
        ));
    }
    Ok(t)
}

/// Learning rate at optimiser step `step` (0-based) of `total`: linear warm-up from
/// `lr/warmup` to `lr`, then constant, linear to 0, or cosine to 0.
pub fn lr_at(config: &OptimSection, step: usize, total: usize) -> f64 {
    let lr = config.lr;
    let warm = config.warmup_steps;
    if step < warm {
        return lr * (step + 1) as f64 / warm as f64;
    }
    let span = total.saturating_sub(warm).max(1) as f64;
    let progress = ((step - warm) as f64 / span).min(1.0);
    match config.schedule {
        Schedule::Constant => lr,
        Schedule::Linear => lr * (1.0 - progress),
        Schedule::Cosine => lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_then_decay() {
        let mut c = OptimSection {
            lr: 1.0,
            warmup_steps: 4,
            ..Default::default()
        };
        assert_eq!(lr_at(&c, 0, 104), 0.25);
        assert_eq!(lr_at(&c, 3, 104), 1.0);
        assert_eq!(lr_at(&c, 4, 104), 1.0);
        assert!((lr_at(&c, 54, 104) - 0.5).abs() < 1e-12);
        c.schedule = Schedule::Linear;
        assert!((lr_at(&c, 54, 104) - 0.5).abs() < 1e-12);
        assert!((lr_at(&c, 103, 104) - 0.01).abs() < 1e-12);
        c.schedule = Schedule::Constant;
        assert_eq!(lr_at(&c, 100, 104), 1.0);
    }
}
