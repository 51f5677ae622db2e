//! Fused CPU kernels for the element-wise work of a block's forward and backward: one pass
//! over the data, in parallel over rows, where candle's op-by-op form makes a fresh tensor per
//! step on one thread (measured: a third of a training step on the 1024-wide bench model).
//!
//! Each op has a twin written with candle's tensor ops (`*_ops`), which other devices and
//! dtypes use and which the tests hold the kernels to.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu::{par_filled, par_filled_n, simd, with_values, ELEMENTWISE_CHUNK};
use crate::error::Result;

fn msg(s: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(s.to_string())
}

/// The contiguous slice of a storage's layout.
fn slice<'a, T>(s: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| msg("fused kernel: input must be contiguous"))?;
    Ok(&s[a..b])
}

/// Whether the fused kernels take tensors of this kind (f32 or f64 on the CPU).
fn fused(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// Apply `f` to the f32 or f64 slices of the storages, or fail for other dtypes.
macro_rules! float_dispatch {
    ($name:literal, ($($s:ident),+), |$($v:ident),+| $body:expr) => {
        match ($($s,)+) {
            ($(CpuStorage::F32($v),)+) => Ok(CpuStorage::F32($body)),
            ($(CpuStorage::F64($v),)+) => Ok(CpuStorage::F64($body)),
            _ => Err(msg(concat!($name, ": f32 or f64 inputs of one dtype"))),
        }
    };
}

/// The element types of the kernels, with an exponential that vectorises.
pub(crate) trait Elem: crate::cpu::GemmElem {
    /// `eᵗ`, exact to an ulp or two.
    fn exp_fast(self) -> Self;
}

impl Elem for f64 {
    #[inline]
    fn exp_fast(self) -> Self {
        self.exp()
    }
}

/// `x` within [-87, 88], where `eˣ` is a normal f32 (branch-free, so loops vectorise).
#[inline]
fn x_clamped(x: f32) -> f32 {
    let x = if x < -87.0 { -87.0 } else { x };
    if x > 88.0 {
        88.0
    } else {
        x
    }
}

impl Elem for f32 {
    /// Cephes' `expf` with the rounding done by a magic constant instead of `floor`, so a loop
    /// of it vectorises (libm's `expf` is a call per element): `x = n·ln2 + r`, `|r| ≤ ln2/2`,
    /// `eʳ` by its degree-6 minimax polynomial, `2ⁿ` written into the exponent bits.
    /// Relative error below 2e-7 over the range where `eˣ` is a normal f32; smaller inputs
    /// give 0, larger ones +∞ is never asked for (softmax arguments are ≤ 0).
    #[inline]
    fn exp_fast(self) -> Self {
        const MAGIC: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
        let x = x_clamped(self);
        let shifted = x * std::f32::consts::LOG2_E + MAGIC;
        // The rounded n sits in the low mantissa bits of `shifted`.
        let n_bits = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
        let n = shifted - MAGIC;
        let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
        let p = 1.987_569_1e-4f32;
        let p = p * r + 1.398_199_9e-3;
        let p = p * r + 8.333_452e-3;
        let p = p * r + 4.166_579_6e-2;
        let p = p * r + 0.166_666_65;
        let p = p * r + 0.5;
        let er = p * r * r + r + 1.0;
        er * f32::from_bits(n_bits.wrapping_add(127) << 23)
    }
}

/// Eight running partial results, so a reduction over a row vectorises (the order of the
/// additions is fixed, so results are deterministic).
#[inline]
fn reduce8<T: Elem>(xs: &[T], init: T, op: impl Fn(T, T) -> T) -> T {
    let mut lanes = [init; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = op(*l, v);
        }
    }
    let tail = chunks.remainder().iter().fold(init, |a, &v| op(a, v));
    lanes.iter().fold(tail, |a, &v| op(a, v))
}

#[inline]
fn sigmoid<T: Elem>(g: T) -> T {
    T::one() / (T::one() + (-g).exp_fast())
}

// ---------------------------------------------------------------- SwiGLU

