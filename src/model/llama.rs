//! The Llama block (also Mistral and Qwen2): RMSNorm, rotary attention with grouped-query
//! heads, SwiGLU MLP; every linear is a [`Linear`] that can carry an adapter.
//!
//! All ops are differentiable candle ops (the fused inference kernels of candle-nn have no
//! backward), computed in the model's compute dtype.

use std::collections::BTreeMap;

use super::softmax::softmax_last_dim;
use candle_core::{DType, Device, Tensor};
use candle_nn::rotary_emb::rope_slow;
use rand::{Rng, SeedableRng};

use super::{Linear, ModelConfig, WeightSource};
use crate::adapters::{AdaptedLinear, AdapterConfig, SparseLinear};
use crate::error::{LorsError, Result};

/// The linear layers adapted by default (PEFT's names).
pub const DEFAULT_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Gradient probes by module path, for [`CausalLm::forward_probed`].
pub struct Probes {
    pub layers: std::collections::HashMap<String, std::sync::Arc<crate::adapters::GradProbe>>,
    /// A one-element variable that makes candle run the probes' backward.
    pub anchor: candle_core::Var,
}

/// Which layers get an adapter, and its settings.
#[derive(Debug, Clone)]
pub struct AdapterSpec {
    pub config: AdapterConfig,
    /// Short module names (`q_proj`, ...) to adapt.
    pub targets: Vec<String>,
}

#[derive(Debug, Clone)]
struct Block {
    input_norm: Tensor,
    post_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A causal language model of the Llama family.
#[derive(Debug, Clone)]
pub struct CausalLm {
    config: ModelConfig,
    dtype: DType,
    device: Device,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    /// `None` when the output projection is tied to the embedding.
    lm_head: Option<Linear>,
    tied_head: Linear,
    inv_freq: Tensor,
}

pub(crate) const BLOCK_LINEARS: [(&str, &str); 7] = [
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
];

impl CausalLm {
    /// Build the model from named tensors, computing in `dtype` on `device`, with adapters on
    /// the layers `adapter.targets` names.
    pub fn from_source(
        config: &ModelConfig,
        src: &dyn WeightSource,
        dtype: DType,
        device: &Device,
        adapter: Option<&AdapterSpec>,
        rng: &mut impl Rng,
    ) -> Result<Self> {
        if let Some(spec) = adapter {
            if let Some(t) = spec
                .targets
                .iter()
                .find(|t| !BLOCK_LINEARS.iter().any(|(_, n)| n == t))
            {
                return Err(LorsError::invalid(
                    "adapter.target_modules",
                    format!(
                        "no layer is named `{t}` (this model has {})",
                        DEFAULT_TARGETS.join(", ")
                    ),
                ));
            }
            if spec.targets.is_empty() {
                return Err(LorsError::invalid(
                    "adapter.target_modules",
                    "names no layer to adapt",
                ));
            }
        }
        let c = config;
        check_layer_count(c, src)?;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let load = |name: &str, dims: &[usize]| -> Result<Tensor> {
            let t = src.tensor(name)?;
            if t.dims() != dims {
                return Err(LorsError::shape(
                    format!("tensor `{name}`"),
                    format!("{dims:?}"),
                    format!("{:?}", t.dims()),
                ));
            }
            Ok(t.to_device(device)?.to_dtype(dtype)?)
        };
        let mut blocks = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let mut linears = BTreeMap::new();
            for (group, name) in BLOCK_LINEARS {
                let (out_f, in_f) = match name {
                    "q_proj" => (c.num_heads * hd, h),
                    "k_proj" | "v_proj" => (c.num_kv_heads * hd, h),
                    "o_proj" => (h, c.num_heads * hd),
                    "gate_proj" | "up_proj" => (c.intermediate_size, h),
                    _ => (h, c.intermediate_size),
                };
                let full = format!("{p}.{group}.{name}");
                let weight = load(&format!("{full}.weight"), &[out_f, in_f])?;
                let has_bias = c.qkv_bias && matches!(name, "q_proj" | "k_proj" | "v_proj");
                let bias = has_bias
                    .then(|| load(&format!("{full}.bias"), &[out_f]))
                    .transpose()?;
                let base = SparseLinear::new(weight, bias, None)?;
                let linear = match adapter {
                    Some(spec) if spec.targets.iter().any(|t| t == name) => Linear::Adapted(
                        AdaptedLinear::new(base, &spec.config, rng).map_err(|e| match e {
                            LorsError::Rank { .. } => {
                                LorsError::invalid("adapter.rank", format!("{full}: {e}"))
                            }
                            other => other,
                        })?,
                    ),
                    _ => Linear::Frozen(base),
                };
                linears.insert(name, linear);
            }
            let mut take = |n: &str| linears.remove(n).expect("all block linears are built");
            blocks.push(Block {
                input_norm: load(&format!("{p}.input_layernorm.weight"), &[h])?,
                post_norm: load(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                q: take("q_proj"),
                k: take("k_proj"),
                v: take("v_proj"),
                o: take("o_proj"),
                gate: take("gate_proj"),
                up: take("up_proj"),
                down: take("down_proj"),
            });
        }
        let embed = load("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let lm_head = if c.tie_word_embeddings && !src.contains("lm_head.weight") {
            None
        } else {
            Some(Linear::Frozen(SparseLinear::new(
                load("lm_head.weight", &[c.vocab_size, h])?,
                None,
                None,
            )?))
        };
        let tied_head = Linear::Frozen(SparseLinear::new(
            embed.clone(),
            None,
            Some(crate::sparsity::BitMask::from_fn(c.vocab_size, h, |_| true)),
        )?);
        Ok(Self {
            config: c.clone(),
            dtype,
            device: device.clone(),
            norm: load("model.norm.weight", &[h])?,
            embed,
            blocks,
            lm_head,
            tied_head,
            inv_freq: inv_freq(c)?.to_device(device)?,
        })
    }

