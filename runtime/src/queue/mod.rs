//! The durable job queue: one redb file, one writer thread doing **group commit**.
//!
//! Every state change goes through [`Queue`]'s async methods, which send an operation to the
//! writer thread and await its reply. The writer takes whatever operations are waiting (up to
//! [`QueueOptions::max_batch`]), applies them all in one write transaction, commits it with
//! one fsync, and only then replies to each caller. So a reply always means "durable", and
//! throughput is not bound by one fsync per job.
//!
//! Reads (`get`, `list`, `result`) use redb read transactions (MVCC snapshots) and never wait
//! for the writer. The queue knows nothing of actors or HTTP.

mod record;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use myco_jobs::{Fit, JobError, JobKind};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::{Notify, mpsc, oneshot};

pub use record::{
    ChildCounts, JobId, JobRecord, JobState, JobView, Progress, StateName, Transition,
};
use store::{
    CHILDREN, COUNTS, DELAYED, IDEMPOTENCY, JOBS, LEASES, META, META_INCARNATION, META_SEQ, OUTBOX,
    READY, RESULTS, Txn, TxnEffects,
};
pub use store::{
    CancelOutcome, CompleteOutcome, FailOutcome, Lease, NewJob, OutboxEntry, Submitted, TickOutcome,
};

/// Errors from the queue. Storage and corruption errors are the node's problem, the others
/// the caller's.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "the queue at {0} is in use by another myco process; stop it, or use `myco submit` to talk to the running node, or pick another --home"
    )]
    Locked(PathBuf),
    #[error("no job {0}")]
    NotFound(JobId),
    #[error("{0}")]
    Invalid(String),
    #[error("queue storage error: {0}")]
    Storage(#[from] redb::Error),
    #[error("the queue holds a record it cannot read ({0}); restore from backup or report a bug")]
    Corrupt(String),
    #[error("the queue is shut down")]
    Closed,
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for QueueError {
            fn from(e: $t) -> Self {
                QueueError::Storage(e.into())
            }
        }
    )*};
}
storage_from!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError
);

/// Milliseconds since the Unix epoch; injectable for tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> u64;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        ManualClock(AtomicU64::new(start_ms))
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Tuning. Defaults suit a node; tests shorten the times.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// This node's name; its leases are named `NAME#INCARNATION`.
    pub node: String,
    /// First retry delay; doubled per failed attempt, with ±25 % jitter.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// A job whose lease expires more often than this is dead (it may be killing its nodes).
    pub max_lost: u32,
    /// Most operations in one commit.
    pub max_batch: usize,
    /// Bound of the channel into the writer.
    pub channel: usize,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            node: "local".into(),
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            max_lost: 10,
            max_batch: 8_192,
            channel: 16_384,
        }
    }
}

impl QueueOptions {
    /// The retry delay after `attempts` failed attempts, jittered.
    pub fn backoff_ms(&self, attempts: u32) -> u64 {
        let (lo, hi) = self.backoff_bounds(attempts);
        fastrand::u64(lo..=hi)
    }

    /// The bounds of [`backoff_ms`](Self::backoff_ms).
    pub fn backoff_bounds(&self, attempts: u32) -> (u64, u64) {
        let exp = attempts.saturating_sub(1).min(30);
        let base = self
            .backoff_base_ms
            .saturating_mul(1u64 << exp)
            .min(self.backoff_max_ms);
        (base - base / 4, base + base / 4)
    }
}

/// Counters kept by the writer for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    /// Jobs per public state (exact, from the `counts` table).
    pub by_state: [u64; 6],
    /// Queued jobs per kind (counted from the ready table at open, then kept in step).
    pub queued_by_kind: HashMap<JobKind, u64>,
    /// Jobs finished since start, per (kind, final state).
    pub finished: HashMap<(JobKind, StateName), u64>,
    /// Submit-to-done latency since start, per kind.
    pub latency: HashMap<JobKind, Histogram>,
    /// Failed attempts since start, per kind (retried or not).
    pub failed_attempts: HashMap<JobKind, u64>,
    pub commits: u64,
    pub ops: u64,
}

