//! The llama.cpp engine on the tiny random-weight llama GGUF that `gguf::TinyLlama` writes:
//! greedy decoding is deterministic, and each bad input is a precise error.
#![cfg(feature = "infer")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myco_jobs::llm::gguf::TinyLlama;
use myco_jobs::llm::infer::engine::LlmModel;
use myco_jobs::llm::infer::{
    Extras, Finish, InferError, InferParams, Message, Prompt, ToolChoice, Tools,
};

fn greedy(max_tokens: u32) -> InferParams {
    InferParams {
        max_tokens,
        temperature: 0.0,
        repeat_penalty: 1.0,
        n_ctx: 256,
        threads: 1,
        ..InferParams::default()
    }
}

fn model(dir: &std::path::Path, template: bool) -> LlmModel {
    let path = dir.join(if template { "tiny.gguf" } else { "plain.gguf" });
    TinyLlama::default().write(&path, template).unwrap();
    LlmModel::load(&path).unwrap()
}

#[test]
fn greedy_generation_is_deterministic_and_streams_every_token() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), true);
    let prompt = Prompt::Text("hello swarm, run the job".into());
    let mut streamed = Vec::new();
    let mut text = String::new();
    let a = m
        .generate(&prompt, &greedy(24), &|| false, &mut |t, piece| {
            streamed.extend(t);
            text.push_str(piece);
        })
        .unwrap();
    let b = m
        .generate(&prompt, &greedy(24), &|| false, &mut |_, _| {})
        .unwrap();
    assert!(!a.tokens.is_empty());
    assert_eq!(a.tokens, b.tokens, "greedy decoding repeats itself");
    assert_eq!(a.text, b.text);
    assert_eq!(streamed, a.tokens, "every token was streamed, in order");
    assert_eq!(text, a.text, "the pieces add up to the text");

    // With a stop string taken from the middle of that text, the pieces still add up to
    // the (shorter) text, and none of the stop string was given out.
    let chars: Vec<char> = a.text.chars().collect();
    if chars.len() >= 6 {
        let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
        let mut params = greedy(24);
        params.stop = vec![stop.clone()];
        let mut pieces = String::new();
        let s = m
            .generate(&prompt, &params, &|| false, &mut |_, piece| {
                pieces.push_str(piece)
            })
            .unwrap();
        assert_eq!(s.finish_reason, Finish::Stop);
        assert!(!s.text.contains(&stop), "{:?} holds {stop:?}", s.text);
        assert!(a.text.starts_with(&s.text));
        assert_eq!(
            pieces, s.text,
            "the streamed pieces stop before the stop string"
        );
    }
    assert_eq!(
        a.prompt_tokens as usize,
        m.tokenize("hello swarm, run the job").len()
    );
    assert_eq!(a.completion_tokens as usize, a.tokens.len());
    if a.finish_reason == Finish::Length {
        assert_eq!(a.tokens.len(), 24);
    }
    // A fresh load of the same file gives the same tokens.
    let again = LlmModel::load(&dir.path().join("tiny.gguf")).unwrap();
    let c = again
        .generate(&prompt, &greedy(24), &|| false, &mut |_, _| {})
        .unwrap();
    assert_eq!(c.tokens, a.tokens);
}

