//! OpenAI-compatible endpoints, so existing clients and RAG tools can use a node:
//! `POST /v1/embeddings`, `POST /v1/chat/completions`, `POST /v1/completions` (both with
//! `stream: true` as server-sent events, or without), `GET /v1/models` and
//! `GET /v1/models/{id}`.
//!
//! A request becomes an ordinary job (kind `embed` or `infer`, high priority so interactive
//! requests go ahead of batch work), goes through the durable queue like any other, and runs
//! wherever the model is. A streaming client that disconnects cancels its job. Errors use
//! OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

use crate::http::auth::Caller;
use crate::http::sse;
use crate::interactive::{self, Follow, Followed, Relay};
use crate::node::handle::NodeHandle;

fn error(
    status: StatusCode,
    kind: &str,
    param: Option<&str>,
    code: &str,
    message: String,
) -> Response {
    (
        status,
        Json(json!({
            "error": { "message": message, "type": kind, "param": param, "code": code }
        })),
    )
        .into_response()
}

/// `input` is a string or a list of strings, or token ids of OpenAI's `cl100k_base`
/// tokenizer (one list, or a list of lists), which LangChain's `OpenAIEmbeddings` sends by
/// default: they are decoded back into the text they stand for.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

/// The text of `cl100k_base` token ids (the tokenizer of OpenAI's embedding models, which
/// OpenAI clients count and send with); Err names the first id that is none of its.
fn decode_ids(ids: &[u32]) -> Result<String, String> {
    let bpe = tiktoken_rs::cl100k_base_singleton();
    bpe.decode(ids).map_err(|e| {
        format!("token ids are read as OpenAI's cl100k_base tokenizer, and these are not its: {e}")
    })
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Input,
    /// `float` (a list of numbers) or `base64` (the little-endian f32 bytes, which the
    /// official client asks for unless told otherwise).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Accepted when it is the model's own size: these models cannot shorten their vectors.
    #[serde(default)]
    pub dimensions: Option<usize>,
    #[serde(default)]
    pub user: Option<String>,
}

/// How `/v1/embeddings` writes each vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Float,
    Base64,
}

/// The longest text `/v1/embeddings` embeds (OpenAI's models take 8192 tokens, these far
/// fewer).
pub const MAX_EMBED_INPUT_BYTES: usize = 64 << 10;
/// The most text one `/v1/embeddings` request carries (OpenAI's limit is 300k tokens).
pub const MAX_EMBED_REQUEST_BYTES: usize = 4 << 20;

/// A model named by its path goes through the same gate as any file a job names: a caller
/// who is not the owner may name only models below the data roots (or in the models
/// folder); names are looked up in the models folder as ever.
fn gate_model(caller: &Caller, name: &str) -> Option<Response> {
    if !myco_jobs::model::is_path(name) {
        return None;
    }
    let outside = caller.access.check(std::path::Path::new(name)).err()?;
    Some(error(
        StatusCode::FORBIDDEN,
        "invalid_request_error",
        Some("model"),
        "outside_data_roots",
        format!("{outside}; name a model of the node (GET /v1/models lists them)"),
    ))
}

