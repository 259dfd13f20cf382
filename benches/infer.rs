//! The inference goals, each measured against its baseline in the same run, on the same
//! model file, prompt, threads and sampler (greedy):
//!
//! - `infer_path`: a whole request through myco (an `infer` job submitted to a node's queue,
//!   leased by its executive, run on the executor thread, the result read back), against a
//!   direct llama-cpp-2 loop (load once; per request a context, the prompt decoded as one
//!   batch, then sample and decode token by token). Throughput is generated tokens per second
//!   of wall time, request to result. Goal: >= 0.97x. The prompt and generation rates of
//!   both are printed too (myco's from the engine's own timings).
//! - `ttft`: time to the first token through the HTTP API (`POST /v1/completions` with
//!   `stream: true`, over TCP on 127.0.0.1, until the first content chunk arrives), against
//!   the direct loop's time to its first sampled token.
//!
//! The model is a random-weight llama GGUF written by the tiny-model fixture at a larger size
//! (8 layers, n_embd 512: about 110 MB of f32), so a token costs real work. No timing
//! assertions: figures are printed with their ratio.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU32;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use futures_util::StreamExt;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use myco_actors::{Node, Services};
use myco_benches::{Totals, fmt_rate, fmt_ratio};
use myco_jobs::Task;
use myco_jobs::archive::ModelRef;
use myco_jobs::llm::gguf::TinyLlama;
use myco_jobs::llm::infer::{Generation, InferParams, InferTask, Prompt};
use myco_runtime::config::{Home, NodeConfig};
use myco_runtime::queue::{NewJob, StateName};

const PROMPT: &str = "the swarm is a queue of work and the model is a machine that runs the job";

/// The prompt of the next request: a number in front, so that no request finds its prompt
/// in myco's prompt cache (the direct loop has none), but the same length every time.
fn prompt() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(100);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 900 + 100;
    format!("{n}. {PROMPT}")
}
const MAX_TOKENS: u32 = 96;
const N_CTX: u32 = 512;
const TTFT_RUNS: usize = 15;

fn threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// One direct run: (prompt tokens, prompt time, generated tokens, generation time, time to
/// the first sampled token).
struct Direct {
    prompt_tokens: usize,
    prompt: Duration,
    generated: usize,
    generation: Duration,
    ttft: Duration,
}

fn direct(model: &LlamaModel) -> Direct {
    let backend = myco_jobs::llm::infer::engine::backend().unwrap();
    let t = threads() as i32;
    let started = Instant::now();
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(N_CTX))
        .with_n_batch(N_CTX)
        .with_n_threads(t)
        .with_n_threads_batch(t);
    let mut ctx = model.new_context(backend, params).unwrap();
    let vocab = model.vocab();
    let tokens = vocab.tokenize(prompt().as_bytes(), true, true);
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    let last = tokens.len() as i32 - 1;
    for (i, tok) in (0i32..).zip(tokens.iter().copied()) {
        batch.add(tok, i, &[0], i == last).unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    let prompt = started.elapsed();
    let mut sampler = LlamaSampler::greedy();
    let gen_started = Instant::now();
    let mut ttft = Duration::ZERO;
    let mut pos = tokens.len() as i32;
    let mut generated = 0;
    let mut piece = Vec::new();
    while generated < MAX_TOKENS as usize {
        let token = sampler.sample(&ctx, batch.n_tokens() - 1);
        if generated == 0 {
            ttft = started.elapsed();
        }
        if vocab.is_eog(token) {
            break;
        }
        piece.clear();
        vocab.token_to_piece_into(token, &mut piece, false, None);
        std::hint::black_box(&piece);
        generated += 1;
        batch.clear();
        batch.add(token, pos, &[0], true).unwrap();
        pos += 1;
        ctx.decode(&mut batch).unwrap();
    }
    Direct {
        prompt_tokens: tokens.len(),
        prompt,
        generated,
        generation: gen_started.elapsed(),
        ttft,
    }
}

