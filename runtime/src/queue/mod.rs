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
//!
//! This file is the public face ([`Queue`]: open, the async operations, the reads); the
//! writer thread and its protocol are in `writer.rs`, the transactions' logic in `store.rs`,
//! the records in `record.rs`, and [`QueueError`], [`QueueOptions`] with the clocks, and
//! [`QueueStats`] each in a file of their own.

mod error;
mod fault;
mod options;
mod record;
mod stats;
mod store;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use myco_jobs::{Fit, JobError, JobKind};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::{Notify, mpsc, oneshot};

pub use error::{ErrorClass, QueueError, StorageError};
pub use fault::FAULT_DISK_FULL_ENV;
pub use options::{
    Clock, INTERACTIVE_PRIORITY, ManualClock, QueueOptions, RETENTION_BATCH_MS,
    RETENTION_INTERACTIVE_MS, SystemClock,
};
pub use record::{
    ChildCounts, JobId, JobRecord, JobState, JobView, Progress, StateName, Submitter, Transition,
};
pub use stats::{Histogram, Minute, QueueStats, Recent};
use store::{
    CHILDREN, COUNTS, JOBS, META, META_INCARNATION, META_SEQ, OUTBOX, READY, RESULTS, Txn,
    TxnEffects,
};
pub use store::{
    CancelOutcome, CompleteOutcome, FailOutcome, JOB_FORMAT, Lease, NewJob, OUTBOX_FORMAT,
    OutboxEntry, QUEUE_FORMAT, RESULT_FORMAT, RetryOutcome, Submitted, TickOutcome, decode,
    decode_entry, result_body,
};
use writer::{Op, Shared, for_each_table, writer_loop};