#[test]
fn chat_messages_use_the_models_template_and_need_one() {
    let dir = tempfile::tempdir().unwrap();
    let chat = Prompt::Chat(vec![Message {
        role: "user".into(),
        content: "hello".into(),
    }]);
    let m = model(dir.path(), true);
    let rendered = m.render(&chat, None).unwrap();
    assert!(
        rendered.contains("<|im_start|>user\nhello<|im_end|>"),
        "{rendered}"
    );
    assert!(
        m.tokenize(&rendered).contains(&3),
        "<|im_start|> is one control token"
    );
    m.generate(&chat, &greedy(4), &|| false, &mut |_, _| {})
        .unwrap();

    // No template in the file: llama.cpp's built-in one for the architecture (Llama 3's).
    let plain = model(dir.path(), false);
    let rendered = plain.render(&chat, None).unwrap();
    assert!(
        rendered.contains("<|start_header_id|>user<|end_header_id|>"),
        "{rendered}"
    );
    plain
        .generate(&chat, &greedy(4), &|| false, &mut |_, _| {})
        .unwrap();
    // Named in the request, or in the model's side file.
    let gemma = plain.render(&chat, Some("gemma")).unwrap();
    assert!(gemma.contains("<start_of_turn>user\nhello"), "{gemma}");
    std::fs::write(
        dir.path().join("plain.toml"),
        "chat_template = \"chatml\"\n",
    )
    .unwrap();
    let side = plain.render(&chat, None).unwrap();
    assert!(side.contains("<|im_start|>user\nhello"), "{side}");
    // A name llama.cpp does not know, and a broken side file, are errors naming them.
    let err = plain
        .generate(
            &chat,
            &InferParams {
                chat_template: Some("no-such-template".into()),
                ..greedy(4)
            },
            &|| false,
            &mut |_, _| {},
        )
        .unwrap_err();
    assert!(matches!(err, InferError::Template { .. }), "{err}");
    assert!(err.to_string().contains("no-such-template"), "{err}");
    assert!(!err.is_retryable());
    std::fs::write(dir.path().join("plain.toml"), "template = 1\n").unwrap();
    let err = plain.render(&chat, None).unwrap_err();
    assert!(err.to_string().contains("plain.toml"), "{err}");
}

/// A Jinja template (the request's, the side file's or the GGUF's) renders as Hugging Face
/// renders it, through minijinja: real templates, their own refusals, one BOS.
#[test]
fn jinja_templates_render_as_their_authors_wrote_them() {
    let dir = tempfile::tempdir().unwrap();
    let plain = model(dir.path(), false);
    let real = |name: &str| {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/chat_templates")
                .join(format!("{name}.jinja")),
        )
        .unwrap()
    };
    let chat = |system: bool| {
        let mut m = vec![Message {
            role: "user".into(),
            content: "hello".into(),
        }];
        if system {
            m.insert(
                0,
                Message {
                    role: "system".into(),
                    content: "Be brief.".into(),
                },
            );
        }
        Prompt::Chat(m)
    };
    let llama = real("meta-llama-Llama-3.2-3B-Instruct");
    let rendered = plain.render(&chat(true), Some(&llama)).unwrap();
    // The template writes {{ bos_token }} first; tokenizing adds the BOS, so it is left out.
    assert!(
        rendered.starts_with("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: "),
        "{rendered}"
    );
    assert!(
        rendered.ends_with("Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
        "{rendered}"
    );
    let bos = plain
        .tokenize(&rendered)
        .iter()
        .filter(|&&t| t == 1)
        .count();
    assert_eq!(bos, 1, "one BOS");
    plain
        .generate(
            &chat(true),
            &InferParams {
                chat_template: Some(llama),
                ..greedy(4)
            },
            &|| false,
            &mut |_, _| {},
        )
        .unwrap();
    // The template's own refusal is the error.
    let gemma = real("google-gemma-2-2b-it");
    let err = plain.render(&chat(true), Some(&gemma)).unwrap_err();
    assert!(matches!(err, InferError::Template { .. }), "{err}");
    assert!(
        err.to_string().contains("System role not supported"),
        "{err}"
    );
    let ok = plain.render(&chat(false), Some(&gemma)).unwrap();
    assert_eq!(
        ok,
        "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n"
    );
    // A template minijinja cannot parse goes to llama.cpp, which knows it by its marks.
    let broken =
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }<|im_end|>\n{% endfor %}";
    let fallback = plain.render(&chat(false), Some(broken)).unwrap();
    assert!(
        fallback.contains("<|im_start|>user\nhello<|im_end|>"),
        "{fallback}"
    );
}