/// A fixed-bucket latency histogram (milliseconds), Prometheus style: cumulative on export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Counts per bucket of [`Histogram::BOUNDS_MS`], plus one for +Inf.
    pub buckets: [u64; 13],
    pub sum_ms: u64,
    pub count: u64,
}

impl Histogram {
    pub const BOUNDS_MS: [u64; 12] = [
        5, 25, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
    ];

    pub fn observe(&mut self, ms: u64) {
        let i = Self::BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(Self::BOUNDS_MS.len());
        self.buckets[i] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }
}

type Reply = Box<dyn FnOnce(Option<&QueueError>) + Send>;

enum Op {
    Submit(
        Vec<NewJob>,
        oneshot::Sender<Result<Vec<Submitted>, QueueError>>,
    ),
    Lease {
        holder: String,
        max: usize,
        fit: Fit,
        lease_ms: u64,
        reply: oneshot::Sender<Result<Vec<Lease>, QueueError>>,
    },
    Complete(
        JobId,
        Vec<u8>,
        oneshot::Sender<Result<CompleteOutcome, QueueError>>,
    ),
    Fail(
        JobId,
        u64,
        JobError,
        oneshot::Sender<Result<FailOutcome, QueueError>>,
    ),
    Release(Vec<(JobId, u64)>, oneshot::Sender<Result<u32, QueueError>>),
    Renew {
        holder: String,
        leases: Vec<(JobId, u64)>,
        lease_ms: u64,
        /// `Some(grace)`: the list is complete; reclaim the holder's older unlisted leases.
        complete: Option<u64>,
        reply: oneshot::Sender<Result<Vec<JobId>, QueueError>>,
    },
    Cancel(JobId, oneshot::Sender<Result<CancelOutcome, QueueError>>),
    Tick(oneshot::Sender<Result<TickOutcome, QueueError>>),
    OutboxPut(JobId, OutboxEntry, oneshot::Sender<Result<(), QueueError>>),
    OutboxRemove(Vec<JobId>, oneshot::Sender<Result<u32, QueueError>>),
    Shutdown(oneshot::Sender<()>),
}

struct Shared {
    db: Arc<Database>,
    path: PathBuf,
    clock: Arc<dyn Clock>,
    holder: String,
    ready: Notify,
    /// Jobs finished (done, dead or cancelled) in the last commit.
    finished: Notify,
    stats: Mutex<QueueStats>,
}

/// A handle on the durable queue. Cheap to clone; the writer thread stops when
/// [`Queue::shutdown`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Op>,
    writer: Arc<WriterHandle>,
}

/// Joins the writer thread when the last handle goes, so that the file is closed (and can
/// be opened again) once the last `Queue` is dropped.
struct WriterHandle {
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        // Every `Queue` clone is gone; this is the last sender. Closing it ends the writer
        // after it has committed what it holds.
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("path", &self.shared.path)
            .field("holder", &self.shared.holder)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Open (or create) the queue file, recover this node's stale leases, start the writer.
    pub fn open(path: &Path, opts: QueueOptions) -> Result<Queue, QueueError> {
        Self::open_with_clock(path, opts, Arc::new(SystemClock))
    }

