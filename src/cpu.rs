//! CPU building blocks of the fused kernels: matrix products over slices through the `gemm`
//! crate candle uses, and vectors written in parallel without being zeroed first.
//!
//! The kernels (attention, the LoRS merge, the adapter gradients) split their work into
//! independent pieces and run the pieces in parallel themselves, so each piece's product
//! ([`matmul`]) stays on its thread and results do not depend on the number of threads. The
//! layers' large products ([`product`], [`mm`]) split across all threads inside gemm, which
//! keeps each entry's sum in the same order whatever the thread count.
//!
//! Outputs are not zeroed before they are written: candle's matmul, and `vec![0; n]` on a
//! reused heap block, clear every output on one thread first (measured: about 90 ms of a
//! 2.7 s training step of the 1024-wide bench model, all on the main thread).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Layout, Storage, Tensor, WithDType};
use gemm::{gemm, Parallelism};
use num_traits::Float;
use rayon::prelude::*;

/// Element types of the products (f32 and f64).
pub(crate) trait GemmElem: Float + WithDType + Send + Sync + 'static {
    /// The values of a CPU storage of this type.
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
}

impl GemmElem for f32 {
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
}

impl GemmElem for f64 {
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
}

/// Run `f` on the values of `tensors` (made contiguous), all of type `T` on the CPU.
pub(crate) fn with_values<T: GemmElem, R>(
    tensors: &[&Tensor],
    f: impl FnOnce(&[&[T]]) -> R,
) -> candle_core::Result<R> {
    let owned: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<_>>()?;
    let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let values = guards
        .iter()
        .map(|(s, l)| match &**s {
            Storage::Cpu(s) => {
                let (a, b) = l.contiguous_offsets()?;
                Some(&T::slice(s)?[a..b])
            }
            _ => None,
        })
        .collect::<Option<Vec<&[T]>>>()
        .ok_or_else(|| {
            candle_core::Error::Msg(format!("CPU kernel: {:?} CPU tensors", T::DTYPE))
        })?;
    Ok(f(&values))
}

/// A matrix inside a slice: element `(i, j)` at `i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> View<'a, T> {
    /// `rows × cols` stored row after row from `data`'s start.
    pub fn rows(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (the same storage).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether every element lies inside `data`.
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// How a product lands in its destination.
#[derive(Clone, Copy)]
pub(crate) enum Dest<T> {
    /// `dst = s·a·b`.
    Set(T),
    /// `dst += s·a·b`.
    Add(T),
}

/// `dst (=|+=) s·a·b`, `dst` row-major with `a.rows × b.cols` entries from its start; on
/// this thread only.
pub(crate) fn matmul<T: GemmElem>(dst: &mut [T], a: View<T>, b: View<T>, into: Dest<T>) {
    assert!(a.rows * b.cols <= dst.len());
    let (accumulate, scale) = match into {
        Dest::Set(s) => (false, s),
        Dest::Add(s) => (true, s),
    };
    // SAFETY: `dst` holds the `a.rows × b.cols` entries written, all initialised.
    unsafe { gemm_into(dst.as_mut_ptr(), a, b, accumulate, scale, Parallelism::None) }
}

/// `dst = s·a·b` over uninitialised `dst` (exactly `a.rows × b.cols` entries), on this
/// thread; returns `dst`, now written.
pub(crate) fn matmul_uninit<'d, T: GemmElem>(
    dst: &'d mut [MaybeUninit<T>],
    a: View<T>,
    b: View<T>,
    scale: T,
) -> &'d mut [T] {
    assert_eq!(a.rows * b.cols, dst.len());
    let ptr = dst.as_mut_ptr().cast::<T>();
    // SAFETY: gemm writes every one of the `dst.len()` entries without reading them (no
    // accumulation), so the slice is initialised afterwards.
    unsafe {
        gemm_into(ptr, a, b, false, scale, Parallelism::None);
        std::slice::from_raw_parts_mut(ptr, dst.len())
    }
}

/// `a·b` as a fresh row-major vector, the product split across all threads.
pub(crate) fn product<T: GemmElem>(a: View<T>, b: View<T>) -> Vec<T> {
    let n = a.rows * b.cols;
    let mut out = Vec::with_capacity(n);
    let threads = Parallelism::Rayon(rayon::current_num_threads());
    // SAFETY: the capacity holds the `n` entries gemm writes, all of them (no accumulation),
    // so the first `n` are initialised when the length is set.
    unsafe {
        gemm_into(out.as_mut_ptr(), a, b, false, T::one(), threads);
        out.set_len(n);
    }
    out
}

/// `dst (=|+=) s·a·b` through gemm.
///
/// # Safety
/// `dst` must be valid for writes of `a.rows × b.cols` entries (row stride `b.cols`), and
/// initialised when `accumulate`.
unsafe fn gemm_into<T: GemmElem>(
    dst: *mut T,
    a: View<T>,
    b: View<T>,
    accumulate: bool,
    scale: T,
    parallelism: Parallelism,
) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert!(a.cols == b.rows && a.fits() && b.fits());
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the assertion keeps every element gemm reads in `a.data` and `b.data`; the
    // caller vouches for `dst`; gemm takes f32 and f64.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The matrix a 2-D layout describes in `data`, if it is one (any strides).