#[test]
fn bad_models_and_long_prompts_are_precise_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = LlmModel::load(&dir.path().join("nope.gguf")).unwrap_err();
    assert!(matches!(missing, InferError::Missing { .. }), "{missing}");

    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"definitely not a model").unwrap();
    let err = LlmModel::load(&junk).unwrap_err();
    assert!(matches!(err, InferError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("junk.gguf"));

    // A real header with its tensors cut off.
    let bytes = TinyLlama::default().encode(true);
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = LlmModel::load(&cut).unwrap_err();
    assert!(matches!(err, InferError::Corrupt { .. }), "{err}");

    let m = model(dir.path(), true);
    let long = Prompt::Text("the swarm runs the job ".repeat(100));
    let err = m
        .generate(&long, &greedy(4), &|| false, &mut |_, _| {})
        .unwrap_err();
    assert!(
        matches!(err, InferError::PromptTooLong { n_ctx: 256, .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
    // Cancelled before the first token.
    let err = m
        .generate(
            &Prompt::Text("hi".into()),
            &greedy(4),
            &|| true,
            &mut |_, _| {},
        )
        .unwrap_err();
    assert_eq!(err, InferError::Cancelled);
}

#[test]
fn loaded_models_stay_while_memory_allows_and_the_least_recent_goes_first() {
    let models = myco_jobs::llm::infer::Models::new();
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = ["m0", "m1", "m2"]
        .iter()
        .map(|n| {
            let p = dir.path().join(format!("{n}.gguf"));
            TinyLlama::default().write(&p, false).unwrap();
            p
        })
        .collect();
    let plenty = || u64::MAX;
    let a = models.get_with(&paths[0], plenty, u64::MAX).unwrap();
    models.get_with(&paths[1], plenty, u64::MAX).unwrap();
    // The same file again is the same loaded model, now the most recently used.
    let again = models.get_with(&paths[0], plenty, u64::MAX).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &again));
    let mine = |all: Vec<std::path::PathBuf>| -> Vec<std::path::PathBuf> {
        all.into_iter().filter(|p| paths.contains(p)).collect()
    };
    assert_eq!(mine(models.loaded()), [paths[1].clone(), paths[0].clone()]);
    // Memory is short: loading a third evicts until it fits (here: everything else).
    let calls = std::cell::Cell::new(0);
    models
        .get_with(
            &paths[2],
            || {
                calls.set(calls.get() + 1);
                if calls.get() > 1 { u64::MAX } else { 0 }
            },
            u64::MAX,
        )
        .unwrap();
    let left = mine(models.loaded());
    assert_eq!(
        left,
        [paths[0].clone(), paths[2].clone()],
        "m1, least recently used, went first"
    );
    // Mapped files count as available memory: the loaded models' sizes also count against
    // the total. Room for two models beside the headroom: loading m1 evicts m0, the least
    // recently used.
    let one = std::fs::metadata(&paths[0]).unwrap().len();
    let headroom = myco_jobs::llm::infer::models::HEADROOM;
    models
        .get_with(&paths[1], plenty, 2 * one + headroom)
        .unwrap();
    assert_eq!(mine(models.loaded()), [paths[2].clone(), paths[1].clone()]);
    // A model in use stays alive for its user even once evicted.
    models.get_with(&paths[1], || 0, u64::MAX).unwrap();
    assert!(a.tokenize("hello").len() > 1);
}

#[test]
fn each_cache_loads_its_own_copy_and_clones_share_one() {
    use myco_jobs::llm::infer::Models;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    TinyLlama::default().write(&path, false).unwrap();
    let node_a = Models::new();
    let worker_a = node_a.clone();
    let node_b = Models::new();
    let first = node_a.get(&path).unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &first,
        &worker_a.get(&path).unwrap()
    ));
    assert_eq!(worker_a.loaded(), vec![path.clone()]);
    assert!(
        node_b.loaded().is_empty(),
        "another node's cache is its own"
    );
    assert!(!std::sync::Arc::ptr_eq(&first, &node_b.get(&path).unwrap()));
}

