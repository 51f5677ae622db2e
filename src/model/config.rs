//! Hugging Face `config.json` for the Llama family (Llama 1/2/3, Mistral, Qwen2).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{LorsError, Result};

/// `rope_scaling` / `rope_parameters` as written by transformers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// One token id or several (`eos_token_id` may be a list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn ids(&self) -> Vec<u32> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

/// The fields of `config.json` this crate reads; the file's other fields are kept verbatim
/// by the exporter, which copies the original file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rms_norm_eps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default, alias = "dtype", skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
}

/// Llama-3 style frequency scaling of the rotary embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

impl Llama3Scaling {
    /// What Llama-3 scaling divides the rotary frequency `freq` by: 1 for short wavelengths,
    /// `factor` for long ones, and a smooth blend between (llama.cpp stores these divisors
    /// as its `rope_freqs` tensor).
    pub fn divisor(&self, freq: f64) -> f64 {
        let old = self.original_max_position_embeddings as f64;
        let wavelen = 2.0 * std::f64::consts::PI / freq;
        if wavelen < old / self.high_freq_factor {
            1.0
        } else if wavelen > old / self.low_freq_factor {
            self.factor
        } else {
            let smooth = (old / wavelen - self.low_freq_factor)
                / (self.high_freq_factor - self.low_freq_factor);
            1.0 / ((1.0 - smooth) / self.factor + smooth)
        }
    }
}

/// A resolved, checked model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_llama3: Option<Llama3Scaling>,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2 always, Llama when `attention_bias`).
    pub qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint says it is stored in (`torch_dtype` / `dtype`).
    pub stored_dtype: Option<String>,
}

/// Supported architectures (all share the Llama block), named as `model_type` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "lowercase")]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

crate::named!(Architecture, "model_type");

impl ModelConfig {
    /// Weights in the linear layers a token passes through: the seven projections of every
    /// block and the output head (tied or not). `2·this` is the forward FLOPs per token.
    pub fn linear_parameters(&self) -> usize {
        let (h, hd, i) = (self.hidden_size, self.head_dim, self.intermediate_size);
        let product = |xs: &[usize]| xs.iter().fold(1usize, |a, &b| a.saturating_mul(b));
        let attention = product(&[2, self.num_heads, hd, h]).saturating_add(product(&[
            2,
            self.num_kv_heads,
            hd,
            h,
        ]));
        product(&[
            self.num_layers,
            attention.saturating_add(product(&[3, i, h])),
        ])
        .saturating_add(product(&[self.vocab_size, h]))
    }

    /// An error naming `field` when `seq_len` tokens exceed the positions the model was
    /// trained for, unless `allow` (RoPE then extrapolates, usually badly).
    pub fn check_positions(&self, field: &str, seq_len: usize, allow: bool) -> Result<()> {
        if seq_len > self.max_position_embeddings && !allow {
            return Err(LorsError::invalid(
                field,
                format!(
                    "{seq_len} exceeds the model's max_position_embeddings {}",
                    self.max_position_embeddings
                ),
            ));
        }
        Ok(())
    }

    /// Read and check `config.json`; errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LorsError::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parse and check the text of a `config.json` (`path` names it in errors).
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| LorsError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Self::from_raw(raw).map_err(|e| match e {
            LorsError::InvalidValue { field, reason } => LorsError::Parse {
                path: path.to_path_buf(),
                detail: format!("field `{field}`: {reason}"),
            },
            other => other,
        })
    }

    /// Resolve defaults and check a parsed config.
    pub fn from_raw(raw: RawConfig) -> Result<Self> {
        let architecture = match raw.model_type.as_deref() {
            None => Architecture::Llama,
            Some(t) => t.parse::<Architecture>().map_err(|e| {
                let reason = crate::names::reason(e);
                LorsError::invalid("model_type", format!("not supported: {reason}"))
            })?,
        };
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(LorsError::invalid(
                    "hidden_act",
                    format!("`{act}` is not supported (silu)"),
                ));
            }
        }
        let (num_kv_heads, head_dim) = head_counts(&raw)?;
        check_sizes(&raw, num_kv_heads, head_dim)?;
        let (rope_theta, rope_llama3) = rope_of(&raw)?;
        Ok(Self {
            architecture,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_llama3,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: architecture == Architecture::Qwen2 || raw.attention_bias.unwrap_or(false),
            bos_token_id: raw.bos_token_id.and_then(|b| b.ids().first().copied()),
            eos_token_ids: raw.eos_token_id.map(|e| e.ids()).unwrap_or_default(),
            stored_dtype: raw.torch_dtype,
        })
    }
}

