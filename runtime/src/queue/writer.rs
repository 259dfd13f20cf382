//! The writer thread and its protocol: the operations callers send ([`Op`]), the state the
//! writer shares with readers ([`Shared`]), and the loop that applies every waiting operation
//! in one write transaction, commits once, then replies to each (group commit).
//!
//! Only [`super::Queue`] talks to it; nothing here is public outside the queue.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use myco_jobs::{Fit, JobError};
use redb::Database;
use tokio::sync::{Notify, mpsc, oneshot};

use super::error::{QueueError, StorageError};
use super::options::{Clock, QueueOptions};
use super::record::{JobId, StateName, Submitter};
use super::stats::QueueStats;
use super::store::{
    self, CHILDREN, COUNTS, CancelOutcome, CompleteOutcome, DELAYED, FINISHED, FailOutcome,
    IDEMPOTENCY, JOBS, LEASES, Lease, META, META_SEQ, NewJob, OUTBOX, OutboxEntry, READY, RESULTS,
    RetryOutcome, Submitted, TickOutcome, Txn, TxnEffects,
};

pub(super) type Reply = Box<dyn FnOnce(Option<&QueueError>) + Send>;

pub(super) enum Op {
    Submit(
        Vec<NewJob>,
        Submitter,
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
    Retry(JobId, oneshot::Sender<Result<RetryOutcome, QueueError>>),
    Resubmit(
        JobId,
        Submitter,
        oneshot::Sender<Result<Submitted, QueueError>>,
    ),
    Tick(oneshot::Sender<Result<TickOutcome, QueueError>>),
    OutboxPut(JobId, OutboxEntry, oneshot::Sender<Result<(), QueueError>>),
    OutboxRemove(Vec<JobId>, oneshot::Sender<Result<u32, QueueError>>),
    Shutdown(oneshot::Sender<()>),
}

pub(super) struct Shared {
    /// The open file; `None` only while the writer reopens it after a storage error.
    pub(super) db: RwLock<Option<Arc<Database>>>,
    pub(super) path: PathBuf,
    pub(super) disk_full_while: Option<PathBuf>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) holder: String,
    pub(super) ready: Notify,
    /// Jobs finished (done, dead or cancelled) in the last commit.
    pub(super) finished: Notify,
    pub(super) stats: Mutex<QueueStats>,
}

impl Shared {
    /// The database, for one transaction.
    pub(super) fn db(&self) -> Result<Arc<Database>, QueueError> {
        self.db.read().ok().and_then(|g| g.clone()).ok_or_else(|| {
            QueueError::Storage(StorageError::other(
                "the queue file is being reopened after a storage error; retry",
            ))
        })
    }

    /// Close and open the file again. After an I/O error (a full disk) redb refuses every
    /// later operation (`PreviousIo`) until the database is reopened; reopening runs its
    /// repair from the last durable commit. Waits a moment for readers to let go of the
    /// old handle, as redb's file lock would refuse the new one.
    fn reopen(&self) -> Result<(), QueueError> {
        let mut g = self
            .db
            .write()
            .map_err(|_| QueueError::Internal("the queue's database lock is poisoned".into()))?;
        if let Some(mut old) = g.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still) if Instant::now() < deadline => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(still) => {
                        *g = Some(still);
                        return Err(QueueError::Storage(StorageError::other(
                            "readers still hold the queue file; will reopen later",
                        )));
                    }
                }
            }
        }
        let db = super::fault::open_database(&self.path, self.disk_full_while.clone())?;
        *g = Some(Arc::new(db));
        tracing::info!(path = %self.path.display(), "reopened the queue file after a storage error");
        Ok(())
    }
}

pub(super) fn for_each_table(tx: &redb::WriteTransaction) -> Result<(), QueueError> {
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
    tx.open_table(FINISHED)?;
    Ok(())
}

/// The writer thread: take every waiting operation, apply them in one transaction, commit
/// once, then reply to each.
pub(super) fn writer_loop(
    shared: Arc<Shared>,
    opts: QueueOptions,
    mut rx: mpsc::Receiver<Op>,
    seq: u64,
) {
    let mut next_seq = seq;
    let mut ids = ulid::Generator::new();
    let mut batch: Vec<Op> = Vec::with_capacity(opts.max_batch);
    // After a storage error that leaves redb refusing everything until reopened.
    let mut reopen = false;
    loop {
        let Some(first) = rx.blocking_recv() else {
            return;
        };
        batch.push(first);
        if reopen {
            match shared.reopen() {
                Ok(()) => reopen = false,
                Err(e) => {
                    tracing::warn!(error = %e, "reopening the queue file failed; the next commit tries again")
                }
            }
        }
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
                if let QueueError::Storage(s) = &e {
                    reopen |= s.needs_reopen();
                    if s.is_disk_full() {
                        tracing::error!(error = %e, "queue commit failed: the disk is full; nothing of the batch was recorded, callers were told to retry; free space and it recovers");
                    } else {
                        tracing::error!(error = %e, "queue commit failed; the batch was rolled back");
                    }
                } else {
                    tracing::error!(error = %e, "queue commit failed; the batch was rolled back");
                }
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
                for f in &effects.finished {
                    *stats.finished.entry((f.kind, f.state)).or_default() += 1;
                    if f.state == StateName::Done {
                        stats
                            .latency
                            .entry(f.kind)
                            .or_default()
                            .observe(f.latency_ms);
                    }
                    stats
                        .recent
                        .observe(f.at_ms, f.state, f.latency_ms, f.holder.as_deref());
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
        // A failed commit fails every operation in it with its cause: what the operation
        // alone decided (a refusal) was rolled back with the rest.
        let out = match commit_err {
            Some(e) => Err(e.clone()),
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
    let tx = match shared
        .db()
        .and_then(|db| db.begin_write().map_err(QueueError::from))
    {
        Ok(tx) => tx,
        Err(e) => {
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
                if let Err(e) = &r
                    && e.poisons()
                {
                    fatal = Some(e.clone());
                }
                replies.push(respond($reply, r));
            }};
        }
        match op {
            Op::Submit(jobs, submitter, reply) => run!(reply, {
                let mut out = Vec::with_capacity(jobs.len());
                let mut r = txn.check_keys(&jobs, submitter);
                for job in jobs.into_iter().take_while(|_| r.is_ok()) {
                    match txn.submit(job, submitter) {
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
            Op::Retry(id, reply) => run!(reply, txn.retry(id)),
            Op::Resubmit(id, submitter, reply) => run!(reply, txn.resubmit(id, submitter)),
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
        Err(e.clone())
    }
    match op {
        Op::Submit(_, _, r) => respond(r, err(e)),
        Op::Lease { reply, .. } => respond(reply, err(e)),
        Op::Complete(_, _, r) => respond(r, err(e)),
        Op::Fail(_, _, _, r) => respond(r, err(e)),
        Op::Release(_, r) => respond(r, err(e)),
        Op::Renew { reply, .. } => respond(reply, err(e)),
        Op::Cancel(_, r) => respond(r, err(e)),
        Op::Retry(_, r) => respond(r, err(e)),
        Op::Resubmit(_, _, r) => respond(r, err(e)),
        Op::Tick(r) => respond(r, err(e)),
        Op::OutboxPut(_, _, r) => respond(r, err(e)),
        Op::OutboxRemove(_, r) => respond(r, err(e)),
        Op::Shutdown(r) => {
            *stop = Some(r);
            Box::new(|_| ())
        }
    }
}
