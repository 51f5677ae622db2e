//! Llama-family causal language models (Llama 1/2/3, Mistral, Qwen2): loading, and the
//! passes over the whole model built from the decoder [`Block`]s and the fused [`Head`].
//!
//! Nothing here records candle's graph except [`CausalLm::forward_autograd`], the reference
//! the hand-written backward is checked against: inference is graph-free, and a training
//! step ([`CausalLm::loss_and_grads`]) runs each block's own backward.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

use super::block::{Block, LayerCache, Recompute, Saved};
use super::head::{Head, Targets};
use super::ops::Rope;
use super::{Gradients, Linear, ModelConfig, ModuleId, Proj, WeightSource};
use crate::adapters::{AdaptedLinear, AdapterConfig, SparseLinear};
use crate::error::{LorsError, Result};

/// Which layers get an adapter, and its settings.
#[derive(Debug, Clone)]
pub struct AdapterSpec {
    pub config: AdapterConfig,
    /// Short module names (`q_proj`, ...) to adapt.
    pub targets: Vec<Proj>,
    /// The first this many decoder blocks get no adapter (and a training step no backward
    /// through them).
    pub frozen_blocks: usize,
}

impl AdapterSpec {
    /// `frozen_blocks`, or an error when it leaves none of `layers` blocks to adapt.
    fn frozen_blocks_of(&self, layers: usize) -> Result<usize> {
        if self.frozen_blocks >= layers {
            return Err(LorsError::invalid(
                "adapter.frozen_blocks",
                format!(
                    "{} leaves none of the model's {layers} decoder blocks to adapt",
                    self.frozen_blocks
                ),
            ));
        }
        Ok(self.frozen_blocks)
    }

    /// The projections named by `targets`; an error when there are none.
    fn projections(&self) -> Result<Vec<Proj>> {
        if self.targets.is_empty() {
            return Err(LorsError::invalid(
                "adapter.target_modules",
                "names no layer to adapt",
            ));
        }
        Ok(self.targets.clone())
    }
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
    /// The frozen output projection (vocab x hidden): `lm_head`, or the embedding when tied.
    head: Tensor,
    inv_freq: Tensor,
}

/// What a training step keeps of one block until its backward.
enum Kept {
    Input(Tensor),
    Saved(Saved),
}

