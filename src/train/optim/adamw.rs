//! AdamW with state that can be saved and restored exactly (candle-nn's keeps it private).

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use super::OptimSection;
use crate::error::Result;

/// Decoupled-weight-decay Adam over named variables.
pub struct AdamW {
    config: OptimSection,
    step: usize,
    params: Vec<Param>,
}

struct Param {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

impl AdamW {
    /// Fresh state (zero moments) for `vars`.
    pub fn new(vars: Vec<(String, Var)>, config: &OptimSection) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.zeros_like()?;
                Ok(Param {
                    name,
                    m: zeros.clone(),
                    v: zeros,
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            step: 0,
            params,
        })
    }

    /// Steps taken.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// One update with `grads` (aligned with the variables), scaled by `grad_scale` (for
    /// clipping), at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        let [b1, b2] = self.config.betas;
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (p, g) in self.params.iter_mut().zip(grads) {
            let g = (g * grad_scale)?;
            p.m = ((&p.m * b1)? + (&g * (1.0 - b1))?)?;
            p.v = ((&p.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let m_hat = (&p.m / c1)?;
            let v_hat = (&p.v / c2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.config.eps)?)?;
            let decayed = (p.var.as_tensor() * (1.0 - lr * self.config.weight_decay))?;
            p.var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Moments by `<name>.exp_avg` / `<name>.exp_avg_sq`.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .flat_map(|p| {
                [
                    (format!("{}.exp_avg", p.name), p.m.clone()),
                    (format!("{}.exp_avg_sq", p.name), p.v.clone()),
                ]
            })
            .collect()
    }

    /// Restore moments and the step count saved by [`state_tensors`](Self::state_tensors).
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for p in &mut self.params {
            for (suffix, slot) in [("exp_avg", &mut p.m), ("exp_avg_sq", &mut p.v)] {
                let key = format!("{}.{suffix}", p.name);
                let t = super::saved_state(state, &key, slot.dims())?;
                *slot = t.to_device(slot.device())?.to_dtype(slot.dtype())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_matches_the_closed_form_first_step() {
        // First step: m̂ = g, v̂ = g², update = g/(|g| + eps) ≈ sign(g).
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let c = OptimSection {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("p".into(), var.clone())], &c).unwrap();
        let g = Tensor::new(&[0.5f32, -4.0], &Device::Cpu).unwrap();
        opt.step(&[g], 0.01, 1.0).unwrap();
        let v = var.as_tensor().to_vec1::<f32>().unwrap();
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        for (got, want) in v.iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(opt.step_count(), 1);
    }
}
