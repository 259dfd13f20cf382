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
///
/// Stored in the queue and lent to peers (bincode, by position): new variants go at the end,
/// so that every record written before them still decodes, and a request that needs none of
/// them keeps its old shape (an older node can still run it). What [`InferParams`] (a stored
/// layout) cannot carry rides in [`Prompt::With`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Prompt {
    Text(String),
    Chat(Vec<Message>),
    /// Chat turns as OpenAI's API has them, as JSON (an array of `{"role", "content",
    /// "tool_calls", "tool_call_id", "name"}`): assistant turns that called tools and the
    /// tools' results, which only a Jinja template can render ([`crate::llm::template`]).
    Turns(String),
    /// A prompt with what [`InferParams`] cannot carry: tools the model may call,
    /// log-probabilities to report, a JSON schema for the answer.
    With(Box<Prompt>, Extras),
}

impl Prompt {
    /// The prompt itself (inside [`Prompt::With`]).
    pub fn base(&self) -> &Prompt {
        match self {
            Prompt::With(p, _) => p.base(),
            p => p,
        }
    }

    /// Its tools and log-probabilities, if it asks for any.
    pub fn extras(&self) -> Option<&Extras> {
        match self {
            Prompt::With(_, e) => Some(e),
            _ => None,
        }
    }

    /// The tools the model may call, if any.
    pub fn tools(&self) -> Option<&Tools> {
        self.extras().and_then(|e| e.tools.as_ref())
    }

    /// How many alternatives to report with each token's log-probability (None: none).
    pub fn logprobs(&self) -> Option<u8> {
        self.extras().and_then(|e| e.logprobs)
    }

    /// The JSON schema the answer must follow, if any.
    pub fn schema(&self) -> Option<&str> {
        self.extras().and_then(|e| e.schema.as_deref())
    }

    /// `self` with `extras`, when they ask for anything.
    pub fn with(self, extras: Extras) -> Prompt {
        if extras == Extras::default() {
            return self;
        }
        match self {
            Prompt::With(p, _) => Prompt::With(p, extras),
            p => Prompt::With(Box::new(p), extras),
        }
    }
}

/// What a request asks for beyond its prompt and sampling settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extras {
    pub tools: Option<Tools>,
    /// Report each generated token's log-probability, with this many of the likeliest
    /// tokens at its place (0 to 20: OpenAI's `top_logprobs`).
    pub logprobs: Option<u8>,
    /// A JSON schema the answer must follow (OpenAI's `response_format: {"type":
    /// "json_schema"}`), as JSON; the node that runs the request makes its grammar.
    pub schema: Option<String>,
}

/// The most alternatives a token's log-probability comes with (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u8 = 20;

/// Tools the model may call: OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tools {
    /// OpenAI's `tools`, as JSON: an array of `{"type": "function", "function": {"name",
    /// "description", "parameters"}}` (checked when the request was accepted).
    pub json: String,
    pub choice: ToolChoice,
    /// Whether the model may call several tools in one answer.
    pub parallel: bool,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToolChoice {
    /// Text only: the tools are shown to the model, no call is parsed.
    None,
    /// Text or calls, as the model chooses (a call is held to the tools' schemas once it
    /// begins).
    Auto,
    /// At least one call, from the first token.
    Required,
    /// A call of this function, from the first token.
    Function(String),
}

/// A tool call the model made, as OpenAI's `tool_calls` has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// `call_` and a unique suffix (or the id the model gave, where its format has one).
    pub id: String,
    pub name: String,
    /// The arguments, a JSON object as text.
    pub arguments: String,
}

/// A generated token's log-probability, and the likeliest tokens at its place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

/// One of the likeliest tokens at a place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// The model ended its turn (an end-of-generation token) or a stop string appeared.
    Stop,
    /// `max_tokens` were generated, or the context is full.
    Length,
    /// The model called tools ([`Generation::tool_calls`]).
    #[serde(rename = "tool_calls")]
    ToolCalls,
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
    /// The tools the model called (then `text` is what it said besides, often nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Each generated token's log-probability, when the request asked for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
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
    /// The request's tools cannot be used (an unknown function, a schema the grammar
    /// builder cannot take).
    #[error("tools: {0}")]
    Tools(String),
    /// The answer's JSON schema cannot be made into a grammar.
    #[error("response_format.json_schema.schema: {0}")]
    Schema(String),
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
