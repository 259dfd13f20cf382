//! Retrieval quality (issue 15, acceptance 2): a generated documentation site of 320 HTML
//! pages that share their chrome (header, sidebar, notice box, previous/next links, footer),
//! built into a collection by a real archive job on an embedded node; then 100 sentences
//! copied from the pages' text, each asked through the node's query path (`/api/query`'s)
//! in every mode. A query is right when its first hit is a chunk of the page the sentence
//! came from. Goal: hybrid >= 95 % right; vector-only and keyword-only beside it, and hybrid
//! by reciprocal-rank fusion instead of myco's score fusion. Also the median query time per
//! mode (embedding included), for the record.
//!
//! The node uses every core of this machine (printed). Needs ./setup.sh (the embedding model
//! and ONNX Runtime). Not a timing bench; no assertions on figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::Criterion;
use myco_actors::query::{QueryRequest, query};
use myco_actors::{Node, Services, SpecSource};
use myco_benches::{Rng, linked_home, median, write_site};
use myco_jobs::collection::{FUSE_DEPTH, Hit, Mode, fuse};
use myco_runtime::config::{Home, NodeConfig};
use myco_runtime::queue::StateName;

const MODEL: &str = "all-MiniLM-L6-v2";
const PAGES: usize = 320;
const QUERIES: usize = 100;

fn main() {
    // Criterion only for `cargo bench`'s command line (`--test`, filters): nothing here is
    // timed by it.
    let _ = Criterion::default().configure_from_args();
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let site = write_site(&root.path().join("site"), PAGES, 15).expect("site");
    let home = Home::new(linked_home(root.path(), "node", MODEL).expect("./setup.sh first"));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cfg = NodeConfig {
        name: Some("bench".into()),
        workers: threads as usize,
        threads,
        discovery: false,
        ..NodeConfig::default()
    };
    let node = rt
        .block_on(Node::start(home.clone(), cfg, Services::EMBEDDED))
        .expect("start the node");
    let handle = node.handle().clone();
    let started = Instant::now();
    rt.block_on(async {
        let toml = format!(
            "version = 1\nkind = \"archive\"\n[archive]\ninput = {:?}\ncollection = \"site\"\n",
            root.path().join("site").display().to_string()
        );
        let id = handle
            .submit(vec![SpecSource {
                toml,
                base_dir: root.path().to_path_buf(),
            }])
            .await
            .expect("submit the archive")[0]
            .id;
        let rec = handle.wait(id, Duration::from_millis(250)).await.unwrap();
        assert_eq!(rec.state.name(), StateName::Done, "{:?}", rec.last_error);
    });
    let built = started.elapsed();

    // The questions: sentences drawn from the pages, each with its page.
    let mut rng = Rng::new(7);
    let questions: Vec<(&str, &str)> = (0..QUERIES)
        .map(|_| {
            let page = &site[rng.range(0, PAGES - 1)];
            let s = &page.sentences[rng.range(0, page.sentences.len() - 1)];
            (s.as_str(), page.rel.as_str())
        })
        .collect();
    let ask = |text: &str, mode, k| {
        rt.block_on(query(
            &handle,
            QueryRequest {
                collection: "site".into(),
                text: text.to_owned(),
                k,
                mode,
                filter: Default::default(),
            },
        ))
        .expect("query")
    };
    let mut searched = 0;
    println!(
        "== retrieval: {PAGES} HTML pages with shared chrome, {QUERIES} sentences copied from them, {threads} threads =="
    );
    println!("collection built in {:.1} s", built.as_secs_f64());
    for mode in Mode::ALL {
        let (mut first, mut top5) = (0, 0);
        let mut times = Vec::with_capacity(QUERIES);
        for (text, page) in &questions {
            let started = Instant::now();
            let reply = ask(text, mode, 5);
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            searched = reply.searched;
            if reply.hits.first().is_some_and(|h| h.source == *page) {
                first += 1;
            }
            if reply.hits.iter().any(|h| h.source == *page) {
                top5 += 1;
            }
        }
        let pct = |n: usize| 100.0 * n as f64 / QUERIES as f64;
        let goal = match mode {
            Mode::Hybrid if pct(first) >= 95.0 => "  (goal >= 95 %: MET)",
            Mode::Hybrid => "  (goal >= 95 %: NOT MET)",
            _ => "",
        };
        println!(
            "{:<8} right page first {:>5.1} %, in the top 5 {:>5.1} %, median query {:.1} ms{goal}",
            mode.as_str(),
            pct(first),
            pct(top5),
            median(times)
        );
    }
    // The alternative fusion: reciprocal rank over the same two lists.
    let mut first = 0;
    for (text, page) in &questions {
        let mut ids: Vec<(String, u32)> = Vec::new();
        let mut lists: Vec<Vec<Hit>> = Vec::new();
        for mode in [Mode::Vector, Mode::Keyword] {
            let reply = ask(text, mode, FUSE_DEPTH);
            let hits = reply
                .hits
                .iter()
                .map(|h| {
                    let id = (h.source.clone(), h.index);
                    let row = ids.iter().position(|x| *x == id).unwrap_or_else(|| {
                        ids.push(id);
                        ids.len() - 1
                    });
                    Hit {
                        row,
                        score: h.score,
                    }
                })
                .collect();
            lists.push(hits);
        }
        let fused = fuse(&[&lists[0], &lists[1]], 1);
        if fused.first().is_some_and(|h| ids[h.row].0 == *page) {
            first += 1;
        }
    }
    println!(
        "hybrid by reciprocal-rank fusion instead (k = 60): right page first {:.1} %",
        100.0 * first as f64 / QUERIES as f64
    );
    println!("({searched} chunks)");
    rt.block_on(node.shutdown()).unwrap();
}
