//! Concurrent requests on one node (continuous batching), each figure against its baseline in
//! the same run, interleaved round by round, median of the per-round ratios:
//!
//! - `aggregate`: 8 concurrent greedy requests of 128 tokens (8 different prompts) submitted
//!   at once to one node's queue, all their tokens over the wall time from submission to the
//!   last result, against one request alone on the same node. Goal: >= 3x.
//! - `ttft`: of the 8, the time to first streamed token of the last to get one, against the
//!   first's. Goal: <= 2x.
//! - the anchor: llama.cpp's own batched decode through llama-cpp-2 (one context of 8
//!   sequences, a KV cache each, as myco's batch has them, the 8 prompts in one batch, then
//!   one token of each per step), against its
//!   single-sequence loop. myco's 8-way rate is printed against it.
//! - each batched request's tokens against its solo run's, and for the direct loops where a
//!   sequence's batched tokens leave its solo ones, the solo logit gap between the two best
//!   tokens at that step (how near a tie the rounding difference tipped).
//!
//! The model is the tiny-model fixture at bench size (8 layers, n_embd 512, f32: about
//! 110 MB). `MYCO_BENCH_WTYPE` names another weight type (`f16`, `q8_0`, `q4_0`, `q4_K`),
//! `MYCO_BENCH_SHAPE=large` a larger shape (16 layers, n_embd 1024, n_ff 2816: 190 M
//! weights). Threads are pinned: llama.cpp decodes on every core of this machine (printed).
//! No timing assertions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::num::NonZeroU32;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use myco_actors::interactive::{self, Follow, Followed};
use myco_actors::node::handle::NodeHandle;
use myco_actors::{Node, Services};
use myco_benches::median;
use myco_jobs::Task;
use myco_jobs::archive::ModelRef;
use myco_jobs::llm::gguf::{TinyLlama, WType};
use myco_jobs::llm::infer::{Generation, InferParams, InferTask, Prompt};
use myco_runtime::config::{Home, NodeConfig};
use myco_runtime::queue::{JobId, NewJob, StateName};

const N: usize = 8;
const MAX_TOKENS: u32 = 128;
const N_CTX: u32 = 512;
const ROUNDS: usize = 5;

const PROMPTS: [&str; N] = [
    "the swarm is a queue of work and the model is a machine that runs the job",
    "a mini pc and an old laptop find each other on the network",
    "layer ranges chained across the machines of a small team",
    "every accepted job is kept until it is done",
    "embed the archive overnight and ask questions in the morning",
    "the workstation's gpu takes the first layers",
    "one binary, no cloud, no keys",
    "work stealing keeps every core busy",
];

fn threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

fn params() -> InferParams {
    InferParams {
        max_tokens: MAX_TOKENS,
        temperature: 0.0,
        repeat_penalty: 1.0,
        n_ctx: N_CTX,
        threads: 0,
        ..InferParams::default()
    }
}

/// What one run of a set of requests gave: tokens per request, the wall time, and each
/// request's time to its first token.
struct Run {
    tokens: Vec<Vec<i32>>,
    wall: Duration,
    ttft: Vec<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.tokens.iter().map(Vec::len).sum::<usize>() as f64 / self.wall.as_secs_f64()
    }
}

/// Submit the requests for `prompts` at once and follow each to its end.
async fn myco(node: &NodeHandle, model: &Path, prompts: &[&str], round: usize) -> Run {
    let jobs = prompts
        .iter()
        .map(|p| NewJob {
            task: Task::Infer(InferTask {
                gpu: false,
                model: ModelRef::at(model),
                // A round number in front: no request reuses another's cached prompt.
                prompt: Prompt::Text(format!("{round}. {p}")),
                params: params(),
            }),
            priority: interactive::INTERACTIVE_PRIORITY,
            max_attempts: 1,
            timeout_ms: 600_000,
            idempotency_key: None,
            children: Vec::new(),
        })
        .collect();
    let started = Instant::now();
    let ids: Vec<JobId> = node
        .queue()
        .submit(jobs)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    let follows: Vec<_> = ids
        .iter()
        .map(|&id| {
            let mut rx = interactive::spawn_follow(node, id, Follow::default());
            tokio::spawn(async move {
                let mut first = None;
                while let Some(f) = rx.recv().await {
                    match f {
                        Followed::Piece(p) if p.token.is_some() && first.is_none() => {
                            first = Some(started.elapsed());
                        }
                        Followed::End(rec) => {
                            assert_eq!(rec.state.name(), StateName::Done, "{:?}", rec.last_error);
                            break;
                        }
                        _ => {}
                    }
                }
                first.unwrap_or_else(|| started.elapsed())
            })
        })
        .collect();
    let mut ttft = Vec::new();
    for f in follows {
        ttft.push(f.await.unwrap());
    }
    let wall = started.elapsed();
    let mut tokens = Vec::new();
    for id in ids {
        let g: Generation =
            serde_json::from_slice(&node.queue().result(id).unwrap().unwrap()).unwrap();
        tokens.push(g.tokens);
    }
    ttft.sort();
    Run { tokens, wall, ttft }
}

