//! OpenAI-compatible endpoints, so existing clients and RAG tools can use a node:
//! `POST /v1/embeddings`, `POST /v1/chat/completions`, `POST /v1/completions` (both with
//! `stream: true` as server-sent events, or without), `GET /v1/models` and
//! `GET /v1/models/{id}`, OpenAI's file API (`/v1/files`, see [`files`]) and Batch API
//! (`/v1/batches`, see [`batches`]).
//!
//! A request becomes an ordinary job (kind `embed` or `infer`, high priority so interactive
//! requests go ahead of batch work), goes through the durable queue like any other, and runs
//! wherever the model is. A streaming client that disconnects cancels its job. Errors use
//! OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
//!
//! Its files: [`complete`] (chat and text completions as jobs, waited for or streamed),
//! [`response`] (the errors of finished jobs, and answers), [`embeddings`] and [`models`].
//! What a request may hold and the shapes of the answers are
//! [`myco_jobs::llm::openai`]'s: a batch's lines are read and answered by the same code.

pub mod batches;
mod complete;
mod embeddings;
mod files;
mod models;
mod response;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::http::auth::Caller;
use crate::node::handle::NodeHandle;

pub(super) fn error(
    status: StatusCode,
    kind: &str,
    param: Option<&str>,
    code: &str,
    message: String,
) -> Response {
    (
        status,
        Json(json!({
            "error": { "message": message, "type": kind, "param": param, "code": code }
        })),
    )
        .into_response()
}

/// A model named by its path goes through the same gate as any file a job names: a caller
/// who is not the owner may name only models below the data roots (or in the models
/// folder); names are looked up in the models folder as ever.
pub(super) fn gate_model(caller: &Caller, name: &str) -> Option<Response> {
    if !myco_jobs::model::is_path(name) {
        return None;
    }
    let outside = caller.access.check(std::path::Path::new(name)).err()?;
    Some(error(
        StatusCode::FORBIDDEN,
        "invalid_request_error",
        Some("model"),
        "outside_data_roots",
        format!("{outside}; name a model of the node (GET /v1/models lists them)"),
    ))
}

pub(super) fn bad_request(param: &str, message: String) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        Some(param),
        "invalid_value",
        message,
    )
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The OpenAI-compatible routes.
pub fn routes() -> axum::Router<NodeHandle> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/chat/completions", post(complete::chat_completions))
        .route("/v1/completions", post(complete::completions))
        .route("/v1/models", get(models::models))
        .route("/v1/models/{id}", get(models::model))
        .route(
            "/v1/files",
            post(files::upload)
                .get(files::list)
                // An upload streams to disk: it may be larger than other bodies.
                .layer(axum::extract::DefaultBodyLimit::max(
                    (myco_jobs::files::MAX_FILE_BYTES + (1 << 20)) as usize,
                )),
        )
        .route("/v1/files/{id}", get(files::retrieve).delete(files::delete))
        .route("/v1/files/{id}/content", get(files::content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::retrieve))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
}