    pub fn open_with_clock(
        path: &Path,
        opts: QueueOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Queue, QueueError> {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(QueueError::Locked(path.to_path_buf()));
            }
            Err(e) => return Err(e.into()),
        };
        let db = Arc::new(db);
        // Create the tables, bump the incarnation, and hand back leases a previous run of
        // this node held: they died with it.
        let (incarnation, next_seq, by_state) = {
            let tx = db.begin_write()?;
            for_each_table(&tx)?;
            let (inc, seq) = {
                let mut meta = tx.open_table(META)?;
                let inc = meta.get(META_INCARNATION)?.map(|v| v.value()).unwrap_or(0) + 1;
                meta.insert(META_INCARNATION, inc)?;
                let seq = meta.get(META_SEQ)?.map(|v| v.value()).unwrap_or(0);
                (inc, seq)
            };
            let mut next_seq = seq;
            let mut ids = ulid::Generator::new();
            let mut txn = Txn {
                t: store::Tables::open(&tx)?,
                ids: &mut ids,
                now_ms: clock.now_ms(),
                opts: &opts,
                next_seq: &mut next_seq,
                effects: TxnEffects::default(),
            };
            let recovered = txn.recover_local(&opts.node)?;
            let counts = txn.effects.counts;
            drop(txn);
            store::apply_counts(&tx, &counts)?;
            tx.open_table(META)?.insert(META_SEQ, next_seq)?;
            if recovered > 0 {
                tracing::info!(
                    recovered,
                    "requeued jobs leased by this node before it stopped"
                );
            }
            let mut by_state = [0u64; 6];
            {
                let counts = tx.open_table(COUNTS)?;
                for (i, slot) in by_state.iter_mut().enumerate() {
                    *slot = counts.get(i as u8)?.map(|v| v.value()).unwrap_or(0);
                }
            }
            let queued_by_kind = store::queued_by_kind(&tx)?;
            tx.commit()?;
            (inc, next_seq, (by_state, queued_by_kind))
        };
        let (by_state, queued_by_kind) = by_state;
        let holder = format!("{}#{incarnation}", opts.node);
        let shared = Arc::new(Shared {
            db: db.clone(),
            path: path.to_path_buf(),
            clock,
            holder,
            ready: Notify::new(),
            finished: Notify::new(),
            stats: Mutex::new(QueueStats {
                by_state,
                queued_by_kind,
                ..QueueStats::default()
            }),
        });
        let (tx, rx) = mpsc::channel(opts.channel.max(1));
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("myco-queue-writer".into())
            .spawn(move || writer_loop(writer_shared, opts, rx, next_seq))
            .map_err(|e| QueueError::Invalid(format!("cannot start the queue writer: {e}")))?;
        Ok(Queue {
            shared,
            tx: tx.clone(),
            writer: Arc::new(WriterHandle {
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(writer)),
            }),
        })
    }

    /// The name this process leases under: `NODE#INCARNATION`.
    pub fn holder(&self) -> &str {
        &self.shared.holder
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    pub fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    /// Resolves when jobs may have become ready (submitted, retried, released, expired)
    /// since the last call. Meant for one waiter, the node's coordinator.
    pub async fn ready(&self) {
        self.shared.ready.notified().await
    }

    /// Resolves after a commit that finished jobs (any jobs: check the one you wait for).
    /// Create it, `enable` it, then check, so that no commit in between is missed.
    pub fn finished(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.finished.notified()
    }

    /// Jobs queued now whose kind is one of `kinds`.
    pub fn queued_of(&self, kinds: &[JobKind]) -> u64 {
        self.shared.stats.lock().map_or(0, |s| {
            kinds
                .iter()
                .map(|k| s.queued_by_kind.get(k).copied().unwrap_or(0))
                .sum()
        })
    }

    pub fn stats(&self) -> QueueStats {
        self.shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, QueueError>>) -> Op,
    ) -> Result<T, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Durably enqueue jobs (with their children). Idempotency keys that match an earlier
    /// job return that job's id with `created: false`.
    pub async fn submit(&self, jobs: Vec<NewJob>) -> Result<Vec<Submitted>, QueueError> {
        self.call(|r| Op::Submit(jobs, r)).await
    }

    /// Lease up to `max` jobs of `kinds` to this node's holder.
    pub async fn lease(
        &self,
        max: usize,
        kinds: &[JobKind],
        lease: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let holder = self.shared.holder.clone();
        self.lease_to(holder, max, &Fit::local(kinds), lease).await
    }

    /// Lease up to `max` jobs that `fit` accepts to a named holder (a peer, in the swarm).
    pub async fn lease_to(
        &self,
        holder: String,
        max: usize,
        fit: &Fit,
        lease: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let fit = fit.clone();
        let lease_ms = lease.as_millis() as u64;
        self.call(|reply| Op::Lease {
            holder,
            max,
            fit,
            lease_ms,
            reply,
        })
        .await
    }

    pub async fn complete(
        &self,
        id: JobId,
        output: Vec<u8>,
    ) -> Result<CompleteOutcome, QueueError> {
        self.call(|r| Op::Complete(id, output, r)).await
    }

    pub async fn fail(
        &self,
        id: JobId,
        token: u64,
        error: JobError,
    ) -> Result<FailOutcome, QueueError> {
        self.call(|r| Op::Fail(id, token, error, r)).await
    }

    /// Queue a result for the next commit without waiting for it. For workers: the lease
    /// protects the job until the commit lands, and nobody is told before it does.
    pub async fn complete_detached(&self, id: JobId, output: Vec<u8>) -> Result<(), QueueError> {
        let (reply, _) = oneshot::channel();
        self.tx
            .send(Op::Complete(id, output, reply))
            .await
            .map_err(|_| QueueError::Closed)
    }

    /// Queue a failed attempt for the next commit without waiting for it.
    pub async fn fail_detached(
        &self,
        id: JobId,
        token: u64,
        error: JobError,
    ) -> Result<(), QueueError> {
        let (reply, _) = oneshot::channel();
        self.tx
            .send(Op::Fail(id, token, error, reply))
            .await
            .map_err(|_| QueueError::Closed)
    }

    /// Keep the outcome of another node's job durably until its owner acknowledges it.
    pub async fn outbox_put(&self, id: JobId, entry: OutboxEntry) -> Result<(), QueueError> {
        self.call(|r| Op::OutboxPut(id, entry, r)).await
    }

    /// Forget outbox entries their owner has acknowledged.
    pub async fn outbox_remove(&self, ids: Vec<JobId>) -> Result<u32, QueueError> {
        self.call(|r| Op::OutboxRemove(ids, r)).await
    }

    /// Up to `limit` outbox entries, oldest job first.
    pub fn outbox(&self, limit: usize) -> Result<Vec<(JobId, OutboxEntry)>, QueueError> {
        let tx = self.shared.db.begin_read()?;
        let table = tx.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for entry in table.iter()?.take(limit) {
            let (k, v) = entry?;
            out.push((JobId::from(k.value()), store::decode_entry(v.value())?));
        }
        Ok(out)
    }

    /// How many outcomes wait in the outbox.
    pub fn outbox_len(&self) -> Result<u64, QueueError> {
        let tx = self.shared.db.begin_read()?;
        Ok(tx.open_table(OUTBOX)?.len()?)
    }

    /// Give leased jobs back without counting an attempt; returns how many were still held.
    pub async fn release(&self, leases: Vec<(JobId, u64)>) -> Result<u32, QueueError> {
        self.call(|r| Op::Release(leases, r)).await
    }

    /// Extend this node's leases; returns the ids it no longer holds.
    pub async fn renew(
        &self,
        leases: Vec<(JobId, u64)>,
        lease: Duration,
    ) -> Result<Vec<JobId>, QueueError> {
        let holder = self.shared.holder.clone();
        let lease_ms = lease.as_millis() as u64;
        self.call(|reply| Op::Renew {
            holder,
            leases,
            lease_ms,
            complete: None,
            reply,
        })
        .await
    }

    /// Extend a named holder's leases (a peer's, in the swarm); returns the ids it no
    /// longer holds. With `complete = Some(grace)` the list is everything the holder holds
    /// here, and its unlisted leases older than `grace` are queued again (a grant that
    /// never reached it).
    pub async fn renew_as(
        &self,
        holder: String,
        leases: Vec<(JobId, u64)>,
        lease: Duration,
        complete: Option<Duration>,
    ) -> Result<Vec<JobId>, QueueError> {
        let lease_ms = lease.as_millis() as u64;
        let complete = complete.map(|g| g.as_millis() as u64);
        self.call(|reply| Op::Renew {
            holder,
            leases,
            lease_ms,
            complete,
            reply,
        })
        .await
    }

    pub async fn cancel(&self, id: JobId) -> Result<CancelOutcome, QueueError> {
        self.call(|r| Op::Cancel(id, r)).await
    }

    /// Expire overdue leases and requeue jobs whose retry time has come.
    pub async fn tick(&self) -> Result<TickOutcome, QueueError> {
        self.call(Op::Tick).await
    }

    /// Stop the writer after it has committed everything sent before this call, and wait
    /// for it. Later calls on any handle fail with [`QueueError::Closed`].
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Op::Shutdown(reply)).await.is_ok() {
            let _ = rx.await;
        }
        let handle = self.writer.thread.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    // ---- reads: MVCC snapshots, never blocked by the writer ----

    pub fn get(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        let tx = self.shared.db.begin_read()?;
        let jobs = tx.open_table(JOBS)?;
        let got = jobs.get(u128::from(id))?;
        got.map(|v| store::decode(v.value())).transpose()
    }

    /// Jobs matching `filter`, newest first.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, QueueError> {
        let tx = self.shared.db.begin_read()?;
        let jobs = tx.open_table(JOBS)?;
        let mut out = Vec::new();
        if let Some(parent) = filter.parent {
            let children = tx.open_table(CHILDREN)?;
            let p = u128::from(parent);
            for entry in children.range((p, 0)..=(p, u32::MAX))? {
                let id = entry?.1.value();
                if let Some(v) = jobs.get(id)? {
                    let rec = store::decode(v.value())?;
                    if filter.matches(&rec) {
                        out.push(rec);
                    }
                }
                if out.len() >= filter.limit {
                    break;
                }
            }
            return Ok(out);
        }
        for entry in jobs.iter()?.rev() {
            let (_, v) = entry?;
            let rec = store::decode(v.value())?;
            if filter.matches(&rec) {
                out.push(rec);
                if out.len() >= filter.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The ids of a parent's children, in order.
    pub fn children(&self, parent: JobId) -> Result<Vec<JobId>, QueueError> {
        let tx = self.shared.db.begin_read()?;
        let children = tx.open_table(CHILDREN)?;
        let p = u128::from(parent);
        let mut out = Vec::new();
        for entry in children.range((p, 0)..=(p, u32::MAX))? {
            out.push(JobId::from(entry?.1.value()));
        }
        Ok(out)
    }

    /// A leaf job's stored result (JSON Lines), if it is done.
    pub fn result(&self, id: JobId) -> Result<Option<Vec<u8>>, QueueError> {
        let tx = self.shared.db.begin_read()?;
        let results = tx.open_table(RESULTS)?;
        Ok(results.get(u128::from(id))?.map(|v| v.value().to_vec()))
    }

    /// Exact job counts per state, as committed.
    pub fn counts(&self) -> Result<[u64; 6], QueueError> {
        let tx = self.shared.db.begin_read()?;
        let counts = tx.open_table(COUNTS)?;
        let mut out = [0u64; 6];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = counts.get(i as u8)?.map(|v| v.value()).unwrap_or(0);
        }
        Ok(out)
    }
}