/// llama.cpp through llama-cpp-2, no myco: the prompts decoded together in one context of
/// as many sequences, then one token of each per step, greedy. With `gaps`, also the logit
/// gap between the two best tokens at each step (for one sequence).
fn direct(model: &LlamaModel, prompts: &[&str], round: usize, gaps: bool) -> (Run, Vec<Vec<f32>>) {
    let backend = myco_jobs::llm::infer::engine::backend().unwrap();
    let t = threads() as i32;
    let n = prompts.len();
    let started = Instant::now();
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(N_CTX * n as u32))
        .with_n_seq_max(n as u32)
        .with_kv_unified(false)
        .with_n_batch(N_CTX * n as u32)
        .with_n_ubatch(512)
        .with_n_threads(t)
        .with_n_threads_batch(t);
    let mut ctx = model.new_context(backend, params).unwrap();
    let vocab = model.vocab();
    let prompts: Vec<Vec<LlamaToken>> = prompts
        .iter()
        .map(|p| vocab.tokenize(format!("{round}. {p}").as_bytes(), true, true))
        .collect();
    let mut batch = LlamaBatch::new((N_CTX as usize) * n, 1);
    let mut logits_at = vec![0i32; n];
    let mut at = 0;
    for (s, toks) in prompts.iter().enumerate() {
        for (i, &tok) in toks.iter().enumerate() {
            let last = i + 1 == toks.len();
            batch.add(tok, i as i32, &[s as i32], last).unwrap();
            if last {
                logits_at[s] = at;
            }
            at += 1;
        }
    }
    ctx.decode(&mut batch).unwrap();
    let mut samplers: Vec<LlamaSampler> = (0..n).map(|_| LlamaSampler::greedy()).collect();
    let mut out: Vec<Vec<i32>> = vec![Vec::new(); n];
    let mut gap: Vec<Vec<f32>> = vec![Vec::new(); n];
    let mut ttft = vec![Duration::ZERO; n];
    let mut live: Vec<bool> = vec![true; n];
    let mut pos: Vec<i32> = prompts.iter().map(|p| p.len() as i32).collect();
    loop {
        batch.clear();
        let mut at = 0;
        for s in 0..n {
            if !live[s] {
                continue;
            }
            if gaps {
                let mut l: Vec<f32> = ctx.get_logits_ith(logits_at[s]).to_vec();
                l.sort_by(|a, b| b.total_cmp(a));
                gap[s].push(l[0] - l[1]);
            }
            let tok = samplers[s].sample(&ctx, logits_at[s]);
            if out[s].is_empty() {
                ttft[s] = started.elapsed();
            }
            if vocab.is_eog(tok) {
                live[s] = false;
                continue;
            }
            out[s].push(tok.0);
            if out[s].len() >= MAX_TOKENS as usize {
                live[s] = false;
                continue;
            }
            batch.add(tok, pos[s], &[s as i32], true).unwrap();
            pos[s] += 1;
            logits_at[s] = at;
            at += 1;
        }
        if batch.n_tokens() == 0 {
            break;
        }
        ctx.decode(&mut batch).unwrap();
    }
    ttft.sort();
    (
        Run {
            tokens: out,
            wall: started.elapsed(),
            ttft,
        },
        gap,
    )
}

/// The bench model: [`TinyLlama::bench`], or the shape and type the environment names.
fn bench_model() -> TinyLlama {
    let mut m = match std::env::var("MYCO_BENCH_SHAPE").as_deref() {
        Ok("large") => TinyLlama {
            n_embd: 1024,
            n_head: 16,
            n_head_kv: 4,
            n_ff: 2816,
            n_layer: 16,
            ..TinyLlama::bench()
        },
        Ok("") | Ok("bench") | Err(_) => TinyLlama::bench(),
        Ok(other) => panic!("MYCO_BENCH_SHAPE={other}: expected bench or large"),
    };
    if let Ok(name) = std::env::var("MYCO_BENCH_WTYPE") {
        m.wtype = WType::from_name(&name).unwrap_or_else(|| {
            panic!("MYCO_BENCH_WTYPE={name}: expected f32, f16, q8_0, q4_0 or q4_K")
        });
    }
    assert!(m.check().is_ok(), "{m:?} does not fit its weight type");
    m
}

