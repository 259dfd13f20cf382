//! The vocabulary of LLM inference: what a request asks for ([`InferTask`]: a prompt or chat
//! messages, sampling parameters), what it returns ([`Generation`]) and why it fails
//! ([`InferError`]).
//!
//! Types only: no validation (that is `options.rs`), no engine (that is `engine.rs`).

use serde::{Deserialize, Serialize};

use crate::error::JobError;
use crate::model::ModelRef;

/// An `infer` job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferTask {
    /// A GGUF file.
    pub model: ModelRef,
    pub prompt: Prompt,
    pub params: InferParams,
    /// Run only on a node with a GPU (`requires`: the model file is always required).
    #[serde(default)]
    pub gpu: bool,
}

/// Sampling and length settings of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferParams {
    pub max_tokens: u32,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub seed: u32,
    pub stop: Vec<String>,
    pub n_ctx: u32,
    /// Threads for decoding (0: one per core).
    pub threads: u32,
    /// Layers on the GPU (None: the node's `--gpu-layers`, else as many as fit in its free
    /// GPU memory; 0: none). Nothing to offload without a GPU.
    pub gpu_layers: Option<u32>,
    /// The chat template for messages (a llama.cpp template name or a template text); None:
    /// the model's (see `LlmModel::render`).
    pub chat_template: Option<String>,
    /// A GBNF grammar the output must follow (llama.cpp's grammar sampler), e.g.
    /// [`JSON_GRAMMAR`] for JSON mode.
    pub grammar: Option<String>,
}

/// JSON mode: the output is one JSON object (llama.cpp's `grammars/json.gbnf`, MIT, with
/// whitespace bounded so that a model cannot pad forever).
pub const JSON_GRAMMAR: &str = r#"root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

ws ::= | " " | "\n" [ \t]{0,20}
"#;

impl Default for InferParams {
    fn default() -> Self {
        InferParams {
            max_tokens: 256,
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.1,
            seed: 0,
            stop: Vec::new(),
            n_ctx: 4096,
            threads: 0,
            gpu_layers: None,
            chat_template: None,
            grammar: None,
        }
    }
}

/// A chat message, rendered with the model's own template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What to continue: raw text, or chat messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Prompt {
    Text(String),
    Chat(Vec<Message>),
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// The model ended its turn (an end-of-generation token) or a stop string appeared.
    Stop,
    /// `max_tokens` were generated, or the context is full.
    Length,
}

/// The result of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub text: String,
    /// The generated token ids (the stop string's tokens included, if one ended it).
    pub tokens: Vec<i32>,
    pub prompt_tokens: u32,
    /// Of the prompt's tokens, those whose KV came from the prompt cache (an earlier request
    /// with the same beginning, such as the turns before in a chat) and were not decoded again.
    #[serde(default)]
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: Finish,
    pub prompt_ms: f64,
    pub generation_ms: f64,
    /// A pipeline job: the stages of the run that finished it (node, layers, tensor bytes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageReport>,
    /// A pipeline job: each time a stage was lost and its layers placed again, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<String>,
}

/// One stage of a pipeline run, as its node reported it after loading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReport {
    pub node: String,
    pub first: u32,
    /// Exclusive.
    pub end: u32,
    /// The bytes of the tensors it read from the model file.
    pub tensor_bytes: u64,
    /// The names of those tensors.
    pub tensors: Vec<String>,
}

impl From<InferError> for JobError {
    fn from(e: InferError) -> Self {
        if e.is_retryable() {
            JobError::retryable(e.to_string())
        } else {
            JobError::fatal(e.to_string())
        }
    }
}

/// Why a request failed. Every message names the problem; all are fatal for the job except
/// `Cancelled` (and `Decode`, which is the engine's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    #[error(
        "model file {path} is missing; give the path of a GGUF file, or a name under ~/.myco/models"
    )]
    Missing { path: String },
    #[error(
        "{path} is not a GGUF model llama.cpp can load (a truncated or corrupt file, or an unsupported architecture)"
    )]
    Corrupt { path: String },
    #[error(
        "the prompt is {tokens} tokens, more than the context of {n_ctx}; shorten it or raise n_ctx"
    )]
    PromptTooLong { tokens: usize, n_ctx: u32 },
    #[error(
        "the model {path} has no chat template, and myco knows no built-in one for its architecture; name one (chat_template = \"chatml\" in the request, or in a .toml file of the model's name beside it), or send a plain prompt"
    )]
    NoChatTemplate { path: String },
    #[error("the chat template of {path} cannot be applied: {why}")]
    Template { path: String, why: String },
    #[error("the grammar cannot be used: {0}; give a GBNF grammar whose start rule is `root`")]
    Grammar(String),
    /// The context does not fit the model or this node (checked before loading).
    #[error("{0}")]
    Context(String),
    #[error("llama.cpp: {0}")]
    Engine(String),
    #[error("cancelled")]
    Cancelled,
}

impl InferError {
    /// Whether trying again can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, InferError::Engine(_) | InferError::Cancelled)
    }
}
