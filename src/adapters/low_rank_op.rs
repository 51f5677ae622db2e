//! The custom autograd op behind `lora` and `lors`.
//!
//! Candle's autograd keeps every tensor a graph node references until backward, and computes a
//! gradient for both sides of every matmul (a frozen weight included). This op is a single
//! graph node whose arguments are only `x`, `A` and `B`: the frozen weight and the bit-packed
//! mask live in the op itself, so nothing of size out x in, and no activation other than `x`,
//! survives from forward to backward.
//!
//! - `lora`: `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ`; backward recomputes the rank-r product `x·Aᵀ`.
//! - `lors` (weight recompute): `y = x·W'ᵀ` with `W' = (W + s·B·A) ⊙ M` built in forward,
//!   dropped, and rebuilt in backward for `grad_x = grad_y·W'`.
//!   - `approx` (graph rearrangement): `grad_A = s·(grad_y·B)ᵀ·x`, `grad_B = s·grad_yᵀ·(x·Aᵀ)`,
//!     exactly LoRA's adapter gradients, through the rank-r path only.
//!   - `exact`: `G = (grad_yᵀ·x) ⊙ M`, `grad_A = s·Bᵀ·G`, `grad_B = s·G·Aᵀ`; `G` exists only
//!     inside this backward.

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, Device, InplaceOp1, Layout, Result, Shape, Storage, Tensor,
    WithDType,
};

use super::rank_r_grads::rank_r_grads;
use crate::cpu::{matmul_uninit, mm, par_filled, simd, GemmElem, View};
use crate::sparsity::BitMask;

/// Which gradient `lors` computes for the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradMode {
    /// The paper's graph rearrangement: LoRA's adapter gradients, rank-r cost.
    Approx,
    /// The gradient of the masked forward, `G = (grad_yᵀ·x) ⊙ M`, formed transiently.
    Exact,
}

/// A layer's mask as the kernels read it: the host bits, and on a GPU the same bits packed
/// into a u32 tensor on the device (never expanded to one value per weight).
#[derive(Debug, Clone)]
pub(crate) struct OpMask {
    pub bits: Arc<BitMask>,
    /// [`BitMask::to_packed_tensor`] on the weight's device; `None` on the CPU.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub packed: Option<Tensor>,
}

impl OpMask {
    /// The mask for a weight on `device`.
    pub fn new(bits: Arc<BitMask>, device: &Device) -> crate::error::Result<Self> {
        let packed = if device.is_cpu() {
            None
        } else {
            Some(bits.to_packed_tensor(device)?)
        };
        Ok(Self { bits, packed })
    }
}

/// What the op computes besides the frozen product.
#[derive(Debug, Clone)]
pub(crate) enum LowRankKind {
    /// Plain LoRA: an unmasked rank-r side path.
    Lora,
    /// LoRS: the adapter merged through the mask.
    Lors { mask: OpMask, grad: GradMode },
}

/// `y = adapted_linear(x; W, A, B)` for `lora` and `lors`, applied with
/// `x.apply_op3(a, b, op)` (no bias: the caller adds it).
#[derive(Debug, Clone)]
pub(crate) struct LowRankOp {
    /// Frozen base weight, out x in.
    pub weight: Tensor,
    /// Adapter scale `s`.
    pub scale: f64,
    pub kind: LowRankKind,
}

pub(crate) fn msg(s: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(s.to_string())
}

