//! LoRA's adapter gradients through the rank-r path, which `lora` and LoRS's graph
//! rearrangement (`lors` approx) share: for input `x` (tokens x in) and output gradient `g`
//! (tokens x out), `grad_A = s·(g·B)ᵀ·x`, `grad_B = s·gᵀ·(x·Aᵀ)`, and `s·g·B` for LoRA's input
//! gradient.
//!
//! On the CPU (f32, f64) one fused pass: the tokens are split into a fixed number of groups,
//! each group runs on one thread in blocks of rows that stay in cache while both of their
//! products use them, and the groups' partial sums are added in group order. Candle's form
//! (the twin, for other devices and dtypes) reads `x` and `g` twice each from memory and
//! scales in extra passes.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::cpu::{matmul, with_values, Dest, GemmElem, View};

/// Token groups of the CPU kernel: a fixed number, so results do not depend on the threads.
const GROUPS: usize = 16;
/// Rows of `x` and `g` a group takes at a time (1024 tokens, 1024 in, 2816 out, rank 16,
/// 2 threads: 3.4 and 4.2 ms in blocks of 64 rows, 4.2-4.6 ms in blocks of 32).
const BLOCK_ROWS: usize = 64;

/// `(grad_A, grad_B, s·g·B)` for 2-D `x` (tokens x in), `g` (tokens x out), `A` (r x in),
/// `B` (out x r).
pub(crate) fn rank_r_grads(
    x: &Tensor,
    g: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (tokens, in_f) = x.dims2()?;
    let (out, rank) = b.dims2()?;
    let dims = Dims {
        tokens,
        in_f,
        out,
        rank,
    };
    let shapes_agree = g.dims() == [tokens, out] && a.dims() == [rank, in_f];
    let same_dtype = [g, a, b].iter().all(|t| t.dtype() == x.dtype());
    if !x.device().is_cpu() || !shapes_agree || !same_dtype {
        // Other devices, and inputs the kernel cannot take (the twin reports bad shapes).
        return rank_r_grads_ops(x, g, a, b, scale);
    }
    match x.dtype() {
        DType::F32 => fused_tensors::<f32>([x, g, a, b], dims, scale),
        DType::F64 => fused_tensors::<f64>([x, g, a, b], dims, scale),
        _ => rank_r_grads_ops(x, g, a, b, scale),
    }
}

/// [`fused_grads`] on the values of `[x, g, A, B]`, as tensors.
fn fused_tensors<T: GemmElem>(
    inputs: [&Tensor; 4],
    d: Dims,
    scale: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let s = T::from(scale).expect("a float");
    let (ga, gb, g_b) =
        with_values::<T, _>(&inputs, |v| fused_grads(v[0], v[1], v[2], v[3], d, s))?;
    let device = inputs[0].device();
    Ok((
        Tensor::from_vec(ga, (d.rank, d.in_f), device)?,
        Tensor::from_vec(gb, (d.out, d.rank), device)?,
        Tensor::from_vec(g_b, (d.tokens, d.rank), device)?,
    ))
}

#[derive(Clone, Copy)]
struct Dims {
    tokens: usize,
    in_f: usize,
    out: usize,
    rank: usize,
}

/// The fused CPU kernel over contiguous slices.
fn fused_grads<T: GemmElem>(
    x: &[T],
    g: &[T],
    a: &[T],
    b: &[T],
    d: Dims,
    s: T,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let Dims {
        tokens,
        in_f,
        out,
        rank,
    } = d;
    let mut g_b = vec![T::zero(); tokens * rank];
    let per_group = tokens.div_ceil(GROUPS).max(1);
    let partials: Vec<(Vec<T>, Vec<T>)> = g_b
        .par_chunks_mut(per_group * rank)
        .enumerate()
        .map(|(i, g_b)| {
            let mut grad_a = vec![T::zero(); rank * in_f];
            let mut grad_b = vec![T::zero(); out * rank];
            let mut x_a = vec![T::zero(); BLOCK_ROWS * rank];
            let first = i * per_group;
            let rows = g_b.len() / rank.max(1);
            for start in (0..rows).step_by(BLOCK_ROWS) {
                let len = BLOCK_ROWS.min(rows - start);
                let t = first + start;
                let xs = View::rows(&x[t * in_f..], len, in_f);
                let gs = View::rows(&g[t * out..], len, out);
                matmul(
                    &mut x_a,
                    xs,
                    View::rows(a, rank, in_f).t(),
                    Dest::Set(T::one()),
                );
                let g_b = &mut g_b[start * rank..(start + len) * rank];
                matmul(g_b, gs, View::rows(b, out, rank), Dest::Set(s));
                matmul(
                    &mut grad_a,
                    View::rows(g_b, len, rank).t(),
                    xs,
                    Dest::Add(T::one()),
                );
                matmul(
                    &mut grad_b,
                    gs.t(),
                    View::rows(&x_a, len, rank),
                    Dest::Add(s),
                );
            }
            (grad_a, grad_b)
        })
        .collect();
    let (grad_a, grad_b) = sum_in_order(partials, (rank * in_f, out * rank));
    (grad_a, grad_b, g_b)
}

/// Each pair's element-wise sum over the groups, in group order.
fn sum_in_order<T: GemmElem>(
    partials: Vec<(Vec<T>, Vec<T>)>,
    (na, nb): (usize, usize),
) -> (Vec<T>, Vec<T>) {
    let (mut sa, mut sb) = (vec![T::zero(); na], vec![T::zero(); nb]);
    for (pa, pb) in &partials {
        sa.iter_mut().zip(pa).for_each(|(s, &p)| *s += p);
        sb.iter_mut().zip(pb).for_each(|(s, &p)| *s += p);
    }
    (sa, sb)
}

/// The twin in candle's tensor ops.
fn rank_r_grads_ops(
    x: &Tensor,
    g: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let g_b = (g.matmul(b)? * scale)?; // tokens x r
    let grad_a = g_b.t()?.matmul(x)?; // r x in
    let x_a = x.matmul(&a.t()?)?; // tokens x r
    let grad_b = (g.t()?.matmul(&x_a)? * scale)?; // out x r
    Ok((grad_a, grad_b, g_b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{assert_close, wave};

    /// The fused kernel equals the tensor-op twin (f64, 1e-12 relative) with a token count
    /// that neither the groups nor the blocks divide (groups of 71 tokens, each in blocks of
    /// 64 and 7; the last group 60).
    #[test]
    fn the_fused_kernel_equals_its_twin() {
        let (tokens, in_f, out, rank) = (1125, 48, 37, 5);
        let x = wave(&[tokens, in_f], 5);
        let g = wave(&[tokens, out], 7);
        let a = wave(&[rank, in_f], 11);
        let b = wave(&[out, rank], 13);
        let fused = rank_r_grads(&x, &g, &a, &b, 0.75).unwrap();
        let twin = rank_r_grads_ops(&x, &g, &a, &b, 0.75).unwrap();
        assert_close(&fused.0, &twin.0);
        assert_close(&fused.1, &twin.1);
        assert_close(&fused.2, &twin.2);
    }
}
