//! The performance goals, each measured against its baseline in the same run:
//!
//! - `enqueue`: durable enqueue with **group commit** (many concurrent single-job submits
//!   share the writer's transactions) vs **one commit per job** (the same submits, awaited
//!   one after another). Goal: >= 20,000 jobs/s and >= 50x the baseline.
//! - `end_to_end`: no-op jobs through an embedded [`Node`] (default workers) vs a naive
//!   durable loop on a bare [`Queue`] (submit, lease, run, complete: each awaited).
//! - `chunking`: [`chunk_file`] over a generated Markdown corpus vs text-splitter's
//!   `MarkdownSplitter` run directly on each whole file's text.
//!
//! Every queue is a real redb file in a tempdir with fsync on; durability is never turned
//! off. Each bench records its own totals through `iter_custom`, and `main` prints a summary
//! table with both rates and the ratio after criterion's own report. No timing assertions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use myco_actors::Node;
use myco_benches::{Totals, fmt_rate, fmt_ratio, write_corpus};
use myco_jobs::chunk::{ChunkParams, chunk_file};
use myco_jobs::task::NoopTask;
use myco_jobs::{CpuExecutor, Executor, JobKind, RunContext, Task};
use myco_runtime::config::{Home, NodeConfig};
use myco_runtime::queue::{NewJob, Queue, QueueOptions, StateName};
use text_splitter::{ChunkConfig, MarkdownSplitter};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// Concurrent single-job submits per group-commit round.
const ENQUEUE_CONCURRENCY: u64 = 2_048;
/// Jobs per end-to-end round on the node, and how many go in one submit.
const E2E_JOBS: u64 = 2_000;
const E2E_BATCH: usize = 100;
/// The chunking corpus: files of about this many bytes.
const CORPUS_FILES: usize = 200;
const CORPUS_FILE_BYTES: usize = 20 * 1024;
const CHUNK_PARAMS: ChunkParams = ChunkParams {
    max_tokens: 512,
    overlap: 64,
};
/// A node that has not finished a round by then is stuck, not slow.
const E2E_DEADLINE: Duration = Duration::from_secs(300);

/// What every bench measured, for the summary.
#[derive(Debug, Default)]
struct Results {
    enqueue_group: Totals,
    enqueue_group_commits: u64,
    enqueue_single: Totals,
    enqueue_single_commits: u64,
    e2e_node: Totals,
    e2e_naive: Totals,
    chunk_myco: Totals,
    chunk_myco_chunks: usize,
    chunk_splitter: Totals,
    chunk_splitter_chunks: usize,
}

fn main() {
    let started = Instant::now();
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut r = Results::default();
    bench_enqueue(&mut c, &rt, &mut r);
    bench_end_to_end(&mut c, &rt, &mut r);
    bench_chunking(&mut c, &mut r);
    c.final_summary();
    print_summary(&r, started.elapsed());
}

fn noop_job(i: u64) -> NewJob {
    NewJob {
        task: Task::Noop(NoopTask {
            payload: format!("bench-{i}"),
            ..Default::default()
        }),
        priority: 0,
        max_attempts: 3,
        timeout_ms: 60_000,
        idempotency_key: None,
        children: Vec::new(),
    }
}

fn open_queue(dir: &tempfile::TempDir) -> Queue {
    Queue::open(
        &dir.path().join("queue.redb"),
        QueueOptions {
            node: "bench".into(),
            ..Default::default()
        },
    )
    .expect("open the bench queue")
}

