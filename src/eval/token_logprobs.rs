//! Each token's log-probability given the tokens before it, over one text: what another
//! runtime (llama.cpp on a GGUF export) is compared with, token by token.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::data::TextTokenizer;
use crate::error::{LorsError, Result};
use crate::model::CausalLm;

/// The tokens of a text and `logprobs[i] = log p(tokens[i + 1] | tokens[..=i])`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    pub text: PathBuf,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f64>,
}

/// [`TokenLogprobs`] of the text file `path`, encoded as the tokenizer does (BOS first where
/// it adds one) and cut to the model's context, in one forward pass.
pub fn token_logprobs(model: &CausalLm, tok: &TextTokenizer, path: &Path) -> Result<TokenLogprobs> {
    let text = std::fs::read_to_string(path).map_err(|e| LorsError::io(path, e))?;
    let mut tokens = tok.encode(&text, true)?;
    tokens.truncate(model.config().max_position_embeddings);
    if tokens.len() < 2 {
        return Err(LorsError::parse(path, "the text has fewer than two tokens"));
    }
    let ids = Tensor::new(tokens.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let logits = model.forward(&ids)?.squeeze(0)?.to_dtype(DType::F64)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2::<f64>()?;
    let logprobs = tokens[1..]
        .iter()
        .zip(&logp)
        .map(|(&next, row)| row[next as usize])
        .collect();
    Ok(TokenLogprobs {
        text: path.to_path_buf(),
        tokens,
        logprobs,
    })
}
