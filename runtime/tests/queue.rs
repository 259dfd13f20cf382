#![allow(clippy::unwrap_used)]
//! Focused tests of the durable queue's promises (acceptance criterion 5, at queue level):
//! idempotent submission, cancellation (queued, leased, parent cascade), parents and their
//! children, retry with backoff, fatal errors, lease expiry, restart recovery, priorities and
//! group commit. Each test uses its own redb file in a tempdir and a [`ManualClock`].
//! The random, model-checked sequences live in `queue_model.rs`; nothing here sleeps.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use myco_jobs::task::NoopTask;
use myco_jobs::{ErrorClass, JobError, JobKind, Task};
use myco_runtime::queue::{
    CancelOutcome, ChildCounts, CompleteOutcome, FailOutcome, JobId, JobRecord, JobState,
    ListFilter, ManualClock, NewJob, Progress, Queue, QueueError, QueueOptions, RetryOutcome,
    StateName, Submitter, TickOutcome,
};
use tempfile::TempDir;

const NOOP: [JobKind; 1] = [JobKind::Noop];
const LEASE: Duration = Duration::from_secs(10);

fn noop(payload: &str) -> Task {
    Task::Noop(NoopTask {
        payload: payload.into(),
        ..NoopTask::default()
    })
}

fn job(payload: &str) -> NewJob {
    NewJob {
        task: noop(payload),
        priority: 0,
        max_attempts: 3,
        timeout_ms: 60_000,
        idempotency_key: None,
        children: Vec::new(),
    }
}

fn keyed(payload: &str, key: &str) -> NewJob {
    NewJob {
        idempotency_key: Some(key.into()),
        ..job(payload)
    }
}

fn parent(payload: &str, children: usize) -> NewJob {
    NewJob {
        children: (0..children)
            .map(|i| noop(&format!("{payload}/{i}")))
            .collect(),
        ..job(payload)
    }
}

fn prio(payload: &str, priority: i32) -> NewJob {
    NewJob {
        priority,
        ..job(payload)
    }
}

fn options() -> QueueOptions {
    QueueOptions {
        node: "n1".into(),
        backoff_base_ms: 1_000,
        backoff_max_ms: 60_000,
        max_lost: 3,
        ..QueueOptions::default()
    }
}

/// A queue on a fresh file, with a clock that moves only when told.
struct Fixture {
    _dir: TempDir,
    path: PathBuf,
    clock: Arc<ManualClock>,
    opts: QueueOptions,
    q: Queue,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(options())
    }

    fn with(opts: QueueOptions) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.redb");
        let clock = Arc::new(ManualClock::new(1_000_000));
        let q = Queue::open_with_clock(&path, opts.clone(), clock.clone()).unwrap();
        Fixture {
            _dir: dir,
            path,
            clock,
            opts,
            q,
        }
    }

    /// Stop the queue and open the same file again, as a restarted node would.
    /// Every handle on the old queue must be gone first: it holds the file open.
    async fn restart(self) -> Fixture {
        let Fixture {
            _dir,
            path,
            clock,
            opts,
            q,
        } = self;
        q.shutdown().await;
        drop(q);
        let q = open(&path, opts.clone(), clock.clone());
        Fixture {
            _dir,
            path,
            clock,
            opts,
            q,
        }
    }

    async fn submit_one(&self, job: NewJob) -> JobId {
        let s = self.q.submit(vec![job]).await.unwrap();
        assert!(s[0].created);
        s[0].id
    }

    fn get(&self, id: JobId) -> JobRecord {
        self.q.get(id).unwrap().unwrap()
    }

    fn state(&self, id: JobId) -> StateName {
        self.get(id).state.name()
    }

    fn all(&self) -> Vec<JobRecord> {
        self.q
            .list(&ListFilter {
                top_level: false,
                limit: usize::MAX,
                ..ListFilter::default()
            })
            .unwrap()
    }

    /// `counts()` as (state, n) pairs, zeros left out.
    fn counts(&self) -> Vec<(StateName, u64)> {
        let c = self.q.counts().unwrap();
        assert_eq!(self.q.stats().by_state, c, "stats and counts table agree");
        StateName::ALL
            .into_iter()
            .filter(|s| c[s.index()] > 0)
            .map(|s| (s, c[s.index()]))
            .collect()
    }
}

fn open(path: &Path, opts: QueueOptions, clock: Arc<ManualClock>) -> Queue {
    Queue::open_with_clock(path, opts, clock).unwrap()
}

fn progress(rec: &JobRecord) -> (u32, u32, u32) {
    let Progress {
        done,
        failed,
        total,
        ..
    } = rec.view().progress;
    (done, failed, total)
}

// ---------------------------------------------------------------- idempotency

#[tokio::test]
async fn idempotency_key_returns_the_first_job() {
    let f = Fixture::new();
    let a = f.q.submit(vec![keyed("first", "k")]).await.unwrap();
    let b = f.q.submit(vec![keyed("first", "k")]).await.unwrap();
    assert!(a[0].created);
    assert_eq!(b[0].id, a[0].id);
    assert!(!b[0].created);
    // Another spec under the same key is a conflict naming the job, not that job.
    let e = f.q.submit(vec![keyed("second", "k")]).await.unwrap_err();
    assert!(matches!(e, QueueError::Conflict(_)), "{e}");
    assert!(e.to_string().contains(&a[0].id.to_string()), "{e}");
    let all = f.all();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].task, noop("first"), "the first submission wins");
    assert_eq!(f.counts(), [(StateName::Queued, 1)]);

    // Keys are scoped to who submits: a client's key never returns the owner's job.
    let theirs =
        f.q.submit_as(vec![keyed("second", "k")], Submitter::Client)
            .await
            .unwrap();
    assert!(theirs[0].created);
    // And to the kind: a parent's key is not a noop's.
    let p =
        f.q.submit(vec![NewJob {
            idempotency_key: Some("k".into()),
            children: vec![noop("c")],
            task: Task::Chunk {
                input: "/x".into(),
                params: myco_jobs::chunk::ChunkParams {
                    max_tokens: 10,
                    overlap: 0,
                },
            },
            ..job("unused")
        }])
        .await
        .unwrap();
    assert!(p[0].created);
    f.q.cancel(theirs[0].id).await.unwrap();
    f.q.cancel(p[0].id).await.unwrap();

    // Still the same job once it is finished, and after a restart.
    f.q.complete(a[0].id, b"r".to_vec()).await.unwrap();
    let f = f.restart().await;
    let c = f.q.submit(vec![keyed("first", "k")]).await.unwrap();
    assert_eq!((c[0].id, c[0].created), (a[0].id, false));
    assert_eq!(f.all().len(), 4, "three jobs and the chunk job's child");
}

