//! What the workbench shows about the GPUs while a run trains: utilisation, memory and power
//! of each device and the memory a run's process holds on it, read through NVML (the library
//! behind `nvidia-smi`, loaded at run time by `nvml-wrapper`) in CUDA builds. A CPU build, or
//! a machine without the NVIDIA driver, says so instead.

/// One GPU now.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    pub index: u32,
    pub name: String,
    /// Percent of the last sample period a kernel ran.
    pub utilization_percent: u32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub power_watts: Option<f64>,
    /// What the watched process holds on this GPU, when NVML reports it.
    pub process_bytes: Option<u64>,
}

/// The GPUs as the workbench can see them.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuStatus {
    /// Built without `--features cuda`: no GPU code, no NVML.
    CpuBuild,
    /// A CUDA build where NVML cannot be used (no driver, no permission), and why.
    Unavailable(String),
    /// Every GPU NVML lists (none on a machine without one).
    Gpus(Vec<GpuReading>),
}

impl GpuStatus {
    /// Lines for the Memory panel (24 columns at 80): per GPU its utilisation and power,
    /// its memory, and the run's share (`GPU0 87% 450 W` / `  40.0 GiB/140.0 GiB` /
    /// `  run 38.0 GiB`), only the GPUs the run uses when it is seen on some; or one line
    /// saying why there is none.
    pub fn lines(&self, bytes: impl Fn(u64) -> String) -> Vec<String> {
        let gpus = match self {
            GpuStatus::CpuBuild => return vec!["GPU  none (CPU build)".into()],
            GpuStatus::Unavailable(why) => return vec![format!("GPU  none: {why}")],
            GpuStatus::Gpus(gpus) if gpus.is_empty() => return vec!["GPU  none found".into()],
            GpuStatus::Gpus(gpus) => gpus,
        };
        let used: Vec<&GpuReading> = gpus.iter().filter(|g| g.process_bytes.is_some()).collect();
        let shown = if used.is_empty() {
            gpus.iter().collect()
        } else {
            used
        };
        let mut lines = Vec::new();
        for g in shown {
            let power = g
                .power_watts
                .map_or(String::new(), |w| format!(" {w:.0} W"));
            lines.push(format!("GPU{} {}%{power}", g.index, g.utilization_percent));
            lines.push(format!(
                "  {}/{}",
                bytes(g.memory_used_bytes),
                bytes(g.memory_total_bytes)
            ));
            if let Some(b) = g.process_bytes {
                lines.push(format!("  run {}", bytes(b)));
            }
        }
        lines
    }
}

/// The GPUs now, with the memory process `pid` holds on each.
pub fn read_gpus(pid: Option<u32>) -> GpuStatus {
    #[cfg(feature = "cuda")]
    return nvml::read(pid);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = pid;
        GpuStatus::CpuBuild
    }
}

#[cfg(feature = "cuda")]
mod nvml {
    use std::sync::OnceLock;

    use nvml_wrapper::enums::device::UsedGpuMemory;
    use nvml_wrapper::{Device, Nvml};

    use super::{GpuReading, GpuStatus};

    /// NVML, opened once (loading the library and its symbols is slow), or why not.
    fn handle() -> Result<&'static Nvml, String> {
        static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();
        NVML.get_or_init(|| Nvml::init().map_err(|e| format!("NVML: {e}")))
            .as_ref()
            .map_err(Clone::clone)
    }

    pub fn read(pid: Option<u32>) -> GpuStatus {
        let nvml = match handle() {
            Ok(n) => n,
            Err(e) => return GpuStatus::Unavailable(e),
        };
        let count = match nvml.device_count() {
            Ok(n) => n,
            Err(e) => return GpuStatus::Unavailable(format!("NVML: {e}")),
        };
        GpuStatus::Gpus(
            (0..count)
                .filter_map(|i| Some(reading(i, &nvml.device_by_index(i).ok()?, pid)))
                .collect(),
        )
    }

    fn reading(index: u32, d: &Device, pid: Option<u32>) -> GpuReading {
        let memory = d.memory_info().ok();
        let process_bytes = pid.and_then(|pid| {
            let processes = d.running_compute_processes().ok()?;
            let p = processes.iter().find(|p| p.pid == pid)?;
            match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => Some(b),
                UsedGpuMemory::Unavailable => None,
            }
        });
        GpuReading {
            index,
            name: d.name().unwrap_or_default(),
            utilization_percent: d.utilization_rates().map_or(0, |u| u.gpu),
            memory_used_bytes: memory.as_ref().map_or(0, |m| m.used),
            memory_total_bytes: memory.as_ref().map_or(0, |m| m.total),
            power_watts: d.power_usage().ok().map(|mw| mw as f64 / 1000.0),
            process_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_panel_lines_say_what_there_is() {
        let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
        let gpu = GpuReading {
            index: 0,
            name: "H200".into(),
            utilization_percent: 87,
            memory_used_bytes: 40 << 30,
            memory_total_bytes: 140 << 30,
            power_watts: Some(450.4),
            process_bytes: Some(38 << 30),
        };
        let idle = GpuReading {
            index: 1,
            process_bytes: None,
            ..gpu.clone()
        };
        // Only the GPU the run holds memory on.
        assert_eq!(
            GpuStatus::Gpus(vec![gpu, idle.clone()]).lines(gib),
            ["GPU0 87% 450 W", "  40.0 GiB/140.0 GiB", "  run 38.0 GiB"]
        );
        assert_eq!(
            GpuStatus::Gpus(vec![idle]).lines(gib),
            ["GPU1 87% 450 W", "  40.0 GiB/140.0 GiB"]
        );
        assert_eq!(GpuStatus::Gpus(Vec::new()).lines(gib), ["GPU  none found"]);
        let no_driver = GpuStatus::Unavailable("NVML: driver not loaded".into());
        assert_eq!(no_driver.lines(gib), ["GPU  none: NVML: driver not loaded"]);
        #[cfg(not(feature = "cuda"))]
        assert_eq!(read_gpus(Some(std::process::id())), GpuStatus::CpuBuild);
    }
}
