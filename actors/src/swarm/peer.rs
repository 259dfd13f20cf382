//! The PeerService: the one actor of a node that other nodes talk to. It joins the
//! `myco.peers` process group, which ractor_cluster mirrors to every connected node.
//!
//! It forwards heartbeats to the Membership actor, and answers the owner's side of work
//! stealing: grant leases to a thief, renew a thief's leases, and record a thief's results
//! (idempotently, by job id). Queue commits run in tracked tasks, never inside `handle`.

use std::time::Duration;

use myco_runtime::cluster::wire::{
    Delivery, DeliveryAck, HeartbeatFrame, Refused, RenewReply, StealGrant, StealRequest, Wire,
};
use myco_runtime::queue::Queue;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinSet;

#[cfg(feature = "pipeline")]
use crate::pipeline::stages::StagesMsg;
use crate::streams::Streams;
use crate::swarm::membership::MembershipMsg;
use crate::swarm::protocol::{PEERS_GROUP, PeerMsg};

/// The most document bytes one steal grant carries (cluster frames are capped at 64 MiB).
const GRANT_BYTES: u64 = 32 << 20;

/// The PeerService's fixed settings.
#[derive(Debug)]
pub struct PeerService {
    pub name: String,
    pub queue: Queue,
    pub membership: ActorRef<MembershipMsg>,
    pub streams: Streams,
    #[cfg(feature = "pipeline")]
    pub stages: ActorRef<StagesMsg>,
}

#[derive(Debug)]
pub struct PeerState {
    tasks: JoinSet<()>,
}

