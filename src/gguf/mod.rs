//! GGUF, llama.cpp's model file: import into a Hugging Face directory ([`import`]) and export
//! of a merged sparse model ([`export`], with the tokenizer metadata from [`vocab`]). What
//! both directions share lives here: llama.cpp's tensor names and its rotary row layout.

use candle_core::Tensor;

use crate::error::Result;

pub mod export;
pub mod import;
pub mod vocab;

/// llama.cpp's name of each per-block module beside its Hugging Face name.
const BLOCK_MODULES: [(&str, &str); 9] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// The model-level tensors, llama.cpp's name beside the Hugging Face one.
const MODEL_TENSORS: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// GGUF token types (llama.cpp's `llama_token_type`).
pub(crate) mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The Hugging Face name of a GGUF tensor name, if it is one of a Llama-family model's.
pub(crate) fn hf_name(name: &str) -> Option<String> {
    if let Some((_, hf)) = MODEL_TENSORS.iter().find(|(g, _)| *g == name) {
        return Some(hf.to_string());
    }
    let (layer, leaf) = name.strip_prefix("blk.")?.split_once('.')?;
    let (module, kind) = leaf.rsplit_once('.')?;
    let (_, hf) = BLOCK_MODULES.iter().find(|(g, _)| *g == module)?;
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// llama.cpp's name of a Hugging Face tensor name, if it is one of a Llama-family model's.
pub(crate) fn gguf_name(name: &str) -> Option<String> {
    if let Some((g, _)) = MODEL_TENSORS.iter().find(|(_, hf)| *hf == name) {
        return Some(g.to_string());
    }
    let (layer, leaf) = name.strip_prefix("model.layers.")?.split_once('.')?;
    let (module, kind) = leaf.rsplit_once('.')?;
    let (g, _) = BLOCK_MODULES.iter().find(|(_, hf)| *hf == module)?;
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// llama.cpp's q/k row layout (`convert_hf_to_gguf.py`, `LlamaModel.permute`): each head's
/// rows regrouped from Hugging Face's half-split rotary layout into interleaved pairs.
pub(crate) fn permute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rest: usize = dims[1..].iter().product();
    Ok(w.reshape((heads, 2, dims[0] / heads / 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// The inverse of [`permute`]: llama.cpp's interleaved q/k rows back to Hugging Face's layout.
pub(crate) fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rest: usize = dims[1..].iter().product();
    Ok(w.reshape((heads, dims[0] / heads / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn names_map_both_ways() {
        for hf in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.norm.weight",
            "model.layers.3.self_attn.k_proj.weight",
            "model.layers.0.self_attn.q_proj.bias",
            "model.layers.11.post_attention_layernorm.weight",
        ] {
            let g = gguf_name(hf).unwrap();
            assert_eq!(hf_name(&g).as_deref(), Some(hf), "{g}");
        }
        assert_eq!(
            gguf_name("model.layers.2.mlp.down_proj.weight").as_deref(),
            Some("blk.2.ffn_down.weight")
        );
        assert_eq!(gguf_name("model.layers.2.mlp.experts.weight"), None);
        assert_eq!(hf_name("blk.1.attn_qkv.weight"), None);
    }

    #[test]
    fn unpermute_inverts_permute_and_pairs_rotary_halves() {
        // Two heads of head_dim 4: rows (h, half, i) -> (h, i, half).
        let w = Tensor::arange(0f32, 16.0, &Device::Cpu)
            .unwrap()
            .reshape((8, 2))
            .unwrap();
        let p = permute(&w, 2).unwrap();
        let rows: Vec<f32> = p.to_vec2::<f32>().unwrap().iter().map(|r| r[0]).collect();
        assert_eq!(rows, [0.0, 4.0, 2.0, 6.0, 8.0, 12.0, 10.0, 14.0]);
        let back = unpermute(&p, 2).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }
}