fn main() {
    let root = tempfile::tempdir().expect("tempdir");
    let home = root.path().join("node");
    std::fs::create_dir_all(home.join("models")).unwrap();
    let model_path = home.join("models/bench.gguf");
    let shape = bench_model();
    shape.write(&model_path, false).unwrap();
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let backend = myco_jobs::llm::infer::engine::backend().unwrap();
    let model = LlamaModel::load_from_file(backend, &model_path, &LlamaModelParams::default())
        .expect("load the bench model");
    let cfg = NodeConfig {
        name: Some("bench".into()),
        workers: 1,
        discovery: false,
        threads: threads(),
        parallel: Some(N as u32),
        ..NodeConfig::default()
    };
    let node = rt
        .block_on(Node::start(
            Home::new(home.clone()),
            cfg,
            Services::EMBEDDED,
        ))
        .expect("start the node");
    let handle = node.handle().clone();
    // The model loaded and its batch made before measuring.
    rt.block_on(myco(&handle, &model_path, &PROMPTS[..1], 0));

    let mut g = c.benchmark_group("batch");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20))
        .sampling_mode(SamplingMode::Flat);
    let mut round = 1000;
    g.bench_function("myco_1", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    round += 1;
                    rt.block_on(myco(&handle, &model_path, &PROMPTS[..1], round))
                        .wall
                })
                .sum()
        })
    });
    g.bench_function("myco_8", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    round += 1;
                    rt.block_on(myco(&handle, &model_path, &PROMPTS, round))
                        .wall
                })
                .sum()
        })
    });
    g.finish();
    c.final_summary();
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        rt.block_on(node.shutdown()).unwrap();
        return;
    }

    // Interleaved rounds: myco alone, myco 8 at once, direct alone, direct 8 at once.
    let (mut agg, mut ttft, mut anchor, mut vs_direct) = (vec![], vec![], vec![], vec![]);
    let (mut same, mut total) = (0, 0);
    let mut diverged = Vec::new();
    for r in 0..ROUNDS {
        let one = rt.block_on(myco(&handle, &model_path, &PROMPTS[..1], r));
        let eight = rt.block_on(myco(&handle, &model_path, &PROMPTS, r));
        let (d_one, _) = direct(&model, &PROMPTS[..1], r, false);
        let (d_eight, _) = direct(&model, &PROMPTS, r, false);
        agg.push(eight.rate() / one.rate());
        ttft.push(eight.ttft[N - 1].as_secs_f64() / eight.ttft[0].as_secs_f64());
        anchor.push(d_eight.rate() / d_one.rate());
        vs_direct.push(eight.rate() / d_eight.rate());
        // Each of the 8 against its own solo run (the direct loop, one sequence).
        for (s, p) in PROMPTS.iter().enumerate() {
            let (solo, gaps) = direct(&model, std::slice::from_ref(p), r, true);
            total += 1;
            let solo = &solo.tokens[0];
            let mine = &eight.tokens[s];
            if solo == mine {
                same += 1;
            } else {
                let at = solo.iter().zip(mine).take_while(|(a, b)| a == b).count();
                diverged.push(format!(
                    "round {r} prompt {s}: from token {at} (solo logit gap there {:.4})",
                    gaps[0].get(at).copied().unwrap_or(f32::NAN)
                ));
            }
        }
        println!(
            "round {r}: 1 alone {:.1} tok/s, 8 at once {:.1} tok/s ({:.2}x); first token {:.0} ms .. {:.0} ms; direct {:.1} / {:.1} tok/s",
            one.rate(),
            eight.rate(),
            eight.rate() / one.rate(),
            eight.ttft[0].as_secs_f64() * 1e3,
            eight.ttft[N - 1].as_secs_f64() * 1e3,
            d_one.rate(),
            d_eight.rate(),
        );
    }
    rt.block_on(node.shutdown()).unwrap();
    println!();
    println!(
        "== batch: {N} concurrent greedy requests of {MAX_TOKENS} tokens, {} threads, n_ctx {N_CTX}, median of {ROUNDS} interleaved rounds ==",
        threads()
    );
    println!(
        "model: {} layers, n_embd {}, n_ff {}, {} weights, {} MB",
        shape.n_layer,
        shape.n_embd,
        shape.n_ff,
        shape.wtype.name(),
        std::fs::metadata(&model_path).map_or(0, |m| m.len() >> 20)
    );
    println!(
        "aggregate tok/s, 8 at once / 1 alone      {:.2}x  (goal >= 3x)",
        median(agg)
    );
    println!(
        "time to first token, 8th / 1st            {:.2}x  (goal <= 2x)",
        median(ttft)
    );
    println!(
        "llama.cpp direct, 8 batched / 1 alone     {:.2}x  (the anchor)",
        median(anchor)
    );
    println!(
        "myco 8 at once / direct 8 batched         {:.2}x",
        median(vs_direct)
    );
    let prompt_tokens: usize = PROMPTS
        .iter()
        .map(|p| model.vocab().tokenize(p.as_bytes(), true, true).len())
        .sum();
    println!(
        "prompts: {} tokens each on average (the fixture's small vocabulary spends about a token per character), prefilled together before the 8 generate",
        prompt_tokens / N
    );
    println!("tokens equal to the solo run's: {same} of {total} requests");
    for d in diverged {
        println!("  diverged: {d}");
    }
}
