//! The Coordinator: the node's link to its durable queue. It leases work in batches, hands it
//! to workers that **pull** when idle, renews the leases of jobs in flight, runs the queue's
//! clock (expiry, retries), relays cancellations, and drains on shutdown.
//!
//! Its state (buffered leases, running jobs) is volatile by design: every lease is in redb,
//! so a crash loses nothing, and leases it no longer renews expire back into the queue.
//! Queue commits never run inside `handle`: they run in tracked tasks that report back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use myco_jobs::JobKind;
use myco_runtime::cluster::wire::NodeLoad;
use myco_runtime::queue::{JobId, Lease, Queue, StateName};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::membership::MembershipMsg;

/// A job handed to a worker, with the flag that tells it to stop.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub lease: Lease,
    pub cancel: Arc<AtomicBool>,
}

/// Messages to the [`Coordinator`].
#[derive(Debug)]
pub enum CoordinatorMsg {
    /// A worker is idle and wants a job; `None` means the node is draining: stop pulling.
    RequestWork(RpcReplyPort<Option<Assignment>>),
    /// A worker is done with a job (its result or failure is on its way to the queue).
    Finished(JobId),
    /// Jobs may have become ready in the queue.
    WorkAvailable,
    /// A lease round came back (internal).
    Leased(Result<Vec<Lease>, String>),
    /// Periodic: expire leases, promote retries, renew what we hold (internal).
    Tick,
    /// A background queue call ended (internal).
    TickDone(Vec<JobId>),
    /// A job was cancelled through the API: stop it if it runs here.
    Cancel(JobId),
    /// Stop handing out work, give back unstarted leases, and reply once the running jobs
    /// have finished or `grace` has passed (then their leases are given back too).
    Drain {
        grace: Duration,
        reply: RpcReplyPort<()>,
    },
    /// The drain's grace ran out (internal).
    DrainTimeout,
    /// How many jobs are buffered and running (for status pages and tests).
    Load(RpcReplyPort<Load>),
}

// Local only: never serialized (the cluster feature requires the impl).
impl ractor::Message for CoordinatorMsg {}

/// What a coordinator holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Load {
    pub buffered: usize,
    pub running: usize,
    pub idle_workers: usize,
}

/// The coordinator's fixed settings.
#[derive(Debug, Clone)]
pub struct Coordinator {
    pub queue: Queue,
    /// Job kinds this node's workers run.
    pub kinds: Vec<JobKind>,
    pub lease: Duration,
    pub tick: Duration,
    /// Most leased-but-unstarted jobs to keep on hand.
    pub prefetch: usize,
    /// Executor slots (workers) on this node.
    pub slots: u32,
    /// The swarm's membership, if this node is in one: told this node's load every tick.
    pub membership: Option<ActorRef<MembershipMsg>>,
}

#[derive(Debug)]
pub struct CoordinatorState {
    buffer: VecDeque<Lease>,
    idle: VecDeque<RpcReplyPort<Option<Assignment>>>,
    running: HashMap<JobId, (u64, Arc<AtomicBool>)>,
    leasing: bool,
    ticking: bool,
    last_renew: Instant,
    /// Set once a drain starts: no more work goes out.
    stopping: bool,
    drain_reply: Option<RpcReplyPort<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Actor for Coordinator {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let ticker = {
            let me = myself.clone();
            let every = self.tick;
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(every);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    interval.tick().await;
                    if me.cast(CoordinatorMsg::Tick).is_err() {
                        break;
                    }
                }
            })
        };
        let watcher = {
            let me = myself.clone();
            let queue = self.queue.clone();
            tokio::spawn(async move {
                loop {
                    queue.ready().await;
                    if me.cast(CoordinatorMsg::WorkAvailable).is_err() {
                        break;
                    }
                }
            })
        };
        Ok(CoordinatorState {
            buffer: VecDeque::new(),
            idle: VecDeque::new(),
            running: HashMap::new(),
            leasing: false,
            ticking: false,
            last_renew: Instant::now(),
            stopping: false,
            drain_reply: None,
            tasks: vec![ticker, watcher],
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for task in state.tasks.drain(..) {
            task.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CoordinatorMsg::RequestWork(reply) => {
                if state.stopping {
                    let _ = reply.send(None);
                    return Ok(());
                }
                state.idle.push_back(reply);
                self.dispatch(state);
                self.refill(&myself, state);
            }
            CoordinatorMsg::Finished(id) => {
                state.running.remove(&id);
                self.maybe_drained(state);
            }
            CoordinatorMsg::WorkAvailable => self.refill(&myself, state),
            CoordinatorMsg::Leased(result) => {
                state.leasing = false;
                match result {
                    Ok(leases) => {
                        let got = !leases.is_empty();
                        if state.stopping {
                            self.give_back(state, leases);
                            return Ok(());
                        }
                        state.buffer.extend(leases);
                        self.dispatch(state);
                        if got {
                            self.refill(&myself, state);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "leasing from the queue failed"),
                }
            }
            CoordinatorMsg::Tick => self.tick(&myself, state),
            CoordinatorMsg::TickDone(lost) => {
                state.ticking = false;
                for id in lost {
                    // We no longer hold it (cancelled or expired): stop working on it.
                    state.buffer.retain(|l| l.id != id);
                    if let Some((_, flag)) = state.running.get(&id) {
                        flag.store(true, Ordering::SeqCst);
                    }
                }
                self.refill(&myself, state);
            }
            CoordinatorMsg::Cancel(id) => {
                state.buffer.retain(|l| l.id != id);
                if let Some((_, flag)) = state.running.get(&id) {
                    flag.store(true, Ordering::SeqCst);
                }
            }
            CoordinatorMsg::Drain { grace, reply } => {
                state.stopping = true;
                state.drain_reply = Some(reply);
                for port in state.idle.drain(..) {
                    let _ = port.send(None);
                }
                // Hand back what never started, before anyone is told the drain is done.
                let unstarted: Vec<(JobId, u64)> =
                    state.buffer.drain(..).map(|l| (l.id, l.token)).collect();
                if !unstarted.is_empty()
                    && let Err(e) = self.queue.release(unstarted).await
                {
                    tracing::warn!(error = %e, "handing back leases failed; they will expire");
                }
                let me = myself.clone();
                state.tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    let _ = me.cast(CoordinatorMsg::DrainTimeout);
                }));
                self.maybe_drained(state);
            }
            CoordinatorMsg::DrainTimeout => {
                if state.drain_reply.is_some() && !state.running.is_empty() {
                    tracing::warn!(
                        running = state.running.len(),
                        "shutdown grace ran out: cancelling running jobs and handing them back"
                    );
                    let held: Vec<(JobId, u64)> = state
                        .running
                        .iter()
                        .map(|(id, (token, flag))| {
                            flag.store(true, Ordering::SeqCst);
                            (*id, *token)
                        })
                        .collect();
                    let _ = self.queue.release(held).await;
                    state.running.clear();
                    self.maybe_drained(state);
                }
            }
            CoordinatorMsg::Load(reply) => {
                let _ = reply.send(Load {
                    buffered: state.buffer.len(),
                    running: state.running.len(),
                    idle_workers: state.idle.len(),
                });
            }
        }
        Ok(())
    }
}