#[tokio::test]
async fn idempotency_key_twice_in_one_batch() {
    let f = Fixture::new();
    let got =
        f.q.submit(vec![
            keyed("a", "same"),
            job("plain"),
            keyed("a", "same"),
            NewJob {
                idempotency_key: Some("parent".into()),
                ..parent("p", 2)
            },
            NewJob {
                idempotency_key: Some("parent".into()),
                ..parent("p", 3)
            },
        ])
        .await
        .unwrap();
    assert_eq!(got.len(), 5);
    assert!(got[0].created && got[1].created && got[3].created);
    assert_eq!((got[2].id, got[2].created), (got[0].id, false));
    assert_eq!((got[4].id, got[4].created), (got[3].id, false));
    // "a", "plain", the parent "p" and its two children: nothing of "b" or "q".
    assert_eq!(f.all().len(), 5);
    assert_eq!(f.q.children(got[3].id).unwrap().len(), 2);
    assert_eq!(f.get(got[0].id).task, noop("a"));
    // Two specs under one key in one batch: refused whole, nothing stored.
    let e =
        f.q.submit(vec![job("x"), keyed("b", "other"), keyed("c", "other")])
            .await
            .unwrap_err();
    assert!(matches!(e, QueueError::Conflict(_)), "{e}");
    assert_eq!(f.all().len(), 5);
}

// ---------------------------------------------------------------- cancel

#[tokio::test]
async fn cancel_queued_job_that_was_never_leased() {
    let f = Fixture::new();
    let id = f.submit_one(job("x")).await;
    assert_eq!(f.q.cancel(id).await.unwrap(), CancelOutcome::Cancelled);
    assert!(f.q.lease(10, &NOOP, LEASE).await.unwrap().is_empty());
    let rec = f.get(id);
    assert_eq!(rec.state, JobState::Cancelled);
    assert_eq!((rec.leases, rec.attempts), (0, 0));
    assert!(rec.finished_ms.is_some());
    assert_eq!(
        f.q.cancel(id).await.unwrap(),
        CancelOutcome::AlreadyFinished(StateName::Cancelled)
    );
    assert_eq!(f.counts(), [(StateName::Cancelled, 1)]);
}

