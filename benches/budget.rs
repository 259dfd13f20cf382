//! The CPU budget: a chat request on a node whose batch workers are all embedding an
//! archive, against the same request on the same node idle. Interleaved round by round
//! (idle, then busy), median of the per-round ratios.
//!
//! - `chat`: an infer job (priority 500, as the API and `myco ask` submit) of 64 greedy
//!   tokens on the tiny-model fixture at bench size (8 layers, n_embd 512, f32), its tokens/s
//!   from submission to result, and the engine's own generation rate. Goal: busy >= 0.7x
//!   idle.
//! - the archive: each round's archive job (a generated archive of md, txt, html and pdf
//!   files, every batch worker embedding) runs to the end, and its collection is compared
//!   with one built while no request ran: the same chunks, and every vector within cosine
//!   0.9999 of the reference's.
//!
//! Threads pinned: the node uses every core of this machine (`threads`, printed) with one
//! batch worker per core. Needs ./setup.sh (the embedding model and ONNX Runtime). No timing
//! assertions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use myco_actors::node::handle::NodeHandle;
use myco_actors::{Node, Services, SpecSource};
use myco_benches::{linked_home, median, write_archive};
use myco_jobs::Task;
use myco_jobs::archive::ModelRef;
use myco_jobs::collection::Collection;
use myco_jobs::llm::gguf::TinyLlama;
use myco_jobs::llm::infer::{Generation, InferParams, InferTask, Prompt};
use myco_runtime::config::{Home, NodeConfig};
use myco_runtime::queue::{INTERACTIVE_PRIORITY, JobId, NewJob, StateName};

const MODEL: &str = "all-MiniLM-L6-v2";
const FILES: usize = 120;
const ROUNDS: usize = 3;
const MAX_TOKENS: u32 = 64;

fn threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

fn node_home(root: &Path) -> Home {
    let home = linked_home(root, "node", MODEL).unwrap();
    TinyLlama::bench()
        .write(&home.join("models/bench.gguf"), false)
        .unwrap();
    Home::new(home)
}

/// One chat request: (tokens/s submission to result, the engine's generation tokens/s).
async fn chat(node: &NodeHandle, model: &Path, round: usize) -> (f64, f64) {
    let job = NewJob {
        task: Task::Infer(InferTask {
            gpu: false,
            model: ModelRef::at(model),
            prompt: Prompt::Text(format!("{round}: the swarm is a queue of work and a model")),
            params: InferParams {
                max_tokens: MAX_TOKENS,
                temperature: 0.0,
                repeat_penalty: 1.0,
                n_ctx: 256,
                ..InferParams::default()
            },
        }),
        priority: INTERACTIVE_PRIORITY,
        max_attempts: 1,
        timeout_ms: 600_000,
        idempotency_key: None,
        children: Vec::new(),
    };
    let started = Instant::now();
    let id = node.queue().submit(vec![job]).await.unwrap()[0].id;
    let rec = node.wait(id, Duration::from_millis(20)).await.unwrap();
    let wall = started.elapsed();
    assert_eq!(rec.state.name(), StateName::Done, "{:?}", rec.last_error);
    let g: Generation = serde_json::from_slice(&node.queue().result(id).unwrap().unwrap()).unwrap();
    let n = f64::from(g.completion_tokens);
    (n / wall.as_secs_f64(), n / (g.generation_ms / 1e3))
}

/// Submit the archive job building collection `name`.
async fn archive(node: &NodeHandle, root: &Path, name: &str) -> JobId {
    let toml = format!(
        "version = 1\nkind = \"archive\"\n[archive]\ninput = {:?}\ncollection = {name:?}\n",
        root.join("archive").display().to_string()
    );
    node.submit(vec![SpecSource {
        toml,
        base_dir: root.to_path_buf(),
    }])
    .await
    .expect("submit the archive")[0]
        .id
}

