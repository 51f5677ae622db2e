//! The output head fused with the next-token loss: final RMSNorm, the frozen output
//! projection and cross-entropy, over chunks of tokens, so the (tokens x vocab) logits never
//! exist at once; the backward gives the gradient of the final hidden states chunk by chunk.

use candle_core::{DType, Device, Tensor, D};

use rayon::prelude::*;

use super::fused::{cross_entropy_row, rms_norm_backward, Elem};
use super::ops::{accumulation, rms_norm};
use crate::cpu::{product, simd, with_values, View};
use crate::error::{LorsError, Result};

/// Memory one chunk's f32 logits may take; the tokens per chunk follow from it.
pub(crate) const CHUNK_LOGIT_BYTES: usize = 32 << 20;

/// Next-token targets of a batch, flattened over (batch, positions): position `j` predicts
/// `ids[j+1]` with weight `mask[j+1]`; the last position of a row has weight 0.
pub struct Targets {
    ids: Tensor,
    weights: Tensor,
    /// `ids` and `weights` on the host, for the CPU kernel and the vocabulary check.
    host_ids: Vec<u32>,
    host_weights: Vec<f32>,
    /// Sum of the weights: the number of predicted tokens.
    pub count: f64,
}

impl Targets {
    /// The targets of token ids (batch, positions) and their loss mask (batch, positions).
    pub fn new(ids: &Tensor, mask: &Tensor, device: &Device) -> Result<Self> {
        let ids_h = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let mask_h = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let (mut next, mut weights) = (Vec::new(), Vec::new());
        for (row, m) in ids_h.iter().zip(&mask_h) {
            for j in 0..row.len() {
                let (id, w) = match row.get(j + 1) {
                    Some(&id) => (id, m[j + 1]),
                    None => (0, 0.0),
                };
                next.push(id);
                weights.push(w);
            }
        }
        let count = weights.iter().map(|&w| w as f64).sum();
        let n = next.len();
        Ok(Self {
            ids: Tensor::from_slice(&next, n, device)?,
            weights: Tensor::from_slice(&weights, n, device)?,
            host_ids: next,
            host_weights: weights,
            count,
        })
    }
}

/// The final norm and the output projection (vocab x hidden) of a model.
pub(crate) struct Head<'a> {
    pub norm: &'a Tensor,
    pub weight: &'a Tensor,
    pub eps: f64,
}

