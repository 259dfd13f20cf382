//! A batch costs nothing over the continuous batcher (issue 31, acceptance 4): 64 greedy
//! chat requests as one OpenAI batch (upload, `POST /v1/batches`, poll until `completed`)
//! against the same 64 requests sent at once to `/v1/chat/completions`, on one node process
//! pinned to one core (`taskset -c 0`, one decode thread, `--parallel 8`), rounds
//! interleaved (which goes first alternates); the figure is the median of the per-round
//! ratios of aggregate generated tokens per second, from the first byte sent to the last
//! answer (for the batch: to the poll that sees it completed, every 100 ms). Goal: >= 0.9x.
//!
//! The model is the benches' random-weight llama GGUF (Q4_0, n_embd 1024, 8 layers) with a
//! chat template. `MYCO_BATCHES_ROUNDS` (default 3), `MYCO_BATCHES_LINES` (default 64),
//! `MYCO_BATCHES_TOKENS` (default 32). The node runs the `myco` binary of this profile
//! (built first). Run: `cargo bench -p myco-benches --bench batches`. No timing assertions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use myco_benches::{NodeProc, median, myco_binary};
use myco_jobs::llm::gguf::TinyLlama;
use serde_json::{Value, json};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn body(i: usize, tokens: usize) -> Value {
    json!({
        "model": "bench.gguf",
        "messages": [{"role": "user", "content": format!("Request {i}: describe what a swarm of {} nodes does overnight.", i % 9 + 2)}],
        "max_tokens": tokens, "temperature": 0, "repeat_penalty": 1.0, "n_ctx": 512, "threads": 1,
    })
}

/// The same requests at once: (seconds, generated tokens).
async fn at_once(http: &reqwest::Client, api: &str, bodies: &[Value]) -> (f64, u64) {
    let started = Instant::now();
    let calls = bodies.iter().map(|b| async move {
        let r: Value = http
            .post(format!("http://{api}/v1/chat/completions"))
            .json(b)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["usage"]["completion_tokens"]
            .as_u64()
            .unwrap_or_else(|| panic!("{r}"))
    });
    let tokens: u64 = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .sum();
    (started.elapsed().as_secs_f64(), tokens)
}

/// The same requests as one batch: (seconds, generated tokens).
async fn as_batch(http: &reqwest::Client, api: &str, bodies: &[Value]) -> (f64, u64) {
    let mut file = String::new();
    for (i, b) in bodies.iter().enumerate() {
        file.push_str(
            &json!({"custom_id": format!("r{i}"), "method": "POST", "url": "/v1/chat/completions", "body": b})
                .to_string(),
        );
        file.push('\n');
    }
    let boundary = "myco-bench-boundary";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bench.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n{file}\r\n--{boundary}--\r\n"
    );
    let started = Instant::now();
    let uploaded: Value = http
        .post(format!("http://{api}/v1/files"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(uploaded["id"].is_string(), "uploading: {uploaded}");
    let created: Value = http
        .post(format!("http://{api}/v1/batches"))
        .json(&json!({"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    let done = loop {
        let b: Value = http
            .get(format!("http://{api}/v1/batches/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match b["status"].as_str() {
            Some("completed") => break b,
            Some("in_progress" | "finalizing" | "validating") => {}
            _ => panic!("batch {id}: {b}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = started.elapsed().as_secs_f64();
    let out = http
        .get(format!(
            "http://{api}/v1/files/{}/content",
            done["output_file_id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let tokens = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["response"]["body"]["usage"]["completion_tokens"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(
        out.lines().count(),
        bodies.len(),
        "every line answered: {done}"
    );
    (took, tokens)
}

fn main() {
    let rounds = env_or("MYCO_BATCHES_ROUNDS", 3);
    let lines = env_or("MYCO_BATCHES_LINES", 64);
    let tokens = env_or("MYCO_BATCHES_TOKENS", 32);
    let exe = myco_binary();
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir_all(home.join("models")).unwrap();
    TinyLlama::bench_q4()
        .write(&home.join("models/bench.gguf"), true)
        .unwrap();
    let node = NodeProc::spawn(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(&exe)
            .arg("--home")
            .arg(&home)
            .args(["--api", "127.0.0.1:0", "--json", "node", "--name", "one"])
            .args(["--workers", "1", "--threads", "1", "--parallel", "8"])
            .arg("--no-discovery")
            .env("MYCO_CLUSTER", "127.0.0.1:0")
            .env("MYCO_LOG", "warn,ractor_cluster=error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let api = node.api.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The node's own token (a multipart upload without one is refused, as a browser's
    // cross-site form would be).
    let token = std::fs::read_to_string(home.join("api.token")).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", token.trim()).parse().unwrap(),
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    let bodies: Vec<Value> = (0..lines).map(|i| body(i, tokens)).collect();
    // Warm up: the model loaded, its contexts made.
    rt.block_on(at_once(&http, &api, &bodies[..8.min(lines)]));
    let mut ratios = Vec::new();
    let (mut direct, mut batched) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (d, b) = rt.block_on(async {
            if round % 2 == 0 {
                let d = at_once(&http, &api, &bodies).await;
                (d, as_batch(&http, &api, &bodies).await)
            } else {
                let b = as_batch(&http, &api, &bodies).await;
                (at_once(&http, &api, &bodies).await, b)
            }
        });
        let (rd, rb) = (d.1 as f64 / d.0, b.1 as f64 / b.0);
        println!(
            "round {round}: {lines} requests at once {rd:.1} tok/s ({} tokens in {:.1} s), as a batch {rb:.1} tok/s ({} tokens in {:.1} s): {:.3}x",
            d.1,
            d.0,
            b.1,
            b.0,
            rb / rd
        );
        ratios.push(rb / rd);
        direct.push(rd);
        batched.push(rb);
    }
    println!(
        "\n== batches: {lines} greedy chat requests of {tokens} tokens, bench model Q4_0 (n_embd 1024, 8 layers), one node pinned to core 0, one thread, --parallel 8, {rounds} interleaved rounds =="
    );
    println!(
        "at once (/v1/chat/completions) {:.1} tok/s | as a batch (/v1/batches) {:.1} tok/s | ratio {:.3}x (goal >= 0.9x)",
        median(direct),
        median(batched),
        median(ratios)
    );
    drop(node);
}