/// (a) Durable enqueue: group commit vs one commit per job.
fn bench_enqueue(c: &mut Criterion, rt: &Runtime, r: &mut Results) {
    let mut g = c.benchmark_group("enqueue");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sampling_mode(SamplingMode::Flat);

    // Group commit: each iteration is a round of ENQUEUE_CONCURRENCY tasks, each submitting
    // one job; the writer thread folds whatever is waiting into one transaction.
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open_queue(&dir);
    let mut seq = 0u64;
    g.throughput(Throughput::Elements(ENQUEUE_CONCURRENCY));
    g.bench_function("group_commit", |b| {
        b.iter_custom(|iters| {
            let jobs: Vec<NewJob> = (0..iters * ENQUEUE_CONCURRENCY)
                .map(|i| noop_job(seq + i))
                .collect();
            seq += jobs.len() as u64;
            let commits_before = queue.stats().commits;
            let start = Instant::now();
            rt.block_on(async {
                let mut jobs = jobs.into_iter();
                for _ in 0..iters {
                    let mut set = JoinSet::new();
                    for job in jobs.by_ref().take(ENQUEUE_CONCURRENCY as usize) {
                        let q = queue.clone();
                        set.spawn(async move { q.submit(vec![job]).await });
                    }
                    while let Some(done) = set.join_next().await {
                        done.expect("submit task").expect("submit");
                    }
                }
            });
            let elapsed = start.elapsed();
            r.enqueue_group.add(iters * ENQUEUE_CONCURRENCY, elapsed);
            r.enqueue_group_commits += queue.stats().commits - commits_before;
            elapsed
        });
    });
    rt.block_on(queue.shutdown());
    drop(dir);

    // Baseline: the same single-job submits, each awaiting its own commit.
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open_queue(&dir);
    let mut seq = 0u64;
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_commit_per_job", |b| {
        b.iter_custom(|iters| {
            let jobs: Vec<NewJob> = (0..iters).map(|i| noop_job(seq + i)).collect();
            seq += iters;
            let commits_before = queue.stats().commits;
            let start = Instant::now();
            rt.block_on(async {
                for job in jobs {
                    queue.submit(vec![job]).await.expect("submit");
                }
            });
            let elapsed = start.elapsed();
            r.enqueue_single.add(iters, elapsed);
            r.enqueue_single_commits += queue.stats().commits - commits_before;
            elapsed
        });
    });
    rt.block_on(queue.shutdown());
    drop(dir);
    g.finish();
}

/// (b) End-to-end no-op throughput: an embedded node vs a naive durable loop.
fn bench_end_to_end(c: &mut Criterion, rt: &Runtime, r: &mut Results) {
    let mut g = c.benchmark_group("end_to_end");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sampling_mode(SamplingMode::Flat);

    // The node: submit E2E_JOBS in batches, then poll the committed counts until all are
    // done. Each iteration is one such round.
    let dir = tempfile::tempdir().expect("tempdir");
    let node = rt
        .block_on(Node::start(
            Home::new(dir.path()),
            NodeConfig::default(),
            myco_actors::Services::EMBEDDED,
        ))
        .expect("start the bench node");
    let queue = node.handle().queue().clone();
    let done = StateName::Done.index();
    let mut seq = 0u64;
    g.throughput(Throughput::Elements(E2E_JOBS));
    g.bench_function("node", |b| {
        b.iter_custom(|iters| {
            let total = iters * E2E_JOBS;
            let jobs: Vec<NewJob> = (0..total).map(|i| noop_job(seq + i)).collect();
            seq += total;
            let target = queue.counts().expect("counts")[done] + total;
            let start = Instant::now();
            rt.block_on(async {
                let mut jobs = jobs.into_iter();
                for _ in 0..iters {
                    for _ in 0..E2E_JOBS.div_ceil(E2E_BATCH as u64) {
                        let batch: Vec<NewJob> = jobs.by_ref().take(E2E_BATCH).collect();
                        if !batch.is_empty() {
                            queue.submit(batch).await.expect("submit");
                        }
                    }
                }
                loop {
                    let counts = queue.counts().expect("counts");
                    if counts[done] >= target {
                        break;
                    }
                    assert!(
                        start.elapsed() < E2E_DEADLINE,
                        "the node is stuck: counts {counts:?}, waiting for {target} done"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            let elapsed = start.elapsed();
            r.e2e_node.add(total, elapsed);
            elapsed
        });
    });
    let counts = queue.counts().expect("counts");
    assert_eq!(
        counts[StateName::Dead.index()] + counts[StateName::Failed.index()],
        0,
        "no bench job may fail: {counts:?}"
    );
    rt.block_on(node.shutdown()).expect("node shutdown");
    drop(dir);

    // Baseline: for each job, submit (await commit), lease 1 (await), run, complete (await).
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open_queue(&dir);
    let mut seq = 0u64;
    let mut executor = CpuExecutor::new(dir.path());
    g.throughput(Throughput::Elements(1));
    g.bench_function("naive_loop", |b| {
        b.iter_custom(|iters| {
            let jobs: Vec<NewJob> = (0..iters).map(|i| noop_job(seq + i)).collect();
            seq += iters;
            let start = Instant::now();
            rt.block_on(async {
                for job in jobs {
                    queue.submit(vec![job]).await.expect("submit");
                    let lease = queue
                        .lease(1, &[JobKind::Noop], Duration::from_secs(30))
                        .await
                        .expect("lease")
                        .pop()
                        .expect("the job just submitted is ready");
                    let ctx = RunContext {
                        attempt: lease.attempt,
                        cancelled: &|| false,
                        children: None,
                        stream: None,
                    };
                    let output = executor.run(&lease.task, &ctx).expect("noop runs");
                    queue.complete(lease.id, output).await.expect("complete");
                }
            });
            let elapsed = start.elapsed();
            r.e2e_naive.add(iters, elapsed);
            elapsed
        });
    });
    rt.block_on(queue.shutdown());
    drop(dir);
    g.finish();
}

/// (c) Chunking throughput on a generated Markdown corpus.
fn bench_chunking(c: &mut Criterion, r: &mut Results) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (paths, bytes) =
        write_corpus(dir.path(), CORPUS_FILES, CORPUS_FILE_BYTES).expect("write the corpus");
    let texts: Vec<String> = paths
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read the corpus"))
        .collect();

    let mut g = c.benchmark_group("chunking");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::BytesDecimal(bytes));

    // myco: read, extract and split each file, as a chunk job does.
    g.bench_function("chunk_file", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut chunks = 0;
            for _ in 0..iters {
                chunks = 0;
                for path in &paths {
                    chunks += black_box(chunk_file(path, &CHUNK_PARAMS, &|| false))
                        .expect("chunk")
                        .len();
                }
            }
            let elapsed = start.elapsed();
            r.chunk_myco.add(iters * bytes, elapsed);
            r.chunk_myco_chunks = chunks;
            elapsed
        });
    });

    // Baseline: text-splitter alone on each whole file's text, already in memory.
    let splitter = MarkdownSplitter::new(ChunkConfig::new(CHUNK_PARAMS.max_tokens));
    g.bench_function("markdown_splitter", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut chunks = 0;
            for _ in 0..iters {
                chunks = 0;
                for text in &texts {
                    chunks += black_box(splitter.chunks(text).count());
                }
            }
            let elapsed = start.elapsed();
            r.chunk_splitter.add(iters * bytes, elapsed);
            r.chunk_splitter_chunks = chunks;
            elapsed
        });
    });
    g.finish();
    drop(dir);
}