/// Wait until every batch worker is running a job of the archive.
async fn until_busy(node: &NodeHandle, workers: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let load = node.load().await.unwrap();
        if load.idle_workers == 0 && load.running >= workers {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the archive never kept the workers busy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How `dir`'s collection compares with the reference: chunks equal, and the lowest cosine
/// between a vector and its reference.
fn compare(reference: &Path, dir: &Path) -> (bool, f32) {
    let read = |d: &Path| std::fs::read(d.join("chunks.jsonl")).unwrap();
    let same = read(reference) == read(dir);
    let (a, b) = (
        Collection::open(reference).unwrap(),
        Collection::open(dir).unwrap(),
    );
    let mut worst = if a.len() == b.len() { 1.0f32 } else { 0.0 };
    for i in 0..a.len().min(b.len()) {
        worst = worst.min(myco_jobs::collection::dot(a.vector(i), b.vector(i)));
    }
    (same && a.len() == b.len(), worst)
}

fn main() {
    let root = tempfile::tempdir().expect("tempdir");
    write_archive(&root.path().join("archive"), FILES, 5).expect("archive");
    let home = node_home(root.path());
    let collections = home.root().join("collections");
    let model = home.root().join("models/bench.gguf");
    let workers = threads() as usize;
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cfg = NodeConfig {
        name: Some("bench".into()),
        workers,
        threads: threads(),
        discovery: false,
        ..NodeConfig::default()
    };
    let node = rt
        .block_on(Node::start(home.clone(), cfg, Services::EMBEDDED))
        .expect("start the node");
    let handle = node.handle().clone();
    // The model loaded and its batch made; the reference collection built with no request.
    rt.block_on(chat(&handle, &model, 0));
    let reference = rt.block_on(async {
        let id = archive(&handle, root.path(), "reference").await;
        let rec = handle.wait(id, Duration::from_millis(250)).await.unwrap();
        assert_eq!(rec.state.name(), StateName::Done, "{:?}", rec.last_error);
        collections.join("reference")
    });

    let mut g = c.benchmark_group("budget");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .sampling_mode(SamplingMode::Flat);
    let mut round = 100;
    g.bench_function("chat_idle", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                round += 1;
                rt.block_on(chat(&handle, &model, round));
            }
            started.elapsed()
        })
    });
    g.finish();
    c.final_summary();
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        rt.block_on(node.shutdown()).unwrap();
        return;
    }

    let (mut wall, mut gen_) = (Vec::new(), Vec::new());
    let mut collections_ok = Vec::new();
    for r in 0..ROUNDS {
        let (idle_wall, idle_gen) = rt.block_on(chat(&handle, &model, 1000 + r));
        let name = format!("busy{r}");
        let (busy_wall, busy_gen, archive_ms) = rt.block_on(async {
            let started = Instant::now();
            let id = archive(&handle, root.path(), &name).await;
            until_busy(&handle, workers).await;
            let (w, g) = chat(&handle, &model, 2000 + r).await;
            let rec = handle.wait(id, Duration::from_millis(250)).await.unwrap();
            assert_eq!(rec.state.name(), StateName::Done, "{:?}", rec.last_error);
            (w, g, started.elapsed().as_millis())
        });
        let (same, worst) = compare(&reference, &collections.join(&name));
        collections_ok.push((same, worst));
        wall.push(busy_wall / idle_wall);
        gen_.push(busy_gen / idle_gen);
        println!(
            "round {r}: idle {idle_wall:.1} tok/s (generation {idle_gen:.1}), busy {busy_wall:.1} tok/s (generation {busy_gen:.1}): {:.2}x; archive {archive_ms} ms, same collection: {same}, lowest cosine {worst:.6}",
            busy_wall / idle_wall
        );
    }
    rt.block_on(node.shutdown()).unwrap();
    println!();
    println!(
        "== budget: a {MAX_TOKENS}-token chat request while {workers} batch workers embed an archive of {FILES} files; {} threads, median of {ROUNDS} interleaved rounds ==",
        threads()
    );
    println!(
        "chat tok/s, submission to result, busy / idle   {:.2}x  (goal >= 0.7x)",
        median(wall)
    );
    println!(
        "chat generation tok/s (engine), busy / idle     {:.2}x",
        median(gen_)
    );
    let all_same = collections_ok.iter().all(|(s, w)| *s && *w >= 0.9999);
    println!(
        "every archive finished with the reference collection (chunks equal, vectors within cosine 0.9999): {all_same}"
    );
}