pub(crate) fn view<'a, T>(data: &'a [T], layout: &Layout) -> Option<View<'a, T>> {
    let (rows, cols) = layout.shape().dims2().ok()?;
    let &[rs, cs] = layout.stride() else {
        return None;
    };
    let view = View {
        data: data.get(layout.start_offset()..)?,
        rows,
        cols,
        rs,
        cs,
    };
    view.fits().then_some(view)
}

/// `a·b` of two 2-D CPU storages of one float dtype with [`product`], or `None` for other
/// dtypes, layouts or mismatched shapes (which the caller's fallback reports).
pub(crate) fn storage_product(
    a: (&CpuStorage, &Layout),
    b: (&CpuStorage, &Layout),
) -> Option<CpuStorage> {
    fn both<'a, T: GemmElem>(x: &'a [T], y: &'a [T], a: &Layout, b: &Layout) -> Option<Vec<T>> {
        let (x, y) = (view(x, a)?, view(y, b)?);
        (x.cols == y.rows).then(|| product(x, y))
    }
    match (a.0, b.0) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => both(x, y, a.1, b.1).map(CpuStorage::F32),
        (CpuStorage::F64(x), CpuStorage::F64(y)) => both(x, y, a.1, b.1).map(CpuStorage::F64),
        _ => None,
    }
}

/// `a·b` of 2-D tensors (any strides): f32/f64 CPU tensors through [`product`], others
/// through candle's matmul.
pub(crate) fn mm(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let shape = (a.dim(0)?, b.dim(1)?);
    let out = {
        let (sa, la) = a.storage_and_layout();
        let (sb, lb) = b.storage_and_layout();
        match (&*sa, &*sb) {
            (Storage::Cpu(x), Storage::Cpu(y)) => storage_product((x, la), (y, lb)),
            _ => None,
        }
    };
    Ok(match out {
        Some(CpuStorage::F32(v)) => Tensor::from_vec(v, shape, a.device())?,
        Some(CpuStorage::F64(v)) => Tensor::from_vec(v, shape, a.device())?,
        _ => a.matmul(b)?,
    })
}

/// `n` values written chunk by chunk (`chunk` values each, the last one shorter) by
/// `fill(chunk index, chunk)` in parallel, without zeroing them first.
///
/// # Safety
/// `fill` must write every element of each chunk it is given.
pub(crate) unsafe fn par_filled<T: Send>(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    // SAFETY: the caller's promise, for the one output.
    let [out] = unsafe { par_filled_n(n, chunk, |i, [c]| fill(i, c)) };
    out
}

/// Like [`par_filled`], for `J` vectors written together: `fill(chunk index, chunks)` gets
/// the same chunk of each.
///
/// # Safety
/// `fill` must write every element of each chunk it is given.
pub(crate) unsafe fn par_filled_n<T: Send, const J: usize>(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, [&mut [MaybeUninit<T>]; J]) + Sync,
) -> [Vec<T>; J] {
    let chunk = chunk.max(1);
    let mut outs: [Vec<T>; J] = std::array::from_fn(|_| Vec::with_capacity(n));
    {
        let mut chunks = outs
            .each_mut()
            .map(|out| out.spare_capacity_mut()[..n].chunks_mut(chunk));
        let pieces: Vec<[&mut [MaybeUninit<T>]; J]> = (0..n.div_ceil(chunk))
            .map(|_| chunks.each_mut().map(|c| c.next().expect("n/chunk chunks")))
            .collect();
        pieces
            .into_par_iter()
            .enumerate()
            .for_each(|(i, piece)| fill(i, piece));
    }
    for out in &mut outs {
        // SAFETY: the caller's `fill` wrote all `n` entries of each output.
        unsafe { out.set_len(n) };
    }
    outs
}

/// Values per piece of an element-wise kernel: 64 KiB of f32, so a piece's inputs and
/// outputs stay in L2, and the pieces are many enough to keep the threads balanced.
pub(crate) const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// `f` run as code compiled for the widest vector instructions this CPU has (AVX2 and FMA,
/// or AVX-512; detected at run time by `pulp`). The crate is built for baseline x86-64,
/// where the element-wise loops would use 128-bit SSE2; a loop called through here is
/// vectorised 256 or 512 bits wide. The results are the same bits: rustc never fuses a
/// multiply and an add, nor reorders arithmetic, on either path.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the schoolbook product, with strided (transposed) operands, both modes.
    #[test]
    fn products_match_the_definition() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.91).cos()).collect();
        // b is stored n × k; use its transpose (k × n).
        let bt = View::rows(&b, n, k).t();
        let mut dst = vec![1.0; m * n];
        matmul(&mut dst, View::rows(&a, m, k), bt, Dest::Add(2.0));
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum();
                assert!((dst[i * n + j] - (1.0 + 2.0 * dot)).abs() < 1e-12);
            }
        }
        matmul(&mut dst, View::rows(&a, m, k), bt, Dest::Set(-1.0));
        let dot: f64 = (0..k).map(|p| a[p] * b[p]).sum();
        assert!((dst[0] + dot).abs() < 1e-12);
    }
}
