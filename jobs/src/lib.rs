//! myco's job layer: the `job.toml` format ([`spec`]), one module per job kind ([`kind`]:
//! its section, validation, planning and traits), the stored [`task::Task`] enum with its
//! classified errors ([`error`]), the models a node holds and how names resolve ([`model`]),
//! the home layout ([`home`]), and the synchronous executors ([`executor`], [`chunk`],
//! [`embed`], [`infer`], [`stage`]).
//!
//! This crate is the bottom of the stack (`jobs ← runtime ← actors ← cli`): it must not know
//! about queues, actors or HTTP. Heavy model crates live here behind cargo features
//! (`embed`, `infer`, `pipeline`); test fixtures behind `test-fixtures`.

pub mod access;
#[cfg(feature = "embed")]
pub mod ann;
pub mod archive;
pub mod chunk;
pub mod collection;
#[cfg(feature = "embed")]
pub mod embed;
pub mod engines;
pub mod error;
pub mod executor;
#[cfg(feature = "infer")]
pub mod ffi;
pub mod filter;
pub mod fit;
#[cfg(any(test, feature = "test-fixtures"))]
pub mod gguf;
pub mod home;
pub mod infer;
#[cfg(feature = "embed")]
pub mod keyword;
pub mod kind;
pub mod model;
#[cfg(feature = "test-fixtures")]
pub mod pdf;
pub mod run;
pub mod spec;
#[cfg(feature = "pipeline")]
pub mod stage;
pub mod task;

pub use error::{ErrorClass, JobError};
pub use executor::{CpuExecutor, Executor};
pub use fit::Fit;
pub use kind::{JobKind, KindTraits, Lane};
pub use model::ModelRef;
pub use run::{ChildResults, RunContext};
pub use spec::{JobSpec, Plan, Problem, SpecError};
pub use task::Task;