/// A backend's storage with the kernels the ops need beyond candle's: the masked merge and
/// masking in place, plus the product and the whole merge `(W + s·B·A) ⊙ M`, which default
/// to candle's matmul and which the CPU replaces with its own (`crate::cpu`: outputs never
/// zeroed first, the merge in one pass).
pub(crate) trait MaskKernels: BackendStorage {
    /// This backend's storage inside `storage`, or an error naming the device it is on.
    fn of(storage: &Storage) -> Result<&Self>;
    /// `ba[i] = M[i] ? w[i] + s·ba[i] : 0` over a fresh contiguous `ba` (out x in).
    fn masked_merge(ba: &mut Self, w: &Self, wl: &Layout, scale: f64, mask: &OpMask) -> Result<()>;
    /// `a·b` for 2-D layouts, `bmnk` = (1, m, n, k): candle's matmul by default.
    fn product(
        a: (&Self, &Layout),
        b: (&Self, &Layout),
        bmnk: (usize, usize, usize, usize),
    ) -> Result<Self> {
        a.0.matmul(b.0, bmnk, a.1, b.1)
    }
    /// `W' = (W + s·B·A) ⊙ M`, a fresh contiguous out x in buffer: by default the product
    /// `B·A`, then the masked merge over it.
    fn merged(
        w: (&Self, &Layout),
        a: (&Self, &Layout),
        b: (&Self, &Layout),
        scale: f64,
        mask: &OpMask,
    ) -> Result<Self> {
        merge_over_product(w, a, b, scale, mask)
    }
    /// `d[i] = M[i] ? d[i] : 0` over a fresh contiguous `d`.
    fn apply_mask(d: &mut Self, layout: &Layout, mask: &OpMask) -> Result<()>;
}

/// `x·Wᵀ` for `x` of shape (..., in) and `W` of shape (out, in): returns (..., out).
fn x_wt<S: MaskKernels>(x: &S, lx: &Layout, w: &S, lw: &Layout) -> Result<(S, Shape)> {
    if !lx.is_contiguous() {
        return Err(msg("lors op: input must be contiguous"));
    }
    let (out, in_w) = lw.shape().dims2()?;
    let in_x = *lx
        .dims()
        .last()
        .ok_or_else(|| msg("lors op: scalar input"))?;
    if in_x != in_w {
        return Err(msg(format!(
            "lors op: input has {in_x} features, weight expects {in_w}"
        )));
    }
    let tokens = lx.shape().elem_count() / in_x.max(1);
    let lhs = Layout::contiguous_with_offset((tokens, in_x), lx.start_offset());
    let y = S::product((x, &lhs), (w, &lw.transpose(0, 1)?), (1, tokens, out, in_x))?;
    let mut dims = lx.dims().to_vec();
    *dims.last_mut().expect("non-empty dims") = out;
    Ok((y, Shape::from(dims)))
}

/// `x·Wᵀ` with the frozen `weight` read from its tensor.
fn frozen_product<S: MaskKernels>(weight: &Tensor, x: &S, lx: &Layout) -> Result<(S, Shape)> {
    let (ws, wl) = weight.storage_and_layout();
    x_wt(x, lx, S::of(&ws)?, wl)
}

/// Element types the CPU's fused merge handles natively.
trait MergeElem: WithDType {
    /// `w + s·d` in the element's own arithmetic (f16 through f32).
    fn merge(w: Self, d: Self, s: f64) -> Self;
}

impl MergeElem for f32 {
    #[inline]
    fn merge(w: Self, d: Self, s: f64) -> Self {
        w + s as f32 * d
    }
}

impl MergeElem for f64 {
    #[inline]
    fn merge(w: Self, d: Self, s: f64) -> Self {
        w + s * d
    }
}

impl MergeElem for half::f16 {
    #[inline]
    fn merge(w: Self, d: Self, s: f64) -> Self {
        half::f16::from_f32(w.to_f32() + s as f32 * d.to_f32())
    }
}

/// `out[i] = M[i] ? w[i] + s·ba[i] : 0`, written over `ba`, in parallel over blocks of mask
/// words.
fn fuse_masked_merge<T: MergeElem>(ba: &mut [T], w: &[T], scale: f64, mask: &BitMask) {
    use rayon::prelude::*;
    const WORDS_PER_TASK: usize = 1024;
    ba.par_chunks_mut(64 * WORDS_PER_TASK)
        .zip(w.par_chunks(64 * WORDS_PER_TASK))
        .zip(mask.words().par_chunks(WORDS_PER_TASK))
        .for_each(|((d, w), words)| simd(|| merge_words(d, w, words, scale)));
}

