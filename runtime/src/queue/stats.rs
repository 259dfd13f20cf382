//! The counters the writer keeps for `/metrics`: jobs by state and kind, finished jobs,
//! latency histograms, failed attempts, commits, and the last hour by minute ([`Recent`]).

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
    /// The last hour of finished jobs, by minute.
    pub recent: Recent,
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

/// One minute of finished jobs, for the dashboard's last-hour chart.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Minute {
    /// Minutes since the Unix epoch.
    pub minute: u64,
    pub done: u64,
    pub dead: u64,
    pub cancelled: u64,
    /// Summed submit-to-done latency of the `done` jobs.
    pub latency_ms_sum: u64,
    /// Leaf jobs done, by the node that ran them (the lease holder's node name): a thief's
    /// share shows here as it steals.
    pub by_node: std::collections::BTreeMap<String, u64>,
}

/// The last [`Recent::MINUTES`] minutes of finished jobs, kept in memory by the writer (a
/// restarted node starts empty).
#[derive(Debug, Clone, Default)]
pub struct Recent {
    minutes: std::collections::VecDeque<Minute>,
}

impl Recent {
    pub const MINUTES: u64 = 60;

    /// Count a job that finished at `at_ms` in `state`; `ran_on` is the node that held its
    /// lease (none for a parent, which finishes with its children).
    pub fn observe(&mut self, at_ms: u64, state: StateName, latency_ms: u64, ran_on: Option<&str>) {
        let minute = at_ms / 60_000;
        let newest = self.minutes.back().map(|m| m.minute);
        let i = if newest.is_some_and(|n| n >= minute) {
            // This minute, or an earlier one (a clock that stepped back: the newest, then).
            self.minutes
                .iter()
                .rposition(|m| m.minute == minute)
                .unwrap_or(self.minutes.len() - 1)
        } else {
            self.minutes.push_back(Minute {
                minute,
                ..Minute::default()
            });
            while self
                .minutes
                .front()
                .is_some_and(|m| m.minute + Self::MINUTES <= minute)
            {
                self.minutes.pop_front();
            }
            self.minutes.len() - 1
        };
        let m = &mut self.minutes[i];
        match state {
            StateName::Done => {
                m.done += 1;
                m.latency_ms_sum += latency_ms;
                if let Some(node) = ran_on {
                    let name = node.split('#').next().unwrap_or(node);
                    *m.by_node.entry(name.to_owned()).or_default() += 1;
                }
            }
            StateName::Dead => m.dead += 1,
            _ => m.cancelled += 1,
        }
    }

    /// The minutes of the hour before `now_ms` that saw a finished job, oldest first.
    pub fn last_hour(&self, now_ms: u64) -> Vec<Minute> {
        let now = now_ms / 60_000;
        self.minutes
            .iter()
            .filter(|m| m.minute + Self::MINUTES > now)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keeps_an_hour_of_minutes_by_node() {
        let mut r = Recent::default();
        r.observe(60_000, StateName::Done, 10, Some("a#1"));
        r.observe(61_000, StateName::Done, 30, Some("b#7"));
        r.observe(62_000, StateName::Done, 5, None);
        r.observe(119_000, StateName::Dead, 0, Some("b#7"));
        let h = r.last_hour(120_000);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!((h[0].done, h[0].dead, h[0].latency_ms_sum), (3, 1, 45));
        assert_eq!(h[0].by_node.get("a"), Some(&1));
        assert_eq!(h[0].by_node.get("b"), Some(&1));
        r.observe(30 * 60_000, StateName::Cancelled, 0, None);
        r.observe(61 * 60_000, StateName::Done, 1, Some("a#1"));
        let h = r.last_hour(61 * 60_000);
        assert_eq!(h.iter().map(|m| m.minute).collect::<Vec<_>>(), [30, 61]);
        assert!(r.minutes.len() <= Recent::MINUTES as usize);
    }
}
