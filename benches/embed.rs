//! The embedding goals, each measured against its baseline in the same run:
//!
//! - `embed_path`: the same texts embedded through myco (an `embed` job submitted to an
//!   embedded node with one worker: queue, executor thread, token-budget batching, result
//!   encoding, reading the vectors back) vs a direct fastembed call (`TextEmbedding::embed`,
//!   its default batch of 256) on the same model, with ONNX Runtime's default threads in
//!   both. Goal: >= 0.95x. A second baseline calls fastembed directly on the batches myco
//!   forms (texts sorted by token count, cut by the same budget), which isolates myco's own
//!   overhead (queue, executor thread, JSON) from its batching gain.
//! - `pipeline`: an archive job over a generated archive (md, txt, html, pdf), chunks/s end to
//!   end (plan, chunk, embed, write the collection) on one node and on a swarm of three nodes
//!   in this process, joined over real TCP (mutual TLS) on 127.0.0.1. These runs take tens of
//!   seconds each, so they are timed once per configuration, outside criterion's sampling.
//!
//! Needs ./setup.sh (the model and ONNX Runtime in ~/.myco or $MYCO_HOME). No timing
//! assertions: figures are printed with their ratio.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};
use myco_actors::{Node, Services, SpecSource};
use myco_benches::{Totals, fmt_rate, fmt_ratio, linked_home, real_home, write_archive};
use myco_jobs::Task;
use myco_jobs::archive::ModelRef;
use myco_jobs::kind::embed::DEFAULT_BATCH_TOKENS;
use myco_runtime::config::{Home, NodeConfig};
use myco_runtime::queue::{NewJob, StateName};
use tokio::runtime::Runtime;

const MODEL: &str = "all-MiniLM-L6-v2";
/// Texts per embed round: chunk-sized pieces of the generated archive.
const TEXTS: usize = 128;
/// Files in the pipeline's archive.
const PIPELINE_FILES: usize = 160;

#[derive(Debug, Default)]
struct Results {
    myco: Totals,
    direct: Totals,
    direct_sorted: Totals,
    pipeline_one: Option<(usize, Duration)>,
    pipeline_three: Option<(usize, Duration)>,
}

fn main() {
    let started = Instant::now();
    let model_dir = real_home().join("models").join(MODEL);
    assert!(
        model_dir.join("model.onnx").is_file(),
        "no model at {}: run ./setup.sh first",
        model_dir.display()
    );
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut r = Results::default();
    let texts = sample_texts();
    bench_embed_path(&mut c, &rt, &model_dir, &texts, &mut r);
    c.final_summary();
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    r.pipeline_one = Some(pipeline(&rt, 1));
    r.pipeline_three = Some(pipeline(&rt, 3));
    print_summary(&r, started.elapsed());
}

/// Chunk-sized texts of varied length (tens to hundreds of tokens), from the generator.
fn sample_texts() -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_archive(dir.path(), 200, 3).expect("archive");
    let mut texts = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let n = 1 + i % f.sentences.len().max(1);
        texts.push(f.sentences[..n].join(" "));
        if texts.len() == TEXTS {
            break;
        }
    }
    texts
}

fn node_home(root: &Path, name: &str) -> Home {
    Home::new(linked_home(root, name, MODEL).unwrap())
}

fn config(name: &str, workers: usize, cluster: bool, join: Vec<String>) -> NodeConfig {
    let mut cfg = NodeConfig {
        // Nodes are told apart by name: the default (the host name) is the same for all.
        name: Some(name.to_owned()),
        workers,
        discovery: false,
        join,
        ..NodeConfig::default()
    };
    if cluster {
        cfg.cluster = "127.0.0.1:0".parse().unwrap();
    }
    cfg.api = "127.0.0.1:0".parse().unwrap();
    cfg
}

