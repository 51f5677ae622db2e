//! The CUDA side of the mask kernels: the fused masked merge `W' = M ? W + s·BA : 0` and
//! masking in place, reading the mask bit-packed (32 weights per u32) on the device.
//!
//! The source is compiled once per process with NVRTC (no toolkit needed where the binary
//! runs, only `libnvrtc`), for f32 and bf16. bf16 is handled as raw 16-bit words converted by
//! hand (round to nearest even), so the kernels need no CUDA header.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Storage};

use super::low_rank_op::{msg, MaskKernels, OpMask};

const SOURCE: &str = r#"
typedef unsigned short bf16_t;
typedef unsigned long long u64;

__device__ __forceinline__ float bf16_load(bf16_t h) { return __uint_as_float(((unsigned int)h) << 16); }
__device__ __forceinline__ bf16_t bf16_store(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}
__device__ __forceinline__ float f32_load(float v) { return v; }
__device__ __forceinline__ float f32_store(float v) { return v; }
__device__ __forceinline__ bool kept(const unsigned int* m, u64 i) { return (m[i >> 5] >> (i & 31)) & 1u; }

#define MASK_KERNELS(NAME, T)                                                                  \
extern "C" __global__ void masked_merge_##NAME(const T* w, T* d, const unsigned int* m,       \
                                              float s, u64 n) {                              \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n;                           \
         i += (u64)gridDim.x * blockDim.x) {                                                  \
        d[i] = kept(m, i) ? NAME##_store(NAME##_load(w[i]) + s * NAME##_load(d[i]))           \
                          : NAME##_store(0.0f);                                               \
    }                                                                                         \
}                                                                                             \
extern "C" __global__ void apply_mask_##NAME(T* d, const unsigned int* m, u64 n) {            \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n;                           \
         i += (u64)gridDim.x * blockDim.x) {                                                  \
        if (!kept(m, i)) d[i] = NAME##_store(0.0f);                                           \
    }                                                                                         \
}

MASK_KERNELS(f32, float)
MASK_KERNELS(bf16, bf16_t)
"#;

const MODULE: &str = "lors_mask";

/// The PTX of [`SOURCE`], compiled on first use.
fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE)
            .map(|p| p.to_src())
            .map_err(|e| format!("compiling the mask kernels with NVRTC failed: {e}"))
    })
    .as_deref()
    .map_err(msg)
}

/// Grid for `n` elements: 256 threads a block, grid-stride beyond 65535 blocks.
fn launch_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The packed words of `mask` on the device, checked to cover `n` weights.
fn packed(mask: &OpMask, n: usize) -> Result<&candle_core::Tensor> {
    let t = mask
        .packed
        .as_ref()
        .ok_or_else(|| msg("lors op: the mask was not uploaded to the GPU"))?;
    if t.elem_count() * 32 < n {
        return Err(msg(format!(
            "lors op: mask covers {} weights, the tensor has {n}",
            t.elem_count() * 32
        )));
    }
    Ok(t)
}

/// The device words of a packed mask tensor.
fn words(storage: &Storage) -> Result<&CudaSlice<u32>> {
    match storage {
        Storage::Cuda(m) => m.as_cuda_slice::<u32>(),
        _ => Err(msg("lors op: the mask is not on the weight's GPU")),
    }
}

impl MaskKernels for CudaStorage {
    fn of(storage: &Storage) -> Result<&Self> {
        match storage {
            Storage::Cuda(s) => Ok(s),
            other => Err(msg(format!(
                "lors op: a CUDA tensor mixed with one on {:?}",
                other.device().location()
            ))),
        }
    }

    fn masked_merge(ba: &mut Self, w: &Self, wl: &Layout, scale: f64, mask: &OpMask) -> Result<()> {
        if !wl.is_contiguous() {
            return Err(msg("lors op: frozen weight must be contiguous"));
        }
        let n = wl.shape().elem_count();
        let (ms, _) = packed(mask, n)?.storage_and_layout();
        let m = words(&ms)?;
        let dev = ba.device().clone();
        let dtypes = (ba.dtype(), w.dtype());
        let off = wl.start_offset();
        let s = scale as f32;
        match (&mut ba.slice, &w.slice) {
            (CudaStorageSlice::F32(d), CudaStorageSlice::F32(w)) => {
                merge_kernel(&dev, "masked_merge_f32", &w.slice(off..off + n), d, m, s, n)
            }
            (CudaStorageSlice::BF16(d), CudaStorageSlice::BF16(w)) => merge_kernel(
                &dev,
                "masked_merge_bf16",
                &w.slice(off..off + n),
                d,
                m,
                s,
                n,
            ),
            _ => Err(msg(format!(
                "lors op: adapter dtype {:?} and weight dtype {:?} must match and be f32 or \
                 bf16 on CUDA",
                dtypes.0, dtypes.1
            ))),
        }
    }

    fn apply_mask(d: &mut Self, layout: &Layout, mask: &OpMask) -> Result<()> {
        if !layout.is_contiguous() || layout.start_offset() != 0 {
            return Err(msg("apply-mask needs a fresh contiguous tensor"));
        }
        let n = layout.shape().elem_count();
        let (ms, _) = packed(mask, n)?.storage_and_layout();
        let m = words(&ms)?;
        let dev = d.device().clone();
        let dtype = d.dtype();
        match &mut d.slice {
            CudaStorageSlice::F32(d) => mask_kernel(&dev, "apply_mask_f32", d, m, n),
            CudaStorageSlice::BF16(d) => mask_kernel(&dev, "apply_mask_bf16", d, m, n),
            _ => Err(msg(format!("apply-mask: dtype {dtype:?} on CUDA"))),
        }
    }
}

/// Launch `masked_merge_*`: `d[i] = M[i] ? w[i] + s·d[i] : 0` for `i < n`.
fn merge_kernel<T: DeviceRepr>(
    dev: &CudaDevice,
    name: &str,
    w: &CudaView<T>,
    d: &mut CudaSlice<T>,
    mask: &CudaSlice<u32>,
    scale: f32,
    n: usize,
) -> Result<()> {
    let func = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
    let n64 = n as u64;
    let mut b = func.builder();
    b.arg(w).arg(d).arg(mask).arg(&scale).arg(&n64);
    // SAFETY: the argument list matches the kernel's signature; `w` and `d` hold `n`
    // elements and `mask` at least `n` bits (checked by `packed`).
    unsafe { b.launch(launch_config(n)) }.w()?;
    Ok(())
}

/// Launch `apply_mask_*`: `d[i] = M[i] ? d[i] : 0` for `i < n`.
fn mask_kernel<T: DeviceRepr>(
    dev: &CudaDevice,
    name: &str,
    d: &mut CudaSlice<T>,
    mask: &CudaSlice<u32>,
    n: usize,
) -> Result<()> {
    let func = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
    let n64 = n as u64;
    let mut b = func.builder();
    b.arg(d).arg(mask).arg(&n64);
    // SAFETY: as in `merge_kernel`.
    unsafe { b.launch(launch_config(n)) }.w()?;
    Ok(())
}