pub async fn embeddings(
    State(node): State<NodeHandle>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    let req: EmbeddingsRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "invalid_body",
                format!(
                    "cannot read the request: {e}; send {{\"model\": ..., \"input\": \"text\" or [\"texts\"]}}"
                ),
            );
        }
    };
    let encoding = match req.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("encoding_format"),
                "unsupported_encoding",
                format!("encoding_format `{other}` is not one of \"float\", \"base64\""),
            );
        }
    };
    let texts = match req.input {
        Input::One(t) => vec![t],
        Input::Many(v) => v,
        Input::Tokens(ids) => match decode_ids(&ids) {
            Ok(t) => vec![t],
            Err(e) => return bad_request("input", e),
        },
        Input::ManyTokens(lists) => match lists.iter().map(|ids| decode_ids(ids)).collect() {
            Ok(v) => v,
            Err(e) => return bad_request("input", e),
        },
    };
    if texts.is_empty() || texts.len() > 2048 {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("input"),
            "invalid_input",
            format!("input holds {} texts; send 1 to 2048", texts.len()),
        );
    }
    if let Some(refused) = gate_model(&caller, &req.model) {
        return refused;
    }
    let model = match myco_jobs::model::resolve_embedding(
        &req.model,
        std::path::Path::new(""),
        &node.models_dir(),
    ) {
        Ok(m) => m,
        Err(e) => {
            return error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model"),
                "model_not_found",
                format!(
                    "the model `{}` does not exist on this node: {e}; {}, or see GET /api/swarm for the models nodes hold",
                    req.model,
                    e.hint()
                ),
            );
        }
    };
    // Bounded before anything is tokenized (a tokenizer holds every token of a text, and
    // the model reads only its first few hundred).
    if let Some((i, t)) = texts
        .iter()
        .enumerate()
        .find(|(_, t)| t.len() > MAX_EMBED_INPUT_BYTES)
    {
        return bad_request(
            "input",
            format!(
                "input {i} is {} bytes, more than the {MAX_EMBED_INPUT_BYTES} an input may have (the model reads only its first {} tokens); chunk the text (myco's chunk jobs do) and send the pieces",
                t.len(),
                myco_jobs::model::embedding_max_length(&model.path)
            ),
        );
    }
    let total: usize = texts.iter().map(String::len).sum();
    if total > MAX_EMBED_REQUEST_BYTES {
        return bad_request(
            "input",
            format!(
                "the inputs are {total} bytes together, more than the {MAX_EMBED_REQUEST_BYTES} a request may have; send them in several requests"
            ),
        );
    }
    let estimated_tokens: usize = texts.iter().map(|t| t.len() / 4 + 2).sum();
    let vectors = match interactive::embed_now(&node, model, texts).await {
        Ok(v) => v,
        Err(interactive::EmbedError::Queue(e)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                "queue_unavailable",
                format!("{e}; try again later"),
            );
        }
        // The model's files (a bad tokenizer, a broken model.onnx) or a timeout: not the
        // request's fault, and not a bug.
        Err(interactive::EmbedError::Failed(e)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("model"),
                "model_unavailable",
                format!(
                    "{e}; check the model's directory (model.onnx, tokenizer.json and its config files; ./setup.sh fetches the default again)"
                ),
            );
        }
    };
    if let Some(d) = req.dimensions
        && let Some(have) = vectors.first().map(Vec::len)
        && d != have
    {
        return bad_request(
            "dimensions",
            format!(
                "`{}` makes {have}-dimensional vectors and cannot shorten them; leave dimensions out, or set it to {have}",
                req.model
            ),
        );
    }
    let data: Vec<_> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = match encoding {
                Encoding::Float => json!(v),
                Encoding::Base64 => json!(base64_f32(&v)),
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        // An estimate (4 bytes a token) until the tokenizer counts them.
        "usage": { "prompt_tokens": estimated_tokens, "total_tokens": estimated_tokens },
    }))
    .into_response()
}

/// A vector as OpenAI's `base64` encoding has it: the f32 values' little-endian bytes.
fn base64_f32(v: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `stop` is a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The fields of `/v1/chat/completions` and `/v1/completions` that myco reads (others are
/// ignored, as OpenAI-compatible servers do). `top_k`, `min_p`, `repeat_penalty` and `n_ctx`
/// are llama.cpp's extensions.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<i32>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub repeat_penalty: Option<f32>,
    /// Absent or -1: a random seed (the result's job records it).
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub n_ctx: Option<u32>,
    /// myco's extension: the chat template (a llama.cpp template name or a template text).
    #[serde(default)]
    pub chat_template: Option<String>,
    /// llama-server's extension: a GBNF grammar the output must follow.
    #[serde(default)]
    pub grammar: Option<String>,
    /// myco's extension: decode threads (default: the node's `--threads`).
    #[serde(default)]
    pub threads: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    /// Fields myco does not implement: each is refused by name when set (a client that
    /// asks for tools or JSON output must not get plain text it takes for them).
    #[serde(default)]
    pub tools: Option<serde_json::Value>,
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    pub functions: Option<serde_json::Value>,
    #[serde(default)]
    pub function_call: Option<serde_json::Value>,
    #[serde(default)]
    pub response_format: Option<serde_json::Value>,
    #[serde(default)]
    pub logprobs: Option<serde_json::Value>,
    #[serde(default)]
    pub top_logprobs: Option<serde_json::Value>,
}

/// A chat message as OpenAI clients send it: `content` a string, a list of parts, or null.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub tool_calls: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One part of a message's content: `{"type": "text", "text": ...}`, or another type
/// (`image_url`, `input_audio`, `file`), which these models cannot read.
#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// The messages as the engine takes them (text parts joined by new lines), or the
/// `(param, message)` of the first thing in them myco cannot do.
fn messages(
    list: Vec<ChatMessage>,
) -> Result<Vec<myco_jobs::llm::infer::Message>, (String, String)> {
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.into_iter().enumerate() {
        if m.tool_calls.is_some() || m.role == "tool" || m.role == "function" {
            return Err((
                format!("messages[{i}]"),
                "tool calls are not supported: these models answer in text".into(),
            ));
        }
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for (j, part) in parts.into_iter().enumerate() {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => texts.push(t),
                        ("text", None) => {
                            return Err((
                                format!("messages[{i}].content[{j}].text"),
                                "a text part needs `text`".into(),
                            ));
                        }
                        (other, _) => {
                            return Err((
                                format!("messages[{i}].content[{j}].type"),
                                format!(
                                    "`{other}` parts are not supported: these models read text; send `text` parts"
                                ),
                            ));
                        }
                    }
                }
                texts.join("\n")
            }
        };
        out.push(myco_jobs::llm::infer::Message {
            role: m.role,
            content,
        });
    }
    Ok(out)
}

