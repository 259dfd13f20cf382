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

use axum::{Extension, Router};

use crate::node::handle::NodeHandle;

/// The whole API, over one node. Every request is counted by route for `/metrics`.
pub fn router(node: NodeHandle) -> Router {
    let requests = metrics::Requests::default();
    Router::new()
        .merge(jobs::routes())
        .merge(swarm::routes())
        .merge(metrics::routes())
        .merge(openai::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            requests.clone(),
            metrics::count,
        ))
        .layer(Extension(requests))
        .with_state(node)
}
