//! GGUF export of a (merged, sparse) Llama-family model, laid out as llama.cpp's
//! `convert_hf_to_gguf.py` writes it: llama.cpp's tensor names, q/k rows in its rotary layout,
//! norms in F32, the architecture metadata (`llama.*`) and the tokenizer ([`super::vocab`]).
//!
//! Only tensor types whose dequantised zero is exact are written ([`GgufType`]): the float
//! types, and the symmetric Q8_0 / Q4_0, whose weights dequantise to `d·q`, zero for `q = 0`.
//! Every pruned (zero) weight comes out of the file as zero, checked here after quantising;
//! in the float types as `+0.0`, bit for bit.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::{gguf_name, permute};
use crate::error::{LorsError, Result};
use crate::model::{Architecture, ModelConfig};
use crate::sparsity::BitMask;

/// A GGUF tensor type that keeps an exact zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum GgufType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
}

crate::named!(@names GgufType);
crate::serde_as_text!(@serialize GgufType);

impl GgufType {
    /// The ggml type of 2-D weights.
    pub fn ggml(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Bf16 => GgmlDType::BF16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_0 => GgmlDType::Q4_0,
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 7,
            Self::Bf16 => 32,
        }
    }
}

/// ggml types with an offset or a minimum per block (`d·q − m`), whose zero is not exact
/// (measured in the GGUF tests: every zero of a 50%-sparse weight reads back nonzero).
const OFFSET_TYPES: [&str; 6] = ["q4_1", "q5_1", "q8_1", "q2_k", "q4_k", "q5_k"];

/// Symmetric ggml types (`d·(q − z)`): their zero is exact too, but the export does not
/// write them (K-quants need rows of 256 and fall back to other types in llama.cpp).
const SYMMETRIC_UNOFFERED: [&str; 4] = ["q5_0", "q3_k", "q6_k", "q8_k"];

impl FromStr for GgufType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(t) = Self::ALL.iter().copied().find(|t| t.name() == lower) {
            return Ok(t);
        }
        let choices: Vec<&str> = Self::ALL.iter().map(|t| t.name()).collect();
        let choices = choices.join(", ");
        if OFFSET_TYPES.contains(&lower.as_str()) || lower.starts_with("iq") {
            return Err(format!(
                "GGUF type `{s}` cannot keep the model's zeros: its blocks dequantise with an \
                 offset (d·q − m) or a non-linear code, so a pruned weight reads back nonzero; \
                 types that keep exact zeros: {choices}"
            ));
        }
        if SYMMETRIC_UNOFFERED.contains(&lower.as_str()) {
            return Err(format!(
                "GGUF type `{s}` keeps exact zeros but this export does not write it; \
                 choose one of {choices}"
            ));
        }
        Err(format!("unknown GGUF type `{s}` (one of {choices})"))
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GgufExportReport {
    /// The type asked for (2-D weights whose rows fit its blocks).
    pub tensor_type: GgufType,
    /// Tensors by the ggml type they were written in.
    pub tensor_types: BTreeMap<String, usize>,
    /// `llama` (SentencePiece style) or `gpt2` (byte-level BPE).
    pub tokenizer: String,
    /// Zero weights of the 2-D tensors (the pruned ones): each one reads back as zero.
    pub zeros: usize,
    /// `-0.0` weights of the input written as `+0.0`.
    pub negative_zeros_cleared: usize,
    /// Kept (nonzero) weights that the type rounds to zero: its precision, not the mask.
    pub kept_rounded_to_zero: usize,
    /// Kept weights that underflowed to zero in f16/bf16 and were set to the smallest
    /// subnormal of their sign, as the merge does.
    pub nudged: usize,
}

/// One 2-D weight in its GGUF type, with what quantising did to its zeros.
struct Quantised {
    tensor: QTensor,
    zeros: usize,
    negative_zeros_cleared: usize,
    kept_rounded_to_zero: usize,
    nudged: usize,
}