    /// The model of a directory as it is (no adapters), computing in f32.
    pub fn load_frozen(dir: &super::ModelDir) -> Result<Self> {
        let mut unused = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        Self::from_source(
            &dir.config,
            &dir.weights()?,
            DType::F32,
            &Device::Cpu,
            None,
            &mut unused,
        )
    }

    /// The resolved configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the model computes on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every linear layer with its Hugging Face module path (`model.layers.0.self_attn.q_proj`),
    /// in checkpoint order, followed by `lm_head` when it is not tied.
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let layers = [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down];
            for ((group, name), l) in BLOCK_LINEARS.iter().zip(layers) {
                out.push((format!("model.layers.{i}.{group}.{name}"), l));
            }
        }
        if let Some(head) = &self.lm_head {
            out.push(("lm_head".to_string(), head));
        }
        out
    }

    /// The adapted layers with their module paths.
    pub fn adapted(&self) -> Vec<(String, &AdaptedLinear)> {
        self.linears()
            .into_iter()
            .filter_map(|(n, l)| l.adapted().map(|a| (n, a)))
            .collect()
    }

    fn rope(&self, seq_len: usize) -> Result<(Tensor, Tensor)> {
        let positions = Tensor::arange(0u32, seq_len as u32, &self.device)?
            .to_dtype(DType::F32)?
            .reshape((seq_len, 1))?;
        let freqs = positions.broadcast_mul(&self.inv_freq)?;
        Ok((
            freqs.cos()?.to_dtype(self.dtype)?,
            freqs.sin()?.to_dtype(self.dtype)?,
        ))
    }

    /// Logits (batch, seq, vocab) for token ids (batch, seq).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.forward_impl(ids, None)
    }

    /// [`forward`](Self::forward) where the layers named in `probes` run frozen (no adapter)
    /// and add their weight gradient to their probe in backward.
    pub fn forward_probed(&self, ids: &Tensor, probes: &Probes) -> Result<Tensor> {
        self.forward_impl(ids, Some(probes))
    }

    fn forward_impl(&self, ids: &Tensor, probes: Option<&Probes>) -> Result<Tensor> {
        let mut x = self.embed_tokens(ids)?;
        let ctx = self.context(ids.dim(1)?)?;
        for i in 0..self.blocks.len() {
            let prefix = format!("model.layers.{i}");
            let mut run = |name: &str, l: &Linear, x: &Tensor| -> Result<Tensor> {
                match probes.and_then(|p| p.layers.get(&module_path(&prefix, name))) {
                    Some(probe) => l
                        .base()
                        .forward_probed(x, probe, &probes.expect("some").anchor),
                    None => l.forward(x),
                }
            };
            x = self.block_forward(i, &x, &ctx, &mut run)?;
        }
        self.head(&x)
    }

    /// Hidden states (batch, seq, hidden) of token ids (batch, seq).
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t == 0 {
            return Err(LorsError::invalid("input", "empty sequence"));
        }
        let ids = ids.to_device(&self.device)?;
        Ok(self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((
            b,
            t,
            self.config.hidden_size,
        ))?)
    }

    /// Rotary tables and causal mask for sequences of `seq_len`.
    pub fn context(&self, seq_len: usize) -> Result<BlockContext> {
        let (cos, sin) = self.rope(seq_len)?;
        Ok(BlockContext {
            cos,
            sin,
            mask: causal_mask(seq_len, self.dtype, &self.device)?,
        })
    }

    /// Final norm and output projection: logits of hidden states.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let x = rms_norm(x, &self.norm, self.config.rms_norm_eps)?;
        self.lm_head.as_ref().unwrap_or(&self.tied_head).forward(&x)
    }

    /// Number of decoder layers.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Decoder layer `i` alone, calling `tap(short_name, input)` with the input of each of its
    /// linear layers (for calibration) before applying the layer normally.
    pub fn block_with_taps(
        &self,
        i: usize,
        x: &Tensor,
        ctx: &BlockContext,
        tap: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        self.block_forward(i, x, ctx, &mut |name, l, x| {
            tap(name, x)?;
            l.forward(x)
        })
    }

    /// Replace the frozen weight of the linear layer at `module` (e.g. after pruning it).
    pub fn replace_weight(&mut self, module: &str, weight: Tensor) -> Result<()> {
        let slot = self
            .blocks
            .iter_mut()
            .enumerate()
            .flat_map(|(i, b)| {
                let layers = [
                    &mut b.q,
                    &mut b.k,
                    &mut b.v,
                    &mut b.o,
                    &mut b.gate,
                    &mut b.up,
                    &mut b.down,
                ];
                BLOCK_LINEARS
                    .iter()
                    .zip(layers)
                    .map(move |((g, n), l)| (format!("model.layers.{i}.{g}.{n}"), l))
            })
            .find(|(name, _)| name == module)
            .map(|(_, l)| l)
            .ok_or_else(|| LorsError::invalid("module", format!("no linear layer `{module}`")))?;
        let bias = slot.base().bias().cloned();
        let weight = weight.to_device(&self.device)?.to_dtype(self.dtype)?;
        *slot = Linear::Frozen(SparseLinear::new(weight, bias, None)?);
        Ok(())
    }

    fn block_forward(
        &self,
        i: usize,
        x: &Tensor,
        ctx: &BlockContext,
        run: &mut dyn FnMut(&str, &Linear, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let block = &self.blocks[i];
        let (b, t, _) = x.dims3()?;
        let eps = c.rms_norm_eps;
        let h = rms_norm(x, &block.input_norm, eps)?;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = heads(run("q_proj", &block.q, &h)?, c.num_heads)?;
        let k = heads(run("k_proj", &block.k, &h)?, c.num_kv_heads)?;
        let v = heads(run("v_proj", &block.v, &h)?, c.num_kv_heads)?;
        let q = rope_slow(&q, &ctx.cos, &ctx.sin)?;
        let k = rope_slow(&k, &ctx.cos, &ctx.sin)?;
        let n_rep = c.num_heads / c.num_kv_heads;
        let (k, v) = (repeat_kv(k, n_rep)?, repeat_kv(v, n_rep)?);
        // The 1/sqrt(d) scale on q (b·h·t·d values) rather than on the t x t scores, and the
        // fused softmax (f32 accumulation for bf16): the graph keeps two t x t tensors per
        // layer, the scores and the probabilities.
        let q = (q * (1.0 / (c.head_dim as f64).sqrt()))?;
        let scores = q.matmul(&k.t()?)?;
        let probs = softmax_last_dim(&scores.broadcast_add(&ctx.mask)?)?;
        let attn = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, c.num_heads * c.head_dim))?;
        let x = (x + run("o_proj", &block.o, &attn)?)?;
        let h = rms_norm(&x, &block.post_norm, eps)?;
        let gate = run("gate_proj", &block.gate, &h)?;
        let up = run("up_proj", &block.up, &h)?;
        let mlp = (gate.silu()? * up)?;
        Ok((&x + run("down_proj", &block.down, &mlp)?)?)
    }
}

