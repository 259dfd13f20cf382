//! One lane of the coordinator ([`LaneState`]): its leased, unstarted jobs, its idle
//! workers, whether a lease round is in flight, and its steal backoff, with the rules that
//! decide how much to lease, when to steal and how jobs go out to workers.
//!
//! Plain state and arithmetic, no I/O: the coordinator owns one per lane and acts on what
//! these methods say. Unit-tested below.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use myco_runtime::queue::{JobId, Lease};
use ractor::RpcReplyPort;

/// The shortest pause between two steal attempts of a lane, and the longest after
/// empty-handed ones.
pub const STEAL_MIN: Duration = Duration::from_millis(50);
pub const STEAL_MAX: Duration = Duration::from_secs(2);

/// A job handed to a worker, with the flag that tells it to stop.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub lease: Lease,
    pub cancel: Arc<AtomicBool>,
    /// The node that owns the job, when it was stolen; `None` for this node's own jobs.
    pub owner: Option<String>,
}

/// A leased job not started yet.
#[derive(Debug)]
pub struct Work {
    pub lease: Lease,
    /// The owner, for a stolen job.
    pub owner: Option<String>,
}

/// A job that went out to a worker.
#[derive(Debug)]
pub struct Started {
    pub id: JobId,
    pub token: u64,
    pub cancel: Arc<AtomicBool>,
    pub owner: Option<String>,
}

/// One lane's state.
#[derive(Debug)]
pub struct LaneState {
    /// Leased, unstarted jobs, in the order they go out.
    pub buffer: VecDeque<Work>,
    /// Idle workers of the lane, waiting for a job.
    pub idle: VecDeque<RpcReplyPort<Option<Assignment>>>,
    /// A lease round of the lane is in flight.
    pub leasing: bool,
    /// No steal attempt before this.
    next_steal: Instant,
    steal_backoff: Duration,
}

impl LaneState {
    pub fn new(now: Instant) -> LaneState {
        LaneState {
            buffer: VecDeque::new(),
            idle: VecDeque::new(),
            leasing: false,
            next_steal: now,
            steal_backoff: STEAL_MIN,
        }
    }

    /// How many jobs to lease now: enough for every idle worker plus `prefetch` on hand.
    /// Nothing while a round is in flight, nor while no worker waits and the buffer is still
    /// more than half full (leasing in small dribbles costs a commit each).
    pub fn want(&self, prefetch: usize) -> usize {
        if self.leasing {
            return 0;
        }
        let (idle, buffered) = (self.idle.len(), self.buffer.len());
        let want = (prefetch + idle).saturating_sub(buffered);
        if idle == 0 && buffered * 2 > prefetch {
            0
        } else {
            want
        }
    }

    /// Nothing is buffered, workers wait (or, `ahead`, even while they work: the next job
    /// then comes while this one runs, instead of a steal's round trip after it), and the
    /// steal backoff has passed.
    pub fn starving(&self, now: Instant, ahead: bool) -> bool {
        (ahead || !self.idle.is_empty()) && self.buffer.is_empty() && now >= self.next_steal
    }

    /// A steal brought jobs: the next may follow soon.
    pub fn stole(&mut self, now: Instant) {
        self.steal_backoff = STEAL_MIN;
        self.next_steal = now + STEAL_MIN;
    }

    /// A steal came back empty: wait twice as long before the next, at most [`STEAL_MAX`].
    pub fn stole_nothing(&mut self, now: Instant) {
        self.steal_backoff = (self.steal_backoff * 2).min(STEAL_MAX);
        self.next_steal = now + self.steal_backoff;
    }

    /// A peer has work again: do not sit out the backoff.
    pub fn peer_has_work(&mut self, now: Instant) {
        self.steal_backoff = STEAL_MIN;
        self.next_steal = now;
    }

    /// Forget job `id` if it is buffered here (cancelled, or no longer ours).
    pub fn forget(&mut self, id: JobId) {
        self.buffer.retain(|w| w.lease.id != id);
    }

