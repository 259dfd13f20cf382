//! The fields of chat and text completion requests that myco reads, and their checks and
//! conversion into what an infer job takes.

use super::response::{Flavor, Shape};
use crate::llm::infer::{Extras, MAX_TOP_LOGPROBS, Prompt, ToolChoice, Tools};
use serde::Deserialize;

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
    /// OpenAI's `tools`, kept as the client wrote them (the order of a schema's properties
    /// is the order the model sees them and writes the arguments in).
    #[serde(default)]
    pub tools: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// The deprecated forms of `tools` and `tool_choice`: refused with a pointer to them.
    #[serde(default)]
    pub functions: Option<serde_json::Value>,
    #[serde(default)]
    pub function_call: Option<serde_json::Value>,
    #[serde(default)]
    pub response_format: Option<serde_json::Value>,
    /// Chat: `true` for each token's log-probability; completions: the number of
    /// alternatives (OpenAI's legacy form).
    #[serde(default)]
    pub logprobs: Option<serde_json::Value>,
    #[serde(default)]
    pub top_logprobs: Option<serde_json::Value>,
}

/// A chat message as OpenAI clients send it: `content` a string, a list of parts, or null;
/// an assistant turn may carry the tool calls it made, a `tool` turn answers one.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub tool_calls: Option<Vec<CallIn>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// A tool call of an earlier assistant turn.
#[derive(Debug, Deserialize)]
pub struct CallIn {
    #[serde(default)]
    pub id: Option<String>,
    pub function: FunctionIn,
}

#[derive(Debug, Deserialize)]
pub struct FunctionIn {
    pub name: String,
    /// A JSON object as text (OpenAI's form), or the object itself.
    #[serde(default)]
    pub arguments: Option<serde_json::Value>,
}

/// A turn as the chat template sees it (OpenAI's shape, keys in this order).
#[derive(Debug, serde::Serialize)]
struct TurnOut {
    role: String,
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<String>,
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

/// The messages as the engine takes them: plain `(role, content)` turns (text parts joined
/// by new lines) as [`Prompt::Chat`], or, when any turn calls tools or answers a call, all
/// of them as OpenAI's JSON ([`Prompt::Turns`], which the model's Jinja template renders).
/// Err: the `(param, message)` of the first thing in them myco cannot do.
pub fn messages(list: Vec<ChatMessage>) -> Result<Prompt, (String, String)> {
    let tooling = list
        .iter()
        .any(|m| m.tool_calls.as_ref().is_some_and(|c| !c.is_empty()) || m.role == "tool");
    let mut plain = Vec::with_capacity(list.len());
    let mut turns = Vec::with_capacity(list.len());
    for (i, m) in list.into_iter().enumerate() {
        if m.role == "function" {
            return Err((
                format!("messages[{i}].role"),
                "`function` turns are OpenAI's deprecated form: send `tool` turns with `tool_call_id`".into(),
            ));
        }
        let content = match m.content {
            None => None,
            Some(Content::Text(t)) => Some(t),
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
                Some(texts.join("\n"))
            }
        };
        if m.role == "tool" && m.tool_call_id.is_none() {
            return Err((
                format!("messages[{i}].tool_call_id"),
                "a `tool` turn answers a call: give the call's id as `tool_call_id`".into(),
            ));
        }
        let calls = match m.tool_calls {
            Some(calls) if !calls.is_empty() => {
                let mut out = Vec::with_capacity(calls.len());
                for (j, c) in calls.into_iter().enumerate() {
                    let arguments = match c.function.arguments {
                        None => "{}".to_owned(),
                        Some(serde_json::Value::String(s)) => s,
                        Some(v @ serde_json::Value::Object(_)) => v.to_string(),
                        Some(_) => {
                            return Err((
                                format!("messages[{i}].tool_calls[{j}].function.arguments"),
                                "arguments are a JSON object, or its text".into(),
                            ));
                        }
                    };
                    out.push(serde_json::json!({
                        "id": c.id.unwrap_or_else(|| format!("call_{i}_{j}")),
                        "type": "function",
                        "function": { "name": c.function.name, "arguments": arguments },
                    }));
                }
                Some(out)
            }
            _ => None,
        };
        plain.push(crate::llm::infer::Message {
            role: m.role.clone(),
            content: content.clone().unwrap_or_default(),
        });
        turns.push(TurnOut {
            role: m.role,
            content,
            name: m.name,
            tool_calls: calls,
            tool_call_id: m.tool_call_id,
        });
    }
    if !tooling {
        // The shape every node reads (and an older node can run).
        return Ok(Prompt::Chat(plain));
    }
    serde_json::to_string(&turns)
        .map(Prompt::Turns)
        .map_err(|e| ("messages".into(), e.to_string()))
}

