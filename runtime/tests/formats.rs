#![allow(clippy::unwrap_used)]
//! Queue files written by older builds open with this one (the committed fixtures under
//! `tests/fixtures/`, made by `fixture_writer.rs` with the build before each format change),
//! and files or records of a newer format are refused untouched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use myco_jobs::task::NoopTask;
use myco_jobs::{JobKind, Task};
use myco_runtime::format::{self, FormatError};
use myco_runtime::queue::{
    JobState, ListFilter, NewJob, Queue, QueueError, QueueOptions, RetryOutcome, Submitter,
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tempfile::TempDir;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");

fn fixture(version: &str, file: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(version)
        .join(file);
    let to = dir.path().join("queue.redb");
    std::fs::copy(&from, &to).unwrap();
    (dir, to)
}

fn open(path: &Path, node: &str) -> Result<Queue, QueueError> {
    Queue::open(
        path,
        QueueOptions {
            node: node.into(),
            backoff_base_ms: 1,
            backoff_max_ms: 1,
            ..QueueOptions::default()
        },
    )
}

fn noop(payload: &str) -> Task {
    Task::Noop(NoopTask {
        payload: payload.into(),
        ..NoopTask::default()
    })
}

fn keyed(task: Task, key: &str) -> NewJob {
    NewJob {
        task,
        priority: 0,
        max_attempts: 3,
        timeout_ms: 60_000,
        idempotency_key: Some(key.into()),
        children: Vec::new(),
    }
}

fn all(q: &Queue) -> Vec<myco_runtime::queue::JobRecord> {
    q.list(&ListFilter {
        top_level: false,
        limit: 1000,
        ..ListFilter::default()
    })
    .unwrap()
}

fn payload(rec: &myco_runtime::queue::JobRecord) -> Option<&str> {
    match &rec.task {
        Task::Noop(n) => Some(n.payload.as_str()),
        _ => None,
    }
}

#[tokio::test]
async fn a_queue_file_from_before_format_versions_opens_and_runs() {
    opens_and_runs("queue-v0").await;
}

/// Job format 1 (before prompts with tools, log-probabilities and JSON schemas: format 2).
#[tokio::test]
async fn a_queue_file_of_job_format_1_opens_and_runs() {
    opens_and_runs("queue-v1").await;
}

/// Job format 2 (before batches: format 3).
#[tokio::test]
async fn a_queue_file_of_job_format_2_opens_and_runs() {
    opens_and_runs("queue-v2").await;
}

/// A queue file written by an older build (`version`: its fixtures) opens on this one, and
/// every job in it reads and runs as it was.
#[allow(clippy::panic)] // A test's helper.
async fn opens_and_runs(version: &str) {
    let (_dir, path) = fixture(version, "owner.redb");
    let q = open(&path, "owner").unwrap();
    let jobs = all(&q);
    let by_payload = |p: &str| jobs.iter().find(|r| payload(r) == Some(p)).unwrap().clone();
    // Every kind and every state decodes (batches came with format 3: fixtures of
    // formats 0 to 2 have none).
    for kind in JobKind::ALL.into_iter().filter(|k| *k != JobKind::Batch) {
        assert!(jobs.iter().any(|r| r.kind == kind), "a {kind:?} job");
    }
    let states: std::collections::BTreeSet<_> = jobs.iter().map(|r| r.state.name()).collect();
    assert_eq!(states.len(), 6, "every public state: {states:?}");
    assert!(jobs.iter().any(|r| r.state == JobState::Waiting));
    assert!(jobs.iter().all(|r| r.submitter == Submitter::Owner));
    // An LLM request keeps its prompt and settings.
    let infer = jobs
        .iter()
        .find(|r| {
            matches!(&r.task, Task::Infer(t) if matches!(t.prompt, myco_jobs::llm::infer::Prompt::Chat(_)))
        })
        .unwrap();
    // From format 2 on, a request with tools keeps them.
    if version != "queue-v0" && version != "queue-v1" {
        assert!(jobs.iter().any(|r| matches!(
            &r.task,
            Task::Infer(t) if t.prompt.extras().is_some_and(|e| e.tools.is_some())
        )));
    }
    let Task::Infer(t) = &infer.task else {
        panic!("{:?}", infer.task)
    };
    assert_eq!(
        t.prompt,
        myco_jobs::llm::infer::Prompt::Chat(vec![myco_jobs::llm::infer::Message {
            role: "user".into(),
            content: "hello".into(),
        }])
    );
    assert_eq!(t.params.chat_template.as_deref(), Some("chatml"));

    // The last run's lease came back at open; the failed job is due again.
    assert_eq!(
        by_payload("leased before the upgrade").state,
        JobState::Queued
    );
    q.tick().await.unwrap();

    // Results written before are readable (a parent's through its children).
    let done = by_payload("done before the upgrade");
    assert_eq!(done.state, JobState::Done);
    assert_eq!(
        q.result(done.id).unwrap().unwrap(),
        b"{\"payload\":\"done before the upgrade\"}\n"
    );
    let chunks = jobs
        .iter()
        .find(|r| r.kind == JobKind::Chunk && r.state == JobState::Done && r.parent.is_none())
        .unwrap();
    let kids = q.children(chunks.id).unwrap();
    assert_eq!(kids.len(), 2);
    let text = String::from_utf8(q.result(kids[1]).unwrap().unwrap()).unwrap();
    assert!(text.contains("chunk 1"), "{text}");

    // The dead job can be retried.
    let dead = by_payload("dead before the upgrade");
    assert_eq!(dead.state, JobState::Dead);
    assert!(matches!(
        q.retry(dead.id).await.unwrap(),
        RetryOutcome::Requeued { .. }
    ));

    // Queued no-ops (the queued one, the last run's, the failed and the retried) run.
    let leases = q
        .lease(10, &[JobKind::Noop], Duration::from_secs(60))
        .await
        .unwrap();
    let mut ran: Vec<String> = Vec::new();
    for l in &leases {
        let Task::Noop(n) = &l.task else { panic!() };
        ran.push(n.payload.clone());
        q.complete(l.id, n.payload.clone().into_bytes())
            .await
            .unwrap();
    }
    ran.sort();
    assert_eq!(
        ran,
        [
            "dead before the upgrade",
            "failed before the upgrade",
            "leased before the upgrade",
            "queued before the upgrade"
        ]
    );
    // The queued chunk job's child carries its bytes: it leases as it was.
    let chunk = q
        .lease(10, &[JobKind::Chunk], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(chunk.iter().any(
        |l| matches!(&l.task, Task::ChunkInline { bytes, .. } if bytes.starts_with(b"Gamma"))
    ));

    // Idempotency keys moved into the owner's scope: the same spec gets the same job, a
    // client's key of the same name another job, a different spec a conflict.
    let queued = by_payload("queued before the upgrade");
    let again = q
        .submit(vec![keyed(
            noop("queued before the upgrade"),
            "fixture-queued",
        )])
        .await
        .unwrap();
    assert_eq!((again[0].id, again[0].created), (queued.id, false));
    let theirs = q
        .submit_as(
            vec![keyed(noop("something else"), "fixture-queued")],
            Submitter::Client,
        )
        .await
        .unwrap();
    assert!(theirs[0].created);
    let e = q
        .submit(vec![keyed(noop("something else"), "fixture-queued")])
        .await
        .unwrap_err();
    assert!(matches!(e, QueueError::Conflict(_)), "{e}");
    assert!(e.to_string().contains(&queued.id.to_string()), "{e}");

    // What changed is written in the current format; the rest is read as it was.
    let id = queued.id;
    q.shutdown().await;
    drop(q);
    let db = redb::Database::open(&path).unwrap();
    let tx = db.begin_read().unwrap();
    assert_eq!(
        tx.open_table(META)
            .unwrap()
            .get("format")
            .unwrap()
            .unwrap()
            .value(),
        myco_runtime::queue::QUEUE_FORMAT
    );
    let bytes = tx
        .open_table(JOBS)
        .unwrap()
        .get(u128::from(id))
        .unwrap()
        .unwrap()
        .value()
        .to_vec();
    assert_eq!(
        format::split(&bytes).0,
        myco_runtime::queue::JOB_FORMAT,
        "a record written again carries the current format"
    );
}

#[tokio::test]
async fn an_outbox_from_before_format_versions_is_read() {
    let (_dir, path) = fixture("queue-v0", "thief.redb");
    let q = open(&path, "thief").unwrap();
    let out = q.outbox(10).unwrap();
    assert_eq!(out.len(), 1);
    let (_, entry) = &out[0];
    assert_eq!(entry.owner, "owner");
    assert_eq!(
        entry.result.as_deref().unwrap(),
        b"{\"text\":\"delivered from the outbox\"}\n"
    );
    q.shutdown().await;
}

fn digest(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn a_queue_file_of_a_newer_format_is_refused_untouched() {
    let (_dir, path) = fixture("queue-v0", "owner.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META).unwrap().insert("format", 99).unwrap();
        tx.commit().unwrap();
    }
    let before = digest(&path);
    let e = open(&path, "owner").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("newer myco") && msg.contains("format 99") && msg.contains("left as it was"),
        "{msg}"
    );
    assert!(before == digest(&path), "the file is unchanged");
}

#[tokio::test]
async fn a_record_of_a_newer_format_is_refused_not_guessed() {
    let (_dir, path) = fixture("queue-v0", "owner.redb");
    let q = open(&path, "owner").unwrap();
    let victim = all(&q)
        .into_iter()
        .find(|r| payload(r) == Some("cancelled before the upgrade"))
        .unwrap()
        .id;
    q.shutdown().await;
    drop(q);
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut jobs = tx.open_table(JOBS).unwrap();
            let old = jobs
                .get(u128::from(victim))
                .unwrap()
                .unwrap()
                .value()
                .to_vec();
            let (_, body) = format::split(&old);
            jobs.insert(u128::from(victim), format::wrap(7, body).as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let q = open(&path, "owner").unwrap();
    let e = q.get(victim).unwrap_err();
    assert!(
        matches!(e, QueueError::Format(FormatError::Newer { found: 7, .. })),
        "{e}"
    );
    assert!(e.to_string().contains("upgrade"), "{e}");
    q.shutdown().await;
}

/// Seeds for the fuzz targets of the versioned decoders: stored records of both formats
/// (from the fixture, and written again now) and heartbeat and steal frames as a peer sends
/// them (the first byte picks the `PeerMsg` variant, as in `fuzz/fuzz_targets/wire.rs`).
#[tokio::test]
#[ignore = "writes fuzz seeds: run by hand with MYCO_WRITE_SEEDS=fuzz/corpus after a format change"]
async fn write_fuzz_seeds() {
    use myco_runtime::cluster::wire::{HeartbeatFrame, StealRequest, Wire};
    use ractor::BytesConvertable;
    let out = PathBuf::from(std::env::var("MYCO_WRITE_SEEDS").expect("MYCO_WRITE_SEEDS"));
    let records = out.join("records");
    let wire = out.join("wire");
    std::fs::create_dir_all(&records).unwrap();
    std::fs::create_dir_all(&wire).unwrap();
    // Each older format as its fixture holds the records; then as this build writes them.
    let current = myco_runtime::queue::JOB_FORMAT;
    for version in ["queue-v0", "queue-v1", "queue-v2"] {
        let (_dir, path) = fixture(version, "owner.redb");
        let mut raw: Vec<Vec<u8>> = Vec::new();
        {
            let db = redb::ReadOnlyDatabase::open(&path).unwrap();
            let tx = db.begin_read().unwrap();
            for entry in tx.open_table(JOBS).unwrap().iter().unwrap().take(6) {
                raw.push(entry.unwrap().1.value().to_vec());
            }
        }
        let old = &version["queue-".len()..];
        for (i, bytes) in raw.iter().enumerate() {
            let mut seed = vec![0u8];
            seed.extend(bytes);
            std::fs::write(records.join(format!("job-{old}-{i}")), &seed).unwrap();
            if version == "queue-v0" {
                let rec = myco_runtime::queue::decode(bytes).unwrap();
                let mut seed = vec![0u8];
                seed.extend(format::encode(current, &rec).unwrap());
                std::fs::write(records.join(format!("job-v{current}-{i}")), &seed).unwrap();
            }
        }
    }
    let (_dir, path) = fixture("queue-v0", "owner.redb");
    let mut seed = vec![2u8];
    seed.extend(format::wrap(1, b"{\"a\":1}\n"));
    std::fs::write(records.join("result-v1"), &seed).unwrap();
    let q = open(&path, "owner").unwrap();
    let hb_info = {
        let (_d, thief) = fixture("queue-v0", "thief.redb");
        let t = open(&thief, "thief").unwrap();
        let entry = t.outbox(1).unwrap().remove(0).1;
        let mut seed = vec![1u8];
        seed.extend(format::encode(myco_runtime::queue::OUTBOX_FORMAT, &entry).unwrap());
        std::fs::write(records.join("outbox-v1"), &seed).unwrap();
        t.shutdown().await;
        entry.owner
    };
    q.shutdown().await;
    let steal = Wire::new(StealRequest {
        holder: format!("{hb_info}#1"),
        fit: myco_jobs::Fit::local(&[JobKind::Noop]),
        max: 4,
        lease_ms: 30_000,
    })
    .into_bytes();
    let mut seed = vec![1u8];
    seed.extend(steal);
    let protocol = myco_runtime::cluster::wire::PROTOCOL;
    std::fs::write(wire.join(format!("steal-v{protocol}")), &seed).unwrap();
    let hb = myco_runtime::cluster::wire::Heartbeat {
        seq: 1,
        sent_ms: 2,
        info: myco_runtime::cluster::wire::NodeInfo {
            name: "a".into(),
            protocol: myco_runtime::cluster::wire::PROTOCOL,
            version: "0".into(),
            cluster_addr: "127.0.0.1:1".into(),
            api_addr: None,
            roles: Vec::new(),
            caps: myco_runtime::detect::detect(),
            models: vec![myco_jobs::model::ModelFile {
                name: "tiny".into(),
                path: "/m/tiny.gguf".into(),
                format: myco_jobs::model::ModelFormat::Gguf,
                size_bytes: 1,
                architecture: Some("llama".into()),
                layers: Some(3),
                embedding: Some(128),
                sha256: Some(myco_jobs::model::identity::sha256_hex(b"x")),
            }],
            kinds: vec![JobKind::Noop],
            load: Default::default(),
            stage_memory: 0,
            stage_gpu_memory: 0,
            peers: Vec::new(),
            stages: Vec::new(),
            transfer_port: None,
            cached: Vec::new(),
            transfers: Vec::new(),
            received_bytes: 0,
            wanted: Vec::new(),
        },
    };
    let mut seed = vec![0u8];
    seed.extend(HeartbeatFrame::new(hb).into_bytes());
    std::fs::write(wire.join(format!("heartbeat-v{protocol}")), &seed).unwrap();
}
