//! The node's HTTP API (axum): the router over [`jobs`], [`swarm`], [`metrics`], the
//! OpenAI-compatible [`openai`] endpoints, the live [`events`] feed and the [`dashboard`]
//! (its pages at `/`), with their [`error`]s and [`sse`] bodies, behind the [`auth`] gate
//! (which applies the [`browsers`] rules first), served by [`listen`].
//!
//! Handlers are thin: they parse the request, call [`NodeHandle`] (the only way into the
//! node) and map errors to `{"error": {"code", "message", "hint"}}` with a fitting status.
//! Blocking reads go through `spawn_blocking`. No job logic lives here.

pub mod auth;
pub mod browsers;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod jobs;
pub mod listen;
pub mod metrics;
pub mod openai;
pub mod sse;
pub mod swarm;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::{Extension, Router};

use crate::node::handle::NodeHandle;

/// The largest request body the API reads (a batch of job files, an embeddings request of
/// many texts); larger ones get 413.
pub const MAX_BODY: usize = 32 << 20;

/// The whole API, over one node, behind its [`auth::Gate`]. Every request is counted by
/// route for `/metrics`.
pub fn router(node: NodeHandle, gate: Arc<auth::Gate>) -> Router {
    let requests = metrics::Requests::default();
    Router::new()
        .merge(dashboard::routes())
        .merge(events::routes())
        .merge(jobs::routes())
        .merge(swarm::routes())
        .merge(metrics::routes())
        .merge(openai::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            requests.clone(),
            metrics::count,
        ))
        .layer(axum::middleware::from_fn_with_state(
            gate.clone(),
            auth::gate,
        ))
        .layer(Extension(gate))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(Extension(requests))
        .with_state(node)
}
