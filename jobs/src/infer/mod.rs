//! LLM inference jobs: the request and result types (`types.rs`), the one builder and
//! validator of a request's sampling settings ([`InferOptions`], `options.rs`), and the
//! engine that runs them on llama.cpp ([`engine`], cargo feature `infer`).
//!
//! This file only declares and re-exports: its children never import it.

#[cfg(feature = "infer")]
pub mod engine;
mod options;
mod types;

pub use options::InferOptions;
pub use types::{
    Finish, Generation, InferError, InferParams, InferTask, Message, Prompt, StageReport,
};