/// What a request asks for beyond its prompt: tools, log-probabilities, a JSON schema.
/// Err: the `(param, message)` of what is wrong with them.
pub fn extras(req: &CompletionRequest, chat: bool) -> Result<Extras, (String, String)> {
    let set = |v: &Option<serde_json::Value>| v.as_ref().is_some_and(|v| !v.is_null());
    if set(&req.functions) || set(&req.function_call) {
        let param = if set(&req.functions) {
            "functions"
        } else {
            "function_call"
        };
        return Err((
            param.into(),
            format!("`{param}` is OpenAI's deprecated form: send `tools` and `tool_choice`"),
        ));
    }
    let mut extras = Extras::default();
    if let Some(raw) = &req.tools {
        if !chat {
            return Err((
                "tools".into(),
                "tools need /v1/chat/completions (chat messages)".into(),
            ));
        }
        let json = raw.get().to_owned();
        let list = crate::llm::tools::parse_tools(&json)?;
        for (i, t) in list.iter().enumerate() {
            schema_ok(&t.parameters)
                .map_err(|why| (format!("tools[{i}].function.parameters"), why))?;
        }
        let choice = match req.tool_choice.as_ref() {
            None | Some(serde_json::Value::Null) => ToolChoice::Auto,
            Some(serde_json::Value::String(s)) => match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                other => {
                    return Err((
                        "tool_choice".into(),
                        format!(
                            "`{other}` is none of \"none\", \"auto\", \"required\", or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
                        ),
                    ));
                }
            },
            Some(v) => {
                let Some(name) = v
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(|n| n.as_str())
                else {
                    return Err((
                        "tool_choice".into(),
                        "name a function: {\"type\": \"function\", \"function\": {\"name\": ...}}"
                            .into(),
                    ));
                };
                if !list.iter().any(|t| t.name == name) {
                    return Err(crate::llm::tools::unknown_function(name, &list));
                }
                ToolChoice::Function(name.to_owned())
            }
        };
        extras.tools = Some(Tools {
            json,
            choice,
            parallel: req.parallel_tool_calls.unwrap_or(true),
        });
    } else if set(&req.tool_choice)
        && req.tool_choice.as_ref().and_then(|v| v.as_str()) != Some("none")
    {
        return Err(("tool_choice".into(), "tool_choice needs `tools`".into()));
    }
    if let Some(f) = req.response_format.as_ref().filter(|v| !v.is_null()) {
        match f.get("type").and_then(|t| t.as_str()) {
            Some("text" | "json_object") => {}
            Some("json_schema") => {
                let Some(schema) = f.get("json_schema").and_then(|j| j.get("schema")) else {
                    return Err((
                        "response_format.json_schema.schema".into(),
                        "give the schema: {\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}".into(),
                    ));
                };
                if !schema.is_object() {
                    return Err((
                        "response_format.json_schema.schema".into(),
                        "the schema is a JSON object".into(),
                    ));
                }
                schema_ok(schema)
                    .map_err(|why| ("response_format.json_schema.schema".to_owned(), why))?;
                if extras.tools.is_some() {
                    return Err((
                        "response_format".into(),
                        "a JSON schema for the answer cannot go with tools".into(),
                    ));
                }
                extras.schema = Some(schema.to_string());
            }
            _ => {
                return Err((
                    "response_format.type".into(),
                    "use \"text\", \"json_object\" or \"json_schema\"".into(),
                ));
            }
        }
    }
    let top = match req.top_logprobs.as_ref().filter(|v| !v.is_null()) {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n) if n <= u64::from(MAX_TOP_LOGPROBS) => Some(n as u8),
            _ => {
                return Err((
                    "top_logprobs".into(),
                    format!("use 0 to {MAX_TOP_LOGPROBS}"),
                ));
            }
        },
    };
    let asked = match req.logprobs.as_ref() {
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => None,
        Some(serde_json::Value::Bool(true)) if chat => Some(top.unwrap_or(0)),
        // The completions API's legacy form: logprobs is the number of alternatives.
        Some(v) if !chat && v.as_u64().is_some() => match v.as_u64() {
            Some(n) if n <= u64::from(MAX_TOP_LOGPROBS) => Some(n as u8),
            _ => {
                return Err(("logprobs".into(), format!("use 0 to {MAX_TOP_LOGPROBS}")));
            }
        },
        Some(_) => {
            return Err((
                "logprobs".into(),
                if chat {
                    "logprobs is true or false (top_logprobs says how many alternatives)".into()
                } else {
                    format!("logprobs is the number of alternatives, 0 to {MAX_TOP_LOGPROBS}")
                },
            ));
        }
    };
    if top.is_some() && asked.is_none() {
        return Err((
            "top_logprobs".into(),
            "top_logprobs needs logprobs: true".into(),
        ));
    }
    extras.logprobs = asked;
    Ok(extras)
}

