//! SoRA's gate step (arXiv 2311.11696): the gates `g` of `s·B·diag(g)·A` take an Adam step
//! of their own (no weight decay) and then the proximal step of the L1 penalty `ξ·‖g‖₁`,
//! soft-thresholding `g ← sign(g)·max(|g| − ξ, 0)`, as the authors' `SparseAdamW` does
//! (a constant ξ per step). A gate at zero removes its rank component.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use super::AdamW;
use super::OptimSection;
use crate::error::{LorsError, Result};

/// Adam plus soft-thresholding over every adapted layer's gate.
pub struct SoraGates {
    adam: AdamW,
    vars: Vec<Var>,
    threshold: f64,
}

impl SoraGates {
    /// Fresh state for `gates` (named), thresholded by `threshold` (ξ) each step.
    pub fn new(gates: Vec<(String, Var)>, config: &OptimSection, threshold: f64) -> Result<Self> {
        if !(threshold.is_finite() && threshold >= 0.0) {
            return Err(LorsError::invalid(
                "adapter.sora_threshold",
                format!("{threshold} must be ≥ 0"),
            ));
        }
        let vars = gates.iter().map(|(_, v)| v.clone()).collect();
        let config = OptimSection {
            weight_decay: 0.0,
            ..config.clone()
        };
        Ok(Self {
            adam: AdamW::new(gates, &config)?,
            vars,
            threshold,
        })
    }

    /// How many gates (one per adapted layer).
    pub fn count(&self) -> usize {
        self.vars.len()
    }

    /// Adam on `grads` (times `grad_scale`) at `lr`, then the soft-threshold.
    pub fn step(&mut self, grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        self.adam.step(grads, lr, grad_scale)?;
        for v in &self.vars {
            v.set(&soft_threshold(v.as_tensor(), self.threshold)?)?;
        }
        Ok(())
    }

    /// The gates' Adam moments.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        self.adam.state_tensors()
    }

    /// Restore the moments after `step` steps.
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        self.adam.restore(state, step)
    }
}

/// `sign(g)·max(|g| − ξ, 0)`, written as `relu(g − ξ) − relu(−g − ξ)`.
pub fn soft_threshold(g: &Tensor, xi: f64) -> Result<Tensor> {
    Ok(((g - xi)?.relu()? - (g.neg()? - xi)?.relu()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The soft-threshold against its definition; one step of Adam's first update (≈ lr in
    /// the gradient's direction) then the threshold, on hand-picked gates.
    #[test]
    fn gates_take_an_adam_step_then_the_soft_threshold() {
        let g = Tensor::new(&[1.0f32, -0.5, 0.0005, -0.0002, 0.0], &Device::Cpu).unwrap();
        let got = soft_threshold(&g, 1e-3).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, vec![0.999, -0.499, 0.0, 0.0, 0.0]);
        let var = Var::new(&[1.0f32, 0.0015, -0.3], &Device::Cpu).unwrap();
        let c = OptimSection {
            weight_decay: 0.5, // ignored for gates
            ..Default::default()
        };
        let mut opt = SoraGates::new(vec![("g".into(), var.clone())], &c, 1e-3).unwrap();
        let grad = Tensor::new(&[0.2f32, 0.1, -0.4], &Device::Cpu).unwrap();
        opt.step(&[grad], 1e-3, 1.0).unwrap();
        // Adam's first step moves each gate by lr·g/(|g| + eps) ≈ lr against the gradient.
        let want = [1.0 - 1e-3 - 1e-3, 0.0, -0.3 + 1e-3 + 1e-3];
        for (got, want) in var.as_tensor().to_vec1::<f32>().unwrap().iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
        let err = SoraGates::new(vec![], &c, -1.0).err().unwrap().to_string();
        assert!(err.contains("adapter.sora_threshold"), "{err}");
    }
}