fn task(model: &Path) -> InferTask {
    InferTask {
        gpu: false,
        model: ModelRef::at(model),
        prompt: Prompt::Text(prompt()),
        params: InferParams {
            max_tokens: MAX_TOKENS,
            temperature: 0.0,
            repeat_penalty: 1.0,
            n_ctx: N_CTX,
            threads: threads(),
            ..InferParams::default()
        },
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let root = tempfile::tempdir().expect("tempdir");
    let home = root.path().join("node");
    std::fs::create_dir_all(home.join("models")).unwrap();
    let model_path = home.join("models/bench.gguf");
    TinyLlama::bench().write(&model_path, false).unwrap();

    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    // The direct baseline's model, loaded once (as myco's executive keeps its own).
    let backend = myco_jobs::llm::infer::engine::backend().unwrap();
    let model = LlamaModel::load_from_file(backend, &model_path, &LlamaModelParams::default())
        .expect("load the bench model");

    let cfg = NodeConfig {
        name: Some("bench".into()),
        // The batch lane idles: the request runs on the executive.
        workers: 1,
        discovery: false,
        api: "127.0.0.1:0".parse().unwrap(),
        ..NodeConfig::default()
    };
    let node = rt
        .block_on(Node::start(
            Home::new(home.clone()),
            cfg,
            Services {
                api: true,
                cluster: false,
            },
        ))
        .expect("start the node");
    let handle = node.handle().clone();
    let api = node.api_addr().expect("api");
    let run_myco = || -> Generation {
        rt.block_on(async {
            let job = NewJob {
                task: Task::Infer(task(&model_path)),
                priority: 0,
                max_attempts: 1,
                timeout_ms: 600_000,
                idempotency_key: None,
                children: Vec::new(),
            };
            let id = handle.queue().submit(vec![job]).await.unwrap()[0].id;
            let rec = handle.wait(id, Duration::from_millis(250)).await.unwrap();
            assert_eq!(rec.state.name(), StateName::Done, "{:?}", rec.last_error);
            serde_json::from_slice(&handle.queue().result(id).unwrap().unwrap()).unwrap()
        })
    };
    // Same tokens both ways, and the model loaded on the executive before measuring.
    let first = run_myco();
    let d = direct(&model);
    assert_eq!(
        first.completion_tokens as usize, d.generated,
        "same generation length"
    );

    let mut g = c.benchmark_group("infer_path");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(15))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(u64::from(first.completion_tokens)));
    let (mut t_myco, mut t_direct) = (Totals::default(), Totals::default());
    let (mut m_prompt, mut m_gen) = (Totals::default(), Totals::default());
    let (mut d_prompt, mut d_gen) = (Totals::default(), Totals::default());
    g.bench_function("direct", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let r = direct(&model);
                d_prompt.add(r.prompt_tokens as u64, r.prompt);
                d_gen.add(r.generated as u64, r.generation);
                t_direct.add(r.generated as u64, Duration::ZERO);
            }
            let elapsed = start.elapsed();
            t_direct.add(0, elapsed);
            elapsed
        })
    });
    g.bench_function("myco", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let r = run_myco();
                m_prompt.add(
                    u64::from(r.prompt_tokens),
                    Duration::from_secs_f64(r.prompt_ms / 1e3),
                );
                m_gen.add(
                    u64::from(r.completion_tokens),
                    Duration::from_secs_f64(r.generation_ms / 1e3),
                );
                t_myco.add(u64::from(r.completion_tokens), Duration::ZERO);
            }
            let elapsed = start.elapsed();
            t_myco.add(0, elapsed);
            elapsed
        })
    });
    g.finish();
    c.final_summary();
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        rt.block_on(node.shutdown()).unwrap();
        return;
    }

    // Time to first token: HTTP streaming vs the direct loop.
    let client = reqwest::Client::new();
    let url = format!("http://{api}/v1/completions");
    let body = || {
        serde_json::json!({
            "model": "bench", "prompt": prompt(), "max_tokens": 4, "temperature": 0.0,
            "repeat_penalty": 1.0, "n_ctx": N_CTX, "stream": true,
        })
    };
    let mut http_ttft = Vec::new();
    let mut direct_ttft = Vec::new();
    for _ in 0..TTFT_RUNS {
        direct_ttft.push(direct(&model).ttft);
        http_ttft.push(rt.block_on(async {
            let start = Instant::now();
            let resp = client.post(&url).json(&body()).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let mut stream = resp.bytes_stream();
            let mut seen = Vec::new();
            let mut first = None;
            while let Some(chunk) = stream.next().await {
                seen.extend_from_slice(&chunk.unwrap());
                // The first chunk with text ("text":"..." non-empty).
                if first.is_none() && String::from_utf8_lossy(&seen).contains("\"text\":\"") {
                    let s = String::from_utf8_lossy(&seen).into_owned();
                    if s.split("\"text\":\"").skip(1).any(|t| !t.starts_with('"')) {
                        first = Some(start.elapsed());
                    }
                }
            }
            first.unwrap_or_else(|| start.elapsed())
        }));
    }
    rt.block_on(node.shutdown()).unwrap();

    let rate = |t: &Totals| t.rate();
    println!();
    println!(
        "== infer: {} generated tokens a request, greedy, {} threads, n_ctx {N_CTX} ==",
        first.completion_tokens,
        threads()
    );
    println!(
        "request to result   myco {} tok/s   direct {} tok/s   ratio {}  (goal >= 0.97x)",
        fmt_rate(rate(&t_myco)),
        fmt_rate(rate(&t_direct)),
        fmt_ratio(rate(&t_myco), rate(&t_direct)),
    );
    println!(
        "prompt              myco {} tok/s   direct {} tok/s   ratio {}",
        fmt_rate(rate(&m_prompt)),
        fmt_rate(rate(&d_prompt)),
        fmt_ratio(rate(&m_prompt), rate(&d_prompt)),
    );
    println!(
        "generation          myco {} tok/s   direct {} tok/s   ratio {}",
        fmt_rate(rate(&m_gen)),
        fmt_rate(rate(&d_gen)),
        fmt_ratio(rate(&m_gen), rate(&d_gen)),
    );
    let (h, dt) = (median(http_ttft), median(direct_ttft));
    println!(
        "time to first token (median of {TTFT_RUNS})   HTTP stream {:.1} ms   direct {:.1} ms   overhead {:.1} ms ({:.2}x)",
        h.as_secs_f64() * 1e3,
        dt.as_secs_f64() * 1e3,
        (h.as_secs_f64() - dt.as_secs_f64()) * 1e3,
        h.as_secs_f64() / dt.as_secs_f64(),
    );
}