struct Swiglu;

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        lg: &Layout,
        u: &CpuStorage,
        lu: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Elem>(g: &[T], u: &[T]) -> Vec<T> {
            let fill = |i: usize, out: &mut [MaybeUninit<T>]| {
                let at = i * ELEMENTWISE_CHUNK;
                simd(|| {
                    for (o, (&g, &u)) in out.iter_mut().zip(g[at..].iter().zip(&u[at..])) {
                        o.write(g * sigmoid(g) * u);
                    }
                })
            };
            // SAFETY: `fill` writes each of its chunk's entries (the inputs are as long).
            unsafe { par_filled(g.len(), ELEMENTWISE_CHUNK, fill) }
        }
        if lg.shape() != lu.shape() {
            return Err(msg(format!(
                "swiglu: gate {:?} and up {:?} differ",
                lg.shape(),
                lu.shape()
            )));
        }
        let out = float_dispatch!("swiglu", (g, u), |g, u| run(slice(g, lg)?, slice(u, lu)?))?;
        Ok((out, lg.shape().clone()))
    }
}

/// SwiGLU's product `silu(gate)·up`.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused(gate) {
        return Ok(gate
            .contiguous()?
            .apply_op2_no_bwd(&up.contiguous()?, &Swiglu)?);
    }
    swiglu_ops(gate, up)
}

fn swiglu_ops(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((gate.silu()? * up)?)
}

/// `d_gate = dm·up·silu'(gate)` with `silu'(g) = σ(g)·(1 + g·(1 − σ(g)))`, and
/// `d_up = dm·silu(gate)`, one sigmoid per element, in parallel.
fn swiglu_backward_values<T: Elem>(g: &[T], u: &[T], dm: &[T]) -> [Vec<T>; 2] {
    let fill = |i: usize, [dg, du]: [&mut [MaybeUninit<T>]; 2]| {
        let at = i * ELEMENTWISE_CHUNK;
        simd(|| {
            let inputs = g[at..].iter().zip(u[at..].iter().zip(&dm[at..]));
            for ((dg, du), (&g, (&u, &dm))) in dg.iter_mut().zip(du.iter_mut()).zip(inputs) {
                let s = sigmoid(g);
                dg.write(dm * u * (s * (T::one() + g * (T::one() - s))));
                du.write(dm * g * s);
            }
        })
    };
    // SAFETY: `fill` writes each entry of both chunks (the inputs are as long).
    unsafe { par_filled_n(g.len(), ELEMENTWISE_CHUNK, fill) }
}

/// Gradients of `silu(gate)·up` for the output gradient `dm`: `(d_gate, d_up)`.
pub(crate) fn swiglu_backward(gate: &Tensor, up: &Tensor, dm: &Tensor) -> Result<(Tensor, Tensor)> {
    fn run<T: Elem>(inputs: [&Tensor; 3]) -> Result<(Tensor, Tensor)> {
        let [dg, du] = with_values::<T, _>(&inputs, |v| swiglu_backward_values(v[0], v[1], v[2]))?;
        let (shape, device) = (inputs[0].shape(), inputs[0].device());
        Ok((
            Tensor::from_vec(dg, shape, device)?,
            Tensor::from_vec(du, shape, device)?,
        ))
    }
    let same = [up, dm]
        .iter()
        .all(|t| t.dtype() == gate.dtype() && t.shape() == gate.shape());
    match gate.dtype() {
        DType::F32 if fused(gate) && same => run::<f32>([gate, up, dm]),
        DType::F64 if fused(gate) && same => run::<f64>([gate, up, dm]),
        _ => swiglu_backward_ops(gate, up, dm),
    }
}

fn swiglu_backward_ops(gate: &Tensor, up: &Tensor, dm: &Tensor) -> Result<(Tensor, Tensor)> {
    let sig = candle_nn::ops::sigmoid(gate)?;
    let silu = (gate * &sig)?;
    let dsilu = (&sig * ((gate * (1.0 - &sig)?)? + 1.0)?)?;
    Ok((((dm * up)? * dsilu)?, (dm * silu)?))
}

// ---------------------------------------------------------------- RMSNorm backward

