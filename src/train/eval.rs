//! Perplexity: mean next-token loss over non-overlapping `seq_len` windows of the
//! concatenated text (the WikiText-2 convention of the SparseGPT and Wanda evaluations).

use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::data::{Batch, Block};
use crate::error::{LorsError, Result};
use crate::model::CausalLm;

/// Result of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: usize,
    pub windows: usize,
    /// Seconds spent scoring the windows (tokenising not included).
    #[serde(default)]
    pub seconds: f64,
}

/// Perplexity of `model` (from `dir`) on a data file, over its first `max_windows` windows of
/// `seq_len` tokens (all when `None`).
pub fn perplexity_of_file(
    model: &CausalLm,
    dir: &crate::model::ModelDir,
    data: &std::path::Path,
    seq_len: usize,
    max_windows: Option<usize>,
) -> Result<EvalResult> {
    let tok = dir.tokenizer()?;
    let blocks =
        crate::data::load_blocks(data, &tok, &crate::data::BlockOptions::evaluation(seq_len))?;
    evaluate(model, &blocks.blocks, 8, max_windows)
}

/// Evaluate `model` on `blocks` (all of them, or the first `max_blocks`), `batch_size` at a time.
pub fn evaluate(
    model: &CausalLm,
    blocks: &[Block],
    batch_size: usize,
    max_blocks: Option<usize>,
) -> Result<EvalResult> {
    let n = max_blocks.unwrap_or(blocks.len()).min(blocks.len());
    if n == 0 {
        return Err(LorsError::invalid("eval", "no evaluation windows"));
    }
    let started = std::time::Instant::now();
    let (mut sum, mut count) = (0f64, 0f64);
    for chunk in blocks[..n].chunks(batch_size.max(1)) {
        let batch = Batch::from_blocks(&chunk.iter().collect::<Vec<_>>(), DType::F32)?;
        let (s, c) = model.nll(&batch.ids, &batch.loss_mask)?;
        sum += s;
        count += c;
    }
    let loss = sum / count.max(1.0);
    Ok(EvalResult {
        loss,
        perplexity: loss.exp(),
        tokens: count as usize,
        windows: n,
        seconds: started.elapsed().as_secs_f64(),
    })
}