#[tokio::test]
async fn cancel_leased_job_fences_its_worker() {
    let f = Fixture::new();
    let id = f.submit_one(job("x")).await;
    let lease = f.q.lease(1, &NOOP, LEASE).await.unwrap().remove(0);
    assert_eq!(lease.id, id);
    assert_eq!(f.q.cancel(id).await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(
        f.q.complete(id, b"late".to_vec()).await.unwrap(),
        CompleteOutcome::Rejected(StateName::Cancelled)
    );
    assert_eq!(
        f.q.fail(id, lease.token, JobError::retryable("x"))
            .await
            .unwrap(),
        FailOutcome::Stale
    );
    assert_eq!(f.q.release(vec![(id, lease.token)]).await.unwrap(), 0);
    assert_eq!(
        f.q.renew(vec![(id, lease.token)], LEASE).await.unwrap(),
        vec![id]
    );
    assert_eq!(f.q.result(id).unwrap(), None);
    assert_eq!(f.state(id), StateName::Cancelled);
    // A cancelled lease is no lease: nothing expires later.
    f.clock.advance(60_000);
    assert_eq!(f.q.tick().await.unwrap(), TickOutcome::default());
    assert_eq!(f.counts(), [(StateName::Cancelled, 1)]);
}

#[tokio::test]
async fn cancel_parent_cascades_to_unfinished_children() {
    let f = Fixture::new();
    let p = f.submit_one(parent("p", 4)).await;
    let kids = f.q.children(p).unwrap();
    assert_eq!(kids.len(), 4);
    // Child 0 done, child 1 leased, child 2 waiting for a retry, child 3 queued.
    let leases = f.q.lease(3, &NOOP, LEASE).await.unwrap();
    assert_eq!(
        leases.iter().map(|l| l.id).collect::<Vec<_>>(),
        kids[..3].to_vec()
    );
    f.q.complete(kids[0], b"zero".to_vec()).await.unwrap();
    let retry =
        f.q.fail(kids[2], leases[2].token, JobError::retryable("flaky"))
            .await
            .unwrap();
    assert!(matches!(retry, FailOutcome::Retrying { .. }));

    assert_eq!(f.q.cancel(p).await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(f.state(p), StateName::Cancelled);
    assert_eq!(
        f.state(kids[0]),
        StateName::Done,
        "finished children stay done"
    );
    assert_eq!(f.q.result(kids[0]).unwrap().as_deref(), Some(&b"zero"[..]));
    for &k in &kids[1..] {
        assert_eq!(f.state(k), StateName::Cancelled);
    }
    assert_eq!(
        f.get(p).children,
        Some(ChildCounts {
            total: 4,
            done: 1,
            dead: 0,
            cancelled: 3,
            items_total: 4,
            items_done: 4,
            outputs: 0,
        })
    );
    assert_eq!(progress(&f.get(p)), (1, 3, 4));
    // The worker of child 1 finds out; nothing comes back to life.
    assert_eq!(
        f.q.complete(kids[1], b"late".to_vec()).await.unwrap(),
        CompleteOutcome::Rejected(StateName::Cancelled)
    );
    f.clock.advance(600_000);
    assert_eq!(f.q.tick().await.unwrap(), TickOutcome::default());
    assert!(f.q.lease(10, &NOOP, LEASE).await.unwrap().is_empty());
    assert_eq!(
        f.q.cancel(p).await.unwrap(),
        CancelOutcome::AlreadyFinished(StateName::Cancelled)
    );
    assert_eq!(
        f.counts(),
        [(StateName::Done, 1), (StateName::Cancelled, 4)]
    );
}

// ---------------------------------------------------------------- parents

#[tokio::test]
async fn parent_is_done_when_all_children_finish() {
    let f = Fixture::new();
    let p = f.submit_one(parent("p", 3)).await;
    let kids = f.q.children(p).unwrap();
    assert_eq!(f.get(p).state, JobState::Waiting);
    assert_eq!(
        f.state(p),
        StateName::Leased,
        "a waiting parent shows as leased"
    );
    assert_eq!(progress(&f.get(p)), (0, 0, 3));
    // A parent is never leased itself and cannot be completed directly.
    let leases = f.q.lease(10, &NOOP, LEASE).await.unwrap();
    assert_eq!(leases.iter().map(|l| l.id).collect::<Vec<_>>(), kids);
    assert!(f.q.complete(p, b"no".to_vec()).await.is_err());

    for (i, &k) in kids.iter().enumerate() {
        assert_eq!(
            f.q.complete(k, format!("r{i}").into_bytes()).await.unwrap(),
            CompleteOutcome::Recorded
        );
        let rec = f.get(p);
        assert_eq!(progress(&rec), (i as u32 + 1, 0, 3));
        let want = if i + 1 < kids.len() {
            StateName::Leased
        } else {
            StateName::Done
        };
        assert_eq!(rec.state.name(), want, "after {} children", i + 1);
    }
    assert_eq!(f.q.result(kids[2]).unwrap(), Some(b"r2".to_vec()));
    assert_eq!(f.counts(), [(StateName::Done, 4)]);
    let view = f.get(p).view();
    assert_eq!(view.state, StateName::Done);
    assert!(view.finished_ms.is_some());
}

#[tokio::test]
async fn parent_is_done_when_some_children_die() {
    let f = Fixture::new();
    let p = f.submit_one(parent("p", 3)).await;
    let leases = f.q.lease(10, &NOOP, LEASE).await.unwrap();
    f.q.complete(leases[0].id, b"a".to_vec()).await.unwrap();
    let out =
        f.q.fail(leases[1].id, leases[1].token, JobError::fatal("bad input"))
            .await
            .unwrap();
    assert_eq!(out, FailOutcome::Dead);
    assert_eq!(f.state(p), StateName::Leased);
    f.q.complete(leases[2].id, b"c".to_vec()).await.unwrap();
    let rec = f.get(p);
    assert_eq!(rec.state, JobState::Done);
    assert_eq!(progress(&rec), (2, 1, 3));
    let note = rec.history.last().unwrap().note.clone().unwrap_or_default();
    assert!(note.contains("1 of 3"), "note: {note}");
}

#[tokio::test]
async fn parent_is_dead_when_all_children_die() {
    let f = Fixture::new();
    let p = f.submit_one(parent("p", 2)).await;
    let leases = f.q.lease(10, &NOOP, LEASE).await.unwrap();
    for l in &leases {
        let out =
            f.q.fail(l.id, l.token, JobError::fatal("bad"))
                .await
                .unwrap();
        assert_eq!(out, FailOutcome::Dead);
    }
    let rec = f.get(p);
    assert_eq!(rec.state, JobState::Dead);
    assert_eq!(progress(&rec), (0, 2, 2));
    assert_eq!(rec.last_error.unwrap().class, ErrorClass::Fatal);
    assert_eq!(f.counts(), [(StateName::Dead, 3)]);
}

// ---------------------------------------------------------------- failures

#[tokio::test]
async fn retry_with_backoff_then_dead_after_max_attempts() {
    let f = Fixture::new();
    let id = f.submit_one(job("flaky")).await; // max_attempts: 3
    for attempt in 1..=3u32 {
        let lease = f.q.lease(10, &NOOP, LEASE).await.unwrap();
        assert_eq!(lease.len(), 1, "attempt {attempt} is leased");
        assert_eq!((lease[0].id, lease[0].attempt), (id, attempt));
        let now = f.q.now_ms();
        let out =
            f.q.fail(
                id,
                lease[0].token,
                JobError::retryable(format!("try {attempt}")),
            )
            .await
            .unwrap();
        if attempt == 3 {
            assert_eq!(out, FailOutcome::Dead);
            break;
        }
        let FailOutcome::Retrying { retry_at_ms } = out else {
            panic!("attempt {attempt}: {out:?}");
        };
        let (lo, hi) = f.opts.backoff_bounds(attempt);
        assert!(
            (now + lo..=now + hi).contains(&retry_at_ms),
            "attempt {attempt}: retry at +{} not in [{lo}, {hi}]",
            retry_at_ms - now
        );
        let rec = f.get(id);
        assert_eq!(rec.state, JobState::Failed { retry_at_ms });
        assert_eq!(rec.attempts, attempt);
        assert_eq!(rec.view().retry_at_ms, Some(retry_at_ms));
        // Not before its time...
        f.clock.advance(retry_at_ms - now - 1);
        assert_eq!(f.q.tick().await.unwrap().promoted, 0);
        assert!(f.q.lease(10, &NOOP, LEASE).await.unwrap().is_empty());
        assert_eq!(f.state(id), StateName::Failed);
        // ...and queued again at it.
        f.clock.advance(1);
        assert_eq!(f.q.tick().await.unwrap().promoted, 1);
        assert_eq!(f.state(id), StateName::Queued);
    }
    let rec = f.get(id);
    assert_eq!(rec.state, JobState::Dead);
    assert_eq!(rec.attempts, 3);
    assert_eq!(rec.last_error.unwrap().message, "try 3");
    // The second backoff is about twice the first: bounds double.
    assert_eq!(f.opts.backoff_bounds(1), (750, 1_250));
    assert_eq!(f.opts.backoff_bounds(2), (1_500, 2_500));
    assert_eq!(f.counts(), [(StateName::Dead, 1)]);
}

#[tokio::test]
async fn fatal_error_is_dead_at_once() {
    let f = Fixture::new();
    let id = f
        .submit_one(NewJob {
            max_attempts: 5,
            ..job("bad")
        })
        .await;
    let lease = f.q.lease(1, &NOOP, LEASE).await.unwrap().remove(0);
    let out =
        f.q.fail(id, lease.token, JobError::fatal("bad spec"))
            .await
            .unwrap();
    assert_eq!(out, FailOutcome::Dead);
    let rec = f.get(id);
    assert_eq!((rec.state, rec.attempts), (JobState::Dead, 1));
    assert_eq!(rec.last_error.unwrap().class, ErrorClass::Fatal);
    f.clock.advance(3_600_000);
    assert_eq!(f.q.tick().await.unwrap(), TickOutcome::default());
    assert!(f.q.lease(1, &NOOP, LEASE).await.unwrap().is_empty());
    assert_eq!(
        f.q.complete(id, b"late".to_vec()).await.unwrap(),
        CompleteOutcome::Rejected(StateName::Dead)
    );
}

#[tokio::test]
async fn retry_requeues_a_dead_job_with_fresh_attempts_and_says_so() {
    let f = Fixture::new();
    let id = f.submit_one(job("bad")).await;
    let live = f.q.retry(id).await.unwrap();
    assert_eq!(live, RetryOutcome::NotRetryable(StateName::Queued));
    let lease = f.q.lease(1, &NOOP, LEASE).await.unwrap().remove(0);
    f.q.fail(id, lease.token, JobError::fatal("bad spec"))
        .await
        .unwrap();
    assert_eq!(f.state(id), StateName::Dead);

    assert_eq!(
        f.q.retry(id).await.unwrap(),
        RetryOutcome::Requeued { jobs: 1 }
    );
    let rec = f.get(id);
    assert_eq!(
        (rec.state.clone(), rec.attempts, rec.lost),
        (JobState::Queued, 0, 0)
    );
    assert_eq!((rec.finished_ms, rec.last_error.clone()), (None, None));
    let last = rec.history.last().unwrap();
    assert_eq!(last.state, StateName::Queued);
    let note = last.note.as_deref().unwrap();
    assert!(
        note.contains("fresh attempts") && note.contains("bad spec"),
        "{note}"
    );
    assert_eq!(f.counts(), [(StateName::Queued, 1)]);
    // Leased again as attempt 1; retention (the finished index) no longer holds it.
    let lease = f.q.lease(1, &NOOP, LEASE).await.unwrap().remove(0);
    assert_eq!((lease.id, lease.attempt), (id, 1));
    f.clock.advance(30 * 24 * 3_600_000);
    f.q.tick().await.unwrap();
    assert!(f.q.get(id).unwrap().is_some(), "a live job is never pruned");
    f.q.complete(id, b"ok".to_vec()).await.unwrap();
    assert_eq!(f.state(id), StateName::Done);
    assert_eq!(
        f.q.retry(id).await.unwrap(),
        RetryOutcome::NotRetryable(StateName::Done)
    );

    let gone = f.submit_one(job("x")).await;
    f.q.cancel(gone).await.unwrap();
    assert_eq!(
        f.q.retry(gone).await.unwrap(),
        RetryOutcome::Requeued { jobs: 1 }
    );
    assert_eq!(f.state(gone), StateName::Queued);
}

#[tokio::test]
async fn retrying_a_parent_requeues_its_failed_children_and_it_waits_again() {
    let f = Fixture::new();
    let p = f.submit_one(parent("p", 3)).await;
    let kids = f.q.children(p).unwrap();
    let leases = f.q.lease(3, &NOOP, LEASE).await.unwrap();
    f.q.complete(kids[0], b"zero".to_vec()).await.unwrap();
    f.q.fail(kids[1], leases[1].token, JobError::fatal("no"))
        .await
        .unwrap();
    f.q.cancel(kids[2]).await.unwrap();
    assert_eq!(
        f.state(p),
        StateName::Done,
        "done with 2 of 3 children failed"
    );

    assert_eq!(
        f.q.retry(p).await.unwrap(),
        RetryOutcome::Requeued { jobs: 2 }
    );
    let rec = f.get(p);
    assert_eq!(rec.state, JobState::Waiting);
    assert_eq!(rec.finished_ms, None);
    let counts = rec.children.unwrap();
    assert_eq!((counts.done, counts.dead, counts.cancelled), (1, 0, 0));
    assert_eq!(counts.items_done, 1);
    assert_eq!(
        f.state(kids[0]),
        StateName::Done,
        "its done child stays done"
    );
    for l in f.q.lease(3, &NOOP, LEASE).await.unwrap() {
        assert_eq!(l.attempt, 1);
        f.q.complete(l.id, b"again".to_vec()).await.unwrap();
    }
    let rec = f.get(p);
    assert_eq!(rec.state, JobState::Done);
    assert_eq!(rec.children.unwrap().done, 3);
    assert_eq!(f.counts(), [(StateName::Done, 4)]);

    // One child of a finished parent alone.
    let q = f.submit_one(parent("q", 2)).await;
    let qk = f.q.children(q).unwrap();
    let leases = f.q.lease(2, &NOOP, LEASE).await.unwrap();
    for (k, l) in qk.iter().zip(&leases) {
        f.q.fail(*k, l.token, JobError::fatal("no")).await.unwrap();
    }
    assert_eq!(f.state(q), StateName::Dead, "all children failed");
    assert_eq!(
        f.q.retry(qk[1]).await.unwrap(),
        RetryOutcome::Requeued { jobs: 1 }
    );
    assert_eq!(f.get(q).state, JobState::Waiting);
    assert_eq!(f.get(q).children.unwrap().dead, 1);
}

#[tokio::test]
async fn resubmit_makes_a_new_job_with_the_same_task_and_children() {
    let f = Fixture::new();
    let p = f.submit_one(parent("p", 2)).await;
    assert!(
        f.q.resubmit(p, Submitter::Owner).await.is_err(),
        "a live job is not resubmitted"
    );
    f.q.cancel(p).await.unwrap();
    let new = f.q.resubmit(p, Submitter::Owner).await.unwrap();
    assert!(new.created && new.id != p);
    let rec = f.get(new.id);
    assert_eq!(rec.task, f.get(p).task);
    assert_eq!(rec.children.unwrap().total, 2);
    let kids: Vec<Task> =
        f.q.children(new.id)
            .unwrap()
            .into_iter()
            .map(|k| f.get(k).task)
            .collect();
    assert_eq!(kids, [noop("p/0"), noop("p/1")]);
    let note = |id| f.get(id).history.last().unwrap().note.clone().unwrap();
    assert_eq!(note(new.id), format!("resubmitted from job {p}"));
    assert_eq!(note(p), format!("resubmitted as job {}", new.id));
    assert_eq!(f.state(p), StateName::Cancelled);
}

#[tokio::test]
async fn recent_minutes_count_finished_jobs_by_the_node_that_ran_them() {
    let f = Fixture::new();
    let a = f.submit_one(job("a")).await;
    let b = f.submit_one(job("b")).await;
    let mine = f.q.lease(1, &NOOP, LEASE).await.unwrap().remove(0);
    let theirs =
        f.q.lease_to("thief#3".into(), 1, &myco_jobs::Fit::local(&NOOP), LEASE)
            .await
            .unwrap()
            .remove(0);
    assert_eq!((mine.id, theirs.id), (a, b));
    f.clock.advance(2_000);
    f.q.complete(a, b"a".to_vec()).await.unwrap();
    f.q.complete(b, b"b".to_vec()).await.unwrap();
    let recent = f.q.stats().recent.last_hour(f.q.now_ms());
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].done, 2);
    assert_eq!(recent[0].latency_ms_sum, 4_000);
    let by_node: Vec<(&str, u64)> = recent[0]
        .by_node
        .iter()
        .map(|(n, c)| (n.as_str(), *c))
        .collect();
    assert_eq!(by_node, [("n1", 1), ("thief", 1)]);
}

