//! Compute devices (`cpu`, `cuda`, `cuda:N`) and dtypes as profiles and the CLI name them,
//! the one rule of which dtype computes where, and GPU memory readings for the metrics, the memory panel and the benchmarks.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::error::{LorsError, Result};

/// A compute device as profiles and flags name it: `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = LorsError;

    /// `cpu`, `cuda` or `cuda:N`, checking only the spelling.
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(LorsError::invalid(
                    "device",
                    format!("`{other}` is not cpu, cuda or cuda:N"),
                )),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

crate::serde_as_text!(DeviceSpec);

impl DeviceSpec {
    pub fn is_cpu(self) -> bool {
        self == Self::Cpu
    }

    /// The device it names. CUDA needs a binary built with the `cuda` feature and a working
    /// driver; otherwise the error says which is missing.
    pub fn open(self) -> Result<Device> {
        let Self::Cuda(ordinal) = self else {
            return Ok(Device::Cpu);
        };
        if !cfg!(feature = "cuda") {
            return Err(LorsError::invalid(
                "device",
                format!(
                    "`{self}`: this binary was built without CUDA; build it with \
                     `cargo build --release --features cuda` (see scripts/cuda-build.sh)"
                ),
            ));
        }
        Device::new_cuda(ordinal).map_err(|e| {
            LorsError::invalid(
                "device",
                format!(
                    "`{self}` is not available: {e}. The CUDA build needs the NVIDIA driver \
                     (libcuda.so.1) and CUDA 13 libraries (libcublas, libcublasLt, libcurand, \
                     libnvrtc) on LD_LIBRARY_PATH, and a GPU with that ordinal"
                ),
            )
        })
    }

    /// The devices this process can train on: `cpu`, then `cuda:N` for each GPU the driver
    /// reports (CUDA builds only). Counted once.
    pub fn available() -> &'static [DeviceSpec] {
        static SPECS: std::sync::OnceLock<Vec<DeviceSpec>> = std::sync::OnceLock::new();
        SPECS.get_or_init(|| {
            #[cfg(feature = "cuda")]
            let gpus = candle_core::cuda_backend::cudarc::driver::CudaContext::device_count()
                .unwrap_or(0)
                .max(0) as usize;
            #[cfg(not(feature = "cuda"))]
            let gpus = 0;
            std::iter::once(Self::Cpu)
                .chain((0..gpus).map(Self::Cuda))
                .collect()
        })
    }
}

/// The dtype a model computes in, as profiles and flags name it (`f32`, or `float32` as
/// Hugging Face configs write it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ComputeDtype {
    #[default]
    F32,
    F16,
    Bf16,
    F64,
}

impl FromStr for ComputeDtype {
    type Err = LorsError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f64" | "float64" => Ok(Self::F64),
            other => Err(LorsError::invalid(
                "dtype",
                format!("`{other}` is not f32, f16, bf16 or f64"),
            )),
        }
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::F64 => "f64",
        })
    }
}

impl From<ComputeDtype> for DType {
    fn from(d: ComputeDtype) -> DType {
        match d {
            ComputeDtype::F32 => DType::F32,
            ComputeDtype::F16 => DType::F16,
            ComputeDtype::Bf16 => DType::BF16,
            ComputeDtype::F64 => DType::F64,
        }
    }
}

crate::serde_as_text!(
    ComputeDtype,
    ComputeDtype::ALL.iter().map(|d| d.to_string()).collect()
);

impl ComputeDtype {
    /// Every dtype, the default first.
    pub const ALL: &'static [ComputeDtype] = &[Self::F32, Self::F16, Self::Bf16, Self::F64];

    pub fn dtype(self) -> DType {
        self.into()
    }
}

/// The dtypes the engine computes in on a CPU (`cpu`) or a CUDA device: candle's CPU
/// backend has no bf16 matmul, and the CUDA mask kernels are built for f32 and bf16. The one
/// rule behind profile validation, the benches and the ops.
pub fn compute_dtypes(cpu: bool) -> &'static [DType] {
    if cpu {
        &[DType::F16, DType::F32, DType::F64]
    } else {
        &[DType::F32, DType::BF16]
    }
}

/// Whether the engine computes in `dtype` on a CPU (`cpu`) or a CUDA device.
pub fn computes_in(dtype: DType, cpu: bool) -> bool {
    compute_dtypes(cpu).contains(&dtype)
}

/// [`compute_dtypes`] for messages: `f16, f32 or f64 on the CPU`.
pub fn compute_dtypes_text(cpu: bool) -> String {
    let names: Vec<&str> = compute_dtypes(cpu).iter().map(|d| d.as_str()).collect();
    let (last, rest) = names
        .split_last()
        .expect("each device computes in some dtype");
    let on = if cpu { "the CPU" } else { "CUDA" };
    format!("{} or {last} on {on}", rest.join(", "))
}

/// [`computes_in`] as an error naming `field`.
pub fn check_compute(dtype: ComputeDtype, device: DeviceSpec, field: &str) -> Result<()> {
    if computes_in(dtype.dtype(), device.is_cpu()) {
        return Ok(());
    }
    let mut reason = format!(
        "`{dtype}` on {device}: the engine computes in {}",
        compute_dtypes_text(device.is_cpu())
    );
    if device.is_cpu() && dtype == ComputeDtype::Bf16 {
        reason += " (candle has no bf16 matmul there; bf16 checkpoints load fine with \
                   dtype = \"f32\", or compute in bf16 on CUDA)";
    }
    Err(LorsError::invalid(field, reason))
}

