//! Perplexity: mean next-token loss over non-overlapping `seq_len` windows of the
//! concatenated text (the WikiText-2 convention of the SparseGPT and Wanda evaluations).

use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::data::{Batch, Blocks, Example, Fill, IdWidth};
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

/// Perplexity of `model` on a data file, its records packed into windows of `seq_len` tokens,
/// over the first `max_windows` of them (all when `None`), `batch_size` at a time.
pub fn perplexity_of_file(
    model: &CausalLm,
    tok: &crate::data::TextTokenizer,
    data: &std::path::Path,
    seq_len: usize,
    batch_size: usize,
    max_windows: Option<usize>,
) -> Result<EvalResult> {
    let blocks =
        crate::data::load_blocks(data, tok, &crate::data::BlockOptions::evaluation(seq_len))?;
    evaluate(model, &blocks.blocks, batch_size, max_windows)
}

/// The WikiText-2 test text as the pruning papers build it (SparseGPT's and Wanda's
/// `"\n\n".join(test["text"])` over the hub's `wikitext-2-raw-v1` test split, whose rows are
/// the raw file's lines with their newline, blank lines empty).
pub fn wikitext_text(path: &std::path::Path) -> Result<String> {
    let raw = std::fs::read_to_string(path).map_err(|e| LorsError::io(path, e))?;
    // Python reads text files with universal newlines.
    let raw = raw.replace("\r\n", "\n").replace('\r', "\n");
    let rows: Vec<&str> = raw
        .split_inclusive('\n')
        .map(|line| if line.trim().is_empty() { "" } else { line })
        .collect();
    if rows.iter().all(|r| r.is_empty()) {
        return Err(LorsError::parse(path, "no text"));
    }
    Ok(rows.join("\n\n"))
}

/// Perplexity on a WikiText-2 raw file the way the pruning papers report it: the joined text
/// ([`wikitext_text`]) tokenised at once (with the tokenizer's BOS), cut into
/// `⌊tokens / seq_len⌋` non-overlapping windows, each scored from its first token.
pub fn wikitext_perplexity(
    model: &CausalLm,
    tok: &crate::data::TextTokenizer,
    path: &std::path::Path,
    seq_len: usize,
    max_windows: Option<usize>,
) -> Result<EvalResult> {
    let ids = tok.encode(&wikitext_text(path)?, true)?;
    let text = Example {
        loss: vec![true; ids.len()],
        ids,
    };
    let width = IdWidth::for_vocab(tok.vocab_size());
    let blocks = Blocks::from_examples([text], Fill::Pack, seq_len.max(1), width)?;
    evaluate(model, &blocks, 1, max_windows)
}

/// Evaluate `model` on `blocks` (all of them, or the first `max_blocks`), `batch_size` at a time.
pub fn evaluate(
    model: &CausalLm,
    blocks: &Blocks,
    batch_size: usize,
    max_blocks: Option<usize>,
) -> Result<EvalResult> {
    let n = max_blocks.unwrap_or(blocks.len()).min(blocks.len());
    if n == 0 {
        return Err(LorsError::invalid("eval", "no evaluation windows"));
    }
    let started = std::time::Instant::now();
    // In a data-parallel run each rank scores batches b ≡ rank (mod N); the sums are gathered
    // and added in batch order, as one process adds them.
    let ranks = crate::dist::ranks();
    let indices: Vec<usize> = (0..n).collect();
    let mut mine = Vec::new();
    for chunk in indices
        .chunks(batch_size.max(1))
        .skip(ranks.rank)
        .step_by(ranks.size)
    {
        let batch = Batch::from_blocks(blocks, chunk, DType::F32)?;
        let (s, c) = model.nll(&batch.ids, &batch.loss_mask)?;
        mine.extend([s, c]);
    }
    let batches = n.div_ceil(batch_size.max(1));
    let per_rank = batches.div_ceil(ranks.size);
    mine.resize(2 * per_rank, 0.0);
    let all = crate::dist::all_gather_f64(&mine);
    let (mut sum, mut count) = (0f64, 0f64);
    for b in 0..batches {
        let at = 2 * ((b % ranks.size) * per_rank + b / ranks.size);
        sum += all[at];
        count += all[at + 1];
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