struct RmsNormBackward {
    eps: f64,
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "fused-rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        dy: &CpuStorage,
        ld: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Elem>(x: &[T], w: &[T], dy: &[T], eps: f64) -> Vec<T> {
            let n = w.len();
            let inv_n = T::from(1.0 / n as f64).expect("a float");
            let eps = T::from(eps).expect("a float");
            let row = |i: usize, dx: &mut [MaybeUninit<T>]| {
                simd(|| {
                    let (x, dy) = (&x[i * n..][..n], &dy[i * n..][..n]);
                    let ms = x.iter().fold(T::zero(), |a, &v| a + v * v) * inv_n;
                    let r = T::one() / (ms + eps).sqrt();
                    let dot = x
                        .iter()
                        .zip(dy.iter().zip(w))
                        .fold(T::zero(), |a, (&x, (&d, &w))| a + d * w * x)
                        * r
                        * inv_n;
                    for (o, (&x, (&d, &w))) in dx.iter_mut().zip(x.iter().zip(dy.iter().zip(w))) {
                        o.write(r * (d * w - x * r * dot));
                    }
                })
            };
            // SAFETY: `row` writes each of its row's `n` entries.
            unsafe { par_filled(x.len(), n, row) }
        }
        let eps = self.eps;
        let out = float_dispatch!("rms-norm backward", (x, w, dy), |x, w, dy| run(
            slice(x, lx)?,
            slice(w, lw)?,
            slice(dy, ld)?,
            eps
        ))?;
        Ok((out, lx.shape().clone()))
    }
}

/// The input gradient of `y = x·r·w`, `r = 1/√(mean(x²) + ε)`:
/// `dx = r·(g − x̂·mean(g·x̂))` with `g = dy·w` and `x̂ = x·r` (sums in f32 for half types).
pub(crate) fn rms_norm_backward(
    x: &Tensor,
    weight: &Tensor,
    eps: f64,
    dy: &Tensor,
) -> Result<Tensor> {
    if fused(x) && weight.dtype() == x.dtype() && dy.dtype() == x.dtype() {
        let op = RmsNormBackward { eps };
        return Ok(x
            .contiguous()?
            .apply_op3_no_bwd(weight, &dy.contiguous()?, &op)?);
    }
    rms_norm_backward_ops(x, weight, eps, dy)
}

fn rms_norm_backward_ops(x: &Tensor, weight: &Tensor, eps: f64, dy: &Tensor) -> Result<Tensor> {
    let acc = super::accumulation(x.dtype());
    let x32 = x.to_dtype(acc)?;
    let r = (x32.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    let x_hat = x32.broadcast_mul(&r)?;
    let g = dy.to_dtype(acc)?.broadcast_mul(&weight.to_dtype(acc)?)?;
    let dot = (&g * &x_hat)?.mean_keepdim(D::Minus1)?;
    let dx = (g - x_hat.broadcast_mul(&dot)?)?.broadcast_mul(&r)?;
    Ok(dx.to_dtype(x.dtype())?)
}

// ---------------------------------------------------------------- head layout

struct SwapMiddle;

impl CustomOp1 for SwapMiddle {
    fn name(&self) -> &'static str {
        "fused-swap-middle"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        /// Output row `(i, k)` (length `b·d`) gathers input rows `(i, j, k)` for every `j`.
        fn run<T: Copy + Send + Sync>(x: &[T], [a, b, c, d]: [usize; 4]) -> Vec<T> {
            let fill = |row: usize, out: &mut [MaybeUninit<T>]| {
                let (i, k) = (row / c, row % c);
                for (j, out) in out.chunks_mut(d).enumerate() {
                    let src = &x[((i * b + j) * c + k) * d..][..d];
                    for (o, &v) in out.iter_mut().zip(src) {
                        o.write(v);
                    }
                }
            };
            // SAFETY: each output row's `b` pieces of `d` values are all written.
            unsafe { par_filled(a * b * c * d, b * d, fill) }
        }
        let (a, b, c, d) = l.shape().dims4()?;
        let out = float_dispatch!("swap middle", (s), |s| run(slice(s, l)?, [a, b, c, d]))?;
        Ok((out, Shape::from((a, c, b, d))))
    }
}

