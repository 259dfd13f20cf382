//! Tool calls in the model's own format: which format a chat template speaks, the JSON
//! schema a call must follow (the grammar the engine makes of it holds the model to the
//! tools' parameter schemas), and the parser that turns what the model wrote into OpenAI's
//! `tool_calls`.
//!
//! The formats, as llama.cpp's server tells them apart (by marks in the template):
//!
//! - **Hermes** (Hermes 2 Pro, Qwen 2.5 and 3, and every template with `<tool_call>`):
//!   `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, one block a call.
//! - **Llama 3.x** (`<|python_tag|>` or `ipython` in the template): one JSON object
//!   `{"name": ..., "parameters": {...}}`, as its template asks for.
//! - **Mistral** (`[TOOL_CALLS]`): `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.
//! - **Generic**, for templates that know no tools: myco describes the tools in a system
//!   turn, and the answer is JSON, `{"tool_calls": [{"name", "arguments"}, ...]}` or
//!   `{"response": "..."}`, held to that shape from the first token.
//!
//! Under `tool_choice: auto` the model may answer in text: the grammar waits for the
//! format's opening mark (lazy) and holds the call to the schemas from there. A call the
//! model leaves malformed is returned as text, never as a broken call.
//!
//! Nothing here calls llama.cpp: the engine converts [`Plan::schema`] into a grammar
//! (`json_schema_to_grammar`) and wraps it with [`Plan::wrap`].

use serde_json::{Value, json};

use super::infer::{ToolCall, ToolChoice, Tools};

/// How a template's model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Hermes,
    Llama3,
    Mistral,
    Generic,
}

impl Format {
    /// The format a chat template speaks (None: no Jinja template, so no tools in it).
    pub fn of_template(source: Option<&str>) -> Format {
        match source {
            Some(t) if t.contains("<tool_call>") => Format::Hermes,
            Some(t) if t.contains("<|python_tag|>") || t.contains("ipython") => Format::Llama3,
            Some(t) if t.contains("[TOOL_CALLS]") => Format::Mistral,
            _ => Format::Generic,
        }
    }

    /// The text a call begins with: what wakes a lazy grammar under `auto`.
    pub fn trigger(self) -> &'static str {
        match self {
            Format::Hermes => "<tool_call>",
            Format::Llama3 => "{\"name\"",
            Format::Mistral => "[TOOL_CALLS]",
            Format::Generic => "{",
        }
    }

    /// The key of a call's arguments.
    fn arguments_key(self) -> &'static str {
        match self {
            Format::Llama3 => "parameters",
            _ => "arguments",
        }
    }
}

/// One tool of a request, as checked when it was accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// The JSON schema of its arguments (an object schema; `{"type": "object"}` when none).
    pub parameters: Value,
}

/// Read OpenAI's `tools` array: Err names the first bad entry by its index.
pub fn parse_tools(json: &str) -> Result<Vec<Tool>, (String, String)> {
    let list: Value = serde_json::from_str(json)
        .map_err(|e| ("tools".to_owned(), format!("tools are not JSON: {e}")))?;
    let Some(items) = list.as_array() else {
        return Err(("tools".into(), "tools must be an array".into()));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let at = |f: &str| format!("tools[{i}]{f}");
        if t.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
            return Err((at(".type"), "only \"function\" tools are supported".into()));
        }
        let Some(f) = t.get("function") else {
            return Err((
                at(".function"),
                "a tool needs `function`: {\"name\", \"description\", \"parameters\"}".into(),
            ));
        };
        let name = match f.get("name").and_then(Value::as_str) {
            Some(n)
                if !n.is_empty()
                    && n.len() <= 64
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                n.to_owned()
            }
            _ => {
                return Err((
                    at(".function.name"),
                    "a function's name is 1 to 64 letters, digits, `_` or `-`".into(),
                ));
            }
        };
        if out.iter().any(|o: &Tool| o.name == name) {
            return Err((
                at(".function.name"),
                format!("two tools are named `{name}`"),
            ));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err((
                    at(".function.parameters"),
                    "parameters must be a JSON schema object".into(),
                ));
            }
        };
        out.push(Tool {
            name,
            description: f
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
            parameters,
        });
    }
    if out.is_empty() {
        return Err(("tools".into(), "tools is empty; give at least one".into()));
    }
    Ok(out)
}