/// `n_ctx` is the context asked for: prompt and answer together end at it, although
/// llama.cpp pads its own context to 256 positions.
#[test]
fn generation_stops_at_the_context_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), false);
    let prompt = Prompt::Text("hello swarm".into());
    let params = InferParams {
        n_ctx: 32,
        ..greedy(200)
    };
    let g = m
        .generate(&prompt, &params, &|| false, &mut |_, _| {})
        .unwrap();
    assert!(
        g.prompt_tokens + g.completion_tokens <= 32,
        "{} prompt + {} generated tokens in a context of 32",
        g.prompt_tokens,
        g.completion_tokens
    );
    if g.finish_reason == Finish::Length {
        assert_eq!(g.prompt_tokens + g.completion_tokens, 32);
    }
}

/// The node's way: requests to one model decode together in its shared batch. Concurrent
/// greedy requests give each the tokens it gets alone, and a stop string, `n_ctx` and a
/// cancel still act per request.
#[test]
fn concurrent_requests_in_one_batch_each_get_their_solo_tokens() {
    use myco_jobs::llm::infer::{Models, Serving};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    TinyLlama::default().write(&path, false).unwrap();
    let models = Models::new().serving(Serving {
        parallel: 4,
        threads: 1,
    });
    let served = models.serve(&path, None, 256).unwrap();
    let prompts: Vec<Prompt> = [
        "hello swarm",
        "the queue is durable and the workers pull",
        "a",
        "layers chained across machines, and a long prompt that takes more positions",
        "one more than the batch holds waits for a free sequence",
    ]
    .iter()
    .map(|p| Prompt::Text((*p).into()))
    .collect();
    let solo: Vec<_> = prompts
        .iter()
        .map(|p| {
            served
                .model()
                .generate(p, &greedy(24), &|| false, &mut |_, _| {})
                .unwrap()
        })
        .collect();
    let together: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let served = &served;
                s.spawn(move || {
                    let mut streamed = String::new();
                    let g = served
                        .generate(p, &greedy(24), &|| false, &mut |_, piece| {
                            streamed.push_str(piece)
                        })
                        .unwrap();
                    assert_eq!(streamed, g.text, "the pieces add up to the text");
                    g
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, b)) in solo.iter().zip(&together).enumerate() {
        assert_eq!(
            a.tokens, b.tokens,
            "request {i}: batched tokens differ from solo"
        );
        assert_eq!(a.finish_reason, b.finish_reason, "request {i}");
        assert_eq!(a.prompt_tokens, b.prompt_tokens, "request {i}");
    }

    // n_ctx is exact in the batch too.
    let short = InferParams {
        n_ctx: 32,
        ..greedy(200)
    };
    let g = models
        .serve(&path, None, 32)
        .unwrap()
        .generate(&prompts[0], &short, &|| false, &mut |_, _| {})
        .unwrap();
    assert!(g.prompt_tokens + g.completion_tokens <= 32);

    // A stop string ends one request: the text is cut before it.
    let text = &solo[1].text;
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 6 {
        let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
        let params = InferParams {
            stop: vec![stop.clone()],
            ..greedy(24)
        };
        let g = served
            .generate(&prompts[1], &params, &|| false, &mut |_, _| {})
            .unwrap();
        assert_eq!(g.finish_reason, Finish::Stop);
        assert!(!g.text.contains(&stop) && text.starts_with(&g.text));
    }
    let err = served
        .generate(&prompts[0], &greedy(24), &|| true, &mut |_, _| {})
        .unwrap_err();
    assert_eq!(err, InferError::Cancelled);
}

