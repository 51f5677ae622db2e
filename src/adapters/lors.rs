//! `lors`: the adapter merged through the mask, `y = x·((W + s·B·A) ⊙ M)ᵀ`, with weight
//! recompute and the rearranged (`approx`) or exact adapter gradient (see `low_rank_op`).

use super::low_rank::LowRank;
use super::low_rank_op::{GradMode, LowRankKind, LowRankOp};
use super::SparseLinear;

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

    /// The op for `base`; `y = x.apply_op3(A, B, op)`.
    pub fn op(&self, base: &SparseLinear) -> LowRankOp {
        LowRankOp {
            weight: base.weight().clone(),
            scale: self.scale,
            kind: LowRankKind::Lors {
                mask: base.op_mask().clone(),
                grad: self.grad,
            },
        }
    }
}
