//! What this build of the node runs: the job kinds whose engines were compiled in (cargo
//! features `embed`, `infer`, `pipeline`), and where pipeline stages run. Nothing else.

use myco_jobs::JobKind;
use myco_runtime::detect::{Capabilities, ComputeDevice};

/// Whether this build puts the stages of pipeline jobs on a GPU.
#[cfg(feature = "pipeline")]
pub const STAGES_ON_GPU: bool = myco_jobs::llm::stage::GPU_BUILD;
/// Whether this build puts the stages of pipeline jobs on a GPU.
#[cfg(not(feature = "pipeline"))]
pub const STAGES_ON_GPU: bool = false;

/// The job kinds this build's workers run. A kind whose engine was left out of the build
/// (cargo features `embed`, `infer`, `pipeline`) is neither leased nor stolen here: it stays
/// queued for a node that runs it.
pub fn kinds() -> Vec<JobKind> {
    JobKind::ALL
        .into_iter()
        .filter(|k| match k {
            JobKind::Embed | JobKind::Archive => cfg!(feature = "embed"),
            JobKind::Infer => cfg!(feature = "infer") && llm_cpu(),
            JobKind::Pipeline => cfg!(feature = "pipeline") && llm_cpu(),
            // A batch's join writes files: it needs no engine (its children do).
            JobKind::Chunk | JobKind::Noop | JobKind::Batch => true,
        })
        .collect()
}

/// Whether llama.cpp has CPU kernels that run here (see `cpu_kernels`); said once in the
/// log when it has none.
#[cfg(feature = "infer")]
fn llm_cpu() -> bool {
    static SAID: std::sync::Once = std::sync::Once::new();
    match myco_jobs::llm::infer::engine::cpu_kernels() {
        Ok(_) => true,
        Err(why) => {
            SAID.call_once(|| tracing::warn!("{why}"));
            false
        }
    }
}

#[cfg(not(feature = "infer"))]
fn llm_cpu() -> bool {
    false
}

/// This machine's capabilities, with the devices this build's llama.cpp computes on. Loads
/// driver libraries: call it from a blocking context.
pub fn detect() -> Capabilities {
    let mut caps = myco_runtime::detect::detect();
    caps.devices = devices();
    caps
}

#[cfg(feature = "infer")]
fn devices() -> Vec<ComputeDevice> {
    myco_jobs::llm::infer::engine::devices()
        .into_iter()
        .map(|d| ComputeDevice {
            kind: serde_json::to_value(d.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            name: d.name,
            description: d.description,
            free: d.free,
            total: d.total,
        })
        .collect()
}

#[cfg(not(feature = "infer"))]
fn devices() -> Vec<ComputeDevice> {
    Vec::new()
}

/// The memory a node offers to stages, and how much of it is on its GPU: in a build that
/// puts stages on a GPU, the free memory of its first GPU as the backend reports it (at most
/// `gpu_cap`, the node's `--gpu-memory`) and free RAM, where layers that do not fit on the
/// GPU run; else free RAM only; nothing when llama.cpp has no CPU kernels here. The whole is
/// at most `stage_cap` (`--stage-memory`), the GPU's part first.
pub fn stage_memory(
    caps: &Capabilities,
    stage_cap: Option<u64>,
    gpu_cap: Option<u64>,
) -> StageMemory {
    if !llm_cpu() {
        // Stages cannot load here: offer nothing, so the planner leaves this node out.
        return StageMemory::default();
    }
    let gpu = match caps.devices.iter().find(|d| d.is_gpu()) {
        Some(gpu) if STAGES_ON_GPU => gpu_cap.map_or(gpu.free, |cap| cap.min(gpu.free)),
        _ => 0,
    };
    let total = gpu + caps.ram_free_bytes;
    let total = stage_cap.map_or(total, |cap| cap.min(total));
    StageMemory {
        total,
        gpu: gpu.min(total),
    }
}

/// What a node offers to stages (see [`stage_memory`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageMemory {
    pub total: u64,
    /// Of `total`, on its GPU.
    pub gpu: u64,
}
