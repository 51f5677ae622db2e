//! `lors`: the adapter merged through the mask, `y = x·((W + s·B·A) ⊙ M)ᵀ`, with weight
//! recompute and the rearranged (`approx`) or exact adapter gradient (see `low_rank_op`).

use candle_core::Tensor;

use super::low_rank::LowRank;
use super::low_rank_op::{GradMode, LowRankKind, LowRankOp};
use super::SparseLinear;
use crate::error::Result;

#[derive(Debug, Clone)]
pub(crate) struct Lors {
    pub params: LowRank,
    pub scale: f64,
    grad: GradMode,
}

impl Lors {
    pub fn new(params: LowRank, scale: f64, grad: GradMode) -> Self {
        Self {
            params,
            scale,
            grad,
        }
    }

    pub fn forward(&self, base: &SparseLinear, x: &Tensor) -> Result<Tensor> {
        let (a, b) = self.params.in_dtype(x.dtype())?;
        let op = LowRankOp {
            weight: base.weight().clone(),
            scale: self.scale,
            kind: LowRankKind::Lors {
                mask: base.op_mask().clone(),
                grad: self.grad,
            },
        };
        Ok(x.apply_op3(&a, &b, op)?)
    }
}
