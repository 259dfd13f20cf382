//! How a queue runs: its options (holder name, backoff, batch sizes) and its clock (the
//! system's, or a manual one for tests).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// How long a finished interactive job (priority at least [`INTERACTIVE_PRIORITY`]: a
    /// chat request, a query's embedding) stays in the queue file with its prompt and
    /// result; then it is removed.
    pub retention_interactive_ms: u64,
    /// The same for every other finished job (batch work), children and results included.
    pub retention_batch_ms: u64,
    /// Fault injection for tests: while this file exists, every write to the queue file
    /// fails as on a full disk. A node sets it from `MYCO_FAULT_DISK_FULL`
    /// ([`super::FAULT_DISK_FULL_ENV`]).
    pub disk_full_while: Option<std::path::PathBuf>,
    /// The jobs this node was running (not only leased) when its last run was killed for
    /// memory (see [`crate::running`]). One that was running at such a death before too
    /// goes dead instead of being leased again.
    pub oom_killed: Vec<super::JobId>,
}

/// The priority of interactive requests (the API's and the CLI's), ahead of batch work's 0:
/// the CPU budget and the retention of finished jobs treat jobs at or above it as
/// interactive.
pub const INTERACTIVE_PRIORITY: i32 = 500;

/// Finished interactive jobs are kept a day by default.
pub const RETENTION_INTERACTIVE_MS: u64 = 24 * 3600 * 1000;
/// Finished batch jobs a week.
pub const RETENTION_BATCH_MS: u64 = 7 * 24 * 3600 * 1000;

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            node: "local".into(),
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            max_lost: 10,
            max_batch: 8_192,
            channel: 16_384,
            retention_interactive_ms: RETENTION_INTERACTIVE_MS,
            retention_batch_ms: RETENTION_BATCH_MS,
            disk_full_while: None,
            oom_killed: Vec::new(),
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