fn bench_embed_path(
    c: &mut Criterion,
    rt: &Runtime,
    model_dir: &Path,
    texts: &[String],
    r: &mut Results,
) {
    let mut g = c.benchmark_group("embed_path");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(20))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(texts.len() as u64));

    let root = tempfile::tempdir().expect("tempdir");
    let home = node_home(root.path(), "node");
    let node = rt
        .block_on(Node::start(
            home,
            config("bench", 1, false, vec![]),
            Services::EMBEDDED,
        ))
        .expect("start the node");
    let handle = node.handle().clone();
    let model = ModelRef::at(model_dir);
    let run_myco = |texts: Vec<String>| {
        rt.block_on(async {
            let job = NewJob {
                task: Task::Embed {
                    model: model.clone(),
                    texts,
                    batch_tokens: DEFAULT_BATCH_TOKENS,
                    links: Vec::new(),
                },
                priority: 0,
                max_attempts: 1,
                timeout_ms: 600_000,
                idempotency_key: None,
                children: Vec::new(),
            };
            let id = handle.queue().submit(vec![job]).await.unwrap()[0].id;
            let rec = handle.wait(id, Duration::from_millis(250)).await.unwrap();
            assert_eq!(rec.state.name(), StateName::Done, "{:?}", rec.last_error);
            let bytes = handle.queue().result(id).unwrap().unwrap();
            // Read the vectors back, as a client would.
            let vectors: Vec<Vec<f32>> = bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_slice(l).unwrap();
                    serde_json::from_value(v["vector"].clone()).unwrap()
                })
                .collect();
            assert_eq!(vectors.len(), texts_len(&bytes));
            vectors.len()
        })
    };
    // Load the model on the worker before measuring.
    run_myco(texts[..4].to_vec());
    g.bench_function("myco", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(run_myco(texts.to_vec()));
            }
            let elapsed = start.elapsed();
            r.myco.add(iters * texts.len() as u64, elapsed);
            elapsed
        })
    });
    rt.block_on(node.shutdown()).expect("stop the node");

    myco_jobs::embed::init_runtime(&real_home()).expect("ONNX Runtime");
    let read = |f: &str| std::fs::read(model_dir.join(f)).unwrap();
    let user = UserDefinedEmbeddingModel::new(
        read("model.onnx"),
        TokenizerFiles {
            tokenizer_file: read("tokenizer.json"),
            config_file: read("config.json"),
            special_tokens_map_file: read("special_tokens_map.json"),
            tokenizer_config_file: read("tokenizer_config.json"),
        },
    )
    .with_pooling(Pooling::Mean);
    let mut direct =
        TextEmbedding::try_new_from_user_defined(user, InitOptionsUserDefined::new()).unwrap();
    g.bench_function("fastembed_direct", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let v = direct.embed(texts, None).unwrap();
                assert_eq!(v.len(), texts.len());
                std::hint::black_box(v);
            }
            let elapsed = start.elapsed();
            r.direct.add(iters * texts.len() as u64, elapsed);
            elapsed
        })
    });
    // The same call on the batches myco forms (sorted by token count, cut by the same
    // budget): what is left between this and myco is myco's own overhead.
    let counts: Vec<usize> = texts
        .iter()
        .map(|t| direct.tokenizer.encode(t.as_str(), true).unwrap().len())
        .collect();
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| (counts[i], i));
    let mut batches: Vec<Vec<&str>> = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && (end + 1 - start) * counts[order[end]] <= DEFAULT_BATCH_TOKENS {
            end += 1;
        }
        batches.push(
            order[start..end]
                .iter()
                .map(|&i| texts[i].as_str())
                .collect(),
        );
        start = end;
    }
    g.bench_function("fastembed_direct_sorted", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for batch in &batches {
                    let v = direct.embed(batch, Some(batch.len())).unwrap();
                    std::hint::black_box(v);
                }
            }
            let elapsed = start.elapsed();
            r.direct_sorted.add(iters * texts.len() as u64, elapsed);
            elapsed
        })
    });
    g.finish();
}

fn texts_len(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| **b == b'\n').count()
}

