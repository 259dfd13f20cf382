#![allow(clippy::unwrap_used)]
//! Writes the queue files that the format tests open: run it with the build *before* a
//! change of the stored format, and commit what it writes under `tests/fixtures/` beside the
//! older ones (never over them):
//!
//! ```sh
//! MYCO_WRITE_FIXTURES=runtime/tests/fixtures/queue-vN \
//!   cargo test -p myco-runtime --test fixture_writer -- --ignored
//! ```
//!
//! `owner.redb` holds jobs of every kind in every state (queued, leased to this node's last
//! run and to a thief, waiting on children, done with results, failed and due again, dead,
//! cancelled), with idempotency keys; `thief.redb` holds an outbox entry for one of the
//! owner's jobs. The jobs that should run after an upgrade need no file of this machine
//! (no-ops, chunks of inline bytes); the others name paths that exist nowhere.

use std::path::{Path, PathBuf};
use std::time::Duration;

use myco_jobs::archive::{ArchiveTask, Doc, DocsOptions, DocsTask, Part};
use myco_jobs::chunk::ChunkParams;
use myco_jobs::llm::infer::{Extras, InferParams, InferTask, Message, Prompt, ToolChoice, Tools};
use myco_jobs::task::NoopTask;
use myco_jobs::{Fit, JobError, JobKind, ModelRef, Task};
use myco_runtime::queue::{NewJob, OutboxEntry, Queue, QueueOptions};

fn noop(payload: &str) -> Task {
    Task::Noop(NoopTask {
        payload: payload.into(),
        ..NoopTask::default()
    })
}

fn job(task: Task) -> NewJob {
    NewJob {
        task,
        priority: 0,
        max_attempts: 3,
        timeout_ms: 60_000,
        idempotency_key: None,
        children: Vec::new(),
    }
}

fn model(name: &str) -> ModelRef {
    ModelRef {
        name: name.into(),
        path: PathBuf::from("/nonexistent/myco-fixture/models").join(name),
        bytes: 1234,
    }
}

fn params() -> ChunkParams {
    ChunkParams {
        max_tokens: 64,
        overlap: 8,
    }
}

fn infer() -> InferTask {
    InferTask {
        model: model("fixture-model.gguf"),
        prompt: Prompt::Chat(vec![Message {
            role: "user".into(),
            content: "hello".into(),
        }]),
        params: InferParams {
            max_tokens: 16,
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            seed: 7,
            stop: vec!["\n\n".into()],
            n_ctx: 512,
            threads: 0,
            gpu_layers: None,
            chat_template: Some("chatml".into()),
            grammar: None,
        },
        gpu: false,
    }
}

fn docs(names: &[&str]) -> DocsTask {
    DocsTask {
        docs: names
            .iter()
            .map(|n| Doc {
                path: PathBuf::from("/nonexistent/myco-fixture/archive").join(n),
                rel: (*n).into(),
                hash: "00".repeat(32),
                bytes: None,
            })
            .collect(),
        model: model("fixture-embedder"),
        params: params(),
        batch_tokens: 512,
    }
}

fn inline(name: &str, text: &str) -> Task {
    Task::ChunkInline {
        path: PathBuf::from("/nonexistent/myco-fixture/texts").join(name),
        bytes: text.as_bytes().to_vec(),
        params: params(),
    }
}

/// Lease the one ready job of `kind` at the head of the queue to `holder`.
async fn lease_one(q: &Queue, holder: &str, kind: JobKind, lease: Duration) -> (u128, u64) {
    let got = q
        .lease_to(holder.into(), 1, &Fit::local(&[kind]), lease)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "one {kind:?} job to lease");
    (u128::from(got[0].id), got[0].token)
}