/// `x` (a, b, c, d) with its middle dimensions swapped, as a contiguous (a, c, b, d): the
/// move between `(batch, positions, heads, head_dim)` and `(batch, heads, positions,
/// head_dim)`, in parallel where candle's copy runs on one thread.
pub(crate) fn swap_middle(x: &Tensor) -> Result<Tensor> {
    if fused(x) && x.elem_count() > 0 {
        return Ok(x.contiguous()?.apply_op1_no_bwd(&SwapMiddle)?);
    }
    swap_middle_ops(x)
}

fn swap_middle_ops(x: &Tensor) -> Result<Tensor> {
    Ok(x.transpose(1, 2)?.contiguous()?)
}

// ---------------------------------------------------------------- cross-entropy

/// The next-token loss of one row of logits `l` against class `target`, with weight `w`:
/// `w·(lse − l[target])`, `lse = max + ln Σ e^(l − max)`, in f64. The row is overwritten:
/// with `grad = Some(s)` by the gradient of `s·loss`, `s·w·(softmax(l) − one_hot(target))`;
/// without, by `e^(l − max)`.
#[inline]
pub(crate) fn cross_entropy_row<T: Elem>(
    row: &mut [T],
    target: usize,
    w: T,
    grad: Option<T>,
) -> f64 {
    let max = reduce8(row, T::neg_infinity(), |a, b| if b > a { b } else { a });
    let picked = row[target];
    row.iter_mut().for_each(|l| *l = (*l - max).exp_fast());
    let sum = reduce8(row, T::zero(), |a, b| a + b);
    if let Some(s) = grad {
        // d(s·w·nll)/dl = s·w·(e^(l − max)/sum − one_hot(target)).
        let k = s * w / sum;
        row.iter_mut().for_each(|p| *p *= k);
        row[target] -= s * w;
    }
    <T as candle_core::WithDType>::to_f64((max + sum.ln() - picked) * w)
}

// ---------------------------------------------------------------- causal softmax

/// A row of scores turned into `softmax(scale·s)` over its first `n` entries, in place; the
/// rest (keys the query may not see) get probability 0.
#[inline]
pub(crate) fn softmax_row<T: Elem>(row: &mut [T], n: usize, scale: T) {
    let (seen, unseen) = row.split_at_mut(n);
    let max = reduce8(seen, T::neg_infinity(), |a, b| if b > a { b } else { a }) * scale;
    seen.iter_mut()
        .for_each(|s| *s = (*s * scale - max).exp_fast());
    let inv = T::one() / reduce8(seen, T::zero(), |a, b| a + b);
    seen.iter_mut().for_each(|p| *p *= inv);
    unseen.iter_mut().for_each(|p| *p = T::zero());
}

/// Rows of attention scores and the key each may see last.
#[derive(Clone, Copy)]
pub(crate) struct CausalRows {
    /// The score scale (1/√head_dim).
    pub scale: f64,
    /// Rows come in groups of `len` queries; row `i` of a group sits at position
    /// `first + i` and sees keys `0..=first + i`.
    pub len: usize,
    pub first: usize,
}

impl CausalRows {
    #[inline]
    fn visible(&self, row: usize) -> usize {
        self.first + row % self.len + 1
    }
}

struct CausalSoftmax(CausalRows);

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "fused-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Elem>(s: &[T], keys: usize, rows: CausalRows) -> Vec<T> {
            let scale = T::from(rows.scale).expect("a float");
            let mut out = s.to_vec();
            out.par_chunks_mut(keys)
                .enumerate()
                .for_each(|(row, p)| softmax_row(p, rows.visible(row).min(keys), scale));
            out
        }
        let keys = *l
            .dims()
            .last()
            .ok_or_else(|| msg("causal softmax: scalar"))?;
        let rows = self.0;
        let out = float_dispatch!("causal softmax", (s), |s| run(slice(s, l)?, keys, rows))?;
        Ok((out, l.shape().clone()))
    }
}