/// Run the archive job on a swarm of `nodes` nodes (the first owns it): chunks and time.
fn pipeline(rt: &Runtime, nodes: usize) -> (usize, Duration) {
    let root = tempfile::tempdir().expect("tempdir");
    let archive = root.path().join("archive");
    write_archive(&archive, PIPELINE_FILES, 21).expect("archive");
    let job = format!(
        "version = 1\nkind = \"archive\"\n[archive]\ninput = {:?}\ncollection = \"bench\"\n",
        archive.display().to_string()
    );
    rt.block_on(async {
        let mut started = Vec::new();
        let first = node_home(root.path(), "n0");
        let owner = Node::start(first.clone(), config("n0", 2, true, vec![]), Services::NODE)
            .await
            .expect("start the owner");
        let join = owner
            .handle()
            .members()
            .await
            .into_iter()
            .next()
            .and_then(|m| m.info)
            .map(|i| i.cluster_addr)
            .expect("the owner's cluster address");
        for i in 1..nodes {
            let home = node_home(root.path(), &format!("n{i}"));
            home.ensure().unwrap();
            std::fs::copy(first.secret_path(), home.secret_path()).unwrap();
            let n = Node::start(
                home,
                config(&format!("n{i}"), 2, true, vec![join.clone()]),
                Services::NODE,
            )
            .await
            .expect("start a member");
            started.push(n);
        }
        // Wait until the owner sees every member.
        let deadline = Instant::now() + Duration::from_secs(30);
        while owner.handle().members().await.len() < nodes {
            assert!(Instant::now() < deadline, "the swarm did not form");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let start = Instant::now();
        let submitted = owner
            .handle()
            .submit(vec![SpecSource {
                toml: job,
                base_dir: root.path().to_path_buf(),
            }])
            .await
            .expect("submit");
        let rec = owner
            .handle()
            .wait(submitted[0].id, Duration::from_millis(250))
            .await
            .expect("wait");
        let elapsed = start.elapsed();
        assert_eq!(rec.state.name(), StateName::Done, "{:?}", rec.last_error);
        let summary: serde_json::Value =
            serde_json::from_slice(&owner.handle().queue().result(rec.id).unwrap().unwrap())
                .unwrap();
        for n in started {
            n.shutdown().await.expect("stop a member");
        }
        owner.shutdown().await.expect("stop the owner");
        (summary["chunks"].as_u64().unwrap() as usize, elapsed)
    })
}

fn print_summary(r: &Results, total: Duration) {
    let myco = r.myco.rate();
    let direct = r.direct.rate();
    println!();
    println!("== embed summary (texts/s; goal: myco >= 0.95x direct fastembed) ==");
    let sorted = r.direct_sorted.rate();
    println!(
        "embed path     myco {:>8}/s   fastembed direct (batch 256) {:>8}/s   ratio {}",
        fmt_rate(myco),
        fmt_rate(direct),
        fmt_ratio(myco, direct)
    );
    println!(
        "               myco {:>8}/s   fastembed direct, myco's batches {:>8}/s   ratio {}",
        fmt_rate(myco),
        fmt_rate(sorted),
        fmt_ratio(myco, sorted)
    );
    let rate = |p: Option<(usize, Duration)>| p.map(|(n, d)| n as f64 / d.as_secs_f64());
    for (label, p) in [("1 node ", r.pipeline_one), ("3 nodes", r.pipeline_three)] {
        if let Some((n, d)) = p {
            println!(
                "pipeline {label} {n} chunks of {PIPELINE_FILES} files in {:.1}s: {} chunks/s",
                d.as_secs_f64(),
                fmt_rate(rate(p))
            );
        }
    }
    println!(
        "pipeline 3 nodes vs 1: {} (all nodes share this machine's cores)",
        fmt_ratio(rate(r.pipeline_three), rate(r.pipeline_one))
    );
    println!("total bench time {:.0}s", total.as_secs_f64());
}
