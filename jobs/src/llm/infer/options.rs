//! The one builder and validator of an LLM request: [`InferOptions`], every field optional,
//! read from a job file's `[infer]`/`[pipeline]` section (serde) or filled in by the OpenAI
//! API and `myco ask`. [`InferOptions::prompt`] and [`InferOptions::params`] apply the
//! defaults and the validation rules, and report every problem with its field path, so a
//! request is accepted or refused the same way wherever it comes from.
//!
//! It must not resolve model names (that is [`crate::model::resolve_llm`]) or run anything.

use serde::{Deserialize, Serialize};

use super::types::{Extras, InferParams, MAX_TOP_LOGPROBS, Message, Prompt, ToolChoice, Tools};
use crate::spec::problem::{Problem, field};

/// The largest `max_tokens` a request may ask for.
pub const MAX_TOKENS: u32 = 1_000_000;
/// The smallest context (`n_ctx`) a request may ask for.
pub const MIN_CTX: u32 = 8;

/// An LLM request as given: what to continue, with which model, and its sampling settings.
/// Unset fields take [`InferParams::default`]'s values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferOptions {
    /// A GGUF file: a path, or a file name under `~/.myco/models` (see
    /// [`crate::model::resolve_llm`]). Required in a job file.
    #[serde(default)]
    pub model: Option<String>,
    /// Text to continue; or give `messages`.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Chat messages, rendered with the model's chat template.
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_k: Option<i32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub repeat_penalty: Option<f32>,
    #[serde(default)]
    pub seed: Option<u32>,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub n_ctx: Option<u32>,
    /// Decoding threads (0: one per core).
    #[serde(default)]
    pub threads: Option<u32>,
    /// Run only on a node that has a GPU.
    #[serde(default)]
    pub gpu: bool,
    /// Layers on the GPU (an `infer` setting: a pipeline's stages place theirs by each
    /// node's GPU memory).
    #[serde(default)]
    pub gpu_layers: Option<u32>,
    /// The chat template for `messages`: a llama.cpp template name (`chatml`, `llama3`,
    /// `gemma`, ...) or a template text [default: the model's].
    #[serde(default)]
    pub chat_template: Option<String>,
    /// A GBNF grammar the output must follow (llama.cpp's grammar sampler; `json = true`
    /// is the JSON one).
    #[serde(default)]
    pub grammar: Option<String>,
    /// JSON mode: the output is one JSON object.
    #[serde(default)]
    pub json: bool,
    /// A JSON schema the answer must follow (held to it by a grammar made from it).
    #[serde(default)]
    pub json_schema: Option<serde_json::Value>,
    /// Tools the model may call, as OpenAI's `tools` has them: `[{ type = "function",
    /// function = { name, description, parameters = <a JSON schema> } }]`. The result's
    /// `tool_calls` holds the calls (needs `messages`).
    #[serde(default)]
    pub tools: Option<serde_json::Value>,
    /// `auto` (the default: text or calls, as the model chooses), `none`, `required`, or the
    /// name of the one function to call.
    #[serde(default)]
    pub tool_choice: Option<String>,
    /// Whether the model may call several tools in one answer [default: true].
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Report each generated token's log-probability with this many of the likeliest
    /// tokens at its place (0 to 20).
    #[serde(default)]
    pub logprobs: Option<u8>,
}

impl InferOptions {
    /// What to continue: `prompt` or non-empty `messages`, exactly one of them. Field paths
    /// start with `field_prefix` (`infer`, or empty for an API request).
    /// With what the request asks for beyond it ([`InferOptions::extras`]).
    pub fn prompt(&self, field_prefix: &str) -> Result<Prompt, Problem> {
        let base = match (&self.prompt, &self.messages) {
            (Some(p), None) => Prompt::Text(p.clone()),
            (None, Some(m)) if !m.is_empty() => Prompt::Chat(m.clone()),
            _ => {
                return Err(Problem::new(
                    &field(field_prefix, "prompt"),
                    "give `prompt` or `messages` (not both, not neither)",
                    "e.g. prompt = \"Once upon a time\", or messages = [{ role = \"user\", content = \"hi\" }]",
                ));
            }
        };
        Ok(base.with(self.extras(field_prefix)?))
    }

