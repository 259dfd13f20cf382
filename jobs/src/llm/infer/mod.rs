//! LLM inference jobs: the request and result types (`types.rs`), the one builder and
//! validator of a request's sampling settings ([`InferOptions`], `options.rs`), and the
//! engine that runs them on llama.cpp ([`engine`], cargo feature `infer`).
//!
//! This file only declares and re-exports (and stands in an empty [`Models`] when the engine
//! is not built): its children never import it.

#[cfg(feature = "infer")]
pub mod batch;
#[cfg(feature = "infer")]
pub mod engine;
#[cfg(feature = "infer")]
pub mod models;
mod options;
mod types;

#[cfg(feature = "infer")]
pub use models::{GpuPolicy, Models, Served, Serving};
pub use options::InferOptions;
pub use types::{
    Extras, Finish, Generation, InferError, InferParams, InferTask, JSON_GRAMMAR, MAX_TOP_LOGPROBS,
    Message, Prompt, StageReport, TokenLogprob, ToolCall, ToolChoice, Tools, TopLogprob,
};

/// A node's cache of loaded LLMs; without the `infer` feature there is nothing to cache.
#[cfg(not(feature = "infer"))]
#[derive(Debug, Clone, Default)]
pub struct Models;

#[cfg(not(feature = "infer"))]
impl Models {
    pub fn new() -> Models {
        Models
    }
}
