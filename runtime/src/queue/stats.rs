//! The counters the writer keeps for `/metrics`: jobs by state and kind, finished jobs,
//! latency histograms, failed attempts, commits.

use std::collections::HashMap;

use myco_jobs::JobKind;

use super::record::StateName;

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
