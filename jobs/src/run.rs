//! What an executor sees of the attempt it runs: [`RunContext`] (attempt number,
//! cancellation, a joining parent's [`ChildResults`], a streaming task's [`Stream`]).
//!
//! Plain types only: nothing here runs a task or knows the [`Task`](crate::Task) enum.

use crate::error::JobError;

/// Visits a joining parent's children in order, one at a time: each one's id and how it
/// ended.
pub type ChildResults<'a> =
    dyn Fn(&mut dyn FnMut(Child<'_>) -> Result<(), JobError>) -> Result<(), JobError> + 'a;

/// One child of a joining parent, as [`ChildResults`] visits it.
#[derive(Debug, Clone, Copy)]
pub struct Child<'a> {
    /// Its job id (a ULID, as text).
    pub id: &'a str,
    pub outcome: Outcome<'a>,
}

/// How a child ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Its result.
    Done(&'a [u8]),
    /// It failed for good: its last error, and whether that was the request's own fault
    /// (fatal) rather than the machinery's.
    Failed { message: &'a str, fatal: bool },
    /// Cancelled (or not finished at all).
    Cancelled,
}

/// What an executor sees of the attempt it runs.
pub struct RunContext<'a> {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Polled between units of work; true once the job is cancelled or timed out.
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
    /// For a parent that joins (see [`KindTraits::joins`](crate::kind::KindTraits::joins)):
    /// its children's results.
    pub children: Option<&'a ChildResults<'a>>,
    /// Where a streaming task (infer) sends its output as it goes: a token id (`None` for
    /// text released at the end) and the text it completes.
    pub stream: Option<&'a Stream<'a>>,
}

/// Receives a streaming task's pieces (see [`RunContext::stream`]).
pub type Stream<'a> = dyn Fn(Option<i32>, &str) + 'a;

impl std::fmt::Debug for RunContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}