/// The first field of `req` myco does not implement, if any is set (`response_format`
/// `{"type": "text"}` and `logprobs: false` ask for nothing).
fn unsupported(req: &CompletionRequest) -> Option<(&'static str, &'static str)> {
    let set = |v: &Option<serde_json::Value>| v.as_ref().is_some_and(|v| !v.is_null());
    if set(&req.tools) || set(&req.functions) {
        return Some((
            if set(&req.tools) {
                "tools"
            } else {
                "functions"
            },
            "tool calls are not supported yet: these models answer in text",
        ));
    }
    if set(&req.tool_choice) || set(&req.function_call) {
        return Some((
            if set(&req.tool_choice) {
                "tool_choice"
            } else {
                "function_call"
            },
            "tool calls are not supported yet: these models answer in text",
        ));
    }
    if let Some(f) = req.response_format.as_ref().filter(|v| !v.is_null()) {
        match f.get("type").and_then(|t| t.as_str()) {
            Some("text" | "json_object") => {}
            Some("json_schema") => {
                return Some((
                    "response_format.json_schema",
                    "JSON-schema output is not supported yet; use {\"type\": \"json_object\"} (JSON mode) and describe the fields in the prompt",
                ));
            }
            _ => {
                return Some(("response_format.type", "use \"text\" or \"json_object\""));
            }
        }
    }
    if req
        .logprobs
        .as_ref()
        .is_some_and(|v| v.as_bool() == Some(true) || v.as_u64().is_some_and(|n| n > 0))
        || set(&req.top_logprobs)
    {
        return Some((
            if set(&req.top_logprobs) {
                "top_logprobs"
            } else {
                "logprobs"
            },
            "log probabilities are not supported yet",
        ));
    }
    None
}

/// Whether `response_format` asks for JSON mode (`{"type": "json_object"}`).
fn json_mode(f: Option<&serde_json::Value>) -> bool {
    f.and_then(|f| f.get("type")).and_then(|t| t.as_str()) == Some("json_object")
}

/// The seed of a request: its own, or a random one when it gives none or -1 (OpenAI's
/// "no seed"); Err for other values outside 0..=4294967295.
fn seed(asked: Option<i64>) -> Result<u32, String> {
    match asked {
        None | Some(-1) => {
            let mut b = [0u8; 4];
            getrandom::fill(&mut b).map_err(|e| format!("no randomness for a seed: {e}"))?;
            Ok(u32::from_le_bytes(b))
        }
        Some(n) => u32::try_from(n).map_err(|_| {
            format!(
                "seed {n} is out of range; use 0 to 4294967295, or -1 (or none) for a random one"
            )
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Chat,
    Text,
}

impl Flavor {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Flavor::Chat, false) => "chat.completion",
            (Flavor::Chat, true) => "chat.completion.chunk",
            (Flavor::Text, _) => "text_completion",
        }
    }

    fn id(self, job: myco_runtime::queue::JobId) -> String {
        match self {
            Flavor::Chat => format!("chatcmpl-{job}"),
            Flavor::Text => format!("cmpl-{job}"),
        }
    }

    /// One choice of a streamed chunk.
    fn delta(self, text: &str, finish: Option<&str>) -> serde_json::Value {
        match self {
            Flavor::Chat => json!({
                "index": 0,
                "delta": if text.is_empty() && finish.is_none() {
                    json!({ "role": "assistant", "content": "" })
                } else if text.is_empty() {
                    json!({})
                } else {
                    json!({ "content": text })
                },
                "finish_reason": finish,
            }),
            Flavor::Text => json!({
                "index": 0, "text": text, "logprobs": null, "finish_reason": finish,
            }),
        }
    }
}

