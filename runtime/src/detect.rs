//! Capability detection: what this machine can offer the swarm (cores, memory, GPUs).
//!
//! Detection reads the OS (sysinfo) and never fails: a machine without a GPU reports none.

use serde::{Deserialize, Serialize};

/// A GPU and its memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub name: String,
    pub vram_bytes: u64,
}

/// A device the node's llama.cpp computes on (the CPU, or a GPU of a GPU build), with its
/// memory as the backend reports it (free is free now, not a total). Filled in by the node,
/// which has the engines; `detect` alone leaves the list empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeDevice {
    /// The backend's name: `CPU`, `Vulkan0`, `CUDA0`, `MTL0`.
    pub name: String,
    pub description: String,
    /// `cpu`, `gpu`, `igpu` (a GPU sharing host memory) or `accel`.
    pub kind: String,
    pub free: u64,
    pub total: u64,
}

impl ComputeDevice {
    pub fn is_gpu(&self) -> bool {
        self.kind == "gpu" || self.kind == "igpu"
    }
}

/// What this machine has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub cpu_brand: String,
    pub cores: usize,
    pub ram_total_bytes: u64,
    pub ram_free_bytes: u64,
    pub gpus: Vec<Gpu>,
    /// What this build can compute on (see [`ComputeDevice`]).
    #[serde(default)]
    pub devices: Vec<ComputeDevice>,
}

/// Read this machine's capabilities. GPU detection loads driver libraries: call it from a
/// blocking context, not on an async thread.
pub fn detect() -> Capabilities {
    let sys = sysinfo::System::new().map(|mut sys| {
        sys.refresh_memory();
        sys.refresh_cpu_all();
        sys
    });
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Capabilities {
        hostname: sysinfo::System::host_name().unwrap_or_else(|_| "localhost".into()),
        os: sysinfo::System::long_os_version().unwrap_or_else(|_| std::env::consts::OS.into()),
        arch: std::env::consts::ARCH.into(),
        cpu_brand: sys
            .as_ref()
            .ok()
            .and_then(|s| s.cpus().first().map(|c| c.brand().trim().to_owned()))
            .unwrap_or_default(),
        cores,
        ram_total_bytes: sys.as_ref().map(|s| s.total_memory()).unwrap_or(0),
        ram_free_bytes: sys.as_ref().map(|s| s.available_memory()).unwrap_or(0),
        gpus: detect_gpus(),
        devices: Vec::new(),
    }
}

/// GPUs with their memory, from sysinfo (PCI display devices, with NVML loaded dynamically
/// for NVIDIA memory figures). Devices that report no memory of their own (virtual display
/// adapters) are left out. Without a GPU or a driver this is empty, silently.
fn detect_gpus() -> Vec<Gpu> {
    let Ok(gpus) = sysinfo::Gpus::new_with_refreshed_list() else {
        return Vec::new();
    };
    gpus.iter()
        .filter_map(|g| {
            let vram_bytes = g.total_memory().filter(|m| *m > 0)?;
            let name = match (g.vendor(), g.model()) {
                (Some(v), Some(m)) => format!("{v} {m}"),
                (None, Some(m)) => m.to_owned(),
                (Some(v), None) => v.to_owned(),
                (None, None) => "GPU".to_owned(),
            };
            Some(Gpu { name, vram_bytes })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn detects_this_machine() {
        let caps = super::detect();
        assert!(caps.cores >= 1);
        assert!(caps.ram_total_bytes > 0);
        assert!(caps.ram_free_bytes <= caps.ram_total_bytes);
    }
}