/// `d[i] = M[i] ? w[i] + s·d[i] : 0` on one thread, 64 weights (one mask word) at a time;
/// `d` starts at a word boundary of the mask.
fn merge_words<T: MergeElem>(d: &mut [T], w: &[T], words: &[u64], scale: f64) {
    for ((d, w), &word) in d.chunks_mut(64).zip(w.chunks(64)).zip(words) {
        if word == u64::MAX && d.len() == 64 {
            for (d, &w) in d.iter_mut().zip(w) {
                *d = T::merge(w, *d, scale);
            }
        } else if word == 0 {
            d.fill(T::zero());
        } else {
            // Branch-free: a random mask makes `if bit` a coin flip per weight.
            for (bit, (d, &w)) in d.iter_mut().zip(w).enumerate() {
                let merged = T::merge(w, *d, scale);
                *d = if (word >> bit) & 1 == 1 {
                    merged
                } else {
                    T::zero()
                };
            }
        }
    }
}

/// Weights per block of [`fused_merged`]: 512 KiB of f32, a core's L2 cache here, which the
/// block's `B·A` stays in until the merge reads it back; larger blocks also pack `A` fewer
/// times (a 2816 x 1024 merge at rank 16, 2 threads: 2.3-3.2 ms, against 3.4-3.8 ms with
/// blocks of 128 KiB).
const MERGE_BLOCK_WEIGHTS: usize = 1 << 17;

