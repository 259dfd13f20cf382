//! The stored shape of a job: [`JobRecord`], its [`JobState`] machine and the public
//! [`JobView`] / [`StateName`] that the API and CLI show.
//!
//! Records are serde structs encoded with bincode under a format version
//! ([`crate::format`]); they change only inside the queue's write transactions (`store.rs`).
//! Every older layout a build still reads keeps a frozen copy here (`JobRecordV0`) with its
//! migration into the current one. Nothing here does I/O.

use myco_jobs::{JobError, JobKind, Task};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// A job's identity: a ULID, unique across the swarm and sortable by creation time.
pub type JobId = Ulid;

/// How many transitions a record keeps in its history.
pub const HISTORY_LEN: usize = 32;

/// A job as stored by its owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub parent: Option<JobId>,
    pub kind: JobKind,
    pub task: Task,
    pub priority: i32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub idempotency_key: Option<String>,
    pub state: JobState,
    /// Attempts that ended in failure (retryable or not).
    pub attempts: u32,
    /// Times the job was leased; the current value is the lease's fencing token.
    pub leases: u64,
    /// Leases that expired because their holder stopped renewing (a lost node).
    pub lost: u32,
    /// Submission order: FIFO within a priority.
    pub seq: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub finished_ms: Option<u64>,
    pub last_error: Option<JobError>,
    /// For a parent: how its children stand.
    pub children: Option<ChildCounts>,
    /// The last [`HISTORY_LEN`] transitions, oldest first.
    pub history: Vec<Transition>,
    /// Who submitted it (format 1 on; older records were the owner's): its idempotency key
    /// is scoped to them, and so is what it may read.
    pub submitter: Submitter,
}

/// Who submitted a job: the node's owner (the CLI, or the token from loopback) or a client
/// of its API (whose jobs read only below the data roots). Idempotency keys are scoped by it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Submitter {
    #[default]
    Owner,
    Client,
}

impl Submitter {
    pub fn as_str(self) -> &'static str {
        match self {
            Submitter::Owner => "owner",
            Submitter::Client => "client",
        }
    }
}

/// A job record as format 0 stored it (before formats had versions): [`JobRecord`] without
/// `submitter`. Frozen: it reads the queue files of myco before format versions.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct JobRecordV0 {
    id: JobId,
    parent: Option<JobId>,
    kind: JobKind,
    task: Task,
    priority: i32,
    max_attempts: u32,
    timeout_ms: u64,
    idempotency_key: Option<String>,
    state: JobState,
    attempts: u32,
    leases: u64,
    lost: u32,
    seq: u64,
    created_ms: u64,
    updated_ms: u64,
    finished_ms: Option<u64>,
    last_error: Option<JobError>,
    children: Option<ChildCounts>,
    history: Vec<Transition>,
}

impl From<JobRecordV0> for JobRecord {
    fn from(r: JobRecordV0) -> JobRecord {
        JobRecord {
            id: r.id,
            parent: r.parent,
            kind: r.kind,
            task: r.task,
            priority: r.priority,
            max_attempts: r.max_attempts,
            timeout_ms: r.timeout_ms,
            idempotency_key: r.idempotency_key,
            state: r.state,
            attempts: r.attempts,
            leases: r.leases,
            lost: r.lost,
            seq: r.seq,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            finished_ms: r.finished_ms,
            last_error: r.last_error,
            children: r.children,
            history: r.history,
            // Before scopes, keys were the owner's (`myco submit`, the CLI's API calls).
            submitter: Submitter::Owner,
        }
    }
}

/// The state machine: `Queued → Leased → Done | Failed → (backoff) → Queued | Dead`, plus
/// `Cancelled` from any live state, and `Waiting` for a parent whose children run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Leased {
        holder: String,
        token: u64,
        deadline_ms: u64,
    },
    /// A parent job; done when all its children are finished.
    Waiting,
    Done,
    /// A failed attempt; queued again at `retry_at_ms`.
    Failed {
        retry_at_ms: u64,
    },
    Dead,
    Cancelled,
}

impl JobState {
    pub fn name(&self) -> StateName {
        match self {
            JobState::Queued => StateName::Queued,
            JobState::Leased { .. } | JobState::Waiting => StateName::Leased,
            JobState::Done => StateName::Done,
            JobState::Failed { .. } => StateName::Failed,
            JobState::Dead => StateName::Dead,
            JobState::Cancelled => StateName::Cancelled,
        }
    }

    /// Done, dead or cancelled: nothing will change it again.
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobState::Done | JobState::Dead | JobState::Cancelled)
    }
}

