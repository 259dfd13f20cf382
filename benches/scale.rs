//! What a second machine adds (issue 29's honest question): node processes pinned to their
//! own cores (`taskset -c N`: this machine's two cores stand for two machines), one node
//! against two, each figure a ratio against its baseline in the same run, rounds
//! interleaved, median of the per-round ratios. No timing assertions.
//!
//! - **LLM** (`MYCO_SCALE=llm`): a bench-size random-weight llama GGUF (Q4_0, n_embd 1024,
//!   8 layers, 51 MB). Baseline: node `one`, pinned to core 0, runs the whole model as `infer`
//!   jobs with continuous batching (`--parallel 8`, one thread). Split: nodes `a` (core 0)
//!   and `b` (core 1), each offering `--stage-memory` for 60 % of the model (so neither holds
//!   it whole: layers 0..4 on one, 4..8 on the other), run the same requests as `pipeline`
//!   jobs (one thread each). Figures: 8 concurrent greedy requests of 64 tokens (aggregate
//!   tokens per second from submission to the last one's end), and 1 request alone. Also
//!   printed: for each of the 8 requests, whether its tokens decoded together with the others
//!   are those it gives alone through the split (and `infer`'s), or where they part.
//! - **Archive** (`MYCO_SCALE=archive`): an archive job of 320 files (200 HTML pages of a
//!   documentation site, 120 Markdown, text, HTML and PDF notes) embedded with the default
//!   model (./setup.sh fetches it): one node pinned to core 0 against two pinned to cores 0
//!   and 1, each with one worker; the job is submitted to the first and the second steals.
//!   Each round also runs two lone nodes (no swarm) at once, one a core, each the whole
//!   archive: what two cores give this work on this machine, the most a swarm of two can.
//!
//! `MYCO_SCALE` unset runs both; `MYCO_SCALE_ROUNDS` sets the rounds (LLM 5, archive 3);
//! `MYCO_SCALE_PROMPT=long` gives the LLM requests prompts of about 90 tokens instead of 30;
//! `MYCO_SCALE_TOKENS` the tokens each generates (default 64);
//! `MYCO_SCALE_DEBUG` prints each job's history, each node's CPU time by thread and its
//! stages' use of their time (busy, gathering a group, idle);
//! `MYCO_SCALE_FILES=N` makes the archive N files (a quick try of the bench itself). The
//! node processes run the `myco` binary of this profile; the bench builds it first
//! (`cargo build --release -p myco`). Run: `cargo bench -p myco-benches --bench scale`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use myco_benches::{NodeProc, linked_home, median, myco_binary, write_archive, write_site};
use myco_jobs::llm::gguf::TinyLlama;
use myco_jobs::llm::infer::engine::LlmModel;
use myco_jobs::llm::infer::{InferParams, Prompt};
use myco_jobs::llm::stage::{ModelInfo, Stage, StageConfig, StageInput, StageOutput, UBATCH};
use serde_json::{Value, json};

/// Concurrent requests.
const JOBS: usize = 8;
/// Tokens a request generates: `MYCO_SCALE_TOKENS`, default 64.
fn max_tokens() -> u32 {
    std::env::var("MYCO_SCALE_TOKENS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(64)
}
const N_CTX: u32 = 512;
const ARCHIVE_PAGES: usize = 200;
const ARCHIVE_NOTES: usize = 120;
const EMBED_MODEL: &str = "all-MiniLM-L6-v2";

/// The bench model's shape: llama, Q4_0, n_embd 1024, 8 layers (about 51 MB).
fn bench_model() -> TinyLlama {
    TinyLlama::bench_q4()
}

/// `myco node` pinned to `core`, with one executor and one decode thread.
fn start_node(
    exe: &Path,
    home: &Path,
    name: &str,
    core: usize,
    extra: &[String],
    join: Option<&str>,
) -> NodeProc {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &core.to_string()])
        .arg(exe)
        .arg("--home")
        .arg(home)
        .args(["--api", "127.0.0.1:0", "--json", "node", "--name", name])
        .args(["--workers", "1", "--threads", "1", "--no-discovery"])
        .args(extra)
        .env("MYCO_CLUSTER", "127.0.0.1:0")
        .env(
            "MYCO_LOG",
            if std::env::var("MYCO_SCALE_DEBUG").is_ok() {
                "warn,ractor_cluster=error,myco_actors::pipeline::stages=debug"
            } else {
                "warn,ractor_cluster=error"
            },
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(j) = join {
        cmd.args(["--join", j]);
    }
    // Needs taskset (util-linux).
    NodeProc::spawn(&mut cmd)
}