/// `(W + s·B·A) ⊙ M` (out x in) in one pass over `W`: blocks of rows in parallel, each
/// block's rows of `B·A` computed on its thread into the output and merged there while they
/// are in cache. Blocks start on mask-word boundaries. The output is never zeroed or read
/// back from memory between the product and the merge.
fn fused_merged<T: MergeElem + GemmElem>(
    w: &[T],
    a: &[T],
    b: &[T],
    (out, in_f, rank): (usize, usize, usize),
    scale: f64,
    mask: &BitMask,
) -> Vec<T> {
    let align = 64 / gcd(in_f, 64);
    let rows = (MERGE_BLOCK_WEIGHTS / in_f.max(1)).max(1).div_ceil(align) * align;
    let words = mask.words();
    let (a, b) = (View::rows(a, rank, in_f), View::rows(b, out, rank));
    let fill = |i: usize, d: &mut [MaybeUninit<T>]| {
        let (first, n) = (i * rows, d.len() / in_f);
        let b = View {
            data: &b.data[first * rank..],
            rows: n,
            ..b
        };
        let d = matmul_uninit(d, b, a, T::one());
        let at = first * in_f;
        simd(|| merge_words(d, &w[at..at + d.len()], &words[at / 64..], scale));
    };
    // SAFETY: `matmul_uninit` writes each chunk whole (its rows of `B·A`).
    unsafe { par_filled(out * in_f, rows * in_f, fill) }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl MaskKernels for CpuStorage {
    fn of(storage: &Storage) -> Result<&Self> {
        match storage {
            Storage::Cpu(s) => Ok(s),
            other => Err(msg(format!(
                "lors op: a CPU tensor mixed with one on {:?}",
                other.device().location()
            ))),
        }
    }

    fn masked_merge(ba: &mut Self, w: &Self, wl: &Layout, scale: f64, mask: &OpMask) -> Result<()> {
        if !wl.is_contiguous() {
            return Err(msg("lors op: frozen weight must be contiguous"));
        }
        let off = wl.start_offset();
        let n = wl.shape().elem_count();
        let bits = &mask.bits;
        match (ba, w) {
            (CpuStorage::F32(d), CpuStorage::F32(w)) => {
                fuse_masked_merge(d, &w[off..off + n], scale, bits)
            }
            (CpuStorage::F64(d), CpuStorage::F64(w)) => {
                fuse_masked_merge(d, &w[off..off + n], scale, bits)
            }
            (CpuStorage::F16(d), CpuStorage::F16(w)) => {
                fuse_masked_merge(d, &w[off..off + n], scale, bits)
            }
            (d, w) => {
                return Err(msg(format!(
                    "lors op: adapter dtype {:?} and weight dtype {:?} must match and be f16, \
                     f32 or f64 on the CPU",
                    d.dtype(),
                    w.dtype()
                )))
            }
        }
        Ok(())
    }

    fn product(
        a: (&Self, &Layout),
        b: (&Self, &Layout),
        bmnk: (usize, usize, usize, usize),
    ) -> Result<Self> {
        match crate::cpu::storage_product(a, b) {
            Some(p) => Ok(p),
            None => a.0.matmul(b.0, bmnk, a.1, b.1),
        }
    }

    fn merged(
        w: (&Self, &Layout),
        a: (&Self, &Layout),
        b: (&Self, &Layout),
        scale: f64,
        mask: &OpMask,
    ) -> Result<Self> {
        let dims @ (out, in_f, rank) = merge_dims(a.1, b.1)?;
        let bits = &mask.bits;
        let parts = (
            w.1.contiguous_offsets(),
            a.1.contiguous_offsets(),
            b.1.contiguous_offsets(),
        );
        let shapes_agree = w.1.dims() == [out, in_f] && a.1.dims() == [rank, in_f];
        let (Some((w0, w1)), Some((a0, a1)), Some((b0, b1)), true) =
            (parts.0, parts.1, parts.2, shapes_agree)
        else {
            // Strided or mismatched inputs: candle's product (which reports bad shapes).
            return merge_over_product(w, a, b, scale, mask);
        };
        Ok(match (w.0, a.0, b.0) {
            (CpuStorage::F32(w), CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(
                fused_merged(&w[w0..w1], &a[a0..a1], &b[b0..b1], dims, scale, bits),
            ),
            (CpuStorage::F64(w), CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(
                fused_merged(&w[w0..w1], &a[a0..a1], &b[b0..b1], dims, scale, bits),
            ),
            _ => return merge_over_product(w, a, b, scale, mask),
        })
    }

    fn apply_mask(d: &mut Self, layout: &Layout, mask: &OpMask) -> Result<()> {
        if !layout.is_contiguous() || layout.start_offset() != 0 {
            return Err(msg("apply-mask needs a fresh contiguous tensor"));
        }
        match d {
            CpuStorage::F32(d) => mask.bits.apply(d),
            CpuStorage::F64(d) => mask.bits.apply(d),
            CpuStorage::F16(d) => mask.bits.apply(d),
            CpuStorage::BF16(d) => mask.bits.apply(d),
            other => return Err(msg(format!("apply-mask: dtype {:?}", other.dtype()))),
        }
        Ok(())
    }
}

/// `W' = (W + s·B·A) ⊙ M`, a fresh contiguous out x in buffer.
fn merged_weight_storage<S: MaskKernels>(
    weight: &Tensor,
    a: (&S, &Layout),
    b: (&S, &Layout),
    scale: f64,
    mask: &OpMask,
) -> Result<S> {
    let (ws, wl) = weight.storage_and_layout();
    S::merged((S::of(&ws)?, wl), a, b, scale, mask)
}

/// `(out, in, rank)` of a merge from the layouts of `A` (rank x in) and `B` (out x rank).
fn merge_dims(a: &Layout, b: &Layout) -> Result<(usize, usize, usize)> {
    let (out, rank) = b.shape().dims2()?;
    let (_, in_f) = a.shape().dims2()?;
    Ok((out, in_f, rank))
}

/// [`MaskKernels::merged`] as the product `B·A` on the backend, then the masked merge.
fn merge_over_product<S: MaskKernels>(
    w: (&S, &Layout),
    a: (&S, &Layout),
    b: (&S, &Layout),
    scale: f64,
    mask: &OpMask,
) -> Result<S> {
    let (out, in_f, rank) = merge_dims(a.1, b.1)?;
    let mut ba = b.0.matmul(a.0, (1, out, in_f, rank), b.1, a.1)?;
    S::masked_merge(&mut ba, w.0, w.1, scale, mask)?;
    Ok(ba)
}

/// `(A, B) -> (W + s·B·A) ⊙ M`, applied without a graph node (`apply_op2_no_bwd`).
struct MergedWeightOp<'a> {
    weight: &'a Tensor,
    scale: f64,
    mask: &'a OpMask,
}

impl CustomOp2 for MergedWeightOp<'_> {
    fn name(&self) -> &'static str {
        "lors-merged-weight"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let w = merged_weight_storage(self.weight, (a, la), (b, lb), self.scale, self.mask)?;
        Ok((w, self.weight.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        la: &Layout,
        b: &candle_core::CudaStorage,
        lb: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let w = merged_weight_storage(self.weight, (a, la), (b, lb), self.scale, self.mask)?;
        Ok((w, self.weight.shape().clone()))
    }
}

/// Zero the pruned entries of a contiguous tensor in place.
struct ApplyMask<'a>(&'a OpMask);

impl InplaceOp1 for ApplyMask<'_> {
    fn name(&self) -> &'static str {
        "apply-mask"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        CpuStorage::apply_mask(storage, layout, self.0)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &mut candle_core::CudaStorage, layout: &Layout) -> Result<()> {
        candle_core::CudaStorage::apply_mask(storage, layout, self.0)
    }
}

