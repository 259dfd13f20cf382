//! A `vulkan` build on a GPU: `infer` and a 2-stage chain with every layer on the Vulkan
//! device (asserted from llama.cpp's own load report), against the CPU's greedy tokens.
//!
//! On a machine without a GPU, Mesa's software device (lavapipe, Debian
//! `mesa-vulkan-drivers`) stands in: ggml skips CPU-type Vulkan devices unless asked, so run
//! with `GGML_VK_VISIBLE_DEVICES=0` (test.sh does):
//! `GGML_VK_VISIBLE_DEVICES=0 cargo test -p myco-jobs --features vulkan --test gpu`.
#![cfg(feature = "vulkan")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use myco_jobs::llm::ffi::DeviceKind;
use myco_jobs::llm::gguf::{Arch, TinyLlama, WType};
use myco_jobs::llm::infer::engine::{self, LlmModel};
use myco_jobs::llm::infer::{InferParams, Prompt};
use myco_jobs::llm::stage::{ModelInfo, Sampler, Stage, StageConfig, StageInput, StageOutput};

/// Short enough that llama.cpp computes the prompt where its weights are (a batch of 32 or
/// more may be sent to the GPU even with no layer there).
const PROMPT: &str = "hello swarm, the node runs";
const N: u32 = 48;
const N_LAYER: u32 = 6;

fn params() -> InferParams {
    InferParams {
        max_tokens: N,
        temperature: 0.0,
        repeat_penalty: 1.1,
        n_ctx: 256,
        threads: 1,
        ..InferParams::default()
    }
}

fn infer(model: &LlmModel) -> Vec<i32> {
    model
        .generate(
            &Prompt::Text(PROMPT.into()),
            &params(),
            &|| false,
            &mut |_, _| {},
        )
        .unwrap()
        .tokens
}

/// Greedy tokens through stages `split`, every layer on the GPU.
fn chain(path: &Path, split: &[(u32, u32)]) -> Vec<i32> {
    let info = ModelInfo::read(path).unwrap();
    let vocab = LlmModel::load_vocab(path).unwrap();
    let prompt: Vec<u32> = vocab
        .tokenize(PROMPT)
        .into_iter()
        .map(|t| t as u32)
        .collect();
    let mut stages: Vec<Stage> = split
        .iter()
        .map(|&(a, b)| {
            let config = StageConfig {
                gpu_layers: u32::MAX,
                threads: 1,
                ..StageConfig::new(256)
            };
            let s = Stage::load_with(path, a, b, config).unwrap();
            let p = s.placement();
            // llama.cpp counts the output layer too.
            assert_eq!(
                p.gpu_layers,
                Some((b - a + 1, b - a + 1)),
                "stage {a}..{b}: {p:?}"
            );
            // The stage's own layers are on the device (its buffers hold at least them).
            let layers: u64 = info.layer_bytes[a as usize..b as usize].iter().sum();
            eprintln!(
                "stage {a}..{b}: {layers} B of layers, {} B on the device {:?}",
                p.device_bytes(),
                p.buffers
            );
            // llama.cpp reports buffer sizes in MiB to two decimals.
            assert!(
                p.device_bytes() + (11 << 10) >= layers,
                "stage {a}..{b} holds {} B on the GPU, less than its layers' {layers} B",
                p.device_bytes()
            );
            s
        })
        .collect();
    let p = params();
    let mut sampler = Sampler::new(&p.sampling(), stages.last().unwrap().hparams().n_vocab);
    let eog = vocab.eog_tokens();
    let (mut input, mut pos, mut out) = (prompt, 0, Vec::new());
    while out.len() < N as usize {
        let n = input.len();
        let mut x = StageInput::Tokens(input);
        let mut logits = Vec::new();
        for s in &mut stages {
            match s.forward(1, pos, x.clone()).unwrap() {
                StageOutput::Hidden(h) => x = StageInput::Hidden(h),
                StageOutput::Logits(l) => logits = l,
            }
        }
        let t = sampler.sample(&logits);
        if eog.contains(&t) {
            break;
        }
        out.push(t as i32);
        pos += n;
        input = vec![t];
    }
    out
}

