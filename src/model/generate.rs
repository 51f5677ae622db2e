//! Greedy decoding with a key-value cache: the prompt is run once, then one token at a time.

use candle_core::{Device, Tensor, D};

use super::CausalLm;
use crate::error::Result;

/// Greedy continuation of `prompt` (token ids) by up to `max_new` tokens, stopping after an
/// end-of-sequence token or at the model's context. Returns only the new tokens.
pub fn generate_greedy(model: &CausalLm, prompt: &[u32], max_new: usize) -> Result<Vec<u32>> {
    let eos = &model.config().eos_token_ids;
    let limit = model.config().max_position_embeddings;
    let mut cache = model.decode_cache();
    let mut new = Vec::new();
    let mut input = prompt.to_vec();
    while new.len() < max_new && prompt.len() + new.len() < limit {
        let ids = Tensor::new(input.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.forward_cached(&ids, &mut cache)?;
        let next = logits.argmax(D::Minus1)?.to_scalar::<u32>()?;
        new.push(next);
        if eos.contains(&next) {
            break;
        }
        input = vec![next];
    }
    Ok(new)
}