impl Head<'_> {
    /// Logits (..., vocab) of hidden states (..., hidden), in the compute dtype.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let h = rms_norm(x, self.norm, self.eps)?;
        let (vocab, hidden) = self.weight.dims2()?;
        let mut dims = h.dims().to_vec();
        let flat = h.reshape((h.elem_count() / hidden, hidden))?;
        *dims.last_mut().expect("hidden states have dims") = vocab;
        Ok(flat.matmul(&self.weight.t()?)?.reshape(dims)?)
    }

    /// Tokens per chunk for this vocabulary.
    fn chunk(&self) -> Result<usize> {
        let vocab = self.weight.dim(0)?;
        Ok((CHUNK_LOGIT_BYTES / (4 * vocab).max(1)).max(1))
    }

    /// The weighted sum of next-token negative log-likelihoods of hidden states `x` (batch,
    /// positions, hidden), and, with `grad_weight = Some(s)`, the gradient of `s · sum` with
    /// respect to `x`.
    pub fn loss(
        &self,
        x: &Tensor,
        t: &Targets,
        grad_weight: Option<f64>,
    ) -> Result<(f64, Option<Tensor>)> {
        self.loss_in_chunks(x, t, grad_weight, self.chunk()?)
    }

    /// [`loss`](Self::loss) over chunks of `chunk` tokens: the fused CPU kernel for f32 and
    /// f64 on the CPU, candle's ops elsewhere.
    fn loss_in_chunks(
        &self,
        x: &Tensor,
        t: &Targets,
        grad_weight: Option<f64>,
        chunk: usize,
    ) -> Result<(f64, Option<Tensor>)> {
        let (vocab, hidden) = self.weight.dims2()?;
        if let Some(&id) = t.host_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(LorsError::InvalidValue {
                field: "token id".into(),
                reason: format!("{id} is outside the model's vocabulary of {vocab}"),
            });
        }
        let n = x.elem_count() / hidden;
        let flat_x = x.reshape((n, hidden))?;
        let h = rms_norm(&flat_x, self.norm, self.eps)?;
        let cpu = h.device().is_cpu() && self.weight.dtype() == h.dtype();
        let (sum, d_h) = match h.dtype() {
            DType::F32 if cpu => self.chunks_cpu::<f32>(&h, t, grad_weight, chunk)?,
            DType::F64 if cpu => self.chunks_cpu::<f64>(&h, t, grad_weight, chunk)?,
            _ => self.chunks_ops(&h, t, grad_weight, chunk)?,
        };
        let dx = match d_h {
            Some(d_h) => {
                Some(rms_norm_backward(&flat_x, self.norm, self.eps, &d_h)?.reshape(x.shape())?)
            }
            None => None,
        };
        Ok((sum, dx))
    }

    /// The summed loss of normed hidden states `h` (tokens, hidden) and, with a gradient
    /// weight, the gradient with respect to `h`: per chunk one product for the logits, the
    /// cross-entropy rows in parallel in place ([`cross_entropy_row`]), one product back.
    /// Rows' losses are summed in order, so the result does not depend on the threads.
    fn chunks_cpu<T: Elem>(
        &self,
        h: &Tensor,
        t: &Targets,
        grad_weight: Option<f64>,
        chunk: usize,
    ) -> Result<(f64, Option<Tensor>)> {
        let (vocab, hidden) = self.weight.dims2()?;
        let n = h.dim(0)?;
        let float = |v: f64| T::from(v).expect("a float");
        let scale = grad_weight.map(float);
        let (sum, d_h) = with_values::<T, _>(&[h, self.weight], |v| {
            let (h, w) = (v[0], v[1]);
            let mut sum = 0f64;
            let mut d_h = Vec::with_capacity(if scale.is_some() { n * hidden } else { 0 });
            for start in (0..n).step_by(chunk) {
                let len = chunk.min(n - start);
                let rows = View::rows(&h[start * hidden..(start + len) * hidden], len, hidden);
                let mut logits = product(rows, View::rows(w, vocab, hidden).t());
                let targets = t.host_ids[start..start + len]
                    .par_iter()
                    .zip(&t.host_weights[start..start + len]);
                let nll: Vec<f64> = logits
                    .par_chunks_mut(vocab)
                    .zip(targets)
                    .map(|(row, (&id, &wt))| {
                        simd(|| cross_entropy_row(row, id as usize, float(wt as f64), scale))
                    })
                    .collect();
                sum += nll.iter().sum::<f64>();
                if scale.is_some() {
                    d_h.extend(product(
                        View::rows(&logits, len, vocab),
                        View::rows(w, vocab, hidden),
                    ));
                }
            }
            (sum, d_h)
        })?;
        let d_h = match scale {
            Some(_) => Some(Tensor::from_vec(d_h, (n, hidden), h.device())?),
            None => None,
        };
        Ok((sum, d_h))
    }

    /// [`chunks_cpu`](Self::chunks_cpu) with candle's tensor ops (other devices and dtypes;
    /// the logits in the accumulation dtype).
    fn chunks_ops(
        &self,
        h: &Tensor,
        t: &Targets,
        grad_weight: Option<f64>,
        chunk: usize,
    ) -> Result<(f64, Option<Tensor>)> {
        let n = h.dim(0)?;
        let mut sum = 0f64;
        let mut d_h = Vec::new();
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let logits = h
                .narrow(0, start, len)?
                .matmul(&self.weight.t()?)?
                .to_dtype(accumulation(h.dtype()))?;
            let ids = t.ids.narrow(0, start, len)?.unsqueeze(1)?;
            let w = t.weights.narrow(0, start, len)?.unsqueeze(1)?;
            let max = logits.max_keepdim(D::Minus1)?;
            let exp = logits.broadcast_sub(&max)?.exp()?;
            let sum_exp = exp.sum_keepdim(D::Minus1)?;
            let lse = (sum_exp.log()? + max)?;
            let picked = logits.gather(&ids, D::Minus1)?;
            let nll = ((lse - picked)?.broadcast_mul(&w.to_dtype(logits.dtype())?))?;
            sum += nll.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if let Some(s) = grad_weight {
                // d(s·Σ w·nll)/d logits = s·w·(softmax − one_hot(target)).
                let p = exp.broadcast_div(&sum_exp)?;
                let ones = Tensor::ones((len, 1), p.dtype(), p.device())?;
                let one_hot = p.zeros_like()?.scatter_add(&ids, &ones, D::Minus1)?;
                let scale = (w.to_dtype(p.dtype())? * s)?;
                let d_logits = (p - one_hot)?.broadcast_mul(&scale)?;
                d_h.push(
                    d_logits
                        .to_dtype(self.weight.dtype())?
                        .matmul(self.weight)?,
                );
            }
        }
        let d_h = match grad_weight {
            Some(_) => Some(Tensor::cat(&d_h, 0)?),
            None => None,
        };
        Ok((sum, d_h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::wave;

    fn f32_wave(shape: &[usize], k: usize) -> Tensor {
        wave(shape, k).to_dtype(DType::F32).unwrap()
    }
    use candle_core::Var;

    /// The largest difference of `a` from `b`, relative to `b`'s largest entry (in f64).
    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let values = |t: &Tensor| {
            let t = t.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
            t.to_vec1::<f64>().unwrap()
        };
        let (a, b) = (values(a), values(b));
        let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0.0, f64::max)
    }

    /// Chunks of 1, 4 and 7 tokens (7 does not divide the 2 x 9 = 18 positions) give the loss
    /// and gradient of one chunk holding everything, to 1e-6 relative (f32, the same sums
    /// split differently); and that equals the log-softmax loss through candle's autograd.
    #[test]
    fn chunked_loss_equals_the_whole_one_and_autograd() {
        let dev = Device::Cpu;
        let (norm, weight) = (
            f32_wave(&[6], 5).affine(0.1, 1.0).unwrap(),
            f32_wave(&[11, 6], 7),
        );
        let head = Head {
            norm: &norm,
            weight: &weight,
            eps: 1e-5,
        };
        let ids = Tensor::new(
            &[[1u32, 4, 9, 2, 10, 3, 3, 7, 0], [5, 6, 8, 1, 2, 2, 9, 4, 4]],
            &dev,
        )
        .unwrap();
        let mask = Tensor::new(&[[1f32; 9], [1., 1., 1., 1., 1., 1., 0., 0., 0.]], &dev).unwrap();
        let t = Targets::new(&ids, &mask, &dev).unwrap();
        assert_eq!(t.count, 8.0 + 5.0);
        let x = Var::from_tensor(&f32_wave(&[2, 9, 6], 3)).unwrap();
        let (whole, d_whole) = head.loss_in_chunks(&x, &t, Some(0.5), 18).unwrap();
        let d_whole = d_whole.unwrap();
        for chunk in [1, 4, 7] {
            let (sum, d) = head.loss_in_chunks(&x, &t, Some(0.5), chunk).unwrap();
            assert!(
                (sum - whole).abs() <= 1e-6 * whole.abs(),
                "{chunk}: {sum} vs {whole}"
            );
            assert!(max_rel(&d.unwrap(), &d_whole) < 1e-6, "chunk {chunk}");
        }
        let logits = head.logits(x.as_tensor()).unwrap();
        let h = candle_nn::ops::rms_norm_slow(x.as_tensor(), &norm, 1e-5).unwrap();
        let logits_ag = h.broadcast_matmul(&weight.t().unwrap()).unwrap();
        assert!(max_rel(&logits, &logits_ag) < 1e-6);
        let (sum_ag, count) =
            crate::train::loss::causal_lm_nll_sum(&logits_ag, &ids, &mask).unwrap();
        assert_eq!(count, t.count);
        let grads = (&sum_ag * 0.5).unwrap().backward().unwrap();
        let sum_ag = sum_ag.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (whole - sum_ag).abs() <= 1e-6 * sum_ag.abs(),
            "{whole} vs {sum_ag}"
        );
        assert!(max_rel(&d_whole, grads.get(&x).unwrap()) < 1e-6);
    }

    /// The fused CPU kernel against its candle-ops twin on the same inputs: f32 to 1e-6 and
    /// f64 to 1e-12 relative (the same sums in another order; its exponential is within two
    /// ulps), for the loss alone and with a gradient, chunks not dividing the tokens, and
    /// masked targets; an id outside the vocabulary is an error, not a panic.
    #[test]
    fn cpu_kernel_equals_the_ops_twin() {
        let dev = Device::Cpu;
        let ids = Tensor::new(
            &[[3u32, 0, 12, 7, 1, 9, 12, 2], [4, 4, 11, 5, 0, 6, 8, 10]],
            &dev,
        )
        .unwrap();
        let mask = Tensor::new(&[[1f32; 8], [1., 1., 1., 0., 0., 1., 1., 1.]], &dev).unwrap();
        let t = Targets::new(&ids, &mask, &dev).unwrap();
        for (dtype, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-12)] {
            let norm = wave(&[5], 2)
                .affine(0.1, 1.0)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let weight = wave(&[13, 5], 9)
                .affine(3.0, 0.0)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let head = Head {
                norm: &norm,
                weight: &weight,
                eps: 1e-5,
            };
            let h = wave(&[16, 5], 4).to_dtype(dtype).unwrap();
            for grad in [None, Some(0.25)] {
                let (fused_sum, fused_d) = match dtype {
                    DType::F32 => head.chunks_cpu::<f32>(&h, &t, grad, 3).unwrap(),
                    _ => head.chunks_cpu::<f64>(&h, &t, grad, 3).unwrap(),
                };
                let (ops_sum, ops_d) = head.chunks_ops(&h, &t, grad, 5).unwrap();
                assert!(
                    (fused_sum - ops_sum).abs() <= tol * ops_sum.abs(),
                    "{dtype:?} {fused_sum} vs {ops_sum}"
                );
                assert_eq!(fused_d.is_some(), grad.is_some());
                if let (Some(a), Some(b)) = (fused_d, ops_d) {
                    assert!(max_rel(&a, &b) <= tol, "{dtype:?}");
                }
            }
        }
        let bad = Targets::new(
            &Tensor::new(&[[1u32, 13]], &dev).unwrap(),
            &Tensor::ones((1, 2), DType::F32, &dev).unwrap(),
            &dev,
        )
        .unwrap();
        let (norm, weight) = (
            Tensor::ones(5, DType::F32, &dev).unwrap(),
            f32_wave(&[13, 5], 1),
        );
        let head = Head {
            norm: &norm,
            weight: &weight,
            eps: 1e-5,
        };
        let err = head
            .loss(&f32_wave(&[1, 2, 5], 3), &bad, Some(1.0))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("13 is outside the model's vocabulary of 13"),
            "{err}"
        );
    }
}
