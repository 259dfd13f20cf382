//! The fields of chat and text completion requests that myco reads, and their checks and
//! conversion into what an infer job takes.

use serde::Deserialize;

/// `stop` is a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The fields of `/v1/chat/completions` and `/v1/completions` that myco reads (others are
/// ignored, as OpenAI-compatible servers do). `top_k`, `min_p`, `repeat_penalty` and `n_ctx`
/// are llama.cpp's extensions.
#[derive(Debug, Deserialize)]
pub(super) struct CompletionRequest {
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
pub(super) struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub tool_calls: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One part of a message's content: `{"type": "text", "text": ...}`, or another type
/// (`image_url`, `input_audio`, `file`), which these models cannot read.
#[derive(Debug, Deserialize)]
pub(super) struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// The messages as the engine takes them (text parts joined by new lines), or the
/// `(param, message)` of the first thing in them myco cannot do.
pub(super) fn messages(
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
pub(super) fn unsupported(req: &CompletionRequest) -> Option<(&'static str, &'static str)> {
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
pub(super) fn json_mode(f: Option<&serde_json::Value>) -> bool {
    f.and_then(|f| f.get("type")).and_then(|t| t.as_str()) == Some("json_object")
}

/// The seed of a request: its own, or a random one when it gives none or -1 (OpenAI's
/// "no seed"); Err for other values outside 0..=4294967295.
pub(super) fn seed(asked: Option<i64>) -> Result<u32, String> {
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