/// `w` (2-D, any float dtype) in `ty`: zeros written as `+0.0`, f16/bf16 underflows nudged,
/// and, for the types that keep zeros ([`GgufType`]), checked after quantising that every
/// zero reads back as zero (`+0.0` in float types). Other types (the tests' K-quants) are
/// written unchecked.
fn quantise_weight(name: &str, w: &Tensor, ty: GgmlDType) -> Result<Quantised> {
    let w = w.to_dtype(DType::F32)?;
    let mask = BitMask::from_nonzero(&w)?;
    let negative_zeros_cleared = mask.check_pattern(&w)?.pruned_negative_zero;
    let mut w = mask.select(&w)?;
    let mut nudged = 0;
    if let Some(half) = match ty {
        GgmlDType::F16 => Some(DType::F16),
        GgmlDType::BF16 => Some(DType::BF16),
        _ => None,
    } {
        let (fixed, n) = mask.nudge_kept_zeros(&w.to_dtype(half)?)?;
        (w, nudged) = (fixed.to_dtype(DType::F32)?, n);
    }
    let tensor = QTensor::quantize(&w, ty)?;
    let check = mask.check_pattern(&tensor.dequantize(&Device::Cpu)?)?;
    let float = matches!(ty, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
    let keeps_zeros = GgufType::ALL.iter().any(|t| t.ggml() == ty);
    if keeps_zeros && (check.pruned_nonzero > 0 || (float && check.pruned_negative_zero > 0)) {
        return Err(LorsError::SparsityViolation {
            what: format!("GGUF tensor `{name}` in {ty:?}"),
            detail: format!(
                "{} zero weights read back nonzero and {} as -0.0",
                check.pruned_nonzero, check.pruned_negative_zero
            ),
        });
    }
    Ok(Quantised {
        tensor,
        zeros: mask.rows() * mask.cols() - mask.count_kept(),
        negative_zeros_cleared,
        kept_rounded_to_zero: check.kept_zero,
        nudged,
    })
}

/// The type a 2-D weight with rows of `cols` is written in: `ty` where the rows fit its
/// blocks, F16 otherwise (as llama.cpp's converter falls back).
fn weight_type(ty: GgmlDType, cols: usize) -> GgmlDType {
    if cols.is_multiple_of(ty.block_size()) {
        ty
    } else {
        GgmlDType::F16
    }
}

/// Every tensor of a Llama-family model under llama.cpp's name and in its layout (q/k rows
/// permuted), 2-D weights in `ty` ([`weight_type`]), 1-D ones (norms) in F32, plus the
/// `rope_freqs` tensor of Llama-3 rope scaling; sorted by name. Also the export's counts.
pub fn llama_tensors(
    config: &ModelConfig,
    tensors: &HashMap<String, Tensor>,
    ty: GgmlDType,
) -> Result<(Vec<(String, QTensor)>, GgufCounts)> {
    let mut out = Vec::new();
    let mut counts = GgufCounts::default();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        if name == "lm_head.weight" && config.tie_word_embeddings {
            continue; // llama.cpp reads a missing `output.weight` as the tied embedding.
        }
        let g = gguf_name(name).ok_or_else(|| {
            LorsError::parse(
                Path::new(name),
                "this tensor has no llama.cpp name (Llama-family models only)",
            )
        })?;
        let mut w = tensors[name].clone();
        if name.ends_with("self_attn.q_proj.weight") {
            w = permute(&w, config.num_heads)?;
        } else if name.ends_with("self_attn.k_proj.weight") {
            w = permute(&w, config.num_kv_heads)?;
        }
        let q = if w.rank() == 2 {
            let q = quantise_weight(name, &w, weight_type(ty, w.dims()[1]))?;
            counts.add(&q);
            q.tensor
        } else {
            QTensor::quantize(&w.to_dtype(DType::F32)?, GgmlDType::F32)?
        };
        *counts.types.entry(format!("{:?}", q.dtype())).or_insert(0) += 1;
        out.push((g, q));
    }
    if let Some(scaling) = config.rope_llama3 {
        let half = config.head_dim / 2;
        let divisors: Vec<f32> = (0..half)
            .map(|i| {
                let freq = 1.0
                    / config
                        .rope_theta
                        .powf(2.0 * i as f64 / config.head_dim as f64);
                scaling.divisor(freq) as f32
            })
            .collect();
        let t = Tensor::from_vec(divisors, half, &Device::Cpu)?;
        out.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32)?,
        ));
        *counts.types.entry("F32".into()).or_insert(0) += 1;
        out.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok((out, counts))
}

/// What writing the tensors did, summed over them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufCounts {
    pub types: BTreeMap<String, usize>,
    pub zeros: usize,
    pub negative_zeros_cleared: usize,
    pub kept_rounded_to_zero: usize,
    pub nudged: usize,
}

impl GgufCounts {
    fn add(&mut self, q: &Quantised) {
        self.zeros += q.zeros;
        self.negative_zeros_cleared += q.negative_zeros_cleared;
        self.kept_rounded_to_zero += q.kept_rounded_to_zero;
        self.nudged += q.nudged;
    }
}

/// The `general.*` and `llama.*` metadata of `config`, named `name`, with 2-D weights in `ty`.
pub fn llama_metadata(config: &ModelConfig, name: &str, ty: GgufType) -> Vec<(String, Value)> {
    let u = |v: usize| Value::U32(v as u32);
    let mut meta = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String(name.into())),
        ("general.file_type", Value::U32(ty.file_type())),
        ("general.quantization_version", Value::U32(2)),
        ("llama.vocab_size", u(config.vocab_size)),
        ("llama.context_length", u(config.max_position_embeddings)),
        ("llama.embedding_length", u(config.hidden_size)),
        ("llama.block_count", u(config.num_layers)),
        ("llama.feed_forward_length", u(config.intermediate_size)),
        ("llama.rope.dimension_count", u(config.head_dim)),
        ("llama.attention.head_count", u(config.num_heads)),
        ("llama.attention.head_count_kv", u(config.num_kv_heads)),
        ("llama.attention.key_length", u(config.head_dim)),
        ("llama.attention.value_length", u(config.head_dim)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(config.rms_norm_eps as f32),
        ),
        ("llama.rope.freq_base", Value::F32(config.rope_theta as f32)),
    ];
    if let Some(s) = config.rope_llama3 {
        meta.push(("llama.rope.scaling.type", Value::String("llama3".into())));
        meta.push(("llama.rope.scaling.factor", Value::F32(s.factor as f32)));
        meta.push((
            "llama.rope.scaling.original_context_length",
            u(s.original_max_position_embeddings),
        ));
    }
    meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Write a GGUF file at `path` atomically from its metadata and tensors.
