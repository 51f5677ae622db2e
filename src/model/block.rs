//! A decoder block (RMSNorm, rotary grouped-query attention, SwiGLU MLP) with a graph-free
//! forward and a hand-written backward. What the backward needs from the forward is either
//! kept ([`Recompute::Selective`]) or recomputed from the block's input ([`Recompute::Block`]).

use candle_core::Tensor;

use super::attention::{chunk_for, Attention};
use super::fused::{rms_norm_backward, swap_middle, swiglu, swiglu_backward};
use super::ops::{rms_norm, Rope};
use super::{Gradients, Linear, ModelConfig, ModuleId, Proj};
use crate::error::Result;

/// What the training step keeps of each block's forward for its backward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "lowercase")]
pub enum Recompute {
    /// Keep every product of a matrix multiplication the backward needs (the block input,
    /// rotated q and k, v, the attention output, the residual after attention, gate and up);
    /// recompute only the cheap element-wise parts (the two norms, SwiGLU's product).
    #[default]
    Selective,
    /// Keep only the block's input; run the block's forward again in its backward
    /// (activation checkpointing).
    Block,
}

crate::named!(Recompute, "train.recompute");

/// The keys and values of one layer's earlier positions. A cache of batch 1 can be extended
/// by a batch of several rows (continuations of one shared prefix): it is broadcast to them.
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerCache {
    /// The cached keys and values followed by `k` and `v` (batch, kv_heads, positions,
    /// head_dim), which the cache keeps from now on.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let joined = match &self.kv {
            None => (k.clone(), v.clone()),
            Some((past_k, past_v)) => (extend(past_k, k)?, extend(past_v, v)?),
        };
        self.kv = Some(joined.clone());
        Ok(joined)
    }
}

/// `past` (batch 1 or `new`'s batch) followed by `new` along the positions.
fn extend(past: &Tensor, new: &Tensor) -> Result<Tensor> {
    let (b, h, _, d) = new.dims4()?;
    let past = if past.dim(0)? == b {
        past.clone()
    } else {
        past.broadcast_as((b, h, past.dim(2)?, d))?.contiguous()?
    };
    Ok(Tensor::cat(&[&past, new], 2)?)
}

/// One decoder layer's weights.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub input_norm: Tensor,
    pub post_norm: Tensor,
    /// Indexed by [`Proj::index`].
    pub linears: [Linear; 7],
}

/// How a forward runs each linear layer of the block (plainly, frozen for a probe, or with a
/// calibration tap).
pub(crate) type RunLinear<'a> = &'a mut dyn FnMut(Proj, &Linear, &Tensor) -> Result<Tensor>;

/// What a block's backward needs from its forward.
pub(crate) struct Saved {
    x: Tensor,
    /// Rotated queries and keys, and values: (batch, heads, positions, head_dim).
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Attention output before `o_proj`: (batch, positions, heads·head_dim).
    attn: Tensor,
    /// The residual stream after attention.
    x2: Tensor,
    gate: Tensor,
    up: Tensor,
}

impl Block {
    fn linear(&self, p: Proj) -> &Linear {
        &self.linears[p.index()]
    }

    /// `(batch, positions, n·head_dim)` → `(batch, n, positions, head_dim)`.
    fn heads(y: &Tensor, n: usize, head_dim: usize) -> Result<Tensor> {
        let (b, t, _) = y.dims3()?;
        swap_middle(&y.reshape((b, t, n, head_dim))?)
    }

    /// The inverse of [`heads`](Self::heads).
    fn merge_heads(y: &Tensor) -> Result<Tensor> {
        let (b, n, t, d) = y.dims4()?;
        Ok(swap_middle(y)?.reshape((b, t, n * d))?)
    }