/// Start `b` in `a`'s swarm and wait until `a` sees it up.
fn join(rt: &Runtime, a: &NodeProc, start_b: impl FnOnce() -> NodeProc) -> NodeProc {
    let b = start_b();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = rt.get(&format!("http://{}/api/swarm", a.api));
        let up = s["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|m| m["status"] == "up").count());
        if up >= 1 {
            return b;
        }
        assert!(Instant::now() < deadline, "b never joined a: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Runtime {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Runtime {
    fn new() -> Runtime {
        Runtime {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    async fn text(&self, url: &str) -> String {
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn get(&self, url: &str) -> Value {
        self.rt
            .block_on(async { serde_json::from_str(&self.text(url).await).unwrap_or(Value::Null) })
    }

    /// Submit `tomls` in one request and wait for every job's end (each job's event stream);
    /// the time from submission to the last end, and each job's result.
    fn run(&self, api: &str, tomls: &[String]) -> (Duration, Vec<Value>) {
        self.run_as(api, None, tomls)
    }

    /// [`Runtime::run`] with the node's API token (its owner may name any path).
    fn run_as(&self, api: &str, token: Option<&str>, tomls: &[String]) -> (Duration, Vec<Value>) {
        self.rt.block_on(async {
            let jobs: Vec<Value> = tomls
                .iter()
                .map(|t| json!({ "toml": t, "base_dir": "/" }))
                .collect();
            let started = Instant::now();
            let mut post = self.http.post(format!("http://{api}/api/jobs"));
            if let Some(t) = token {
                post = post.bearer_auth(t);
            }
            let reply: Value = post
                .json(&json!({ "jobs": jobs }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let ids: Vec<String> = reply["jobs"]
                .as_array()
                .unwrap_or_else(|| panic!("submitting: {reply}"))
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned())
                .collect();
            let ends = ids.iter().map(|id| async move {
                let resp = self
                    .http
                    .get(format!("http://{api}/api/jobs/{id}/stream"))
                    .send()
                    .await
                    .unwrap();
                let mut body = resp.bytes_stream();
                let mut seen = Vec::new();
                while let Some(chunk) = body.next().await {
                    seen.extend_from_slice(&chunk.unwrap());
                    if seen.windows(10).any(|w| w == b"event: end") {
                        break;
                    }
                    // Keep only the tail that may hold the start of the marker.
                    if seen.len() > 64 {
                        seen.drain(..seen.len() - 16);
                    }
                }
            });
            futures_util::future::join_all(ends).await;
            let took = started.elapsed();
            let mut results = Vec::new();
            for id in &ids {
                let job: Value =
                    serde_json::from_str(&self.text(&format!("http://{api}/api/jobs/{id}")).await)
                        .unwrap_or(Value::Null);
                assert_eq!(job["state"], "done", "job {id}: {job}");
                if std::env::var("MYCO_SCALE_DEBUG").is_ok() {
                    let hist: Vec<String> = job["history"]
                        .as_array()
                        .map(|h| h.iter().map(|t| t.to_string()).collect())
                        .unwrap_or_default();
                    eprintln!(
                        "JOB {id} took {} ms: {}",
                        job["finished_ms"].as_u64().unwrap_or(0)
                            - job["created_ms"].as_u64().unwrap_or(0),
                        hist.join(" ")
                    );
                    // A parent's children: who ran how many, from when to when (ms after
                    // the parent was created), and how long each took there.
                    let kids: Value = serde_json::from_str(
                        &self
                            .text(&format!(
                                "http://{api}/api/jobs?parent={id}&all=true&limit=100000"
                            ))
                            .await,
                    )
                    .unwrap_or(Value::Null);
                    let t0 = job["created_ms"].as_u64().unwrap_or(0);
                    let mut per: std::collections::BTreeMap<String, (usize, u64, u64, u64)> =
                        Default::default();
                    for k in kids["jobs"].as_array().cloned().unwrap_or_default() {
                        let h = k["history"].as_array().cloned().unwrap_or_default();
                        let leased = h.iter().rev().find(|t| t["state"] == "leased");
                        let who = leased
                            .and_then(|t| t["note"].as_str())
                            .unwrap_or("?")
                            .split('#')
                            .next()
                            .unwrap_or("?")
                            .to_owned();
                        let start = leased.and_then(|t| t["at_ms"].as_u64()).unwrap_or(t0);
                        let end = k["finished_ms"].as_u64().unwrap_or(start);
                        if std::env::var("MYCO_SCALE_DEBUG").is_ok_and(|d| d == "2") {
                            let ran = h
                                .iter()
                                .map(|t| {
                                    format!(
                                        "{}@{}",
                                        t["state"].as_str().unwrap_or("?"),
                                        t["at_ms"].as_u64().unwrap_or(0).saturating_sub(t0)
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join(" ");
                            eprintln!(
                                "  child on {who}: {ran} done@{}",
                                k["finished_ms"].as_u64().unwrap_or(0).saturating_sub(t0)
                            );
                        }
                        let e = per.entry(who.clone()).or_insert((0, u64::MAX, 0, 0));
                        e.0 += 1;
                        e.1 = e.1.min(start.saturating_sub(t0));
                        e.2 = e.2.max(end.saturating_sub(t0));
                        e.3 += end.saturating_sub(start);
                    }
                    for (who, (n, first, last, sum)) in per {
                        eprintln!(
                            "  children run by {who}: {n}, from {first} to {last} ms, {sum} ms leased in all"
                        );
                    }
                }
                let text = self
                    .text(&format!("http://{api}/api/jobs/{id}/result"))
                    .await;
                // One JSON value (an LLM's result), or JSON Lines ending with a summary.
                let last = text.trim().lines().last().unwrap_or_default();
                results.push(serde_json::from_str(last).unwrap_or(Value::Null));
            }
            (took, results)
        })
    }
}

/// A node process's CPU time by thread name, printed (MYCO_SCALE_DEBUG).
fn cpu_report(name: &str, node: &NodeProc) {
    let pid = node.child.id();
    let mut per: std::collections::BTreeMap<String, u64> = Default::default();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        *per.entry(comm).or_default() += ticks;
    }
    eprintln!("CPU {name} (ticks of 10 ms): {per:?}");
}

fn rounds(default: usize) -> usize {
    std::env::var("MYCO_SCALE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

fn tokens(result: &Value) -> Vec<i64> {
    result["tokens"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

/// Tokens per second over the whole of a run (every job's completion tokens).
fn rate(took: Duration, results: &[Value]) -> f64 {
    let n: u64 = results
        .iter()
        .map(|r| r["completion_tokens"].as_u64().unwrap_or(0))
        .sum();
    n as f64 / took.as_secs_f64()
}

/// `JOBS` prompts whose greedy answers run the whole [`max_tokens`] (random weights pick an end
/// token now and then: a request that stops after 5 tokens would measure its overhead, not
/// decoding), found with `infer` in this process.
fn prompts(model: &Path) -> Vec<String> {
    const SUBJECTS: [&str; 16] = [
        "the otter who kept the lighthouse",
        "a violin found in a glacier",
        "the bakery under the volcano",
        "seven tractors and an orchid",
        "the falcon of the old library",
        "a submarine that learned to sing",
        "the mini PC that ran a swarm",
        "a laptop that would not retire",
        "the queue that never lost a job",
        "a GPU in a farmhouse",
        "the node that stole the work",
        "an archive of old letters",
        "the lighthouse keeper's cat",
        "a tractor on the moon",
        "the orchid and the falcon",
        "a glacier full of violins",
    ];
    let llm = LlmModel::load(model).unwrap();
    let params = InferParams {
        max_tokens: max_tokens(),
        temperature: 0.0,
        n_ctx: N_CTX,
        threads: 1,
        ..InferParams::default()
    };
    let mut out = Vec::new();
    for (i, s) in SUBJECTS.iter().cycle().enumerate().take(SUBJECTS.len() * 4) {
        // The fixture's vocabulary is nearly a character a token: short prompts are about 30
        // tokens, long ones about 90.
        let dots = ".".repeat(1 + i / SUBJECTS.len());
        let p = if long_prompts() {
            format!("Write a long story about {s}, with every detail you know{dots}")
        } else {
            format!("Tell of {s}{dots}")
        };
        let g = llm
            .generate(&Prompt::Text(p.clone()), &params, &|| false, &mut |_, _| {})
            .unwrap();
        if g.tokens.len() == max_tokens() as usize {
            out.push(p);
            if out.len() == JOBS {
                return out;
            }
        }
    }
    panic!("fewer than {JOBS} prompts run {} tokens", max_tokens());
}

/// `MYCO_SCALE_PROMPT=long`: prompts of about 90 tokens instead of 30.
fn long_prompts() -> bool {
    std::env::var("MYCO_SCALE_PROMPT").is_ok_and(|p| p == "long")
}

fn llm_job(kind: &str, prompt: &str) -> String {
    format!(
        "version = 1\nkind = \"{kind}\"\nmax_attempts = 1\n[{kind}]\nmodel = \"bench\"\nprompt = {prompt:?}\ntemperature = 0.0\nmax_tokens = {}\nn_ctx = {N_CTX}\nthreads = 1\n",
        max_tokens()
    )
}

fn llm(exe: &Path, root: &Path) {
    let rt = Runtime::new();
    let homes: Vec<PathBuf> = ["one", "a", "b"].iter().map(|n| root.join(n)).collect();
    let fixture = bench_model();
    for h in &homes {
        std::fs::create_dir_all(h.join("models")).unwrap();
        fixture.write(&h.join("models/bench.gguf"), false).unwrap();
    }
    let info = ModelInfo::read(&homes[0].join("models/bench.gguf")).unwrap();
    let total: u64 = info.layer_bytes.iter().sum::<u64>()
        + info.embed_bytes
        + info.head_bytes
        + u64::from(info.hp.n_layer) * info.kv_bytes_per_layer(N_CTX);
    let offer = vec![
        "--parallel".to_owned(),
        JOBS.to_string(),
        "--stage-memory".into(),
        (total * 6 / 10).to_string(),
    ];
    let one = start_node(exe, &homes[0], "one", 0, &offer[..2], None);
    let a = start_node(exe, &homes[1], "a", 0, &offer, None);
    std::fs::copy(homes[1].join("swarm.key"), homes[2].join("swarm.key")).unwrap();
    let _b = join(&rt, &a, || {
        start_node(exe, &homes[2], "b", 1, &offer, Some(&a.cluster))
    });
    let prompts = prompts(&homes[0].join("models/bench.gguf"));
    let infer: Vec<String> = prompts.iter().map(|p| llm_job("infer", p)).collect();
    let split: Vec<String> = prompts.iter().map(|p| llm_job("pipeline", p)).collect();

    // Warm: the model loaded on `one`, the stages on a and b. Then each request alone.
    let (_, r) = rt.run(&one.api, &infer[..1]);
    let (_, s) = rt.run(&a.api, &split[..1]);
    let plan: Vec<String> = s[0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| format!("{} {}..{}", st["node"], st["first"], st["end"]))
        .collect();
    assert_eq!(plan.len(), 2, "the model splits over a and b: {plan:?}");
    assert_eq!(
        tokens(&r[0]),
        tokens(&s[0]),
        "the split gives infer's tokens"
    );
    let alone: Vec<Vec<i64>> = split
        .iter()
        .map(|j| tokens(&rt.run(&a.api, std::slice::from_ref(j)).1[0]))
        .collect();
    let infer_alone: Vec<Vec<i64>> = infer
        .iter()
        .map(|j| tokens(&rt.run(&one.api, std::slice::from_ref(j)).1[0]))
        .collect();

    let n = rounds(5);
    let (mut many, mut single) = (Vec::new(), Vec::new());
    let mut figures = Vec::new();
    let mut together: Vec<Vec<i64>> = Vec::new();
    let mut together_infer: Vec<Vec<i64>> = Vec::new();
    for round in 0..n {
        // Alternate which goes first: both see the same drift of a shared machine.
        let run_both = |jobs_one: &[String], jobs_split: &[String]| {
            if round % 2 == 0 {
                let o = rt.run(&one.api, jobs_one);
                (o, rt.run(&a.api, jobs_split))
            } else {
                let s = rt.run(&a.api, jobs_split);
                (rt.run(&one.api, jobs_one), s)
            }
        };
        let ((t_one, r_one), (t_split, r_split)) = run_both(&infer, &split);
        let ((t_one1, r_one1), (t_split1, r_split1)) = run_both(&infer[..1], &split[..1]);
        let (one8, split8) = (rate(t_one, &r_one), rate(t_split, &r_split));
        let (one1, split1) = (rate(t_one1, &r_one1), rate(t_split1, &r_split1));
        many.push(split8 / one8);
        single.push(split1 / one1);
        figures.push((one8, split8, one1, split1));
        together = r_split.iter().map(tokens).collect();
        together_infer = r_one.iter().map(tokens).collect();
        let after_first = |r: &Value| {
            r["completion_tokens"].as_f64().unwrap_or(0.0)
                / (r["generation_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0)
        };
        println!(
            "round {round}: 8 at once: one node {one8:.1} tok/s, split {split8:.1} tok/s ({:.2}x); alone: one node {one1:.1}, split {split1:.1} ({:.2}x) [after the first token: {:.1} and {:.1}; prompt {:.0} and {:.0} ms; whole job {:.0} and {:.0} ms]",
            split8 / one8,
            split1 / one1,
            after_first(&r_one1[0]),
            after_first(&r_split1[0]),
            r_one1[0]["prompt_ms"].as_f64().unwrap_or(0.0),
            r_split1[0]["prompt_ms"].as_f64().unwrap_or(0.0),
            t_one1.as_secs_f64() * 1000.0,
            t_split1.as_secs_f64() * 1000.0,
        );
    }
    if std::env::var("MYCO_SCALE_DEBUG").is_ok() {
        for (name, node) in [("one", &one), ("a", &a), ("b", &_b)] {
            cpu_report(name, node);
        }
    }
    let med = |i: usize| median(figures.iter().map(|f| [f.0, f.1, f.2, f.3][i]).collect());
    println!(
        "\n== scale: LLM, {JOBS} greedy requests of {} tokens ({} prompts), bench model {} MB Q4_0 (8 layers), one thread a node, nodes pinned (one/a: core 0, b: core 1), {n} interleaved rounds ==",
        max_tokens(),
        if long_prompts() {
            "90-token"
        } else {
            "30-token"
        },
        std::fs::metadata(homes[0].join("models/bench.gguf"))
            .unwrap()
            .len()
            / 1_000_000
    );
    println!("split: {}", plan.join(", "));
    println!(
        "{JOBS} at once:  one node (infer, continuous batching) {:.1} tok/s | 2-node split (pipeline, batched stages) {:.1} tok/s | ratio {:.2}x (goal >= 1.7x)",
        med(0),
        med(1),
        median(many)
    );
    println!(
        "1 alone:    one node {:.1} tok/s | 2-node split {:.1} tok/s | ratio {:.2}x (goal >= 0.9x)",
        med(2),
        med(3),
        median(single)
    );
    // For comparison: infer's continuous batching, which also decodes requests together.
    let parted: Vec<String> = together_infer
        .iter()
        .zip(&infer_alone)
        .map(|(t, a)| {
            t.iter()
                .zip(a)
                .position(|(x, y)| x != y)
                .map_or("-".into(), |k| k.to_string())
        })
        .collect();
    println!(
        "infer's {JOBS} requests decoded together part from their lone runs at tokens: {} (-: never)",
        parted.join(" ")
    );
    for (i, (t, a)) in together.iter().zip(&alone).enumerate() {
        let parts = t.iter().zip(a).position(|(x, y)| x != y);
        let vs_infer = t == &infer_alone[i];
        match parts {
            None if t.len() == a.len() => println!(
                "request {i}: decoded with the others, the {} tokens it gives alone through the split{}",
                t.len(),
                if vs_infer {
                    " (and infer's)"
                } else {
                    " (infer's differ)"
                }
            ),
            None => println!(
                "request {i}: {} tokens together, {} alone",
                t.len(),
                a.len()
            ),
            Some(k) => {
                let gap = lone_gap(&homes[0].join("models/bench.gguf"), &prompts[i], a, t[k], k);
                println!(
                    "request {i}: parts from its lone run at token {k}, where the lone run's logit for its token is {gap:.2e} above the batched run's token (the batched run's numbers drift from the lone run's: other kernels sum in another order, and random weights amplify the drift token by token)"
                );
            }
        }
    }
}

/// The lone run's logits at token `k` of request `prompt` (its tokens `alone`, replayed
/// through the whole model on the stage engine, which computes what a lone run through the
/// split does): how far its token's logit is above `other`'s.
fn lone_gap(model: &Path, prompt: &str, alone: &[i64], other: i64, k: usize) -> f32 {
    let vocab = LlmModel::load_vocab(model).unwrap();
    let text = vocab.render(&Prompt::Text(prompt.into()), None).unwrap();
    let ids: Vec<u32> = vocab.tokenize(&text).iter().map(|&t| t as u32).collect();
    let info = ModelInfo::read(model).unwrap();
    let config = StageConfig {
        threads: 1,
        slots: 1,
        ..StageConfig::new(N_CTX)
    };
    let mut whole = Stage::load_with(model, 0, info.hp.n_layer, config).unwrap();
    let mut pos = 0;
    let mut logits = Vec::new();
    let chunks: Vec<&[u32]> = ids.chunks(UBATCH as usize).collect();
    for (c, chunk) in chunks.iter().enumerate() {
        let last = c + 1 == chunks.len();
        if let StageOutput::Logits(l) = whole
            .forward_with(1, pos, StageInput::Tokens(chunk.to_vec()), last)
            .unwrap()
        {
            logits = l;
        }
        pos += chunk.len();
    }
    for &t in &alone[..k] {
        let StageOutput::Logits(l) = whole
            .forward(1, pos, StageInput::Tokens(vec![t as u32]))
            .unwrap()
        else {
            panic!("logits")
        };
        logits = l;
        pos += 1;
    }
    logits[alone[k] as usize] - logits[other as usize]
}

/// A node's API token (made on its first start).
fn token(home: &Path) -> String {
    std::fs::read_to_string(home.join("api.token"))
        .unwrap()
        .trim()
        .to_owned()
}

fn archive_job(input: &Path) -> String {
    format!(
        "version = 1\nkind = \"archive\"\n[archive]\ninput = {:?}\ncollection = \"scale\"\nmodel = \"{EMBED_MODEL}\"\n",
        input.display().to_string()
    )
}

fn archive(exe: &Path, root: &Path) {
    let rt = Runtime::new();
    let docs = root.join("docs");
    // MYCO_SCALE_FILES: fewer files, for a quick try of the bench itself.
    let (pages, notes) = match std::env::var("MYCO_SCALE_FILES")
        .ok()
        .and_then(|f| f.parse::<usize>().ok())
    {
        Some(n) => (n / 2, n - n / 2),
        None => (ARCHIVE_PAGES, ARCHIVE_NOTES),
    };
    write_site(&docs.join("site"), pages, 11).unwrap();
    write_archive(&docs.join("notes"), notes, 12).unwrap();
    let files = pages + notes;
    let job = archive_job(&docs);
    let n = rounds(3);
    let mut ratios = Vec::new();
    let mut ceilings = Vec::new();
    let mut figures = Vec::new();
    for round in 0..n {
        // Fresh homes each round: an archive job resumes, so a second run would embed nothing.
        let dir = root.join(format!("archive-{round}"));
        let home = |name: &str| linked_home(&dir, name, EMBED_MODEL).expect("./setup.sh first");
        let (h1, ha, hb) = (home("one"), home("a"), home("b"));
        // Over HTTP a job reads only below the node's data roots.
        let roots = ["--data-root".to_owned(), docs.display().to_string()];
        let one = || {
            let one = start_node(exe, &h1, "one", 0, &roots, None);
            let (t, r) = rt.run_as(&one.api, Some(&token(&h1)), std::slice::from_ref(&job));
            if std::env::var("MYCO_SCALE_DEBUG").is_ok() {
                cpu_report("one", &one);
            }
            (t, r[0]["chunks"].as_u64().unwrap_or(0))
        };
        let two = || {
            let a = start_node(exe, &ha, "a", 0, &roots, None);
            std::fs::copy(ha.join("swarm.key"), hb.join("swarm.key")).unwrap();
            let b = join(&rt, &a, || {
                start_node(exe, &hb, "b", 1, &roots, Some(&a.cluster))
            });
            let (t, r) = rt.run_as(&a.api, Some(&token(&ha)), std::slice::from_ref(&job));
            if std::env::var("MYCO_SCALE_DEBUG").is_ok() {
                cpu_report("a", &a);
                cpu_report("b", &b);
            }
            (t, r[0]["chunks"].as_u64().unwrap_or(0))
        };
        // What two cores give this work with no swarm at all: two lone nodes, one a core,
        // each running the whole archive at once. `2 x one / both` is the most two pinned
        // nodes can give here (2.0 on independent cores; shared caches and memory take some).
        let (hx, hy) = (home("x"), home("y"));
        let both = || {
            let x = start_node(exe, &hx, "x", 0, &roots, None);
            let y = start_node(exe, &hy, "y", 1, &roots, None);
            let (tx, ty) = std::thread::scope(|s| {
                let run = |node: &NodeProc, h: &Path| {
                    let rt = Runtime::new();
                    rt.run_as(&node.api, Some(&token(h)), std::slice::from_ref(&job))
                        .0
                };
                let a = s.spawn(move || run(&x, &hx));
                let b = s.spawn(move || run(&y, &hy));
                (a.join().unwrap(), b.join().unwrap())
            });
            tx.max(ty)
        };
        let ((t1, c1), (t2, c2), tb) = if round % 2 == 0 {
            let o = one();
            let t = two();
            (o, t, both())
        } else {
            let b = both();
            let t = two();
            (one(), t, b)
        };
        assert!(c1 > 0, "the archive job reports its chunks");
        assert_eq!(c1, c2, "both embed the same chunks");
        let ceiling = 2.0 * t1.as_secs_f64() / tb.as_secs_f64();
        println!(
            "round {round}: one node {:.1} s, two nodes {:.1} s ({:.2}x), {c1} chunks; two lone nodes at once, a core each: {:.1} s (two cores give {ceiling:.2}x here)",
            t1.as_secs_f64(),
            t2.as_secs_f64(),
            t1.as_secs_f64() / t2.as_secs_f64(),
            tb.as_secs_f64(),
        );
        ratios.push(t1.as_secs_f64() / t2.as_secs_f64());
        ceilings.push(ceiling);
        figures.push((t1.as_secs_f64(), t2.as_secs_f64(), c1));
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "\n== scale: archive of {files} files (HTML, Markdown, text, PDF), {EMBED_MODEL}, one worker a node, nodes pinned (one/a: core 0, b: core 1), {n} interleaved rounds =="
    );
    println!(
        "one node {:.1} s | two nodes {:.1} s | speed-up {:.2}x (goal >= 1.9x) | {} chunks | two cores without a swarm (two lone nodes at once): {:.2}x, the most two nodes can give here",
        median(figures.iter().map(|f| f.0).collect()),
        median(figures.iter().map(|f| f.1).collect()),
        median(ratios),
        figures.first().map_or(0, |f| f.2),
        median(ceilings)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let exe = myco_binary();
    let root = tempfile::tempdir().expect("tempdir");
    let which = std::env::var("MYCO_SCALE").unwrap_or_default();
    if which.is_empty() || which == "llm" {
        llm(&exe, &root.path().join("llm"));
    }
    if which.is_empty() || which == "archive" {
        archive(&exe, &root.path().join("archive"));
    }
}
