//! LLM requests against real node processes on the tiny llama GGUF (real llama.cpp): the
//! OpenAI-compatible API in both modes through a real HTTP client, `myco ask` streaming, a
//! client that disconnects mid-stream, request errors, and chat ahead of a batch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Http, NodeProc, copy_secret, eventually, myco};
use futures_util::StreamExt;
use myco_jobs::llm::gguf::TinyLlama;

/// A home with the tiny model as `models/tiny.gguf` (with a chat template) and
/// `models/plain.gguf` (without), trained (so it says) for a context long enough for the
/// long generations here.
fn home_with_models(root: &Path, name: &str) -> std::path::PathBuf {
    let home = root.join(name);
    std::fs::create_dir_all(home.join("models")).unwrap();
    let tiny = TinyLlama {
        n_ctx: 65_536,
        ..TinyLlama::default()
    };
    tiny.write(&home.join("models/tiny.gguf"), true).unwrap();
    tiny.write(&home.join("models/plain.gguf"), false).unwrap();
    home
}

fn chat(max_tokens: u32, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "tiny",
        "messages": [{ "role": "user", "content": "hello swarm" }],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "repeat_penalty": 1.0,
        "n_ctx": 256,
        "stream": stream,
    })
}

/// The `data:` payloads of a server-sent event stream, as they arrive, until `[DONE]`.
async fn sse_data(resp: reqwest::Response, mut each: impl FnMut(&str) -> bool) {
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.unwrap());
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..end + 2).collect();
            let frame = String::from_utf8(frame).unwrap();
            for line in frame.lines() {
                if let Some(d) = line.strip_prefix("data: ")
                    && !each(d)
                {
                    return;
                }
            }
        }
    }
}

#[test]
fn openai_chat_and_completions_in_both_modes_and_errors_in_openai_shape() {
    let root = tempfile::tempdir().unwrap();
    let home = home_with_models(root.path(), "home");
    let node = NodeProc::start(&home, &["--workers", "1"]);
    let http = Http::new();

    let (status, models) = http.get(&node.url("/v1/models")).unwrap();
    assert_eq!(status, 200, "{models}");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["plain", "tiny"], "{models}");

    // Without streaming: the whole answer, its token ids, usage and finish reason.
    let (status, whole) = http
        .post(&node.url("/v1/chat/completions"), &chat(24, false))
        .unwrap();
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let tokens = whole["myco"]["tokens"].as_array().unwrap().clone();
    assert!(!tokens.is_empty(), "{whole}");
    assert_eq!(whole["usage"]["completion_tokens"], tokens.len());
    let again = http
        .post(&node.url("/v1/chat/completions"), &chat(24, false))
        .unwrap()
        .1;
    assert_eq!(
        again["myco"]["tokens"], whole["myco"]["tokens"],
        "greedy is deterministic"
    );

    // Streaming: several chunks that add up to the same text, then the finish, then [DONE].
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (chunks, streamed, finish, done) = rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(node.url("/v1/chat/completions"))
            .json(&chat(24, true))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let (mut chunks, mut text, mut finish, mut done) = (0, String::new(), None, false);
        sse_data(resp, |d| {
            if d == "[DONE]" {
                done = true;
                return false;
            }
            let v: serde_json::Value = serde_json::from_str(d).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk", "{v}");
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str()
                && !t.is_empty()
            {
                chunks += 1;
                text.push_str(t);
            }
            if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                finish = Some(f.to_owned());
            }
            true
        })
        .await;
        (chunks, text, finish, done)
    });
    assert!(done, "the stream ends with [DONE]");
    assert_eq!(streamed, text, "the streamed pieces add up to the answer");
    assert!(chunks > 1, "the answer came in {chunks} pieces");
    assert_eq!(
        finish.as_deref(),
        whole["choices"][0]["finish_reason"].as_str()
    );

    // Plain completions, both modes.
    let body = serde_json::json!({
        "model": "plain.gguf", "prompt": "once upon", "max_tokens": 8, "temperature": 0.0,
        "n_ctx": 128,
    });
    let (status, plain) = http.post(&node.url("/v1/completions"), &body).unwrap();
    assert_eq!(status, 200, "{plain}");
    assert_eq!(plain["object"], "text_completion");
    assert!(plain["choices"][0]["text"].is_string());

    // Errors: OpenAI's shape, a status that fits, the node keeps serving.
    let mut missing = chat(4, false);
    missing["model"] = "no-such-model".into();
    let (status, e) = http
        .post(&node.url("/v1/chat/completions"), &missing)
        .unwrap();
    assert_eq!(status, 404, "{e}");
    assert_eq!(e["error"]["code"], "model_not_found");
    assert_eq!(e["error"]["param"], "model");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-model")
    );

    // A model without a template chats through llama.cpp's built-in one for its
    // architecture; a template llama.cpp does not know is the request's fault.
    let mut no_template = chat(4, false);
    no_template["model"] = "plain".into();
    let (status, e) = http
        .post(&node.url("/v1/chat/completions"), &no_template)
        .unwrap();
    assert_eq!(status, 200, "{e}");
    no_template["chat_template"] = "no-such-template".into();
    let (status, e) = http
        .post(&node.url("/v1/chat/completions"), &no_template)
        .unwrap();
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-template"),
        "{e}"
    );

    // A corrupt GGUF (its tensors cut off) is named.
    let bytes = std::fs::read(home.join("models/tiny.gguf")).unwrap();
    std::fs::write(home.join("models/broken.gguf"), &bytes[..bytes.len() / 2]).unwrap();
    let mut broken = chat(4, false);
    broken["model"] = "broken".into();
    let (status, e) = http
        .post(&node.url("/v1/chat/completions"), &broken)
        .unwrap();
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broken.gguf"),
        "{e}"
    );

    let mut too_long = chat(4, false);
    too_long["messages"][0]["content"] = "word ".repeat(400).into();
    too_long["n_ctx"] = 64.into();
    let (status, e) = http
        .post(&node.url("/v1/chat/completions"), &too_long)
        .unwrap();
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("n_ctx"),
        "{e}"
    );
    // Fatal: one attempt, no retries.
    let (_, dead) = http.get(&node.url("/api/jobs?state=dead")).unwrap();
    let dead = dead["jobs"].as_array().unwrap();
    assert_eq!(dead.len(), 3, "no template, corrupt, too long: {dead:?}");
    for job in dead {
        assert_eq!(job["attempts"], 1, "{job}");
        assert_eq!(leased_by(job).len(), 1, "{job}");
    }

    let (status, after) = http
        .post(&node.url("/v1/chat/completions"), &chat(24, false))
        .unwrap();
    assert_eq!(status, 200, "the node keeps serving: {after}");
    assert_eq!(after["myco"]["tokens"], whole["myco"]["tokens"]);
}