    fn attention<'a>(
        c: &ModelConfig,
        q: &'a Tensor,
        k: &'a Tensor,
        v: &'a Tensor,
    ) -> Result<Attention<'a>> {
        Ok(Attention {
            q,
            k,
            v,
            scale: 1.0 / (c.head_dim as f64).sqrt(),
            chunk: chunk_for(q, k.dim(2)?)?,
        })
    }

    /// The block's output for input `x` (batch, positions, hidden), and what its backward
    /// needs when `keep`. With a `cache`, the positions follow the cached ones, whose keys and
    /// values the attention also sees (and which this call extends).
    pub fn forward(
        &self,
        c: &ModelConfig,
        x: &Tensor,
        rope: &Rope,
        cache: Option<&mut LayerCache>,
        keep: bool,
        run: RunLinear,
    ) -> Result<(Tensor, Option<Saved>)> {
        let eps = c.rms_norm_eps;
        let h = rms_norm(x, &self.input_norm, eps)?;
        let q = rope.apply(&Self::heads(
            &run(Proj::Q, self.linear(Proj::Q), &h)?,
            c.num_heads,
            c.head_dim,
        )?)?;
        let k = rope.apply(&Self::heads(
            &run(Proj::K, self.linear(Proj::K), &h)?,
            c.num_kv_heads,
            c.head_dim,
        )?)?;
        let v = Self::heads(
            &run(Proj::V, self.linear(Proj::V), &h)?,
            c.num_kv_heads,
            c.head_dim,
        )?;
        let attn = match cache {
            Some(cache) => {
                let (k_all, v_all) = cache.append(&k, &v)?;
                Self::attention(c, &q, &k_all, &v_all)?.forward()?
            }
            None => Self::attention(c, &q, &k, &v)?.forward()?,
        };
        let attn = Self::merge_heads(&attn)?;
        let x2 = (x + run(Proj::O, self.linear(Proj::O), &attn)?)?;
        let h = rms_norm(&x2, &self.post_norm, eps)?;
        let gate = run(Proj::Gate, self.linear(Proj::Gate), &h)?;
        let up = run(Proj::Up, self.linear(Proj::Up), &h)?;
        let y = (&x2 + run(Proj::Down, self.linear(Proj::Down), &swiglu(&gate, &up)?)?)?;
        let saved = keep.then(|| Saved {
            x: x.clone(),
            q,
            k,
            v,
            attn,
            x2,
            gate,
            up,
        });
        Ok((y, saved))
    }

    /// The input gradient for the output gradient `dy`, gathering the linear layers'
    /// gradients into `grads` (`layer` is this block's index).
    pub fn backward(
        &self,
        c: &ModelConfig,
        layer: usize,
        s: &Saved,
        rope: &Rope,
        dy: &Tensor,
        grads: &mut Gradients,
    ) -> Result<Tensor> {
        let eps = c.rms_norm_eps;
        let mut lin = |p: Proj, x: &Tensor, g: &Tensor| {
            grads.linear(ModuleId { layer, proj: p }, self.linear(p), x, g)
        };
        // MLP: y = x2 + down(silu(gate)·up), gate/up = proj(norm(x2)).
        let d_mlp = lin(Proj::Down, &swiglu(&s.gate, &s.up)?, dy)?;
        let (d_gate, d_up) = swiglu_backward(&s.gate, &s.up, &d_mlp)?;
        let h2 = rms_norm(&s.x2, &self.post_norm, eps)?;
        let d_h2 = (lin(Proj::Gate, &h2, &d_gate)? + lin(Proj::Up, &h2, &d_up)?)?;
        let dx2 = (dy + rms_norm_backward(&s.x2, &self.post_norm, eps, &d_h2)?)?;
        // Attention: x2 = x + o(attn(rope(q), rope(k), v)), q/k/v = proj(norm(x)).
        let d_attn = lin(Proj::O, &s.attn, &dx2)?;
        let out = Self::heads(&s.attn, c.num_heads, c.head_dim)?;
        let d_out = Self::heads(&d_attn, c.num_heads, c.head_dim)?;
        let (dq, dk, dv) = Self::attention(c, &s.q, &s.k, &s.v)?.backward(&out, &d_out)?;
        let h1 = rms_norm(&s.x, &self.input_norm, eps)?;
        let d_h1 = lin(Proj::Q, &h1, &Self::merge_heads(&rope.backward(&dq)?)?)?;
        let d_h1 = (d_h1 + lin(Proj::K, &h1, &Self::merge_heads(&rope.backward(&dk)?)?)?)?;
        let d_h1 = (d_h1 + lin(Proj::V, &h1, &Self::merge_heads(&dv)?)?)?;
        Ok((dx2 + rms_norm_backward(&s.x, &self.input_norm, eps, &d_h1)?)?)
    }
}