/// `softmax(scale·s)` over the last dimension of scores (…, rows, keys), each row seeing
/// only the keys [`CausalRows`] allows (the others get probability 0).
pub(crate) fn causal_softmax(scores: &Tensor, rows: CausalRows) -> Result<Tensor> {
    if fused(scores) {
        return Ok(scores
            .contiguous()?
            .apply_op1_no_bwd(&CausalSoftmax(rows))?);
    }
    causal_softmax_ops(scores, rows)
}

fn causal_softmax_ops(scores: &Tensor, rows: CausalRows) -> Result<Tensor> {
    let dims = scores.dims().to_vec();
    let keys = dims[dims.len() - 1];
    let groups = scores.elem_count() / (keys * rows.len);
    let s = (scores.reshape((groups, rows.len, keys))? * rows.scale)?;
    let pos = Tensor::arange(
        rows.first as u32,
        (rows.first + rows.len) as u32,
        s.device(),
    )?;
    let cols = Tensor::arange(0u32, keys as u32, s.device())?;
    let after = cols.unsqueeze(0)?.broadcast_gt(&pos.unsqueeze(1)?)?;
    let zero = Tensor::zeros((rows.len, keys), s.dtype(), s.device())?;
    let minus_inf =
        Tensor::full(f32::NEG_INFINITY, (rows.len, keys), s.device())?.to_dtype(s.dtype())?;
    let mask = after.where_cond(&minus_inf, &zero)?;
    let p = candle_nn::ops::softmax_last_dim(&s.broadcast_add(&mask)?)?;
    Ok(p.reshape(dims)?)
}

struct SoftmaxBackward {
    scale: f64,
}

impl CustomOp3 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "fused-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        p: &CpuStorage,
        lp: &Layout,
        dp: &CpuStorage,
        ld: &Layout,
        row: &CpuStorage,
        lr: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Elem>(p: &[T], dp: &[T], row: &[T], keys: usize, scale: f64) -> Vec<T> {
            let scale = T::from(scale).expect("a float");
            let mut out = vec![T::zero(); p.len()];
            out.par_chunks_mut(keys)
                .zip(p.par_chunks(keys).zip(dp.par_chunks(keys)))
                .zip(row.par_iter())
                .for_each(|((ds, (p, dp)), &r)| {
                    for (ds, (&p, &dp)) in ds.iter_mut().zip(p.iter().zip(dp)) {
                        *ds = p * (dp - r) * scale;
                    }
                });
            out
        }
        let keys = *lp
            .dims()
            .last()
            .ok_or_else(|| msg("softmax backward: scalar"))?;
        let scale = self.scale;
        let out = float_dispatch!("softmax backward", (p, dp, row), |p, dp, row| run(
            slice(p, lp)?,
            slice(dp, ld)?,
            slice(row, lr)?,
            keys,
            scale
        ))?;
        Ok((out, lp.shape().clone()))
    }
}

