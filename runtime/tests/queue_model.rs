#![allow(clippy::unwrap_used, clippy::panic)]
//! Model-based property test of the durable queue (acceptance criterion 1).
//!
//! Random sequences of operations (submit with idempotency keys and children, lease, complete,
//! fail, cancel, release, renew, clock advance + tick, restart) run against the real redb queue
//! and against the small in-memory model below. After every operation the outcome, every
//! job's state, the per-state counts and the stored results must agree with the model.
//! This file holds only the test and its model; it must not reach into the queue's internals.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use myco_jobs::task::NoopTask;
use myco_jobs::{JobError, JobKind, Task};
use myco_runtime::queue::{
    CancelOutcome, ChildCounts, CompleteOutcome, FailOutcome, JobId, JobState, ListFilter,
    ManualClock, NewJob, Queue, QueueError, QueueOptions, StateName, Submitted, TickOutcome,
};
use proptest::prelude::*;
use proptest::sample::Index;

const NODE: &str = "n1";
const PEER: &str = "peer#1";
const BACKOFF_BASE_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 800;
const MAX_LOST: u32 = 1;
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const PRIORITIES: [i32; 3] = [-1, 0, 5];
const START_MS: u64 = 1_000_000;

fn opts() -> QueueOptions {
    QueueOptions {
        node: NODE.into(),
        backoff_base_ms: BACKOFF_BASE_MS,
        backoff_max_ms: BACKOFF_MAX_MS,
        max_lost: MAX_LOST,
        ..QueueOptions::default()
    }
}

// ---------------------------------------------------------------- operations

#[derive(Debug, Clone)]
struct SubmitSpec {
    key: Option<usize>,
    children: usize,
    priority: i32,
    max_attempts: u32,
}

#[derive(Debug, Clone)]
enum Op {
    /// One `submit` call with 1-2 jobs (so keys can repeat inside one batch).
    Submit(Vec<SubmitSpec>),
    Lease {
        max: usize,
        peer: bool,
        lease_ms: u64,
    },
    Complete {
        pick: Index,
        leased_only: bool,
    },
    Fail {
        pick: Index,
        leased_only: bool,
        fatal: bool,
        stale: bool,
    },
    Cancel(Index),
    Release {
        picks: Vec<Index>,
        stale: bool,
    },
    Renew {
        pick: Index,
        lease_ms: u64,
    },
    /// Move the clock, then `tick`.
    Advance(u64),
    /// Shut down and reopen the same file.
    Restart,
}