/// The longest a non-streaming request waits for its answer.
const WAIT_LIMIT: Duration = Duration::from_secs(900);

fn bad_request(param: &str, message: String) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        Some(param),
        "invalid_value",
        message,
    )
}

pub async fn chat_completions(
    State(node): State<NodeHandle>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    complete(node, caller, body, Flavor::Chat).await
}

pub async fn completions(
    State(node): State<NodeHandle>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    complete(node, caller, body, Flavor::Text).await
}

/// `GET /v1/models`: the GGUF models the swarm holds (for chat and completions, with the
/// nodes that hold them), and this node's embedding models.
pub async fn models(State(node): State<NodeHandle>) -> Response {
    let data = model_list(&node).await;
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// `GET /v1/models/{id}`: one of [`models`], by id or file name.
pub async fn model(
    State(node): State<NodeHandle>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let found = model_list(&node)
        .await
        .into_iter()
        .find(|m| m["id"] == id.as_str() || m["file"] == id.as_str());
    match found {
        Some(m) => Json(m).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model"),
            "model_not_found",
            format!("the model `{id}` does not exist in this swarm; GET /v1/models lists them"),
        ),
    }
}

async fn model_list(node: &NodeHandle) -> Vec<serde_json::Value> {
    let mut data: Vec<_> = node
        .swarm_models()
        .await
        .into_iter()
        .map(|m| {
            json!({
                "id": m.id, "object": "model", "created": 0, "owned_by": "myco",
                "kind": "llm", "file": m.file, "bytes": m.bytes,
                "architecture": m.architecture, "nodes": m.nodes, "sha256": m.sha256,
            })
        })
        .collect();
    let dir = node.models_dir();
    let local = tokio::task::spawn_blocking(move || myco_jobs::model::scan(&dir))
        .await
        .unwrap_or_default();
    data.extend(
        local
            .into_iter()
            .filter(|m| m.format == myco_jobs::model::ModelFormat::Onnx)
            .map(|m| {
                json!({
                    "id": m.name, "object": "model", "created": 0, "owned_by": "myco",
                    "kind": "embedding", "bytes": m.size_bytes,
                })
            }),
    );
    data
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn complete(
    node: NodeHandle,
    caller: Caller,
    body: axum::body::Bytes,
    flavor: Flavor,
) -> Response {
    let req: CompletionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let shape = match flavor {
                Flavor::Chat => {
                    "{\"model\": ..., \"messages\": [{\"role\": \"user\", \"content\": ...}]}"
                }
                Flavor::Text => "{\"model\": ..., \"prompt\": ...}",
            };
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "invalid_body",
                format!("cannot read the request: {e}; send {shape}"),
            );
        }
    };
    if let Some((param, why)) = unsupported(&req) {
        return bad_request(param, format!("{param}: {why}"));
    }
    let seed = match seed(req.seed) {
        Ok(s) => s,
        Err(why) => return bad_request("seed", why),
    };
    let prompt = match (flavor, req.messages, req.prompt) {
        (Flavor::Chat, Some(m), _) if !m.is_empty() => match messages(m) {
            Ok(m) => myco_jobs::llm::infer::Prompt::Chat(m),
            Err((param, why)) => return bad_request(&param, format!("{param}: {why}")),
        },
        (Flavor::Chat, _, _) => {
            return bad_request("messages", "messages is missing or empty".into());
        }
        (Flavor::Text, _, Some(p)) => myco_jobs::llm::infer::Prompt::Text(p),
        (Flavor::Text, _, None) => return bad_request("prompt", "prompt is missing".into()),
    };
    if req.n.is_some_and(|n| n != 1) {
        return bad_request("n", "only n = 1 is supported".into());
    }
    // Checked as a job file's `[infer]` is: one set of rules wherever a request comes from.
    let req_n_ctx = req.n_ctx;
    let options = myco_jobs::llm::infer::InferOptions {
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_k: req.top_k,
        top_p: req.top_p,
        min_p: req.min_p,
        repeat_penalty: req.repeat_penalty,
        seed: Some(seed),
        stop: match req.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        },
        n_ctx: req_n_ctx,
        chat_template: req.chat_template,
        json: json_mode(req.response_format.as_ref()),
        grammar: req.grammar,
        threads: req.threads,
        ..myco_jobs::llm::infer::InferOptions::default()
    };
    let params = match options.params("") {
        Ok(p) => p,
        Err(problems) => {
            let param = problems
                .first()
                .map(|p| p.field.clone())
                .unwrap_or_default();
            let message = problems
                .iter()
                .map(|p| format!("{}: {}; {}", p.field, p.message, p.hint))
                .collect::<Vec<_>>()
                .join("\n");
            return bad_request(&param, message);
        }
    };
    if let Some(refused) = gate_model(&caller, &req.model) {
        return refused;
    }
    let model = match node.find_model(&req.model).await {
        Ok(m) => m,
        Err(e) => {
            return error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model"),
                "model_not_found",
                e.to_string(),
            );
        }
    };
    // The context is bounded by the model (its trained context) before anything is
    // allocated; the node that runs it checks again, and its memory.
    let mut params = params;
    if model.path.is_file() {
        let path = model.path.clone();
        let (asked, default) = (req_n_ctx, params.n_ctx);
        let fitted = tokio::task::spawn_blocking(move || {
            myco_jobs::model::fit_context_of(&path, asked, default)
        })
        .await;
        match fitted {
            Ok(Ok(n_ctx)) => params.n_ctx = n_ctx,
            Ok(Err(e @ myco_jobs::model::FitError::Context(_))) => {
                return bad_request("n_ctx", e.to_string());
            }
            Ok(Err(e)) => return bad_request("model", e.to_string()),
            Err(_) => {}
        }
    }
    let task = myco_jobs::llm::infer::InferTask {
        gpu: false,
        model,
        prompt,
        params,
    };
    let id = match interactive::submit(&node, task).await {
        Ok(id) => id,
        // A request this model cannot serve as it runs (split into stages, with a grammar).
        Err(myco_runtime::queue::QueueError::Invalid(why)) => {
            return bad_request("response_format", why);
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                "queue",
                e.to_string(),
            );
        }
    };
    let mut rx = interactive::spawn_follow(
        &node,
        id,
        Follow {
            cancel_on_drop: req.stream,
            progress: false,
        },
    );
    let name = req.model;
    if !req.stream {
        // The whole answer at once: wait for the end, at most WAIT_LIMIT (then the job is
        // cancelled: it may wait for a node holding its model that never comes). A client
        // that goes away stops waiting, and the job still finishes (its result stays on
        // record).
        let wait = async {
            loop {
                match rx.recv().await {
                    Some(Followed::Piece(_) | Followed::Progress(_)) => {}
                    Some(Followed::End(rec)) => return Some(rec),
                    None => return None,
                }
            }
        };
        return match tokio::time::timeout(WAIT_LIMIT, wait).await {
            Ok(Some(rec)) => finished(&node, flavor, &name, *rec).await,
            Ok(None) => failed_internal(id),
            Err(_) => {
                let _ = node.cancel(id).await;
                error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "server_error",
                    None,
                    "timeout",
                    format!(
                        "request {id} did not finish within {} s and was cancelled; GET /api/jobs/{id} says why it waited",
                        WAIT_LIMIT.as_secs()
                    ),
                )
            }
        };
    }
    // Wait for the first event: a request that fails at once (a prompt too long, no chat
    // template) gets a plain error response, not a broken stream.
    let first = match rx.recv().await {
        Some(Followed::End(rec)) if rec.state != myco_runtime::queue::JobState::Done => {
            return failed(&rec);
        }
        Some(first) => first,
        None => return failed_internal(id),
    };
    let created = unix_now();
    let (mut sse, response) = sse::channel();
    let edge = node.clone();
    edge.spawn_edge(async move {
        let frame = |v: serde_json::Value| format!("data: {v}\n\n").into_bytes();
        let chunk = |choice: serde_json::Value| {
            json!({
                "id": flavor.id(id), "object": flavor.object(true), "created": created,
                "model": name, "choices": [choice],
            })
        };
        if flavor == Flavor::Chat && !sse.send(frame(chunk(flavor.delta("", None)))).await {
            return;
        }
        let mut relay = Relay::default();
        let mut next = Some(first);
        // Returning drops `rx`: a client that went away cancels the job.
        while let Some(event) = match next.take() {
            Some(e) => Some(e),
            None => sse.next(&mut rx).await,
        } {
            match event {
                Followed::Progress(_) => {}
                Followed::Piece(p) => {
                    if let Some(text) = relay.piece(&p)
                        && !sse.send(frame(chunk(flavor.delta(&text, None)))).await
                    {
                        return;
                    }
                }
                Followed::End(rec) => {
                    let out = match generation(&node, &rec).await {
                        Ok(g) => {
                            let mut out = Vec::new();
                            if let Some(rest) = relay.rest(&g.text) {
                                out.push(frame(chunk(flavor.delta(&rest, None))));
                            }
                            let finish = finish_name(g.finish_reason);
                            let mut last = chunk(flavor.delta("", Some(finish)));
                            last["usage"] = usage(&g);
                            out.push(frame(last));
                            out
                        }
                        Err((_, kind, code, message)) => vec![frame(json!({
                            "error": { "message": message, "type": kind, "param": null, "code": code }
                        }))],
                    };
                    for f in out {
                        sse.send(f).await;
                    }
                    sse.send(b"data: [DONE]\n\n".to_vec()).await;
                    return;
                }
            }
        }
    });
    response
}

