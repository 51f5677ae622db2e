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

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, InplaceOp1, Layout, Result, Shape, Storage,
    Tensor, WithDType,
};

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

/// A backend's storage with the two kernels candle lacks: the fused masked merge and masking
/// in place. Everything else the ops do goes through candle's own backend kernels.
pub(crate) trait MaskKernels: BackendStorage {
    /// This backend's storage inside `storage`, or an error naming the device it is on.
    fn of(storage: &Storage) -> Result<&Self>;
    /// `ba[i] = M[i] ? w[i] + s·ba[i] : 0` over a fresh contiguous `ba` (out x in).
    fn masked_merge(ba: &mut Self, w: &Self, wl: &Layout, scale: f64, mask: &OpMask) -> Result<()>;
    /// `d[i] = M[i] ? d[i] : 0` over a fresh contiguous `d`.
    fn apply_mask(d: &mut Self, layout: &Layout, mask: &OpMask) -> Result<()>;
}

/// `x·Wᵀ` for `x` of shape (..., in) and `W` of shape (out, in): returns (..., out).
fn x_wt<S: BackendStorage>(x: &S, lx: &Layout, w: &S, lw: &Layout) -> Result<(S, Shape)> {
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
    let y = x.matmul(w, (1, tokens, out, in_x), &lhs, &lw.transpose(0, 1)?)?;
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

/// `out[i] = M[i] ? w[i] + s·ba[i] : 0`, written over `ba`, 64 weights (one mask word) at a
/// time and in parallel over blocks of words.
fn fuse_masked_merge<T: MergeElem>(ba: &mut [T], w: &[T], scale: f64, mask: &BitMask) {
    use rayon::prelude::*;
    const WORDS_PER_TASK: usize = 1024;
    let words = mask.words();
    ba.par_chunks_mut(64 * WORDS_PER_TASK)
        .zip(w.par_chunks(64 * WORDS_PER_TASK))
        .zip(words.par_chunks(WORDS_PER_TASK))
        .for_each(|((d, w), words)| {
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
        });
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
    let (out, rank) = b.1.shape().dims2()?;
    let (_, in_f) = a.1.shape().dims2()?;
    let mut ba = b.0.matmul(a.0, (1, out, in_f, rank), b.1, a.1)?;
    let (ws, wl) = weight.storage_and_layout();
    S::masked_merge(&mut ba, S::of(&ws)?, wl, scale, mask)?;
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

    /// LoRA's adapter gradients: `(s·(g·B)ᵀ·x, s·gᵀ·(x·Aᵀ))`, plus `s·g·B` for reuse.
    fn rank_r_grads(
        &self,
        x: &Tensor,
        g: &Tensor,
        a: &Tensor,
        b: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let g_b = (g.matmul(b)? * self.scale)?; // tokens x r
        let grad_a = g_b.t()?.matmul(x)?; // r x in
        let x_a = x.matmul(&a.t()?)?; // tokens x r
        let grad_b = (g.t()?.matmul(&x_a)? * self.scale)?; // out x r
        Ok((grad_a, grad_b, g_b))
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
                let (grad_a, grad_b, g_b) = self.rank_r_grads(&x2, &g, &a, &b)?;
                let grad_x = need_x
                    .then(|| g.matmul(&self.weight)? + g_b.matmul(&a)?)
                    .transpose()?;
                (grad_x, grad_a, grad_b)
            }
            LowRankKind::Lors { mask, grad } => {
                let grad_x = need_x
                    .then(|| g.matmul(&self.merged_weight(&a, &b, mask)?))
                    .transpose()?;
                let (grad_a, grad_b) = match grad {
                    GradMode::Approx => {
                        let (ga, gb, _) = self.rank_r_grads(&x2, &g, &a, &b)?;
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

/// Dtypes the ops compute in on `device`: the CPU has no bf16 matmul in candle, and the CUDA
/// mask kernels are built for f32 and bf16.
pub(crate) fn op_supports(dtype: DType, device: &Device) -> bool {
    if device.is_cpu() {
        matches!(dtype, DType::F16 | DType::F32 | DType::F64)
    } else {
        matches!(dtype, DType::F32 | DType::BF16)
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
