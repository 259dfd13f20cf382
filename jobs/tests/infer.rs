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
    let a = m
        .generate(&prompt, &greedy(24), &|| false, &mut |t, _| {
            streamed.push(t)
        })
        .unwrap();
    let b = m
        .generate(&prompt, &greedy(24), &|| false, &mut |_, _| {})
        .unwrap();
    assert!(!a.tokens.is_empty());
    assert_eq!(a.tokens, b.tokens, "greedy decoding repeats itself");
    assert_eq!(a.text, b.text);
    assert_eq!(streamed, a.tokens, "every token was streamed, in order");
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
    let rendered = m.render(&chat).unwrap();
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

    let plain = model(dir.path(), false);
    let err = plain
        .generate(&chat, &greedy(4), &|| false, &mut |_, _| {})
        .unwrap_err();
    assert!(matches!(err, InferError::NoChatTemplate { .. }), "{err}");
    assert!(err.to_string().contains("plain.gguf"));
    assert!(!err.is_retryable());
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