async fn write_owner(path: &Path) -> (u128, u64) {
    let q = Queue::open(
        path,
        QueueOptions {
            node: "owner".into(),
            ..QueueOptions::default()
        },
    )
    .unwrap();
    let year = Duration::from_secs(365 * 24 * 3600);
    let top = |task: Task| NewJob {
        priority: 1000,
        ..job(task)
    };

    // Done, with a result and an idempotency key.
    q.submit(vec![NewJob {
        idempotency_key: Some("fixture-done".into()),
        ..top(noop("done before the upgrade"))
    }])
    .await
    .unwrap();
    let (id, _) = lease_one(&q, "owner#1", JobKind::Noop, year).await;
    q.complete(
        id.into(),
        b"{\"payload\":\"done before the upgrade\"}\n".to_vec(),
    )
    .await
    .unwrap();

    // Dead (a fatal error).
    q.submit(vec![top(noop("dead before the upgrade"))])
        .await
        .unwrap();
    let (id, token) = lease_one(&q, "owner#1", JobKind::Noop, year).await;
    q.fail(
        id.into(),
        token,
        JobError::fatal("failed for good before the upgrade"),
    )
    .await
    .unwrap();

    // Failed once, due again (the backoff is short).
    q.submit(vec![top(noop("failed before the upgrade"))])
        .await
        .unwrap();
    let (id, token) = lease_one(&q, "owner#1", JobKind::Noop, year).await;
    q.fail(
        id.into(),
        token,
        JobError::retryable("failed once before the upgrade"),
    )
    .await
    .unwrap();

    // Leased by this node's last run: queued again when it starts.
    q.submit(vec![top(noop("leased before the upgrade"))])
        .await
        .unwrap();
    lease_one(&q, "owner#1", JobKind::Noop, year).await;

    // Leased to a thief for a year, which has its outcome in its outbox.
    q.submit(vec![top(Task::Infer(infer()))]).await.unwrap();
    let stolen = lease_one(&q, "thief#1", JobKind::Infer, year).await;

    // A chunk job over a directory, done: a parent with two children and their results.
    let done_chunks = q
        .submit(vec![NewJob {
            children: vec![
                inline("a.txt", "Alpha document.\n\nIt has two paragraphs."),
                inline("b.txt", "Beta document, one paragraph."),
            ],
            ..top(Task::Chunk {
                input: "/nonexistent/myco-fixture/texts".into(),
                params: params(),
            })
        }])
        .await
        .unwrap();
    for n in 0..2 {
        let (id, _) = lease_one(&q, "owner#1", JobKind::Chunk, year).await;
        let line = format!(
            "{{\"source\":\"/nonexistent/myco-fixture/texts/{n}.txt\",\"index\":0,\"start\":0,\"end\":5,\"text\":\"chunk {n}\"}}\n"
        );
        q.complete(id.into(), line.into_bytes()).await.unwrap();
    }
    let _ = done_chunks;

    // Cancelled.
    let cancelled = q
        .submit(vec![job(noop("cancelled before the upgrade"))])
        .await
        .unwrap();
    q.cancel(cancelled[0].id).await.unwrap();

    // An archive waiting on its children: one done, the others queued.
    q.submit(vec![NewJob {
        children: vec![
            Task::EmbedDocs(docs(&["one.md"])),
            Task::EmbedDocsWith(
                docs(&["big.md"]),
                DocsOptions {
                    boilerplate: vec![1, 2, 3],
                    part: Some(Part { index: 0, of: 2 }),
                },
            ),
            Task::EmbedDocsWith(
                docs(&["big.md"]),
                DocsOptions {
                    boilerplate: vec![1, 2, 3],
                    part: Some(Part { index: 1, of: 2 }),
                },
            ),
        ],
        ..job(Task::Archive(ArchiveTask {
            input: "/nonexistent/myco-fixture/archive".into(),
            collection: "fixture".into(),
            model: model("fixture-embedder"),
            params: params(),
            batch_tokens: 512,
        }))
    }])
    .await
    .unwrap();
    let (id, _) = lease_one(&q, "owner#1", JobKind::Embed, year).await;
    q.complete(id.into(), b"{\"rel\":\"one.md\"}\n".to_vec())
        .await
        .unwrap();

    // Queued, of every other kind; the no-op and the chunk job run anywhere.
    q.submit(vec![
        NewJob {
            idempotency_key: Some("fixture-queued".into()),
            ..job(noop("queued before the upgrade"))
        },
        NewJob {
            children: vec![inline(
                "c.txt",
                "Gamma document, queued before the upgrade.",
            )],
            ..job(Task::Chunk {
                input: "/nonexistent/myco-fixture/texts".into(),
                params: params(),
            })
        },
        job(Task::ChunkFile {
            path: "/nonexistent/myco-fixture/texts/d.txt".into(),
            params: params(),
        }),
        job(Task::Embed {
            model: model("fixture-embedder"),
            texts: vec!["one".into(), "two".into()],
            batch_tokens: 512,
            links: vec![myco_jobs::task::ChunkLink {
                source: "a.txt".into(),
                index: 0,
                start: 0,
                end: 3,
            }],
        }),
        job(Task::Infer(infer())),
        job(Task::Pipeline(infer())),
        // Job format 2: chat turns with a tool call and its result, tools,
        // log-probabilities and a JSON schema.
        job(Task::Infer(InferTask {
            prompt: Prompt::Turns(
                r#"[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}]},{"role":"tool","content":"cold","tool_call_id":"call_1"}]"#.into(),
            )
            .with(Extras {
                tools: Some(Tools {
                    json: r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]"#.into(),
                    choice: ToolChoice::Auto,
                    parallel: true,
                }),
                logprobs: Some(2),
                schema: None,
            }),
            ..infer()
        })),
        // Job format 3: a batch (its parent keeps the lines; its children the requests).
        NewJob {
            children: vec![Task::Infer(infer())],
            ..job(Task::Batch(myco_jobs::batch::BatchTask {
                id: "batch_fixture".into(),
                endpoint: myco_jobs::batch::Endpoint::Chat,
                lines: vec![myco_jobs::batch::BatchLine {
                    custom_id: "request-1".into(),
                    model: "fixture-llm".into(),
                    shape: myco_jobs::batch::LineShape {
                        logprobs: true,
                        ..Default::default()
                    },
                    request: None,
                }],
                created_at: 1_700_000_000,
                expires_at: 1_700_086_400,
            }))
        },
    ])
    .await
    .unwrap();
    q.shutdown().await;
    stolen
}

