//! Merging an adapter into its base weight, with the sparsity check in the code path.
//!
//! Masked merge: `M ? W + ΔW : +0.0`, so pruned weights are exact `+0.0` (all bits clear)
//! even when an explicit mask prunes a weight that was nonzero, or `W + ΔW` is negative there.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::SparseLinear;
use crate::error::{LorsError, Result};

/// What a merge did to a layer's sparsity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MergeReport {
    /// Fraction of nonzero weights before the merge (the mask's density).
    pub density_before: f64,
    /// Fraction of nonzero weights in the merged weight.
    pub density_after: f64,
    /// Whether the merged weight is nonzero exactly where the mask keeps a weight and `+0.0`
    /// (bit for bit) where it prunes one.
    pub pattern_preserved: bool,
    /// Kept weights whose merged value was exactly zero (an exact cancellation, or underflow
    /// in the storage dtype) and were set to the dtype's smallest subnormal so that the merged
    /// model still encodes its mask as `W != 0`.
    pub nudged: usize,
}

/// `M ? W + ΔW : +0.0` (masked) or `W + ΔW` (dense), computed in f32 (f64 for f64 weights) and cast
/// to `dtype`.
pub(crate) fn merge(
    base: &SparseLinear,
    delta: &Tensor,
    masked: bool,
    dtype: DType,
) -> Result<(Tensor, MergeReport)> {
    let w = base.weight();
    let compute = if w.dtype() == DType::F64 || dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let mask = base.mask();
    let (out_f, in_f) = base.dims();
    if delta.dims() != [out_f, in_f] {
        return Err(LorsError::shape(
            "adapter update",
            format!("[{out_f}, {in_f}]"),
            format!("{:?}", delta.dims()),
        ));
    }
    let w32 = w.to_dtype(compute)?;
    let delta = delta.to_dtype(compute)?;
    let merged = if masked {
        mask.select(&(w32 + delta)?)?
    } else {
        (w32 + delta)?
    };
    let merged = merged.to_dtype(dtype)?;
    let density_before = mask.density();
    if !masked {
        let density_after = merged
            .ne(0f64)?
            .to_dtype(DType::F64)?
            .mean_all()?
            .to_scalar::<f64>()?;
        let pattern_preserved = mask.check_pattern(&merged)?.is_exact();
        return Ok((
            merged,
            MergeReport {
                density_before,
                density_after,
                pattern_preserved,
                nudged: 0,
            },
        ));
    }
    let (merged, nudged) = mask.nudge_kept_zeros(&merged)?;
    let check = mask.check_pattern(&merged)?;
    if !check.is_exact() {
        return Err(LorsError::SparsityViolation {
            what: format!("merge of a {out_f}x{in_f} layer"),
            detail: format!(
                "{} pruned weights became nonzero, {} hold -0.0 and {} kept weights are zero",
                check.pruned_nonzero, check.pruned_negative_zero, check.kept_zero
            ),
        });
    }
    Ok((
        merged,
        MergeReport {
            density_before,
            density_after: mask.density(),
            pattern_preserved: true,
            nudged,
        },
    ))
}