impl LowRankOp {
    /// Rebuild `W' = (W + s·B·A) ⊙ M` as a detached tensor (used in backward and by tests).
    pub(crate) fn merged_weight(&self, a: &Tensor, b: &Tensor, mask: &OpMask) -> Result<Tensor> {
        a.apply_op2_no_bwd(
            b,
            &MergedWeightOp {
                weight: &self.weight,
                scale: self.scale,
                mask,
            },
        )
    }

    /// The forward on any backend with the mask kernels.
    fn forward<S: MaskKernels>(
        &self,
        x: (&S, &Layout),
        a: (&S, &Layout),
        b: (&S, &Layout),
    ) -> Result<(S, Shape)> {
        match &self.kind {
            LowRankKind::Lora => {
                let (base, shape) = frozen_product(&self.weight, x.0, x.1)?;
                let (x_a, x_a_shape) = x_wt(x.0, x.1, a.0, a.1)?; // tokens x r
                let x_a = x_a.affine(&Layout::contiguous(&x_a_shape), self.scale, 0.)?;
                let (side, _) = x_wt(&x_a, &Layout::contiguous(&x_a_shape), b.0, b.1)?;
                let l = Layout::contiguous(&shape);
                let y = base.binary_impl::<candle_core::op::Add>(&side, &l, &l)?;
                Ok((y, shape))
            }
            LowRankKind::Lors { mask, .. } => {
                let merged = merged_weight_storage(&self.weight, a, b, self.scale, mask)?;
                x_wt(x.0, x.1, &merged, &Layout::contiguous(self.weight.shape()))
            }
        }
    }

    /// Gradients `(grad_x if need_x, grad_A, grad_B)` for the output gradient `grad_y` of
    /// input `x` (..., in), in the compute dtype: the op's backward, also called directly by
    /// the decoder block's hand-written backward.
    pub(crate) fn backward(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        grad_y: &Tensor,
        need_x: bool,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let (out, in_f) = self.weight.dims2()?;
        let tokens = x.elem_count() / in_f;
        let (a, b) = (a.detach(), b.detach());
        let x2 = x.detach().reshape((tokens, in_f))?;
        let g = grad_y.reshape((tokens, out))?;
        let (grad_x, grad_a, grad_b) = match &self.kind {
            LowRankKind::Lora => {
                let (grad_a, grad_b, g_b) = rank_r_grads(&x2, &g, &a, &b, self.scale)?;
                let grad_x = need_x
                    .then(|| mm(&g, &self.weight)? + g_b.matmul(&a)?)
                    .transpose()?;
                (grad_x, grad_a, grad_b)
            }
            LowRankKind::Lors { mask, grad } => {
                let grad_x = need_x
                    .then(|| mm(&g, &self.merged_weight(&a, &b, mask)?))
                    .transpose()?;
                let (grad_a, grad_b) = match grad {
                    GradMode::Approx => {
                        let (ga, gb, _) = rank_r_grads(&x2, &g, &a, &b, self.scale)?;
                        (ga, gb)
                    }
                    GradMode::Exact => {
                        let dense = g.t()?.matmul(&x2)?; // out x in, this backward only
                        dense.inplace_op1(&ApplyMask(mask))?;
                        let grad_a = (b.t()?.matmul(&dense)? * self.scale)?;
                        let grad_b = (dense.matmul(&a.t()?)? * self.scale)?;
                        (grad_a, grad_b)
                    }
                };
                (grad_x, grad_a, grad_b)
            }
        };
        let grad_x = grad_x.map(|gx| gx.reshape(x.shape())).transpose()?;
        Ok((grad_x, grad_a, grad_b))
    }
}