impl Actor for PeerService {
    type Msg = PeerMsg;
    type State = PeerState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(PEERS_GROUP.to_owned(), vec![myself.get_cell()]);
        Ok(PeerState {
            tasks: JoinSet::new(),
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        ractor::pg::leave(PEERS_GROUP.to_owned(), vec![myself.get_cell()]);
        // Requests being answered (a grant being committed, a delivery being recorded):
        // let them finish, up to a deadline, rather than cut a commit's reply off.
        let finish = async { while state.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(std::time::Duration::from_secs(5), finish)
            .await
            .is_err()
        {
            tracing::warn!("peer requests still running 5 s into the stop: cutting them off");
            state.tasks.abort_all();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        while state.tasks.try_join_next().is_some() {}
        match msg {
            PeerMsg::Heartbeat(HeartbeatFrame(Ok(hb))) => {
                let _ = self.membership.cast(MembershipMsg::Heard(hb));
            }
            PeerMsg::Heartbeat(HeartbeatFrame(Err(Refused::Incompatible(hello)))) => {
                let _ = self.membership.cast(MembershipMsg::Refused(hello));
            }
            PeerMsg::Heartbeat(HeartbeatFrame(Err(Refused::Garbled(e)))) => {
                tracing::warn!(error = %e, "dropped a heartbeat this node cannot read");
            }
            PeerMsg::Steal(Wire(Ok(req)), reply) => {
                let queue = self.queue.clone();
                let owner = self.name.clone();
                state.tasks.spawn(async move {
                    let grant = steal(&queue, owner, req).await;
                    let _ = reply.send(Wire::new(grant));
                });
            }
            PeerMsg::Renew(Wire(Ok(req)), reply) => {
                let queue = self.queue.clone();
                state.tasks.spawn(async move {
                    let lease = Duration::from_millis(req.lease_ms);
                    // A grant still on its way when the thief listed its leases is younger
                    // than this.
                    let grace = (lease / 2).max(Duration::from_secs(5));
                    match queue
                        .renew_as(req.holder, req.leases, lease, Some(grace))
                        .await
                    {
                        Ok(lost) => {
                            let _ = reply.send(Wire::new(RenewReply { lost }));
                        }
                        Err(e) => tracing::warn!(error = %e, "renewing a peer's leases failed"),
                    }
                });
            }
            PeerMsg::Deliver(Wire(Ok(delivery)), reply) => {
                let queue = self.queue.clone();
                state.tasks.spawn(async move {
                    let settled = record(&queue, delivery).await;
                    let _ = reply.send(Wire::new(DeliveryAck { settled }));
                });
            }
            PeerMsg::Ping(Wire(Ok(n)), reply) => {
                let _ = reply.send(Wire::new(n));
            }
            PeerMsg::Stream(Wire(Ok(frame))) => {
                self.streams.publish(frame.id, frame.pieces);
            }
            #[cfg(feature = "pipeline")]
            PeerMsg::Stage(Wire(Ok(frame))) => {
                let _ = self.stages.cast(StagesMsg::Frame(frame));
            }
            #[cfg(not(feature = "pipeline"))]
            PeerMsg::Stage(Wire(Ok(_))) => {
                tracing::warn!("dropped a stage frame: this node was built without pipeline jobs");
            }
            PeerMsg::Stream(Wire(Err(e)))
            | PeerMsg::Stage(Wire(Err(e)))
            | PeerMsg::Ping(Wire(Err(e)), _)
            | PeerMsg::Steal(Wire(Err(e)), _)
            | PeerMsg::Renew(Wire(Err(e)), _)
            | PeerMsg::Deliver(Wire(Err(e)), _) => {
                tracing::warn!(error = %e, "dropped a peer message this node cannot read (a different myco version?)");
            }
        }
        Ok(())
    }
}

/// Lease about half of what waits here (at most what the thief asked for) to the thief.
async fn steal(queue: &Queue, owner: String, req: StealRequest) -> StealGrant {
    // Only what the thief could run counts (a lease that finds nothing scans the queue).
    let queued = queue.queued_of(&req.fit.kinds);
    let n = (queued.div_ceil(2) as usize).min(req.max as usize);
    let leases = if n == 0 {
        Vec::new()
    } else {
        let lease = Duration::from_millis(req.lease_ms);
        match queue.lease_to(req.holder.clone(), n, &req.fit, lease).await {
            Ok(leases) => leases,
            Err(e) => {
                tracing::warn!(error = %e, thief = %req.holder, "leasing to a thief failed");
                Vec::new()
            }
        }
    };
    // The thief may not have the files: documents travel with their tasks, up to a budget
    // per grant (frames are capped); what does not fit goes back to the queue.
    let (lent, back) = tokio::task::spawn_blocking(move || {
        let mut budget: u64 = GRANT_BYTES;
        let mut lent = Vec::new();
        let mut back = Vec::new();
        for mut lease in leases {
            match lease.task.portable(budget) {
                Some(task) => {
                    budget = budget.saturating_sub(task.inline_bytes());
                    lease.task = task;
                    lent.push(lease);
                }
                None => back.push((lease.id, lease.token)),
            }
        }
        (lent, back)
    })
    .await
    .unwrap_or_default();
    if !back.is_empty()
        && let Err(e) = queue.release(back).await
    {
        tracing::warn!(error = %e, "handing back unlendable jobs failed; they will expire");
    }
    if !lent.is_empty() {
        tracing::debug!(thief = %req.holder, jobs = lent.len(), "lent jobs");
    }
    StealGrant {
        owner,
        leases: lent,
    }
}

/// Record a thief's outcomes. Every outcome that is durably settled (recorded, a duplicate,
/// or refused for good: a job that has moved on or is gone) is acknowledged; any other
/// error (storage: a full disk; a queue shutting down) is not, so the thief keeps the
/// outcome in its outbox and delivers it again.
async fn record(queue: &Queue, delivery: Delivery) -> Vec<myco_runtime::queue::JobId> {
    let mut settled = Vec::with_capacity(delivery.outcomes.len());
    let mut pending = Vec::with_capacity(delivery.outcomes.len());
    for o in delivery.outcomes {
        let id = o.id;
        let queue = queue.clone();
        // Issue them all at once so they share commits.
        pending.push(tokio::spawn(async move {
            let r = match o.result {
                Ok(output) => queue.complete(id, output).await.map(|_| ()),
                Err(e) => queue.fail(id, o.token, e).await.map(|_| ()),
            };
            (id, r)
        }));
    }
    for p in pending {
        match p.await {
            Ok((id, Ok(()))) => settled.push(id),
            Ok((id, Err(e))) if e.is_refusal() => settled.push(id),
            Ok((id, Err(e))) => {
                tracing::warn!(%id, error = %e, from = %delivery.from, "recording a peer's result failed; it will deliver again")
            }
            Err(e) => tracing::warn!(error = %e, "a recording task failed"),
        }
    }
    settled
}