fn finish_name(f: myco_jobs::llm::infer::Finish) -> &'static str {
    match f {
        myco_jobs::llm::infer::Finish::Stop => "stop",
        myco_jobs::llm::infer::Finish::Length => "length",
    }
}

fn usage(g: &myco_jobs::llm::infer::Generation) -> serde_json::Value {
    json!({
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": g.cached_tokens },
    })
}

fn failed_internal(id: myco_runtime::queue::JobId) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        None,
        "internal",
        format!("lost track of job {id}"),
    )
}

/// A finished job's generation, or the error to answer with (status, type, code, message).
async fn generation(
    node: &NodeHandle,
    rec: &myco_runtime::queue::JobRecord,
) -> Result<myco_jobs::llm::infer::Generation, (StatusCode, &'static str, &'static str, String)> {
    use myco_runtime::queue::JobState;
    let id = rec.id;
    match rec.state {
        JobState::Done => {}
        JobState::Cancelled => {
            return Err((
                StatusCode::CONFLICT,
                "server_error",
                "cancelled",
                format!("request {id} was cancelled"),
            ));
        }
        _ => {
            let why = rec
                .last_error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| "unknown".into());
            // The request's own faults are fatal in the engine: report them as the
            // client's; anything else is the server's.
            let fatal = rec.last_error.as_ref().is_some_and(|e| !e.is_retryable());
            return Err(if fatal {
                (
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_request",
                    why,
                )
            } else {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "failed",
                    why,
                )
            });
        }
    }
    interactive::generation(node, id).await.map_err(|why| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal",
            why,
        )
    })
}

