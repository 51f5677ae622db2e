//! Writing GGUF files the way llama.cpp's `convert_hf_to_gguf.py` lays them out (shared by
//! the GGUF tests and the fuzz seeds).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

/// llama.cpp's `LlamaModel.permute`: HF's half-split rotary rows to interleaved pairs.
fn permute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// llama.cpp's name of an HF tensor.
fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, leaf) = rest.split_once('.').unwrap();
    let module = leaf.trim_end_matches(".weight");
    let short = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        other => panic!("{other}"),
    };
    format!("blk.{layer}.{short}.weight")
}

/// Write the HF model in `dir` as a GGUF file, 2-D weights in `dtype` where their rows fit
/// its blocks (F32 otherwise, as llama.cpp falls back too), norms in F32.
pub fn write_gguf(dir: &Path, out: &Path, dtype: GgmlDType, tokenizer: Vec<(String, Value)>) {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let u = |k: &str| config[k].as_u64().unwrap() as u32;
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut q = Vec::new();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let mut w = tensors[name].to_dtype(DType::F32).unwrap();
        if name.ends_with("q_proj.weight") {
            w = permute(&w, u("num_attention_heads") as usize);
        } else if name.ends_with("k_proj.weight") {
            w = permute(&w, u("num_key_value_heads") as usize);
        }
        let fits = w.rank() == 2 && w.dims()[1].is_multiple_of(dtype.block_size());
        let t = QTensor::quantize(&w, if fits { dtype } else { GgmlDType::F32 }).unwrap();
        q.push((gguf_name(name), t));
    }
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        (
            "llama.embedding_length".into(),
            Value::U32(u("hidden_size")),
        ),
        (
            "llama.feed_forward_length".into(),
            Value::U32(u("intermediate_size")),
        ),
        (
            "llama.block_count".into(),
            Value::U32(u("num_hidden_layers")),
        ),
        (
            "llama.attention.head_count".into(),
            Value::U32(u("num_attention_heads")),
        ),
        (
            "llama.attention.head_count_kv".into(),
            Value::U32(u("num_key_value_heads")),
        ),
        (
            "llama.context_length".into(),
            Value::U32(u("max_position_embeddings")),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(config["rms_norm_eps"].as_f64().unwrap() as f32),
        ),
        (
            "llama.rope.freq_base".into(),
            Value::F32(config["rope_theta"].as_f64().unwrap_or(10000.0) as f32),
        ),
    ];
    meta.extend(tokenizer);
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(out).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
}

/// SentencePiece metadata for stories260K's tokenizer, as llama.cpp stores a llama2.c
/// tokenizer: pieces by id, scores ranking the merged pieces (earlier merge, higher score),
/// and token types (2 unknown, 3 control, 6 byte, 1 normal).
pub fn spm_metadata(tokenizer_json: &Path) -> Vec<(String, Value)> {
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tokenizer_json).unwrap()).unwrap();
    let vocab = t["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (piece, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = piece.clone();
    }
    let rank: HashMap<String, usize> = t["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let pair = m.as_array().unwrap();
            (
                format!("{}{}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()),
                i,
            )
        })
        .collect();
    let scores: Vec<Value> = tokens
        .iter()
        .map(|p| Value::F32(rank.get(p).map_or(-1e6, |r| -(*r as f32))))
        .collect();
    let types: Vec<Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Value::I32(match (i, p.starts_with("<0x")) {
                (0, _) => 2,
                (1 | 2, _) => 3,
                (_, true) => 6,
                _ => 1,
            })
        })
        .collect();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.scores".into(), Value::Array(scores)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
    ]
}
