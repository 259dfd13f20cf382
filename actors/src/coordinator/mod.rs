//! The Coordinator: the node's link to its durable queue. It leases work in batches, hands it
//! to workers that **pull** when idle, renews the leases of jobs in flight, runs the queue's
//! clock (expiry, retries), relays cancellations, and drains on shutdown. In a swarm it also
//! **steals** when its workers idle, renews stolen leases at their owners, and delivers the
//! outbox (results of stolen jobs) to their owners until they acknowledge.
//!
//! Work runs in two **lanes**. The batch lane's workers run the CPU kinds (chunk, embed,
//! archive, ...); the executive lane runs LLM inference, whose models are big, loaded once and
//! kept, and whose decode loop takes every core for a moment. Each lane leases and buffers
//! only its own kinds, so a user's question never waits behind an overnight batch, and the
//! executive lane leases only jobs whose model file this node holds: the rest stay queued for
//! a peer that holds it to steal.
//!
//! Each lane's own state and rules (how much to lease, when to steal, handing jobs out) are
//! in [`lane`]; this file decides when to act on them.
//!
//! Its state (buffered leases, running jobs) is volatile by design: every lease is in redb
//! (the owner's), so a crash loses nothing, and leases it no longer renews expire back into
//! their owner's queue. Queue commits and peer calls never run inside `handle`: they run in
//! tracked tasks that report back with a message.

mod lane;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use myco_jobs::{Fit, JobKind, Lane};
use myco_runtime::cluster::wire::NodeLoad;
use myco_runtime::queue::{JobId, Lease, Queue, StateName};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::swarm::membership::MembershipMsg;
use crate::swarm::stealing;
use crate::swarm::view::{Swarm, SwarmEvent, SwarmSignalsRx};

pub use lane::Assignment;
use lane::{LaneState, Work};