/// The score gradient of `p = softmax(scale·s)`: `scale·p·(dp − row)` where `row` (…, rows, 1)
/// is `Σ dp·p` per row (computed by the caller as `Σ dO·O`).
pub(crate) fn softmax_backward(
    p: &Tensor,
    dp: &Tensor,
    row: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    if fused(p) && dp.dtype() == p.dtype() && row.dtype() == p.dtype() {
        let op = SoftmaxBackward { scale };
        return Ok(p
            .contiguous()?
            .apply_op3_no_bwd(&dp.contiguous()?, &row.contiguous()?, &op)?);
    }
    let acc = super::accumulation(p.dtype());
    let ds = (p.to_dtype(acc)? * dp.to_dtype(acc)?.broadcast_sub(&row.to_dtype(acc)?)?)?;
    Ok((ds * scale)?.to_dtype(p.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{assert_close, wave};

    /// The f32 exponential against f64's over the softmax's range, in steps of 1e-3.
    #[test]
    fn fast_exp_is_within_two_ulps() {
        let mut worst = 0f64;
        for i in 0..87_000 {
            let x = -(i as f32) * 1e-3;
            let want = (x as f64).exp();
            let rel = ((x.exp_fast() as f64) - want).abs() / want;
            worst = worst.max(rel);
        }
        assert!(worst < 2.4e-7, "{worst:e}");
        assert!((0.5f32).exp_fast() > 1.6487 && (-100f32).exp_fast() < 1e-37);
    }

    #[test]
    fn kernels_equal_their_tensor_op_twins() {
        let (g, u, d) = (
            wave(&[3, 5, 7], 5),
            wave(&[3, 5, 7], 7),
            wave(&[3, 5, 7], 11),
        );
        assert_close(&swiglu(&g, &u).unwrap(), &swiglu_ops(&g, &u).unwrap());
        let (dg, du) = swiglu_backward(&g, &u, &d).unwrap();
        let (dg2, du2) = swiglu_backward_ops(&g, &u, &d).unwrap();
        assert_close(&dg, &dg2);
        assert_close(&du, &du2);
        let x = wave(&[2, 3, 4, 5], 23);
        let (got, want) = (swap_middle(&x).unwrap(), swap_middle_ops(&x).unwrap());
        assert_eq!(got.dims(), [2, 4, 3, 5]);
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f64>().unwrap()
        );
        let w = wave(&[7], 3);
        assert_close(
            &rms_norm_backward(&g, &w, 1e-5, &d).unwrap(),
            &rms_norm_backward_ops(&g, &w, 1e-5, &d).unwrap(),
        );
        for (len, first, keys) in [(4, 0, 4), (3, 5, 9), (2, 1, 9)] {
            let rows = CausalRows {
                scale: 0.7,
                len,
                first,
            };
            let s = wave(&[2, 2, len, keys], 13);
            let p = causal_softmax(&s, rows).unwrap();
            assert_close(&p, &causal_softmax_ops(&s, rows).unwrap());
            let dp = wave(&[2, 2, len, keys], 17);
            let row = wave(&[2, 2, len, 1], 19);
            let want = ((&p * dp.broadcast_sub(&row).unwrap()).unwrap() * 0.7).unwrap();
            assert_close(&softmax_backward(&p, &dp, &row, 0.7).unwrap(), &want);
        }
    }

    /// The SwiGLU kernels over several element-wise pieces (the last one short), in f32:
    /// the same bits as the formulas evaluated one element at a time in baseline code, so
    /// the vectorised path changes no result.
    #[test]
    fn vectorised_swiglu_gives_the_bits_of_the_scalar_formulas() {
        let n = 3 * (crate::cpu::ELEMENTWISE_CHUNK + 41);
        let values = |k: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * k) % 997) as f32 * 0.02 - 9.0)
                .collect()
        };
        let (g, u, dm) = (values(7), values(13), values(31));
        let tensor = |v: &[f32]| Tensor::from_slice(v, (n / 3, 3), &candle_core::Device::Cpu);
        let (gt, ut, dmt) = (
            tensor(&g).unwrap(),
            tensor(&u).unwrap(),
            tensor(&dm).unwrap(),
        );
        let bits = |t: &Tensor| -> Vec<u32> {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.into_iter().map(f32::to_bits).collect()
        };
        let scalar = |f: &dyn Fn(f32, f32, f32) -> f32| -> Vec<u32> {
            (0..n)
                .map(|i| std::hint::black_box(f(g[i], u[i], dm[i])).to_bits())
                .collect()
        };
        assert_eq!(
            bits(&swiglu(&gt, &ut).unwrap()),
            scalar(&|g, u, _| g * sigmoid(g) * u)
        );
        let (dg, du) = swiglu_backward(&gt, &ut, &dmt).unwrap();
        assert_eq!(
            bits(&dg),
            scalar(&|g, u, dm| {
                let s = sigmoid(g);
                dm * u * (s * (1.0 + g * (1.0 - s)))
            })
        );
        assert_eq!(bits(&du), scalar(&|g, _, dm| dm * g * sigmoid(g)));
    }

    #[test]
    fn swiglu_of_mismatched_shapes_is_an_error() {
        let (g, u) = (wave(&[3, 4], 5), wave(&[3, 5], 7));
        assert!(swiglu(&g, &u).is_err());
        assert!(swiglu_backward(&g, &g, &u).is_err());
    }
}
