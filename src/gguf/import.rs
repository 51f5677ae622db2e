//! GGUF import: a Llama-family GGUF file (as llama.cpp writes it) becomes a Hugging Face
//! directory: `config.json` from the metadata, weights dequantised by candle and renamed to HF
//! names with the rotary layout of q/k undone, and a `tokenizer.json` built from the
//! tokenizer metadata (the SentencePiece `llama` kind and the byte-level BPE `gpt2` kind).
//! Zeros of quantised blocks are read as `+0.0`, the bits of a pruned weight.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use serde_json::json;

use super::{hf_name, token_type, unpermute};
use crate::error::{LorsError, Result};
use crate::io::{build_dir_atomic, write_json_atomic, write_safetensors_atomic};

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GgufReport {
    pub architecture: String,
    /// Tensors by their GGUF type (`Q4_1`, `F32`, ...).
    pub tensor_types: BTreeMap<String, usize>,
    /// `llama` (SentencePiece) or `gpt2` (byte-level BPE).
    pub tokenizer: String,
    pub vocab_size: usize,
    /// The dtype the weights were written in.
    pub dtype: String,
}

/// The metadata of a GGUF file, with typed access that names the missing key.
struct Meta<'a> {
    path: &'a Path,
    map: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.map
            .get(key)
            .ok_or_else(|| LorsError::parse(self.path, format!("GGUF metadata `{key}` is missing")))
    }

    fn uint(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => {
                return Err(LorsError::parse(
                    self.path,
                    format!("GGUF metadata `{key}` is not an unsigned integer: {other:?}"),
                ))
            }
        };
        Ok(n as usize)
    }

    /// A float; an f32 is read as its shortest decimal (`1e-5`, not `9.9999997e-6`), the value
    /// the HF config it came from held.
    fn float(&self, key: &str) -> Result<f64> {
        match self.get(key)? {
            Value::F32(x) => Ok(x.to_string().parse().unwrap_or(*x as f64)),
            Value::F64(x) => Ok(*x),
            other => Err(LorsError::parse(
                self.path,
                format!("GGUF metadata `{key}` is not a float: {other:?}"),
            )),
        }
    }

    fn string(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            other => Err(LorsError::parse(
                self.path,
                format!("GGUF metadata `{key}` is not a string: {other:?}"),
            )),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> bool {
        match self.map.get(key) {
            Some(Value::Bool(b)) => *b,
            _ => default,
        }
    }

    fn array(&self, key: &str) -> Result<&[Value]> {
        match self.get(key)? {
            Value::Array(a) => Ok(a),
            other => Err(LorsError::parse(
                self.path,
                format!("GGUF metadata `{key}` is not an array: {other:?}"),
            )),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(LorsError::parse(
                    self.path,
                    format!("GGUF metadata `{key}` holds a non-string: {other:?}"),
                )),
            })
            .collect()
    }

    fn numbers(&self, key: &str) -> Result<Vec<f64>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::F32(x) => Ok(*x as f64),
                Value::F64(x) => Ok(*x),
                Value::I32(x) => Ok(*x as f64),
                Value::U32(x) => Ok(*x as f64),
                Value::I8(x) => Ok(*x as f64),
                Value::U8(x) => Ok(*x as f64),
                other => Err(LorsError::parse(
                    self.path,
                    format!("GGUF metadata `{key}` holds a non-number: {other:?}"),
                )),
            })
            .collect()
    }
}

/// The SentencePiece merges implied by a vocabulary with scores: every split of a piece into
/// two pieces of the vocabulary, ranked by the piece's score (as transformers'
/// `SentencePieceExtractor` does).
fn spm_merges(tokens: &[String], scores: &[f64], skip: &[bool]) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip[*i])
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(usize, usize, f64)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if skip[id] {
            continue;
        }
        let mut local = Vec::new();
        for (split, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&a), Some(&b)) = (index.get(l), index.get(r)) {
                local.push((a, b, scores[id]));
            }
        }
        local.sort_by_key(|&(a, b, _)| (a, b));
        merges.extend(local);
    }
    // Stable: equal scores keep vocabulary order.
    merges.sort_by(|x, y| y.2.total_cmp(&x.2));
    merges
        .into_iter()
        .map(|(a, b, _)| (tokens[a].clone(), tokens[b].clone()))
        .collect()
}

/// The `tokenizer.ggml.pre` names [`gpt2_pre_tokenizer`] knows (any other reads as `gpt2`).
pub(crate) const KNOWN_PRE_TOKENIZERS: [&str; 3] = ["smollm", "llama-bpe", "gpt2"];