#[test]
fn a_client_that_disconnects_mid_stream_cancels_and_frees_the_executor() {
    let root = tempfile::tempdir().unwrap();
    let home = home_with_models(root.path(), "home");
    let node = NodeProc::start(&home, &["--workers", "1"]);
    let http = Http::new();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // A long generation (the context is the limit, far beyond what the test waits for).
    let mut long = chat(100_000, true);
    long["n_ctx"] = 16_384.into();
    let id = rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(node.url("/v1/chat/completions"))
            .json(&long)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut id = String::new();
        let mut pieces = 0;
        sse_data(resp, |d| {
            let v: serde_json::Value = serde_json::from_str(d).unwrap();
            id = v["id"]
                .as_str()
                .unwrap()
                .trim_start_matches("chatcmpl-")
                .to_owned();
            if v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
            {
                pieces += 1;
            }
            // Leave after a few tokens: the response (and its connection) is dropped.
            pieces < 5
        })
        .await;
        id
    });
    // Dropping the runtime closes the connection for sure.
    drop(rt);
    let job = eventually(Duration::from_secs(60), "the job is cancelled", || {
        let (_, job) = http.get(&node.url(&format!("/api/jobs/{id}"))).unwrap();
        (job["state"] == "cancelled").then_some(job)
    });
    assert_eq!(leased_by(&job), ["test"], "it ran once: {job}");

    // The executive is free: the next request is answered.
    let (status, next) = http
        .post(&node.url("/v1/chat/completions"), &chat(8, false))
        .unwrap();
    assert_eq!(status, 200, "{next}");
    assert!(next["choices"][0]["finish_reason"].is_string(), "{next}");
}

