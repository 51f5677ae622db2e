//! RMSNorm and rotary embeddings with candle's fused kernels (inference-only in candle), rope's
//! backward as the inverse rotation, and the dtype sums accumulate in. Nothing here records a
//! graph; the element-wise backwards are in `fused`.

use candle_core::{DType, Tensor};

use crate::error::Result;

/// The dtype sums are accumulated in: f32 for the half types, else the dtype itself.
pub(crate) fn accumulation(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// `RMSNorm(x)·w` with candle's fused kernel (f32 accumulation for half types); f64, which
/// the kernel lacks (gradient checks), through the op-by-op form.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(match x.dtype() {
        DType::F64 => candle_nn::ops::rms_norm_slow(x, weight, eps as f32)?,
        _ => candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)?,
    })
}

/// Rotary tables for a run of positions: `cos`, `sin` (positions, head_dim/2) in the compute
/// dtype, and `−sin`, which turns the rotation into its inverse (the backward of rope).
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    cos: Tensor,
    sin: Tensor,
    neg_sin: Tensor,
}

impl Rope {
    /// The tables of positions `offset..offset + len` for inverse frequencies (1, head_dim/2).
    pub fn new(inv_freq: &Tensor, offset: usize, len: usize, dtype: DType) -> Result<Self> {
        let device = inv_freq.device();
        let positions = Tensor::arange(offset as u32, (offset + len) as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((len, 1))?;
        let freqs = positions.broadcast_mul(inv_freq)?;
        let sin = freqs.sin()?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            neg_sin: sin.neg()?.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
        })
    }

    /// Rotate `x` (batch, heads, positions, head_dim).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::rotary_emb::rope(
            &x.contiguous()?,
            &self.cos,
            &self.sin,
        )?)
    }

    /// The gradient of [`apply`](Self::apply): the inverse rotation of `dy`.
    pub fn backward(&self, dy: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::rotary_emb::rope(
            &dy.contiguous()?,
            &self.cos,
            &self.neg_sin,
        )?)
    }

    /// `(cos, sin)`, for the autograd reference path.
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fused::{rms_norm_backward, swiglu, swiglu_backward};
    use crate::model::testing::{assert_close, wave};
    use candle_core::{Device, Var};

    #[test]
    fn rms_norm_backward_matches_autograd() {
        let x = Var::from_tensor(&wave(&[2, 3, 4], 5)).unwrap();
        let w = wave(&[4], 3);
        let dy = wave(&[2, 3, 4], 7);
        let y = candle_nn::ops::rms_norm_slow(x.as_tensor(), &w, 1e-5).unwrap();
        let grads = (y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let want = grads.get(&x).unwrap();
        assert_close(
            &rms_norm_backward(x.as_tensor(), &w, 1e-5, &dy).unwrap(),
            want,
        );
    }

    #[test]
    fn rope_backward_matches_autograd_and_forward_matches_the_slow_form() {
        let inv = Tensor::new(&[[1.0f32, 0.1]], &Device::Cpu).unwrap();
        let rope = Rope::new(&inv, 3, 5, DType::F64).unwrap();
        let x = Var::from_tensor(&wave(&[1, 2, 5, 4], 5)).unwrap();
        let dy = wave(&[1, 2, 5, 4], 3);
        let (cos, sin) = rope.tables();
        let y = candle_nn::rotary_emb::rope_slow(x.as_tensor(), cos, sin).unwrap();
        assert_close(&rope.apply(x.as_tensor()).unwrap(), &y);
        let grads = (y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(&rope.backward(&dy).unwrap(), grads.get(&x).unwrap());
    }

    #[test]
    fn swiglu_and_its_backward_match_autograd() {
        let g = Var::from_tensor(&wave(&[3, 4], 5)).unwrap();
        let u = Var::from_tensor(&wave(&[3, 4], 7)).unwrap();
        let dm = wave(&[3, 4], 11);
        let m = (g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap();
        assert_close(&swiglu(g.as_tensor(), u.as_tensor()).unwrap(), &m);
        let grads = (m * &dm).unwrap().sum_all().unwrap().backward().unwrap();
        let (dg, du) = swiglu_backward(g.as_tensor(), u.as_tensor(), &dm).unwrap();
        assert_close(&dg, grads.get(&g).unwrap());
        assert_close(&du, grads.get(&u).unwrap());
    }
}