/// Per-sequence-length inputs shared by every decoder layer.
pub struct BlockContext {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

/// `model.layers.{i}.{self_attn|mlp}.{name}` for a block prefix and a short name.
/// Weights of more decoder layers than the config names are an error (they would be dropped
/// without a word).
fn check_layer_count(c: &ModelConfig, src: &dyn WeightSource) -> Result<()> {
    let layer_of = |name: &str| -> Option<usize> {
        name.strip_prefix("model.layers.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    };
    match src
        .names()
        .into_iter()
        .find(|n| layer_of(n).is_some_and(|i| i >= c.num_layers))
    {
        Some(extra) => Err(LorsError::invalid(
            "num_hidden_layers",
            format!(
                "the config says {} layers but the weights hold tensor `{extra}`",
                c.num_layers
            ),
        )),
        None => Ok(()),
    }
}

fn module_path(prefix: &str, name: &str) -> String {
    let group = BLOCK_LINEARS
        .iter()
        .find(|(_, n)| *n == name)
        .map_or("mlp", |(g, _)| *g);
    format!("{prefix}.{group}.{name}")
}

/// RMSNorm with differentiable ops, accumulated in f32.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm_slow(x, weight, eps as f32)?)
}

/// (b, kv_heads, t, d) -> (b, kv_heads * n_rep, t, d), each kv head repeated `n_rep` times.
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kv, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kv, n_rep, t, d))?
        .reshape((b, kv * n_rep, t, d))?)
}

