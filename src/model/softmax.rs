//! Softmax over the last dimension with candle's fused kernel (one pass; bf16 inputs are
//! accumulated in f32) and a backward that needs only the output:
//! `grad_x = y ⊙ (g − Σ g ⊙ y)`, computed in f32 (f64 for f64).
//!
//! candle-nn's fused `softmax_last_dim` has no backward, and its differentiable `softmax` is
//! five ops whose intermediates the graph keeps until backward: at seq 2048 with 32 heads
//! that is gigabytes per layer of attention probabilities.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};

/// The graph node of a softmax whose output was computed beforehand by the fused kernel;
/// its forward hands that output over (taking it out of the op, so the graph holds it once).
struct SoftmaxNode {
    output: Mutex<Option<Tensor>>,
}

impl SoftmaxNode {
    fn take(&self) -> Result<Tensor> {
        self.output
            .lock()
            .map_err(|_| candle_core::Error::Msg("softmax node lock poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("softmax node ran twice".into()))
    }
}

impl CustomOp1 for SoftmaxNode {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, _x: &CpuStorage, _lx: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = self.take()?;
        let (s, l) = y.storage_and_layout();
        match &*s {
            candle_core::Storage::Cpu(c) => Ok((c.try_clone(l)?, y.shape().clone())),
            _ => Err(candle_core::Error::Msg(
                "softmax output on another device".into(),
            )),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _x: &candle_core::CudaStorage,
        _lx: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = self.take()?;
        let (s, l) = y.storage_and_layout();
        match &*s {
            candle_core::Storage::Cuda(c) => Ok((c.try_clone(l)?, y.shape().clone())),
            _ => Err(candle_core::Error::Msg(
                "softmax output on another device".into(),
            )),
        }
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let acc = super::accumulation(y.dtype());
        let y32 = y.to_dtype(acc)?;
        let g32 = g.to_dtype(acc)?;
        let dot = (&g32 * &y32)?.sum_keepdim(D::Minus1)?;
        let grad = (y32 * g32.broadcast_sub(&dot)?)?;
        Ok(Some(grad.to_dtype(x.dtype())?))
    }
}

/// `softmax(x)` over the last dimension, differentiable, keeping only `x` and the output
/// for backward.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let y = candle_nn::ops::softmax_last_dim(&x.contiguous()?)?;
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op1(SoftmaxNode {
        output: Mutex::new(Some(y)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The gradient matches central finite differences in f64 (step 1e-6: truncation error
    /// ~1e-12, rounding ~1e-10 on values of order 1; tolerance 1e-7).
    #[test]
    fn gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let x0: Vec<f64> = (0..30)
            .map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.3)
            .collect();
        let w = Tensor::from_vec(
            (0..30)
                .map(|i| ((i * 13 % 7) as f64) - 3.0)
                .collect::<Vec<_>>(),
            (2, 3, 5),
            &dev,
        )
        .unwrap();
        let loss = |x: &Tensor| {
            (softmax_last_dim(x).unwrap() * &w)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let x = Var::from_vec(x0.clone(), (2, 3, 5), &dev).unwrap();
        let grads = loss(x.as_tensor()).backward().unwrap();
        let g = grads
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let h = 1e-6;
        for i in 0..x0.len() {
            let at = |d: f64| {
                let mut v = x0.clone();
                v[i] += d;
                let t = Tensor::from_vec(v, (2, 3, 5), &dev).unwrap();
                loss(&t).to_scalar::<f64>().unwrap()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-7, "element {i}: {fd} vs {}", g[i]);
        }
        // The forward is the softmax: rows sum to one.
        let y = softmax_last_dim(x.as_tensor()).unwrap();
        let sums = y
            .sum(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-12), "{sums:?}");
    }
}
