//! One way to wait: `myco submit --wait` and `myco ask` follow the node's event stream of the
//! job (`GET /api/jobs/{id}/stream`) and make no polling requests. Counted by the node itself
//! (`myco_http_requests_total` in `/metrics`), against a real node process and the tiny
//! llama GGUF on real llama.cpp. (`myco run` has no HTTP at all: it follows the job through
//! the same follower in-process.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{Http, NodeProc, myco};
use myco_jobs::llm::gguf::TinyLlama;

/// The node's requests so far, by `METHOD route`, leaving out `/metrics` itself.
fn requests(http: &Http, node: &NodeProc) -> BTreeMap<String, u64> {
    let (status, text) = http.get_text(&node.url("/metrics")).unwrap();
    assert_eq!(status, 200, "{text}");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("myco_http_requests_total{method=\"") else {
            continue;
        };
        let (method, rest) = rest.split_once("\",route=\"").unwrap();
        let (route, n) = rest.split_once("\"} ").unwrap();
        if route != "/metrics" {
            out.insert(format!("{method} {route}"), n.parse().unwrap());
        }
    }
    out
}

/// What changed between two counts.
fn made(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn expect(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

#[test]
fn submit_wait_and_ask_follow_the_event_stream_without_polling() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir_all(home.join("models")).unwrap();
    TinyLlama::default()
        .write(&home.join("models/tiny.gguf"), true)
        .unwrap();
    let node = NodeProc::start(&home, &["--workers", "1"]);
    let http = Http::new();

    // A job that runs for 3 s: a client polling every 200 ms would ask ~15 times.
    let job = root.path().join("slow.toml");
    std::fs::write(
        &job,
        "version = 1\nkind = \"noop\"\n\n[noop]\npayload = \"slow\"\nsleep_ms = 3000\n",
    )
    .unwrap();
    let before = requests(&http, &node);
    let out = myco(&home)
        .args(["--api", &node.addr.to_string(), "submit", "--wait"])
        .arg(&job)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("done"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        made(&before, &requests(&http, &node)),
        expect(&[("POST /api/jobs", 1), ("GET /api/jobs/{id}/stream", 1)]),
        "submit --wait: one submit, one event stream"
    );

    let before = requests(&http, &node);
    let out = myco(&home)
        .args(["--api", &node.addr.to_string(), "ask", "hello swarm"])
        .args([
            "--model",
            "tiny",
            "--temperature",
            "0",
            "--max-tokens",
            "48",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty());
    assert_eq!(
        made(&before, &requests(&http, &node)),
        expect(&[
            ("GET /api/plan", 1),
            ("POST /api/jobs", 1),
            ("GET /api/jobs/{id}/stream", 1),
            ("GET /api/jobs/{id}/result", 1),
        ]),
        "ask: one plan (whole or split?), one submit, one event stream, the final result"
    );
}
