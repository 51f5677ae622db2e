//! The model's forward through candle's autograd graph, written with differentiable ops
//! only (RMSNorm and rope in their slow forms, the full score matrix with repeated k/v, the
//! adapters' graph nodes). It is what the engine computed before the blocks got their own
//! backward, kept as the independent reference the tests check that backward against.

use candle_core::{DType, Device, Tensor};
use candle_nn::ops::rms_norm_slow;
use candle_nn::rotary_emb::rope_slow;

use super::softmax::softmax_last_dim;
use super::{CausalLm, Proj};
use crate::error::Result;

impl CausalLm {
    /// Logits (batch, seq, vocab) for token ids (batch, seq), recorded in candle's graph:
    /// `backward` on a loss of them gives the adapters' gradients.
    pub fn forward_autograd(&self, ids: &Tensor) -> Result<Tensor> {
        let c = self.config();
        let mut x = self.embed_tokens(ids)?;
        let (b, t, _) = x.dims3()?;
        let rope = self.rope(0, t)?;
        let (cos, sin) = rope.tables();
        let mask = causal_mask(t, self.dtype(), self.device())?;
        let eps = c.rms_norm_eps as f32;
        for block in self.blocks() {
            let run = |p: Proj, x: &Tensor| block.linears[p.index()].forward(x);
            let heads = |y: Tensor, n: usize| -> Result<Tensor> {
                Ok(y.reshape((b, t, n, c.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let h = rms_norm_slow(&x, &block.input_norm, eps)?;
            let q = rope_slow(&heads(run(Proj::Q, &h)?, c.num_heads)?, cos, sin)?;
            let k = rope_slow(&heads(run(Proj::K, &h)?, c.num_kv_heads)?, cos, sin)?;
            let v = heads(run(Proj::V, &h)?, c.num_kv_heads)?;
            let n_rep = c.num_heads / c.num_kv_heads;
            let (k, v) = (repeat_kv(k, n_rep)?, repeat_kv(v, n_rep)?);
            let q = (q * (1.0 / (c.head_dim as f64).sqrt()))?;
            let probs = softmax_last_dim(&q.matmul(&k.t()?)?.broadcast_add(&mask)?)?;
            let attn =
                probs
                    .matmul(&v)?
                    .transpose(1, 2)?
                    .reshape((b, t, c.num_heads * c.head_dim))?;
            x = (&x + run(Proj::O, &attn)?)?;
            let h = rms_norm_slow(&x, &block.post_norm, eps)?;
            let mlp = (run(Proj::Gate, &h)?.silu()? * run(Proj::Up, &h)?)?;
            x = (&x + run(Proj::Down, &mlp)?)?;
        }
        let (norm, head) = self.head_weight();
        let h = rms_norm_slow(&x, norm, eps)?;
        Ok(h.broadcast_matmul(&head.t()?)?)
    }
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

/// (t, t) additive mask in `dtype`: 0 on and below the diagonal, -inf above.
fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let idx = Tensor::arange(0u32, t as u32, device)?;
    let above = idx.unsqueeze(0)?.broadcast_gt(&idx.unsqueeze(1)?)?;
    let zero = Tensor::zeros((t, t), dtype, device)?;
    let minus_inf = Tensor::full(f32::NEG_INFINITY, (t, t), device)?.to_dtype(dtype)?;
    Ok(above.where_cond(&minus_inf, &zero)?)
}
