//! The `noop` kind: a job that does nothing but return its payload, for smoke tests,
//! benchmarks and failure drills. Its `[noop]` section (optional), its validation, planning
//! and traits.
//!
//! Its `run` is the whole job.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::traits::{ExecutorKind, Gpu, KindTraits, Lane};
use crate::engines::{Engines, misrouted};
use crate::error::JobError;
use crate::run::RunContext;
use crate::spec::env::SpecEnv;
use crate::spec::plan::{Checked, Plan};
use crate::spec::problem::{Problems, SpecError};
use crate::task::{FailMode, NoopTask, Task};

pub const TRAITS: KindTraits = KindTraits {
    lane: Lane::Batch,
    streams: false,
    joins: false,
    joins_failed: false,
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

/// Run a noop task: wait `sleep_ms` (cancellable), fail as planned, return the payload.
pub fn run(task: &Task, _: &mut Engines, ctx: &RunContext<'_>) -> Result<Vec<u8>, JobError> {
    let Task::Noop(n) = task else {
        return Err(misrouted(task, "noop"));
    };
    if n.sleep_ms > 0 {
        let until = std::time::Instant::now() + Duration::from_millis(n.sleep_ms);
        while std::time::Instant::now() < until {
            if (ctx.cancelled)() {
                return Err(JobError::retryable("cancelled"));
            }
            std::thread::sleep(Duration::from_millis(5).min(until - std::time::Instant::now()));
        }
    }
    if ctx.attempt <= n.fail_attempts {
        let msg = format!("noop: planned failure on attempt {}", ctx.attempt);
        match n.fail_mode {
            FailMode::Retryable => return Err(JobError::retryable(msg)),
            FailMode::Fatal => return Err(JobError::fatal(msg)),
            #[allow(clippy::panic)]
            FailMode::Panic => panic!("{msg}"),
        }
    }
    let mut out = serde_json::to_vec(&serde_json::json!({ "payload": n.payload }))
        .map_err(|e| JobError::fatal(format!("encoding result: {e}")))?;
    out.push(b'\n');
    Ok(out)
}