/// A chat of five turns with a long system prompt: each turn's prompt extends the one
/// before, and the batch reuses the whole 512-token pieces of it that it decoded alone (the
/// result counts the cached prompt tokens); each answer is the one a fresh batch gives.
#[test]
fn the_turns_of_a_chat_reuse_whole_pieces_of_the_cached_prefix_and_answer_the_same() {
    use myco_jobs::llm::infer::batch::PREFILL_STEP;
    use myco_jobs::llm::infer::{Models, Serving};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    // Trained (so it says) for the 2048 positions the chat takes.
    TinyLlama {
        n_ctx: 2048,
        ..TinyLlama::default()
    }
    .write(&path, true)
    .unwrap();
    let serving = Serving {
        parallel: 2,
        threads: 1,
    };
    let served = Models::new()
        .serving(serving)
        .serve(&path, None, 2048)
        .unwrap();
    let params = InferParams {
        n_ctx: 2048,
        ..greedy(12)
    };
    let mut messages = vec![Message {
        role: "system".into(),
        content: "you are the swarm's helper: the node runs the job and the queue holds the work. "
            .repeat(6),
    }];
    for turn in 1..=5 {
        messages.push(Message {
            role: "user".into(),
            content: format!("question number {turn}: what runs next?"),
        });
        let g = served
            .generate(
                &Prompt::Chat(messages.clone()),
                &params,
                &|| false,
                &mut |_, _| {},
            )
            .unwrap();
        assert!(
            g.prompt_tokens as usize > PREFILL_STEP,
            "{}",
            g.prompt_tokens
        );
        if turn == 1 {
            assert_eq!(g.cached_tokens, 0, "nothing to reuse at the first turn");
        } else {
            // The whole pieces of the prompt before, never a part of one.
            assert!(
                g.cached_tokens as usize >= PREFILL_STEP
                    && (g.cached_tokens as usize).is_multiple_of(PREFILL_STEP)
                    && g.cached_tokens < g.prompt_tokens,
                "turn {turn}: {} of {} prompt tokens cached",
                g.cached_tokens,
                g.prompt_tokens
            );
        }
        // The same answer as a batch that never saw this chat.
        let fresh = Models::new()
            .serving(serving)
            .serve(&path, None, 2048)
            .unwrap()
            .generate(
                &Prompt::Chat(messages.clone()),
                &params,
                &|| false,
                &mut |_, _| {},
            )
            .unwrap();
        assert_eq!(g.tokens, fresh.tokens, "turn {turn}");
        // A random-weight model's answer may hold NUL bytes, which no chat template takes.
        messages.push(Message {
            role: "assistant".into(),
            content: g.text.replace('\0', ""),
        });
    }
}

/// JSON mode: the grammar sampler lets the model say only JSON, so even random weights
/// answer with an object (whole, when the model ended it); a grammar that does not parse
/// fails the request, saying so.
#[test]
fn json_mode_answers_in_json_and_a_bad_grammar_is_refused() {
    use myco_jobs::llm::infer::{JSON_GRAMMAR, Models};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    TinyLlama::default().write(&path, false).unwrap();
    let served = Models::new().serve(&path, None, 256).unwrap();
    let prompt = Prompt::Text("the answer as json:".into());
    let params = InferParams {
        grammar: Some(JSON_GRAMMAR.into()),
        ..greedy(64)
    };
    let plain = served
        .generate(&prompt, &greedy(64), &|| false, &mut |_, _| {})
        .unwrap();
    let g = served
        .generate(&prompt, &params, &|| false, &mut |_, _| {})
        .unwrap();
    assert!(
        !plain.text.starts_with('{'),
        "the fixture does not say JSON by itself"
    );
    assert!(g.text.starts_with('{'), "{:?}", g.text);
    if g.finish_reason == Finish::Stop {
        let v: serde_json::Value = serde_json::from_str(g.text.trim()).unwrap();
        assert!(v.is_object());
    }
    // The solo engine follows the grammar the same way.
    let solo = served
        .model()
        .generate(&prompt, &params, &|| false, &mut |_, _| {})
        .unwrap();
    assert_eq!(solo.tokens, g.tokens);
    let bad = InferParams {
        grammar: Some("root ::= (".into()),
        ..greedy(8)
    };
    let err = served
        .generate(&prompt, &bad, &|| false, &mut |_, _| {})
        .unwrap_err();
    assert!(matches!(err, InferError::Grammar(_)), "{err:?}");
}

