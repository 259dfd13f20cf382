//! The one builder and validator of an LLM request: [`InferOptions`], every field optional,
//! read from a job file's `[infer]`/`[pipeline]` section (serde) or filled in by the OpenAI
//! API and `myco ask`. [`InferOptions::prompt`] and [`InferOptions::params`] apply the
//! defaults and the validation rules, and report every problem with its field path, so a
//! request is accepted or refused the same way wherever it comes from.
//!
//! It must not resolve model names (that is [`crate::model::resolve_llm`]) or run anything.

use serde::{Deserialize, Serialize};

use super::types::{InferParams, Message, Prompt};
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
}

impl InferOptions {
    /// What to continue: `prompt` or non-empty `messages`, exactly one of them. Field paths
    /// start with `field_prefix` (`infer`, or empty for an API request).
    pub fn prompt(&self, field_prefix: &str) -> Result<Prompt, Problem> {
        match (&self.prompt, &self.messages) {
            (Some(p), None) => Ok(Prompt::Text(p.clone())),
            (None, Some(m)) if !m.is_empty() => Ok(Prompt::Chat(m.clone())),
            _ => Err(Problem::new(
                &field(field_prefix, "prompt"),
                "give `prompt` or `messages` (not both, not neither)",
                "e.g. prompt = \"Once upon a time\", or messages = [{ role = \"user\", content = \"hi\" }]",
            )),
        }
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
}