/// Which jobs [`Queue::list`] returns.
#[derive(Debug, Clone)]
pub struct ListFilter {
    pub state: Option<StateName>,
    pub kind: Option<JobKind>,
    pub parent: Option<JobId>,
    /// Leave out children (jobs with a parent), unless `parent` is set.
    pub top_level: bool,
    pub limit: usize,
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            state: None,
            kind: None,
            parent: None,
            top_level: true,
            limit: 100,
        }
    }
}

impl ListFilter {
    fn matches(&self, rec: &JobRecord) -> bool {
        self.state.is_none_or(|s| rec.state.name() == s)
            && self.kind.is_none_or(|k| rec.kind == k)
            && (self.parent.is_some() || !self.top_level || rec.parent.is_none())
    }
}

fn for_each_table(tx: &redb::WriteTransaction) -> Result<(), QueueError> {
    tx.open_table(JOBS)?;
    tx.open_table(READY)?;
    tx.open_table(DELAYED)?;
    tx.open_table(LEASES)?;
    tx.open_table(IDEMPOTENCY)?;
    tx.open_table(CHILDREN)?;
    tx.open_table(RESULTS)?;
    tx.open_table(META)?;
    tx.open_table(COUNTS)?;
    tx.open_table(OUTBOX)?;
    Ok(())
}