    /// Tools, log-probabilities and a JSON schema, checked: the problem names its field.
    pub fn extras(&self, field_prefix: &str) -> Result<Extras, Problem> {
        let mut extras = Extras::default();
        if let Some(n) = self.logprobs {
            if n > MAX_TOP_LOGPROBS {
                return Err(Problem::new(
                    &field(field_prefix, "logprobs"),
                    format!("{n} is out of range"),
                    "use 0 to 20 (the likeliest tokens reported beside each token)",
                ));
            }
            extras.logprobs = Some(n);
        }
        if let Some(schema) = &self.json_schema {
            if !schema.is_object() || self.json || self.grammar.is_some() || self.tools.is_some() {
                return Err(Problem::new(
                    &field(field_prefix, "json_schema"),
                    "must be one JSON schema (a table), without json, grammar or tools",
                    "e.g. json_schema = { type = \"object\", properties = { answer = { type = \"string\" } }, required = [\"answer\"] }",
                ));
            }
            extras.schema = Some(schema.to_string());
        }
        let Some(tools) = &self.tools else {
            if self.tool_choice.is_some() || self.parallel_tool_calls.is_some() {
                return Err(Problem::new(
                    &field(field_prefix, "tool_choice"),
                    "needs `tools`",
                    "give the tools the model may call, or leave tool_choice out",
                ));
            }
            return Ok(extras);
        };
        if self.messages.is_none() || self.json || self.grammar.is_some() {
            return Err(Problem::new(
                &field(field_prefix, "tools"),
                "tools need `messages`, and cannot go with json or grammar",
                "give messages = [{ role = \"user\", content = \"...\" }]",
            ));
        }
        let json = tools.to_string();
        let list = crate::llm::tools::parse_tools(&json).map_err(|(at, why)| {
            Problem::new(
                &field(field_prefix, &at),
                why,
                "tools = [{ type = \"function\", function = { name = \"get_weather\", parameters = { type = \"object\", properties = { city = { type = \"string\" } } } } }]",
            )
        })?;
        let choice = match self.tool_choice.as_deref() {
            None | Some("auto") => ToolChoice::Auto,
            Some("none") => ToolChoice::None,
            Some("required") => ToolChoice::Required,
            Some(name) if list.iter().any(|t| t.name == name) => ToolChoice::Function(name.into()),
            Some(other) => {
                return Err(Problem::new(
                    &field(field_prefix, "tool_choice"),
                    format!("`{other}` is none of auto, none, required and the tools' names"),
                    format!("the tools are: {}", crate::llm::tools::names(&list)),
                ));
            }
        };
        extras.tools = Some(Tools {
            json,
            choice,
            parallel: self.parallel_tool_calls.unwrap_or(true),
        });
        Ok(extras)
    }