fn submit_spec() -> impl Strategy<Value = SubmitSpec> {
    (
        prop::option::weighted(0.4, 0..KEYS.len()),
        prop_oneof![3 => Just(0usize), 2 => 1..=3usize],
        prop::sample::select(PRIORITIES.to_vec()),
        1..=4u32,
    )
        .prop_map(|(key, children, priority, max_attempts)| SubmitSpec {
            key,
            children,
            priority,
            max_attempts,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => prop::collection::vec(submit_spec(), 1..=2).prop_map(Op::Submit),
        6 => (
            prop_oneof![1 => Just(0usize), 8 => 1..=4usize],
            prop::bool::weighted(0.25),
            prop::sample::select(vec![500u64, 2_000]),
        )
            .prop_map(|(max, peer, lease_ms)| Op::Lease { max, peer, lease_ms }),
        3 => (any::<Index>(), prop::bool::weighted(0.7))
            .prop_map(|(pick, leased_only)| Op::Complete { pick, leased_only }),
        4 => (
            any::<Index>(),
            prop::bool::weighted(0.8),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(pick, leased_only, fatal, stale)| Op::Fail {
                pick,
                leased_only,
                fatal,
                stale,
            }),
        2 => any::<Index>().prop_map(Op::Cancel),
        1 => (prop::collection::vec(any::<Index>(), 1..=3), prop::bool::weighted(0.3))
            .prop_map(|(picks, stale)| Op::Release { picks, stale }),
        1 => (any::<Index>(), prop::sample::select(vec![500u64, 2_000]))
            .prop_map(|(pick, lease_ms)| Op::Renew { pick, lease_ms }),
        4 => prop::sample::select(vec![50u64, 200, 700, 2_500]).prop_map(Op::Advance),
        1 => Just(Op::Restart),
    ]
}

// ---------------------------------------------------------------- the model

#[derive(Debug)]
struct MJob {
    id: JobId,
    task: Task,
    parent: Option<usize>,
    children: Vec<usize>,
    priority: i32,
    seq: u64,
    max_attempts: u32,
    key: Option<String>,
    state: JobState,
    attempts: u32,
    leases: u64,
    lost: u32,
    counts: Option<ChildCounts>,
    result: Option<Vec<u8>>,
}

#[derive(Debug)]
enum MFail {
    Stale,
    Dead,
    Retrying { attempts: u32 },
}

#[derive(Debug)]
struct Model {
    jobs: Vec<MJob>,
    by_id: HashMap<JobId, usize>,
    keys: HashMap<String, usize>,
    next_seq: u64,
    now: u64,
    incarnation: u64,
    payloads: u64,
}

impl Model {
    fn new() -> Model {
        Model {
            jobs: Vec::new(),
            by_id: HashMap::new(),
            keys: HashMap::new(),
            next_seq: 0,
            now: START_MS,
            incarnation: 1,
            payloads: 0,
        }
    }

    fn holder(&self) -> String {
        format!("{NODE}#{}", self.incarnation)
    }

    fn new_task(&mut self) -> Task {
        self.payloads += 1;
        Task::Noop(NoopTask {
            payload: format!("p{}", self.payloads),
            ..NoopTask::default()
        })
    }

    /// `Index` → a job: among the leased ones if asked and there are any, else any job.
    fn pick(&self, idx: &Index, leased_only: bool) -> Option<usize> {
        if leased_only {
            let leased: Vec<usize> = (0..self.jobs.len())
                .filter(|&j| matches!(self.jobs[j].state, JobState::Leased { .. }))
                .collect();
            if !leased.is_empty() {
                return Some(leased[idx.index(leased.len())]);
            }
        }
        (!self.jobs.is_empty()).then(|| idx.index(self.jobs.len()))
    }

    fn add(&mut self, job: &NewJob, task: Task, id: JobId, parent: Option<usize>) -> usize {
        let seq = self.next_seq;
        self.next_seq += 1;
        let j = self.jobs.len();
        let is_parent = parent.is_none() && !job.children.is_empty();
        self.jobs.push(MJob {
            id,
            task,
            parent,
            children: Vec::new(),
            priority: job.priority,
            seq,
            max_attempts: job.max_attempts.max(1),
            key: if parent.is_none() {
                job.idempotency_key.clone()
            } else {
                None
            },
            state: if is_parent {
                JobState::Waiting
            } else {
                JobState::Queued
            },
            attempts: 0,
            leases: 0,
            lost: 0,
            counts: is_parent.then(|| ChildCounts {
                total: job.children.len() as u32,
                // A no-op child covers one item and reports no outputs.
                items_total: job.children.len() as u64,
                ..ChildCounts::default()
            }),
            result: None,
        });
        assert!(
            self.by_id.insert(id, j).is_none(),
            "id {id} handed out twice"
        );
        j
    }

    /// Check a submit's reply and record what it made (ids come from the real queue).
    fn submit(&mut self, jobs: &[NewJob], got: &[Submitted], q: &Queue) {
        assert_eq!(got.len(), jobs.len(), "one reply per submitted job");
        for (job, sub) in jobs.iter().zip(got) {
            if let Some(key) = &job.idempotency_key
                && let Some(&j) = self.keys.get(key)
            {
                let want = Submitted {
                    id: self.jobs[j].id,
                    created: false,
                };
                assert_eq!(
                    *sub, want,
                    "idempotency key {key} must return its first job"
                );
                continue;
            }
            assert!(sub.created, "a new key (or none) must create a job");
            let p = self.add(job, job.task.clone(), sub.id, None);
            if let Some(key) = &job.idempotency_key {
                self.keys.insert(key.clone(), p);
            }
            if !job.children.is_empty() {
                let ids = q.children(sub.id).unwrap();
                assert_eq!(ids.len(), job.children.len(), "children of {}", sub.id);
                for (task, cid) in job.children.iter().zip(ids) {
                    let c = self.add(job, task.clone(), cid, Some(p));
                    self.jobs[p].children.push(c);
                }
            }
        }
    }

    /// Ready jobs in lease order: higher priority first, FIFO (submission order) within.
    fn lease(&mut self, holder: &str, max: usize, lease_ms: u64) -> Vec<usize> {
        let mut ready: Vec<usize> = (0..self.jobs.len())
            .filter(|&j| self.jobs[j].state == JobState::Queued)
            .collect();
        ready.sort_by_key(|&j| (Reverse(self.jobs[j].priority), self.jobs[j].seq));
        ready.truncate(max);
        for &j in &ready {
            let job = &mut self.jobs[j];
            job.leases += 1;
            job.state = JobState::Leased {
                holder: holder.to_owned(),
                token: job.leases,
                deadline_ms: self.now + lease_ms,
            };
        }
        ready
    }

    /// Move a job to a final state and let its parent know.
    fn finish(&mut self, j: usize, to: JobState) {
        assert!(to.is_terminal());
        assert!(
            !self.jobs[j].state.is_terminal(),
            "model bug: finished job {j} changed"
        );
        self.jobs[j].state = to.clone();
        let Some(p) = self.jobs[j].parent else {
            return;
        };
        let counts = self.jobs[p].counts.as_mut().unwrap();
        match to {
            JobState::Done => counts.done += 1,
            JobState::Dead => counts.dead += 1,
            _ => counts.cancelled += 1,
        }
        counts.items_done += 1;
        let counts = *counts;
        if self.jobs[p].state == JobState::Waiting && counts.finished() >= counts.total {
            let end = if counts.done > 0 {
                JobState::Done
            } else {
                JobState::Dead
            };
            self.finish(p, end);
        }
    }

    /// `None`: the queue must refuse (a parent finishes only with its children).
    fn complete(&mut self, j: usize, output: &[u8]) -> Option<CompleteOutcome> {
        match self.jobs[j].state {
            JobState::Done => Some(CompleteOutcome::AlreadyDone),
            JobState::Dead => Some(CompleteOutcome::Rejected(StateName::Dead)),
            JobState::Cancelled => Some(CompleteOutcome::Rejected(StateName::Cancelled)),
            JobState::Waiting => None,
            JobState::Queued | JobState::Leased { .. } | JobState::Failed { .. } => {
                self.jobs[j].result = Some(output.to_vec());
                self.finish(j, JobState::Done);
                Some(CompleteOutcome::Recorded)
            }
        }
    }

    /// On `Retrying` the caller sets the state from the queue's (jittered) retry time.
    fn fail(&mut self, j: usize, token: u64, fatal: bool) -> MFail {
        let job = &mut self.jobs[j];
        if !matches!(job.state, JobState::Leased { token: t, .. } if t == token) {
            return MFail::Stale;
        }
        job.attempts += 1;
        if fatal || job.attempts >= job.max_attempts {
            self.finish(j, JobState::Dead);
            return MFail::Dead;
        }
        MFail::Retrying {
            attempts: job.attempts,
        }
    }

    fn cancel(&mut self, j: usize) -> CancelOutcome {
        if self.jobs[j].state.is_terminal() {
            return CancelOutcome::AlreadyFinished(self.jobs[j].state.name());
        }
        self.finish(j, JobState::Cancelled);
        for c in self.jobs[j].children.clone() {
            if !self.jobs[c].state.is_terminal() {
                self.finish(c, JobState::Cancelled);
            }
        }
        CancelOutcome::Cancelled
    }

    fn release(&mut self, j: usize, token: u64) -> bool {
        let job = &mut self.jobs[j];
        if matches!(job.state, JobState::Leased { token: t, .. } if t == token) {
            job.state = JobState::Queued;
            true
        } else {
            false
        }
    }

    /// Returns the ids no longer held.
    fn renew(&mut self, leases: &[(usize, u64)], lease_ms: u64) -> Vec<JobId> {
        let holder = self.holder();
        let mut lost = Vec::new();
        for &(j, token) in leases {
            match &mut self.jobs[j].state {
                JobState::Leased {
                    holder: h,
                    token: t,
                    deadline_ms,
                } if *h == holder && *t == token => *deadline_ms = self.now + lease_ms,
                _ => lost.push(self.jobs[j].id),
            }
        }
        lost
    }

    /// A lease whose holder is gone; true when the job is declared dead.
    fn lose(&mut self, j: usize) -> bool {
        self.jobs[j].lost += 1;
        if self.jobs[j].lost > MAX_LOST {
            self.finish(j, JobState::Dead);
            true
        } else {
            self.jobs[j].state = JobState::Queued;
            false
        }
    }

    fn tick(&mut self) -> TickOutcome {
        let mut out = TickOutcome::default();
        let now = self.now;
        let expired: Vec<usize> = (0..self.jobs.len())
            .filter(|&j| {
                matches!(self.jobs[j].state, JobState::Leased { deadline_ms, .. } if deadline_ms <= now)
            })
            .collect();
        for j in expired {
            if self.lose(j) {
                out.killed += 1;
            } else {
                out.expired += 1;
            }
        }
        for job in &mut self.jobs {
            if matches!(job.state, JobState::Failed { retry_at_ms } if retry_at_ms <= now) {
                job.state = JobState::Queued;
                out.promoted += 1;
            }
        }
        out
    }

    /// The node restarts: leases of its earlier incarnations died with it.
    fn restart(&mut self) {
        let prefix = format!("{NODE}#");
        let mine: Vec<usize> = (0..self.jobs.len())
            .filter(|&j| {
                matches!(&self.jobs[j].state, JobState::Leased { holder, .. } if holder.starts_with(&prefix))
            })
            .collect();
        for j in mine {
            self.lose(j);
        }
        self.incarnation += 1;
    }

    fn counts(&self) -> [u64; 6] {
        let mut out = [0u64; 6];
        for job in &self.jobs {
            out[job.state.name().index()] += 1;
        }
        out
    }
}

// ---------------------------------------------------------------- comparison

/// Everything the queue shows must equal the model.
fn check(q: &Queue, m: &Model, finals: &mut HashMap<JobId, JobState>, ctx: &str) {
    let all = q
        .list(&ListFilter {
            top_level: false,
            limit: usize::MAX,
            ..ListFilter::default()
        })
        .unwrap();
    assert_eq!(all.len(), m.jobs.len(), "{ctx}: number of jobs");
    let mut seen = HashSet::new();
    for rec in &all {
        assert!(seen.insert(rec.id), "{ctx}: job {} listed twice", rec.id);
        let Some(&j) = m.by_id.get(&rec.id) else {
            panic!("{ctx}: the queue holds a job the model never made: {rec:?}");
        };
        let mj = &m.jobs[j];
        let at = format!("{ctx}: job #{j} {}", rec.id);
        assert_eq!(rec.state, mj.state, "{at}: state");
        assert_eq!(rec.attempts, mj.attempts, "{at}: attempts");
        assert_eq!(rec.leases, mj.leases, "{at}: leases");
        assert_eq!(rec.lost, mj.lost, "{at}: lost");
        assert_eq!(rec.seq, mj.seq, "{at}: seq");
        assert_eq!(rec.priority, mj.priority, "{at}: priority");
        assert_eq!(rec.max_attempts, mj.max_attempts, "{at}: max_attempts");
        assert_eq!(rec.task, mj.task, "{at}: task");
        assert_eq!(rec.kind, JobKind::Noop, "{at}: kind");
        assert_eq!(rec.idempotency_key, mj.key, "{at}: idempotency key");
        assert_eq!(rec.parent, mj.parent.map(|p| m.jobs[p].id), "{at}: parent");
        assert_eq!(rec.children, mj.counts, "{at}: child counts");
        let view = rec.view();
        assert_eq!(view.state, mj.state.name(), "{at}: public state");
        if let Some(c) = mj.counts {
            assert_eq!(
                (
                    view.progress.done,
                    view.progress.failed,
                    view.progress.total
                ),
                (c.done, c.dead + c.cancelled, c.total),
                "{at}: progress"
            );
        }
        assert_eq!(
            rec.history.last().map(|t| t.state),
            Some(rec.state.name()),
            "{at}: the history ends in the current state"
        );
        assert_eq!(
            rec.finished_ms.is_some(),
            rec.state.is_terminal(),
            "{at}: finished_ms set exactly when finished"
        );
        if rec.state == JobState::Dead {
            assert!(rec.last_error.is_some(), "{at}: a dead job says why");
        }
        if rec.state.is_terminal() {
            let first = finals.entry(rec.id).or_insert_with(|| rec.state.clone());
            assert_eq!(*first, rec.state, "{at}: a finished job changed state");
        } else {
            assert!(
                !finals.contains_key(&rec.id),
                "{at}: a finished job came back"
            );
        }
        // Only completed leaves have a result, and it is the first one recorded.
        assert_eq!(q.result(rec.id).unwrap(), mj.result, "{at}: stored result");
        if !mj.children.is_empty() {
            let want: Vec<JobId> = mj.children.iter().map(|&c| m.jobs[c].id).collect();
            assert_eq!(q.children(rec.id).unwrap(), want, "{at}: children");
        }
    }
    let counts = q.counts().unwrap();
    assert_eq!(counts, m.counts(), "{ctx}: counts() vs model");
    assert_eq!(
        q.stats().by_state,
        counts,
        "{ctx}: stats().by_state vs counts()"
    );
    assert_eq!(
        q.queued_of(&myco_jobs::JobKind::ALL),
        counts[myco_runtime::queue::StateName::Queued.index()],
        "{ctx}: queued per kind vs counts()"
    );
    assert_eq!(q.holder(), m.holder(), "{ctx}: holder");
}

// ---------------------------------------------------------------- the driver

async fn run(ops: Vec<Op>, path: &Path) {
    let clock = Arc::new(ManualClock::new(START_MS));
    let mut q = Queue::open_with_clock(path, opts(), clock.clone()).unwrap();
    let mut m = Model::new();
    let mut finals = HashMap::new();
    let kinds = [JobKind::Noop];
    for (step, op) in ops.iter().enumerate() {
        let ctx = format!("step {step} {op:?}");
        match op {
            Op::Submit(specs) => {
                let jobs: Vec<NewJob> = specs
                    .iter()
                    .map(|s| {
                        // One spec per key: a key given another spec is a conflict
                        // (tested in queue.rs), not a return of the first job.
                        let task = match s.key {
                            Some(k) => Task::Noop(NoopTask {
                                payload: format!("keyed {k}"),
                                ..NoopTask::default()
                            }),
                            None => m.new_task(),
                        };
                        let children = (0..s.children).map(|_| m.new_task()).collect();
                        NewJob {
                            task,
                            priority: s.priority,
                            max_attempts: s.max_attempts,
                            timeout_ms: 1_000,
                            idempotency_key: s.key.map(|k| KEYS[k].to_owned()),
                            children,
                        }
                    })
                    .collect();
                let got = q.submit(jobs.clone()).await.unwrap();
                m.submit(&jobs, &got, &q);
            }
            Op::Lease {
                max,
                peer,
                lease_ms,
            } => {
                let lease = Duration::from_millis(*lease_ms);
                let (holder, got) = if *peer {
                    let got = q
                        .lease_to(PEER.into(), *max, &myco_jobs::Fit::local(&kinds), lease)
                        .await;
                    (PEER.to_owned(), got.unwrap())
                } else {
                    (m.holder(), q.lease(*max, &kinds, lease).await.unwrap())
                };
                let want = m.lease(&holder, *max, *lease_ms);
                let got: Vec<_> = got
                    .into_iter()
                    .map(|l| (l.id, l.token, l.attempt, l.deadline_ms, l.task))
                    .collect();
                let want: Vec<_> = want
                    .into_iter()
                    .map(|j| {
                        let job = &m.jobs[j];
                        let deadline = m.now + lease_ms;
                        (
                            job.id,
                            job.leases,
                            job.attempts + 1,
                            deadline,
                            job.task.clone(),
                        )
                    })
                    .collect();
                assert_eq!(got, want, "{ctx}: leases (priority, then FIFO)");
            }
            Op::Complete { pick, leased_only } => {
                let Some(j) = m.pick(pick, *leased_only) else {
                    continue;
                };
                let output = format!("out-{step}").into_bytes();
                let got = q.complete(m.jobs[j].id, output.clone()).await;
                match (m.complete(j, &output), got) {
                    (Some(want), Ok(got)) => assert_eq!(got, want, "{ctx}: complete"),
                    (None, Err(QueueError::Invalid(_))) => {}
                    (want, got) => panic!("{ctx}: complete: want {want:?}, got {got:?}"),
                }
            }
            Op::Fail {
                pick,
                leased_only,
                fatal,
                stale,
            } => {
                let Some(j) = m.pick(pick, *leased_only) else {
                    continue;
                };
                let leases = m.jobs[j].leases;
                let token = if *stale {
                    leases.saturating_sub(1)
                } else {
                    leases
                };
                let error = if *fatal {
                    JobError::fatal("bad spec")
                } else {
                    JobError::retryable("flaky")
                };
                let got = q.fail(m.jobs[j].id, token, error).await.unwrap();
                match (m.fail(j, token, *fatal), got) {
                    (MFail::Stale, FailOutcome::Stale) | (MFail::Dead, FailOutcome::Dead) => {}
                    (MFail::Retrying { attempts }, FailOutcome::Retrying { retry_at_ms }) => {
                        let (lo, hi) = opts().backoff_bounds(attempts);
                        assert!(
                            (m.now + lo..=m.now + hi).contains(&retry_at_ms),
                            "{ctx}: retry at {retry_at_ms} is not now {} + [{lo}, {hi}]",
                            m.now
                        );
                        m.jobs[j].state = JobState::Failed { retry_at_ms };
                    }
                    (want, got) => panic!("{ctx}: fail: want {want:?}, got {got:?}"),
                }
            }
            Op::Cancel(pick) => {
                let Some(j) = m.pick(pick, false) else {
                    continue;
                };
                let got = q.cancel(m.jobs[j].id).await.unwrap();
                assert_eq!(got, m.cancel(j), "{ctx}: cancel");
            }
            Op::Release { picks, stale } => {
                let mut leases = Vec::new();
                for pick in picks {
                    if let Some(j) = m.pick(pick, true) {
                        let t = m.jobs[j].leases;
                        leases.push((j, if *stale { t.saturating_sub(1) } else { t }));
                    }
                }
                if leases.is_empty() {
                    continue;
                }
                let real = leases.iter().map(|&(j, t)| (m.jobs[j].id, t)).collect();
                let got = q.release(real).await.unwrap();
                let want = leases.iter().filter(|&&(j, t)| m.release(j, t)).count();
                assert_eq!(got as usize, want, "{ctx}: released");
            }
            Op::Renew { pick, lease_ms } => {
                let Some(j) = m.pick(pick, true) else {
                    continue;
                };
                let leases = vec![(j, m.jobs[j].leases)];
                let real = vec![(m.jobs[j].id, m.jobs[j].leases)];
                let got = q
                    .renew(real, Duration::from_millis(*lease_ms))
                    .await
                    .unwrap();
                assert_eq!(got, m.renew(&leases, *lease_ms), "{ctx}: renew");
            }
            Op::Advance(ms) => {
                clock.advance(*ms);
                m.now += ms;
                let got = q.tick().await.unwrap();
                assert_eq!(got, m.tick(), "{ctx}: tick");
            }
            Op::Restart => {
                q.shutdown().await;
                drop(q);
                q = Queue::open_with_clock(path, opts(), clock.clone()).unwrap();
                m.restart();
            }
        }
        check(&q, &m, &mut finals, &ctx);
    }
    q.shutdown().await;
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn queue_matches_model(
        first in prop::collection::vec(submit_spec(), 1..=2),
        rest in prop::collection::vec(op(), 0..60),
    ) {
        // Start with some jobs, so the early operations have something to act on.
        let ops: Vec<Op> = std::iter::once(Op::Submit(first)).chain(rest).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.redb");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(ops, &path));
    }
}