/// The pre-tokenizer llama.cpp's `tokenizer.ggml.pre` stands for (byte-level BPE kind).
pub(crate) fn gpt2_pre_tokenizer(pre: &str) -> serde_json::Value {
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    match pre {
        // SmolLM: digits one by one, then GPT-2's split.
        "smollm" | "starcoder" | "refact" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true)
            ]
        }),
        "llama-bpe" | "llama3" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
                byte_level(false)
            ]
        }),
        _ => byte_level(true),
    }
}

/// `tokenizer.json` (and `tokenizer_config.json`) from the GGUF tokenizer metadata.
fn tokenizer_files(meta: &Meta) -> Result<(serde_json::Value, serde_json::Value, String)> {
    let kind = meta.string("tokenizer.ggml.model")?.to_string();
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let types = match meta.map.get("tokenizer.ggml.token_type") {
        Some(_) => meta.numbers("tokenizer.ggml.token_type")?,
        None => vec![1.0; tokens.len()],
    };
    let id = |key: &str| meta.uint(key).ok();
    let bos = id("tokenizer.ggml.bos_token_id");
    let eos = id("tokenizer.ggml.eos_token_id");
    let unk = id("tokenizer.ggml.unknown_token_id");
    let special: Vec<bool> = types
        .iter()
        .map(|t| *t == f64::from(token_type::CONTROL))
        .collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            special[*i] || types[*i] == f64::from(token_type::USER_DEFINED) || Some(*i) == unk
        })
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false,
                   "special": special[i] || Some(i) == unk})
        })
        .collect();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let add_bos = meta.bool_or("tokenizer.ggml.add_bos_token", kind == "llama");
    let name = |i: Option<usize>| i.and_then(|i| tokens.get(i)).cloned();
    let post = match (add_bos, name(bos)) {
        (true, Some(b)) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b.clone(): {"id": b, "ids": [bos], "tokens": [b]}}
        }),
        _ => serde_json::Value::Null,
    };
    let shared = SharedParts {
        added,
        vocab,
        post,
        unk: name(unk),
    };
    let tokenizer = match kind.as_str() {
        "llama" => spm_tokenizer(meta, &tokens, &special, shared)?,
        "gpt2" => gpt2_tokenizer(meta, shared)?,
        other => {
            return Err(LorsError::parse(
                meta.path,
                format!("tokenizer kind `{other}` is not supported (llama or gpt2)"),
            ))
        }
    };
    let mut config = json!({
        "add_bos_token": add_bos,
        "add_eos_token": false,
        "model_max_length": meta.uint(&format!("{}.context_length", meta.string("general.architecture")?)).ok(),
        "tokenizer_class": if kind == "llama" { "LlamaTokenizerFast" } else { "PreTrainedTokenizerFast" },
    });
    for (key, i) in [("bos_token", bos), ("eos_token", eos), ("unk_token", unk)] {
        if let Some(t) = name(i) {
            config[key] = json!(t);
        }
    }
    if let Ok(template) = meta.string("tokenizer.chat_template") {
        config["chat_template"] = json!(template);
    }
    Ok((tokenizer, config, kind))
}

/// What `tokenizer.json` holds alike for both GGUF tokenizer kinds.
struct SharedParts {
    added: Vec<serde_json::Value>,
    vocab: serde_json::Map<String, serde_json::Value>,
    /// The BOS template, or null.
    post: serde_json::Value,
    unk: Option<String>,
}

/// `tokenizer.json` of a SentencePiece (`llama` kind) GGUF tokenizer: BPE with byte fallback,
/// merges recovered from the piece scores.
fn spm_tokenizer(
    meta: &Meta,
    tokens: &[String],
    special: &[bool],
    p: SharedParts,
) -> Result<serde_json::Value> {
    let scores = meta.numbers("tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(LorsError::parse(
            meta.path,
            format!("{} token scores for {} tokens", scores.len(), tokens.len()),
        ));
    }
    // Byte tokens (`<0x41>`) and special ones are not merged.
    let skip: Vec<bool> = tokens
        .iter()
        .zip(special)
        .map(|(t, s)| *s || (t.starts_with("<0x") && t.ends_with('>')))
        .collect();
    let merges = spm_merges(tokens, &scores, &skip);
    let prefix = meta.bool_or("tokenizer.ggml.add_space_prefix", true);
    let mut normalizers = Vec::new();
    if prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": p.added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": p.post,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": p.unk,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": p.vocab, "merges": merges}
    }))
}

/// `tokenizer.json` of a byte-level BPE (`gpt2` kind) GGUF tokenizer.
fn gpt2_tokenizer(meta: &Meta, p: SharedParts) -> Result<serde_json::Value> {
    let merges: Vec<(String, String)> = meta
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok((a.to_string(), b.to_string())),
            None => Err(LorsError::parse(
                meta.path,
                format!("GGUF merge `{m}` is not two tokens"),
            )),
        })
        .collect::<Result<_>>()?;
    let pre = meta.string("tokenizer.ggml.pre").unwrap_or("default");
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": p.added,
        "normalizer": null,
        "pre_tokenizer": gpt2_pre_tokenizer(pre),
        "post_processor": if p.post.is_null() {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        } else { p.post },
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": p.vocab, "merges": merges}
    }))
}

