//! myco's job layer: the `job.toml` format ([`spec`]), one module per job kind ([`kind`]:
//! its section, validation, planning and traits), the stored [`task::Task`] enum with its
//! classified errors ([`error`]), the models a node holds and how names resolve ([`model`]),
//! the home layout ([`home`]), the files of OpenAI's file API ([`files`]), the synchronous executors ([`executor`], [`chunk`],
//! [`embed`]), and the LLM half, everything that faces llama.cpp ([`llm`]: inference,
//! layer-range stages, GGUF files).
//!
//! This crate is the bottom of the stack (`jobs ← runtime ← actors ← cli`): it must not know
//! about queues, actors or HTTP. Heavy model crates live here behind cargo features
//! (`embed`, `infer`, `pipeline`); test fixtures behind `test-fixtures`.

pub mod access;
#[cfg(feature = "embed")]
pub mod ann;
pub mod archive;
pub mod batch;
pub mod chunk;
pub mod collection;
#[cfg(feature = "embed")]
pub mod embed;
pub mod engines;
pub mod error;
pub mod executor;
pub mod files;
pub mod filter;
pub mod fit;
pub mod home;
#[cfg(feature = "embed")]
pub mod keyword;
pub mod kind;
pub mod llm;
pub mod model;
#[cfg(feature = "test-fixtures")]
pub mod pdf;
pub mod run;
pub mod spec;
pub mod task;

pub use error::{ErrorClass, JobError};
pub use executor::{CpuExecutor, Executor};
pub use fit::Fit;
pub use kind::{JobKind, KindTraits, Lane};
pub use model::ModelRef;
pub use run::{Child, ChildResults, Outcome, RunContext};
pub use spec::{JobSpec, Plan, Problem, SpecError};
pub use task::Task;