async fn write_thief(path: &Path, stolen: u128, token: u64) {
    let q = Queue::open(
        path,
        QueueOptions {
            node: "thief".into(),
            ..QueueOptions::default()
        },
    )
    .unwrap();
    q.outbox_put(
        stolen.into(),
        OutboxEntry {
            owner: "owner".into(),
            token,
            result: Ok(b"{\"text\":\"delivered from the outbox\"}\n".to_vec()),
        },
    )
    .await
    .unwrap();
    q.shutdown().await;
}

#[tokio::test]
#[ignore = "writes fixtures for the format tests: run by hand with MYCO_WRITE_FIXTURES=DIR, with the build before a format change"]
async fn write_fixtures() {
    let dir = PathBuf::from(std::env::var("MYCO_WRITE_FIXTURES").expect("MYCO_WRITE_FIXTURES"));
    std::fs::create_dir_all(&dir).unwrap();
    let owner = dir.join("owner.redb");
    let thief = dir.join("thief.redb");
    for f in [&owner, &thief] {
        assert!(
            !f.exists(),
            "{} exists: fixtures are never overwritten",
            f.display()
        );
    }
    let (stolen, token) = write_owner(&owner).await;
    write_thief(&thief, stolen, token).await;
    // Compact so the committed files are small.
    for f in [&owner, &thief] {
        let mut db = redb::Database::open(f).unwrap();
        db.compact().unwrap();
    }
}