/// (t, t) additive mask in `dtype`: 0 on and below the diagonal, -inf above, built where
/// the model computes (no t x t host work and upload per forward).
fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let idx = Tensor::arange(0u32, t as u32, device)?;
    let above = idx.unsqueeze(0)?.broadcast_gt(&idx.unsqueeze(1)?)?;
    let zero = Tensor::zeros((t, t), dtype, device)?;
    let minus_inf = Tensor::full(f32::NEG_INFINITY, (t, t), device)?.to_dtype(dtype)?;
    Ok(above.where_cond(&minus_inf, &zero)?)
}

/// Rotary inverse frequencies (1, head_dim/2), with Llama-3 scaling when configured.
fn inv_freq(c: &ModelConfig) -> Result<Tensor> {
    let half = c.head_dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0 / c.rope_theta.powf(2.0 * i as f64 / c.head_dim as f64);
            let f = match c.rope_llama3 {
                None => f,
                Some(s) => {
                    let old = s.original_max_position_embeddings as f64;
                    let low_wavelen = old / s.low_freq_factor;
                    let high_wavelen = old / s.high_freq_factor;
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / s.factor
                    } else {
                        let smooth = (old / wavelen - s.low_freq_factor)
                            / (s.high_freq_factor - s.low_freq_factor);
                        (1.0 - smooth) * f / s.factor + smooth * f
                    }
                }
            };
            f as f32
        })
        .collect();
    Ok(Tensor::from_vec(freqs, (1, half), &Device::Cpu)?)
}