fn failed(rec: &myco_runtime::queue::JobRecord) -> Response {
    let (status, kind, code, message) = match rec.state {
        myco_runtime::queue::JobState::Cancelled => (
            StatusCode::CONFLICT,
            "server_error",
            "cancelled",
            format!("request {} was cancelled", rec.id),
        ),
        _ => {
            let e = rec.last_error.as_ref();
            let message = e
                .map(|e| e.message.clone())
                .unwrap_or_else(|| "unknown".into());
            if e.is_some_and(|e| !e.is_retryable()) {
                (
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_request",
                    message,
                )
            } else {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "failed",
                    message,
                )
            }
        }
    };
    error(status, kind, None, code, message)
}

/// The non-streaming answer for a finished job.
async fn finished(
    node: &NodeHandle,
    flavor: Flavor,
    model: &str,
    rec: myco_runtime::queue::JobRecord,
) -> Response {
    let g = match generation(node, &rec).await {
        Ok(g) => g,
        Err((status, kind, code, message)) => return error(status, kind, None, code, message),
    };
    let finish = finish_name(g.finish_reason);
    let choice = match flavor {
        Flavor::Chat => json!({
            "index": 0,
            "message": { "role": "assistant", "content": g.text },
            "finish_reason": finish,
        }),
        Flavor::Text => json!({
            "index": 0, "text": g.text, "logprobs": null, "finish_reason": finish,
        }),
    };
    Json(json!({
        "id": flavor.id(rec.id),
        "object": flavor.object(false),
        "created": unix_now(),
        "model": model,
        "choices": [choice],
        "usage": usage(&g),
        // myco's own: the token ids and timings, for clients that want them.
        "myco": {
            "job": rec.id, "tokens": g.tokens,
            "prompt_ms": g.prompt_ms, "generation_ms": g.generation_ms,
        },
    }))
    .into_response()
}

/// The OpenAI-compatible routes.
pub fn routes() -> axum::Router<NodeHandle> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
}