/// The tools' names, for messages: `a, b, c`.
pub fn names(list: &[Tool]) -> String {
    list.iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `(param, message)` of a `tool_choice` that names none of the tools.
pub fn unknown_function(name: &str, list: &[Tool]) -> (String, String) {
    (
        "tool_choice.function.name".into(),
        format!("`{name}` is none of the tools ({})", names(list)),
    )
}

/// How one request's calls are constrained and read.
#[derive(Debug, Clone)]
pub struct Plan {
    pub format: Format,
    /// The JSON schema of one call (of the tools `tool_choice` allows).
    pub schema: Value,
    /// Whether the grammar waits for [`Format::trigger`] (`auto`) or holds from the first
    /// token (`required`, a named function, and the generic format always).
    pub lazy: bool,
    pub parallel: bool,
    pub tools: Vec<String>,
}

impl Plan {
    /// The plan for `tools` in `format`; None under `tool_choice: none` (text only). Err:
    /// the request cannot be served (an unknown function, bad tools).
    pub fn new(format: Format, tools: &Tools) -> Result<Option<Plan>, (String, String)> {
        let list = parse_tools(&tools.json)?;
        let allowed: Vec<&Tool> = match &tools.choice {
            ToolChoice::None => return Ok(None),
            ToolChoice::Auto | ToolChoice::Required => list.iter().collect(),
            ToolChoice::Function(name) => {
                let t: Vec<&Tool> = list.iter().filter(|t| &t.name == name).collect();
                if t.is_empty() {
                    return Err(unknown_function(name, &list));
                }
                t
            }
        };
        let key = format.arguments_key();
        let calls: Vec<Value> = allowed
            .iter()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {
                        "name": {"const": t.name},
                        key: t.parameters,
                    },
                    "required": ["name", key],
                    "additionalProperties": false,
                })
            })
            .collect();
        let call = if calls.len() == 1 {
            calls[0].clone()
        } else {
            json!({ "anyOf": calls })
        };
        let forced = !matches!(tools.choice, ToolChoice::Auto);
        let parallel = tools.parallel && format != Format::Llama3;
        let schema = match format {
            Format::Generic => {
                let mut list = json!({"type": "array", "items": call, "minItems": 1});
                if !parallel {
                    list["maxItems"] = json!(1);
                }
                let calls = json!({
                    "type": "object",
                    "properties": {"tool_calls": list},
                    "required": ["tool_calls"],
                    "additionalProperties": false,
                });
                if forced {
                    calls
                } else {
                    json!({"anyOf": [calls, {
                        "type": "object",
                        "properties": {"response": {"type": "string"}},
                        "required": ["response"],
                        "additionalProperties": false,
                    }]})
                }
            }
            _ => call,
        };
        Ok(Some(Plan {
            format,
            schema,
            lazy: !forced && format != Format::Generic,
            parallel,
            tools: allowed.iter().map(|t| t.name.clone()).collect(),
        }))
    }

    /// The whole grammar, from `call` (the GBNF of [`Plan::schema`], its start rule `root`):
    /// the format's marks around one call, or several where parallel calls are allowed.
    pub fn wrap(&self, call: &str) -> String {
        let call = rename_root(call, "tool-call");
        let root = match (self.format, self.parallel) {
            (Format::Hermes, false) => {
                r#"root ::= "<tool_call>\n" tool-call "\n</tool_call>""#.to_owned()
            }
            (Format::Hermes, true) => {
                r#"root ::= "<tool_call>\n" tool-call "\n</tool_call>" ("\n<tool_call>\n" tool-call "\n</tool_call>")*"#.to_owned()
            }
            (Format::Mistral, false) => r#"root ::= "[TOOL_CALLS][" tool-call "]""#.to_owned(),
            (Format::Mistral, true) => {
                r#"root ::= "[TOOL_CALLS][" tool-call (", " tool-call)* "]""#.to_owned()
            }
            (Format::Llama3 | Format::Generic, _) => "root ::= tool-call".to_owned(),
        };
        format!("{root}\n{call}")
    }

    /// The text the model wrote (special tokens included), as content and calls. Anything
    /// that is not a well-formed call of an allowed tool stays text.
    pub fn parse(&self, text: &str, id_seed: u64) -> (String, Vec<ToolCall>) {
        let calls = match self.format {
            Format::Hermes => self.hermes(text),
            Format::Llama3 => self.llama3(text),
            Format::Mistral => self.mistral(text),
            Format::Generic => return self.generic(text, id_seed),
        };
        match calls {
            Some((content, calls)) if !calls.is_empty() => (content, self.ids(calls, id_seed)),
            _ => (text.to_owned(), Vec::new()),
        }
    }

    fn hermes(&self, text: &str) -> Option<(String, Vec<(String, String)>)> {
        let start = text.find("<tool_call>")?;
        let mut rest = &text[start..];
        let mut calls = Vec::new();
        while let Some(open) = rest.find("<tool_call>") {
            let body = &rest[open + "<tool_call>".len()..];
            let close = body.find("</tool_call>")?;
            calls.push(self.call(serde_json::from_str(body[..close].trim()).ok()?)?);
            rest = &body[close + "</tool_call>".len()..];
        }
        if !rest.trim().is_empty() {
            return None;
        }
        Some((text[..start].trim().to_owned(), calls))
    }

    fn llama3(&self, text: &str) -> Option<(String, Vec<(String, String)>)> {
        let body = text.trim();
        let body = body.strip_prefix("<|python_tag|>").unwrap_or(body).trim();
        if !body.starts_with('{') {
            return None;
        }
        Some((
            String::new(),
            vec![self.call(serde_json::from_str(body).ok()?)?],
        ))
    }

    fn mistral(&self, text: &str) -> Option<(String, Vec<(String, String)>)> {
        let start = text.find("[TOOL_CALLS]")?;
        let list: Value = serde_json::from_str(text[start + "[TOOL_CALLS]".len()..].trim()).ok()?;
        let calls = list
            .as_array()?
            .iter()
            .map(|c| self.call(c.clone()))
            .collect::<Option<Vec<_>>>()?;
        Some((text[..start].trim().to_owned(), calls))
    }

    fn generic(&self, text: &str, id_seed: u64) -> (String, Vec<ToolCall>) {
        let parsed: Option<Value> = serde_json::from_str(text.trim()).ok();
        if let Some(r) = parsed
            .as_ref()
            .and_then(|v| v.get("response"))
            .and_then(Value::as_str)
        {
            return (r.to_owned(), Vec::new());
        }
        let calls = parsed
            .as_ref()
            .and_then(|v| v.get("tool_calls"))
            .and_then(Value::as_array)
            .and_then(|l| {
                l.iter()
                    .map(|c| self.call(c.clone()))
                    .collect::<Option<Vec<_>>>()
            });
        match calls {
            Some(c) if !c.is_empty() => (String::new(), self.ids(c, id_seed)),
            _ => (text.to_owned(), Vec::new()),
        }
    }

    /// `(name, arguments)` of one call object, if it names an allowed tool and its
    /// arguments are an object.
    fn call(&self, v: Value) -> Option<(String, String)> {
        let name = v.get("name")?.as_str()?;
        if !self.tools.iter().any(|t| t == name) {
            return None;
        }
        let args = v
            .get(self.format.arguments_key())
            .or_else(|| v.get("arguments"))
            .or_else(|| v.get("parameters"))?;
        // Some models write the arguments as a JSON string.
        let args = match args {
            Value::String(s) => serde_json::from_str::<Value>(s).ok()?,
            a => a.clone(),
        };
        args.is_object()
            .then(|| (name.to_owned(), args.to_string()))
    }

    fn ids(&self, calls: Vec<(String, String)>, seed: u64) -> Vec<ToolCall> {
        calls
            .into_iter()
            .enumerate()
            .map(|(i, (name, arguments))| ToolCall {
                id: format!("call_{seed:016x}{i:02}"),
                name,
                arguments,
            })
            .collect()
    }
}

