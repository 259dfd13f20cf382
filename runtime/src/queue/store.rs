//! The queue's tables and the state transitions, each applied inside a caller's redb write
//! transaction. The writer thread (`mod.rs`) batches many of these into one commit.
//!
//! Every operation checks before it writes, so an operation that returns an error has changed
//! nothing and the other operations of the same transaction still commit. Only a storage
//! error aborts the whole transaction. This file must not commit, sleep or talk to actors.

use myco_jobs::{Fit, JobError, JobKind, Task};
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::error::QueueError;
use super::options::QueueOptions;
use super::record::{ChildCounts, JobId, JobRecord, JobRecordV0, JobState, StateName, Submitter};
use crate::format;

pub(crate) const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");
/// Queued jobs in lease order: (inverted priority, seq) → id.
pub(crate) const READY: TableDefinition<(u32, u64), u128> = TableDefinition::new("ready");
/// Failed jobs waiting for their retry: (retry_at_ms, id).
pub(crate) const DELAYED: TableDefinition<(u64, u128), ()> = TableDefinition::new("delayed");
/// Leased jobs by deadline: (deadline_ms, id).
pub(crate) const LEASES: TableDefinition<(u64, u128), ()> = TableDefinition::new("leases");
pub(crate) const IDEMPOTENCY: TableDefinition<&str, u128> = TableDefinition::new("idempotency");
/// A parent's children in order: (parent, index) → child.
pub(crate) const CHILDREN: TableDefinition<(u128, u32), u128> = TableDefinition::new("children");
/// Leaf results, JSON Lines.
pub(crate) const RESULTS: TableDefinition<u128, &[u8]> = TableDefinition::new("results");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Job count per public state, kept exact by every transition.
pub(crate) const COUNTS: TableDefinition<u8, u64> = TableDefinition::new("counts");
/// A thief's finished work for other owners, kept until the owner acknowledges it.
pub(crate) const OUTBOX: TableDefinition<u128, &[u8]> = TableDefinition::new("outbox");

/// Finished top-level jobs in the order they expire: (retention class, finished_ms, id),
/// class 0 interactive and 1 batch (see [`QueueOptions::retention_interactive_ms`]).
pub(crate) const FINISHED: TableDefinition<(u8, u64, u128), ()> = TableDefinition::new("finished");

pub(crate) const META_SEQ: &str = "seq";
/// Set once [`FINISHED`] indexes every finished job (queue files written before it had
/// none: they are indexed when opened).
pub(crate) const META_FINISHED_INDEX: &str = "finished_index";
/// Most finished jobs (of each class) a tick removes: pruning a backlog goes in small commits.
const PRUNE_BATCH: usize = 256;
pub(crate) const META_INCARNATION: &str = "incarnation";

/// A job for [`Queue::submit`](super::Queue::submit), with the children it fans out into.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub task: Task,
    pub priority: i32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub idempotency_key: Option<String>,
    pub children: Vec<Task>,
}

impl NewJob {
    /// A validated spec, planned into its children.
    pub fn from_spec(spec: &myco_jobs::JobSpec, plan: myco_jobs::Plan) -> NewJob {
        NewJob {
            task: plan.task,
            priority: spec.priority,
            max_attempts: spec.max_attempts,
            timeout_ms: u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
            idempotency_key: spec.idempotency_key.clone(),
            children: plan.children,
        }
    }
}

/// The scheduling fields a parent passes on to its children.
struct Envelope {
    priority: i32,
    max_attempts: u32,
    timeout_ms: u64,
}

/// What a submission made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub id: JobId,
    /// False when the idempotency key matched an earlier job, whose id this is.
    pub created: bool,
}

/// A job handed to a worker (or, in a steal grant, to another node). `token` fences the
/// lease: only its holder may fail or release it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub id: JobId,
    pub token: u64,
    pub task: Task,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub timeout_ms: u64,
    pub deadline_ms: u64,
    /// The job's priority: a node's CPU budget treats interactive requests (the API's and
    /// the CLI's, far above batch work's 0) as interactive work.
    #[serde(default)]
    pub priority: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompleteOutcome {
    Recorded,
    /// The job was already done: this result is a duplicate and was dropped.
    AlreadyDone,
    /// The job ended otherwise (cancelled or dead) before the result came.
    Rejected(StateName),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailOutcome {
    Retrying {
        retry_at_ms: u64,
    },
    Dead,
    /// The lease was no longer the caller's (expired, cancelled, finished): nothing changed.
    Stale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelOutcome {
    Cancelled,
    /// Already finished: its final state.
    AlreadyFinished(StateName),
}

/// What [`Queue::retry`](super::Queue::retry) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryOutcome {
    /// Queued again with fresh attempts: the job itself, or a parent's failed children
    /// (`jobs` of them; the parent waits on them again).
    Requeued { jobs: u32 },
    /// Nothing to retry in this state: the job is live, or done with no failed part.
    NotRetryable(StateName),
}

/// The children a retry queued again, as their parent's counts had them.
#[derive(Debug, Default, Clone, Copy)]
struct Retried {
    dead: u32,
    cancelled: u32,
    /// Their input items (documents).
    items: u64,
}

impl Retried {
    fn count(&mut self, child: &JobRecord) {
        if child.state == JobState::Dead {
            self.dead += 1;
        } else {
            self.cancelled += 1;
        }
        self.items += u64::from(child.task.items());
    }

    fn jobs(&self) -> u32 {
        self.dead + self.cancelled
    }
}

/// What a tick changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickOutcome {
    pub expired: u32,
    pub promoted: u32,
    pub killed: u32,
    /// Finished jobs removed, their retention over (with their children).
    #[serde(default)]
    pub pruned: u32,
}

