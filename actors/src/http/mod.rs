//! The node's HTTP API (axum): the router over [`jobs`], [`swarm`], [`metrics`] and the
//! OpenAI-compatible [`openai`] endpoints, with their [`error`]s and [`sse`] bodies.
//!
//! Handlers are thin: they parse the request, call [`NodeHandle`] (the only way into the
//! node) and map errors to `{"error": {"code", "message", "hint"}}` with a fitting status.
//! Blocking reads go through `spawn_blocking`. No job logic lives here.

pub mod error;
pub mod jobs;
pub mod metrics;
pub mod openai;
pub mod sse;
pub mod swarm;

use axum::Router;

use crate::node::handle::NodeHandle;

/// The whole API, over one node.
pub fn router(node: NodeHandle) -> Router {
    Router::new()
        .merge(jobs::routes())
        .merge(swarm::routes())
        .merge(metrics::routes())
        .merge(openai::routes())
        .with_state(node)
}
