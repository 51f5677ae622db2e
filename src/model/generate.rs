//! Greedy decoding.

use candle_core::{Device, Tensor, D};

use super::CausalLm;
use crate::error::Result;

/// Greedy continuation of `prompt` (token ids) by up to `max_new` tokens, stopping after an
/// end-of-sequence token. Returns only the new tokens.
pub fn generate_greedy(model: &CausalLm, prompt: &[u32], max_new: usize) -> Result<Vec<u32>> {
    let mut ids = prompt.to_vec();
    let eos = &model.config().eos_token_ids;
    let limit = model.config().max_position_embeddings;
    for _ in 0..max_new {
        if ids.len() >= limit {
            break;
        }
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.forward(&input)?;
        let last = logits.squeeze(0)?.get(ids.len() - 1)?;
        let next = last.argmax(D::Minus1)?.to_scalar::<u32>()?;
        ids.push(next);
        if eos.contains(&next) {
            break;
        }
    }
    Ok(ids[prompt.len()..].to_vec())
}
