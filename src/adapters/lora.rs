//! `lora`: plain LoRA, `y = x·Wᵀ + s·x·Aᵀ·Bᵀ`. Its merge is dense: this is the loss of
//! sparsity LoRS exists to avoid, kept as the speed and memory reference.

use super::low_rank::LowRank;
use super::low_rank_op::{LowRankKind, LowRankOp};
use super::SparseLinear;

#[derive(Debug, Clone)]
pub(crate) struct Lora {
    pub params: LowRank,
    pub scale: f64,
}

impl Lora {
    pub fn new(params: LowRank, scale: f64) -> Self {
        Self { params, scale }
    }

    /// The op for `base`; `y = x.apply_op3(A, B, op)`.
    pub fn op(&self, base: &SparseLinear) -> LowRankOp {
        LowRankOp {
            weight: base.weight().clone(),
            scale: self.scale,
            kind: LowRankKind::Lora,
        }
    }
}
