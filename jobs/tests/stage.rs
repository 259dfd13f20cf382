//! The stage engine against llama.cpp `infer` on the same GGUF: a greedy run (with the
//! repeat penalty) through one whole-model stage, and through chains of 2 and 3 stages, gives
//! exactly `infer`'s tokens, for every architecture and tensor type the fixtures make.
#![cfg(all(feature = "infer", feature = "pipeline"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use myco_jobs::llm::gguf::TinyLlama;
use myco_jobs::llm::infer::engine::LlmModel;
use myco_jobs::llm::infer::{InferParams, Prompt};
use myco_jobs::llm::stage::{Sampler, Stage, StageInput, StageOutput, UBATCH};

const PROMPT: &str = "hello swarm, the node runs a job in the queue of the machine";

fn params(n: u32) -> InferParams {
    InferParams {
        max_tokens: n,
        temperature: 0.0,
        repeat_penalty: 1.1,
        n_ctx: 512,
        threads: 1,
        ..InferParams::default()
    }
}

/// `infer`'s greedy tokens.
fn infer_tokens(path: &Path, n: u32) -> Vec<i32> {
    let model = LlmModel::load(path).unwrap();
    let generation = model
        .generate(
            &Prompt::Text(PROMPT.into()),
            &params(n),
            &|| false,
            &mut |_, _| {},
        )
        .unwrap();
    generation.tokens
}

/// Greedy tokens through a chain of stages: the prompt in chunks of UBATCH (as llama.cpp
/// splits a batch), then one token at a time, stopping at an end-of-generation token.
fn chain_tokens(path: &Path, split: &[(u32, u32)], n: u32) -> Vec<i32> {
    let vocab = LlmModel::load_vocab(path).unwrap();
    let prompt: Vec<u32> = vocab
        .tokenize(PROMPT)
        .into_iter()
        .map(|t| t as u32)
        .collect();
    let mut stages: Vec<Stage> = split
        .iter()
        .map(|&(a, b)| {
            let mut s = Stage::load(path, a, b, 512).unwrap();
            s.begin(1, 512, 1).unwrap();
            s
        })
        .collect();
    let p = params(n);
    let n_vocab = stages.last().unwrap().hparams().n_vocab;
    let mut sampler = Sampler::new(&p.sampling(), n_vocab);
    let eog = vocab.eog_tokens();
    let mut feed: Vec<Vec<u32>> = prompt
        .chunks(UBATCH as usize)
        .map(<[u32]>::to_vec)
        .collect();
    let mut pos = 0;
    let mut out = Vec::new();
    while out.len() < n as usize {
        let chunks = std::mem::take(&mut feed);
        let count = chunks.len();
        let mut logits = Vec::new();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let len = chunk.len();
            let mut x = StageInput::Tokens(chunk);
            for s in &mut stages {
                match s.forward_with(1, pos, x.clone(), i + 1 == count).unwrap() {
                    StageOutput::Hidden(h) => x = StageInput::Hidden(h),
                    StageOutput::Logits(l) => logits = l,
                }
            }
            pos += len;
        }
        let t = sampler.sample(&logits);
        if eog.contains(&t) {
            break;
        }
        out.push(t as i32);
        feed = vec![vec![t]];
    }
    out
}

fn check(path: &Path, n_layer: u32, n: u32) {
    let want = infer_tokens(path, n);
    assert!(
        want.len() >= n as usize,
        "{}: infer stopped after {} tokens",
        path.display(),
        want.len()
    );
    let whole = chain_tokens(path, &[(0, n_layer)], n);
    assert_eq!(whole, want, "the whole-model stage and infer differ");
    let third = (n_layer / 3).max(1);
    for split in [
        vec![(0, n_layer / 2), (n_layer / 2, n_layer)],
        vec![(0, third), (third, 2 * third), (2 * third, n_layer)],
    ] {
        let got = chain_tokens(path, &split, n);
        assert_eq!(got, want, "split {split:?}");
    }
    eprintln!(
        "{}: {} tokens equal to infer's, whole and split 2 and 3 ways: {:?}…",
        path.display(),
        want.len(),
        &want[..want.len().min(12)]
    );
}

#[test]
fn stages_give_infers_greedy_tokens_on_the_f32_llama() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let fixture = TinyLlama {
        n_layer: 6,
        ..TinyLlama::default()
    };
    fixture.write(&path, false).unwrap();
    check(&path, 6, 128);
}

/// Every architecture, quantized and f16: whole, split in 2 and in 3 (Gemma 3's six layers
/// cut off its sliding-window period, so the slices carry the pattern) = `infer`.
#[test]
fn stages_give_infers_greedy_tokens_for_every_architecture_and_type() {
    use myco_jobs::llm::gguf::{Arch, WType};
    let dir = tempfile::tempdir().unwrap();
    for arch in Arch::ALL {
        for wtype in [WType::F16, WType::Q8_0, WType::Q4_0, WType::Q4_K] {
            let path = dir
                .path()
                .join(format!("{}-{}.gguf", arch.name(), wtype.name()));
            // Random weights may pick an end token early: take the first seed whose run is
            // long enough (the seeds are fixed, so this is the same model every run).
            let fixture = (42..60)
                .map(|seed| TinyLlama {
                    seed,
                    ..TinyLlama::small(arch, wtype)
                })
                .find(|f| {
                    f.check().unwrap();
                    f.write(&path, false).unwrap();
                    infer_tokens(&path, 128).len() == 128
                })
                .expect("a seed whose greedy run is 128 tokens long");
            check(&path, fixture.n_layer, 128);
        }
    }
}

/// VRAM first, then RAM: the layers that fit in a GPU budget, counted from the last (as
/// llama.cpp offloads), each with its KV cache, and the head only when everything fits.
#[test]
fn the_gpu_takes_the_last_layers_that_fit() {
    use myco_jobs::llm::stage::{GPU_RESERVE, ModelInfo};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    TinyLlama {
        n_layer: 6,
        ..TinyLlama::default()
    }
    .write(&path, false)
    .unwrap();
    let info = ModelInfo::read(&path).unwrap();
    let n_ctx = 256;
    let layer = |i: usize| info.layer_bytes[i] + info.kv_bytes_per_layer(n_ctx);
    let all: u64 = (0..6).map(layer).sum::<u64>() + info.head_bytes;

    assert_eq!(info.gpu_layers_that_fit(0, 6, n_ctx, 0, true), 0);
    assert_eq!(info.gpu_layers_that_fit(0, 6, n_ctx, GPU_RESERVE, true), 0);
    // Everything, and the head: one more than the layers.
    assert_eq!(
        info.gpu_layers_that_fit(0, 6, n_ctx, GPU_RESERVE + all, true),
        7
    );
    // The last two layers, a byte short of a third.
    let two = layer(5) + layer(4);
    assert_eq!(
        info.gpu_layers_that_fit(0, 6, n_ctx, GPU_RESERVE + two, true),
        2
    );
    assert_eq!(
        info.gpu_layers_that_fit(0, 6, n_ctx, GPU_RESERVE + two + layer(3) - 1, true),
        2
    );
    // A stage's range: its own layers (no head before the last stage).
    let first_half: u64 = (0..3).map(layer).sum();
    assert_eq!(
        info.gpu_layers_that_fit(0, 3, n_ctx, GPU_RESERVE + first_half, false),
        4
    );
    // A longer context takes more of the GPU for the same layers.
    assert!(info.gpu_layers_that_fit(0, 6, 1 << 20, GPU_RESERVE + two, true) < 2);
}