impl Coordinator {
    /// Hand buffered jobs to idle workers.
    fn dispatch(&self, state: &mut CoordinatorState) {
        while !state.buffer.is_empty() {
            let Some(port) = state.idle.pop_front() else {
                return;
            };
            let Some(lease) = state.buffer.pop_front() else {
                return;
            };
            let cancel = Arc::new(AtomicBool::new(false));
            let id = lease.id;
            let token = lease.token;
            let assignment = Assignment {
                lease,
                cancel: cancel.clone(),
            };
            match port.send(Some(assignment)) {
                Ok(()) => {
                    state.running.insert(id, (token, cancel));
                }
                Err(e) => {
                    // The worker is gone (restarted): keep the job for the next one.
                    if let ractor::MessagingErr::SendErr(Some(a)) = e {
                        state.buffer.push_front(a.lease);
                    }
                }
            }
        }
    }

    /// Lease more jobs if workers wait or the buffer runs low.
    fn refill(&self, myself: &ActorRef<CoordinatorMsg>, state: &mut CoordinatorState) {
        if state.leasing || state.stopping {
            return;
        }
        let want = (self.prefetch + state.idle.len()).saturating_sub(state.buffer.len());
        if want == 0 || (state.idle.is_empty() && state.buffer.len() * 2 > self.prefetch) {
            return;
        }
        state.leasing = true;
        let queue = self.queue.clone();
        let kinds = self.kinds.clone();
        let lease = self.lease;
        let me = myself.clone();
        track(
            state,
            tokio::spawn(async move {
                let result = queue
                    .lease(want, &kinds, lease)
                    .await
                    .map_err(|e| e.to_string());
                let _ = me.cast(CoordinatorMsg::Leased(result));
            }),
        );
    }

    /// Run the queue clock and renew our leases, off the actor.
    fn tick(&self, myself: &ActorRef<CoordinatorMsg>, state: &mut CoordinatorState) {
        if let Some(m) = &self.membership {
            let _ = m.cast(MembershipMsg::Load(NodeLoad {
                queued: self.queue.stats().by_state[StateName::Queued.index()],
                running: state.running.len() as u32,
                slots: self.slots,
            }));
        }
        if state.ticking {
            return;
        }
        state.ticking = true;
        let renew_due = state.last_renew.elapsed() >= self.lease / 3;
        let held: Vec<(JobId, u64)> = if renew_due {
            state.last_renew = Instant::now();
            state
                .buffer
                .iter()
                .map(|l| (l.id, l.token))
                .chain(state.running.iter().map(|(id, (t, _))| (*id, *t)))
                .collect()
        } else {
            Vec::new()
        };
        let queue = self.queue.clone();
        let lease = self.lease;
        let me = myself.clone();
        track(
            state,
            tokio::spawn(async move {
                if let Err(e) = queue.tick().await {
                    tracing::warn!(error = %e, "queue tick failed");
                }
                let lost = if held.is_empty() {
                    Vec::new()
                } else {
                    queue.renew(held, lease).await.unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "renewing leases failed");
                        Vec::new()
                    })
                };
                let _ = me.cast(CoordinatorMsg::TickDone(lost));
            }),
        );
    }

    fn give_back(&self, state: &mut CoordinatorState, leases: Vec<Lease>) {
        if leases.is_empty() {
            return;
        }
        let held: Vec<(JobId, u64)> = leases.iter().map(|l| (l.id, l.token)).collect();
        let queue = self.queue.clone();
        track(
            state,
            tokio::spawn(async move {
                if let Err(e) = queue.release(held).await {
                    tracing::warn!(error = %e, "handing back leases failed; they will expire");
                }
            }),
        );
    }

    fn maybe_drained(&self, state: &mut CoordinatorState) {
        if state.running.is_empty()
            && let Some(reply) = state.drain_reply.take()
        {
            let _ = reply.send(());
        }
    }
}

/// Keep a handle on a background task; finished ones are dropped.
fn track(state: &mut CoordinatorState, task: JoinHandle<()>) {
    state.tasks.retain(|t| !t.is_finished());
    state.tasks.push(task);
}
