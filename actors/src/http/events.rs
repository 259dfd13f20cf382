//! `/api/events`: the dashboard's live feed as server-sent events. One `snapshot` event
//! (the swarm as this node sees it and the queue's numbers, [`Snapshot`]) at once, then
//! every second and soon after each commit that finished jobs, until the client goes away
//! or the node stops. A job's own progress streams from `/api/jobs/{id}/stream`.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::http::jobs::{StatsReply, stats_of};
use crate::http::sse;
use crate::node::handle::NodeHandle;
use crate::swarm::view::MemberView;

/// Every snapshot at the latest this long after the one before.
const EVERY: Duration = Duration::from_secs(1);
/// After a commit that finished jobs, wait this long for more before sending (a busy queue
/// finishes jobs in every commit: at most one snapshot per this).
const SETTLE: Duration = Duration::from_millis(150);

/// What each `snapshot` event holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub node: String,
    pub uptime_s: u64,
    pub swarm: Vec<MemberView>,
    /// `None` when the queue could not be read (the node's log says why).
    pub stats: Option<StatsReply>,
}

async fn snapshot(node: &NodeHandle) -> Snapshot {
    Snapshot {
        node: node.name().to_owned(),
        uptime_s: node.started().elapsed().as_secs(),
        swarm: node.members().await,
        stats: stats_of(node).await.ok(),
    }
}

pub async fn events(State(node): State<NodeHandle>) -> Response {
    let (sse, response) = sse::channel();
    let edge = node.clone();
    edge.spawn_edge(async move {
        loop {
            let finished = node.queue().finished();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let Ok(data) = serde_json::to_string(&snapshot(&node).await) else {
                return;
            };
            if !sse
                .send(format!("event: snapshot\ndata: {data}\n\n").into_bytes())
                .await
            {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                () = finished => tokio::time::sleep(SETTLE).await,
            }
        }
    });
    response
}

/// The event route.
pub fn routes() -> axum::Router<NodeHandle> {
    axum::Router::new().route("/api/events", axum::routing::get(events))
}
