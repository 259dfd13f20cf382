//! The llama.cpp engine on the tiny random-weight llama GGUF that `gguf::TinyLlama` writes:
//! greedy decoding is deterministic, and each bad input is a precise error.
#![cfg(feature = "infer")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myco_jobs::gguf::TinyLlama;
use myco_jobs::infer::engine::LlmModel;
use myco_jobs::infer::{Finish, InferError, InferParams, Message, Prompt};

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
    let models = myco_jobs::infer::engine::Models::new();
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
    let headroom = myco_jobs::infer::engine::HEADROOM;
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
    use myco_jobs::infer::engine::Models;
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
