//! Random Llama checkpoints written by this crate: the bundled demo model, test fixtures and
//! benchmark models. A byte-level tokenizer (256 byte tokens plus `<unk>`, `<s>`, `</s>`, no
//! merges) is written beside them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::{ModuleId, Proj, RawConfig};
use crate::error::{LorsError, Result};
use crate::io::{build_dir_atomic, write_atomic, write_json_atomic, write_safetensors_atomic};
use crate::sparsity::{magnitude_mask, Pattern};

/// Vocabulary of the byte-level tokenizer: 3 special tokens and 256 bytes.
pub const BYTE_VOCAB: usize = 259;

/// A small Llama config with the byte-level vocabulary.
pub fn small_config(
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    intermediate: usize,
) -> RawConfig {
    RawConfig {
        model_type: Some("llama".into()),
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv_heads),
        head_dim: None,
        vocab_size: BYTE_VOCAB,
        max_position_embeddings: Some(1024),
        rms_norm_eps: Some(1e-5),
        rope_theta: Some(10_000.0),
        rope_parameters: None,
        rope_scaling: None,
        tie_word_embeddings: Some(false),
        attention_bias: Some(false),
        hidden_act: Some("silu".into()),
        bos_token_id: Some(super::config::TokenIds::One(1)),
        eos_token_id: Some(super::config::TokenIds::One(2)),
        torch_dtype: Some("float32".into()),
    }
}

/// GPT-2's byte-to-character map used by byte-level BPE.
fn byte_chars() -> Vec<char> {
    let printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut chars = vec!['\0'; 256];
    for &b in &printable {
        chars[b as usize] = char::from_u32(b).expect("valid");
    }
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            chars[b as usize] = char::from_u32(256 + extra).expect("valid");
            extra += 1;
        }
    }
    chars
}

/// `tokenizer.json` of the byte-level tokenizer (BOS prepended, like Llama's).
pub fn byte_tokenizer_json() -> serde_json::Value {
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let mut vocab = serde_json::Map::new();
    for (i, name) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(name.to_string(), serde_json::json!(i));
    }
    for (b, c) in byte_chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), serde_json::json!(3 + b));
    }
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
                                        "trim_offsets": true, "use_regex": true});
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
}

/// Random weights for `config`, with every block linear pruned by magnitude to `prune` when
/// given. Linear weights are normal with std `1/sqrt(in_features)` and embeddings with std 1,
/// so activations and logits have unit scale (transformers' std 0.02 gives near-uniform
/// logits on a model this small); norms are 1.
pub fn random_weights(
    config: &RawConfig,
    seed: u64,
    prune: Option<Pattern>,
) -> Result<HashMap<String, Tensor>> {
    let c = super::ModelConfig::from_raw(config.clone())?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut randn = |dims: (usize, usize), std: f32| -> Result<Tensor> {
        let normal = Normal::new(0.0f32, std).expect("valid std");
        let v: Vec<f32> = (0..dims.0 * dims.1)
            .map(|_| normal.sample(&mut rng))
            .collect();
        Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
    };
    let fan_in = |dims: (usize, usize)| 1.0 / (dims.1 as f32).sqrt();
    let h = c.hidden_size;
    let ones = |n: usize| Tensor::ones(n, DType::F32, &Device::Cpu);
    let mut t = HashMap::new();
    t.insert(
        "model.embed_tokens.weight".to_string(),
        randn((c.vocab_size, h), 1.0)?,
    );
    t.insert("model.norm.weight".to_string(), ones(h)?);
    if !c.tie_word_embeddings {
        t.insert(
            "lm_head.weight".to_string(),
            randn((c.vocab_size, h), fan_in((c.vocab_size, h)))?,
        );
    }
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        t.insert(format!("{p}.input_layernorm.weight"), ones(h)?);
        t.insert(format!("{p}.post_attention_layernorm.weight"), ones(h)?);
        for &proj in Proj::ALL {
            let module = ModuleId { layer: l, proj };
            let dims = proj.shape(&c);
            let mut w = randn(dims, fan_in(dims))?;
            if let Some(pattern) = prune {
                let mask = magnitude_mask(&w, pattern)?;
                w = mask.select(&w)?;
            }
            t.insert(format!("{module}.weight"), w);
            if proj.has_bias(&c) {
                t.insert(
                    format!("{module}.bias"),
                    randn((1, dims.0), 0.02)?.squeeze(0)?,
                );
            }
        }
    }
    Ok(t)
}

/// Write a Hugging Face directory (atomically): `config.json`, `model.safetensors`,
/// `tokenizer.json`.
pub fn write_checkpoint(
    dir: &Path,
    config: &RawConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    let mut json =
        serde_json::to_value(config).map_err(|e| LorsError::parse(dir, e.to_string()))?;
    json["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    let tok = serde_json::to_string_pretty(&byte_tokenizer_json()).expect("json");
    build_dir_atomic(dir, |tmp| {
        write_json_atomic(&tmp.join("config.json"), &json)?;
        write_safetensors_atomic(&tmp.join("model.safetensors"), tensors)?;
        write_atomic(&tmp.join("tokenizer.json"), tok.as_bytes())
    })
}