/// The key-value heads (default: one per attention head) and the head size (default:
/// hidden size over heads), checked: heads positive, kv heads dividing them, an even head size.
fn head_counts(raw: &RawConfig) -> Result<(usize, usize)> {
    let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
    if raw.num_attention_heads == 0 || num_kv_heads == 0 {
        return Err(LorsError::invalid(
            "num_attention_heads",
            "must be positive",
        ));
    }
    if !raw.num_attention_heads.is_multiple_of(num_kv_heads) {
        return Err(LorsError::invalid(
            "num_key_value_heads",
            format!(
                "{num_kv_heads} does not divide num_attention_heads {}",
                raw.num_attention_heads
            ),
        ));
    }
    let head_dim = raw
        .head_dim
        .unwrap_or(raw.hidden_size / raw.num_attention_heads);
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(LorsError::invalid(
            "head_dim",
            format!("{head_dim} must be a positive even number"),
        ));
    }
    Ok((num_kv_heads, head_dim))
}

/// RoPE's base (default 10000) and Llama 3's frequency scaling, from `rope_parameters` or
/// `rope_scaling` (`default` or `llama3`).
fn rope_of(raw: &RawConfig) -> Result<(f64, Option<Llama3Scaling>)> {
    let rope = raw.rope_parameters.clone().or(raw.rope_scaling.clone());
    let rope_theta = raw
        .rope_theta
        .or(rope.as_ref().and_then(|r| r.rope_theta))
        .unwrap_or(10_000.0);
    let rope_llama3 = match rope.as_ref().and_then(|r| r.rope_type.as_deref()) {
        None | Some("default") => None,
        Some("llama3") => {
            let r = rope.as_ref().expect("checked");
            let need = |v: Option<f64>, name: &str| {
                v.ok_or_else(|| LorsError::invalid(format!("rope_scaling.{name}"), "missing"))
            };
            Some(Llama3Scaling {
                factor: need(r.factor, "factor")?,
                low_freq_factor: need(r.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(r.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: r.original_max_position_embeddings.ok_or_else(
                    || {
                        LorsError::invalid(
                            "rope_scaling.original_max_position_embeddings",
                            "missing",
                        )
                    },
                )?,
            })
        }
        Some(other) => {
            return Err(LorsError::invalid(
                "rope_scaling.rope_type",
                format!("`{other}` is not supported (default, llama3)"),
            ))
        }
    };
    Ok((rope_theta, rope_llama3))
}

/// Sizes must be positive where a layer needs them, their products addressable, and the
/// norm epsilon and rope base finite and positive.
fn check_sizes(raw: &RawConfig, num_kv_heads: usize, head_dim: usize) -> Result<()> {
    for (field, size) in [
        ("hidden_size", raw.hidden_size),
        ("intermediate_size", raw.intermediate_size),
        ("vocab_size", raw.vocab_size),
    ] {
        if size == 0 {
            return Err(LorsError::invalid(field, "must be positive"));
        }
    }
    let products = [
        raw.num_attention_heads.checked_mul(head_dim),
        num_kv_heads.checked_mul(head_dim),
        raw.intermediate_size.checked_mul(raw.hidden_size),
        raw.vocab_size.checked_mul(raw.hidden_size),
        raw.num_attention_heads
            .checked_mul(head_dim)
            .and_then(|q| q.checked_mul(raw.hidden_size)),
    ];
    if products.iter().any(Option::is_none) {
        return Err(LorsError::invalid(
            "hidden_size",
            "the layer sizes are too large to address",
        ));
    }
    for (field, value) in [
        ("rms_norm_eps", raw.rms_norm_eps),
        ("rope_theta", raw.rope_theta),
    ] {
        if value.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            return Err(LorsError::invalid(field, "must be finite and positive"));
        }
    }
    Ok(())
}
