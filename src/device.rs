//! Compute devices: `cpu`, `cuda` and `cuda:N` as profiles and the CLI name them, and GPU
//! memory readings for the metrics, the memory panel and the benchmarks.

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{LorsError, Result};

/// The GPU ordinal a device name selects (`None` for `cpu`), checking only its spelling.
pub fn cuda_ordinal(name: &str) -> Result<Option<usize>> {
    match name {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Some(n)),
            _ => Err(LorsError::invalid(
                "device",
                format!("`{other}` is not cpu, cuda or cuda:N"),
            )),
        },
    }
}

/// The device a name selects: `cpu`, `cuda` (GPU 0) or `cuda:N`. CUDA needs a binary built
/// with the `cuda` feature and a working driver; otherwise the error says which is missing.
pub fn parse_device(name: &str) -> Result<Device> {
    let Some(ordinal) = cuda_ordinal(name)? else {
        return Ok(Device::Cpu);
    };
    if !cfg!(feature = "cuda") {
        return Err(LorsError::invalid(
            "device",
            format!(
                "`{name}`: this binary was built without CUDA; build it with \
                 `cargo build --release --features cuda` (see scripts/cuda-build.sh)"
            ),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        LorsError::invalid(
            "device",
            format!(
                "`{name}` is not available: {e}. The CUDA build needs the NVIDIA driver \
                 (libcuda.so.1) and CUDA 13 libraries (libcublas, libcublasLt, libcurand, \
                 libnvrtc) on LD_LIBRARY_PATH, and a GPU with that ordinal"
            ),
        )
    })
}

/// The device names this process can train on: `cpu`, then `cuda:N` for each GPU the driver
/// reports (CUDA builds only). Counted once.
pub fn available_devices() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        #[cfg(feature = "cuda")]
        let gpus = candle_core::cuda_backend::cudarc::driver::CudaContext::device_count()
            .unwrap_or(0)
            .max(0);
        #[cfg(not(feature = "cuda"))]
        let gpus = 0;
        std::iter::once("cpu")
            .chain((0..gpus).map(|n| &*Box::leak(format!("cuda:{n}").into_boxed_str())))
            .collect()
    })
}

/// A short name for `device`: `cpu` or `cuda:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
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

    #[test]
    fn names_parse_or_explain() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        let bad = parse_device("gpu0").unwrap_err().to_string();
        assert!(bad.contains("not cpu, cuda or cuda:N"), "{bad}");
        if !cfg!(feature = "cuda") {
            let e = parse_device("cuda:0").unwrap_err().to_string();
            assert!(e.contains("built without CUDA"), "{e}");
        }
        assert_eq!(device_name(&Device::Cpu), "cpu");
        assert_eq!(available_devices()[0], "cpu");
        assert!(gpu_memory(&Device::Cpu).unwrap().is_none());
    }
}