/// A GGUF file read into what a Hugging Face directory holds.
pub struct GgufModel {
    pub config: serde_json::Value,
    pub tokenizer: serde_json::Value,
    pub tokenizer_config: serde_json::Value,
    pub tensors: HashMap<String, Tensor>,
    pub report: GgufReport,
}

/// Convert the GGUF `file` into a Hugging Face directory at `out` (written atomically), with
/// the weights in `dtype`.
pub fn convert_gguf(file: &Path, out: &Path, dtype: DType) -> Result<GgufReport> {
    let mut reader = std::fs::File::open(file).map_err(|e| LorsError::io(file, e))?;
    let m = read_gguf(&mut reader, file, dtype)?;
    build_dir_atomic(out, |dir| {
        write_json_atomic(&dir.join("config.json"), &m.config)?;
        write_json_atomic(&dir.join("tokenizer.json"), &m.tokenizer)?;
        write_json_atomic(&dir.join("tokenizer_config.json"), &m.tokenizer_config)?;
        write_json_atomic(&dir.join("gguf_import.json"), &m.report)?;
        write_safetensors_atomic(&dir.join("model.safetensors"), &m.tensors)
    })?;
    Ok(m.report)
}

/// Check every tensor's extent (element count, bytes, place in the file) before reading it,
/// so a crafted header is an error naming the tensor, never an allocation panic.
fn check_tensor_extents(
    content: &Content,
    reader: &mut (impl std::io::Read + std::io::Seek),
    file: &Path,
) -> Result<()> {
    let len = reader
        .seek(std::io::SeekFrom::End(0))
        .map_err(|e| LorsError::io(file, e))?;
    for (name, info) in &content.tensor_infos {
        let bad = |why: &str| {
            LorsError::parse(
                file,
                format!("tensor `{name}` with dims {:?}: {why}", info.shape.dims()),
            )
        };
        let elems = info
            .shape
            .dims()
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad("too many elements"))?;
        if elems == 0 {
            // candle reads an empty tensor through a misaligned empty slice (undefined behaviour).
            return Err(bad("no elements"));
        }
        let block = info.ggml_dtype.block_size();
        if !elems.is_multiple_of(block) {
            return Err(bad(&format!(
                "not a whole number of {block}-element blocks"
            )));
        }
        let bytes = (elems / block)
            .checked_mul(info.ggml_dtype.type_size())
            .and_then(|b| u64::try_from(b).ok());
        let end = bytes.and_then(|b| {
            content
                .tensor_data_offset
                .checked_add(info.offset)?
                .checked_add(b)
        });
        if end.is_none_or(|end| end > len) {
            return Err(bad(&format!(
                "its data lies beyond the end of the file ({len} bytes)"
            )));
        }
    }
    Ok(())
}

/// Read a GGUF stream (`file` names it in errors): config, tokenizer and weights in `dtype`.
/// Malformed input is an error, also where candle's reader panics (a `general.alignment` of
/// 0 divides by zero).
pub fn read_gguf(
    reader: &mut (impl std::io::Read + std::io::Seek),
    file: &Path,
    dtype: DType,
) -> Result<GgufModel> {
    crate::error::catch_parser_panic(file, "GGUF", || read_gguf_unguarded(reader, file, dtype))
}

fn read_gguf_unguarded(
    reader: &mut (impl std::io::Read + std::io::Seek),
    file: &Path,
    dtype: DType,
) -> Result<GgufModel> {
    let content = read_content(reader, file)?;
    check_tensor_extents(&content, reader, file)?;
    let meta = Meta {
        path: file,
        map: &content.metadata,
    };
    let arch = meta.string("general.architecture")?.to_string();
    if !matches!(arch.as_str(), "llama" | "qwen2") {
        return Err(LorsError::parse(
            file,
            format!("architecture `{arch}` is not supported (llama, qwen2)"),
        ));
    }
    let hidden = meta.uint(&format!("{arch}.embedding_length"))?;
    let heads = meta.uint(&format!("{arch}.attention.head_count"))?;
    let kv_heads = meta
        .uint(&format!("{arch}.attention.head_count_kv"))
        .unwrap_or(heads);
    let (tokenizer, tokenizer_config, kind) = tokenizer_files(&meta)?;
    let vocab_size = meta.strings("tokenizer.ggml.tokens")?.len();
    let tied = !content.tensor_infos.contains_key("output.weight");
    let (tensors, tensor_types) =
        dequantized_tensors(&content, reader, file, &arch, (heads, kv_heads), dtype)?;
    let dtype_name = crate::io::storage_dtype_name(dtype, "GGUF conversion")?;
    let mut config = hf_config(&meta, &arch, (hidden, heads, kv_heads), vocab_size, tied)?;
    config["torch_dtype"] = json!(dtype_name);
    let report = GgufReport {
        architecture: arch,
        tensor_types,
        tokenizer: kind,
        vocab_size,
        dtype: dtype_name.into(),
    };
    Ok(GgufModel {
        config,
        tokenizer,
        tokenizer_config,
        tensors,
        report,
    })
}

