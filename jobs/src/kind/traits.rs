//! The traits of a job kind, as a small table ([`KindTraits`]) each kind module fills in:
//! its [`Lane`], whether it streams or joins, whether its parent stays on its owner, whether
//! it may need a GPU, and which executor runs it.
//!
//! Plain data: it must not know the kinds themselves (those are the sibling modules).

/// Which workers run a job: the batch lane (CPU kinds) or the executive (interactive LLM
/// work).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Batch = 0,
    Executive = 1,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Batch, Lane::Executive];
}

/// Whether a kind's tasks need a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gpu {
    /// Never.
    Never,
    /// When the job asks for one (`gpu = true`).
    IfAsked,
}

/// What runs a kind's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorKind {
    /// [`CpuExecutor`](crate::CpuExecutor), on a worker or the executive thread.
    Cpu,
    /// The node's stage chain (layer-range stages across nodes), not an executor.
    StageChain,
}

/// What the rest of myco needs to know about a kind, without knowing the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindTraits {
    /// The lane whose workers run it.
    pub lane: Lane,
    /// Its output streams to clients as it runs (see
    /// [`RunContext::stream`](crate::RunContext::stream)).
    pub streams: bool,
    /// Its parent runs itself once its children have finished, with their results.
    pub joins: bool,
    /// Its parent joins even when no child is done (else such a parent is dead).
    pub joins_failed: bool,
    /// Its parent task (one that fans out into children) runs, or waits, only on the job's
    /// owner: it writes the owner's files or reads its children.
    pub owner_only: bool,
    pub gpu: Gpu,
    pub executor: ExecutorKind,
}
