//! `sqft`: the masked adapter written with ordinary autograd ops,
//! `y = x·(W + (s·B·A) ⊙ M)ᵀ`. Exact gradient, but the graph keeps the out x in products
//! (and the dense mask is a persistent buffer, as in SQFT).

use candle_core::Tensor;

use super::low_rank::LowRank;
use super::SparseLinear;
use crate::error::Result;

#[derive(Debug, Clone)]
pub(crate) struct Sqft {
    pub params: LowRank,
    pub scale: f64,
    dense_mask: Tensor,
}

impl Sqft {
    pub fn new(base: &SparseLinear, params: LowRank, scale: f64) -> Result<Self> {
        let w = base.weight();
        Ok(Self {
            params,
            scale,
            dense_mask: base.mask().to_tensor(w.dtype(), w.device())?,
        })
    }

    /// `y` for `A`, `B` in the compute dtype (graph nodes when they are variables).
    pub fn forward(
        &self,
        base: &SparseLinear,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
    ) -> Result<Tensor> {
        let delta = ((b.matmul(a)? * self.scale)? * &self.dense_mask)?;
        let merged = (base.weight() + delta)?;
        linear_through(x, &merged)
    }
}

/// `x·Wᵀ` for `x` of shape (..., in) through ordinary autograd ops.
pub(crate) fn linear_through(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (out_f, in_f) = weight.dims2()?;
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("checked input") = out_f;
    let x2 = x.reshape(((), in_f))?;
    Ok(x2.matmul(&weight.t()?)?.reshape(dims)?)
}