/// Whether llama.cpp's grammar builder takes `schema`: checked when the request arrives, so
/// that a schema it cannot take is a 400 naming it rather than a failed job (without the
/// engine in this build, the node that runs the request says).
fn schema_ok(schema: &serde_json::Value) -> Result<(), String> {
    #[cfg(feature = "infer")]
    {
        crate::llm::infer::engine::grammar_of_schema(schema)
            .map(|_| ())
            .map_err(|why| format!("the grammar builder cannot take this schema: {why}"))
    }
    #[cfg(not(feature = "infer"))]
    {
        let _ = schema;
        Ok(())
    }
}

/// Whether `response_format` asks for JSON mode (`{"type": "json_object"}`).
pub fn json_mode(f: Option<&serde_json::Value>) -> bool {
    f.and_then(|f| f.get("type")).and_then(|t| t.as_str()) == Some("json_object")
}

/// The seed of a request: its own, or a random one when it gives none or -1 (OpenAI's
/// "no seed"); Err for other values outside 0..=4294967295.
pub fn seed(asked: Option<i64>) -> Result<u32, String> {
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

/// A request myco cannot serve as given: the parameter at fault and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub param: String,
    pub message: String,
}

impl Refusal {
    fn new(param: impl Into<String>, message: impl Into<String>) -> Refusal {
        Refusal {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// A completion request read into what an infer job takes (all but the model, which the
/// node resolves).
#[derive(Debug)]
pub struct Converted {
    /// The model as the request names it.
    pub model: String,
    pub prompt: Prompt,
    pub params: crate::llm::infer::InferParams,
    /// The context the request asks for (`n_ctx`), if any.
    pub n_ctx: Option<u32>,
    pub shape: Shape,
    pub stream: bool,
}

/// The body of a chat (`Flavor::Chat`) or text completion request, read; Err: a message
/// that says what was sent and the shape to send.
pub fn parse(body: &[u8], flavor: Flavor) -> Result<CompletionRequest, String> {
    serde_json::from_slice(body).map_err(|e| {
        let shape = match flavor {
            Flavor::Chat => {
                "{\"model\": ..., \"messages\": [{\"role\": \"user\", \"content\": ...}]}"
            }
            Flavor::Text => "{\"model\": ..., \"prompt\": ...}",
        };
        format!("cannot read the request: {e}; send {shape}")
    })
}

/// Check a request and turn it into an infer job's prompt and parameters, by the rules a
/// job file's `[infer]` follows: one set of rules wherever a request comes from (the API,
/// a batch's lines).
pub fn convert(req: CompletionRequest, flavor: Flavor) -> Result<Converted, Refusal> {
    let chat = flavor == Flavor::Chat;
    let extras = extras(&req, chat).map_err(|(param, why)| {
        let message = format!("{param}: {why}");
        Refusal::new(param, message)
    })?;
    // How the answer is told: tool calls are read from the whole output.
    let shape = Shape {
        tools: extras
            .tools
            .as_ref()
            .is_some_and(|t| t.choice != ToolChoice::None),
        logprobs: extras.logprobs.is_some(),
    };
    let seed = seed(req.seed).map_err(|why| Refusal::new("seed", why))?;
    let prompt = match (flavor, req.messages, req.prompt) {
        (Flavor::Chat, Some(m), _) if !m.is_empty() => messages(m).map_err(|(param, why)| {
            let message = format!("{param}: {why}");
            Refusal::new(param, message)
        })?,
        (Flavor::Chat, _, _) => {
            return Err(Refusal::new("messages", "messages is missing or empty"));
        }
        (Flavor::Text, _, Some(p)) => Prompt::Text(p),
        (Flavor::Text, _, None) => return Err(Refusal::new("prompt", "prompt is missing")),
    };
    let prompt = prompt.with(extras);
    if req.n.is_some_and(|n| n != 1) {
        return Err(Refusal::new("n", "only n = 1 is supported"));
    }
    let options = crate::llm::infer::InferOptions {
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
        n_ctx: req.n_ctx,
        chat_template: req.chat_template,
        json: json_mode(req.response_format.as_ref()),
        grammar: req.grammar,
        threads: req.threads,
        ..crate::llm::infer::InferOptions::default()
    };
    let params = options.params("").map_err(|problems| {
        let param = problems
            .first()
            .map(|p| p.field.clone())
            .unwrap_or_default();
        let message = problems
            .iter()
            .map(|p| format!("{}: {}; {}", p.field, p.message, p.hint))
            .collect::<Vec<_>>()
            .join("\n");
        Refusal::new(param, message)
    })?;
    Ok(Converted {
        model: req.model,
        prompt,
        params,
        n_ctx: req.n_ctx,
        shape,
        stream: req.stream,
    })
}