/// Every tensor under its Hugging Face name, dequantised to `dtype` (Llama's q/k rotary
/// permutation undone, for `(heads, kv_heads)`), and how many tensors of each GGUF type
/// there were.
fn dequantized_tensors(
    content: &Content,
    reader: &mut (impl std::io::Read + std::io::Seek),
    file: &Path,
    arch: &str,
    (heads, kv_heads): (usize, usize),
    dtype: DType,
) -> Result<(HashMap<String, Tensor>, BTreeMap<String, usize>)> {
    let mut tensor_types = BTreeMap::new();
    let mut tensors = HashMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let hf = hf_name(name).ok_or_else(|| {
            LorsError::parse(file, format!("tensor `{name}` has no Llama-family HF name"))
        })?;
        let q = content
            .tensor(reader, name, &Device::Cpu)
            .map_err(|e| LorsError::parse(file, format!("tensor `{name}`: {e}")))?;
        *tensor_types.entry(format!("{:?}", q.dtype())).or_insert(0) += 1;
        let mut w = q
            .dequantize(&Device::Cpu)
            .map_err(|e| LorsError::parse(file, format!("tensor `{name}`: {e}")))?;
        if !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            // A block's zero code dequantises to `0·d`, which is `-0.0` where the block's
            // scale is negative (Q4_0's `d = max / -8`): the stored zero is exact, its sign
            // an artefact of the scale, so it is written as the `+0.0` of a pruned weight.
            w = w.eq(0f64)?.where_cond(&w.zeros_like()?, &w)?;
        }
        if arch == "llama" && name.starts_with("blk.") {
            if name.contains(".attn_q.") {
                w = unpermute(&w, heads)?;
            } else if name.contains(".attn_k.") {
                w = unpermute(&w, kv_heads)?;
            }
        }
        tensors.insert(hf, w.to_dtype(dtype)?);
    }
    Ok((tensors, tensor_types))
}

/// `config.json` of the model the metadata describes (without `torch_dtype`), for the sizes
/// `(hidden, heads, kv_heads)` already read from it.
fn hf_config(
    meta: &Meta,
    arch: &str,
    (hidden, heads, kv_heads): (usize, usize, usize),
    vocab_size: usize,
    tied: bool,
) -> Result<serde_json::Value> {
    let key = |k: &str| format!("{arch}.{k}");
    let mut config = json!({
        "architectures": [if arch == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": meta.uint(&key("feed_forward_length"))?,
        "num_hidden_layers": meta.uint(&key("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": meta.uint(&key("context_length"))?,
        "rms_norm_eps": meta.float(&key("attention.layer_norm_rms_epsilon"))?,
        "rope_theta": meta.float(&key("rope.freq_base")).unwrap_or(10000.0),
        "vocab_size": vocab_size,
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
    });
    if let Ok(head_dim) = meta.uint(&key("attention.key_length")) {
        config["head_dim"] = json!(head_dim);
    }
    for (k, id) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
    ] {
        if let Ok(i) = meta.uint(id) {
            config[k] = json!(i);
        }
    }
    Ok(config)
}

/// The header and metadata of a GGUF stream.
fn read_content(reader: &mut (impl std::io::Read + std::io::Seek), file: &Path) -> Result<Content> {
    Content::read(reader)
        .map_err(|e| LorsError::parse(file, format!("not a readable GGUF file: {e}")))
}

/// Where a `.gguf` used directly as a model is converted to (once): a folder in the user's
/// cache named after the file, its size and its modification time.
fn converted_dir(file: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(file).map_err(|e| LorsError::io(file, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let stem = file
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    Ok(crate::io::cache_dir()
        .join("gguf")
        .join(format!("{stem}-{}-{mtime}", meta.len())))
}

/// A model path that is a `.gguf` file is converted (in f32, once) and its directory used.
pub fn resolve_gguf_path(path: &Path) -> Result<PathBuf> {
    let is_gguf = path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if !is_gguf {
        return Ok(path.to_path_buf());
    }
    let dir = converted_dir(path)?;
    if !dir.join("model.safetensors").is_file() {
        convert_gguf(path, &dir, DType::F32)?;
    }
    Ok(dir)
}
