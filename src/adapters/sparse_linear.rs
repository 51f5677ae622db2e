//! The frozen base of an adapted layer: a (pruned) weight, its bias and its mask.

use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::low_rank_op::{FrozenLinearOp, OpMask};
use crate::device::{compute_dtypes_text, computes_in};
use crate::error::{LorsError, Result};
use crate::sparsity::BitMask;

/// Frozen linear layer `y = x·Wᵀ + bias` with the mask `M` of its kept weights.
#[derive(Debug, Clone)]
pub struct SparseLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    mask: OpMask,
}

impl SparseLinear {
    /// Wrap a frozen weight (out x in). Without an explicit mask, `M = (W != 0)`; give one
    /// when kept weights may be exactly zero (e.g. rounded to zero in bf16).
    pub fn new(weight: Tensor, bias: Option<Tensor>, mask: Option<BitMask>) -> Result<Self> {
        let (out_f, in_f) = weight.dims2().map_err(|_| {
            LorsError::shape("linear weight", "[out, in]", format!("{:?}", weight.dims()))
        })?;
        if !weight.dtype().is_float() {
            return Err(LorsError::UnsupportedDType {
                dtype: weight.dtype(),
                what: "a linear weight".into(),
            });
        }
        if let Some(b) = &bias {
            if b.dims() != [out_f] {
                return Err(LorsError::shape(
                    "linear bias",
                    format!("[{out_f}]"),
                    format!("{:?}", b.dims()),
                ));
            }
        }
        let mask = match mask {
            Some(m) => {
                m.expect_dims("mask", out_f, in_f)?;
                m
            }
            None => BitMask::from_nonzero(&weight)?,
        };
        Ok(Self {
            mask: OpMask::new(Arc::new(mask), weight.device())?,
            weight: weight.detach().contiguous()?,
            bias: bias.map(|b| b.detach()),
        })
    }

    /// The same layer (mask and bias shared) with another weight of the same shape, e.g. a
    /// perturbed one.
    pub(crate) fn with_weight(&self, weight: Tensor) -> Self {
        Self {
            weight,
            bias: self.bias.clone(),
            mask: self.mask.clone(),
        }
    }

    /// The frozen weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The frozen bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The mask of kept weights.
    pub fn mask(&self) -> &Arc<BitMask> {
        &self.mask.bits
    }

    /// The mask as the op kernels read it (bit-packed on the weight's device).
    pub(crate) fn op_mask(&self) -> &OpMask {
        &self.mask
    }

    /// `(out_features, in_features)`.
    pub fn dims(&self) -> (usize, usize) {
        self.mask.bits.dims()
    }

    /// Fraction of weights the mask keeps.
    pub fn density(&self) -> f64 {
        self.mask.bits.density()
    }

    /// Dtype of adapter parameters: f64 for f64 weights (gradient checks), else f32 masters.
    pub(crate) fn param_dtype(&self) -> DType {
        if self.weight.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }

    /// Error unless `x` is (..., in_features) in the weight's dtype and on its device.
    pub(crate) fn check_input(&self, x: &Tensor) -> Result<()> {
        let (_, in_f) = self.dims();
        if x.dims().last() != Some(&in_f) {
            return Err(LorsError::shape(
                "layer input",
                format!("[..., {in_f}]"),
                format!("{:?}", x.dims()),
            ));
        }
        if x.dtype() != self.weight.dtype() || !computes_in(x.dtype(), x.device().is_cpu()) {
            return Err(LorsError::UnsupportedDType {
                dtype: x.dtype(),
                what: format!(
                    "a layer input (the weight is {:?}; compute needs {})",
                    self.weight.dtype(),
                    compute_dtypes_text(x.device().is_cpu())
                ),
            });
        }
        if !x.device().same_device(self.weight.device()) {
            return Err(LorsError::invalid(
                "layer input",
                format!(
                    "is on {:?}, the weight on {:?}",
                    x.device().location(),
                    self.weight.device().location()
                ),
            ));
        }
        Ok(())
    }

    /// `y + bias` (broadcast over leading dims).
    pub(crate) fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// The frozen layer alone: `x·Wᵀ + bias` (backward gives `grad_x` only).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let op = FrozenLinearOp {
            weight: self.weight.clone(),
        };
        self.add_bias(x.contiguous()?.apply_op1(op)?)
    }

    /// [`forward`](Self::forward) without a graph node.
    pub fn infer(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let op = FrozenLinearOp {
            weight: self.weight.clone(),
        };
        self.add_bias(x.contiguous()?.apply_op1_no_bwd(&op)?)
    }

    /// The input gradient `grad_y·W` for an output gradient (..., out_features).
    pub fn backward_input(&self, grad_y: &Tensor) -> Result<Tensor> {
        let (out_f, in_f) = self.dims();
        let mut dims = grad_y.dims().to_vec();
        let g = grad_y.reshape((grad_y.elem_count() / out_f, out_f))?;
        *dims.last_mut().expect("an output gradient has dims") = in_f;
        Ok(crate::cpu::mm(&g, &self.weight)?.reshape(dims)?)
    }

    /// The gradient the frozen weight would get, `grad_yᵀ·x` (out x in, f32).
    pub fn weight_grad(&self, x: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
        let (out_f, in_f) = self.dims();
        let g = grad_y.reshape((grad_y.elem_count() / out_f, out_f))?;
        let x = x.reshape((x.elem_count() / in_f, in_f))?;
        Ok(crate::cpu::mm(&g.t()?, &x)?.to_dtype(DType::F32)?)
    }
}