// ---------------------------------------------------------------- leases

#[tokio::test]
async fn expired_lease_requeues_and_late_result_is_recorded_once() {
    let f = Fixture::new();
    let id = f.submit_one(job("slow")).await;
    let first = f.q.lease(1, &NOOP, Duration::from_secs(1)).await.unwrap();
    assert_eq!(first[0].deadline_ms, f.q.now_ms() + 1_000);
    f.clock.advance(999);
    assert_eq!(
        f.q.tick().await.unwrap().expired,
        0,
        "not before the deadline"
    );
    f.clock.advance(1);
    let t = f.q.tick().await.unwrap();
    assert_eq!(
        t,
        TickOutcome {
            expired: 1,
            promoted: 0,
            killed: 0,
            pruned: 0,
        }
    );
    let rec = f.get(id);
    assert_eq!(
        (rec.state.clone(), rec.lost, rec.attempts),
        (JobState::Queued, 1, 0)
    );
    // The old holder can no longer fail, renew or release it.
    let token = first[0].token;
    assert_eq!(
        f.q.fail(id, token, JobError::retryable("x")).await.unwrap(),
        FailOutcome::Stale
    );
    assert_eq!(f.q.renew(vec![(id, token)], LEASE).await.unwrap(), vec![id]);
    assert_eq!(f.q.release(vec![(id, token)]).await.unwrap(), 0);
    // Another worker takes it over; the first one's late result still counts, once.
    let second =
        f.q.lease_to("peer#1".into(), 1, &myco_jobs::Fit::local(&NOOP), LEASE)
            .await
            .unwrap();
    assert_eq!((second[0].id, second[0].attempt), (id, 1));
    assert!(second[0].token > token);
    assert_eq!(
        f.q.complete(id, b"first".to_vec()).await.unwrap(),
        CompleteOutcome::Recorded
    );
    assert_eq!(
        f.q.complete(id, b"second".to_vec()).await.unwrap(),
        CompleteOutcome::AlreadyDone
    );
    assert_eq!(f.q.result(id).unwrap(), Some(b"first".to_vec()));
    assert_eq!(f.all().len(), 1);
    assert_eq!(f.counts(), [(StateName::Done, 1)]);
    // The done job's lease entry is gone: nothing expires later.
    f.clock.advance(60_000);
    assert_eq!(f.q.tick().await.unwrap(), TickOutcome::default());
}