/// GPU memory as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuMemory {
    /// Bytes this process's tensors hold now (the device's stream-ordered memory pool).
    pub used_bytes: u64,
    /// Most bytes they held since the last [`reset_gpu_peak`].
    pub peak_bytes: u64,
    /// Bytes in use on the whole device, by every process (total minus free).
    pub device_used_bytes: u64,
    /// The device's memory.
    pub device_total_bytes: u64,
}

/// Memory of `device` after the work queued on it has finished; `None` on the CPU.
pub fn gpu_memory(device: &Device) -> Result<Option<GpuMemory>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return cuda::memory(dev).map(Some);
    }
    let _ = device;
    Ok(None)
}

/// Start a new peak for [`GpuMemory::peak_bytes`] at the bytes held now (no-op on the CPU).
pub fn reset_gpu_peak(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return cuda::reset_peak(dev);
    }
    let _ = device;
    Ok(())
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The readings through the driver API: candle allocates with `cuMemAllocAsync`, which
    //! takes memory from the device's current memory pool, whose attributes count the bytes
    //! in use and their high-water mark.

    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    use candle_core::CudaDevice;

    use super::GpuMemory;
    use crate::error::{LorsError, Result};

    fn err(what: &str, e: impl std::fmt::Display) -> LorsError {
        LorsError::invalid("gpu memory", format!("{what}: {e}"))
    }

    fn pool(dev: &CudaDevice) -> Result<sys::CUmemoryPool> {
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread()
            .map_err(|e| err("binding the context", e))?;
        stream.synchronize().map_err(|e| err("synchronising", e))?;
        // SAFETY: the device handle comes from a live context.
        unsafe { result::device::get_mem_pool(ctx.cu_device()) }
            .map_err(|e| err("the memory pool", e))
    }

    fn attribute(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64> {
        let mut value = 0u64;
        // SAFETY: both attributes read here are cuuint64_t.
        unsafe { result::mem_pool::get_attribute(pool, attr, (&mut value as *mut u64).cast()) }
            .map_err(|e| err("reading a pool attribute", e))?;
        Ok(value)
    }

    pub fn memory(dev: &CudaDevice) -> Result<GpuMemory> {
        let pool = pool(dev)?;
        use sys::CUmemPool_attribute::*;
        let used_bytes = attribute(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
        let peak_bytes = attribute(pool, CU_MEMPOOL_ATTR_USED_MEM_HIGH)?;
        let (free, total) = dev
            .cuda_stream()
            .context()
            .mem_get_info()
            .map_err(|e| err("cuMemGetInfo", e))?;
        Ok(GpuMemory {
            used_bytes,
            peak_bytes,
            device_used_bytes: (total - free) as u64,
            device_total_bytes: total as u64,
        })
    }

    pub fn reset_peak(dev: &CudaDevice) -> Result<()> {
        let pool = pool(dev)?;
        // Setting the high-water mark to zero resets it to the current use.
        let mut zero = 0u64;
        // SAFETY: USED_MEM_HIGH is cuuint64_t and may only be set to zero.
        unsafe {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut zero as *mut u64).cast(),
            )
        }
        .map_err(|e| err("resetting the pool's peak", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(name: &str) -> Result<Device> {
        name.parse::<DeviceSpec>()?.open()
    }

    #[test]
    fn names_parse_or_explain() {
        assert!(open("cpu").unwrap().is_cpu());
        let bad = open("gpu0").unwrap_err().to_string();
        assert!(bad.contains("not cpu, cuda or cuda:N"), "{bad}");
        if !cfg!(feature = "cuda") {
            let e = open("cuda:0").unwrap_err().to_string();
            assert!(e.contains("built without CUDA"), "{e}");
        }
        assert_eq!(DeviceSpec::available()[0], DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap().to_string(), "cuda:0");
        assert!(gpu_memory(&Device::Cpu).unwrap().is_none());
    }

    #[test]
    fn one_rule_says_which_dtype_computes_where() {
        for (dtype, cpu, gpu) in [
            (ComputeDtype::F32, true, true),
            (ComputeDtype::F16, true, false),
            (ComputeDtype::F64, true, false),
            (ComputeDtype::Bf16, false, true),
        ] {
            let on_cpu = check_compute(dtype, DeviceSpec::Cpu, "model.dtype");
            let on_gpu = check_compute(dtype, DeviceSpec::Cuda(0), "model.dtype");
            assert_eq!((on_cpu.is_ok(), on_gpu.is_ok()), (cpu, gpu), "{dtype}");
        }
        let e = check_compute(ComputeDtype::Bf16, DeviceSpec::Cpu, "model.dtype").unwrap_err();
        assert!(e.to_string().contains("f16, f32 or f64 on the CPU"), "{e}");
        assert_eq!(
            "bfloat16".parse::<ComputeDtype>().unwrap(),
            ComputeDtype::Bf16
        );
        assert_eq!(ComputeDtype::Bf16.to_string(), "bf16");
    }
}