const WEATHER_TOOLS: &str = r#"[
  {"type": "function", "function": {"name": "get_weather", "description": "The weather of a city.",
   "parameters": {"type": "object", "properties": {
     "city": {"type": "string", "enum": ["Paris", "Oslo", "Lyon"]},
     "days": {"type": "integer", "minimum": 1, "maximum": 7}
   }, "required": ["city", "days"]}}},
  {"type": "function", "function": {"name": "get_time", "description": "The time in a city.",
   "parameters": {"type": "object", "properties": {
     "city": {"type": "string", "enum": ["Paris", "Oslo"]}
   }, "required": ["city"]}}}
]"#;

fn chat_with_tools(choice: ToolChoice) -> Prompt {
    Prompt::Turns(
        r#"[{"role": "system", "content": "You call tools."}, {"role": "user", "content": "Weather in Paris for 3 days?"}]"#
            .into(),
    )
    .with(Extras {
        tools: Some(Tools {
            json: WEATHER_TOOLS.into(),
            choice,
            parallel: false,
        }),
        ..Extras::default()
    })
}

fn qwen_template() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/chat_templates/Qwen-Qwen2.5-7B-Instruct.jinja"),
    )
    .unwrap()
}

/// Checks `args` against the weather tools' schemas (the grammar must have held the model
/// to them): the keys required, the enums, the integer's range, nothing else.
fn valid_arguments(name: &str, args: &str) {
    let v: serde_json::Value = serde_json::from_str(args).unwrap();
    let obj = v.as_object().unwrap();
    let cities: &[&str] = if name == "get_weather" {
        &["Paris", "Oslo", "Lyon"]
    } else {
        &["Paris", "Oslo"]
    };
    assert!(cities.contains(&obj["city"].as_str().unwrap()), "{args}");
    if name == "get_weather" {
        let days = obj["days"].as_i64().unwrap();
        assert!((1..=7).contains(&days), "{args}");
        assert_eq!(obj.len(), 2, "{args}");
    } else {
        assert_eq!(obj.len(), 1, "{args}");
    }
}

/// Tools through a real template (Qwen 2.5's, Hermes' format): `required` and a named
/// function give calls whose arguments follow the schemas (the grammar forces them even on
/// random weights), `none` gives text, `auto` gives text or a well-formed call.
#[test]
fn tool_calls_follow_the_tools_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), true);
    // The fixture's vocabulary is nearly a character a token: tools make long prompts.
    let params = InferParams {
        chat_template: Some(qwen_template()),
        n_ctx: 2048,
        ..greedy(192)
    };
    // The template shows the tools to the model.
    let rendered = m
        .render(
            &chat_with_tools(ToolChoice::Auto),
            params.chat_template.as_deref(),
        )
        .unwrap();
    assert!(rendered.contains("<tools>"), "{rendered}");
    assert!(rendered.contains("\"name\": \"get_weather\""), "{rendered}");
    for (choice, want) in [
        (ToolChoice::Required, None),
        (ToolChoice::Function("get_time".into()), Some("get_time")),
        (
            ToolChoice::Function("get_weather".into()),
            Some("get_weather"),
        ),
    ] {
        let g = m
            .generate(
                &chat_with_tools(choice.clone()),
                &params,
                &|| false,
                &mut |_, _| {},
            )
            .unwrap();
        assert_eq!(g.finish_reason, Finish::ToolCalls, "{choice:?}: {}", g.text);
        assert_eq!(g.tool_calls.len(), 1, "{choice:?}");
        let call = &g.tool_calls[0];
        if let Some(name) = want {
            assert_eq!(call.name, name);
        }
        valid_arguments(&call.name, &call.arguments);
        assert!(call.id.starts_with("call_"), "{}", call.id);
    }
    let g = m
        .generate(
            &chat_with_tools(ToolChoice::None),
            &params,
            &|| false,
            &mut |_, _| {},
        )
        .unwrap();
    assert!(g.tool_calls.is_empty());
    assert_ne!(g.finish_reason, Finish::ToolCalls);
    let g = m
        .generate(
            &chat_with_tools(ToolChoice::Auto),
            &params,
            &|| false,
            &mut |_, _| {},
        )
        .unwrap();
    for c in &g.tool_calls {
        valid_arguments(&c.name, &c.arguments);
    }
    // An unknown function is the request's error, not the engine's.
    let err = m
        .generate(
            &chat_with_tools(ToolChoice::Function("nope".into())),
            &params,
            &|| false,
            &mut |_, _| {},
        )
        .unwrap_err();
    assert!(matches!(err, InferError::Tools(_)), "{err}");
    assert!(!err.is_retryable());
}

