//! Pipeline jobs: a model split into layer-range stages over real node processes (llama.cpp
//! stages, f32 hidden states over the cluster's TCP), against the same model run whole by
//! llama.cpp `infer` in this process: the same greedy tokens. Planning from advertised
//! memory, the tensors each stage loaded, and a middle stage's node killed mid-generation
//! (the resumed run still gives `infer`'s tokens).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Http, NodeProc, copy_secret, eventually, myco};
use myco_jobs::llm::gguf::TinyLlama;
use myco_jobs::llm::infer::engine::LlmModel;
use myco_jobs::llm::infer::{InferParams, Prompt};
use myco_jobs::llm::stage::ModelInfo;

const N_CTX: u32 = 2048;
const PROMPT: &str = "hello swarm, the node runs a job";

/// Six layers, a context of 2048.
fn write_model(home: &Path) -> PathBuf {
    let path = home.join("models/tiny6.gguf");
    TinyLlama {
        n_layer: 6,
        n_ctx: N_CTX,
        ..TinyLlama::default()
    }
    .write(&path, false)
    .unwrap();
    path
}

/// One layer with its KV cache at `N_CTX`: the unit the test gives nodes memory in.
fn layer_unit(info: &ModelInfo) -> u64 {
    info.layer_bytes[0] + info.kv_bytes_per_layer(N_CTX)
}

/// Greedy tokens of the whole model on llama.cpp `infer`, with the job's settings (the
/// default repeat penalty and one thread included: llama.cpp's CPU flash attention sums in
/// an order that depends on the thread count); until an end token or `max`.
fn reference(path: &Path, max: usize) -> Vec<i64> {
    let model = LlmModel::load(path).unwrap();
    let params = InferParams {
        max_tokens: max as u32,
        temperature: 0.0,
        n_ctx: N_CTX,
        threads: 1,
        ..InferParams::default()
    };
    let g = model
        .generate(
            &Prompt::Text(PROMPT.into()),
            &params,
            &|| false,
            &mut |_, _| {},
        )
        .unwrap();
    g.tokens.into_iter().map(i64::from).collect()
}

/// A temporary root with the reference copy of the model, its header, and the layer unit.
fn setup() -> (tempfile::TempDir, PathBuf, ModelInfo, u64) {
    let root = tempfile::tempdir().unwrap();
    let model = write_model(&root.path().join("ref"));
    let info = ModelInfo::read(&model).unwrap();
    let u = layer_unit(&info);
    (root, model, info, u)
}

fn job(root: &Path, name: &str, max_tokens: u32, n_ctx: u32, attempts: u32) -> PathBuf {
    let path = root.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "version = 1\nkind = \"pipeline\"\nmax_attempts = {attempts}\n[pipeline]\nmodel = \"tiny6\"\nprompt = {PROMPT:?}\ntemperature = 0.0\nmax_tokens = {max_tokens}\nn_ctx = {n_ctx}\nthreads = 1\n"
        ),
    )
    .unwrap();
    path
}

