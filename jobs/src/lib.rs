//! myco's job layer: the `job.toml` format ([`spec`]), the stored [`task::Task`] enum with its
//! classified errors, and the synchronous executors ([`chunk`], no-op).
//!
//! This crate is the bottom of the stack (`jobs ← runtime ← actors ← cli`): it must not know
//! about queues, actors or HTTP. Heavy model crates will live here behind cargo features.

pub mod archive;
pub mod chunk;
pub mod collection;
#[cfg(feature = "embed")]
pub mod embed;
pub mod gguf;
pub mod infer;
pub mod spec;
#[cfg(feature = "pipeline")]
pub mod stage;
pub mod task;

pub use spec::{JobSpec, Plan, Problem, SpecError};
pub use task::{
    ChildResults, CpuExecutor, ErrorClass, Executor, Fit, JobError, JobKind, RunContext, Task,
};
