//! The thief's side of work stealing, as plain async functions the Coordinator runs in its
//! tracked tasks: ask the busiest peer for work, renew stolen leases at their owners, and
//! deliver the outbox (finished stolen jobs) until each owner acknowledges.
//!
//! Nothing here keeps state: stolen leases live in the owner's redb, finished work in this
//! node's outbox table. A lost owner only delays delivery; a lost thief only delays the job
//! until its lease expires.

use std::collections::HashMap;
use std::time::Duration;

use myco_jobs::Fit;
use myco_runtime::cluster::wire::{Delivery, Outcome, RenewRequest, StealRequest, Wire};
use myco_runtime::queue::{JobId, Lease, Queue};
use ractor::ActorRef;

use crate::swarm::protocol::PeerMsg;
use crate::swarm::view::Swarm;

const CALL: Duration = Duration::from_secs(5);
/// Most outbox entries per delivery round.
const DELIVERY_BATCH: usize = 1024;

/// What a thief asks for.
#[derive(Debug, Clone)]
pub struct StealPlan {
    pub holder: String,
    pub fit: Fit,
    pub max: u32,
    pub lease: Duration,
}

/// Ask peers with queued work, busiest first, until one lends something.
pub async fn steal(swarm: &Swarm, plan: StealPlan) -> Option<(String, Vec<Lease>, Duration)> {
    let victims = swarm.view().victims(&plan.fit.kinds);
    for (name, peer) in victims.into_iter().take(2) {
        let request = StealRequest {
            holder: plan.holder.clone(),
            fit: plan.fit.clone(),
            max: plan.max,
            lease_ms: plan.lease.as_millis() as u64,
        };
        let started = std::time::Instant::now();
        let grant = peer
            .call(|r| PeerMsg::Steal(Wire::new(request), r), Some(CALL))
            .await;
        match grant.map(|g| g.success_or(())) {
            Ok(Ok(Wire(Ok(grant)))) if !grant.leases.is_empty() => {
                return Some((grant.owner, grant.leases, started.elapsed()));
            }
            Ok(Ok(Wire(Err(e)))) => {
                tracing::warn!(peer = %name, error = %e, "unreadable steal grant")
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(peer = %name, error = %e, "steal request failed"),
        }
    }
    None
}

/// Renew stolen leases at their owners; returns the ones we no longer hold. An owner that
/// cannot be reached is not a lost lease: the work goes on and waits in the outbox.
pub async fn renew_remote(
    swarm: &Swarm,
    holder: &str,
    by_owner: HashMap<String, Vec<(JobId, u64)>>,
    lease: Duration,
) -> Vec<JobId> {
    let mut lost = Vec::new();
    for (owner, leases) in by_owner {
        let Some(peer) = swarm.view().peer(&owner) else {
            continue;
        };
        let request = RenewRequest {
            holder: holder.to_owned(),
            leases,
            lease_ms: lease.as_millis() as u64,
        };
        match peer
            .call(|r| PeerMsg::Renew(Wire::new(request), r), Some(CALL))
            .await
            .map(|r| r.success_or(()))
        {
            Ok(Ok(Wire(Ok(reply)))) => lost.extend(reply.lost),
            other => {
                tracing::debug!(owner = %owner, result = ?other.is_ok(), "renewal at owner failed; retrying next tick")
            }
        }
    }
    lost
}

/// One delivery round: send every owner its finished jobs, forget what it acknowledged.
/// Returns true if anything is left for a later round.
pub async fn deliver_outbox(queue: &Queue, swarm: &Swarm) -> bool {
    let q = queue.clone();
    let entries = match tokio::task::spawn_blocking(move || q.outbox(DELIVERY_BATCH)).await {
        Ok(Ok(e)) => e,
        _ => return true,
    };
    if entries.is_empty() {
        return false;
    }
    let mut left = entries.len() >= DELIVERY_BATCH;
    let mut by_owner: HashMap<String, Vec<Outcome>> = HashMap::new();
    for (id, e) in entries {
        by_owner.entry(e.owner).or_default().push(Outcome {
            id,
            token: e.token,
            result: e.result,
        });
    }
    let from = queue.holder().to_owned();
    for (owner, outcomes) in by_owner {
        let Some(peer) = swarm.view().peer(&owner) else {
            left = true;
            continue;
        };
        let delivery = Delivery {
            from: from.clone(),
            outcomes,
        };
        match peer
            .call(|r| PeerMsg::Deliver(Wire::new(delivery), r), Some(CALL * 2))
            .await
            .map(|r| r.success_or(()))
        {
            Ok(Ok(Wire(Ok(ack)))) => {
                if let Err(e) = queue.outbox_remove(ack.settled).await {
                    tracing::warn!(error = %e, "cannot clear delivered outbox entries");
                    left = true;
                }
            }
            _ => {
                tracing::debug!(owner = %owner, "delivery failed; keeping the outbox");
                left = true;
            }
        }
    }
    left
}

/// Mean round trip of `count` calls to a PeerService, in microseconds.
pub async fn ping(peer: &ActorRef<PeerMsg>, count: u32) -> Option<f64> {
    let started = std::time::Instant::now();
    for i in 0..count {
        let r = peer
            .call(|r| PeerMsg::Ping(Wire::new(u64::from(i)), r), Some(CALL))
            .await
            .ok()?
            .success_or(())
            .ok()?;
        if r.0 != Ok(u64::from(i)) {
            return None;
        }
    }
    Some(started.elapsed().as_secs_f64() * 1e6 / f64::from(count.max(1)))
}
