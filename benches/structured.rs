//! Structured output costs (almost) nothing (issue 30, acceptance 4): greedy generation held
//! to a JSON schema by its grammar (`response_format: json_schema`, the path tool calls take
//! too) against free text, on the same model file, prompt, thread and sampler, interleaved
//! round by round; the figure is the median of the per-round ratios of generated tokens per
//! second after the first token (the engine's own timings). Goal: >= 0.9x.
//!
//! The model is a random-weight llama GGUF (Q4_0, n_embd 1024, 8 layers, the scale bench's
//! size): a token costs real work. Its vocabulary is the fixture's (about 300 tokens, nearly
//! a character a token), so the grammar checks few candidates a step; with a real model's
//! 32k-150k tokens llama.cpp's grammar sampler checks more, which this bench does not show.
//! One decode thread. `MYCO_STRUCTURED_ROUNDS` (default 7). No timing assertions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use myco_benches::median;
use myco_jobs::llm::gguf::TinyLlama;
use myco_jobs::llm::infer::engine::LlmModel;
use myco_jobs::llm::infer::{Extras, InferParams, Message, Prompt};

const MAX_TOKENS: u32 = 128;

const SCHEMA: &str = r#"{"type": "object", "properties": {
  "title": {"type": "string"},
  "tags": {"type": "array", "items": {"type": "string"}},
  "score": {"type": "number"},
  "done": {"type": "boolean"}
}, "required": ["title", "tags", "score", "done"]}"#;

fn main() {
    let rounds: usize = std::env::var("MYCO_STRUCTURED_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.gguf");
    TinyLlama::bench_q4().write(&path, true).unwrap();
    let model = LlmModel::load(&path).unwrap();
    let params = InferParams {
        max_tokens: MAX_TOKENS,
        temperature: 0.0,
        repeat_penalty: 1.0,
        n_ctx: 1024,
        threads: 1,
        ..InferParams::default()
    };
    let chat = Prompt::Chat(vec![Message {
        role: "user".into(),
        content: "Describe the swarm as a JSON record with a title, tags, a score and whether it is done.".into(),
    }]);
    let structured = chat.clone().with(Extras {
        schema: Some(SCHEMA.into()),
        ..Extras::default()
    });
    let rate = |prompt: &Prompt| {
        let g = model
            .generate(prompt, &params, &|| false, &mut |_, _| {})
            .unwrap();
        // After the first token: the prompt is the same for both.
        (g.completion_tokens as f64 / (g.generation_ms / 1000.0), g)
    };
    // Warm both paths once (the grammar's first build, the context's first allocation).
    let (_, sample) = rate(&structured);
    let _ = rate(&chat);
    let mut ratios = Vec::new();
    let (mut free_rates, mut json_rates) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first.
        let (free, json) = if round % 2 == 0 {
            let f = rate(&chat).0;
            (f, rate(&structured).0)
        } else {
            let j = rate(&structured).0;
            (rate(&chat).0, j)
        };
        println!(
            "round {round}: free text {free:.1} tok/s, JSON schema {json:.1} tok/s ({:.3}x)",
            json / free
        );
        ratios.push(json / free);
        free_rates.push(free);
        json_rates.push(json);
    }
    println!(
        "\n== structured output: greedy, {MAX_TOKENS} tokens, one thread, bench model Q4_0 (n_embd 1024, 8 layers, fixture vocabulary of {} tokens), {rounds} interleaved rounds ==",
        TinyLlama::vocab().0.len()
    );
    println!(
        "free text {:.1} tok/s | JSON schema {:.1} tok/s | ratio {:.3}x (goal >= 0.9x)",
        median(free_rates),
        median(json_rates),
        median(ratios)
    );
    println!(
        "the constrained answer ({} tokens, {:?}): {}",
        sample.completion_tokens,
        sample.finish_reason,
        sample.text.chars().take(160).collect::<String>()
    );
}
