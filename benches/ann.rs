//! Search at scale (issue 15, acceptance 4): a collection of 200,000 synthetic 384-dimensional
//! vectors (unit vectors around 2,000 centres, as embeddings of a big archive cluster by
//! topic), written as an archive job writes one (so with its HNSW index and keyword index).
//!
//! - recall@10 of the collection's search (HNSW candidates ranked exactly) against an exact
//!   scan, over 200 queries (rows of the collection, perturbed). Goal: >= 0.98.
//! - search alone: exact scan against HNSW, median per query, interleaved.
//! - a warm node's query path (`/api/query`'s): the query embedded by the loaded model, then
//!   searched, median of 50. Goal: embed + search < 20 ms at 200k.
//!
//! `MYCO_ANN_ROWS` changes the size (the note's 1M figure: `MYCO_ANN_ROWS=1000000`). Search
//! is single-threaded; the node uses every core of this machine (printed) and builds the
//! index with them. Needs ./setup.sh (the embedding model). No timing assertions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use criterion::Criterion;
use myco_actors::query::{QueryRequest, query};
use myco_actors::{Node, Services};
use myco_benches::{Rng, linked_home, median};
use myco_jobs::collection::{self, ChunkRow, Collection, Meta, Mode};
use myco_runtime::config::{Home, NodeConfig};

const MODEL: &str = "all-MiniLM-L6-v2";
const DIM: usize = 384;
const CENTRES: usize = 2_000;
const QUERIES: usize = 200;

fn unit(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// A roughly normal value (sum of uniforms), deterministic.
fn normal(rng: &mut Rng) -> f32 {
    let s: f64 = (0..4)
        .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
        .sum();
    ((s - 2.0) * 1.732) as f32
}

fn vectors(rows: usize, rng: &mut Rng) -> Vec<f32> {
    let mut centres = vec![0f32; CENTRES * DIM];
    for c in centres.chunks_exact_mut(DIM) {
        c.iter_mut().for_each(|x| *x = normal(rng));
        unit(c);
    }
    let mut out = vec![0f32; rows * DIM];
    for (r, v) in out.chunks_exact_mut(DIM).enumerate() {
        let c = &centres[(r % CENTRES) * DIM..][..DIM];
        for (x, y) in v.iter_mut().zip(c) {
            *x = y + 0.06 * normal(rng);
        }
        unit(v);
    }
    out
}

const WORDS: &[&str] = &[
    "queue", "lease", "worker", "swarm", "chunk", "token", "vector", "index", "node", "model",
    "batch", "commit", "retry", "result", "search", "archive", "page", "section", "topic",
];

fn main() {
    let _ = Criterion::default().configure_from_args();
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let rows: usize = std::env::var("MYCO_ANN_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = Home::new(linked_home(tmp.path(), "node", MODEL).expect("./setup.sh first"));
    let dir = home.root().join("collections").join("big");
    let mut rng = Rng::new(99);
    let data = vectors(rows, &mut rng);

    let started = Instant::now();
    let chunk_rows: Vec<(ChunkRow, Vec<f32>)> = data
        .chunks_exact(DIM)
        .enumerate()
        .map(|(i, v)| {
            let text: Vec<&str> = (0..12).map(|_| rng.pick(WORDS)).collect();
            let row = ChunkRow {
                source: format!("doc-{:06}.md", i / 4),
                hash: "0".into(),
                index: (i % 4) as u32,
                start: 0,
                end: 0,
                text: format!("{} {i}", text.join(" ")),
                title: None,
                headings: Vec::new(),
            };
            (row, v.to_vec())
        })
        .collect();
    let meta = Meta {
        format: collection::FORMAT.into(),
        version: collection::VERSION,
        name: "big".into(),
        model: MODEL.into(),
        model_bytes: std::fs::metadata(home.root().join("models").join(MODEL).join("model.onnx"))
            .map_or(0, |m| m.len()),
        dim: DIM,
        count: rows,
        files: rows / 4,
        metric: "cosine".into(),
        normalized: true,
        input: "/synthetic".into(),
        updated_ms: 1,
        chunking: None,
    };
    collection::write(&dir, &meta, &chunk_rows, &[]).expect("write the collection");
    drop(chunk_rows);
    let written = started.elapsed();
    let c = Collection::open(&dir).expect("open");
    println!(
        "== ann: {rows} synthetic {DIM}-d vectors around {CENTRES} centres, HNSW index: {} ==",
        if c.has_ann() {
            "yes"
        } else {
            "no (below the threshold)"
        }
    );
    println!(
        "collection written (vectors, keyword and HNSW indexes) in {:.1} s with {threads} threads",
        written.as_secs_f64()
    );

    // Recall@10 and search time, exact against HNSW, interleaved query by query.
    let queries: Vec<Vec<f32>> = (0..QUERIES)
        .map(|_| {
            let r = rng.range(0, rows - 1);
            let mut q: Vec<f32> = data[r * DIM..(r + 1) * DIM]
                .iter()
                .map(|x| x + 0.03 * normal(&mut rng))
                .collect();
            unit(&mut q);
            q
        })
        .collect();
    let (mut exact_ms, mut ann_ms, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let mut found = 0;
    for q in &queries {
        let t = Instant::now();
        let exact = collection::search(&data, DIM, q, 10);
        let e = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        let approx = c.search(q, 10);
        let a = t.elapsed().as_secs_f64() * 1000.0;
        found += exact
            .iter()
            .filter(|h| approx.iter().any(|x| x.row == h.row))
            .count();
        exact_ms.push(e);
        ann_ms.push(a);
        ratio.push(e / a.max(1e-9));
    }
    let recall = found as f64 / (QUERIES * 10) as f64;
    println!(
        "recall@10 against exact  {recall:.4}  (goal >= 0.98: {})",
        if recall >= 0.98 { "MET" } else { "NOT MET" }
    );
    println!(
        "search, 1 thread: exact scan {:.2} ms, HNSW + exact re-rank {:.3} ms (median), {:.0}x",
        median(exact_ms),
        median(ann_ms),
        median(ratio)
    );

    // The warm node: model loaded, collection open.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cfg = NodeConfig {
        name: Some("bench".into()),
        workers: threads,
        threads: threads as u32,
        discovery: false,
        ..NodeConfig::default()
    };
    let node = rt
        .block_on(Node::start(home.clone(), cfg, Services::EMBEDDED))
        .expect("start the node");
    let handle = node.handle().clone();
    for mode in [Mode::Vector, Mode::Hybrid] {
        let mut total = Vec::new();
        let (mut embed, mut search) = (Vec::new(), Vec::new());
        for i in 0..51 {
            let text =
                format!("which worker leases the batch of section {i} in the archive queue?");
            let t = Instant::now();
            let reply = rt
                .block_on(query(
                    &handle,
                    QueryRequest {
                        collection: "big".into(),
                        text,
                        k: 10,
                        mode,
                        filter: Default::default(),
                    },
                ))
                .expect("query");
            // The first loads the model and opens the collection.
            if i > 0 {
                total.push(t.elapsed().as_secs_f64() * 1000.0);
                embed.push(reply.embed_ms);
                search.push(reply.search_ms);
            }
        }
        let total = median(total);
        println!(
            "warm node, {} query: embed {:.1} ms + search {:.2} ms, whole {total:.1} ms (median of 50; goal < 20 ms: {})",
            mode.as_str(),
            median(embed),
            median(search),
            if total < 20.0 { "MET" } else { "NOT MET" }
        );
    }
    rt.block_on(node.shutdown()).unwrap();
}