/// The writer thread: take every waiting operation, apply them in one transaction, commit
/// once, then reply to each.
fn writer_loop(shared: Arc<Shared>, opts: QueueOptions, mut rx: mpsc::Receiver<Op>, seq: u64) {
    let mut next_seq = seq;
    let mut ids = ulid::Generator::new();
    let mut batch: Vec<Op> = Vec::with_capacity(opts.max_batch);
    loop {
        let Some(first) = rx.blocking_recv() else {
            return;
        };
        batch.push(first);
        while batch.len() < opts.max_batch {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut stop: Option<oneshot::Sender<()>> = None;
        let ops = batch.len() as u64;
        let seq_before = next_seq;
        let result = apply_batch(
            &shared,
            &opts,
            &mut batch,
            &mut next_seq,
            &mut ids,
            &mut stop,
        );
        let (replies, effects, err) = match result {
            (replies, Ok(effects)) => (replies, Some(effects), None),
            (replies, Err(e)) => {
                tracing::error!(error = %e, "queue commit failed; the batch was rolled back");
                next_seq = seq_before;
                (replies, None, Some(e))
            }
        };
        if let Some(effects) = effects {
            if let Ok(mut stats) = shared.stats.lock() {
                for (i, d) in effects.counts.iter().enumerate() {
                    stats.by_state[i] = stats.by_state[i].saturating_add_signed(*d);
                }
                for (kind, d) in &effects.queued {
                    let n = stats.queued_by_kind.entry(*kind).or_default();
                    *n = n.saturating_add_signed(*d);
                }
                for (kind, state, latency) in &effects.finished {
                    *stats.finished.entry((*kind, *state)).or_default() += 1;
                    if *state == StateName::Done {
                        stats.latency.entry(*kind).or_default().observe(*latency);
                    }
                }
                for kind in &effects.failures {
                    *stats.failed_attempts.entry(*kind).or_default() += 1;
                }
                stats.commits += 1;
                stats.ops += ops;
            }
            if effects.ready {
                shared.ready.notify_waiters();
            }
            if !effects.finished.is_empty() {
                shared.finished.notify_waiters();
            }
        }
        for reply in replies {
            reply(err.as_ref());
        }
        if let Some(stop) = stop {
            let _ = stop.send(());
            rx.close();
            // Fail whatever raced in behind the shutdown: dropping the ops drops their
            // reply senders, so their callers see `Closed`.
            while rx.blocking_recv().is_some() {}
            return;
        }
    }
}

fn respond<T: Send + 'static>(
    reply: oneshot::Sender<Result<T, QueueError>>,
    result: Result<T, QueueError>,
) -> Reply {
    Box::new(move |commit_err: Option<&QueueError>| {
        let out = match commit_err {
            Some(e) => Err(QueueError::Invalid(format!("commit failed: {e}"))),
            None => result,
        };
        let _ = reply.send(out);
    })
}