/// The key-value cache of an incremental decode, one entry per decoder layer. Cloning it is
/// cheap (the tensors are shared), so several continuations can extend one prefix.
#[derive(Debug, Clone)]
pub struct DecodeCache {
    layers: Vec<LayerCache>,
    len: usize,
}

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
        let targets = adapter.map(AdapterSpec::projections).transpose()?;
        let c = config;
        check_layer_count(c, src)?;
        let frozen_blocks = adapter.map_or(Ok(0), |a| a.frozen_blocks_of(c.num_layers))?;
        let h = c.hidden_size;
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
        for layer in 0..c.num_layers {
            let mut linears = Vec::with_capacity(Proj::ALL.len());
            for &proj in Proj::ALL {
                let module = ModuleId { layer, proj };
                let (out_f, in_f) = proj.shape(c);
                let weight = load(&format!("{module}.weight"), &[out_f, in_f])?;
                let bias = proj
                    .has_bias(c)
                    .then(|| load(&format!("{module}.bias"), &[out_f]))
                    .transpose()?;
                let base = SparseLinear::new(weight, bias, None)?;
                linears.push(match (adapter, &targets) {
                    (Some(spec), Some(t)) if t.contains(&proj) && layer >= frozen_blocks => {
                        Linear::Adapted(AdaptedLinear::new(base, &spec.config, rng).map_err(
                            |e| match e {
                                LorsError::Rank { .. } => {
                                    LorsError::invalid("adapter.rank", format!("{module}: {e}"))
                                }
                                other => other,
                            },
                        )?)
                    }
                    _ => Linear::Frozen(base),
                });
            }
            let p = format!("model.layers.{layer}");
            blocks.push(Block {
                input_norm: load(&format!("{p}.input_layernorm.weight"), &[h])?,
                post_norm: load(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                linears: linears.try_into().expect("one linear per projection"),
            });
        }
        let embed = load("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let head = if c.tie_word_embeddings && !src.contains("lm_head.weight") {
            embed.clone()
        } else {
            load("lm_head.weight", &[c.vocab_size, h])?
        };
        Ok(Self {
            config: c.clone(),
            dtype,
            device: device.clone(),
            norm: load("model.norm.weight", &[h])?,
            embed,
            blocks,
            head,
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

    /// Every decoder linear layer, in checkpoint order.
    pub fn linears(&self) -> Vec<(ModuleId, &Linear)> {
        self.blocks
            .iter()
            .enumerate()
            .flat_map(|(layer, b)| {
                Proj::ALL
                    .iter()
                    .copied()
                    .zip(&b.linears)
                    .map(move |(proj, l)| (ModuleId { layer, proj }, l))
            })
            .collect()
    }

    /// The adapted layers.
    pub fn adapted(&self) -> Vec<(ModuleId, &AdaptedLinear)> {
        self.linears()
            .into_iter()
            .filter_map(|(m, l)| l.adapted().map(|a| (m, a)))
            .collect()
    }

    /// The adapted layers, mutable (to fold an update into their base weights).
    pub fn adapted_mut(&mut self) -> Vec<(ModuleId, &mut AdaptedLinear)> {
        self.blocks
            .iter_mut()
            .enumerate()
            .flat_map(|(layer, b)| {
                Proj::ALL
                    .iter()
                    .copied()
                    .zip(b.linears.iter_mut())
                    .filter_map(move |(proj, l)| match l {
                        Linear::Adapted(a) => Some((ModuleId { layer, proj }, a)),
                        Linear::Frozen(_) => None,
                    })
            })
            .collect()
    }

    /// The same model without its adapters (the frozen base layers), sharing every weight
    /// and mask with this one: no weight memory is copied.
    pub fn without_adapters(&self) -> CausalLm {
        let mut base = self.clone();
        for block in &mut base.blocks {
            for l in &mut block.linears {
                *l = Linear::Frozen(l.base().clone());
            }
        }
        base
    }

    /// Number of decoder layers.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Rotary tables of positions `offset..offset + len`.
    pub(crate) fn rope(&self, offset: usize, len: usize) -> Result<Rope> {
        Rope::new(&self.inv_freq, offset, len, self.dtype)
    }

    fn head_op(&self) -> Head<'_> {
        Head {
            norm: &self.norm,
            weight: &self.head,
            eps: self.config.rms_norm_eps,
        }
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

    /// Hidden states after every block (graph-free), the positions starting at `offset`.
    fn hidden(&self, ids: &Tensor, mut cache: Option<&mut DecodeCache>) -> Result<Tensor> {
        let offset = cache.as_ref().map_or(0, |c| c.len);
        let mut x = self.embed_tokens(ids)?;
        let rope = self.rope(offset, x.dim(1)?)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block
                .forward(
                    &self.config,
                    &x,
                    &rope,
                    layer_cache,
                    false,
                    &mut |_, l, h| l.infer(h),
                )?
                .0;
        }
        if let Some(c) = cache {
            c.len += ids.dim(1)?;
        }
        Ok(x)
    }

    /// Logits (batch, seq, vocab) for token ids (batch, seq), without a graph.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.head_op().logits(&self.hidden(ids, None)?)
    }

    /// An empty cache for [`forward_cached`](Self::forward_cached).
    pub fn decode_cache(&self) -> DecodeCache {
        DecodeCache {
            layers: vec![LayerCache::default(); self.blocks.len()],
            len: 0,
        }
    }

    /// Logits of the last position of `ids` (1, new tokens), which follow the tokens already
    /// in `cache` (whose keys and values are reused, and extended by these).
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut DecodeCache) -> Result<Tensor> {
        let x = self.hidden(ids, Some(cache))?;
        let last = x.narrow(1, x.dim(1)? - 1, 1)?;
        Ok(self.head_op().logits(&last)?.flatten_all()?)
    }

    /// Logits (batch, new tokens, vocab) of every position of `ids`, which follow the tokens
    /// in `cache`; a cache of one row is shared by every row of `ids`.
    pub fn forward_after(&self, ids: &Tensor, cache: &mut DecodeCache) -> Result<Tensor> {
        let x = self.hidden(ids, Some(cache))?;
        self.head_op().logits(&x)
    }

    /// Summed next-token negative log-likelihood over the targets whose mask is 1, and their
    /// count (position `j` predicts `ids[j+1]`, weighted by `mask[j+1]`); no logits tensor
    /// of the whole batch exists.
    pub fn nll(&self, ids: &Tensor, mask: &Tensor) -> Result<(f64, f64)> {
        let targets = Targets::new(ids, mask, &self.device)?;
        let (sum, _) = self
            .head_op()
            .loss(&self.hidden(ids, None)?, &targets, None)?;
        Ok((sum, targets.count))
    }

    /// A training step's forward and backward on one batch: returns the summed loss and the
    /// target count as [`nll`](Self::nll) does, and adds to `grads` the gradients of
    /// `weight · mean loss`. `recompute` says what each block keeps for its backward.
    pub fn loss_and_grads(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        weight: f64,
        recompute: Recompute,
        grads: &mut Gradients,
    ) -> Result<(f64, f64)> {
        let targets = Targets::new(ids, mask, &self.device)?;
        let rope = self.rope(0, ids.dim(1)?)?;
        let mut x = self.embed_tokens(ids)?;
        // Blocks before the first one with something to train need no backward: their
        // forward keeps nothing.
        let first = (0..self.blocks.len())
            .find(|&i| self.block_trains(i, grads))
            .unwrap_or(self.blocks.len());
        let mut kept = Vec::with_capacity(self.blocks.len());
        for (layer, block) in self.blocks.iter().enumerate() {
            if layer < first {
                let run = &mut self.runner(layer, grads);
                x = block.forward(&self.config, &x, &rope, None, false, run)?.0;
                continue;
            }
            let keep = recompute == Recompute::Selective;
            let (y, saved) = block.forward(
                &self.config,
                &x,
                &rope,
                None,
                keep,
                &mut self.runner(layer, grads),
            )?;
            kept.push(match saved {
                Some(s) => Kept::Saved(s),
                None => Kept::Input(x),
            });
            x = y;
        }
        let (sum, dx) = self
            .head_op()
            .loss(&x, &targets, Some(weight / targets.count.max(1.0)))?;
        let mut dy = dx.expect("asked for the gradient");
        for (layer, block) in self.blocks.iter().enumerate().skip(first).rev() {
            let saved = match kept.pop().expect("one entry per block") {
                Kept::Saved(s) => s,
                Kept::Input(x) => block
                    .forward(
                        &self.config,
                        &x,
                        &rope,
                        None,
                        true,
                        &mut self.runner(layer, grads),
                    )?
                    .1
                    .expect("asked to keep"),
            };
            dy = block.backward(&self.config, layer, &saved, &rope, &dy, grads)?;
        }
        Ok((sum, targets.count))
    }

    /// Whether block `layer` has an adapter or a probed layer, i.e. gradients to compute.
    fn block_trains(&self, layer: usize, grads: &Gradients) -> bool {
        Proj::ALL.iter().copied().any(|proj| {
            self.blocks[layer].linears[proj.index()].adapted().is_some()
                || grads.is_probed(ModuleId { layer, proj })
        })
    }

    /// How a training step runs the linear layers of block `layer`: probed layers as their
    /// frozen base, the others as they are.
    fn runner(
        &self,
        layer: usize,
        grads: &Gradients,
    ) -> impl FnMut(Proj, &Linear, &Tensor) -> Result<Tensor> {
        let probed: Vec<Proj> = Proj::ALL
            .iter()
            .copied()
            .filter(|&proj| grads.is_probed(ModuleId { layer, proj }))
            .collect();
        move |proj, l, x| {
            if probed.contains(&proj) {
                l.base().infer(x)
            } else {
                l.infer(x)
            }
        }
    }

    /// Decoder layer `i` alone on hidden states `x` (positions from 0), calling
    /// `tap(projection, input)` with the input of each of its linear layers (for calibration)
    /// before applying the layer.
    pub fn block_with_taps(
        &self,
        i: usize,
        x: &Tensor,
        tap: &mut dyn FnMut(Proj, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let rope = self.rope(0, x.dim(1)?)?;
        let (y, _) =
            self.blocks[i].forward(&self.config, x, &rope, None, false, &mut |p, l, h| {
                tap(p, h)?;
                l.infer(h)
            })?;
        Ok(y)
    }

    /// Replace the frozen weight of a linear layer (e.g. after pruning it).
    pub fn replace_weight(&mut self, module: ModuleId, weight: Tensor) -> Result<()> {
        let slot = self
            .blocks
            .get_mut(module.layer)
            .map(|b| &mut b.linears[module.proj.index()])
            .ok_or_else(|| LorsError::invalid("module", format!("no linear layer `{module}`")))?;
        let bias = slot.base().bias().cloned();
        let weight = weight.to_device(&self.device)?.to_dtype(self.dtype)?;
        *slot = Linear::Frozen(SparseLinear::new(weight, bias, None)?);
        Ok(())
    }

    pub(crate) fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    pub(crate) fn head_weight(&self) -> (&Tensor, &Tensor) {
        (&self.norm, &self.head)
    }
}

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

/// Rotary inverse frequencies (1, head_dim/2), with Llama-3 scaling when configured.
fn inv_freq(c: &ModelConfig) -> Result<Tensor> {
    let half = c.head_dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0 / c.rope_theta.powf(2.0 * i as f64 / c.head_dim as f64);
            let f = match c.rope_llama3 {
                None => f,
                Some(s) => f / s.divisor(f),
            };
            f as f32
        })
        .collect();
    Ok(Tensor::from_vec(freqs, (1, half), &Device::Cpu)?)
}