impl CustomOp3 for LowRankOp {
    fn name(&self) -> &'static str {
        match self.kind {
            LowRankKind::Lora => "lora",
            LowRankKind::Lors { .. } => "lors",
        }
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((x, lx), (a, la), (b, lb))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        a: &candle_core::CudaStorage,
        la: &Layout,
        b: &candle_core::CudaStorage,
        lb: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.forward((x, lx), (a, la), (b, lb))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_a, grad_b) = self.backward(x, a, b, grad_y, x.track_op())?;
        Ok((grad_x, Some(grad_a), Some(grad_b)))
    }
}

/// `y = x·Wᵀ` for a frozen `W`: one graph node whose backward gives `grad_x = grad_y·W` only
/// (candle's matmul would also form the out x in gradient of `W`).
#[derive(Debug, Clone)]
pub(crate) struct FrozenLinearOp {
    pub weight: Tensor,
}

impl candle_core::CustomOp1 for FrozenLinearOp {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> Result<(CpuStorage, Shape)> {
        frozen_product(&self.weight, x, lx)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        frozen_product(&self.weight, x, lx)
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let (out, in_f) = self.weight.dims2()?;
        let g = grad_y.reshape((grad_y.elem_count() / out, out))?;
        debug_assert_eq!(x.dims().last(), Some(&in_f));
        Ok(Some(g.matmul(&self.weight)?.reshape(x.shape())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass CPU merge equals the product-then-merge form exactly, on shapes whose
    /// rows do not start on mask words, in one block and in several (1100 x 172: blocks of
    /// 768 rows).
    #[test]
    fn the_fused_merge_equals_product_then_merge() {
        for (out, in_f, rank) in [(37, 172, 3), (300, 130, 5), (5, 64, 2), (1100, 172, 3)] {
            let value = |i: usize, f: f64| ((i as f64 * f).sin() * 0.5) as f32;
            let w: Vec<f32> = (0..out * in_f).map(|i| value(i, 0.37)).collect();
            let a: Vec<f32> = (0..rank * in_f).map(|i| value(i, 0.71)).collect();
            let b: Vec<f32> = (0..out * rank).map(|i| value(i, 1.13)).collect();
            let mask = Arc::new(BitMask::from_fn(out, in_f, |i| (i * 7 + i / 5) % 3 != 0));
            let op_mask = OpMask::new(mask.clone(), &Device::Cpu).unwrap();
            let storage = |v: &[f32]| CpuStorage::F32(v.to_vec());
            let (ws, as_, bs) = (storage(&w), storage(&a), storage(&b));
            let (wl, al, bl) = (
                Layout::contiguous((out, in_f)),
                Layout::contiguous((rank, in_f)),
                Layout::contiguous((out, rank)),
            );
            let reference =
                merge_over_product((&ws, &wl), (&as_, &al), (&bs, &bl), 0.75, &op_mask).unwrap();
            let fused = fused_merged(&w, &a, &b, (out, in_f, rank), 0.75, &mask);
            let CpuStorage::F32(reference) = reference else {
                panic!("f32 in, f32 out")
            };
            assert_eq!(fused, reference, "{out} x {in_f}, rank {rank}");
            assert!(fused
                .iter()
                .enumerate()
                .all(|(i, &v)| mask.is_kept(i) || v == 0.0));
        }
    }
}