/// `as_cpu`: the GPU must give the CPU's tokens too (else where they part is printed).
fn on_the_gpu(fixture: TinyLlama, as_cpu: bool) {
    let devices = engine::devices();
    eprintln!("devices: {devices:#?}");
    assert!(
        devices
            .iter()
            .any(|d| d.name.starts_with("Vulkan") && d.kind != DeviceKind::Cpu),
        "no Vulkan device: on a machine without a GPU, install mesa-vulkan-drivers and run with GGML_VK_VISIBLE_DEVICES=0"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    fixture.write(&path, false).unwrap();

    let cpu = LlmModel::load_with(&path, Some(0)).unwrap();
    assert_eq!(cpu.placement().gpu_layers, Some((0, N_LAYER + 1)));
    let want = infer(&cpu);
    drop(cpu);

    let gpu = LlmModel::load(&path).unwrap();
    let p = gpu.placement().clone();
    assert_eq!(p.gpu_layers, Some((N_LAYER + 1, N_LAYER + 1)), "{p:?}");
    assert!(p.device_bytes() > 0, "{p:?}");
    let on_gpu = infer(&gpu);
    drop(gpu);
    let first_diff = |a: &[i32], b: &[i32]| a.iter().zip(b).position(|(x, y)| x != y);
    eprintln!(
        "infer: CPU {} tokens, GPU {} tokens, first difference at {:?}; GPU buffers {:?}",
        want.len(),
        on_gpu.len(),
        first_diff(&want, &on_gpu),
        p.buffers
    );
    assert!(
        want.len() >= 32,
        "the CPU run ended after {} tokens",
        want.len()
    );
    if as_cpu {
        assert_eq!(
            on_gpu, want,
            "infer on the GPU gives the CPU's greedy tokens"
        );
    }

    let split = chain(&path, &[(0, N_LAYER / 2), (N_LAYER / 2, N_LAYER)]);
    eprintln!(
        "2 stages on the GPU: first difference from the CPU at {:?}, from infer on the GPU at {:?}",
        first_diff(&want, &split),
        first_diff(&on_gpu, &split)
    );
    assert_eq!(
        split, on_gpu,
        "2 stages on the GPU give infer's greedy tokens on the GPU"
    );
}

#[test]
fn infer_and_a_two_stage_chain_run_on_the_vulkan_device_with_the_cpus_tokens() {
    on_the_gpu(
        TinyLlama {
            n_layer: N_LAYER,
            ..TinyLlama::default()
        },
        true,
    );
}

/// Quantized weights: ggml-vulkan's Q8_0 kernels round differently from the CPU's (which
/// quantize the activations to Q8 for their dot products), so greedy tokens part at a
/// near-tie (on Mesa's device: after 28 tokens); the chain still gives infer's GPU tokens.
#[test]
fn quantized_q8_0_on_the_vulkan_device_gives_infers_gpu_tokens() {
    on_the_gpu(
        TinyLlama {
            n_layer: N_LAYER,
            ..TinyLlama::small(Arch::Llama, WType::Q8_0)
        },
        false,
    );
}

/// A GPU smaller than the model (here a budget, `--gpu-memory`): the last layers that fit go
/// to the device, the rest run on the CPU, and the tokens stay the CPU's.
#[test]
fn a_model_larger_than_the_gpu_budget_splits_between_vram_and_ram() {
    use myco_jobs::llm::infer::{GpuPolicy, Models};
    use myco_jobs::llm::stage::GPU_RESERVE;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    TinyLlama {
        n_layer: N_LAYER,
        ..TinyLlama::default()
    }
    .write(&path, false)
    .unwrap();
    let info = ModelInfo::read(&path).unwrap();
    let kv = info.kv_bytes_per_layer(params().n_ctx);
    let three: u64 = info.layer_bytes[3..6].iter().sum::<u64>() + 3 * kv;
    let budget = GPU_RESERVE + three;

    let cpu = LlmModel::load_with(&path, Some(0)).unwrap();
    let want = infer(&cpu);
    drop(cpu);

    let models = Models::with_gpu(GpuPolicy {
        layers: None,
        memory: Some(budget),
    });
    let split = models.get_for(&path, None, params().n_ctx).unwrap();
    let p = split.placement().clone();
    assert_eq!(p.gpu_layers, Some((3, N_LAYER + 1)), "{p:?}");
    assert!(p.device_bytes() > 0, "{p:?}");
    assert_eq!(
        infer(&split),
        want,
        "half on the GPU gives the CPU's tokens"
    );
    drop(split);

    // The job's own gpu_layers wins over the node's budget.
    let one = models.get_for(&path, Some(1), params().n_ctx).unwrap();
    assert_eq!(one.placement().gpu_layers, Some((1, N_LAYER + 1)));
    drop(one);

    // A stage of the first half within the same budget: all of its 3 layers (and its dummy
    // head) fit.
    let config = StageConfig {
        gpu_layers: u32::MAX,
        gpu_memory: Some(budget),
        threads: 1,
        ..StageConfig::new(params().n_ctx)
    };
    let s = Stage::load_with(&path, 0, 3, config.clone()).unwrap();
    assert_eq!(s.placement().gpu_layers, Some((4, 4)));
    // The whole model as one stage: the last 3 layers on the GPU.
    let s = Stage::load_with(&path, 0, N_LAYER, config).unwrap();
    assert_eq!(s.placement().gpu_layers, Some((3, N_LAYER + 1)));
}