/// A template that knows no tools (the fixture's chatml) gets them described in a system
/// turn, and the answer held to the generic JSON shape.
#[test]
fn a_template_without_tools_gets_the_generic_format() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), true);
    let rendered = m
        .render(&chat_with_tools(ToolChoice::Required), None)
        .unwrap();
    assert!(rendered.contains("You can call these tools"), "{rendered}");
    let g = m
        .generate(
            &chat_with_tools(ToolChoice::Required),
            &InferParams {
                n_ctx: 2048,
                ..greedy(96)
            },
            &|| false,
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(g.finish_reason, Finish::ToolCalls, "{}", g.text);
    valid_arguments(&g.tool_calls[0].name, &g.tool_calls[0].arguments);
}

/// `response_format: json_schema`: the answer parses and follows the schema; a schema the
/// grammar builder cannot take is the request's error.
#[test]
fn answers_follow_a_json_schema() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), true);
    let schema = r#"{"type": "object", "properties": {
        "answer": {"type": "string", "enum": ["yes", "no"]},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "maxItems": 2}
    }, "required": ["answer", "confidence", "tags"], "additionalProperties": false}"#;
    let prompt = |schema: &str| {
        Prompt::Chat(vec![Message {
            role: "user".into(),
            content: "Is the sky blue?".into(),
        }])
        .with(Extras {
            schema: Some(schema.into()),
            ..Extras::default()
        })
    };
    let g = m
        .generate(&prompt(schema), &greedy(96), &|| false, &mut |_, _| {})
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&g.text).unwrap();
    assert!(
        ["yes", "no"].contains(&v["answer"].as_str().unwrap()),
        "{}",
        g.text
    );
    assert!(
        (0..=100).contains(&v["confidence"].as_i64().unwrap()),
        "{}",
        g.text
    );
    assert!(v["tags"].as_array().unwrap().len() <= 2, "{}", g.text);
    let err = m
        .generate(
            &prompt(r##"{"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}"##),
            &greedy(8),
            &|| false,
            &mut |_, _| {},
        )
        .unwrap_err();
    assert!(matches!(err, InferError::Schema(_)), "{err}");
}

/// Log-probabilities: one per generated token, the chosen token's first among the
/// alternatives under greedy decoding, the alternatives in order, all at most 0.
#[test]
fn log_probabilities_come_with_the_likeliest_alternatives() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), true);
    let prompt = Prompt::Text("hello swarm".into()).with(Extras {
        logprobs: Some(3),
        ..Extras::default()
    });
    let g = m
        .generate(&prompt, &greedy(12), &|| false, &mut |_, _| {})
        .unwrap();
    let lps = g.logprobs.as_ref().unwrap();
    assert_eq!(lps.len(), g.tokens.len());
    for (lp, &t) in lps.iter().zip(&g.tokens) {
        assert_eq!(lp.top.len(), 3);
        assert!(lp.logprob <= 0.0);
        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!(
            (lp.top[0].logprob - lp.logprob).abs() < 1e-5,
            "greedy picks the likeliest"
        );
        let mut piece = Vec::new();
        m.piece(t, &mut piece);
        assert_eq!(lp.bytes, piece);
    }
    // The same tokens as without log-probabilities.
    let plain = m
        .generate(
            &Prompt::Text("hello swarm".into()),
            &greedy(12),
            &|| false,
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(plain.tokens, g.tokens);
    assert!(plain.logprobs.is_none());
}
