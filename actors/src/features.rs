//! What this build of the node runs: the job kinds whose engines were compiled in (cargo
//! features `embed`, `infer`, `pipeline`), and where pipeline stages run. Nothing else.

use myco_jobs::JobKind;

/// Whether this build puts the stages of pipeline jobs on a GPU.
#[cfg(feature = "pipeline")]
pub const STAGES_ON_GPU: bool = myco_jobs::stage::GPU_BUILD;
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
            JobKind::Infer => cfg!(feature = "infer"),
            JobKind::Pipeline => cfg!(feature = "pipeline"),
            JobKind::Chunk | JobKind::Noop => true,
        })
        .collect()
}
