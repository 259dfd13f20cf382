//! The writer thread and its protocol: the operations callers send ([`Op`]), the state the
//! writer shares with readers ([`Shared`]), and the loop that applies every waiting operation
//! in one write transaction, commits once, then replies to each (group commit).
//!
//! Only [`super::Queue`] talks to it; nothing here is public outside the queue.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use myco_jobs::{Fit, JobError};
use redb::Database;
use tokio::sync::{Notify, mpsc, oneshot};

use super::error::QueueError;
use super::options::{Clock, QueueOptions};
use super::record::{JobId, StateName};
use super::stats::QueueStats;
use super::store::{
    self, CHILDREN, COUNTS, CancelOutcome, CompleteOutcome, DELAYED, FINISHED, FailOutcome,
    IDEMPOTENCY, JOBS, LEASES, Lease, META, META_SEQ, NewJob, OUTBOX, OutboxEntry, READY, RESULTS,
    Submitted, TickOutcome, Txn, TxnEffects,
};

pub(super) type Reply = Box<dyn FnOnce(Option<&QueueError>) + Send>;

pub(super) enum Op {
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

pub(super) struct Shared {
    pub(super) db: Arc<Database>,
    pub(super) path: PathBuf,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) holder: String,
    pub(super) ready: Notify,
    /// Jobs finished (done, dead or cancelled) in the last commit.
    pub(super) finished: Notify,
    pub(super) stats: Mutex<QueueStats>,
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
