//! The LLM half of myco, everything that faces llama.cpp: the one place that calls it
//! directly ([`ffi`], cargo feature `infer`), whole-model inference with continuous
//! batching ([`infer`]), layer-range stages and the GGUF slices they load ([`stage`],
//! feature `pipeline`), GGUF files themselves ([`gguf`]: the header reader, and the
//! writer of the tiny random-weight fixtures tests make their models with), and chat
//! templates as Hugging Face renders them ([`template`], minijinja, no llama.cpp), and
//! OpenAI's request and answer shapes ([`openai`]).
//!
//! What a model *is* to the swarm (its name, size, where it lives, how a name resolves) is
//! [`crate::model`]'s. This file only declares.

#[cfg(feature = "infer")]
pub mod ffi;
pub mod gguf;
pub mod infer;
pub mod openai;
#[cfg(feature = "pipeline")]
pub mod stage;
pub mod template;
pub mod tools;
