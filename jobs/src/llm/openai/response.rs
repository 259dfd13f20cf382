//! OpenAI's answer shapes for a finished generation: a chat or text completion, a streamed
//! chunk's choice, usage, tool calls and log-probabilities. Plain JSON from a
//! [`Generation`]: the API answers with them, and a batch writes them as its output lines.

use serde_json::json;

use crate::llm::infer::{Finish, Generation};

/// Which API a completion answers: `/v1/chat/completions` or `/v1/completions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Chat,
    Text,
}

impl Flavor {
    pub fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Flavor::Chat, false) => "chat.completion",
            (Flavor::Chat, true) => "chat.completion.chunk",
            (Flavor::Text, _) => "text_completion",
        }
    }

    /// The completion's id, made from its job's id.
    pub fn id(self, job: impl std::fmt::Display) -> String {
        match self {
            Flavor::Chat => format!("chatcmpl-{job}"),
            Flavor::Text => format!("cmpl-{job}"),
        }
    }

    /// One choice of a streamed chunk.
    pub fn delta(self, text: &str, finish: Option<&str>) -> serde_json::Value {
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

/// What a request's answer carries besides text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    /// It may call tools.
    pub tools: bool,
    /// It asked for log-probabilities.
    pub logprobs: bool,
}

pub fn finish_name(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::ToolCalls => "tool_calls",
    }
}

pub fn usage(g: &Generation) -> serde_json::Value {
    json!({
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": g.cached_tokens },
    })
}

/// The whole (non-streamed) answer of job `job`'s generation `g`, for `model` as the
/// request named it, made at `created` (Unix seconds).
pub fn completion(
    flavor: Flavor,
    job: impl std::fmt::Display,
    model: &str,
    created: u64,
    g: &Generation,
    shape: Shape,
) -> serde_json::Value {
    let finish = finish_name(g.finish_reason);
    let logprobs = if shape.logprobs {
        logprobs_of(flavor, g)
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
                message["tool_calls"] = tool_calls_json(g);
            }
            json!({ "index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish })
        }
        Flavor::Text => json!({
            "index": 0, "text": g.text, "logprobs": logprobs, "finish_reason": finish,
        }),
    };
    let job = job.to_string();
    json!({
        "id": flavor.id(&job),
        "object": flavor.object(false),
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(g),
        // myco's own: the token ids and timings, for clients that want them.
        "myco": {
            "job": job, "tokens": g.tokens,
            "prompt_ms": g.prompt_ms, "generation_ms": g.generation_ms,
        },
    })
}

/// OpenAI's `tool_calls` of a generation.
pub fn tool_calls_json(g: &Generation) -> serde_json::Value {
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
pub fn tool_call_deltas(g: &Generation) -> Vec<serde_json::Value> {
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
pub fn logprobs_of(flavor: Flavor, g: &Generation) -> serde_json::Value {
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