/// Start nodes named `names`, each holding the model and offering `memory` bytes to
/// stages, the rest joined to the first.
fn swarm(root: &Path, nodes: &[(&str, Option<u64>)]) -> Vec<NodeProc> {
    let mut procs: Vec<NodeProc> = Vec::new();
    for (name, memory) in nodes {
        let home = root.join(name);
        write_model(&home);
        let mut args: Vec<String> = ["--name", name, "--workers", "1", "--no-discovery"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if let Some(m) = memory {
            args.extend(["--stage-memory".to_owned(), m.to_string()]);
        }
        if let Some(first) = procs.first() {
            copy_secret(&first.home, &home);
            args.extend([
                "--join".to_owned(),
                first.cluster.clone().expect("cluster address"),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        procs.push(NodeProc::start_with(&home, &args));
    }
    let http = Http::new();
    let all = procs.len();
    eventually(
        Duration::from_secs(30),
        "every node sees the others",
        || {
            procs
                .iter()
                .all(|p| {
                    let (_, s) = http.get(&p.url("/api/swarm")).unwrap();
                    s["nodes"].as_array().is_some_and(|n| {
                        n.iter()
                            .filter(|m| m["status"] == "self" || m["status"] == "up")
                            .filter(|m| {
                                m["info"]["models"]
                                    .as_array()
                                    .is_some_and(|a| !a.is_empty())
                            })
                            .count()
                            == all
                    })
                })
                .then_some(())
        },
    );
    procs
}

fn wait_end(http: &Http, node: &NodeProc, id: &str) -> serde_json::Value {
    eventually(Duration::from_secs(240), "the job ends", || {
        let (_, j) = http.get(&node.url(&format!("/api/jobs/{id}"))).unwrap();
        (j["state"] == "done" || j["state"] == "dead").then_some(j)
    })
}

fn result(http: &Http, node: &NodeProc, id: &str) -> serde_json::Value {
    let (_, text) = http
        .get_text(&node.url(&format!("/api/jobs/{id}/result")))
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn spans(v: &serde_json::Value) -> Vec<(String, u64, u64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["node"].as_str().unwrap().to_owned(),
                s["first"].as_u64().unwrap(),
                s["end"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn own(spans: &[(&str, u64, u64)]) -> Vec<(String, u64, u64)> {
    spans
        .iter()
        .map(|(n, a, b)| ((*n).to_owned(), *a, *b))
        .collect()
}

/// Each stage read only its own layers (and stage 0 the embedding, the last the head), and
/// together exactly the file's tensors.
fn check_memory(stages: &serde_json::Value, info: &ModelInfo) {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let n = stages.as_array().unwrap().len();
    for (i, s) in stages.as_array().unwrap().iter().enumerate() {
        let (first, end) = (s["first"].as_u64().unwrap(), s["end"].as_u64().unwrap());
        total += s["tensor_bytes"].as_u64().unwrap();
        for t in s["tensors"].as_array().unwrap() {
            let t = t.as_str().unwrap();
            assert!(seen.insert(t.to_owned()), "{t} loaded by two stages");
            match t.strip_prefix("blk.") {
                Some(rest) => {
                    let layer: u64 = rest.split('.').next().unwrap().parse().unwrap();
                    assert!((first..end).contains(&layer), "{t} in stage {first}..{end}");
                }
                None if t == "token_embd.weight" => assert_eq!(i, 0, "{t}"),
                None => assert_eq!(i, n - 1, "{t} belongs to the head"),
            }
        }
    }
    assert_eq!(
        total, info.file_tensor_bytes,
        "the stages hold the model, once"
    );
}

#[test]
fn a_model_split_over_three_nodes_gives_the_whole_models_tokens_and_survives_losing_the_middle() {
    let (root, model, info, u) = setup();
    // a, b, c take 6 layers in proportion (5:4:3); d cannot hold one layer.
    let mut nodes = swarm(
        root.path(),
        &[
            ("a", Some(5 * u)),
            ("b", Some(4 * u)),
            ("c", Some(3 * u)),
            ("d", Some(u * 4 / 5)),
        ],
    );
    let http = Http::new();
    let a = &nodes[0];

    // The plan, as `myco plan` shows it.
    let out = myco(&a.home)
        .args([
            "--api",
            &a.addr.to_string(),
            "plan",
            "tiny6",
            "--n-ctx",
            "2048",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("split over 3 nodes"), "{text}");
    assert!(text.contains("split: no node can hold it whole"), "{text}");
    for line in ["a ", "b ", "c "] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(line) && l.contains("->")),
            "{text}"
        );
    }
    assert!(text.contains("left out"), "d is left out: {text}");
    let out = myco(&a.home)
        .args([
            "--json",
            "--api",
            &a.addr.to_string(),
            "plan",
            "tiny6",
            "--n-ctx",
            "2048",
        ])
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        spans(&plan["stages"]),
        own(&[("a", 0, 3), ("b", 3, 5), ("c", 5, 6)]),
        "{plan}"
    );

    // Exactness over three processes.
    let want = reference(&model, 40);
    let id = a.submit(&job(root.path(), "short", 40, N_CTX, 2));
    let j = wait_end(&http, a, &id);
    assert_eq!(j["state"], "done", "{j}");
    let r = result(&http, a, &id);
    assert_eq!(
        r["tokens"],
        serde_json::json!(want),
        "split tokens = whole tokens"
    );
    assert_eq!(
        spans(&r["stages"]),
        own(&[("a", 0, 3), ("b", 3, 5), ("c", 5, 6)])
    );
    check_memory(&r["stages"], &info);

    // Kill the middle stage's node mid-generation.
    let long = 1500;
    let started = std::time::Instant::now();
    let want = reference(&model, long);
    eprintln!(
        "reference: {} tokens in {:?}",
        want.len(),
        started.elapsed()
    );
    assert!(want.len() > 200, "the reference ends early: {}", want.len());
    let id = a.submit(&job(root.path(), "long", long as u32, N_CTX, 2));
    let mut tcp = std::net::TcpStream::connect(a.addr).unwrap();
    write!(
        tcp,
        "GET /api/jobs/{id}/stream HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut pieces = 0;
    for line in BufReader::new(tcp).lines() {
        if line.unwrap().starts_with("event: piece") {
            pieces += 1;
            if pieces == 20 {
                break;
            }
        }
    }
    nodes[1].kill9();
    let a = &nodes[0];
    let j = wait_end(&http, a, &id);
    assert_eq!(j["state"], "done", "{j}");
    let r = result(&http, a, &id);
    let replaced = r["replaced"]
        .as_array()
        .unwrap_or_else(|| panic!("no stage was replaced: {j}\n{r}"));
    assert_eq!(replaced.len(), 1, "{r}");
    let why = replaced[0].as_str().unwrap();
    assert!(
        why.contains("b (layers 3..5)") && why.contains("resumed"),
        "{r}"
    );
    assert_eq!(spans(&r["stages"]), own(&[("a", 0, 4), ("c", 4, 6)]));
    check_memory(&r["stages"], &info);
    let got: Vec<i64> = serde_json::from_value(r["tokens"].clone()).unwrap();
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        got == want,
        "not the same greedy tokens: {} and {} tokens, first different at {first_diff:?}",
        got.len(),
        want.len()
    );
}

#[test]
fn two_nodes_share_loaded_stages_a_lone_node_runs_whole_and_an_unplaceable_job_says_why() {
    let (root, model, info, u) = setup();
    let nodes = swarm(
        root.path(),
        &[("x", Some(7 * u / 2)), ("y", Some(7 * u / 2))],
    );
    let http = Http::new();
    let x = &nodes[0];
    let want = reference(&model, 24);

    // Two jobs at once: both use the same loaded stages, each with its own KV cache.
    let file = job(root.path(), "two", 24, N_CTX, 2);
    let ids = [x.submit(&file), x.submit(&file)];
    for id in &ids {
        let j = wait_end(&http, x, id);
        assert_eq!(j["state"], "done", "{j}");
        let r = result(&http, x, id);
        assert_eq!(r["tokens"], serde_json::json!(want));
        assert_eq!(spans(&r["stages"]), own(&[("x", 0, 3), ("y", 3, 6)]));
        check_memory(&r["stages"], &info);
    }
    // The loaded stages stay a while, and each node's heartbeats say which it hosts: x
    // sees y's layers (the dashboard's swarm page shows them).
    let hosted = eventually(Duration::from_secs(10), "y's stage in x's view", || {
        let (_, s) = http.get(&x.url("/api/swarm")).unwrap();
        let y = s["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == "y")?
            .clone();
        let st = y["info"]["stages"].as_array()?.clone();
        (!st.is_empty()).then_some(st)
    });
    assert_eq!(hosted.len(), 1, "{hosted:?}");
    assert_eq!(
        (&hosted[0]["first"], &hosted[0]["end"]),
        (&serde_json::json!(3), &serde_json::json!(6))
    );
    assert!(
        hosted[0]["model"].as_str().unwrap().ends_with(".gguf"),
        "{hosted:?}"
    );

    // Through /v1: no node can hold the model whole, so the request runs as a pipeline
    // job over both, with the same tokens.
    let (status, v) = http
        .post(
            &x.url("/v1/completions"),
            &serde_json::json!({
                "model": "tiny6", "prompt": PROMPT, "max_tokens": 24, "temperature": 0.0,
                "n_ctx": N_CTX, "threads": 1,
            }),
        )
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["myco"]["tokens"], serde_json::json!(want), "{v}");
    let job_id = v["id"].as_str().unwrap().trim_start_matches("cmpl-");
    let (_, j) = http.get(&x.url(&format!("/api/jobs/{job_id}"))).unwrap();
    assert_eq!(j["kind"], "pipeline", "{j}");
    // What the stages ran before does not change an answer: another prompt through the same
    // loaded stages, then the first again, with the lone reference's tokens.
    let other = root.path().join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace(PROMPT, "a model of the world and a machine"),
    )
    .unwrap();
    let id = x.submit(&other);
    assert_eq!(wait_end(&http, x, &id)["state"], "done");
    let id = x.submit(&file);
    assert_eq!(wait_end(&http, x, &id)["state"], "done");
    assert_eq!(result(&http, x, &id)["tokens"], serde_json::json!(want));
    // `myco ask` too: its question runs as a pipeline job.
    let out = myco(&x.home)
        .args([
            "--api",
            &x.addr.to_string(),
            "ask",
            PROMPT,
            "--model",
            "tiny6",
            "--raw",
        ])
        .args(["--max-tokens", "4", "--temperature", "0", "--n-ctx", "2048"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, list) = http.get(&x.url("/api/jobs?all=true&limit=1")).unwrap();
    assert_eq!(list["jobs"][0]["kind"], "pipeline", "{list}");
    assert_eq!(list["jobs"][0]["state"], "done", "{list}");
    // JSON mode needs the whole model's sampler: refused by name.
    let (status, v) = http
        .post(
            &x.url("/v1/chat/completions"),
            &serde_json::json!({
                "model": "tiny6", "messages": [{ "role": "user", "content": "hi" }],
                "max_tokens": 4, "n_ctx": N_CTX, "response_format": { "type": "json_object" },
                "chat_template": "chatml",
            }),
        )
        .unwrap();
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "response_format", "{v}");

    // A model too big for the swarm: the job fails, and says why.
    for node in &nodes {
        TinyLlama {
            n_layer: 12,
            n_ctx: N_CTX,
            ..TinyLlama::default()
        }
        .write(&node.home.join("models/tiny12.gguf"), false)
        .unwrap();
    }
    eventually(
        Duration::from_secs(30),
        "both nodes advertise tiny12",
        || {
            let (_, p) = http
                .get(&x.url("/api/plan?model=tiny12&n_ctx=2048"))
                .unwrap();
            // The plan names the model by its content too (read after it appeared).
            (p["nodes"].as_array()?.len() == 2 && p["sha256"].is_string()).then_some(())
        },
    );
    let huge = job(root.path(), "huge", 8, N_CTX, 1);
    let text = std::fs::read_to_string(&huge).unwrap();
    std::fs::write(&huge, text.replace("tiny6", "tiny12")).unwrap();
    let id = x.submit(&huge);
    let j = wait_end(&http, x, &id);
    assert_eq!(j["state"], "dead", "{j}");
    let err = j["error"].to_string();
    assert!(
        err.contains("cannot place tiny12.gguf") && err.contains("add a node"),
        "{j}"
    );

    // A node with room for the whole model runs it whole.
    let lone = root.path().join("lone");
    write_model(&lone);
    let p = NodeProc::start(&lone, &["--workers", "1"]);
    let out = myco(&lone)
        .args(["--api", &p.addr.to_string(), "plan", "tiny6"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("runs whole on test"), "{text}");
    assert!(
        text.contains("replicas: it fits whole on 1 of the 1 nodes up (test)"),
        "{text}"
    );
    let id = p.submit(&job(root.path(), "whole", 24, N_CTX, 1));
    let j = wait_end(&http, &p, &id);
    assert_eq!(j["state"], "done", "{j}");
    let r = result(&http, &p, &id);
    assert_eq!(r["tokens"], serde_json::json!(want));
    assert_eq!(spans(&r["stages"]), own(&[("test", 0, 6)]));
}

/// A quantized model of six layers big enough that a slice takes seconds at the holder's
/// rate limit (about 4 MiB a layer in Q8_0).
fn write_big(path: &Path) {
    TinyLlama {
        n_embd: 512,
        n_head: 8,
        n_head_kv: 4,
        n_ff: 2048,
        n_layer: 6,
        n_ctx: N_CTX,
        wtype: myco_jobs::llm::gguf::WType::Q8_0,
        ..TinyLlama::default()
    }
    .write(path, false)
    .unwrap();
}

/// The slice of `first..end` in a node's model cache (its `.part` while it travels).
fn cached_slice(home: &Path, first: u64, end: u64, part: bool) -> Option<PathBuf> {
    let name = format!("{first}-{end}.gguf{}", if part { ".part" } else { "" });
    std::fs::read_dir(home.join("cache/slices"))
        .ok()?
        .flatten()
        .map(|d| d.path().join(&name))
        .find(|p| p.is_file())
}

/// What a node says of itself in its heartbeats.
fn own_info(http: &Http, node: &NodeProc) -> serde_json::Value {
    let (_, s) = http.get(&node.url("/api/swarm")).unwrap();
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["status"] == "self")
        .unwrap()["info"]
        .clone()
}

#[test]
fn nodes_without_the_model_fetch_only_their_slices_resume_after_kill_9_and_fetch_nothing_twice() {
    let root = tempfile::tempdir().unwrap();
    let reference_model = root.path().join("ref/q6.gguf");
    write_big(&reference_model);
    let info = ModelInfo::read(&reference_model).unwrap();
    let file_bytes = std::fs::metadata(&reference_model).unwrap().len();
    let u = layer_unit(&info);
    // Equal offers, none big enough alone: three stages; the holder (a) goes first.
    let memory = (5 * u / 2).to_string();
    let home = |n: &str| root.path().join(n);
    write_big(&home("a").join("models/q6.gguf"));
    // A slow holder (1 MB/s a transfer), so a transfer can be caught mid-way.
    std::fs::write(home("a").join("config.toml"), "transfer_rate = 1000000\n").unwrap();
    let log = |n: &str| root.path().join(format!("{n}.log"));
    let a = NodeProc::start_logged(
        &home("a"),
        &[
            "--name",
            "a",
            "--workers",
            "1",
            "--no-discovery",
            "--stage-memory",
            &memory,
        ],
        &log("a"),
    );
    let join = a.cluster.clone().unwrap();
    let args = |name: &'static str| -> Vec<String> {
        [
            "--name",
            name,
            "--workers",
            "1",
            "--no-discovery",
            "--stage-memory",
            &memory,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(["--join".to_owned(), join.clone()])
        .collect()
    };
    let start = |name: &'static str| {
        std::fs::create_dir_all(home(name)).unwrap();
        copy_secret(&a.home, &home(name));
        let args = args(name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = root.path().join(format!("{name}.log"));
        let log = if log.exists() {
            root.path().join(format!("{name}-again.log"))
        } else {
            log
        };
        NodeProc::start_logged(&home(name), &args, &log)
    };
    let mut b = start("b");
    let c = start("c");
    let http = Http::new();
    eventually(
        Duration::from_secs(60),
        "a plan over the three nodes",
        || {
            let (_, p) = http.get(&a.url("/api/plan?model=q6&n_ctx=2048")).unwrap();
            (p["stages"].as_array()?.len() == 3).then_some(())
        },
    );

    // `myco plan` says who fetches what from whom.
    let out = myco(&a.home)
        .args([
            "--api",
            &a.addr.to_string(),
            "plan",
            "q6",
            "--n-ctx",
            "2048",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("* a"), "a holds the file: {text}");
    let fetching: Vec<&str> = text.lines().filter(|l| l.contains("(fetches")).collect();
    assert_eq!(fetching.len(), 2, "b and c fetch, a does not: {text}");
    assert!(fetching.iter().all(|l| l.contains("from a")), "{text}");
    let (_, plan) = http.get(&a.url("/api/plan?model=q6&n_ctx=2048")).unwrap();
    let stages = spans(&plan["stages"]);
    assert_eq!(stages[0].0, "a", "{plan}");
    let range = |node: &str| {
        let s = stages.iter().find(|s| s.0 == node).unwrap();
        (s.1, s.2)
    };
    let (b_range, c_range) = (range("b"), range("c"));

    // Run 1: b is killed -9 while its slice travels, then started again.
    let file = job(root.path(), "q6", 24, N_CTX, 8);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("tiny6", "q6")).unwrap();
    let want = {
        let model = LlmModel::load(&reference_model).unwrap();
        let params = InferParams {
            max_tokens: 24,
            temperature: 0.0,
            n_ctx: N_CTX,
            threads: 1,
            ..InferParams::default()
        };
        let g = model
            .generate(
                &Prompt::Text(PROMPT.into()),
                &params,
                &|| false,
                &mut |_, _| {},
            )
            .unwrap();
        g.tokens.into_iter().map(i64::from).collect::<Vec<i64>>()
    };
    let id = a.submit(&file);
    let part = eventually(Duration::from_secs(60), "b's slice mid-way", || {
        let p = cached_slice(&b.home, b_range.0, b_range.1, true)?;
        (std::fs::metadata(&p).ok()?.len() >= 3 << 20).then_some(p)
    });
    b.kill9();
    let kept = std::fs::metadata(&part).unwrap().len();
    let b = start("b");
    let j = wait_end(&http, &a, &id);
    assert_eq!(j["state"], "done", "{j}");
    let r = result(&http, &a, &id);
    assert_eq!(
        r["tokens"],
        serde_json::json!(want),
        "split tokens = whole tokens"
    );
    let ran: Vec<String> = spans(&r["stages"]).into_iter().map(|s| s.0).collect();
    assert_eq!(ran, ["a", "b", "c"], "{r}");

    // What crossed the network: each slice, never the file.
    let b_slice = std::fs::metadata(cached_slice(&b.home, b_range.0, b_range.1, false).unwrap())
        .unwrap()
        .len();
    let c_slice = std::fs::metadata(cached_slice(&c.home, c_range.0, c_range.1, false).unwrap())
        .unwrap()
        .len();
    let received = |n: &NodeProc| own_info(&http, n)["received_bytes"].as_u64().unwrap();
    // As of a node's last heartbeat (every 500 ms).
    let (b_got, c_got) = eventually(Duration::from_secs(5), "both report what came", || {
        let (b_got, c_got) = (received(&b), received(&c));
        (b_got > 0 && c_got > 0).then_some((b_got, c_got))
    });
    let tensors = |(first, end): (u64, u64)| {
        let (first, end) = (first as usize, end as usize);
        let layers: u64 = info.layer_bytes[first..end].iter().sum();
        layers + if end == 6 { info.head_bytes } else { 0 }
    };
    eprintln!(
        "model {file_bytes} B; b: slice {b_slice} B ({} B of tensors), {kept} B kept at the kill, {b_got} B after; c: slice {c_slice} B ({} B of tensors), received {c_got} B",
        tensors(b_range),
        tensors(c_range)
    );
    assert_eq!(c_got, c_slice, "c received its slice once");
    for (slice, range) in [(b_slice, b_range), (c_slice, c_range)] {
        let overhead = slice - tensors(range);
        assert!(
            overhead < 64 << 10,
            "a slice is its tensors and a header: {overhead} B more"
        );
        assert!(slice < file_bytes / 2, "{slice} of {file_bytes}");
    }
    // b resumed from the whole chunks it kept.
    let resumed_from = kept - kept % (1 << 20);
    assert!(resumed_from >= 2 << 20 && resumed_from < b_slice, "{kept}");
    assert_eq!(
        b_got,
        b_slice - resumed_from,
        "b fetched only what it lacked"
    );
    assert!(
        ((kept + b_got) as f64) < 1.25 * b_slice as f64,
        "{kept} + {b_got} of {b_slice}"
    );

    // Run 2: the same job transfers nothing (the slices are in the caches).
    let id = a.submit(&file);
    let j = wait_end(&http, &a, &id);
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(result(&http, &a, &id)["tokens"], serde_json::json!(want));
    // Two heartbeats later, still what came for run 1.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        (received(&b), received(&c)),
        (b_got, c_got),
        "nothing travelled"
    );

    // `myco models` shows each node's cache.
    let out = myco(&a.home)
        .args(["--json", "--api", &a.addr.to_string(), "models"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cached = v["cached"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert!(
        cached
            .iter()
            .any(|s| s["node"] == "c" && s["first"] == c_range.0),
        "{v}"
    );
    // `myco models rm` keeps a slice that a loaded stage uses (c's lingers a minute).
    let out = myco(&c.home)
        .args(["--json", "--api", &c.addr.to_string(), "models", "rm", "q6"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&removed["kept"], &removed["slices"]),
        (&1.into(), &0.into()),
        "{removed}"
    );
    assert!(cached_slice(&c.home, c_range.0, c_range.1, false).is_some());
}

#[test]
#[ignore = "needs root to mount a small tmpfs in a mount namespace; test.sh runs it with --ignored as root"]
fn a_full_disk_during_a_fetch_says_so_and_harms_neither_the_queue_nor_the_cache() {
    assert!(
        common::netns::is_root(),
        "this test needs root (unshare, mount)"
    );
    let root = tempfile::tempdir().unwrap();
    let home = |n: &str| root.path().join(n);
    write_big(&home("a").join("models/q6.gguf"));
    let info = ModelInfo::read(&home("a").join("models/q6.gguf")).unwrap();
    // Two nodes, neither big enough alone: b takes half the layers (about 12 MB).
    let memory = (4 * layer_unit(&info)).to_string();
    let a = NodeProc::start_with(
        &home("a"),
        &[
            "--name",
            "a",
            "--workers",
            "1",
            "--no-discovery",
            "--stage-memory",
            &memory,
        ],
    );
    // b's model cache is a 4 MiB file system of its own: it fills mid-transfer.
    std::fs::create_dir_all(home("b").join("cache")).unwrap();
    copy_secret(&a.home, &home("b"));
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=4m tmpfs \"$HOME_B/cache\" && exec \"$0\" \"$@\"")
        .arg(common::MYCO)
        .arg("--home")
        .arg(home("b"))
        .args([
            "--api",
            "127.0.0.1:0",
            "--json",
            "node",
            "--name",
            "b",
            "--workers",
            "1",
        ])
        .args(["--no-discovery", "--stage-memory", &memory, "--join"])
        .arg(a.cluster.clone().unwrap())
        .env("HOME_B", home("b"))
        .env("MYCO_CLUSTER", "127.0.0.1:0")
        .env("MYCO_LOG", "warn,ractor_cluster=error");
    let b = NodeProc::from_command(cmd, &home("b"));
    let http = Http::new();
    eventually(Duration::from_secs(60), "a plan over both nodes", || {
        let (_, p) = http.get(&a.url("/api/plan?model=q6&n_ctx=2048")).unwrap();
        (p["stages"].as_array()?.len() == 2 && p["sha256"].is_string()).then_some(())
    });
    let file = job(root.path(), "q6", 8, N_CTX, 1);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("tiny6", "q6")).unwrap();
    // Each try resumes what the last one kept, and finds the disk full again.
    std::fs::write(
        &file,
        text.replace("tiny6", "q6")
            .replace("max_attempts = 1", "max_attempts = 3"),
    )
    .unwrap();
    let id = a.submit(&file);
    let j = wait_end(&http, &a, &id);
    assert_eq!(j["state"], "dead", "{j}");
    let err = j["error"].to_string();
    assert!(
        err.contains("a full disk?") && err.contains("cannot fetch layers"),
        "the job says the disk is full: {err}"
    );
    // b's queue works as before.
    let noop = root.path().join("noop.toml");
    std::fs::write(
        &noop,
        "version = 1\nkind = \"noop\"\n[noop]\npayload = \"after\"\n",
    )
    .unwrap();
    let id = b.submit(&noop);
    let j = wait_end(&http, &b, &id);
    assert_eq!(j["state"], "done", "{j}");
    // Nothing half-fetched counts as cached (what was written stays, to resume from).
    let out = myco(&b.home)
        .args(["--json", "--api", &b.addr.to_string(), "models"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let on_b = v["cached"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["node"] == "b")
        .count();
    assert_eq!(on_b, 0, "{v}");
}
