//! End-to-end acceptance tests: real `myco` processes, real redb files, real TCP.
//!
//! Every wait is a poll with a deadline (`eventually`); nothing asserts on timing. Nodes get
//! a `config.toml` with a fast retry clock so that retries take milliseconds, not seconds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Http, NodeProc, eventually, myco};
use serde_json::{Value, json};

/// How long any single condition may take before a test gives up.
const LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// A fresh home with a config that makes retries fast (50 ms backoff, 50 ms clock tick).
fn fast_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("config.toml"),
        "backoff_base = 0.05\nbackoff_max = 0.2\ntick = 0.05\n",
    )
    .unwrap();
    home
}

fn write(dir: &Path, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, contents).unwrap();
    path
}

/// What a finished CLI process left behind.
#[derive(Debug)]
struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Run a command to its end (killing it and failing the test after `limit`), collecting
/// both output streams on their own threads so that a chatty child cannot block on a pipe.
fn run(mut cmd: Command, limit: Duration) -> Out {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn myco");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not exit within {limit:?}; stderr so far:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// `myco --home HOME ARGS...` (the client finds the node through `HOME/node.addr`).
fn cli(home: &Path, args: &[&str]) -> Out {
    let mut cmd = myco(home);
    cmd.args(args);
    run(cmd, LIMIT)
}

/// A `[noop]` job's TOML.
fn noop_toml(top: &str, noop: &str) -> String {
    format!("version = 1\nkind = \"noop\"\n{top}\n[noop]\n{noop}\n")
}

/// Submit one spec over HTTP; returns `(http status, the one submitted entry)`.
fn submit_raw(http: &Http, node: &NodeProc, toml: &str, base_dir: &Path) -> (u16, Value) {
    let (status, body) = http
        .post(
            &node.url("/api/jobs"),
            &json!({ "toml": toml, "base_dir": base_dir }),
        )
        .unwrap();
    assert!(
        status == 200 || status == 201,
        "submit refused ({status}): {body}"
    );
    let jobs = body["jobs"].as_array().expect("jobs array");
    assert_eq!(jobs.len(), 1, "{body}");
    (status, jobs[0].clone())
}

/// Submit one spec over HTTP; returns its id.
fn submit(http: &Http, node: &NodeProc, toml: &str, base_dir: &Path) -> String {
    let (_, job) = submit_raw(http, node, toml, base_dir);
    job["id"].as_str().unwrap().to_owned()
}

fn job(http: &Http, node: &NodeProc, id: &str) -> Value {
    let (status, body) = http.get(&node.url(&format!("/api/jobs/{id}"))).unwrap();
    assert_eq!(status, 200, "GET job {id}: {body}");
    body
}

fn state(http: &Http, node: &NodeProc, id: &str) -> String {
    job(http, node, id)["state"].as_str().unwrap().to_owned()
}

/// Poll until the job reaches a terminal state; returns its view.
fn finished(http: &Http, node: &NodeProc, id: &str) -> Value {
    eventually(LIMIT, &format!("job {id} to finish"), || {
        let v = job(http, node, id);
        matches!(v["state"].as_str(), Some("done" | "dead" | "cancelled")).then_some(v)
    })
}

/// Poll until the job is in `want`; panics early if it reaches another terminal state.
fn reaches(http: &Http, node: &NodeProc, id: &str, want: &str) -> Value {
    let v = finished(http, node, id);
    assert_eq!(v["state"], want, "job {id} ended otherwise: {v:#}");
    v
}

fn list(http: &Http, node: &NodeProc, query: &str) -> Vec<Value> {
    let (status, body) = http.get(&node.url(&format!("/api/jobs?{query}"))).unwrap();
    assert_eq!(status, 200, "list {query}: {body}");
    body["jobs"].as_array().unwrap().clone()
}

fn metrics(http: &Http, node: &NodeProc) -> String {
    let (status, text) = http.get_text(&node.url("/metrics")).unwrap();
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of an unlabelled metric.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Wait until exactly `n` jobs run on the node's workers (not merely leased into a buffer).
fn running(http: &Http, node: &NodeProc, n: f64) {
    eventually(LIMIT, &format!("{n} running job(s)"), || {
        (metric(&metrics(http, node), "myco_jobs_running") == Some(n)).then_some(())
    });
}

/// How many times the job's history says it became `state`.
fn times_in(view: &Value, state: &str) -> usize {
    view["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == state)
        .count()
}

// ---------------------------------------------------------------------------------------------
// Acceptance 4: a malformed job.toml is refused at submit, and nothing is enqueued
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_specs_are_refused_at_submit_and_enqueue_nothing() {
    let home = fast_home();
    let node = NodeProc::start(home.path(), &["--workers", "1"]);
    let http = Http::owner(&node);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "docs/a.md", "# Title\n\nSome text.\n");
    let good = write(
        d,
        "good.toml",
        "version = 1\nkind = \"chunk\"\n[chunk]\ninput = \"docs\"\nmax_tokens = 64\noverlap = 8\n",
    );

    // (file, what stderr must name, a piece of the problem's own hint)
    let cases = [
        (
            write(d, "syntax.toml", "version = 1\nkind = \"chunk\n[chunk]\n"),
            "line 2",
            "fix the TOML syntax",
        ),
        (
            write(
                d,
                "unknown.toml",
                "version = 1\nkind = \"chunk\"\n[chunk]\ninput = \"docs\"\nmax_tokenz = 64\n",
            ),
            "chunk.max_tokenz",
            "fix its spelling",
        ),
        (
            write(
                d,
                "wrong_type.toml",
                "version = 1\nkind = \"chunk\"\n[chunk]\ninput = \"docs\"\nmax_tokens = \"big\"\n",
            ),
            "chunk.max_tokens",
            "expected type",
        ),
        (
            write(
                d,
                "missing_input.toml",
                "version = 1\nkind = \"chunk\"\n[chunk]\ninput = \"no/such/dir\"\n",
            ),
            "chunk.input",
            "existing file, directory or glob",
        ),
    ];
    for (file, names, hint) in &cases {
        let out = cli(home.path(), &["submit", file.to_str().unwrap()]);
        assert_eq!(out.code(), Some(2), "{}: {out:?}", file.display());
        assert!(
            out.stderr.contains(names),
            "{}: stderr should name {names:?}: {}",
            file.display(),
            out.stderr
        );
        assert!(
            out.stderr.contains("hint:") && out.stderr.contains(hint),
            "{}: stderr should carry the hint {hint:?}: {}",
            file.display(),
            out.stderr
        );
        assert!(out.stdout.trim().is_empty(), "no id printed: {out:?}");
    }
    let missing = cli(home.path(), &["submit", cases[3].0.to_str().unwrap()]);
    assert!(missing.stderr.contains("does not exist"), "{missing:?}");

    // A batch with one good and one bad spec is refused as a whole.
    let out = cli(
        home.path(),
        &[
            "submit",
            good.to_str().unwrap(),
            cases[1].0.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("chunk.max_tokenz"), "{out:?}");

    // The API says the same in structured form.
    let (status, body) = http
        .post(
            &node.url("/api/jobs"),
            &json!({ "toml": std::fs::read_to_string(&cases[2].0).unwrap(), "base_dir": d }),
        )
        .unwrap();
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_spec", "{body}");
    let problem = &body["error"]["problems"][0];
    assert_eq!(problem["field"], "chunk.max_tokens", "{body}");
    assert!(!problem["hint"].as_str().unwrap().is_empty(), "{body}");

    assert_eq!(
        list(&http, &node, "all=true"),
        Vec::<Value>::new(),
        "nothing may be enqueued by refused submissions"
    );

    // The good spec on its own is accepted: the refusals above were about the bad ones.
    let out = cli(home.path(), &["submit", good.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let id = out.stdout.trim();
    assert_eq!(list(&http, &node, "").len(), 1);
    reaches(&http, &node, id, "done");
    let (status, text) = http
        .get_text(&node.url(&format!("/api/jobs/{id}/result")))
        .unwrap();
    assert_eq!(status, 200, "{text}");
    for line in text.lines() {
        let c: Value = serde_json::from_str(line).unwrap();
        assert!(c["source"].as_str().unwrap().ends_with("a.md"), "{c:#}");
    }
    assert!(text.contains("Some text."), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Acceptance 5: idempotency keys and cancellation, over HTTP against a node
// ---------------------------------------------------------------------------------------------

#[test]
fn same_idempotency_key_returns_the_first_job() {
    let home = fast_home();
    let node = NodeProc::start(home.path(), &["--workers", "1"]);
    let http = Http::owner(&node);
    let toml = noop_toml(
        "idempotency_key = \"nightly-2026-11-22\"",
        "payload = \"x\"",
    );

    let (s1, first) = submit_raw(&http, &node, &toml, Path::new("/"));
    let (s2, second) = submit_raw(&http, &node, &toml, Path::new("/"));
    assert_eq!(s1, 201);
    assert_eq!(first["created"], true);
    assert_eq!(second["id"], first["id"], "same key, same job");
    assert_eq!(second["created"], false);
    assert_eq!(s2, 200, "nothing was created the second time");

    // The CLI says so too.
    let file = write(home.path(), "nightly.toml", &toml);
    let out = cli(home.path(), &["submit", file.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.contains(first["id"].as_str().unwrap()) && out.stdout.contains("already"),
        "{out:?}"
    );

    // Another spec under the same key: 409 naming the job, nothing enqueued.
    let other = noop_toml(
        "idempotency_key = \"nightly-2026-11-22\"",
        "payload = \"y\"",
    );
    let (s3, third) = http
        .post(
            &node.url("/api/jobs"),
            &json!({ "toml": other, "base_dir": "/" }),
        )
        .unwrap();
    assert_eq!(s3, 409, "{third}");
    assert_eq!(third["error"]["code"], "idempotency_conflict", "{third}");
    assert!(
        third["error"]["message"]
            .as_str()
            .unwrap()
            .contains(first["id"].as_str().unwrap()),
        "{third}"
    );
    let jobs = list(&http, &node, "all=true");
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    reaches(&http, &node, first["id"].as_str().unwrap(), "done");

    // Keys are scoped to who submits: a client without the token (from loopback) using the
    // owner's key gets a job of its own, never the owner's.
    let (s4, theirs) = submit_raw(&Http::new(), &node, &other, Path::new("/"));
    assert_eq!(s4, 201, "{theirs}");
    assert_ne!(theirs["id"], first["id"]);
}

#[test]
fn cancel_queued_running_and_parent_jobs() {
    let home = fast_home();
    let node = NodeProc::start(home.path(), &["--workers", "1"]);
    let http = Http::owner(&node);
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.md", "b.txt", "sub/c.txt"] {
        write(
            dir.path(),
            &format!("docs/{name}"),
            "some words ".repeat(40),
        );
    }

    // Occupy the only worker.
    let long = submit(
        &http,
        &node,
        &noop_toml("", "sleep_ms = 60000"),
        Path::new("/"),
    );
    running(&http, &node, 1.0);
    assert_eq!(state(&http, &node, &long), "leased");

    // Behind it: a plain job, a chunk parent with three children, and a short job.
    let queued = submit(
        &http,
        &node,
        &noop_toml("", "payload = \"must not run\""),
        Path::new("/"),
    );
    let parent = submit(
        &http,
        &node,
        "version = 1\nkind = \"chunk\"\n[chunk]\ninput = \"docs\"\nmax_tokens = 64\noverlap = 8\n",
        dir.path(),
    );
    let after = submit(
        &http,
        &node,
        &noop_toml("", "payload = \"after\""),
        Path::new("/"),
    );
    let children = list(&http, &node, &format!("parent={parent}"));
    assert_eq!(children.len(), 3, "{children:#?}");
    for id in [&queued, &after] {
        let s = state(&http, &node, id);
        assert!(s == "queued" || s == "leased", "{id} waits its turn: {s}");
    }

    // Cancel the waiting job and the parent.
    for id in [&queued, &parent] {
        let (status, body) = http
            .post(&node.url(&format!("/api/jobs/{id}/cancel")), &json!({}))
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["outcome"], "Cancelled", "{body}");
    }
    assert_eq!(state(&http, &node, &queued), "cancelled");
    assert_eq!(state(&http, &node, &parent), "cancelled");
    for c in list(&http, &node, &format!("parent={parent}")) {
        assert_eq!(c["state"], "cancelled", "the cancel cascades: {c:#}");
    }

    // Cancel the running job: the worker is freed long before its 60 s sleep ends.
    let out = cli(home.path(), &["cancel", &long]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("cancelled"), "{out:?}");
    reaches(&http, &node, &after, "done");

    // Nothing cancelled ran, then or later.
    let (status, text) = http
        .get_text(&node.url(&format!("/api/jobs/{after}/result")))
        .unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("after"), "{text}");
    for id in [&long, &queued, &parent] {
        let v = job(&http, &node, id);
        assert_eq!(v["state"], "cancelled", "{v:#}");
        assert_eq!(times_in(&v, "done"), 0, "{v:#}");
        let (status, body) = http
            .get(&node.url(&format!("/api/jobs/{id}/result")))
            .unwrap();
        assert_eq!(status, 409, "no result for a cancelled job: {body}");
    }
    let cancelled = list(&http, &node, &format!("parent={parent}"));
    assert!(
        cancelled.iter().all(|c| c["state"] == "cancelled"),
        "{cancelled:#?}"
    );
    // The node is idle again: nothing runs, nothing waits.
    running(&http, &node, 0.0);
    assert_eq!(
        list(&http, &node, "all=true&state=queued"),
        Vec::<Value>::new()
    );
    assert_eq!(list(&http, &node, "all=true&state=done").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Acceptance 3: `myco run` chunks a tree, survives a corrupt file, and names it
// ---------------------------------------------------------------------------------------------

#[test]
fn run_chunks_a_tree_and_reports_the_corrupt_file() {
    let home = fast_home();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let md =
        "# Mycelium\n\nNetworks of hyphae share nutrients between trees. Ça marche très bien.\n\n\
              ## Details\n\nThe wood wide web — 菌糸体 — spans forests.\n"
            .repeat(4);
    let txt = "Plain text line one, with some words to cut.\nLine two: more words follow here.\n"
        .repeat(6);
    let nested_txt = "Deep inside the tree lives a short note about spores.\n".repeat(3);
    let html = "<!doctype html><html><head><title>Ignored</title><style>p{}</style></head>\
                <body><h1>Fungi</h1><p>Visible paragraph one about fungi.</p>\
                <script>var hidden = 1;</script><p>Visible paragraph two.</p></body></html>";
    let texts: Vec<(&str, &str)> = vec![
        ("docs/intro.md", md.as_str()),
        ("docs/notes/plain.txt", txt.as_str()),
        ("docs/notes/deeper/spores.txt", nested_txt.as_str()),
    ];
    for (rel, body) in &texts {
        write(d, rel, body);
    }
    write(d, "docs/web/page.html", html);
    write(
        d,
        "docs/broken.pdf",
        b"%PDF-1.7\n\x00\xff garbage \x13\x37 not a pdf at all\n",
    );
    let spec = write(
        d,
        "job.toml",
        "version = 1\nkind = \"chunk\"\n[chunk]\ninput = \"docs\"\nmax_tokens = 60\noverlap = 10\n",
    );

    let mut cmd = myco(home.path());
    cmd.args(["run", spec.to_str().unwrap(), "--workers", "2"]);
    let out = run(cmd, LIMIT);
    assert_eq!(
        out.code(),
        Some(0),
        "one corrupt file does not fail the job: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("broken.pdf"),
        "stderr names the corrupt file: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("done") && out.stderr.contains("1 failed"),
        "{}",
        out.stderr
    );

    let chunks: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let of = |rel: &str| -> Vec<&Value> {
        chunks
            .iter()
            .filter(|c| c["source"].as_str().unwrap().ends_with(rel))
            .collect()
    };
    for (rel, body) in &texts {
        let mine = of(rel);
        assert!(
            mine.len() > 1,
            "{rel} is cut into several chunks: {mine:#?}"
        );
        for (i, c) in mine.iter().enumerate() {
            assert_eq!(c["index"], i, "{rel}: chunks in order");
            let (start, end) = (
                c["start"].as_u64().unwrap() as usize,
                c["end"].as_u64().unwrap() as usize,
            );
            assert_eq!(
                body.get(start..end),
                c["text"].as_str(),
                "{rel}: text[{start}..{end}] is the chunk"
            );
        }
    }
    let page = of("page.html");
    assert!(!page.is_empty(), "the HTML file has chunks");
    let page_text: String = page.iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert!(page_text.contains("Visible paragraph one"), "{page_text}");
    assert!(
        !page_text.contains("hidden"),
        "scripts are not text: {page_text}"
    );
    assert!(
        of("broken.pdf").is_empty(),
        "the corrupt file has no chunks"
    );
    assert_eq!(
        chunks.len(),
        texts.iter().map(|(rel, _)| of(rel).len()).sum::<usize>() + page.len(),
        "every chunk belongs to a known file"
    );

    // With --json the final view goes to stdout (and the chunks to --out): run the same
    // file again on the same home to read the parent's progress.
    let mut cmd = myco(home.path());
    let result = d.join("result.jsonl");
    cmd.args([
        "--json",
        "run",
        spec.to_str().unwrap(),
        "--out",
        result.to_str().unwrap(),
        "--workers",
        "2",
    ]);
    let out = run(cmd, LIMIT);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let view: Value = serde_json::from_str(out.stdout.trim()).expect("one JSON view");
    assert_eq!(view["state"], "done", "{view:#}");
    assert_eq!(view["progress"]["failed"], 1, "{view:#}");
    assert_eq!(view["progress"]["done"], 4, "{view:#}");
    assert_eq!(view["progress"]["total"], 5, "{view:#}");
    let written = std::fs::read_to_string(&result).unwrap();
    assert_eq!(
        written.lines().count(),
        chunks.len(),
        "--out holds the same chunks"
    );
}

// ---------------------------------------------------------------------------------------------
// Retries, fatal errors and panics
// ---------------------------------------------------------------------------------------------

#[test]
fn retries_fatal_errors_and_panics() {
    let home = fast_home();
    // One worker: whatever runs after the panic runs on its replacement.
    let node = NodeProc::start(home.path(), &["--workers", "1"]);
    let http = Http::owner(&node);
    let root = Path::new("/");

    let retried = submit(
        &http,
        &node,
        &noop_toml(
            "max_attempts = 3",
            "fail_attempts = 2\nfail_mode = \"retryable\"",
        ),
        root,
    );
    let fatal = submit(
        &http,
        &node,
        &noop_toml(
            "max_attempts = 5",
            "fail_attempts = 1\nfail_mode = \"fatal\"",
        ),
        root,
    );
    let panics = submit(
        &http,
        &node,
        &noop_toml(
            "",
            "fail_attempts = 1\nfail_mode = \"panic\"\npayload = \"survived\"",
        ),
        root,
    );

    let v = reaches(&http, &node, &retried, "done");
    assert_eq!(v["attempts"], 2, "two failed attempts, then success: {v:#}");
    assert_eq!(times_in(&v, "failed"), 2, "{v:#}");

    let v = reaches(&http, &node, &fatal, "dead");
    assert_eq!(v["attempts"], 1, "a fatal error is never retried: {v:#}");
    assert_eq!(v["error"]["class"], "fatal", "{v:#}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("planned failure on attempt 1"),
        "{v:#}"
    );
    assert_eq!(times_in(&v, "failed"), 0, "{v:#}");

    let v = reaches(&http, &node, &panics, "done");
    assert_eq!(v["attempts"], 1, "done on the second attempt: {v:#}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("panicked"),
        "{v:#}"
    );
    let (status, text) = http
        .get_text(&node.url(&format!("/api/jobs/{panics}/result")))
        .unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("survived"), "{text}");

    // The node keeps serving after the panic.
    let (status, health) = http.get(&node.url("/health")).unwrap();
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok", "{health}");
    let another = submit(&http, &node, &noop_toml("", "payload = \"next\""), root);
    reaches(&http, &node, &another, "done");

    // An attempt that overruns its timeout is stopped and counted as a failure.
    let slow = submit(
        &http,
        &node,
        &noop_toml("max_attempts = 2\ntimeout = \"300ms\"", "sleep_ms = 60000"),
        root,
    );
    let v = reaches(&http, &node, &slow, "dead");
    assert_eq!(v["attempts"], 2, "{v:#}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{v:#}"
    );
    let another = submit(&http, &node, &noop_toml("", "payload = \"still\""), root);
    reaches(&http, &node, &another, "done");

    let m = metrics(&http, &node);
    let restarts = metric(&m, "myco_worker_restarts_total").expect("restart counter");
    assert!(restarts >= 1.0, "the panicked worker was replaced:\n{m}");
    assert!(
        m.contains("myco_jobs_finished_total{kind=\"noop\",state=\"dead\"} 2"),
        "{m}"
    );
}

// ---------------------------------------------------------------------------------------------
// Clean shutdown: SIGTERM drains, and a job is done exactly once across a restart
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_drains_and_the_job_is_done_exactly_once() {
    let home = fast_home();
    let http = Http::new();
    let mut node = NodeProc::start(home.path(), &["--workers", "1"]);
    let id = submit(
        &http,
        &node,
        &noop_toml("", "sleep_ms = 1500\npayload = \"drained\""),
        Path::new("/"),
    );
    running(&http, &node, 1.0);

    let status = node.terminate();
    assert!(status.success(), "a clean stop exits 0: {status:?}");
    assert!(
        !home.path().join("node.addr").exists(),
        "a stopped node removes its address file"
    );
    drop(node);

    let node = NodeProc::start(home.path(), &["--workers", "1"]);
    let v = reaches(&http, &node, &id, "done");
    assert_eq!(times_in(&v, "done"), 1, "done exactly once: {v:#}");
    assert_eq!(v["attempts"], 0, "no attempt failed: {v:#}");
    let (status, text) = http
        .get_text(&node.url(&format!("/api/jobs/{id}/result")))
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(text.lines().count(), 1, "one result: {text}");
    assert!(text.contains("drained"), "{text}");
}

#[test]
fn sigterm_past_the_grace_hands_the_job_back_and_it_runs_after_restart() {
    let home = fast_home();
    let http = Http::new();
    let mut node = NodeProc::start(home.path(), &["--workers", "1", "--shutdown-grace", "0.2"]);
    let id = submit(
        &http,
        &node,
        &noop_toml("", "sleep_ms = 4000\npayload = \"again\""),
        Path::new("/"),
    );
    running(&http, &node, 1.0);

    let status = node.terminate();
    assert!(status.success(), "a clean stop exits 0: {status:?}");
    drop(node);

    let node = NodeProc::start(home.path(), &["--workers", "1"]);
    let v = reaches(&http, &node, &id, "done");
    assert_eq!(times_in(&v, "done"), 1, "done exactly once: {v:#}");
    assert_eq!(v["attempts"], 0, "a handed-back job has not failed: {v:#}");
    assert_eq!(v["lost"], 0, "it was released, not lost: {v:#}");
    let history = v["history"].as_array().unwrap();
    let released = history.iter().position(|t| t["note"] == "released");
    let done = history.iter().position(|t| t["state"] == "done");
    assert!(
        released.is_some() && released < done,
        "4 s of work cannot finish in a 0.2 s grace: it was handed back, then done: {v:#}"
    );
}

/// Issue 14, acceptance 3: SIGTERM while a client follows a queued job over SSE (a stream
/// that would never end by itself): the node ends the stream, exits 0 within its grace, and
/// the job, followed with `cancel_on_disconnect`, is still queued after the restart.
#[test]
fn sigterm_with_an_open_stream_on_a_queued_job_exits_and_keeps_the_job() {
    use std::io::{BufRead, BufReader, Write};
    let home = fast_home();
    let http = Http::new();
    let mut node = NodeProc::start(home.path(), &["--workers", "1", "--shutdown-grace", "1"]);
    let long = submit(
        &http,
        &node,
        &noop_toml("", "sleep_ms = 6000"),
        Path::new("/"),
    );
    running(&http, &node, 1.0);
    let queued = submit(
        &http,
        &node,
        &noop_toml("", "payload = \"later\""),
        Path::new("/"),
    );
    let mut tcp = std::net::TcpStream::connect(node.addr).unwrap();
    write!(
        tcp,
        "GET /api/jobs/{queued}/stream?cancel_on_disconnect=true HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let mut line = String::new();
    while !line.starts_with("event: progress") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream opened"
        );
    }

    let asked = Instant::now();
    let status = node.terminate();
    let took = asked.elapsed();
    assert!(status.success(), "a clean stop exits 0: {status:?}");
    // A bound on liveness (the grace is 1 s; the edge's deadline 5 s), not a measurement.
    assert!(took < Duration::from_secs(20), "stopped after {took:?}");
    eprintln!("stopped {took:?} after SIGTERM with a stream open");
    // The stream ended with the node (no hang on the client's side either).
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    drop(node);

    let node = NodeProc::start(home.path(), &["--workers", "1"]);
    // The followed job was not cancelled by its follower's disconnect: it runs now.
    let v = reaches(&http, &node, &queued, "done");
    assert_eq!(times_in(&v, "done"), 1, "{v:#}");
    let v = http.get(&node.url(&format!("/api/jobs/{long}"))).unwrap().1;
    assert_ne!(
        v["state"], "cancelled",
        "the running job was handed back: {v:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// CLI UX
// ---------------------------------------------------------------------------------------------

#[test]
fn cli_submit_wait_status_and_detect() {
    let home = fast_home();
    let _node = NodeProc::start(home.path(), &["--workers", "1"]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/noop.toml");

    let out = cli(
        home.path(),
        &["submit", example.to_str().unwrap(), "--wait", "--json"],
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let last = out.stdout.lines().last().expect("a JSON line");
    let v: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{last:?}: {e}"));
    assert_eq!(v["jobs"][0]["state"], "done", "{v:#}");
    let id = v["jobs"][0]["id"].as_str().unwrap();

    let out = cli(home.path(), &["--json", "status", id]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["state"], "done");

    let out = cli(home.path(), &["result", id]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("hello from myco"), "{out:?}");

    let out = cli(home.path(), &["--json", "jobs"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["jobs"][0]["id"], id, "{v:#}");

    // --wait exits non-zero when a job ends other than done.
    let fatal = write(
        home.path(),
        "fatal.toml",
        noop_toml("", "fail_attempts = 1\nfail_mode = \"fatal\""),
    );
    let out = cli(home.path(), &["submit", fatal.to_str().unwrap(), "--wait"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("dead") && out.stderr.contains("planned failure"),
        "{out:?}"
    );

    let out = cli(home.path(), &["status", "BADID"]);
    assert_ne!(out.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains("ULID"), "{out:?}");

    let out = cli(home.path(), &["--json", "detect"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let caps: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(caps["cores"].as_u64().unwrap() >= 1, "{caps:#}");
}

#[test]
fn cli_without_a_node_exits_3_and_says_how_to_start_one() {
    let home = tempfile::tempdir().unwrap();
    // A node that died without cleaning up: its address file points at a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    std::fs::write(home.path().join("node.addr"), addr.to_string()).unwrap();

    let out = cli(home.path(), &["jobs"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("myco node"), "{out:?}");
    assert!(
        out.stderr.contains(&addr.to_string()),
        "names the address: {out:?}"
    );

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/noop.toml");
    let out = cli(home.path(), &["submit", example.to_str().unwrap()]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(
        out.stderr.contains("myco run"),
        "offers the embedded way: {out:?}"
    );
}