/// Messages to the [`Coordinator`].
#[derive(Debug)]
pub enum CoordinatorMsg {
    /// A worker of a lane is idle and wants a job; `None` means the node is draining: stop
    /// pulling.
    RequestWork(Lane, RpcReplyPort<Option<Assignment>>),
    /// A worker is done with a job (its result or failure is on its way to the queue, or to
    /// the outbox for a stolen job).
    Finished(JobId),
    /// Jobs may have become ready in the queue.
    WorkAvailable,
    /// A lease round of a lane came back (internal).
    Leased(Lane, Result<Vec<Lease>, String>),
    /// A steal attempt came back: the owner, what it lent, and how long it took (internal).
    Stolen(Option<(String, Vec<Lease>, Duration)>),
    /// Periodic: expire leases, promote retries, renew what we hold (internal).
    Tick,
    /// A background renewal ended: the leases we no longer hold (internal).
    TickDone(Vec<JobId>),
    /// An outbox delivery round ended; `true` if something is left (internal).
    Delivered(bool),
    /// From Membership, on this coordinator's channel: how many peers are up (with peers,
    /// keep fewer jobs on hand so that they can be stolen), or a peer has queued work.
    Swarm(SwarmEvent),
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
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Load {
    pub buffered: usize,
    pub running: usize,
    /// Idle batch workers.
    pub idle_workers: usize,
    /// Idle executives.
    pub idle_executives: usize,
    /// Of the running jobs, those stolen from peers.
    pub running_stolen: usize,
    /// Successful steals since start, the jobs they brought, and their summed latency.
    pub steals: u64,
    pub stolen_jobs: u64,
    pub steal_seconds: f64,
}

/// The coordinator's fixed settings.
#[derive(Debug, Clone)]
pub struct Coordinator {
    pub queue: Queue,
    /// Job kinds this node's workers run.
    pub kinds: Vec<JobKind>,
    /// The node's home: where its models are.
    pub home: std::path::PathBuf,
    pub lease: Duration,
    pub tick: Duration,
    /// Most leased-but-unstarted jobs to keep on hand when alone.
    pub prefetch: usize,
    /// Executor slots (workers of both lanes) on this node.
    pub slots: u32,
    /// Of those, the executive lane's.
    pub executives: u32,
    /// This node has a GPU (jobs that require one may run here).
    pub gpu: bool,
    /// The swarm, if this node is in one: Membership (told this node's load) and its
    /// published view (peers to steal from, owners to deliver to).
    pub swarm: Option<(ActorRef<MembershipMsg>, Swarm)>,
    /// Fetching models from peers: with `auto_pull`, an idle executive lane pulls a model
    /// that `infer` jobs wait for at a peer, and then steals them (replicas on demand).
    pub travel: Option<crate::travel::Travel>,
    pub auto_pull: bool,
}

#[derive(Debug)]
struct Running {
    token: u64,
    cancel: Arc<AtomicBool>,
    owner: Option<String>,
}

#[derive(Debug)]
pub struct CoordinatorState {
    /// By lane: buffered jobs, idle workers, lease rounds and steal backoff (the
    /// executive's steals come back empty far more often than the batch lane's, and must
    /// not hold back its steals).
    lanes: [LaneState; 2],
    running: HashMap<JobId, Running>,
    ticking: bool,
    last_renew: Instant,
    peers: usize,
    /// The lane of the steal attempt in flight.
    stealing: Option<Lane>,
    /// Owners this node stole from, and when: renewals go to them even when nothing of
    /// theirs is held any more, so they can reclaim grants that never arrived.
    owners: HashMap<String, Instant>,
    steals: u64,
    stolen_jobs: u64,
    steal_secs: f64,
    /// Steal attempts made (picks the lane of the next one).
    steal_rounds: u64,
    delivering: bool,
    outbox_pending: bool,
    /// Something was added to the outbox while a delivery round ran.
    redeliver: bool,
    ticks: u64,
    /// Set once a drain starts: no more work goes out.
    stopping: bool,
    drain_reply: Option<RpcReplyPort<()>>,
    /// Loops that run as long as the actor (the ticker, the queue watcher, the swarm's
    /// events) and the drain's timer: aborted at stop.
    loops: Vec<JoinHandle<()>>,
    /// One-shot work off the actor (handing back leases, deliveries, steals): awaited at
    /// stop, up to [`STOP_DEADLINE`], so none is cut off halfway.
    tasks: Vec<JoinHandle<()>>,
    /// When the models the queued `infer` jobs wait for were last counted (for heartbeats).
    wanted_at: Option<Instant>,
    /// A model is being pulled for jobs that wait at a peer.
    pulling: Arc<AtomicBool>,
}

/// How long a stopping coordinator waits for its one-shot tasks.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

impl Actor for Coordinator {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    /// The channel Membership tells this coordinator of the swarm on (in a swarm).
    type Arguments = Option<SwarmSignalsRx>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        events: Self::Arguments,
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
        let mut loops = vec![ticker, watcher];
        if let Some(mut events) = events {
            let me = myself.clone();
            loops.push(tokio::spawn(async move {
                let mut seen = *events.borrow_and_update();
                while events.changed().await.is_ok() {
                    let now = *events.borrow_and_update();
                    let mut said = Vec::new();
                    if now.peers_up != seen.peers_up {
                        said.push(SwarmEvent::PeersUp(now.peers_up));
                    }
                    if now.peer_work != seen.peer_work {
                        said.push(SwarmEvent::PeerWork);
                    }
                    seen = now;
                    if said
                        .into_iter()
                        .any(|e| me.cast(CoordinatorMsg::Swarm(e)).is_err())
                    {
                        break;
                    }
                }
            }));
        }
        let outbox_pending = self.queue.outbox_len().map(|n| n > 0).unwrap_or(true);
        Ok(CoordinatorState {
            lanes: [
                LaneState::new(Instant::now()),
                LaneState::new(Instant::now()),
            ],
            running: HashMap::new(),
            ticking: false,
            last_renew: Instant::now(),
            peers: 0,
            stealing: None,
            owners: HashMap::new(),
            steals: 0,
            stolen_jobs: 0,
            steal_secs: 0.0,
            steal_rounds: 0,
            delivering: false,
            outbox_pending,
            redeliver: false,
            ticks: 0,
            stopping: false,
            drain_reply: None,
            loops,
            tasks: Vec::new(),
            wanted_at: None,
            pulling: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for task in state.loops.drain(..) {
            task.abort();
        }
        let tasks: Vec<JoinHandle<()>> = state.tasks.drain(..).collect();
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(STOP_DEADLINE, futures_util::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!(
                "background work still running {STOP_DEADLINE:?} into the stop: cutting it off"
            );
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
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
            CoordinatorMsg::RequestWork(lane, reply) => {
                if state.stopping {
                    let _ = reply.send(None);
                    return Ok(());
                }
                state.lanes[lane as usize].idle.push_back(reply);
                self.dispatch(state);
                self.refill(&myself, state);
            }
            CoordinatorMsg::Finished(id) => {
                if let Some(r) = state.running.remove(&id)
                    && r.owner.is_some()
                {
                    state.outbox_pending = true;
                    self.deliver(&myself, state);
                }
                self.maybe_drained(state);
            }
            CoordinatorMsg::WorkAvailable => {
                self.report_load(state);
                self.refill(&myself, state);
            }
            CoordinatorMsg::Leased(lane, result) => {
                state.lanes[lane as usize].leasing = false;
                match result {
                    Ok(leases) => {
                        let got = !leases.is_empty();
                        if state.stopping {
                            self.give_back(state, leases);
                            return Ok(());
                        }
                        for lease in leases {
                            let lane = lease.task.lane();
                            state.lanes[lane as usize]
                                .buffer
                                .push_back(Work { lease, owner: None });
                        }
                        self.dispatch(state);
                        if got {
                            self.refill(&myself, state);
                        } else {
                            self.maybe_steal(&myself, state);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "leasing from the queue failed"),
                }
            }
            CoordinatorMsg::Stolen(grant) => {
                let l = state.stealing.take().unwrap_or(Lane::Batch) as usize;
                match grant {
                    Some((owner, leases, took)) if !leases.is_empty() => {
                        state.steals += 1;
                        state.owners.insert(owner.clone(), Instant::now());
                        state.stolen_jobs += leases.len() as u64;
                        state.steal_secs += took.as_secs_f64();
                        state.lanes[l].stole(Instant::now());
                        tracing::debug!(owner = %owner, jobs = leases.len(), "stole jobs");
                        for lease in leases {
                            let lane = lease.task.lane();
                            state.lanes[lane as usize].buffer.push_back(Work {
                                lease,
                                owner: Some(owner.clone()),
                            });
                        }
                        self.dispatch(state);
                    }
                    _ => {
                        state.lanes[l].stole_nothing(Instant::now());
                    }
                }
            }
            CoordinatorMsg::Tick => {
                state.ticks += 1;
                if state.ticks.is_multiple_of(20) {
                    // A safety net: look at the outbox now and then even without a cue.
                    state.outbox_pending = true;
                }
                self.tick(&myself, state);
                if state.ticks.is_multiple_of(4) {
                    // A model may have arrived since the executive last looked: queued infer
                    // jobs for it are not announced by the queue.
                    self.refill_lane(&myself, state, Lane::Executive);
                }
                self.maybe_steal(&myself, state);
                if state.outbox_pending {
                    self.deliver(&myself, state);
                }
            }
            CoordinatorMsg::TickDone(lost) => {
                state.ticking = false;
                for id in lost {
                    // We no longer hold it (cancelled or expired): stop working on it.
                    for lane in &mut state.lanes {
                        lane.forget(id);
                    }
                    if let Some(r) = state.running.get(&id) {
                        r.cancel.store(true, Ordering::SeqCst);
                    }
                }
                self.refill(&myself, state);
            }
            CoordinatorMsg::Delivered(left) => {
                state.delivering = false;
                state.outbox_pending = left || state.redeliver;
                if std::mem::take(&mut state.redeliver) {
                    self.deliver(&myself, state);
                }
            }
            CoordinatorMsg::Swarm(SwarmEvent::PeerWork) => {
                // A peer has work again: do not sit out the steal backoff.
                for lane in &mut state.lanes {
                    lane.peer_has_work(Instant::now());
                }
                self.maybe_steal(&myself, state);
            }
            CoordinatorMsg::Swarm(SwarmEvent::PeersUp(n)) => {
                state.peers = n;
                // Jobs leased while alone would sit here while peers idle: hand back all
                // unstarted ones beyond what our own workers take next, so they can be
                // stolen.
                let keep = self.prefetch(state, Lane::Batch);
                let buffer = &mut state.lanes[Lane::Batch as usize].buffer;
                let local = buffer.iter().filter(|w| w.owner.is_none()).count();
                if n > 0 && local > keep {
                    let mut excess = Vec::new();
                    let mut kept = 0;
                    buffer.retain(|w| {
                        if w.owner.is_some() || kept < keep {
                            kept += usize::from(w.owner.is_none());
                            true
                        } else {
                            excess.push(w.lease.clone());
                            false
                        }
                    });
                    tracing::debug!(
                        released = excess.len(),
                        "peers joined: handing back buffered jobs"
                    );
                    self.give_back(state, excess);
                }
            }
            CoordinatorMsg::Cancel(id) => {
                for lane in &mut state.lanes {
                    lane.forget(id);
                }
                if let Some(r) = state.running.get(&id) {
                    r.cancel.store(true, Ordering::SeqCst);
                }
            }
            CoordinatorMsg::Drain { grace, reply } => {
                state.stopping = true;
                state.drain_reply = Some(reply);
                for port in state.lanes.iter_mut().flat_map(|l| l.idle.drain(..)) {
                    let _ = port.send(None);
                }
                // Hand back what never started, before anyone is told the drain is done.
                // Stolen leases not started simply expire at their owners.
                let unstarted: Vec<(JobId, u64)> = state
                    .lanes
                    .iter_mut()
                    .flat_map(|l| l.buffer.drain(..))
                    .filter(|w| w.owner.is_none())
                    .map(|w| (w.lease.id, w.lease.token))
                    .collect();
                if !unstarted.is_empty()
                    && let Err(e) = self.queue.release(unstarted).await
                {
                    tracing::warn!(error = %e, "handing back leases failed; they will expire");
                }
                let me = myself.clone();
                state.loops.push(tokio::spawn(async move {
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
                        .filter(|(_, r)| {
                            r.cancel.store(true, Ordering::SeqCst);
                            r.owner.is_none()
                        })
                        .map(|(id, r)| (*id, r.token))
                        .collect();
                    let _ = self.queue.release(held).await;
                    state.running.clear();
                    self.maybe_drained(state);
                }
            }
            CoordinatorMsg::Load(reply) => {
                let _ = reply.send(Load {
                    buffered: state.lanes.iter().map(|l| l.buffer.len()).sum(),
                    running: state.running.len(),
                    idle_workers: state.lanes[Lane::Batch as usize].idle.len(),
                    idle_executives: state.lanes[Lane::Executive as usize].idle.len(),
                    running_stolen: state.running.values().filter(|r| r.owner.is_some()).count(),
                    steals: state.steals,
                    stolen_jobs: state.stolen_jobs,
                    steal_seconds: state.steal_secs,
                });
            }
        }
        Ok(())
    }
}

impl Coordinator {
    /// Hand buffered jobs to idle workers of their lane.
    fn dispatch(&self, state: &mut CoordinatorState) {
        for lane in Lane::ALL {
            self.dispatch_lane(state, lane);
        }
    }

    fn dispatch_lane(&self, state: &mut CoordinatorState, lane: Lane) {
        for started in state.lanes[lane as usize].dispatch() {
            state.running.insert(
                started.id,
                Running {
                    token: started.token,
                    cancel: started.cancel,
                    owner: started.owner,
                },
            );
        }
    }

    /// How many unstarted jobs of a lane to keep: few when peers could run them instead,
    /// and none beyond what its idle workers take for the executive (LLM requests are few and
    /// long: one held here waits while a peer could start it).
    fn prefetch(&self, state: &CoordinatorState, lane: Lane) -> usize {
        match lane {
            Lane::Executive => 0,
            Lane::Batch if state.peers > 0 => {
                (self.slots.saturating_sub(self.executives) as usize).max(1)
            }
            Lane::Batch => self.prefetch,
        }
    }

    /// The kinds a lane runs here.
    fn lane_kinds(&self, lane: Lane) -> Vec<JobKind> {
        self.kinds
            .iter()
            .copied()
            .filter(|k| k.lane() == lane)
            .collect()
    }

    /// Lease more jobs for lanes whose workers wait or whose buffer runs low.
    fn refill(&self, myself: &ActorRef<CoordinatorMsg>, state: &mut CoordinatorState) {
        for lane in Lane::ALL {
            self.refill_lane(myself, state, lane);
        }
    }

    fn refill_lane(
        &self,
        myself: &ActorRef<CoordinatorMsg>,
        state: &mut CoordinatorState,
        lane: Lane,
    ) {
        let l = lane as usize;
        if state.stopping {
            return;
        }
        let want = state.lanes[l].want(self.prefetch(state, lane));
        if want == 0 {
            return;
        }
        let kinds = self.lane_kinds(lane);
        // A lease that finds nothing still walks the whole ready table: skip it when no job
        // of the lane's kinds is queued (the idle executive would otherwise scan a queue of
        // batch work on every event).
        if kinds.is_empty() || self.queue.queued_of(&kinds) == 0 {
            // Nothing of its own: ask a peer now, not at the next tick (a thief's worker
            // would wait half a tick on average for each steal).
            self.maybe_steal(myself, state);
            return;
        }
        state.lanes[l].leasing = true;
        let queue = self.queue.clone();
        let lease = self.lease;
        let home = self.home.clone();
        let gpu = self.gpu;
        let me = myself.clone();
        track(
            state,
            tokio::spawn(async move {
                let fit = match lane {
                    Lane::Batch => Fit::local(&kinds),
                    // Only what this node holds the model for; reading the models
                    // directory is file I/O: not on the actor.
                    Lane::Executive => Fit {
                        models: Some(local_models(home).await),
                        gpu,
                        ..Fit::local(&kinds)
                    },
                };
                let holder = queue.holder().to_owned();
                let result = queue
                    .lease_to(holder, want, &fit, lease)
                    .await
                    .map_err(|e| e.to_string());
                let _ = me.cast(CoordinatorMsg::Leased(lane, result));
            }),
        );
    }

    /// With idle workers in a lane that has nothing of its own, ask the busiest peer for
    /// work of that lane's kinds. At most one attempt in flight, spaced out with a backoff
    /// when peers have nothing to give.
    fn maybe_steal(&self, myself: &ActorRef<CoordinatorMsg>, state: &mut CoordinatorState) {
        let Some((_, swarm)) = &self.swarm else {
            return;
        };
        let now = Instant::now();
        let starving: Vec<Lane> = Lane::ALL
            .into_iter()
            // The batch lane steals one job ahead (jobs are many and short: a round trip per
            // job would idle its worker); the executive only for idle executives (an LLM
            // request held here waits while a peer could start it).
            .filter(|l| state.lanes[*l as usize].starving(now, *l == Lane::Batch))
            .collect();
        if state.stealing.is_some() || state.stopping || state.peers == 0 || starving.is_empty() {
            return;
        }
        // One lane a round (alternating when both starve), each asking for what it can start:
        // the executive takes no more requests than it has idle executives.
        state.steal_rounds += 1;
        let lane = starving[state.steal_rounds as usize % starving.len()];
        let idle = state.lanes[lane as usize].idle.len() as u32;
        let max = match lane {
            Lane::Batch => idle + 1,
            Lane::Executive => idle,
        };
        if max == 0 {
            return;
        }
        state.stealing = Some(lane);
        let kinds = self.lane_kinds(lane);
        let mut request = stealing::StealPlan {
            holder: self.queue.holder().to_owned(),
            fit: Fit {
                gpu: self.gpu,
                ..Fit::thief(&kinds, Vec::new())
            },
            max,
            lease: self.lease,
        };
        let swarm = swarm.clone();
        let me = myself.clone();
        let home = self.home.clone();
        // Replicas on demand: the executive lane found nothing it can run.
        let pull = (lane == Lane::Executive && self.auto_pull)
            .then(|| self.travel.clone())
            .flatten()
            .map(|t| (t, state.pulling.clone()));
        track(
            state,
            tokio::spawn(async move {
                // The owner lends only jobs whose model this node holds too.
                let held = local_models(home.clone()).await;
                request.fit.models = Some(held.clone());
                let grant = stealing::steal(&swarm, request).await;
                if grant.is_none()
                    && let Some((travel, pulling)) = pull
                {
                    pull_wanted(&swarm, &travel, &home, &held, &pulling, &me);
                }
                let _ = me.cast(CoordinatorMsg::Stolen(grant));
            }),
        );
    }

    /// Run the queue clock and renew our leases (local and stolen), off the actor.
    /// Tell Membership how busy this node is (it goes out with the next heartbeat).
    fn report_load(&self, state: &CoordinatorState) {
        if let Some((m, _)) = &self.swarm {
            let _ = m.cast(MembershipMsg::Load(NodeLoad {
                queued: self.queue.stats().by_state[StateName::Queued.index()],
                running: state.running.len() as u32,
                slots: self.slots,
            }));
        }
    }

    /// Count the models the queued `infer` jobs wait for, every few seconds, for the
    /// heartbeats (idle peers without one may pull it).
    fn report_wanted(&self, state: &mut CoordinatorState) {
        let Some((m, _)) = &self.swarm else { return };
        if state
            .wanted_at
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        state.wanted_at = Some(Instant::now());
        let (queue, m) = (self.queue.clone(), m.clone());
        let none = self.queue.queued_of(&[myco_jobs::JobKind::Infer]) == 0;
        track(
            state,
            tokio::spawn(async move {
                let counted = if none {
                    Vec::new()
                } else {
                    tokio::task::spawn_blocking(move || queue.waiting_models(1024))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default()
                };
                let wanted = counted
                    .into_iter()
                    .map(
                        |(name, bytes, jobs)| myco_runtime::cluster::wire::WantedModel {
                            name,
                            bytes,
                            jobs,
                        },
                    )
                    .collect();
                let _ = m.cast(MembershipMsg::Wanted(wanted));
            }),
        );
    }

    fn tick(&self, myself: &ActorRef<CoordinatorMsg>, state: &mut CoordinatorState) {
        self.report_load(state);
        self.report_wanted(state);
        if state.ticking {
            return;
        }
        state.ticking = true;
        let renew_due = state.last_renew.elapsed() >= self.lease / 3;
        let mut local: Vec<(JobId, u64)> = Vec::new();
        let mut remote: HashMap<String, Vec<(JobId, u64)>> = HashMap::new();
        if renew_due {
            state.last_renew = Instant::now();
            let held = state
                .lanes
                .iter()
                .flat_map(|l| l.buffer.iter())
                .map(|w| (w.lease.id, w.lease.token, w.owner.as_ref()))
                .chain(
                    state
                        .running
                        .iter()
                        .map(|(id, r)| (*id, r.token, r.owner.as_ref())),
                );
            for (id, token, owner) in held {
                match owner {
                    None => local.push((id, token)),
                    Some(o) => remote.entry(o.clone()).or_default().push((id, token)),
                }
            }
            let recent = self.lease * 2;
            state.owners.retain(|_, at| at.elapsed() < recent);
            for owner in state.owners.keys() {
                remote.entry(owner.clone()).or_default();
            }
        }
        let queue = self.queue.clone();
        let lease = self.lease;
        let swarm = self.swarm.as_ref().map(|(_, s)| s.clone());
        let me = myself.clone();
        track(
            state,
            tokio::spawn(async move {
                if let Err(e) = queue.tick().await {
                    tracing::warn!(error = %e, "queue tick failed");
                }
                let mut lost = if local.is_empty() {
                    Vec::new()
                } else {
                    queue.renew(local, lease).await.unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "renewing leases failed");
                        Vec::new()
                    })
                };
                if let Some(swarm) = swarm {
                    let holder = queue.holder().to_owned();
                    lost.extend(stealing::renew_remote(&swarm, &holder, remote, lease).await);
                }
                let _ = me.cast(CoordinatorMsg::TickDone(lost));
            }),
        );
    }

    /// Send the outbox to the owners, off the actor.
    fn deliver(&self, myself: &ActorRef<CoordinatorMsg>, state: &mut CoordinatorState) {
        let Some((_, swarm)) = &self.swarm else {
            return;
        };
        if state.delivering {
            state.redeliver = true;
            return;
        }
        state.delivering = true;
        let queue = self.queue.clone();
        let swarm = swarm.clone();
        let me = myself.clone();
        track(
            state,
            tokio::spawn(async move {
                let left = stealing::deliver_outbox(&queue, &swarm).await;
                let _ = me.cast(CoordinatorMsg::Delivered(left));
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

/// The models this node holds, as `(name, bytes)`; read off the async threads.
/// Replicas on demand: pull (on a task of its own) a model that `infer` jobs wait for at
/// a peer, if this node lacks it, offers the memory to hold it, and pulls nothing yet. The
/// next steal takes some of those jobs.
fn pull_wanted(
    swarm: &Swarm,
    travel: &crate::travel::Travel,
    home: &std::path::Path,
    held: &[(String, u64)],
    pulling: &Arc<AtomicBool>,
    me: &ActorRef<CoordinatorMsg>,
) {
    if pulling.load(Ordering::Relaxed) {
        return;
    }
    let view = swarm.view();
    let offer = view.me.as_ref().map_or(0, |i| i.stage_memory);
    let want = view
        .members()
        .into_iter()
        .filter(|m| m.status == "up")
        .filter_map(|m| Some((m.name, m.info?)))
        .flat_map(|(node, i)| i.wanted.into_iter().map(move |w| (node.clone(), w)))
        .filter(|(_, w)| !held.iter().any(|(n, b)| *n == w.name && *b == w.bytes))
        .filter(|(_, w)| w.bytes <= offer)
        .max_by_key(|(_, w)| w.jobs);
    let Some((node, w)) = want else { return };
    pulling.store(true, Ordering::Relaxed);
    let (travel, models, pulling, me) = (
        travel.clone(),
        myco_jobs::home::models_dir(home),
        pulling.clone(),
        me.clone(),
    );
    tokio::spawn(async move {
        tracing::info!(model = %w.name, jobs = w.jobs, at = %node, "pulling a model that jobs wait for");
        // From the node whose jobs wait, if it holds it; else from any holder.
        let pulled = match travel.pull(&models, &w.name, Some(&node)).await {
            Ok(p) => Ok(p),
            Err(_) => travel.pull(&models, &w.name, None).await,
        };
        match pulled {
            Ok(p) => {
                tracing::info!(model = %p.model, from = %p.from, mb = p.bytes / 1_000_000, seconds = p.seconds, "pulled; taking the jobs that wait for it")
            }
            Err(e) => {
                tracing::warn!(model = %w.name, error = %e, "cannot pull a model that jobs wait for")
            }
        }
        pulling.store(false, Ordering::Relaxed);
        // Steal again now, without the backoff.
        let _ = me.cast(CoordinatorMsg::Swarm(SwarmEvent::PeerWork));
    });
}

async fn local_models(home: std::path::PathBuf) -> Vec<(String, u64)> {
    tokio::task::spawn_blocking(move || myco_jobs::archive::local_models(&home))
        .await
        .unwrap_or_default()
}

/// Keep a handle on a background task; finished ones are dropped.
fn track(state: &mut CoordinatorState, task: JoinHandle<()>) {
    state.tasks.retain(|t| !t.is_finished());
    state.tasks.push(task);
}