/// Per-transaction bookkeeping: count deltas and the events published after commit.
#[derive(Debug, Default)]
pub(crate) struct TxnEffects {
    pub counts: [i64; 6],
    /// Change of the queued jobs per kind.
    pub queued: std::collections::HashMap<JobKind, i64>,
    pub ready: bool,
    pub finished: Vec<Finished>,
    /// Kinds of the attempts that failed in this transaction.
    pub failures: Vec<JobKind>,
}

/// A job that finished in a transaction, for the writer's counters.
#[derive(Debug)]
pub(crate) struct Finished {
    pub kind: JobKind,
    pub state: StateName,
    pub at_ms: u64,
    pub latency_ms: u64,
    /// The lease holder it finished under (none for a parent or a job not running).
    pub holder: Option<String>,
}

impl TxnEffects {
    fn moved(&mut self, from: Option<StateName>, to: StateName) {
        if let Some(from) = from {
            self.counts[from.index()] -= 1;
        }
        self.counts[to.index()] += 1;
        if to == StateName::Queued {
            self.ready = true;
        }
    }
}

/// 0 for an interactive job, 1 for batch work: which retention applies.
fn retention_class(priority: i32) -> u8 {
    u8::from(priority < super::options::INTERACTIVE_PRIORITY)
}

pub(crate) fn ready_key(priority: i32, seq: u64) -> (u32, u64) {
    // Higher priority first: invert the order-preserving map of i32 onto u32.
    let ordered = (priority as u32) ^ 0x8000_0000;
    (u32::MAX - ordered, seq)
}

/// The queue file's format (`meta["format"]`): 1 scopes idempotency keys by submitter and
/// kind (see [`idempotency_key`]); 0 is every file from before formats had versions. A
/// build opens files of this format or older, and refuses newer ones untouched.
pub const QUEUE_FORMAT: u64 = 1;
pub(crate) const META_FORMAT: &str = "format";

/// Stored job records: format 0 (bare bincode of [`JobRecordV0`]), 1 (versioned, with
/// `submitter`) and 2 (an LLM prompt may be chat turns with tool calls, or carry tools,
/// log-probabilities and a JSON schema: `Prompt::Turns` and `Prompt::With`, appended, so 1
/// reads as 2 unchanged, and a build of format 1 refuses 2 by its version) and 3 (batches:
/// `Task::Batch`, appended, so 2 reads as 3 unchanged).
pub const JOB_FORMAT: u16 = 3;
/// Stored outbox entries: format 0 (bare bincode) and 1 (versioned), of one layout.
pub const OUTBOX_FORMAT: u16 = 1;
/// Stored leaf results: format 0 (bare JSON Lines) and 1 (versioned JSON Lines).
pub const RESULT_FORMAT: u16 = 1;
/// The largest length a stored record may claim inside it.
const MAX_RECORD: usize = 1 << 30;

fn encode(rec: &JobRecord) -> Result<Vec<u8>, QueueError> {
    format::encode(JOB_FORMAT, rec)
        .map_err(|e| QueueError::Corrupt(format!("encoding job {}: {e}", rec.id)))
}

/// A stored job record of any format this build reads, as the current [`JobRecord`].
pub fn decode(bytes: &[u8]) -> Result<JobRecord, QueueError> {
    const WHAT: &str = "a job record";
    let (version, body) = format::split(bytes);
    format::check(WHAT, version, format::UNVERSIONED, JOB_FORMAT)?;
    Ok(match version {
        format::UNVERSIONED => {
            format::decode_body::<JobRecordV0, MAX_RECORD>(WHAT, version, body)?.into()
        }
        _ => format::decode_body::<JobRecord, MAX_RECORD>(WHAT, version, body)?,
    })
}

/// A stored result's JSON Lines, of any format this build reads.
pub fn result_body(bytes: &[u8]) -> Result<&[u8], QueueError> {
    let (version, body) = format::split(bytes);
    format::check("a job result", version, format::UNVERSIONED, RESULT_FORMAT)?;
    Ok(body)
}

/// Bring a queue file of format `from` to [`QUEUE_FORMAT`] inside the opening transaction:
/// format 0 kept idempotency keys bare, format 1 scopes them (records are not rewritten:
/// [`decode`] reads every format). Returns how many keys moved.
pub(crate) fn migrate(tx: &WriteTransaction, from: u64) -> Result<u64, QueueError> {
    let mut moved = 0;
    if from < 1 {
        let mut keys = tx.open_table(IDEMPOTENCY)?;
        let jobs = tx.open_table(JOBS)?;
        let mut bare = Vec::new();
        for entry in keys.iter()? {
            let (k, id) = entry?;
            bare.push((k.value().to_owned(), id.value()));
        }
        for (key, id) in bare {
            keys.remove(key.as_str())?;
            // A key whose job is gone (pruned) is dropped with it.
            if let Some(rec) = jobs.get(id)? {
                let rec = decode(rec.value())?;
                keys.insert(idempotency_key(rec.submitter, rec.kind, &key).as_str(), id)?;
                moved += 1;
            }
        }
    }
    tx.open_table(META)?.insert(META_FORMAT, QUEUE_FORMAT)?;
    Ok(moved)
}

fn conflict(job: &NewJob, id: JobId, earlier: &Task) -> QueueError {
    QueueError::Conflict(format!(
        "idempotency key `{}` already names job {id}, submitted with a different spec ({}); use another key for this job",
        job.idempotency_key.as_deref().unwrap_or_default(),
        earlier.describe()
    ))
}

/// The key under which an idempotency key is kept: scoped to who submitted the job and its
/// kind, so a client's key never returns an owner's job (nor a noop an archive).
pub(crate) fn idempotency_key(submitter: Submitter, kind: JobKind, key: &str) -> String {
    format!("{}/{}/{key}", submitter.as_str(), kind.as_str())
}

