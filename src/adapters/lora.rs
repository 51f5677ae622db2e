//! `lora`: plain LoRA, `y = x·Wᵀ + s·x·Aᵀ·Bᵀ`. Its merge is dense: this is the loss of
//! sparsity LoRS exists to avoid, kept as the speed and memory reference.

use candle_core::Tensor;

use super::low_rank::LowRank;
use super::low_rank_op::{LowRankKind, LowRankOp};
use super::SparseLinear;
use crate::error::Result;

#[derive(Debug, Clone)]
pub(crate) struct Lora {
    pub params: LowRank,
    pub scale: f64,
}

impl Lora {
    pub fn new(params: LowRank, scale: f64) -> Self {
        Self { params, scale }
    }

    pub fn forward(&self, base: &SparseLinear, x: &Tensor) -> Result<Tensor> {
        let (a, b) = self.params.in_dtype(x.dtype())?;
        let op = LowRankOp {
            weight: base.weight().clone(),
            scale: self.scale,
            kind: LowRankKind::Lora,
        };
        Ok(x.apply_op3(&a, &b, op)?)
    }
}