/// The format of an existing queue file (`meta["format"]`; 0 for files from before formats
/// had versions, and for a new file).
fn file_format(db: &impl ReadableDatabase) -> Result<u64, QueueError> {
    let tx = db.begin_read()?;
    match tx.open_table(META) {
        Ok(meta) => Ok(meta
            .get(store::META_FORMAT)?
            .map(|v| v.value())
            .unwrap_or(0)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Refuse a queue file of a format newer than this build's.
fn check_format(path: &Path, format: u64) -> Result<(), QueueError> {
    crate::format::check(
        "the queue file",
        u16::try_from(format).unwrap_or(u16::MAX),
        0,
        store::QUEUE_FORMAT as u16,
    )
    .map_err(|e| {
        QueueError::Invalid(format!(
            "{}: {e}; the file is left as it was",
            path.display()
        ))
    })
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
        // A file of a newer format is refused before anything is written to it: read its
        // format without opening it for writing (a file that needs recovery, or that
        // another process holds, is checked below, once open).
        if path.exists()
            && let Ok(db) = redb::ReadOnlyDatabase::open(path)
        {
            check_format(path, file_format(&db)?)?;
        }
        let db = match fault::open_database(path, opts.disk_full_while.clone()) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(QueueError::Locked(path.to_path_buf()));
            }
            Err(e) => return Err(e.into()),
        };
        let db = Arc::new(db);
        let format = file_format(&*db)?;
        check_format(path, format)?;
        // The queue holds every prompt and answer: its owner's alone.
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
            }
        }
        // Create the tables, bump the incarnation, and hand back leases a previous run of
        // this node held: they died with it.
        let (incarnation, next_seq, by_state) = {
            let tx = db.begin_write()?;
            for_each_table(&tx)?;
            if format < store::QUEUE_FORMAT {
                let n = store::migrate(&tx, format)?;
                tracing::info!(
                    from = format,
                    to = store::QUEUE_FORMAT,
                    keys = n,
                    "upgraded the queue file's format (records are read as they are)"
                );
            }
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
            let indexed = {
                let meta = tx.open_table(META)?;
                meta.get(store::META_FINISHED_INDEX)?.is_some()
            };
            if !indexed {
                let n = txn.index_finished()?;
                if n > 0 {
                    tracing::info!(
                        n,
                        "indexed the finished jobs of an older queue file for retention"
                    );
                }
            }
            let counts = txn.effects.counts;
            drop(txn);
            if !indexed {
                tx.open_table(META)?.insert(store::META_FINISHED_INDEX, 1)?;
            }
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
            db: std::sync::RwLock::new(Some(db.clone())),
            path: path.to_path_buf(),
            disk_full_while: opts.disk_full_while.clone(),
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
            .map_err(|e| QueueError::Internal(format!("cannot start the queue writer: {e}")))?;
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
        self.submit_as(jobs, Submitter::Owner).await
    }

    /// [`Queue::submit`] for `submitter`: idempotency keys are scoped to it.
    pub async fn submit_as(
        &self,
        jobs: Vec<NewJob>,
        submitter: Submitter,
    ) -> Result<Vec<Submitted>, QueueError> {
        self.call(|r| Op::Submit(jobs, submitter, r)).await
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
        let tx = self.shared.db()?.begin_read()?;
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
        let tx = self.shared.db()?.begin_read()?;
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

    /// Queue a dead or cancelled job (or a parent's failed children) again with fresh
    /// attempts; see [`RetryOutcome`].
    pub async fn retry(&self, id: JobId) -> Result<RetryOutcome, QueueError> {
        self.call(|r| Op::Retry(id, r)).await
    }

    /// Submit an ended job again as a new job with the same task and children.
    pub async fn resubmit(&self, id: JobId, submitter: Submitter) -> Result<Submitted, QueueError> {
        self.call(|r| Op::Resubmit(id, submitter, r)).await
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
        let tx = self.shared.db()?.begin_read()?;
        let jobs = tx.open_table(JOBS)?;
        let got = jobs.get(u128::from(id))?;
        got.map(|v| store::decode(v.value())).transpose()
    }

    /// Jobs matching `filter`, newest first.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, QueueError> {
        let tx = self.shared.db()?.begin_read()?;
        let jobs = tx.open_table(JOBS)?;
        let matches = filter.matcher();
        let mut out = Vec::new();
        if let Some(parent) = filter.parent {
            let children = tx.open_table(CHILDREN)?;
            let p = u128::from(parent);
            for entry in children.range((p, 0)..=(p, u32::MAX))? {
                let id = entry?.1.value();
                if let Some(v) = jobs.get(id)? {
                    let rec = store::decode(v.value())?;
                    if matches(&rec) {
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
            if matches(&rec) {
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
        let tx = self.shared.db()?.begin_read()?;
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
        let tx = self.shared.db()?.begin_read()?;
        let results = tx.open_table(RESULTS)?;
        results
            .get(u128::from(id))?
            .map(|v| store::result_body(v.value()).map(<[u8]>::to_vec))
            .transpose()
    }

    /// The models of the `infer` jobs queued now (of the first `scan` ready jobs, best
    /// first), with how many wait for each: what an idle peer without the model could pull
    /// to take some of them.
    pub fn waiting_models(&self, scan: usize) -> Result<Vec<(String, u64, u64)>, QueueError> {
        let tx = self.shared.db()?.begin_read()?;
        let ready = tx.open_table(READY)?;
        let jobs = tx.open_table(JOBS)?;
        let mut counts: std::collections::BTreeMap<(String, u64), u64> = Default::default();
        for entry in ready.iter()?.take(scan) {
            let id = entry?.1.value();
            let Some(v) = jobs.get(id)? else { continue };
            let rec = store::decode(v.value())?;
            if let myco_jobs::Task::Infer(t) = &rec.task {
                *counts
                    .entry((t.model.name.clone(), t.model.bytes))
                    .or_default() += 1;
            }
        }
        Ok(counts.into_iter().map(|((n, b), c)| (n, b, c)).collect())
    }

    /// Exact job counts per state, as committed.
    pub fn counts(&self) -> Result<[u64; 6], QueueError> {
        let tx = self.shared.db()?.begin_read()?;
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
    /// Only jobs whose id or description contains this (ignoring case).
    pub text: Option<String>,
    pub limit: usize,
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            state: None,
            kind: None,
            parent: None,
            top_level: true,
            text: None,
            limit: 100,
        }
    }
}

impl ListFilter {
    /// A matcher with the text lowercased once, not once per record.
    fn matcher(&self) -> impl Fn(&JobRecord) -> bool + '_ {
        let text = self.text.as_deref().map(str::to_lowercase);
        move |rec| {
            self.state.is_none_or(|s| rec.state.name() == s)
                && self.kind.is_none_or(|k| rec.kind == k)
                && (self.parent.is_some() || !self.top_level || rec.parent.is_none())
                && text.as_deref().is_none_or(|t| {
                    rec.id.to_string().to_lowercase().contains(t)
                        || rec.task.describe().to_lowercase().contains(t)
                })
        }
    }
}