/// The operations, applied to one open write transaction.
/// Every table of the queue, opened once per transaction.
pub(crate) struct Tables<'a> {
    pub jobs: Table<'a, u128, &'static [u8]>,
    pub ready: Table<'a, (u32, u64), u128>,
    pub delayed: Table<'a, (u64, u128), ()>,
    pub leases: Table<'a, (u64, u128), ()>,
    pub idempotency: Table<'a, &'static str, u128>,
    pub children: Table<'a, (u128, u32), u128>,
    pub results: Table<'a, u128, &'static [u8]>,
    pub outbox: Table<'a, u128, &'static [u8]>,
    pub finished: Table<'a, (u8, u64, u128), ()>,
}

impl<'a> Tables<'a> {
    pub fn open(tx: &'a WriteTransaction) -> Result<Tables<'a>, QueueError> {
        Ok(Tables {
            jobs: tx.open_table(JOBS)?,
            ready: tx.open_table(READY)?,
            delayed: tx.open_table(DELAYED)?,
            leases: tx.open_table(LEASES)?,
            idempotency: tx.open_table(IDEMPOTENCY)?,
            children: tx.open_table(CHILDREN)?,
            results: tx.open_table(RESULTS)?,
            outbox: tx.open_table(OUTBOX)?,
            finished: tx.open_table(FINISHED)?,
        })
    }
}

pub(crate) struct Txn<'a> {
    pub t: Tables<'a>,
    /// Makes job ids that increase within a millisecond, so ids sort in submission order.
    pub ids: &'a mut ulid::Generator,
    pub now_ms: u64,
    pub opts: &'a QueueOptions,
    pub next_seq: &'a mut u64,
    pub effects: TxnEffects,
}