#[test]
fn myco_ask_prints_tokens_as_they_come() {
    let root = tempfile::tempdir().unwrap();
    let home = home_with_models(root.path(), "home");
    let node = NodeProc::start(&home, &["--workers", "1"]);
    let http = Http::new();
    // `myco ask` leaves repeat_penalty at its default.
    let mut req = chat(24, false);
    req.as_object_mut().unwrap().remove("repeat_penalty");
    let (_, whole) = http.post(&node.url("/v1/chat/completions"), &req).unwrap();
    let expected = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();

    let ask = |max: &str| {
        let mut cmd = myco(&home);
        cmd.args([
            "--api",
            &node.addr.to_string(),
            "ask",
            "hello swarm",
            "--model",
            "tiny",
        ])
        .args([
            "--temperature",
            "0",
            "--n-ctx",
            "16384",
            "--max-tokens",
            max,
        ]);
        cmd
    };
    // Greedy: the same text as the API's answer.
    let out = ask("24").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{expected}\n")
    );

    // The first bytes arrive while the generation still runs.
    let mut child = ask("100000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "output came before the end"
    );
    child.kill().unwrap();
    let _ = child.wait();
    // Killing the client cancels the generation.
    eventually(
        Duration::from_secs(60),
        "the abandoned request is cancelled",
        || {
            let (_, jobs) = http.get(&node.url("/api/jobs?state=cancelled")).unwrap();
            (!jobs["jobs"].as_array().unwrap().is_empty()).then_some(())
        },
    );

    // An unknown model is bad input (exit 2), named.
    let out = myco(&home)
        .args([
            "--api",
            &node.addr.to_string(),
            "ask",
            "hi",
            "--model",
            "nope",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn a_chat_request_is_served_while_a_batch_of_1000_chunk_jobs_runs() {
    let root = tempfile::tempdir().unwrap();
    let home = home_with_models(root.path(), "home");
    let docs = root.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for i in 0..1000 {
        std::fs::write(
            docs.join(format!("doc{i:04}.md")),
            format!(
                "# Note {i}\n\n{}",
                format!("The swarm keeps note {i} about the mini PC. ").repeat(80)
            ),
        )
        .unwrap();
    }
    let job = root.path().join("batch.toml");
    std::fs::write(
        &job,
        "version = 1\nkind = \"chunk\"\n[chunk]\ninput = \"docs\"\nmax_tokens = 64\n",
    )
    .unwrap();
    let node = NodeProc::start(&home, &["--workers", "1"]);
    let http = Http::new();
    let batch = node.submit(&job);
    // Once the batch is under way, ask.
    eventually(Duration::from_secs(60), "the batch starts", || {
        let (_, j) = http.get(&node.url(&format!("/api/jobs/{batch}"))).unwrap();
        (j["progress"]["done"].as_u64().unwrap() > 0).then_some(())
    });
    let (status, answer) = http
        .post(&node.url("/v1/chat/completions"), &chat(16, false))
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let chat_id = answer["myco"]["job"].as_str().unwrap().to_owned();
    let (_, chat_job) = http
        .get(&node.url(&format!("/api/jobs/{chat_id}")))
        .unwrap();
    let chat_done = chat_job["finished_ms"].as_u64().unwrap();
    let chat_asked = chat_job["created_ms"].as_u64().unwrap();
    let chat_leased = leased_at(&chat_job).unwrap_or_else(|| panic!("{chat_job}"));

    let batch_job = eventually(Duration::from_secs(300), "the batch ends", || {
        let (_, j) = http.get(&node.url(&format!("/api/jobs/{batch}"))).unwrap();
        (j["state"] == "done").then_some(j)
    });
    let (_, children) = http
        .get(&node.url(&format!("/api/jobs?parent={batch}&limit=2000")))
        .unwrap();
    let children = children["jobs"].as_array().unwrap();
    assert_eq!(children.len(), 1000, "{batch_job}");
    let after = children
        .iter()
        .filter(|c| c["finished_ms"].as_u64().unwrap() > chat_done)
        .count();
    // The chat went ahead of the queued batch: while it waited to be leased, the batch lane
    // leased at most what one lease round takes (every worker, plus the prefetch).
    let (workers, prefetch) = (1, 32);
    let overtaking = children
        .iter()
        .filter(|c| leased_at(c).is_some_and(|t| t > chat_asked && t <= chat_leased))
        .count();
    eprintln!(
        "{after} of 1000 batch jobs finished after the chat request; {overtaking} were leased \
         while it waited ({} ms)",
        chat_leased - chat_asked
    );
    assert!(
        overtaking <= workers + prefetch,
        "{overtaking} batch jobs were leased while the chat request waited"
    );
    assert!(
        after > 0,
        "the chat request was answered before the batch ended"
    );
}

/// When the job was first leased (its history's first `leased` entry).
fn leased_at(job: &serde_json::Value) -> Option<u64> {
    job["history"]
        .as_array()?
        .iter()
        .find(|t| t["state"] == "leased")?["at_ms"]
        .as_u64()
}

/// The leases in a job's history, by holder name (`c#...` → `c`).
fn leased_by(job: &serde_json::Value) -> Vec<String> {
    job["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "leased")
        .filter_map(|t| t["note"].as_str())
        .map(|h| h.split('#').next().unwrap_or(h).to_owned())
        .collect()
}

#[test]
fn infer_jobs_run_where_the_model_is_and_give_the_same_tokens_on_any_node() {
    let root = tempfile::tempdir().unwrap();
    let home = |n: &str| root.path().join(n);
    let job = root.path().join("ask.toml");
    std::fs::write(
        &job,
        "version = 1\nkind = \"infer\"\n[infer]\nmodel = \"tiny\"\nprompt = \"hello swarm\"\ntemperature = 0.0\nrepeat_penalty = 1.0\nthreads = 1\nn_ctx = 256\nmax_tokens = 16\n",
    )
    .unwrap();
    // Jobs go to the model here: no node pulls it by itself (see the replicas test).
    let one = &["--workers", "1", "--no-discovery", "--no-auto-pull"];
    let a = NodeProc::start_with(&home("a"), &[&["--name", "a"][..], one].concat());
    let joined = |n: &'static str| {
        copy_secret(&home("a"), &home(n));
        [
            &["--name", n, "--join", a.cluster.as_deref().unwrap()][..],
            one,
        ]
        .concat()
    };
    let b = NodeProc::start_with(&home("b"), &joined("b"));
    // Only c holds the model.
    let c_home = home_with_models(root.path(), "c");
    let mut c = NodeProc::start_with(&c_home, &joined("c"));
    let http = Http::new();
    for node in [&a, &b] {
        eventually(Duration::from_secs(30), "c's model is seen", || {
            let (_, m) = http.get(&node.url("/v1/models")).unwrap();
            let tiny = m["data"]
                .as_array()?
                .iter()
                .find(|m| m["id"] == "tiny")?
                .clone();
            (tiny["nodes"] == serde_json::json!(["c"])).then_some(())
        });
    }

    let submit = |node: &NodeProc, json: bool| {
        let mut cmd = myco(&node.home);
        cmd.args(["--api", &node.addr.to_string()]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.args(["submit", "--wait"]).arg(&job).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let run_at = |node: &NodeProc| -> (Vec<String>, serde_json::Value) {
        let v: serde_json::Value = serde_json::from_str(&submit(node, true)).unwrap();
        let id = v["jobs"][0]["id"].as_str().unwrap().to_owned();
        let (_, job) = http.get(&node.url(&format!("/api/jobs/{id}"))).unwrap();
        let (_, result) = http
            .get_text(&node.url(&format!("/api/jobs/{id}/result")))
            .unwrap();
        (leased_by(&job), serde_json::from_str(&result).unwrap())
    };

    let (by, reference) = run_at(&c);
    assert_eq!(by, ["c"]);
    for node in [&a, &b] {
        let (by, got) = run_at(node);
        assert_eq!(by, ["c"], "only the node with the model ever held the job");
        assert_eq!(got["tokens"], reference["tokens"]);
    }
    // `submit --wait` streams the tokens, across the swarm, to the terminal.
    let printed = submit(&b, false);
    assert_eq!(
        printed,
        format!("{}\n", reference["text"].as_str().unwrap())
    );

    // A job accepted for c's model waits at a, and says why, while no node holding the
    // model is up. c's executive is kept busy by a long request so that it cannot take the
    // job; then c dies.
    let c_url = c.url("/v1/chat/completions");
    std::thread::spawn(move || {
        let mut long = chat(60_000, false);
        long["n_ctx"] = 65_536.into();
        let _ = Http::new().post(&c_url, &long);
    });
    eventually(Duration::from_secs(30), "c is busy", || {
        let (_, jobs) = http.get(&c.url("/api/jobs?state=leased")).unwrap();
        (!jobs["jobs"].as_array()?.is_empty()).then_some(())
    });
    let waiting = a.submit(&job);
    c.kill9();
    let status = eventually(Duration::from_secs(30), "the job says why it waits", || {
        let (_, j) = http.get(&a.url(&format!("/api/jobs/{waiting}"))).unwrap();
        j["waiting"].as_str().map(str::to_owned)
    });
    assert!(status.contains("tiny.gguf"), "{status}");
    let shown = myco(&a.home)
        .args(["--api", &a.addr.to_string(), "status", &waiting])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&shown.stdout).contains("waiting"));

    // The model copied to a and b: the waiting job runs, and each node runs what is
    // submitted to it itself, with the same tokens.
    for n in ["a", "b"] {
        std::fs::create_dir_all(home(n).join("models")).unwrap();
        std::fs::copy(
            c_home.join("models/tiny.gguf"),
            home(n).join("models/tiny.gguf"),
        )
        .unwrap();
    }
    let done = eventually(Duration::from_secs(60), "the waiting job runs", || {
        let (_, j) = http.get(&a.url(&format!("/api/jobs/{waiting}"))).unwrap();
        (j["state"] == "done").then_some(j)
    });
    // a runs it, or b steals it: both now hold the model.
    let by = leased_by(&done);
    assert!(by == ["a"] || by == ["b"], "{by:?}");
    let (_, result) = http
        .get_text(&a.url(&format!("/api/jobs/{waiting}/result")))
        .unwrap();
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["tokens"], reference["tokens"]);
    for (node, name) in [(&a, "a"), (&b, "b")] {
        let (by, got) = run_at(node);
        assert_eq!(by, [name]);
        assert_eq!(
            got["tokens"], reference["tokens"],
            "the same tokens on node {name}"
        );
    }
}

#[test]
fn a_job_that_requires_a_gpu_waits_and_says_why_where_no_node_has_one_and_runs_where_one_has() {
    let root = tempfile::tempdir().unwrap();
    let home = home_with_models(root.path(), "home");
    let detect = myco(&home).args(["--json", "detect"]).output().unwrap();
    let caps: serde_json::Value = serde_json::from_slice(&detect.stdout).unwrap();
    let has_gpu = caps["gpus"].as_array().is_some_and(|g| !g.is_empty());
    let job = root.path().join("gpu.toml");
    std::fs::write(
        &job,
        "version = 1\nkind = \"infer\"\n[infer]\nmodel = \"tiny\"\nprompt = \"hi\"\ngpu = true\nmax_tokens = 4\nn_ctx = 64\n",
    )
    .unwrap();
    let node = NodeProc::start(&home, &["--workers", "1"]);
    let http = Http::new();
    let id = node.submit(&job);
    if has_gpu {
        // Where this machine has one, the same job runs on it.
        let job = eventually(Duration::from_secs(60), "the GPU job ends", || {
            let (_, j) = http.get(&node.url(&format!("/api/jobs/{id}"))).unwrap();
            (j["state"] == "done" || j["state"] == "dead").then_some(j)
        });
        assert_eq!(
            job["state"], "done",
            "a GPU job on a machine with a GPU: {job}"
        );
        return;
    }
    let job = eventually(Duration::from_secs(20), "the job says why it waits", || {
        let (_, j) = http.get(&node.url(&format!("/api/jobs/{id}"))).unwrap();
        j["waiting"].is_string().then_some(j)
    });
    assert_eq!(job["state"], "queued", "{job}");
    assert!(job["waiting"].as_str().unwrap().contains("GPU"), "{job}");
    // Other requests are served meanwhile.
    let (status, _) = http
        .post(&node.url("/v1/chat/completions"), &chat(4, false))
        .unwrap();
    assert_eq!(status, 200);
    let (_, still) = http.get(&node.url(&format!("/api/jobs/{id}"))).unwrap();
    assert_eq!(still["state"], "queued", "{still}");
}

/// What OpenAI clients send: content as text parts, seeds (none or -1: random), a model
/// looked up by id; and what myco does not implement yet, refused with a 400 naming the
/// field instead of ignored.
#[test]
fn openai_request_shapes_are_read_or_refused_by_name() {
    let root = tempfile::tempdir().unwrap();
    let home = home_with_models(root.path(), "home");
    let node = NodeProc::start(&home, &["--workers", "1"]);
    let http = Http::new();
    let url = node.url("/v1/chat/completions");
    let tokens = |v: &serde_json::Value| v["myco"]["tokens"].clone();

    // Text parts are the text they join to.
    let (status, whole) = http.post(&url, &chat(8, false)).unwrap();
    assert_eq!(status, 200, "{whole}");
    let mut parts = chat(8, false);
    parts["messages"][0]["content"] = serde_json::json!([
        { "type": "text", "text": "hello swarm" },
    ]);
    let (status, v) = http.post(&url, &parts).unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(tokens(&v), tokens(&whole), "{v}");

    // Seeds: the same seed gives the same sample; no seed, or -1, a random one.
    let sampled = |seed: Option<i64>| {
        let mut req = chat(12, false);
        req["temperature"] = serde_json::json!(1.0);
        if let Some(s) = seed {
            req["seed"] = serde_json::json!(s);
        }
        let (status, v) = http.post(&url, &req).unwrap();
        assert_eq!(status, 200, "{v}");
        tokens(&v)
    };
    assert_eq!(sampled(Some(7)), sampled(Some(7)));
    let random: Vec<_> = [None, Some(-1), None, Some(-1)]
        .into_iter()
        .map(sampled)
        .collect();
    assert!(
        random.iter().any(|t| *t != random[0]),
        "four unseeded samples at temperature 1 were all the same: {random:?}"
    );

    // The model by id, and an unknown one in OpenAI's shape.
    let (status, m) = http.get(&node.url("/v1/models/tiny")).unwrap();
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["id"], "tiny");
    let (status, m) = http.get(&node.url("/v1/models/nope")).unwrap();
    assert_eq!(status, 404, "{m}");
    assert_eq!(m["error"]["code"], "model_not_found");

    // What myco cannot do, or a malformed request: refused by name.
    let refused = [
        (
            "functions",
            serde_json::json!([{ "name": "f", "parameters": {} }]),
        ),
        ("tool_choice", serde_json::json!("auto")),
        (
            "tools[0].function.parameters",
            serde_json::json!([{ "type": "function", "function": { "name": "f", "parameters": 3 } }]),
        ),
        (
            "response_format.json_schema.schema",
            serde_json::json!({ "type": "json_schema", "json_schema": { "name": "x" } }),
        ),
        (
            "response_format.json_schema.schema",
            serde_json::json!({ "type": "json_schema", "json_schema": { "name": "x", "schema": { "type": "object", "properties": { "a": { "$ref": "#/nowhere" } } } } }),
        ),
        (
            "tools[0].function.parameters",
            serde_json::json!([{ "type": "function", "function": { "name": "f", "parameters": { "type": "object", "properties": { "a": { "$ref": "#/nowhere" } } } } }]),
        ),
        ("logprobs", serde_json::json!(3)),
        ("top_logprobs", serde_json::json!(21)),
        ("seed", serde_json::json!(1u64 << 33)),
    ];
    for (field, value) in refused {
        let mut req = chat(4, false);
        let key = field.split(['.', '[']).next().unwrap();
        req[key] = value;
        let (status, v) = http.post(&url, &req).unwrap();
        assert_eq!(status, 400, "{field}: {v}");
        assert_eq!(v["error"]["param"], field, "{v}");
    }
    // JSON mode: the answer is JSON (a random-weight model's too: the grammar decides what
    // it may say), whole when the model ended it.
    let mut json_mode = chat(48, false);
    json_mode["response_format"] = serde_json::json!({ "type": "json_object" });
    let (status, v) = http.post(&url, &json_mode).unwrap();
    assert_eq!(status, 200, "{v}");
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.starts_with('{'), "{answer:?}");
    if v["choices"][0]["finish_reason"] == "stop" {
        let parsed: serde_json::Value = serde_json::from_str(answer).unwrap();
        assert!(parsed.is_object(), "{answer}");
    }
    let mut image = chat(4, false);
    image["messages"][0]["content"] = serde_json::json!([
        { "type": "text", "text": "what is this?" },
        { "type": "image_url", "image_url": { "url": "data:image/png;base64,AAAA" } },
    ]);
    let (status, v) = http.post(&url, &image).unwrap();
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "messages[0].content[1].type", "{v}");
    let mut tool_turn = chat(4, false);
    tool_turn["messages"] = serde_json::json!([
        { "role": "user", "content": "hi" },
        { "role": "assistant", "content": null, "tool_calls": [{ "id": "1", "type": "function", "function": { "name": "f", "arguments": "{}" } }] },
    ]);
    // A turn that called a tool renders (the fixture's template shows its empty content).
    let (status, v) = http.post(&url, &tool_turn).unwrap();
    assert_eq!(status, 200, "{v}");
    // Plain text output asks for nothing new.
    let mut text = chat(4, false);
    text["response_format"] = serde_json::json!({ "type": "text" });
    let (status, v) = http.post(&url, &text).unwrap();
    assert_eq!(status, 200, "{v}");
}