pub fn write_gguf_file(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[(String, QTensor)],
) -> Result<()> {
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    crate::io::write_streamed_atomic(path, |w| {
        gguf_file::write(w, &meta, &tensors).map_err(|e| LorsError::parse(path, e.to_string()))
    })
}

/// Refuse what llama.cpp's `llama` architecture cannot run as this model: architectures other
/// than Llama and Mistral, and biases on the projections.
fn check_llama(config: &ModelConfig, source: &Path) -> Result<()> {
    if !matches!(
        config.architecture,
        Architecture::Llama | Architecture::Mistral
    ) || config.qkv_bias
    {
        return Err(LorsError::parse(
            source,
            format!(
                "the GGUF export writes llama.cpp's `llama` architecture (Llama, Mistral \
                 without attention biases); this model is {:?}{}",
                config.architecture,
                if config.qkv_bias {
                    " with q/k/v biases"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(())
}

/// Export a model as the GGUF file `out` (written atomically): its weights `tensors` (Hugging
/// Face names, e.g. a merged model's), its `config`, and the tokenizer files in
/// `tokenizer_dir`; `source` names the input in errors and `general.name`.
pub fn export_gguf(
    config: &ModelConfig,
    tensors: &HashMap<String, Tensor>,
    tokenizer_dir: &Path,
    source: &Path,
    out: &Path,
    ty: GgufType,
) -> Result<GgufExportReport> {
    check_llama(config, source)?;
    let tokenizer = super::vocab::tokenizer_metadata(tokenizer_dir, config)?;
    let name = source
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let mut metadata = llama_metadata(config, &name, ty);
    let kind = tokenizer
        .iter()
        .find_map(|(k, v)| match (k.as_str(), v) {
            ("tokenizer.ggml.model", Value::String(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default();
    metadata.extend(tokenizer);
    let (quantised, counts) = llama_tensors(config, tensors, ty.ggml())?;
    write_gguf_file(out, &metadata, &quantised)?;
    Ok(GgufExportReport {
        tensor_type: ty,
        tensor_types: counts.types,
        tokenizer: kind,
        zeros: counts.zeros,
        negative_zeros_cleared: counts.negative_zeros_cleared,
        kept_rounded_to_zero: counts.kept_rounded_to_zero,
        nudged: counts.nudged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_that_lose_zeros_are_refused_with_the_reason() {
        for &t in GgufType::ALL {
            assert_eq!(t.name().parse::<GgufType>(), Ok(t));
            assert_eq!(t.name().to_uppercase().parse::<GgufType>(), Ok(t));
        }
        let err = "q4_k".parse::<GgufType>().unwrap_err();
        assert!(
            err.contains("cannot keep the model's zeros") && err.contains("q8_0"),
            "{err}"
        );
        assert!("Q4_1".parse::<GgufType>().unwrap_err().contains("offset"));
        assert!("q6_k"
            .parse::<GgufType>()
            .unwrap_err()
            .contains("does not write it"));
        assert!("f8"
            .parse::<GgufType>()
            .unwrap_err()
            .starts_with("unknown GGUF type"));
    }

    /// Q4_0's zero code reads back as zero whatever the block's scale; a weight far below
    /// the block's largest rounds to zero and is counted, not hidden.
    #[test]
    fn quantised_zeros_read_back_as_zeros() {
        let values: Vec<f32> = (0..4 * 64)
            .map(|i| match i % 4 {
                0 => 0.0,
                1 => -0.0,
                2 => ((i as f32) * 0.61).sin(),
                _ => 1e-4,
            })
            .collect();
        let w = Tensor::from_vec(values, (4, 64), &Device::Cpu).unwrap();
        for &ty in GgufType::ALL {
            let q = quantise_weight("w", &w, ty.ggml()).unwrap();
            assert_eq!(q.zeros, 128, "{ty}");
            assert_eq!(q.negative_zeros_cleared, 64, "{ty}");
            let back = q.tensor.dequantize(&Device::Cpu).unwrap();
            let back = back.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (i, v) in back.iter().enumerate() {
                if i % 4 < 2 {
                    assert_eq!(*v, 0.0, "{ty} at {i}");
                    if !matches!(ty, GgufType::Q8_0 | GgufType::Q4_0) {
                        assert_eq!(v.to_bits(), 0, "{ty} at {i}");
                    }
                }
            }
            let small_lost = matches!(ty, GgufType::Q4_0 | GgufType::Q8_0);
            assert_eq!(q.kept_rounded_to_zero > 0, small_lost, "{ty}");
        }
    }
}