impl Txn<'_> {
    pub fn load(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        let jobs = &self.t.jobs;
        let got = jobs.get(u128::from(id))?;
        got.map(|v| decode(v.value())).transpose()
    }

    fn store(&mut self, rec: &JobRecord) -> Result<(), QueueError> {
        let bytes = encode(rec)?;
        self.t.jobs.insert(u128::from(rec.id), bytes.as_slice())?;
        Ok(())
    }

    /// Move `rec` to `state`, keeping the index tables and counts in step, and store it.
    fn transition(
        &mut self,
        rec: &mut JobRecord,
        state: JobState,
        note: Option<String>,
    ) -> Result<(), QueueError> {
        let id = u128::from(rec.id);
        match &rec.state {
            JobState::Queued => {
                self.t.ready.remove(ready_key(rec.priority, rec.seq))?;
                *self.effects.queued.entry(rec.kind).or_default() -= 1;
            }
            JobState::Leased { deadline_ms, .. } => {
                self.t.leases.remove((*deadline_ms, id))?;
            }
            JobState::Failed { retry_at_ms } => {
                self.t.delayed.remove((*retry_at_ms, id))?;
            }
            JobState::Waiting | JobState::Done | JobState::Dead | JobState::Cancelled => {}
        }
        match &state {
            JobState::Queued => {
                self.t.ready.insert(ready_key(rec.priority, rec.seq), id)?;
                *self.effects.queued.entry(rec.kind).or_default() += 1;
            }
            JobState::Leased { deadline_ms, .. } => {
                self.t.leases.insert((*deadline_ms, id), ())?;
            }
            JobState::Failed { retry_at_ms } => {
                self.t.delayed.insert((*retry_at_ms, id), ())?;
            }
            JobState::Waiting | JobState::Done | JobState::Dead | JobState::Cancelled => {}
        }
        let (from, to) = (rec.state.name(), state.name());
        let terminal = state.is_terminal();
        let holder = match std::mem::replace(&mut rec.state, state) {
            JobState::Leased { holder, .. } if terminal => Some(holder),
            _ => None,
        };
        rec.updated_ms = self.now_ms;
        if from != to || note.is_some() {
            rec.remember(self.now_ms, to, note);
        }
        if from != to {
            self.effects.moved(Some(from), to);
        } else if to == StateName::Queued {
            self.effects.ready = true;
        }
        if terminal {
            rec.finished_ms = Some(self.now_ms);
            let latency = self.now_ms.saturating_sub(rec.created_ms);
            self.effects.finished.push(Finished {
                kind: rec.kind,
                state: to,
                at_ms: self.now_ms,
                latency_ms: latency,
                holder,
            });
            if rec.parent.is_none() {
                let class = retention_class(rec.priority);
                self.t.finished.insert((class, self.now_ms, id), ())?;
            }
        }
        self.store(rec)?;
        if terminal && let Some(parent) = rec.parent {
            self.child_finished(parent, to, rec)?;
        }
        Ok(())
    }

    fn child_finished(
        &mut self,
        parent: JobId,
        outcome: StateName,
        child: &JobRecord,
    ) -> Result<(), QueueError> {
        let Some(mut p) = self.load(parent)? else {
            return Err(QueueError::Corrupt(format!("parent {parent} is missing")));
        };
        let mut counts = p.children.unwrap_or_default();
        match outcome {
            StateName::Done => {
                counts.done += 1;
                if let Some(result) = self.t.results.get(u128::from(child.id))? {
                    counts.outputs += child.task.outputs(result_body(result.value())?);
                }
            }
            StateName::Dead => counts.dead += 1,
            _ => counts.cancelled += 1,
        }
        counts.items_done += u64::from(child.task.items());
        p.children = Some(counts);
        if p.state == JobState::Waiting && counts.finished() >= counts.total {
            if (counts.done > 0 && p.task.joins()) || p.task.joins_failed() {
                // It runs itself now, on its children's results.
                let note = format!(
                    "{} of {} children done; joining their results",
                    counts.done, counts.total
                );
                self.transition(&mut p, JobState::Queued, Some(note))
            } else if counts.done > 0 {
                let note = (counts.dead + counts.cancelled > 0).then(|| {
                    format!(
                        "{} of {} children failed",
                        counts.dead + counts.cancelled,
                        counts.total
                    )
                });
                self.transition(&mut p, JobState::Done, note)
            } else {
                p.last_error = Some(JobError::fatal(format!(
                    "all {} children failed or were cancelled",
                    counts.total
                )));
                self.transition(&mut p, JobState::Dead, None)
            }
        } else {
            self.store(&p)
        }
    }

    fn new_record(
        &mut self,
        env: &Envelope,
        task: Task,
        parent: Option<JobId>,
        idempotency_key: Option<String>,
    ) -> JobRecord {
        let seq = *self.next_seq;
        *self.next_seq += 1;
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.now_ms);
        let id = self
            .ids
            .generate_from_datetime(at)
            .unwrap_or_else(|_| JobId::from_datetime(at));
        JobRecord {
            id,
            parent,
            kind: task.kind(),
            task,
            priority: env.priority,
            max_attempts: env.max_attempts.max(1),
            timeout_ms: env.timeout_ms,
            idempotency_key,
            state: JobState::Queued,
            attempts: 0,
            leases: 0,
            lost: 0,
            seq,
            created_ms: self.now_ms,
            updated_ms: self.now_ms,
            finished_ms: None,
            last_error: None,
            children: None,
            history: Vec::new(),
            submitter: Submitter::Owner,
        }
    }

    /// Insert `rec` in state `state` (it is not in any index yet).
    fn insert_new(&mut self, rec: &mut JobRecord, state: JobState) -> Result<(), QueueError> {
        let id = u128::from(rec.id);
        if state == JobState::Queued {
            self.t.ready.insert(ready_key(rec.priority, rec.seq), id)?;
            *self.effects.queued.entry(rec.kind).or_default() += 1;
        }
        let name = state.name();
        rec.state = state;
        rec.remember(self.now_ms, name, None);
        self.effects.moved(None, name);
        self.store(rec)
    }

    /// The live job an idempotency key already names for `job`, if any; a conflict if that
    /// job was submitted with a different spec.
    fn keyed(&self, job: &NewJob, scoped: &str) -> Result<Option<JobId>, QueueError> {
        let Some(id) = self
            .t
            .idempotency
            .get(scoped)?
            .map(|v| JobId::from(v.value()))
        else {
            return Ok(None);
        };
        let earlier = self.load(id)?;
        // An archive's key names its collection: it resumes a live run, and starts a new
        // one once the last has finished.
        if job.task.joins() && earlier.as_ref().is_none_or(|r| r.state.is_terminal()) {
            return Ok(None);
        }
        if let Some(earlier) = earlier
            && earlier.task != job.task
        {
            return Err(conflict(job, id, &earlier.task));
        }
        Ok(Some(id))
    }

    /// Refuse a batch whose idempotency keys name other specs (already stored, or earlier
    /// in the batch) before any of it is stored: a batch goes in whole or not at all.
    pub fn check_keys(&self, jobs: &[NewJob], submitter: Submitter) -> Result<(), QueueError> {
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (i, job) in jobs.iter().enumerate() {
            let Some(key) = job.idempotency_key.as_deref() else {
                continue;
            };
            let scoped = idempotency_key(submitter, job.task.kind(), key);
            if let Some(&first) = seen.get(&scoped) {
                if jobs[first].task != job.task {
                    return Err(QueueError::Conflict(format!(
                        "idempotency key `{key}` names two different jobs in one submission (jobs {first} and {i}); give each its own key"
                    )));
                }
                continue;
            }
            self.keyed(job, &scoped)?;
            seen.insert(scoped, i);
        }
        Ok(())
    }

    pub fn submit(&mut self, job: NewJob, submitter: Submitter) -> Result<Submitted, QueueError> {
        let scoped = job
            .idempotency_key
            .as_deref()
            .map(|key| idempotency_key(submitter, job.task.kind(), key));
        if let Some(scoped) = &scoped
            && let Some(id) = self.keyed(&job, scoped)?
        {
            return Ok(Submitted { id, created: false });
        }
        let total = u32::try_from(job.children.len())
            .map_err(|_| QueueError::Invalid("more than 4 billion children".into()))?;
        let NewJob {
            task,
            priority,
            max_attempts,
            timeout_ms,
            idempotency_key,
            children,
        } = job;
        let envelope = Envelope {
            priority,
            max_attempts,
            timeout_ms,
        };
        let mut rec = self.new_record(&envelope, task, None, idempotency_key);
        rec.submitter = submitter;
        if let Some(scoped) = &scoped {
            self.t
                .idempotency
                .insert(scoped.as_str(), u128::from(rec.id))?;
        }
        if children.is_empty() {
            self.insert_new(&mut rec, JobState::Queued)?;
        } else {
            rec.children = Some(ChildCounts {
                total,
                items_total: children.iter().map(|c| u64::from(c.items())).sum(),
                ..ChildCounts::default()
            });
            self.insert_new(&mut rec, JobState::Waiting)?;
            for (index, task) in children.into_iter().enumerate() {
                let mut child = self.new_record(&envelope, task, Some(rec.id), None);
                // Children read files as their parent's submitter may.
                child.submitter = submitter;
                self.insert_new(&mut child, JobState::Queued)?;
                self.t
                    .children
                    .insert((u128::from(rec.id), index as u32), u128::from(child.id))?;
            }
        }
        Ok(Submitted {
            id: rec.id,
            created: true,
        })
    }

    /// Lease up to `max` queued jobs that `fit` accepts to `holder`, best first.
    pub fn lease(
        &mut self,
        holder: &str,
        max: usize,
        fit: &Fit,
        lease_ms: u64,
    ) -> Result<Vec<Lease>, QueueError> {
        let mut picked = Vec::new();
        {
            let ready = &self.t.ready;
            let jobs = &self.t.jobs;
            for entry in ready.iter()? {
                if picked.len() >= max {
                    break;
                }
                let (_, id) = entry?;
                let id = id.value();
                let Some(bytes) = jobs.get(id)? else {
                    return Err(QueueError::Corrupt(format!("ready job {id} is missing")));
                };
                let rec = decode(bytes.value())?;
                if fit.accepts(&rec.task) {
                    picked.push(rec);
                }
            }
        }
        let deadline_ms = self.now_ms + lease_ms;
        let mut out = Vec::with_capacity(picked.len());
        for mut rec in picked {
            rec.leases += 1;
            let token = rec.leases;
            let state = JobState::Leased {
                holder: holder.to_owned(),
                token,
                deadline_ms,
            };
            // The history names who ran each attempt.
            self.transition(&mut rec, state, Some(holder.to_owned()))?;
            out.push(Lease {
                id: rec.id,
                token,
                attempt: rec.attempts + 1,
                timeout_ms: rec.timeout_ms,
                deadline_ms,
                priority: rec.priority,
                task: rec.task,
            });
        }
        Ok(out)
    }

    /// Record a result. Any live job accepts it (a late result from an expired lease is
    /// still a valid result); a finished job keeps its first result.
    pub fn complete(&mut self, id: JobId, output: &[u8]) -> Result<CompleteOutcome, QueueError> {
        let Some(mut rec) = self.load(id)? else {
            return Err(QueueError::NotFound(id));
        };
        match rec.state {
            JobState::Done => return Ok(CompleteOutcome::AlreadyDone),
            JobState::Dead | JobState::Cancelled => {
                return Ok(CompleteOutcome::Rejected(rec.state.name()));
            }
            JobState::Waiting => {
                return Err(QueueError::Invalid(format!(
                    "job {id} is a parent: it finishes with its children"
                )));
            }
            JobState::Queued | JobState::Leased { .. } | JobState::Failed { .. } => {}
        }
        self.t.results.insert(
            u128::from(id),
            format::wrap(RESULT_FORMAT, output).as_slice(),
        )?;
        self.transition(&mut rec, JobState::Done, None)?;
        Ok(CompleteOutcome::Recorded)
    }

    /// Record a failed attempt by the lease `token`.
    pub fn fail(
        &mut self,
        id: JobId,
        token: u64,
        error: &JobError,
    ) -> Result<FailOutcome, QueueError> {
        let Some(mut rec) = self.load(id)? else {
            return Err(QueueError::NotFound(id));
        };
        if !matches!(rec.state, JobState::Leased { token: t, .. } if t == token) {
            return Ok(FailOutcome::Stale);
        }
        rec.attempts += 1;
        rec.last_error = Some(error.clone());
        self.effects.failures.push(rec.kind);
        let note = Some(error.message.clone());
        if !error.is_retryable() || rec.attempts >= rec.max_attempts {
            self.transition(&mut rec, JobState::Dead, note)?;
            return Ok(FailOutcome::Dead);
        }
        let retry_at_ms = self.now_ms + self.opts.backoff_ms(rec.attempts);
        self.transition(&mut rec, JobState::Failed { retry_at_ms }, note)?;
        Ok(FailOutcome::Retrying { retry_at_ms })
    }

    /// Give a leased job back untouched (a clean shutdown, or work never started). Returns
    /// false, changing nothing, for a job that is not (or no longer) held with `token`.
    pub fn release(&mut self, id: JobId, token: u64) -> Result<bool, QueueError> {
        let Some(mut rec) = self.load(id)? else {
            return Ok(false);
        };
        if !matches!(rec.state, JobState::Leased { token: t, .. } if t == token) {
            return Ok(false);
        }
        self.transition(&mut rec, JobState::Queued, Some("released".into()))?;
        Ok(true)
    }

    /// Extend the deadlines of `holder`'s leases; returns the ids it no longer holds.
    pub fn renew(
        &mut self,
        holder: &str,
        leases: &[(JobId, u64)],
        lease_ms: u64,
    ) -> Result<Vec<JobId>, QueueError> {
        let mut lost = Vec::new();
        for &(id, token) in leases {
            let Some(mut rec) = self.load(id)? else {
                lost.push(id);
                continue;
            };
            match &rec.state {
                JobState::Leased {
                    holder: h,
                    token: t,
                    ..
                } if h == holder && *t == token => {
                    let state = JobState::Leased {
                        holder: holder.to_owned(),
                        token,
                        deadline_ms: self.now_ms + lease_ms,
                    };
                    self.transition(&mut rec, state, None)?;
                }
                _ => lost.push(id),
            }
        }
        Ok(lost)
    }

    /// The holder says `held` is everything it holds here: its other leases, granted or
    /// renewed at least `grace_ms` ago, were lost on the way (a steal grant that never
    /// arrived) and go back to the queue now instead of at their deadline. Returns how
    /// many were given back.
    pub fn reclaim_unlisted(
        &mut self,
        holder: &str,
        held: &[(JobId, u64)],
        lease_ms: u64,
        grace_ms: u64,
    ) -> Result<u32, QueueError> {
        let listed: std::collections::HashSet<JobId> = held.iter().map(|(id, _)| *id).collect();
        let candidates: Vec<u128> = {
            let mut v = Vec::new();
            for entry in self.t.leases.iter()? {
                let (deadline, id) = entry?.0.value();
                // Last granted or renewed at deadline - lease_ms.
                if deadline.saturating_sub(lease_ms) + grace_ms <= self.now_ms
                    && !listed.contains(&JobId::from(id))
                {
                    v.push(id);
                }
            }
            v
        };
        let mut n = 0;
        for id in candidates {
            let Some(mut rec) = self.load(JobId::from(id))? else {
                continue;
            };
            if matches!(&rec.state, JobState::Leased { holder: h, .. } if h == holder) {
                let note = format!("{holder} never received this lease; queued again");
                self.transition(&mut rec, JobState::Queued, Some(note))?;
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn cancel(&mut self, id: JobId) -> Result<CancelOutcome, QueueError> {
        let Some(mut rec) = self.load(id)? else {
            return Err(QueueError::NotFound(id));
        };
        if rec.state.is_terminal() {
            return Ok(CancelOutcome::AlreadyFinished(rec.state.name()));
        }
        if rec.state == JobState::Waiting {
            // Mark the parent first, so that children finishing below do not complete it.
            self.transition(&mut rec, JobState::Cancelled, None)?;
            for child in self.children_of(id)? {
                if let Some(mut c) = self.load(child)?
                    && !c.state.is_terminal()
                {
                    self.transition(&mut c, JobState::Cancelled, None)?;
                }
            }
            return Ok(CancelOutcome::Cancelled);
        }
        self.transition(&mut rec, JobState::Cancelled, None)?;
        Ok(CancelOutcome::Cancelled)
    }

    /// Queue a dead or cancelled job again with fresh attempts (its history says so). For a
    /// parent: its dead and cancelled children, and it waits on them again (joining again
    /// when they are done); a joining parent that died itself is queued again.
    pub fn retry(&mut self, id: JobId) -> Result<RetryOutcome, QueueError> {
        let Some(mut rec) = self.load(id)? else {
            return Err(QueueError::NotFound(id));
        };
        let state = rec.state.name();
        let failed = |r: &JobRecord| matches!(r.state, JobState::Dead | JobState::Cancelled);
        if rec.children.is_none() {
            if !failed(&rec) {
                return Ok(RetryOutcome::NotRetryable(state));
            }
            let Some(parent) = rec.parent else {
                self.requeue(&mut rec)?;
                return Ok(RetryOutcome::Requeued { jobs: 1 });
            };
            let Some(mut p) = self.load(parent)? else {
                return Err(QueueError::Corrupt(format!("parent {parent} is missing")));
            };
            if !(p.state == JobState::Waiting || p.state.is_terminal()) {
                // Its parent is joining the results it has: retry the parent once it ends.
                return Ok(RetryOutcome::NotRetryable(p.state.name()));
            }
            let mut retried = Retried::default();
            retried.count(&rec);
            self.requeue(&mut rec)?;
            self.reopen(&mut p, retried)?;
            return Ok(RetryOutcome::Requeued { jobs: 1 });
        }
        if !rec.state.is_terminal() {
            return Ok(RetryOutcome::NotRetryable(state));
        }
        let mut retried = Retried::default();
        for child in self.children_of(id)? {
            if let Some(mut c) = self.load(child)?
                && failed(&c)
            {
                retried.count(&c);
                self.requeue(&mut c)?;
            }
        }
        if retried.jobs() > 0 {
            let jobs = retried.jobs();
            self.reopen(&mut rec, retried)?;
            return Ok(RetryOutcome::Requeued { jobs });
        }
        if failed(&rec) && rec.task.joins() {
            self.requeue(&mut rec)?;
            return Ok(RetryOutcome::Requeued { jobs: 1 });
        }
        Ok(RetryOutcome::NotRetryable(state))
    }

    /// A dead or cancelled job back to `Queued`, with no attempts used.
    fn requeue(&mut self, rec: &mut JobRecord) -> Result<(), QueueError> {
        let was = rec.state.name();
        self.unfinish(rec)?;
        let why = rec
            .last_error
            .take()
            .map(|e| format!(": {}", e.message))
            .unwrap_or_default();
        let note = format!(
            "retried with fresh attempts (was {was} after {} attempts{why})",
            rec.attempts
        );
        rec.attempts = 0;
        rec.lost = 0;
        self.transition(rec, JobState::Queued, Some(note))
    }

    /// A parent whose failed children were queued again: count them out of its finished
    /// ones, and wait on them again.
    fn reopen(&mut self, p: &mut JobRecord, retried: Retried) -> Result<(), QueueError> {
        let mut counts = p.children.unwrap_or_default();
        counts.dead = counts.dead.saturating_sub(retried.dead);
        counts.cancelled = counts.cancelled.saturating_sub(retried.cancelled);
        counts.items_done = counts.items_done.saturating_sub(retried.items);
        p.children = Some(counts);
        if !p.state.is_terminal() {
            return self.store(p);
        }
        self.unfinish(p)?;
        p.last_error = None;
        let note = format!("{} failed children retried", retried.jobs());
        self.transition(p, JobState::Waiting, Some(note))
    }

    /// Take a finished job out of the retention index: it is live again.
    fn unfinish(&mut self, rec: &mut JobRecord) -> Result<(), QueueError> {
        if let Some(at) = rec.finished_ms.take()
            && rec.parent.is_none()
        {
            let key = (retention_class(rec.priority), at, u128::from(rec.id));
            self.t.finished.remove(key)?;
        }
        Ok(())
    }

    /// Submit a finished job again as a new one (same task, children and scheduling; no
    /// idempotency key). Both histories name the other.
    pub fn resubmit(&mut self, id: JobId, submitter: Submitter) -> Result<Submitted, QueueError> {
        let Some(mut rec) = self.load(id)? else {
            return Err(QueueError::NotFound(id));
        };
        if !rec.state.is_terminal() {
            return Err(QueueError::Invalid(format!(
                "job {id} is {}: resubmit it once it has ended, or cancel it first",
                rec.state.name()
            )));
        }
        let mut children = Vec::new();
        if rec.children.is_some() {
            for child in self.children_of(id)? {
                if let Some(c) = self.load(child)? {
                    children.push(c.task);
                }
            }
        }
        let new = self.submit(
            NewJob {
                task: rec.task.clone(),
                priority: rec.priority,
                max_attempts: rec.max_attempts,
                timeout_ms: rec.timeout_ms,
                idempotency_key: None,
                children,
            },
            submitter,
        )?;
        if let Some(mut fresh) = self.load(new.id)? {
            self.annotate(&mut fresh, format!("resubmitted from job {id}"))?;
        }
        self.annotate(&mut rec, format!("resubmitted as job {}", new.id))?;
        Ok(new)
    }

    /// Add a note to a job's history without changing its state.
    fn annotate(&mut self, rec: &mut JobRecord, note: String) -> Result<(), QueueError> {
        rec.remember(self.now_ms, rec.state.name(), Some(note));
        self.store(rec)
    }

    fn children_of(&self, parent: JobId) -> Result<Vec<JobId>, QueueError> {
        let p = u128::from(parent);
        let table = &self.t.children;
        let mut out = Vec::new();
        for entry in table.range((p, 0)..=(p, u32::MAX))? {
            out.push(JobId::from(entry?.1.value()));
        }
        Ok(out)
    }

    /// Expire overdue leases and queue the failed jobs whose backoff has passed.
    pub fn tick(&mut self) -> Result<TickOutcome, QueueError> {
        let mut out = TickOutcome::default();
        let expired: Vec<u128> = {
            let leases = &self.t.leases;
            let mut v = Vec::new();
            for entry in leases.range(..=(self.now_ms, u128::MAX))? {
                v.push(entry?.0.value().1);
            }
            v
        };
        for id in expired {
            if let Some(rec) = self.load(JobId::from(id))? {
                let holder = match &rec.state {
                    JobState::Leased { holder, .. } => holder.clone(),
                    _ => continue,
                };
                if self.lose(rec, &format!("lease of {holder} expired"))? {
                    out.killed += 1;
                } else {
                    out.expired += 1;
                }
            }
        }
        let due: Vec<u128> = {
            let delayed = &self.t.delayed;
            let mut v = Vec::new();
            for entry in delayed.range(..=(self.now_ms, u128::MAX))? {
                v.push(entry?.0.value().1);
            }
            v
        };
        for id in due {
            if let Some(mut rec) = self.load(JobId::from(id))? {
                self.transition(&mut rec, JobState::Queued, Some("retry".into()))?;
                out.promoted += 1;
            }
        }
        out.pruned = self.prune()?;
        Ok(out)
    }

    /// Remove finished jobs whose retention is over (a bounded number per call), with their
    /// children and results. Unfinished jobs are never touched.
    pub fn prune(&mut self) -> Result<u32, QueueError> {
        let mut n = 0;
        let classes = [
            (0u8, self.opts.retention_interactive_ms),
            (1u8, self.opts.retention_batch_ms),
        ];
        for (class, keep) in classes {
            let Some(cutoff) = self.now_ms.checked_sub(keep) else {
                continue;
            };
            let due: Vec<(u64, u128)> = {
                let mut v = Vec::new();
                for entry in self
                    .t
                    .finished
                    .range((class, 0, 0)..=(class, cutoff, u128::MAX))?
                {
                    let (_, at, id) = entry?.0.value();
                    v.push((at, id));
                    if v.len() >= PRUNE_BATCH {
                        break;
                    }
                }
                v
            };
            for (at, id) in due {
                self.t.finished.remove((class, at, id))?;
                n += self.remove_finished(JobId::from(id))?;
            }
        }
        Ok(n.min(u32::MAX as usize) as u32)
    }

    /// Remove finished job `id` and its finished descendants (records, results, links,
    /// idempotency key); returns how many records went.
    fn remove_finished(&mut self, id: JobId) -> Result<usize, QueueError> {
        let mut stack = vec![id];
        let mut removed = 0;
        while let Some(id) = stack.pop() {
            let Some(rec) = self.load(id)? else { continue };
            if !rec.state.is_terminal() {
                continue;
            }
            let key = u128::from(id);
            let kids: Vec<(u32, u128)> = {
                let mut v = Vec::new();
                for entry in self.t.children.range((key, 0)..=(key, u32::MAX))? {
                    let (k, child) = entry?;
                    v.push((k.value().1, child.value()));
                }
                v
            };
            for (i, child) in kids {
                self.t.children.remove((key, i))?;
                stack.push(JobId::from(child));
            }
            self.t.jobs.remove(key)?;
            self.t.results.remove(key)?;
            if let Some(k) = &rec.idempotency_key {
                let k = idempotency_key(rec.submitter, rec.kind, k);
                let mine = self.t.idempotency.get(k.as_str())?.map(|v| v.value()) == Some(key);
                if mine {
                    self.t.idempotency.remove(k.as_str())?;
                }
            }
            self.effects.counts[rec.state.name().index()] -= 1;
            removed += 1;
        }
        Ok(removed)
    }

    /// Index the finished top-level jobs of a queue file written before [`FINISHED`]
    /// existed, once. Returns how many it indexed.
    pub fn index_finished(&mut self) -> Result<u64, QueueError> {
        let mut found = Vec::new();
        for entry in self.t.jobs.iter()? {
            let (_, v) = entry?;
            let rec = decode(v.value())?;
            if rec.parent.is_none() && rec.state.is_terminal() {
                let at = rec.finished_ms.unwrap_or(rec.updated_ms);
                found.push((retention_class(rec.priority), at, u128::from(rec.id)));
            }
        }
        for k in &found {
            self.t.finished.insert(*k, ())?;
        }
        Ok(found.len() as u64)
    }

    /// A lease whose holder is gone: queue the job again, unless it keeps getting lost.
    /// Returns true when the job was declared dead.
    fn lose(&mut self, mut rec: JobRecord, why: &str) -> Result<bool, QueueError> {
        rec.lost += 1;
        if rec.lost > self.opts.max_lost {
            rec.last_error = Some(JobError::fatal(format!(
                "lost {} times ({why}): the nodes running it keep dying; is the job itself crashing them?",
                rec.lost
            )));
            self.transition(&mut rec, JobState::Dead, Some(why.to_owned()))?;
            return Ok(true);
        }
        self.transition(&mut rec, JobState::Queued, Some(why.to_owned()))?;
        Ok(false)
    }

    /// At start-up: leases held by an earlier incarnation of this node died with it; those
    /// it was running when it was killed for memory (`QueueOptions::oom_killed`) count
    /// towards a job that kills its node.
    pub fn recover_local(&mut self, node: &str) -> Result<u32, QueueError> {
        let prefix = format!("{node}#");
        let all: Vec<u128> = {
            let leases = &self.t.leases;
            let mut v = Vec::new();
            for entry in leases.iter()? {
                v.push(entry?.0.value().1);
            }
            v
        };
        let mut n = 0;
        for id in all {
            if let Some(rec) = self.load(JobId::from(id))?
                && let JobState::Leased { holder, .. } = &rec.state
                && holder.starts_with(&prefix)
            {
                let id = rec.id;
                if self.opts.oom_killed.contains(&id) {
                    // It was running when the node was killed for memory: it may be why.
                    let deaths = 1 + rec
                        .history
                        .iter()
                        .filter(|t| t.note.as_deref().is_some_and(|n| n.ends_with(DIED_RUNNING)))
                        .count();
                    let why = format!("{holder}{DIED_RUNNING}");
                    if deaths >= 2 {
                        let mut rec = rec;
                        rec.last_error = Some(JobError::fatal(format!(
                            "its node was killed for memory {deaths} times while running it (`dmesg | grep -i oom` tells more): it is not run again blindly; make it smaller (a shorter context, fewer texts), or run it where there is more memory, then retry it"
                        )));
                        self.transition(&mut rec, JobState::Dead, Some(why))?;
                    } else {
                        self.lose(rec, &why)?;
                    }
                } else {
                    let why = format!("{holder} restarted");
                    self.lose(rec, &why)?;
                }
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The note of a job that was running when its node was killed for memory (its history
/// counts them).
const DIED_RUNNING: &str = " was killed for memory while running it";

/// The end of an attempt at another node's job, waiting in the outbox for its owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub owner: String,
    pub token: u64,
    pub result: Result<Vec<u8>, JobError>,
}

pub(crate) fn encode_entry(e: &OutboxEntry) -> Result<Vec<u8>, QueueError> {
    format::encode(OUTBOX_FORMAT, e)
        .map_err(|err| QueueError::Corrupt(format!("encoding an outbox entry: {err}")))
}

/// A stored outbox entry of any format this build reads (0 and 1 share one layout).
pub fn decode_entry(bytes: &[u8]) -> Result<OutboxEntry, QueueError> {
    const WHAT: &str = "an outbox entry";
    let (version, body) = format::split(bytes);
    format::check(WHAT, version, format::UNVERSIONED, OUTBOX_FORMAT)?;
    Ok(format::decode_body::<OutboxEntry, MAX_RECORD>(
        WHAT, version, body,
    )?)
}

impl Txn<'_> {
    /// Keep a finished stolen job until its owner acknowledges it. A later attempt at the
    /// same job replaces an earlier one that was not yet delivered.
    pub fn outbox_put(&mut self, id: JobId, entry: &OutboxEntry) -> Result<(), QueueError> {
        let bytes = encode_entry(entry)?;
        self.t.outbox.insert(u128::from(id), bytes.as_slice())?;
        Ok(())
    }

    pub fn outbox_remove(&mut self, ids: &[JobId]) -> Result<u32, QueueError> {
        let mut n = 0;
        for id in ids {
            if self.t.outbox.remove(u128::from(*id))?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Add the transaction's per-state deltas to the `counts` table.
pub(crate) fn apply_counts(tx: &WriteTransaction, deltas: &[i64; 6]) -> Result<(), QueueError> {
    let mut table = tx.open_table(COUNTS)?;
    for (i, delta) in deltas.iter().enumerate() {
        if *delta != 0 {
            let key = i as u8;
            let old = table.get(key)?.map(|v| v.value()).unwrap_or(0);
            table.insert(key, old.saturating_add_signed(*delta))?;
        }
    }
    Ok(())
}

/// Queued jobs per kind, counted from the ready table (at open).
pub(crate) fn queued_by_kind(
    tx: &WriteTransaction,
) -> Result<std::collections::HashMap<JobKind, u64>, QueueError> {
    let ready = tx.open_table(READY)?;
    let jobs = tx.open_table(JOBS)?;
    let mut out = std::collections::HashMap::new();
    for entry in ready.iter()? {
        let (_, id) = entry?;
        if let Some(bytes) = jobs.get(id.value())? {
            *out.entry(decode(bytes.value())?.kind).or_default() += 1;
        }
    }
    Ok(out)
}