#[test]
fn models_are_known_by_their_content() {
    let root = tempfile::tempdir().unwrap();
    let home = home_with_models(root.path(), "home");
    let node = NodeProc::start(&home, &[]);
    let http = Http::new();
    let sha = |name: &str| {
        myco_jobs::model::identity::sha256_hex(
            &std::fs::read(home.join(format!("models/{name}.gguf"))).unwrap(),
        )
    };
    // The node hashes its models in the background; /v1/models carries the hash once known.
    let listed = eventually(Duration::from_secs(30), "the models' hashes", || {
        let (_, v) = http.get(&node.url("/v1/models")).unwrap();
        let of = |id: &str| {
            v["data"].as_array()?.iter().find(|m| m["id"] == id)?["sha256"]
                .as_str()
                .map(str::to_owned)
        };
        Some((of("tiny")?, of("plain")?))
    });
    assert_eq!(listed, (sha("tiny"), sha("plain")));
    // Same shape and name length, other bytes (one has a chat template): other models.
    assert_ne!(listed.0, listed.1);
    // Remembered in the home's cache, so the next start reads nothing.
    // (a record and a manifest each).
    let ids = std::fs::read_dir(home.join("cache/ids"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "id"))
        .count();
    assert_eq!(ids, 2);
    // `myco models` says what each node holds, with the hashes.
    let printed = eventually(Duration::from_secs(30), "myco models with hashes", || {
        let out = node.cli().args(["--json", "models"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let tiny = v["models"]
            .as_array()?
            .iter()
            .find(|m| m["model"] == "tiny")?
            .clone();
        tiny["sha256"].is_string().then_some(tiny)
    });
    assert_eq!(printed["sha256"], listed.0.as_str(), "{printed}");
    assert_eq!(printed["node"], "test", "{printed}");
    let out = node.cli().arg("models").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tiny") && text.contains(&listed.0[..16]),
        "{text}"
    );
}

#[test]
fn a_node_pulls_a_model_from_a_peer_by_its_content_and_then_holds_it() {
    let root = tempfile::tempdir().unwrap();
    let one = &["--workers", "1", "--no-discovery"];
    // Only a holds the model; a damages the first chunk it sends (once).
    let a_home = home_with_models(root.path(), "a");
    let a = NodeProc::start_logged_env(
        &a_home,
        &[&["--name", "a"][..], one].concat(),
        &root.path().join("a.log"),
        &[(
            myco_actors::node::FAULT_CORRUPT_CHUNK_ENV,
            std::ffi::OsStr::new("0"),
        )],
    );
    let b_home = root.path().join("b");
    copy_secret(&a_home, &b_home);
    let b = NodeProc::start_with(
        &b_home,
        &[
            &["--name", "b", "--join", a.cluster.as_deref().unwrap()][..],
            one,
        ]
        .concat(),
    );
    let http = Http::new();
    // a has read its model and says so in its heartbeats.
    eventually(
        Duration::from_secs(30),
        "b sees a's tiny with its hash",
        || {
            let out = b.cli().args(["--json", "models"]).output().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["models"]
                .as_array()?
                .iter()
                .any(|m| m["node"] == "a" && m["model"] == "tiny" && m["sha256"].is_string())
                .then_some(())
        },
    );
    // A client may not add models to a node.
    let (status, v) = http
        .post(
            &b.url("/api/models/pull"),
            &serde_json::json!({ "model": "tiny" }),
        )
        .unwrap();
    assert_eq!(status, 403, "{v}");
    // Nor remove them; and a name that is a path is refused by the owner's request too.
    let (status, v) = http.delete(&a.url("/api/models/tiny")).unwrap();
    assert_eq!(status, 403, "{v}");
    assert!(a_home.join("models/tiny.gguf").exists());
    let (status, v) = Http::owner(&a)
        .delete(&a.url("/api/models/..%2Fswarm.key"))
        .unwrap();
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &"bad_model".into()),
        "{v}"
    );
    assert!(a_home.join("swarm.key").exists());
    let out = b
        .cli()
        .args(["--json", "models", "pull", "tiny", "--from", "a"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pulled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = std::fs::read(a_home.join("models/tiny.gguf")).unwrap();
    assert_eq!(
        std::fs::read(b_home.join("models/tiny.gguf")).unwrap(),
        want,
        "the same bytes"
    );
    assert_eq!(pulled["bytes"], want.len() as u64, "{pulled}");
    // The damaged chunk was caught against a's manifest and came again: one MiB more.
    assert_eq!(
        pulled["received"],
        want.len() as u64 + (1 << 20),
        "{pulled}"
    );
    // b holds it now: the swarm lists both as holders of one model.
    eventually(Duration::from_secs(30), "both hold tiny", || {
        let (_, m) = http.get(&a.url("/v1/models")).unwrap();
        let tiny = m["data"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == "tiny")?
            .clone();
        (tiny["nodes"] == serde_json::json!(["a", "b"])).then_some(())
    });
    // Pulling what it holds, or what nobody holds, says why.
    for (name, why) in [
        ("tiny", "holds `tiny` already"),
        ("nothing", "holds a `nothing`"),
    ] {
        let out = b.cli().args(["models", "pull", name]).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{err}");
    }
}

#[test]
fn an_idle_node_pulls_a_model_that_jobs_wait_for_and_takes_some_of_them() {
    let root = tempfile::tempdir().unwrap();
    let one = &["--workers", "1", "--parallel", "1", "--no-discovery"];
    // Only a holds the model; b holds nothing and is idle.
    let a_home = home_with_models(root.path(), "a");
    let a = NodeProc::start_with(&a_home, &[&["--name", "a"][..], one].concat());
    let b_home = root.path().join("b");
    copy_secret(&a_home, &b_home);
    let b = NodeProc::start_with(
        &b_home,
        &[
            &["--name", "b", "--join", a.cluster.as_deref().unwrap()][..],
            one,
        ]
        .concat(),
    );
    let http = Http::new();
    eventually(
        Duration::from_secs(30),
        "b sees a's tiny with its hash",
        || {
            let (_, s) = http.get(&b.url("/api/swarm")).unwrap();
            s["nodes"]
                .as_array()?
                .iter()
                .any(|n| {
                    n["name"] == "a"
                        && n["info"]["models"]
                            .as_array()
                            .is_some_and(|m| m.iter().any(|m| m["sha256"].is_string()))
                })
                .then_some(())
        },
    );
    let job = root.path().join("long.toml");
    std::fs::write(
        &job,
        "version = 1\nkind = \"infer\"\n[infer]\nmodel = \"tiny\"\nprompt = \"hello swarm\"\ntemperature = 0.0\nrepeat_penalty = 1.0\nthreads = 1\nn_ctx = 1024\nmax_tokens = 600\n",
    )
    .unwrap();
    // Sixteen at once (one request), queued at a.
    let spec = serde_json::json!({
        "toml": std::fs::read_to_string(&job).unwrap(),
        "base_dir": root.path(),
    });
    let (status, v) = Http::owner(&a)
        .post(
            &a.url("/api/jobs"),
            &serde_json::json!({ "jobs": vec![spec; 16] }),
        )
        .unwrap();
    assert!(status < 300, "{v}");
    let ids: Vec<String> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 16, "{v}");
    let mut by_node = std::collections::BTreeMap::<String, usize>::new();
    let mut reference: Option<serde_json::Value> = None;
    for id in &ids {
        let j = eventually(Duration::from_secs(180), "the job ends", || {
            let (_, j) = http.get(&a.url(&format!("/api/jobs/{id}"))).unwrap();
            (j["state"] == "done" || j["state"] == "dead").then_some(j)
        });
        assert_eq!(j["state"], "done", "{j}");
        let history = j["history"].as_array().unwrap();
        let done = history.iter().filter(|t| t["state"] == "done").count();
        assert_eq!(done, 1, "done once: {j}");
        let by = leased_by(&j);
        *by_node.entry(by.last().cloned().unwrap()).or_default() += 1;
        let (_, text) = http
            .get_text(&a.url(&format!("/api/jobs/{id}/result")))
            .unwrap();
        let r: serde_json::Value = serde_json::from_str(&text).unwrap();
        // Every job gives the holder's tokens, wherever it ran.
        match &reference {
            None => reference = Some(r["tokens"].clone()),
            Some(want) => assert!(&r["tokens"] == want, "job {id} on {by:?}: other tokens"),
        }
    }
    eprintln!(
        "jobs by node: {by_node:?}; {} tokens each",
        reference
            .as_ref()
            .and_then(|r| r.as_array())
            .map_or(0, Vec::len)
    );
    assert!(
        by_node.get("b").copied().unwrap_or(0) >= 1,
        "b took none: {by_node:?}"
    );
    // b holds the model now, the same bytes.
    assert_eq!(
        std::fs::read(b_home.join("models/tiny.gguf")).unwrap(),
        std::fs::read(a_home.join("models/tiny.gguf")).unwrap()
    );
    // `myco models rm` takes it off b again; a second time there is nothing to remove.
    let out = b
        .cli()
        .args(["--json", "models", "rm", "tiny"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(removed["file"], true, "{removed}");
    assert!(!b_home.join("models/tiny.gguf").exists());
    let out = b.cli().args(["models", "rm", "tiny"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no model `tiny`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_request_gives_the_same_greedy_tokens_whatever_the_node_served_before() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("n");
    // A model whose long greedy answers part at the least change of numerics.
    TinyLlama {
        n_embd: 256,
        n_head: 4,
        n_head_kv: 2,
        n_ff: 768,
        n_layer: 6,
        n_ctx: 4096,
        ..TinyLlama::default()
    }
    .write(&home.join("models/m.gguf"), false)
    .unwrap();
    let node = NodeProc::start(&home, &["--workers", "1", "--parallel", "1"]);
    let http = Http::new();
    let ask = |prompt: &str| {
        let (status, v) = http
            .post(
                &node.url("/v1/completions"),
                &serde_json::json!({
                    "model": "m", "prompt": prompt, "max_tokens": 2000, "temperature": 0.0,
                    "n_ctx": 4096, "threads": 1,
                }),
            )
            .unwrap();
        assert_eq!(status, 200, "{v}");
        v["myco"]["tokens"].clone()
    };
    let x = "hello swarm, the node runs a job";
    let first = ask(x);
    assert!(first.as_array().unwrap().len() > 200, "{first}");
    // Others in between: one shares X's start (the cache could take it), one does not; and
    // X itself (the cache holds all of its prompt then).
    ask("hello swarm, the queue");
    ask("a model of the world");
    ask(x);
    let again = ask(x);
    let (a, b) = (first.as_array().unwrap(), again.as_array().unwrap());
    let parted = a.iter().zip(b).position(|(x, y)| x != y);
    assert!(
        a == b,
        "X again gave other tokens: {} and {} tokens, first different at {parted:?}",
        a.len(),
        b.len()
    );
}
