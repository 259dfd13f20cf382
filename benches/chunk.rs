//! Token-aware chunking speed (issue 15, acceptance 5): the generated Markdown corpus (200
//! files of about 20 KB) cut into chunks of at most 254 tokens of all-MiniLM-L6-v2, counted
//! with its own tokenizer:
//!
//! - `myco`: [`chunk_bytes_in`] with the model's [`ChunkTokenizer`]: each file extracted,
//!   tokenized once, cut at token offsets. Goal: >= 3 MB/s on one thread. The tokenizer keeps
//!   each word's pieces for as long as it lives (a node's engine: across files and jobs), so
//!   this is measured twice: with a fresh tokenizer each round (cold; the goal is checked on
//!   this) and with the one the criterion run warmed (warm).
//! - baseline: text-splitter's `MarkdownSplitter` sized by the same tokenizer (the way
//!   LangChain-style pipelines count tokens: each candidate piece tokenized again).
//!
//! One thread each (everything here is single-threaded; the tokenizer's own parallelism is
//! off: `TOKENIZERS_PARALLELISM=false`). Interleaved round by round, median of the per-round
//! ratios. Needs ./setup.sh (the model's tokenizer). No timing assertions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use myco_benches::{median, real_home, write_corpus};
use myco_jobs::chunk::{ChunkParams, Tokens, chunk_bytes_in};
use myco_jobs::embed::ChunkTokenizer;
use text_splitter::{ChunkConfig, MarkdownSplitter};

const MODEL: &str = "all-MiniLM-L6-v2";
const FILES: usize = 200;
const FILE_BYTES: usize = 20 * 1024;
const ROUNDS: usize = 5;
/// The model's maximum; overlap as an archive job's default.
const PARAMS: ChunkParams = ChunkParams {
    max_tokens: 0,
    overlap: 32,
};

struct Corpus {
    paths: Vec<PathBuf>,
    bytes: Vec<Vec<u8>>,
    texts: Vec<String>,
}

/// The floor under `myco`: the tokenizer's one pass over each file, with offsets.
fn tokenize_only(c: &Corpus, tokens: &ChunkTokenizer) -> Duration {
    let started = Instant::now();
    for text in &c.texts {
        black_box(tokens.spans(text).expect("tokenize"));
    }
    started.elapsed()
}

fn myco(c: &Corpus, tokens: &ChunkTokenizer) -> (Duration, usize) {
    let started = Instant::now();
    let mut chunks = 0;
    for (path, bytes) in c.paths.iter().zip(&c.bytes) {
        chunks += black_box(chunk_bytes_in(path, bytes, &PARAMS, Some(tokens), &|| {
            false
        }))
        .expect("chunk")
        .len();
    }
    (started.elapsed(), chunks)
}

fn splitter(c: &Corpus, s: &MarkdownSplitter<tokenizers::Tokenizer>) -> (Duration, usize) {
    let started = Instant::now();
    let mut chunks = 0;
    for text in &c.texts {
        chunks += black_box(s.chunk_indices(text).count());
    }
    (started.elapsed(), chunks)
}

fn main() {
    // tokenizers reads this to decide whether to use its thread pool; setting it here would
    // need `unsafe` (edition 2024), so it is passed from outside.
    if std::env::var_os("TOKENIZERS_PARALLELISM").is_none() {
        eprintln!("note: run with TOKENIZERS_PARALLELISM=false to pin the tokenizer to one thread");
    }
    let dir = real_home().join("models").join(MODEL);
    let tokens = ChunkTokenizer::load(&dir).expect("the model's tokenizer: run ./setup.sh");
    let max = tokens.max_tokens();
    let mut hf = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    hf.with_truncation(None).unwrap();
    hf.with_padding(None);
    let baseline = MarkdownSplitter::new(
        ChunkConfig::new(max)
            .with_overlap(PARAMS.overlap)
            .unwrap()
            .with_sizer(hf),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let (paths, total) = write_corpus(tmp.path(), FILES, FILE_BYTES).expect("corpus");
    let bytes: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let texts = bytes
        .iter()
        .map(|b| String::from_utf8(b.clone()).unwrap())
        .collect();
    let corpus = Corpus {
        paths,
        bytes,
        texts,
    };

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("chunk_tokens");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::BytesDecimal(total));
    g.bench_function("myco", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| myco(&corpus, &tokens).0).sum())
    });
    g.finish();
    c.final_summary();
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }

    let mb = |d: Duration| total as f64 / d.as_secs_f64() / 1e6;
    let (mut ours, mut theirs, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut n_ours, mut n_theirs) = (0, 0);
    let mut floor = Vec::new();
    let mut cold = Vec::new();
    for r in 0..ROUNDS {
        // A fresh tokenizer: its word cache starts empty (the first archive a node chunks).
        let fresh = ChunkTokenizer::load(&dir).expect("the model's tokenizer");
        cold.push(mb(myco(&corpus, &fresh).0));
        let (a, na) = myco(&corpus, &tokens);
        let (b, nb) = splitter(&corpus, &baseline);
        (n_ours, n_theirs) = (na, nb);
        println!(
            "round {r}: myco {:.2} MB/s ({na} chunks), text-splitter + tokenizer {:.2} MB/s ({nb} chunks): {:.1}x",
            mb(a),
            mb(b),
            b.as_secs_f64() / a.as_secs_f64()
        );
        floor.push(mb(tokenize_only(&corpus, &tokens)));
        ours.push(mb(a));
        theirs.push(mb(b));
        ratio.push(b.as_secs_f64() / a.as_secs_f64());
    }
    let ours = median(ours);
    let cold = median(cold);
    println!();
    println!(
        "== chunk: {FILES} Markdown files, {:.1} MB, chunks of <= {max} {MODEL} tokens, overlap {}, 1 thread, median of {ROUNDS} interleaved rounds ==",
        total as f64 / 1e6,
        PARAMS.overlap
    );
    println!(
        "token-aware chunking, word cache cold  {cold:.2} MB/s  (goal >= 3 MB/s: {})",
        if cold >= 3.0 { "MET" } else { "NOT MET" }
    );
    println!(
        "token-aware chunking, word cache warm (a node's later files)  {ours:.2} MB/s, {n_ours} chunks"
    );
    println!(
        "text-splitter + the same tokenizer  {:.2} MB/s, {n_theirs} chunks",
        median(theirs)
    );
    println!("myco / text-splitter  {:.1}x", median(ratio));
    println!(
        "the tokenizer's one pass alone (the floor)  {:.2} MB/s",
        median(floor)
    );
}