    /// The sampling and length settings, defaults applied; every out-of-range value is a
    /// problem, its field path starting with `field_prefix`.
    pub fn params(&self, field_prefix: &str) -> Result<InferParams, Vec<Problem>> {
        let d = InferParams::default();
        let params = InferParams {
            max_tokens: self.max_tokens.unwrap_or(d.max_tokens),
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            seed: self.seed.unwrap_or(d.seed),
            stop: self.stop.clone(),
            n_ctx: self.n_ctx.unwrap_or(d.n_ctx),
            threads: self.threads.unwrap_or(d.threads),
            gpu_layers: self.gpu_layers,
            chat_template: self.chat_template.clone(),
            grammar: if self.json {
                Some(super::types::JSON_GRAMMAR.to_owned())
            } else {
                self.grammar.clone()
            },
        };
        let mut problems = Vec::new();
        if params.max_tokens == 0 || params.max_tokens > MAX_TOKENS {
            problems.push(Problem::new(
                &field(field_prefix, "max_tokens"),
                format!("{} is out of range", params.max_tokens),
                "use 1 to 1000000",
            ));
        }
        if params.n_ctx < MIN_CTX {
            problems.push(Problem::new(
                &field(field_prefix, "n_ctx"),
                format!("{} is too small", params.n_ctx),
                "use at least 8 tokens of context (the default is 4096)",
            ));
        }
        if self.json && self.grammar.is_some() {
            problems.push(Problem::new(
                &field(field_prefix, "grammar"),
                "give `json = true` or a `grammar`, not both",
                "json = true is a grammar of JSON objects",
            ));
        }
        if self.grammar.as_deref().is_some_and(|g| g.trim().is_empty()) {
            problems.push(Problem::new(
                &field(field_prefix, "grammar"),
                "is empty",
                "give a GBNF grammar with a `root` rule, or leave it out",
            ));
        }
        if problems.is_empty() {
            Ok(params)
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn defaults_fill_unset_fields() {
        let o = InferOptions {
            max_tokens: Some(7),
            ..InferOptions::default()
        };
        let p = o.params("infer").unwrap();
        assert_eq!(p.max_tokens, 7);
        assert_eq!(
            InferParams {
                max_tokens: 256,
                ..p
            },
            InferParams::default()
        );
    }

    #[test]
    fn every_out_of_range_value_is_named() {
        let o = InferOptions {
            max_tokens: Some(0),
            n_ctx: Some(4),
            ..InferOptions::default()
        };
        let fields: Vec<_> = o
            .params("")
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, ["max_tokens", "n_ctx"]);
        let e = o.params("pipeline").unwrap_err();
        assert_eq!(e[0].field, "pipeline.max_tokens");
    }

    #[test]
    fn a_prompt_or_messages_not_both() {
        let text = InferOptions {
            prompt: Some("hi".into()),
            ..InferOptions::default()
        };
        assert_eq!(text.prompt("infer").unwrap(), Prompt::Text("hi".into()));
        let both = InferOptions {
            messages: Some(vec![Message {
                role: "user".into(),
                content: "hi".into(),
            }]),
            ..text
        };
        assert_eq!(both.prompt("infer").unwrap_err().field, "infer.prompt");
        let empty = InferOptions {
            messages: Some(Vec::new()),
            ..InferOptions::default()
        };
        assert!(empty.prompt("").is_err());
    }

    #[test]
    fn tools_schemas_and_logprobs_from_a_job_file() {
        let o: InferOptions = toml::from_str(
            r#"
            messages = [{ role = "user", content = "weather?" }]
            tool_choice = "get_weather"
            logprobs = 2
            [[tools]]
            type = "function"
            function = { name = "get_weather", parameters = { type = "object", properties = { city = { type = "string" } } } }
            "#,
        )
        .unwrap();
        let p = o.prompt("infer").unwrap();
        let tools = p.tools().unwrap();
        assert_eq!(tools.choice, ToolChoice::Function("get_weather".into()));
        assert!(tools.json.contains("\"city\""), "{}", tools.json);
        assert_eq!(p.logprobs(), Some(2));
        assert!(matches!(p.base(), Prompt::Chat(_)));
        let bad = |o: InferOptions| o.prompt("infer").unwrap_err().field;
        assert_eq!(
            bad(InferOptions {
                tool_choice: Some("nope".into()),
                ..o.clone()
            }),
            "infer.tool_choice"
        );
        assert_eq!(
            bad(InferOptions {
                tools: Some(
                    serde_json::json!([{ "type": "function", "function": { "name": "a b" } }])
                ),
                ..o.clone()
            }),
            "infer.tools[0].function.name"
        );
        assert_eq!(
            bad(InferOptions {
                logprobs: Some(21),
                ..o.clone()
            }),
            "infer.logprobs"
        );
        assert_eq!(
            bad(InferOptions {
                messages: None,
                prompt: Some("hi".into()),
                ..o.clone()
            }),
            "infer.tools"
        );
        let schema = InferOptions {
            prompt: Some("hi".into()),
            json_schema: Some(serde_json::json!({ "type": "object" })),
            ..InferOptions::default()
        };
        assert_eq!(
            schema.prompt("infer").unwrap().schema(),
            Some(r#"{"type":"object"}"#)
        );
        // Nothing asked: the plain shape every node reads.
        let plain = InferOptions {
            prompt: Some("hi".into()),
            ..InferOptions::default()
        };
        assert_eq!(plain.prompt("infer").unwrap(), Prompt::Text("hi".into()));
    }
}
