//! The fixture GGUFs (`gguf::TinyLlama::small`) of every architecture and weight type load
//! in llama.cpp and generate: greedy decoding runs to its length (or a few tokens and an
//! end token), repeats itself exactly, and does not emit one token over and over (the
//! random weights are not degenerate).
#![cfg(feature = "infer")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Instant;

use myco_jobs::llm::gguf::{Arch, TinyLlama, WType};
use myco_jobs::llm::infer::engine::LlmModel;
use myco_jobs::llm::infer::{Finish, InferParams, Prompt};

const N: usize = 24;

fn greedy() -> InferParams {
    InferParams {
        max_tokens: N as u32,
        temperature: 0.0,
        repeat_penalty: 1.0,
        n_ctx: 256,
        threads: 1,
        ..InferParams::default()
    }
}

/// Every weight type of `arch`: written, loaded, and run twice.
fn generates_in_every_type(arch: Arch) {
    let dir = tempfile::tempdir().unwrap();
    let prompt = Prompt::Text("hello swarm, the node runs a job".into());
    for wtype in WType::ALL {
        let started = Instant::now();
        let shape = TinyLlama::small(arch, wtype);
        shape.check().unwrap();
        let what = format!("{} {}", arch.name(), wtype.name());
        let path = dir
            .path()
            .join(format!("{}-{}.gguf", arch.name(), wtype.name()));
        shape.write(&path, true).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        let model = LlmModel::load(&path).unwrap();
        let run = || {
            model
                .generate(&prompt, &greedy(), &|| false, &mut |_, _| {})
                .unwrap()
        };
        let (a, b) = (run(), run());
        let distinct: HashSet<i32> = a.tokens.iter().copied().collect();
        println!(
            "{what}: {size} bytes, {} tokens ({:?}, {} distinct) in {:.0?}: {:?}",
            a.tokens.len(),
            a.finish_reason,
            distinct.len(),
            started.elapsed(),
            &a.tokens[..a.tokens.len().min(12)],
        );
        match a.finish_reason {
            Finish::Length => assert_eq!(a.tokens.len(), N, "{what}"),
            Finish::Stop => assert!(a.tokens.len() >= 4, "{what}: {:?}", a.tokens),
            Finish::ToolCalls => panic!("{what}: tool calls without tools"),
        }
        assert_eq!(a.tokens, b.tokens, "{what}: greedy decoding repeats itself");
        assert!(distinct.len() > 1, "{what}: one token over and over");
        drop(model);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn llama_generates_in_every_type() {
    generates_in_every_type(Arch::Llama);
}

#[test]
fn qwen2_generates_in_every_type() {
    generates_in_every_type(Arch::Qwen2);
}

#[test]
fn qwen3_generates_in_every_type() {
    generates_in_every_type(Arch::Qwen3);
}

#[test]
fn gemma3_generates_in_every_type() {
    generates_in_every_type(Arch::Gemma3);
}