    /// Hand buffered jobs to idle workers, first come first served. A worker that has gone
    /// (restarted) leaves its job at the front for the next one. Returns what went out.
    pub fn dispatch(&mut self) -> Vec<Started> {
        let mut out = Vec::new();
        while !self.buffer.is_empty() {
            let Some(port) = self.idle.pop_front() else {
                break;
            };
            let Some(work) = self.buffer.pop_front() else {
                break;
            };
            let cancel = Arc::new(AtomicBool::new(false));
            let started = Started {
                id: work.lease.id,
                token: work.lease.token,
                cancel: cancel.clone(),
                owner: work.owner.clone(),
            };
            let assignment = Assignment {
                lease: work.lease,
                cancel,
                owner: work.owner,
            };
            match port.send(Some(assignment)) {
                Ok(()) => out.push(started),
                Err(ractor::MessagingErr::SendErr(Some(a))) => self.buffer.push_front(Work {
                    lease: a.lease,
                    owner: a.owner,
                }),
                Err(_) => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use myco_jobs::Task;
    use myco_jobs::task::{FailMode, NoopTask};
    use tokio::sync::oneshot;

    use super::*;

    fn work(owner: Option<&str>) -> Work {
        Work {
            lease: Lease {
                id: JobId::new(),
                token: 7,
                task: Task::Noop(NoopTask {
                    payload: String::new(),
                    sleep_ms: 0,
                    fail_attempts: 0,
                    fail_mode: FailMode::default(),
                }),
                attempt: 1,
                timeout_ms: 1_000,
                deadline_ms: 0,
                priority: 0,
            },
            owner: owner.map(str::to_owned),
        }
    }

    type Rx = oneshot::Receiver<Option<Assignment>>;

    fn worker(lane: &mut LaneState) -> Rx {
        let (tx, rx) = oneshot::channel();
        lane.idle.push_back(RpcReplyPort::from(tx));
        rx
    }

    #[test]
    fn leases_for_idle_workers_and_the_prefetch_but_not_in_dribbles() {
        let now = Instant::now();
        let mut lane = LaneState::new(now);
        assert_eq!(lane.want(32), 32, "alone and empty: fill the prefetch");
        let _w = worker(&mut lane);
        assert_eq!(lane.want(32), 33, "and one for the idle worker");
        lane.leasing = true;
        assert_eq!(lane.want(32), 0, "one round at a time");
        lane.leasing = false;
        lane.idle.clear();
        for _ in 0..17 {
            lane.buffer.push_back(work(None));
        }
        assert_eq!(lane.want(32), 0, "more than half full, nobody waiting");
        lane.buffer.truncate(16);
        assert_eq!(lane.want(32), 16, "half empty: top up");
        // The executive keeps nothing on hand: only what its idle workers take.
        let mut exec = LaneState::new(now);
        assert_eq!(exec.want(0), 0);
        let _e = worker(&mut exec);
        assert_eq!(exec.want(0), 1);
    }

    impl LaneState {
        fn starving_now(&self, now: Instant) -> bool {
            self.starving(now, false)
        }
    }

    #[test]
    fn a_lane_that_steals_ahead_asks_while_its_worker_is_busy_and_nothing_is_on_hand() {
        let t0 = Instant::now();
        let mut lane = LaneState::new(t0);
        assert!(!lane.starving(t0, false), "no idle worker");
        assert!(
            lane.starving(t0, true),
            "ahead: the next job, while this one runs"
        );
        lane.buffer.push_back(work(None));
        assert!(!lane.starving(t0, true), "one on hand is enough");
    }

    #[test]
    fn empty_steals_back_off_doubling_to_the_cap_and_peer_work_resets_it() {
        let t0 = Instant::now();
        let mut lane = LaneState::new(t0);
        assert!(!lane.starving_now(t0), "no idle worker: not starving");
        let _w = worker(&mut lane);
        assert!(lane.starving_now(t0));
        lane.stole_nothing(t0);
        assert!(!lane.starving_now(t0 + STEAL_MIN * 2 - Duration::from_millis(1)));
        assert!(lane.starving_now(t0 + STEAL_MIN * 2));
        for _ in 0..10 {
            lane.stole_nothing(t0);
        }
        assert!(!lane.starving_now(t0 + STEAL_MAX - Duration::from_millis(1)));
        assert!(lane.starving_now(t0 + STEAL_MAX), "capped at STEAL_MAX");
        lane.peer_has_work(t0);
        assert!(lane.starving_now(t0), "peer work: steal at once");
        lane.stole(t0);
        assert!(lane.starving_now(t0 + STEAL_MIN));
        lane.buffer.push_back(work(None));
        assert!(
            !lane.starving_now(t0 + STEAL_MAX),
            "jobs on hand: not starving"
        );
    }

    #[tokio::test]
    async fn dispatch_pairs_jobs_with_workers_in_order_and_keeps_a_gone_workers_job() {
        let mut lane = LaneState::new(Instant::now());
        let gone = worker(&mut lane);
        drop(gone);
        let first = worker(&mut lane);
        let (a, b) = (work(None), work(Some("owner")));
        let (a_id, b_id) = (a.lease.id, b.lease.id);
        lane.buffer.push_back(a);
        lane.buffer.push_back(b);
        let started = lane.dispatch();
        assert_eq!(started.len(), 1);
        assert_eq!(
            started[0].id, a_id,
            "the gone worker's job went to the next one"
        );
        let got = first.await.unwrap().unwrap();
        assert_eq!(got.lease.id, a_id);
        assert_eq!(lane.buffer.len(), 1, "no worker left for the second");
        let second = worker(&mut lane);
        let started = lane.dispatch();
        assert_eq!(started[0].owner.as_deref(), Some("owner"));
        assert_eq!(second.await.unwrap().unwrap().lease.id, b_id);
        lane.buffer.push_back(work(None));
        let id = lane.buffer[0].lease.id;
        lane.forget(id);
        assert!(lane.buffer.is_empty());
    }
}
