//! The causal language-modelling loss.

use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// Mean next-token cross-entropy over the targets whose mask is 1, and their count.
/// `logits` (b, t, V), `ids` (b, t) u32, `mask` (b, t): position `j` predicts `ids[j+1]`,
/// weighted by `mask[j+1]`.
pub fn causal_lm_loss(logits: &Tensor, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, f64)> {
    let (sum, count) = causal_lm_nll_sum(logits, ids, mask)?;
    Ok(((sum / count.max(1.0))?, count))
}

/// Summed next-token negative log-likelihood over masked targets (accumulated in f32, or
/// f64 for f64 logits), and the target count.
pub fn causal_lm_nll_sum(logits: &Tensor, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, f64)> {
    let (_, t, _) = logits.dims3()?;
    let logits = logits.narrow(1, 0, t - 1)?;
    let logits = logits.to_dtype(crate::model::accumulation(logits.dtype()))?;
    let targets = ids.narrow(1, 1, t - 1)?.contiguous()?;
    let mask = mask.narrow(1, 1, t - 1)?.to_dtype(DType::F32)?;
    // Counted where the batch lives (the host), before moving it next to the logits.
    let count = mask.sum_all()?.to_scalar::<f32>()? as f64;
    let (targets, mask) = (
        targets.to_device(logits.device())?,
        mask.to_device(logits.device())?,
    );
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = logp
        .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
        .squeeze(D::Minus1)?;
    let sum = (picked * mask.to_dtype(logp.dtype())?)?.sum_all()?.neg()?;
    Ok((sum, count))
}
