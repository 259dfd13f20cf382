//! The `noop` kind: a job that does nothing but return its payload, for smoke tests,
//! benchmarks and failure drills. Its `[noop]` section (optional), its validation, planning
//! and traits.
//!
//! It must not run the job (that is the executor's `run_noop`).

use std::path::Path;

use serde::Deserialize;

use super::traits::{ExecutorKind, Gpu, KindTraits, Lane};
use crate::spec::env::SpecEnv;
use crate::spec::plan::{Checked, Plan};
use crate::spec::problem::{Problems, SpecError};
use crate::task::{FailMode, NoopTask, Task};

pub const TRAITS: KindTraits = KindTraits {
    lane: Lane::Batch,
    streams: false,
    joins: false,
    owner_only: false,
    gpu: Gpu::Never,
    executor: ExecutorKind::Cpu,
};

/// `[noop]`: a job that does nothing but return its payload. For smoke tests, benchmarks and
/// failure drills (`fail_attempts`, `fail_mode`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub sleep_ms: u64,
    #[serde(default)]
    pub fail_attempts: u32,
    #[serde(default)]
    pub fail_mode: FailMode,
}

/// The section is optional: a bare `kind = "noop"` returns an empty payload.
pub fn check(section: Option<&Section>, _env: &SpecEnv<'_>, _p: &mut Problems) -> Option<Checked> {
    let n = section.cloned().unwrap_or_default();
    Some(
        Task::Noop(NoopTask {
            payload: n.payload,
            sleep_ms: n.sleep_ms,
            fail_attempts: n.fail_attempts,
            fail_mode: n.fail_mode,
        })
        .into(),
    )
}

pub fn plan(task: &Task, _collections: &Path) -> Result<Plan, SpecError> {
    Ok(Plan::single(task.clone()))
}