/// The public state names (`--json` field `state`). A parent waiting on its children shows
/// as `leased`: it is being worked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateName {
    Queued,
    Leased,
    Done,
    Failed,
    Dead,
    Cancelled,
}

impl StateName {
    pub const ALL: [StateName; 6] = [
        StateName::Queued,
        StateName::Leased,
        StateName::Done,
        StateName::Failed,
        StateName::Dead,
        StateName::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Queued => "queued",
            StateName::Leased => "leased",
            StateName::Done => "done",
            StateName::Failed => "failed",
            StateName::Dead => "dead",
            StateName::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<StateName> {
        StateName::ALL.into_iter().find(|n| n.as_str() == s)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StateName::Done | StateName::Dead | StateName::Cancelled
        )
    }
}

impl std::fmt::Display for StateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parent's children, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildCounts {
    pub total: u32,
    pub done: u32,
    pub dead: u32,
    pub cancelled: u32,
    /// Input items (documents) the children cover, and those of finished children.
    pub items_total: u64,
    pub items_done: u64,
    /// Output units (chunks) the finished children produced.
    pub outputs: u64,
}

impl ChildCounts {
    pub fn finished(&self) -> u32 {
        self.done + self.dead + self.cancelled
    }
}

/// One step in a job's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: u64,
    pub state: StateName,
    pub note: Option<String>,
}

/// Progress as `done` of `total` units (children for a parent, 0/1 for a leaf), with the
/// items (documents) and outputs (chunks) of a parent's finished children, their rate since
/// submission and the estimated time left.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub done: u32,
    pub failed: u32,
    pub total: u32,
    pub items_done: u64,
    pub items_total: u64,
    pub outputs: u64,
    pub outputs_per_s: Option<f64>,
    pub eta_s: Option<u64>,
}

/// What the API and CLI show of a job. Field names are a stable interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: JobId,
    pub parent: Option<JobId>,
    pub kind: JobKind,
    pub state: StateName,
    pub progress: Progress,
    pub priority: i32,
    pub attempts: u32,
    pub max_attempts: u32,
    pub lost: u32,
    pub holder: Option<String>,
    pub retry_at_ms: Option<u64>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub finished_ms: Option<u64>,
    pub idempotency_key: Option<String>,
    pub description: String,
    pub error: Option<JobError>,
    pub history: Vec<Transition>,
    /// Why a queued job is not running, when its node knows (no node holds its model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

impl JobRecord {
    /// Add a step to the history, keeping the last [`HISTORY_LEN`].
    pub(crate) fn remember(&mut self, at_ms: u64, state: StateName, note: Option<String>) {
        if self.history.len() >= HISTORY_LEN {
            self.history.remove(0);
        }
        self.history.push(Transition { at_ms, state, note });
    }

    pub fn view(&self) -> JobView {
        let progress = match &self.children {
            Some(c) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let end = self.finished_ms.unwrap_or(now);
                let secs = end.saturating_sub(self.created_ms) as f64 / 1000.0;
                let live = self.finished_ms.is_none();
                Progress {
                    done: c.done,
                    failed: c.dead + c.cancelled,
                    total: c.total,
                    items_done: c.items_done,
                    items_total: c.items_total,
                    outputs: c.outputs,
                    outputs_per_s: (secs > 0.0 && c.outputs > 0).then(|| c.outputs as f64 / secs),
                    eta_s: (live && c.items_done > 0 && c.items_done < c.items_total).then(|| {
                        ((c.items_total - c.items_done) as f64 * secs / c.items_done as f64) as u64
                    }),
                }
            }
            None => Progress {
                done: u32::from(self.state == JobState::Done),
                failed: u32::from(matches!(self.state, JobState::Dead | JobState::Cancelled)),
                total: 1,
                items_done: 0,
                items_total: 0,
                outputs: 0,
                outputs_per_s: None,
                eta_s: None,
            },
        };
        let (holder, retry_at_ms) = match &self.state {
            JobState::Leased { holder, .. } => (Some(holder.clone()), None),
            JobState::Failed { retry_at_ms } => (None, Some(*retry_at_ms)),
            _ => (None, None),
        };
        JobView {
            id: self.id,
            parent: self.parent,
            kind: self.kind,
            state: self.state.name(),
            progress,
            priority: self.priority,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            lost: self.lost,
            holder,
            retry_at_ms,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            finished_ms: self.finished_ms,
            idempotency_key: self.idempotency_key.clone(),
            description: self.task.describe(),
            error: self.last_error.clone(),
            history: self.history.clone(),
            waiting: None,
        }
    }
}
