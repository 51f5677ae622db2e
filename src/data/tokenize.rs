//! Tokenising records and cutting them into fixed-length blocks.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use super::Record;
use crate::error::{LorsError, Result};

/// A Hugging Face `tokenizer.json` with the model's special tokens.
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pub eos_id: Option<u32>,
}

impl TextTokenizer {
    /// Load `tokenizer.json`; `eos_id` comes from the model config.
    pub fn from_file(path: &Path, eos_id: Option<u32>) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| LorsError::Tokenizer {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            eos_id,
        })
    }

    /// Token ids of `text`, with the tokenizer's own special tokens (BOS for Llama) when
    /// `special` is set.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| LorsError::Tokenizer {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of token ids, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| LorsError::Tokenizer {
                path: self.path.clone(),
                detail: e.to_string(),
            })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// A tokenised record: ids and, per id, whether predicting it counts in the loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub loss: Vec<bool>,
}

/// A fixed-length training sequence; `loss[j]` says whether predicting `ids[j]` counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub ids: Vec<u32>,
    pub loss: Vec<bool>,
}

/// The Alpaca prompt for an instruction (and optional input).
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        format!(
            "Below is an instruction that describes a task. Write a response that appropriately \
             completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        )
    } else {
        format!(
            "Below is an instruction that describes a task, paired with an input that provides \
             further context. Write a response that appropriately completes the request.\n\n\
             ### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        )
    }
}

/// Tokenise records: documents as BOS + text + EOS; instructions as the Alpaca prompt plus
/// the response and EOS, with the prompt out of the loss unless `train_on_prompt`.
pub fn tokenize_records(
    records: &[Record],
    tok: &TextTokenizer,
    train_on_prompt: bool,
) -> Result<Vec<Example>> {
    records
        .iter()
        .map(|r| {
            let mut ex = match r {
                Record::Text(text) => {
                    let ids = tok.encode(text, true)?;
                    Example {
                        loss: vec![true; ids.len()],
                        ids,
                    }
                }
                Record::Instruction {
                    instruction,
                    input,
                    output,
                } => {
                    let prompt = tok.encode(&alpaca_prompt(instruction, input), true)?;
                    let response = tok.encode(output, false)?;
                    let mut loss = vec![train_on_prompt; prompt.len()];
                    loss.extend(std::iter::repeat_n(true, response.len()));
                    Example {
                        ids: [prompt, response].concat(),
                        loss,
                    }
                }
            };
            if let Some(eos) = tok.eos_id {
                ex.ids.push(eos);
                ex.loss.push(true);
            }
            Ok(ex)
        })
        .collect()
}

/// Concatenate examples and cut the stream into non-overlapping blocks of `seq_len` tokens
/// (the remainder is dropped). Each block predicts its tokens 1..seq_len from the ones before.
pub fn pack_blocks(examples: &[Example], seq_len: usize) -> Vec<Block> {
    let ids: Vec<u32> = examples
        .iter()
        .flat_map(|e| e.ids.iter().copied())
        .collect();
    let loss: Vec<bool> = examples
        .iter()
        .flat_map(|e| e.loss.iter().copied())
        .collect();
    ids.chunks_exact(seq_len)
        .zip(loss.chunks_exact(seq_len))
        .map(|(i, l)| Block {
            ids: i.to_vec(),
            loss: l.to_vec(),
        })
        .collect()
}

/// One block per example, truncated or padded (with `pad_id`, out of the loss) to `seq_len`.
pub fn pad_blocks(examples: &[Example], seq_len: usize, pad_id: u32) -> Vec<Block> {
    examples
        .iter()
        .map(|e| {
            let n = e.ids.len().min(seq_len);
            let mut ids = e.ids[..n].to_vec();
            let mut loss = e.loss[..n].to_vec();
            ids.resize(seq_len, pad_id);
            loss.resize(seq_len, false);
            Block { ids, loss }
        })
        .collect()
}