type Applied = (Vec<Reply>, Result<TxnEffects, QueueError>);

fn apply_batch(
    shared: &Shared,
    opts: &QueueOptions,
    batch: &mut Vec<Op>,
    next_seq: &mut u64,
    ids: &mut ulid::Generator,
    stop: &mut Option<oneshot::Sender<()>>,
) -> Applied {
    let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
    let tx = match shared.db.begin_write() {
        Ok(tx) => tx,
        Err(e) => {
            let e = QueueError::from(e);
            for op in batch.drain(..) {
                replies.push(fail_op(op, &e, stop));
            }
            return (replies, Err(e));
        }
    };
    let tables = match store::Tables::open(&tx) {
        Ok(t) => t,
        Err(e) => {
            for op in batch.drain(..) {
                replies.push(fail_op(op, &e, stop));
            }
            return (replies, Err(e));
        }
    };
    let mut txn = Txn {
        t: tables,
        ids,
        now_ms: shared.clock.now_ms(),
        opts,
        next_seq,
        effects: TxnEffects::default(),
    };
    let mut fatal: Option<QueueError> = None;
    for op in batch.drain(..) {
        if let Some(e) = &fatal {
            replies.push(fail_op(op, e, stop));
            continue;
        }
        // A storage or corruption error poisons the transaction; any other error is the
        // operation's own and changed nothing.
        macro_rules! run {
            ($reply:expr, $e:expr) => {{
                let r = $e;
                if let Err(e @ (QueueError::Storage(_) | QueueError::Corrupt(_))) = &r {
                    fatal = Some(QueueError::Invalid(e.to_string()));
                }
                replies.push(respond($reply, r));
            }};
        }
        match op {
            Op::Submit(jobs, reply) => run!(reply, {
                let mut out = Vec::with_capacity(jobs.len());
                let mut r = Ok(());
                for job in jobs {
                    match txn.submit(job) {
                        Ok(s) => out.push(s),
                        Err(e) => {
                            r = Err(e);
                            break;
                        }
                    }
                }
                r.map(|()| out)
            }),
            Op::Lease {
                holder,
                max,
                fit,
                lease_ms,
                reply,
            } => run!(reply, txn.lease(&holder, max, &fit, lease_ms)),
            Op::Complete(id, output, reply) => run!(reply, txn.complete(id, &output)),
            Op::Fail(id, token, error, reply) => run!(reply, txn.fail(id, token, &error)),
            Op::Release(leases, reply) => run!(reply, {
                let mut n = 0;
                let mut r = Ok(());
                for (id, token) in leases {
                    match txn.release(id, token) {
                        Ok(true) => n += 1,
                        Ok(false) => {}
                        Err(e) => {
                            r = Err(e);
                            break;
                        }
                    }
                }
                r.map(|()| n)
            }),
            Op::Renew {
                holder,
                leases,
                lease_ms,
                complete,
                reply,
            } => run!(reply, {
                let lost = txn.renew(&holder, &leases, lease_ms);
                match (lost, complete) {
                    (Ok(lost), Some(grace)) => txn
                        .reclaim_unlisted(&holder, &leases, lease_ms, grace)
                        .map(|_| lost),
                    (other, _) => other,
                }
            }),
            Op::Cancel(id, reply) => run!(reply, txn.cancel(id)),
            Op::Tick(reply) => run!(reply, txn.tick()),
            Op::OutboxPut(id, entry, reply) => run!(reply, txn.outbox_put(id, &entry)),
            Op::OutboxRemove(ids, reply) => run!(reply, txn.outbox_remove(&ids)),
            Op::Shutdown(reply) => *stop = Some(reply),
        }
    }
    let effects = std::mem::take(&mut txn.effects);
    let seq = *txn.next_seq;
    drop(txn);
    let finish = || -> Result<(), QueueError> {
        if let Some(e) = fatal {
            return Err(e);
        }
        store::apply_counts(&tx, &effects.counts)?;
        tx.open_table(META)?.insert(META_SEQ, seq)?;
        tx.commit()?;
        Ok(())
    };
    (replies, finish().map(|()| effects))
}

/// Reply to an operation that never ran because its transaction failed.
fn fail_op(op: Op, e: &QueueError, stop: &mut Option<oneshot::Sender<()>>) -> Reply {
    fn err<T>(e: &QueueError) -> Result<T, QueueError> {
        Err(QueueError::Invalid(format!("commit failed: {e}")))
    }
    match op {
        Op::Submit(_, r) => respond(r, err(e)),
        Op::Lease { reply, .. } => respond(reply, err(e)),
        Op::Complete(_, _, r) => respond(r, err(e)),
        Op::Fail(_, _, _, r) => respond(r, err(e)),
        Op::Release(_, r) => respond(r, err(e)),
        Op::Renew { reply, .. } => respond(reply, err(e)),
        Op::Cancel(_, r) => respond(r, err(e)),
        Op::Tick(r) => respond(r, err(e)),
        Op::OutboxPut(_, _, r) => respond(r, err(e)),
        Op::OutboxRemove(_, r) => respond(r, err(e)),
        Op::Shutdown(r) => {
            *stop = Some(r);
            Box::new(|_| ())
        }
    }
}
