//! The stage engine (candle) against llama.cpp on the same GGUF: the logits of every
//! position agree within a stated tolerance, with GQA (4 heads, 2 KV heads) and rope at
//! positions past 0.
#![cfg(all(feature = "infer", feature = "pipeline"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU32;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use myco_jobs::gguf::TinyLlama;
use myco_jobs::infer::engine;
use myco_jobs::stage::{Stage, StageInput, StageOutput, argmax};

/// The largest absolute difference allowed between candle's and llama.cpp's logits (f32
/// weights; the logits of this model are of order 1). The sums run in different orders.
const TOLERANCE: f32 = 1e-3;

#[test]
fn stage_logits_agree_with_llama_cpp_at_every_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    TinyLlama::default().write(&path, false).unwrap();

    let backend = engine::backend().unwrap();
    let model = LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default()).unwrap();
    let tokens: Vec<LlamaToken> =
        model
            .vocab()
            .tokenize(b"hello swarm, the node runs a job in the queue", true, true);
    assert!(tokens.len() > 8, "{} tokens", tokens.len());
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(128))
        .with_n_threads(1)
        .with_n_threads_batch(1);
    let mut ctx = model.new_context(backend, ctx_params).unwrap();
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    for (i, t) in (0i32..).zip(tokens.iter().copied()) {
        batch.add(t, i, &[0], true).unwrap();
    }
    ctx.decode(&mut batch).unwrap();

    let mut stage = Stage::load(&path, 0, 3, 128).unwrap();
    let mut worst = 0f32;
    let mut greedy_checked = 0;
    for (i, t) in tokens.iter().enumerate() {
        let StageOutput::Logits(ours) = stage
            .forward(0, i, StageInput::Tokens(vec![t.0 as u32]))
            .unwrap()
        else {
            panic!("a whole-model stage returns logits");
        };
        let theirs = ctx.get_logits_ith(i as i32);
        assert_eq!(ours.len(), theirs.len());
        let diff = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(diff);
        assert!(diff <= TOLERANCE, "position {i}: logits differ by {diff}");
        // The greedy choice agrees wherever the top two are further apart than the tolerance.
        let mut sorted = theirs.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 2.0 * TOLERANCE {
            assert_eq!(argmax(&ours), argmax(theirs), "position {i}");
            greedy_checked += 1;
        }
    }
    eprintln!(
        "{} positions: worst |candle - llama.cpp| = {worst:e}; greedy compared at {greedy_checked}",
        tokens.len()
    );
    assert!(greedy_checked > tokens.len() / 2);
}