#[tokio::test]
async fn lease_lost_too_often_is_dead() {
    let f = Fixture::with(QueueOptions {
        max_lost: 1,
        ..options()
    });
    let id = f.submit_one(job("crashy")).await;
    for round in 1..=2u32 {
        assert_eq!(f.q.lease(1, &NOOP, LEASE).await.unwrap().len(), 1);
        f.clock.advance(LEASE.as_millis() as u64);
        let t = f.q.tick().await.unwrap();
        assert_eq!(
            (t.expired, t.killed),
            if round == 1 { (1, 0) } else { (0, 1) }
        );
    }
    let rec = f.get(id);
    assert_eq!((rec.state, rec.lost), (JobState::Dead, 2));
    assert!(rec.last_error.is_some());
}

#[tokio::test]
async fn renew_extends_only_own_current_leases() {
    let f = Fixture::new();
    let a = f.submit_one(job("a")).await;
    let b = f.submit_one(job("b")).await;
    let mine = f.q.lease(1, &NOOP, Duration::from_secs(1)).await.unwrap();
    let theirs =
        f.q.lease_to(
            "peer#1".into(),
            1,
            &myco_jobs::Fit::local(&NOOP),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert_eq!((mine[0].id, theirs[0].id), (a, b));
    f.clock.advance(900);
    let lost =
        f.q.renew(
            vec![(a, mine[0].token), (b, theirs[0].token)],
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert_eq!(lost, vec![b], "a peer's lease is not ours to renew");
    f.clock.advance(100);
    let t = f.q.tick().await.unwrap();
    assert_eq!(t.expired, 1);
    assert_eq!(f.state(a), StateName::Leased);
    assert_eq!(f.state(b), StateName::Queued);
}

#[tokio::test]
async fn release_requeues_without_counting_an_attempt() {
    let f = Fixture::new();
    let id = f.submit_one(job("x")).await;
    let l = f.q.lease(1, &NOOP, LEASE).await.unwrap().remove(0);
    assert_eq!(f.q.release(vec![(id, l.token + 1)]).await.unwrap(), 0);
    assert_eq!(f.q.release(vec![(id, l.token)]).await.unwrap(), 1);
    let rec = f.get(id);
    assert_eq!(
        (rec.state, rec.attempts, rec.lost),
        (JobState::Queued, 0, 0)
    );
    let again = f.q.lease(1, &NOOP, LEASE).await.unwrap().remove(0);
    assert_eq!(again.attempt, 1);
    assert_eq!(again.token, l.token + 1);
}

// ---------------------------------------------------------------- restart

#[tokio::test]
async fn restart_requeues_own_leases_only() {
    let f = Fixture::new();
    let ids =
        f.q.submit(vec![job("a"), job("b"), job("c"), job("d")])
            .await
            .unwrap();
    let ids: Vec<JobId> = ids.iter().map(|s| s.id).collect();
    assert_eq!(f.q.holder(), "n1#1");
    let mine = f.q.lease(2, &NOOP, LEASE).await.unwrap();
    let theirs =
        f.q.lease_to("peer#1".into(), 1, &myco_jobs::Fit::local(&NOOP), LEASE)
            .await
            .unwrap();
    f.q.complete(ids[0], b"kept".to_vec()).await.unwrap();
    assert_eq!(mine[1].id, ids[1]);
    assert_eq!(theirs[0].id, ids[2]);

    let f = f.restart().await;
    assert_eq!(f.q.holder(), "n1#2");
    assert_eq!(f.state(ids[0]), StateName::Done);
    assert_eq!(f.q.result(ids[0]).unwrap(), Some(b"kept".to_vec()));
    let b = f.get(ids[1]);
    assert_eq!(
        (b.state, b.lost),
        (JobState::Queued, 1),
        "our lease died with us"
    );
    assert!(
        matches!(f.get(ids[2]).state, JobState::Leased { ref holder, .. } if holder == "peer#1"),
        "a peer's lease is left to expire"
    );
    assert_eq!(f.get(ids[3]).state, JobState::Queued);
    assert_eq!(
        f.counts(),
        [
            (StateName::Queued, 2),
            (StateName::Leased, 1),
            (StateName::Done, 1)
        ]
    );
    // The old worker's token is dead; the requeued job goes out again, in order.
    assert_eq!(
        f.q.fail(ids[1], mine[1].token, JobError::retryable("x"))
            .await
            .unwrap(),
        FailOutcome::Stale
    );
    let again = f.q.lease(10, &NOOP, LEASE).await.unwrap();
    assert_eq!(
        again.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![ids[1], ids[3]]
    );
    // Leases of this incarnation are recovered by the next one too.
    let f = f.restart().await;
    assert_eq!(f.q.holder(), "n1#3");
    assert_eq!(f.get(ids[1]).lost, 2);
    assert_eq!(f.get(ids[3]).lost, 1);
    assert_eq!(f.all().len(), 4);
}

// ---------------------------------------------------------------- order

#[tokio::test]
async fn higher_priority_first_fifo_within() {
    let f = Fixture::new();
    let mut ids = Vec::new();
    for (name, p) in [("a", 0), ("b", 5), ("c", 0), ("d", -1), ("e", 5)] {
        ids.push((name, f.submit_one(prio(name, p)).await));
    }
    let batch =
        f.q.submit(vec![
            prio("f", i32::MIN),
            prio("g", i32::MAX),
            prio("h", 0),
            prio("i", i32::MAX),
        ])
        .await
        .unwrap();
    for (name, s) in ["f", "g", "h", "i"].into_iter().zip(batch) {
        ids.push((name, s.id));
    }
    let name = |id: JobId| ids.iter().find(|(_, i)| *i == id).unwrap().0;
    let first = f.q.lease(3, &NOOP, LEASE).await.unwrap();
    let rest = f.q.lease(100, &NOOP, LEASE).await.unwrap();
    let order: Vec<&str> = first.iter().chain(&rest).map(|l| name(l.id)).collect();
    assert_eq!(order, ["g", "i", "b", "e", "a", "c", "h", "d", "f"]);

    // A requeued job keeps its place.
    let a = ids[0].1;
    let la = rest.iter().find(|l| l.id == a).unwrap();
    let lh = rest.iter().find(|l| name(l.id) == "h").unwrap();
    f.q.release(vec![(lh.id, lh.token), (a, la.token)])
        .await
        .unwrap();
    let again = f.q.lease(100, &NOOP, LEASE).await.unwrap();
    let order: Vec<&str> = again.iter().map(|l| name(l.id)).collect();
    assert_eq!(order, ["a", "h"]);
}

// ---------------------------------------------------------------- group commit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_share_commits() {
    const N: usize = 1_000;
    let f = Fixture::new();
    let before = f.q.stats().commits;
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::with_capacity(N);
    for i in 0..N {
        let q = f.q.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            q.submit(vec![job(&format!("j{i}"))]).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let s = t.await.unwrap().unwrap();
        assert_eq!(s.len(), 1);
        assert!(s[0].created);
        assert!(ids.insert(s[0].id), "duplicate id");
    }
    let stats = f.q.stats();
    let commits = stats.commits - before;
    assert!(
        commits < 500,
        "{N} submits took {commits} commits: the writer is not batching"
    );
    assert!(stats.ops >= N as u64);
    assert_eq!(f.counts(), [(StateName::Queued, N as u64)]);
    assert_eq!(f.all().len(), N);
    // Every one of them is durable: all still there after a restart.
    let f = f.restart().await;
    assert_eq!(f.all().len(), N);
    let seqs: std::collections::HashSet<u64> = f.all().iter().map(|r| r.seq).collect();
    assert_eq!(seqs.len(), N, "each job has its own place in line");
}

#[tokio::test]
async fn lease_only_the_kinds_asked_for() {
    let f = Fixture::new();
    let chunk = f
        .submit_one(NewJob {
            task: Task::ChunkFile {
                path: "a.txt".into(),
                params: myco_jobs::chunk::ChunkParams {
                    max_tokens: 100,
                    overlap: 0,
                },
            },
            priority: 9,
            ..job("c")
        })
        .await;
    let n = f.submit_one(job("n")).await;
    let got = f.q.lease(10, &NOOP, LEASE).await.unwrap();
    assert_eq!(got.iter().map(|l| l.id).collect::<Vec<_>>(), vec![n]);
    assert_eq!(f.state(chunk), StateName::Queued);
    let got = f.q.lease(10, &[JobKind::Chunk], LEASE).await.unwrap();
    assert_eq!(got.iter().map(|l| l.id).collect::<Vec<_>>(), vec![chunk]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_operation_does_not_spoil_its_batch() {
    let f = Fixture::new();
    let p = f.submit_one(parent("p", 1)).await;
    let mut submits = Vec::new();
    for i in 0..200 {
        let q = f.q.clone();
        submits.push(tokio::spawn(async move {
            q.submit(vec![job(&format!("j{i}"))]).await
        }));
    }
    let (q1, q2) = (f.q.clone(), f.q.clone());
    let refused = tokio::spawn(async move { q1.complete(p, b"no".to_vec()).await });
    let missing = tokio::spawn(async move { q2.cancel(JobId::new()).await });
    for s in submits {
        assert!(s.await.unwrap().unwrap()[0].created);
    }
    assert!(
        refused.await.unwrap().is_err(),
        "a parent cannot be completed"
    );
    assert!(missing.await.unwrap().is_err(), "no such job");
    assert_eq!(f.state(p), StateName::Leased);
    assert_eq!(
        f.counts(),
        [(StateName::Queued, 201), (StateName::Leased, 1)]
    );
}

#[tokio::test]
async fn calls_after_shutdown_fail_closed() {
    let f = Fixture::new();
    let id = f.submit_one(job("x")).await;
    let other = f.q.clone();
    f.q.shutdown().await;
    assert!(matches!(
        other.submit(vec![job("y")]).await,
        Err(myco_runtime::QueueError::Closed)
    ));
    assert!(matches!(
        other.cancel(id).await,
        Err(myco_runtime::QueueError::Closed)
    ));
    // Reads still see what was committed.
    assert_eq!(f.state(id), StateName::Queued);
}

// ---------------------------------------------------------------- regressions
//
// Each of these once failed: partial writes from a refused release, the file still locked
// right after the last handle was dropped, and ids unordered within a millisecond.

/// store.rs promises "an operation that returns an error has changed nothing". A release
/// naming one held lease and one unknown id returns `NotFound`, yet the held lease was
/// released and committed.
#[tokio::test]
async fn release_of_unknown_ids_changes_nothing_else() {
    let f = Fixture::new();
    let id = f.submit_one(job("x")).await;
    let l = f.q.lease(1, &NOOP, LEASE).await.unwrap().remove(0);
    let got = f.q.release(vec![(id, l.token), (JobId::new(), 1)]).await;
    match got {
        // Either an unknown id counts as "not held" (as `renew` treats it)...
        Ok(n) => {
            assert_eq!(n, 1);
            assert_eq!(f.state(id), StateName::Queued);
        }
        // ...or the error leaves the lease alone.
        Err(e) => assert_eq!(
            f.state(id),
            StateName::Leased,
            "release returned {e} but released the lease anyway"
        ),
    }
}

/// `Queue` says its writer stops when the last handle is dropped; it does, but later than
/// the drop, so opening the file again at once fails with `Locked` ("in use by another myco
/// process", though it is this one).
#[tokio::test]
async fn reopen_right_after_the_last_handle_is_dropped() {
    let f = Fixture::new();
    f.submit_one(job("x")).await;
    let Fixture {
        _dir,
        path,
        clock,
        opts,
        q,
    } = f;
    drop(q);
    let again = Queue::open_with_clock(&path, opts, clock);
    assert!(again.is_ok(), "reopen after drop: {:?}", again.err());
    assert_eq!(
        again.unwrap().counts().unwrap()[StateName::Queued.index()],
        1
    );
}

/// `Queue::list` promises "newest first", but job ids are `Ulid::new()`: random below the
/// millisecond, so jobs submitted within one millisecond come back in random order.
#[tokio::test]
async fn list_is_newest_first_within_a_millisecond() {
    let f = Fixture::new();
    let got =
        f.q.submit((0..20).map(|i| job(&format!("j{i}"))).collect())
            .await
            .unwrap();
    let newest_first: Vec<JobId> = got.iter().rev().map(|s| s.id).collect();
    let listed: Vec<JobId> =
        f.q.list(&ListFilter::default())
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
    assert_eq!(listed, newest_first);
}

/// A thief's renewal lists everything it holds from this owner: a lease it never received
/// (a steal grant lost on the way) goes back to the queue once it is older than the grace,
/// while listed and young leases stay, and another holder's are untouched.
#[tokio::test]
async fn a_complete_renewal_reclaims_grants_that_never_arrived() {
    let f = Fixture::new();
    for i in 0..4 {
        f.submit_one(job(&format!("j{i}"))).await;
    }
    let thief = "thief#1".to_owned();
    let got =
        f.q.lease_to(thief.clone(), 3, &myco_jobs::Fit::local(&NOOP), LEASE)
            .await
            .unwrap();
    let other =
        f.q.lease_to("other#1".into(), 1, &myco_jobs::Fit::local(&NOOP), LEASE)
            .await
            .unwrap();
    let (kept, lost_grant) = (&got[..2], &got[2]);
    let listed: Vec<(JobId, u64)> = kept.iter().map(|l| (l.id, l.token)).collect();
    let grace = Duration::from_secs(5);

    // Too young to judge: a grant may still be on its way.
    f.q.renew_as(thief.clone(), listed.clone(), LEASE, Some(grace))
        .await
        .unwrap();
    assert_eq!(f.state(lost_grant.id), StateName::Leased);

    f.clock.advance(6_000);
    let lost =
        f.q.renew_as(thief.clone(), listed.clone(), LEASE, Some(grace))
            .await
            .unwrap();
    assert!(lost.is_empty());
    assert_eq!(f.state(lost_grant.id), StateName::Queued, "reclaimed");
    let rec = f.q.get(lost_grant.id).unwrap().unwrap();
    assert_eq!(
        rec.lost, 0,
        "not the job's fault: no attempt or loss counted"
    );
    for l in kept {
        assert_eq!(f.state(l.id), StateName::Leased, "listed leases stay");
    }
    assert_eq!(
        f.state(other[0].id),
        StateName::Leased,
        "other holders untouched"
    );
    // Without the promise of a complete list, nothing is reclaimed.
    f.clock.advance(6_000);
    f.q.renew_as(thief, listed[..1].to_vec(), LEASE, None)
        .await
        .unwrap();
    assert_eq!(f.state(listed[1].0), StateName::Leased);
}

#[tokio::test]
async fn queued_jobs_are_counted_per_kind_and_recounted_on_open() {
    let f = Fixture::new();
    for i in 0..3 {
        f.submit_one(job(&format!("q{i}"))).await;
    }
    assert_eq!(f.q.queued_of(&NOOP), 3);
    assert_eq!(f.q.queued_of(&[JobKind::Infer]), 0);
    let leased = f.q.lease(2, &NOOP, LEASE).await.unwrap();
    assert_eq!(f.q.queued_of(&NOOP), 1);
    f.q.release(leased.iter().map(|l| (l.id, l.token)).collect())
        .await
        .unwrap();
    assert_eq!(f.q.queued_of(&NOOP), 3);
    f.q.lease(1, &NOOP, LEASE).await.unwrap();
    let f = f.restart().await;
    // The lease died with the "node": requeued at open, and counted.
    assert_eq!(f.q.queued_of(&NOOP), 3);
}

/// Retention: a finished interactive job (a chat's prompt and answer) is removed from the
/// file once its period is over, a batch job (with its children and results) after its own
/// longer one, and nothing unfinished is touched, however old.
#[tokio::test]
async fn finished_jobs_are_pruned_after_their_retention_and_nothing_else() {
    let f = Fixture::with(QueueOptions {
        retention_interactive_ms: 60_000,
        retention_batch_ms: 600_000,
        ..options()
    });
    let interactive = f
        .submit_one(NewJob {
            idempotency_key: Some("chat-1".into()),
            ..prio("a chat", myco_runtime::queue::INTERACTIVE_PRIORITY)
        })
        .await;
    let waiting = f
        .submit_one(prio(
            "an unfinished chat",
            myco_runtime::queue::INTERACTIVE_PRIORITY + 1,
        ))
        .await;
    let batch = f.submit_one(parent("an archive", 2)).await;
    // The two chats go first (priority); one is answered, the other stays leased.
    let leased =
        f.q.lease(2, &NOOP, Duration::from_secs(3600))
            .await
            .unwrap();
    let ids: Vec<JobId> = leased.iter().map(|l| l.id).collect();
    assert!(ids.contains(&interactive) && ids.contains(&waiting));
    f.q.complete(interactive, b"the answer".to_vec())
        .await
        .unwrap();
    for kid in f.q.lease(2, &NOOP, LEASE).await.unwrap() {
        f.q.complete(kid.id, b"a chunk".to_vec()).await.unwrap();
    }
    assert_eq!(f.state(batch), StateName::Done);
    let kids = f.q.children(batch).unwrap();
    assert_eq!(kids.len(), 2);
    let before = f.q.counts().unwrap();

    f.clock.advance(59_999);
    assert_eq!(f.q.tick().await.unwrap().pruned, 0, "not before its time");
    f.clock.advance(1);
    assert_eq!(f.q.tick().await.unwrap().pruned, 1);
    assert!(f.q.get(interactive).unwrap().is_none(), "the chat is gone");
    assert!(
        f.q.result(interactive).unwrap().is_none(),
        "with its answer"
    );
    assert_eq!(
        f.state(waiting),
        StateName::Leased,
        "the unfinished one stays"
    );
    assert_eq!(f.state(batch), StateName::Done, "batch work keeps longer");
    // Its idempotency key is free again: the same key makes a new job.
    let again =
        f.q.submit(vec![keyed("a chat again", "chat-1")])
            .await
            .unwrap();
    assert!(again[0].created);
    f.q.cancel(again[0].id).await.unwrap();

    f.clock.advance(600_000);
    let t = f.q.tick().await.unwrap();
    // The archive and its two children, and the cancelled chat (ten minutes old by now).
    assert_eq!(t.pruned, 4, "{t:?}");
    assert!(f.q.get(again[0].id).unwrap().is_none());
    assert!(f.q.get(batch).unwrap().is_none());
    for kid in &kids {
        assert!(f.q.get(*kid).unwrap().is_none());
        assert!(f.q.result(*kid).unwrap().is_none());
    }
    assert!(f.q.children(batch).unwrap().is_empty());
    assert_eq!(f.state(waiting), StateName::Leased);
    // The counts follow: the four done records are gone (and the cancelled one came and
    // went); the leased one is still counted.
    let after = f.q.counts().unwrap();
    assert_eq!(
        after[StateName::Done.index()] + 4,
        before[StateName::Done.index()]
    );
    assert_eq!(
        after[StateName::Cancelled.index()],
        before[StateName::Cancelled.index()]
    );
    assert_eq!(after[StateName::Leased.index()], 1);
    // And the file says the same after a restart.
    let f = f.restart().await;
    assert!(f.q.get(interactive).unwrap().is_none());
    assert!(f.q.get(batch).unwrap().is_none());
    assert_eq!(
        f.state(waiting),
        StateName::Queued,
        "requeued by the restart, not removed"
    );
}

// ---------------------------------------------------------------- a full disk

/// While the disk is full every commit fails with a storage error (not a refusal) that
/// names the cause, nothing of a failed batch is kept, and once space is back the queue
/// reopens its file by itself: what was committed before is intact, the same operations
/// succeed, and a result is recorded exactly once.
#[tokio::test]
async fn a_full_disk_fails_commits_as_storage_errors_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let switch = dir.path().join("disk-full");
    let f = Fixture::with(QueueOptions {
        disk_full_while: Some(switch.clone()),
        ..options()
    });
    let kept = f.submit_one(job("before")).await;
    let leased = f.q.lease(1, &NOOP, LEASE).await.unwrap();
    assert_eq!(leased.len(), 1);

    std::fs::write(&switch, b"").unwrap();
    let err = f.q.submit(vec![job("during")]).await.unwrap_err();
    assert_eq!(
        err.class(),
        myco_runtime::queue::ErrorClass::Storage,
        "{err}"
    );
    assert!(!err.is_refusal());
    let myco_runtime::QueueError::Storage(s) = &err else {
        panic!("{err:?}")
    };
    assert!(s.is_disk_full(), "{err}");
    assert!(err.to_string().contains("no space left"), "{err}");
    let err = f.q.complete(kept, b"out".to_vec()).await.unwrap_err();
    assert_eq!(
        err.class(),
        myco_runtime::queue::ErrorClass::Storage,
        "{err}"
    );
    // A refusal inside a failed commit reports the commit's cause too: it was rolled back.
    let err = f.q.cancel(JobId::new()).await.unwrap_err();
    assert_eq!(
        err.class(),
        myco_runtime::queue::ErrorClass::Storage,
        "{err}"
    );

    std::fs::remove_file(&switch).unwrap();
    // The first operation after recovery reopens the file.
    let outcome = f.q.complete(kept, b"out".to_vec()).await.unwrap();
    assert!(matches!(outcome, CompleteOutcome::Recorded), "{outcome:?}");
    let again = f.q.complete(kept, b"out".to_vec()).await.unwrap();
    assert!(
        !matches!(again, CompleteOutcome::Recorded),
        "recorded twice: {again:?}"
    );
    assert_eq!(f.state(kept), StateName::Done);
    assert_eq!(f.q.result(kept).unwrap().unwrap(), b"out");
    assert_eq!(
        f.all().len(),
        1,
        "the job submitted while the disk was full was not kept"
    );
    assert!(matches!(
        f.q.cancel(JobId::new()).await,
        Err(myco_runtime::QueueError::NotFound(_))
    ));
    assert_eq!(f.counts(), [(StateName::Done, 1)]);
    // And the file is sound for a restarted node.
    let f = f.restart().await;
    assert_eq!(f.state(kept), StateName::Done);
}