fn goal(met: bool) -> &'static str {
    if met { "MET" } else { "NOT MET" }
}

fn print_summary(r: &Results, took: Duration) {
    let group = r.enqueue_group.rate();
    let single = r.enqueue_single.rate();
    let ratio = group.zip(single).map(|(g, s)| g / s);
    let met = group.is_some_and(|g| g >= 20_000.0) && ratio.is_some_and(|x| x >= 50.0);
    let per_commit = |t: &Totals, commits: u64| {
        if commits == 0 {
            "n/a".to_owned()
        } else {
            format!("{:.1}", t.units as f64 / commits as f64)
        }
    };
    let mb = |t: &Totals| t.rate().map(|x| x / 1e6);
    println!();
    println!("== myco benches: each goal against its baseline, same run ==");
    println!(
        "enqueue:    group commit {} jobs/s vs one commit per job {} jobs/s = {} \
         (goal >= 20,000/s and >= 50x: {})",
        fmt_rate(group),
        fmt_rate(single),
        fmt_ratio(group, single),
        if group.is_some() && single.is_some() {
            goal(met)
        } else {
            "not run"
        },
    );
    println!(
        "            jobs per commit: group {} ({} jobs in {} commits), one-per-job {}",
        per_commit(&r.enqueue_group, r.enqueue_group_commits),
        r.enqueue_group.units,
        r.enqueue_group_commits,
        per_commit(&r.enqueue_single, r.enqueue_single_commits),
    );
    println!(
        "end-to-end: node ({} workers, {E2E_BATCH}/submit) {} jobs/s vs naive durable loop {} jobs/s = {}",
        NodeConfig::default().worker_count(),
        fmt_rate(r.e2e_node.rate()),
        fmt_rate(r.e2e_naive.rate()),
        fmt_ratio(r.e2e_node.rate(), r.e2e_naive.rate()),
    );
    println!(
        "chunking:   chunk_file {} MB/s vs MarkdownSplitter {} MB/s = {} \
         ({CORPUS_FILES} files, {} chunks vs {} chunks per pass)",
        fmt_rate(mb(&r.chunk_myco)),
        fmt_rate(mb(&r.chunk_splitter)),
        fmt_ratio(r.chunk_myco.rate(), r.chunk_splitter.rate()),
        r.chunk_myco_chunks,
        r.chunk_splitter_chunks,
    );
    println!(
        "(rates are totals over every timed iteration, warm-up included; whole run {:.0} s)",
        took.as_secs_f64()
    );
}