/// `gbnf` with its start rule `root` renamed `to`, wherever it is named.
fn rename_root(gbnf: &str, to: &str) -> String {
    let mut out = String::with_capacity(gbnf.len());
    for line in gbnf.lines() {
        let mut l = String::new();
        let mut rest = line;
        // Rule names are [a-zA-Z0-9-]+; replace the word `root` outside string literals.
        let mut in_str = false;
        let mut prev_escape = false;
        let mut word = String::new();
        let flush = |word: &mut String, l: &mut String| {
            if word == "root" {
                l.push_str(to);
            } else {
                l.push_str(word);
            }
            word.clear();
        };
        while let Some(c) = rest.chars().next() {
            rest = &rest[c.len_utf8()..];
            if in_str {
                l.push(c);
                if c == '"' && !prev_escape {
                    in_str = false;
                }
                prev_escape = c == '\\' && !prev_escape;
                continue;
            }
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                word.push(c);
                continue;
            }
            flush(&mut word, &mut l);
            if c == '"' {
                in_str = true;
                prev_escape = false;
            }
            l.push(c);
            if c == '[' {
                // A character class: copy to its end.
                let mut esc = false;
                while let Some(d) = rest.chars().next() {
                    rest = &rest[d.len_utf8()..];
                    l.push(d);
                    if d == ']' && !esc {
                        break;
                    }
                    esc = d == '\\' && !esc;
                }
            }
        }
        flush(&mut word, &mut l);
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// The system turn that tells a model whose template knows no tools what it may call and
/// how (the generic format).
pub fn generic_system_turn(tools_json: &str, choice: &ToolChoice) -> String {
    let must = match choice {
        ToolChoice::Required | ToolChoice::Function(_) => {
            "Answer with JSON only: {\"tool_calls\": [{\"name\": <a tool's name>, \"arguments\": {<its arguments>}}]}."
        }
        _ => {
            "Answer with JSON only: either {\"tool_calls\": [{\"name\": <a tool's name>, \"arguments\": {<its arguments>}}]} to call tools, or {\"response\": <your answer>}."
        }
    };
    format!("You can call these tools (JSON schemas): {tools_json}\n{must}")
}

/// `messages` (OpenAI's JSON) for a template that knows no tools: a system turn describes
/// them (added to the first system turn, or first), an assistant turn's calls become the JSON
/// the model is asked to write, and a tool's result a user turn that says whose it is.
pub fn generic_messages(
    messages: &str,
    tools_json: &str,
    choice: &ToolChoice,
) -> Result<String, String> {
    let mut list: Vec<Value> =
        serde_json::from_str(messages).map_err(|e| format!("messages are not JSON: {e}"))?;
    for m in &mut list {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array).cloned() {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| {
                    let f = c.get("function").unwrap_or(c);
                    let args = match f.get("arguments") {
                        Some(Value::String(s)) => {
                            serde_json::from_str(s).unwrap_or(Value::String(s.clone()))
                        }
                        Some(a) => a.clone(),
                        None => json!({}),
                    };
                    json!({"name": f.get("name").cloned().unwrap_or(Value::Null), "arguments": args})
                })
                .collect();
            *m = json!({"role": "assistant", "content": json!({"tool_calls": calls}).to_string()});
        } else if role == "tool" {
            let content = text_of(m.get("content"));
            let name = m
                .get("name")
                .and_then(Value::as_str)
                .or_else(|| m.get("tool_call_id").and_then(Value::as_str))
                .unwrap_or("the tool");
            *m = json!({"role": "user", "content": format!("The result of {name}: {content}")});
        }
    }
    let turn = generic_system_turn(tools_json, choice);
    match list.first_mut() {
        Some(first) if first.get("role").and_then(Value::as_str) == Some("system") => {
            let had = text_of(first.get("content"));
            first["content"] = Value::String(format!("{had}\n\n{turn}"));
        }
        _ => list.insert(0, json!({"role": "system", "content": turn})),
    }
    serde_json::to_string(&list).map_err(|e| e.to_string())
}

/// `messages` (OpenAI's JSON) as `(role, content)` pairs, for llama.cpp's built-in
/// templates; Err where a turn holds what only a Jinja template renders (tool calls).
pub fn plain_messages(messages: &str) -> Result<Vec<(String, String)>, String> {
    let list: Vec<Value> =
        serde_json::from_str(messages).map_err(|e| format!("messages are not JSON: {e}"))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            if m.get("tool_calls").is_some_and(|c| !c.is_null()) {
                return Err(format!("messages[{i}] has tool calls"));
            }
            let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
            Ok((role.to_owned(), text_of(m.get("content"))))
        })
        .collect()
}

/// A message's content as text: a string, text parts joined by new lines, or "".
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests;
