//! Answers: the shape of a completion or a streamed chunk, usage, and the errors of jobs that
//! did not finish.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{error, unix_now};
use crate::interactive;
use crate::node::handle::NodeHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    Chat,
    Text,
}

impl Flavor {
    pub(super) fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Flavor::Chat, false) => "chat.completion",
            (Flavor::Chat, true) => "chat.completion.chunk",
            (Flavor::Text, _) => "text_completion",
        }
    }

    pub(super) fn id(self, job: myco_runtime::queue::JobId) -> String {
        match self {
            Flavor::Chat => format!("chatcmpl-{job}"),
            Flavor::Text => format!("cmpl-{job}"),
        }
    }

    /// One choice of a streamed chunk.
    pub(super) fn delta(self, text: &str, finish: Option<&str>) -> serde_json::Value {
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

pub(super) fn finish_name(f: myco_jobs::llm::infer::Finish) -> &'static str {
    match f {
        myco_jobs::llm::infer::Finish::Stop => "stop",
        myco_jobs::llm::infer::Finish::Length => "length",
        myco_jobs::llm::infer::Finish::ToolCalls => "tool_calls",
    }
}

pub(super) fn usage(g: &myco_jobs::llm::infer::Generation) -> serde_json::Value {
    json!({
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": g.cached_tokens },
    })
}

pub(super) fn failed_internal(id: myco_runtime::queue::JobId) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        None,
        "internal",
        format!("lost track of job {id}"),
    )
}

/// A finished job's generation, or the error to answer with (status, type, code, message).
pub(super) async fn generation(
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

pub(super) fn failed(rec: &myco_runtime::queue::JobRecord) -> Response {
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

/// What a request's answer carries besides text.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    /// It may call tools.
    pub tools: bool,
    /// It asked for log-probabilities.
    pub logprobs: bool,
}

/// The non-streaming answer for a finished job.
pub(super) async fn finished(
    node: &NodeHandle,
    flavor: Flavor,
    model: &str,
    rec: myco_runtime::queue::JobRecord,
    shape: Shape,
) -> Response {
    let g = match generation(node, &rec).await {
        Ok(g) => g,
        Err((status, kind, code, message)) => return error(status, kind, None, code, message),
    };
    let finish = finish_name(g.finish_reason);
    let logprobs = if shape.logprobs {
        logprobs_of(flavor, &g)
    } else {
        serde_json::Value::Null
    };
    let choice = match flavor {
        Flavor::Chat => {
            let mut message = json!({ "role": "assistant", "content": g.text });
            if !g.tool_calls.is_empty() {
                if g.text.is_empty() {
                    message["content"] = serde_json::Value::Null;
                }
                message["tool_calls"] = tool_calls_json(&g);
            }
            json!({ "index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish })
        }
        Flavor::Text => json!({
            "index": 0, "text": g.text, "logprobs": logprobs, "finish_reason": finish,
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

/// OpenAI's `tool_calls` of a generation.
pub(super) fn tool_calls_json(g: &myco_jobs::llm::infer::Generation) -> serde_json::Value {
    g.tool_calls
        .iter()
        .map(|c| {
            json!({
                "id": c.id, "type": "function",
                "function": { "name": c.name, "arguments": c.arguments },
            })
        })
        .collect()
}

/// A stream's tool-call deltas, as OpenAI sends them: for each call its index, id and name
/// (with empty arguments), then its arguments in pieces.
pub(super) fn tool_call_deltas(g: &myco_jobs::llm::infer::Generation) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for (index, c) in g.tool_calls.iter().enumerate() {
        out.push(
            json!({ "role": "assistant", "content": null, "tool_calls": [{
                "index": index, "id": c.id, "type": "function",
                "function": { "name": c.name, "arguments": "" },
            }]}),
        );
        let chars: Vec<char> = c.arguments.chars().collect();
        for piece in chars.chunks(24) {
            out.push(json!({ "tool_calls": [{
                "index": index,
                "function": { "arguments": piece.iter().collect::<String>() },
            }]}));
        }
    }
    out
}

/// The `logprobs` of a choice: chat's `{"content": [{token, logprob, bytes,
/// top_logprobs}]}`, or the completions API's `{tokens, token_logprobs, top_logprobs,
/// text_offset}`.
pub(super) fn logprobs_of(
    flavor: Flavor,
    g: &myco_jobs::llm::infer::Generation,
) -> serde_json::Value {
    let list = g.logprobs.as_deref().unwrap_or_default();
    match flavor {
        Flavor::Chat => json!({
            "content": list.iter().map(|t| json!({
                "token": t.token, "logprob": t.logprob, "bytes": t.bytes,
                "top_logprobs": t.top.iter().map(|a| json!({
                    "token": a.token, "logprob": a.logprob, "bytes": a.bytes,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "refusal": null,
        }),
        Flavor::Text => {
            let mut offset = 0usize;
            let mut offsets = Vec::with_capacity(list.len());
            for t in list {
                offsets.push(offset);
                offset += t.token.len();
            }
            json!({
                "tokens": list.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
                "token_logprobs": list.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                "top_logprobs": list.iter().map(|t| {
                    t.top.iter().map(|a| (a.token.clone(), json!(a.logprob))).collect::<serde_json::Map<_, _>>()
                }).collect::<Vec<_>>(),
                "text_offset": offsets,
            })
        }
    }
}
