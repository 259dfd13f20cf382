//! `GET /v1/models` and `GET /v1/models/{id}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error;
use crate::node::handle::NodeHandle;

/// `GET /v1/models`: the GGUF models the swarm holds (for chat and completions, with the
/// nodes that hold them), and this node's embedding models.
pub async fn models(State(node): State<NodeHandle>) -> Response {
    let data = model_list(&node).await;
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// `GET /v1/models/{id}`: one of [`models`], by id or file name.
pub async fn model(
    State(node): State<NodeHandle>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let found = model_list(&node)
        .await
        .into_iter()
        .find(|m| m["id"] == id.as_str() || m["file"] == id.as_str());
    match found {
        Some(m) => Json(m).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model"),
            "model_not_found",
            format!("the model `{id}` does not exist in this swarm; GET /v1/models lists them"),
        ),
    }
}

pub(super) async fn model_list(node: &NodeHandle) -> Vec<serde_json::Value> {
    let mut data: Vec<_> = node
        .swarm_models()
        .await
        .into_iter()
        .map(|m| {
            json!({
                "id": m.id, "object": "model", "created": 0, "owned_by": "myco",
                "kind": "llm", "file": m.file, "bytes": m.bytes,
                "architecture": m.architecture, "nodes": m.nodes, "sha256": m.sha256,
            })
        })
        .collect();
    let dir = node.models_dir();
    let local = tokio::task::spawn_blocking(move || myco_jobs::model::scan(&dir))
        .await
        .unwrap_or_default();
    data.extend(
        local
            .into_iter()
            .filter(|m| m.format == myco_jobs::model::ModelFormat::Onnx)
            .map(|m| {
                json!({
                    "id": m.name, "object": "model", "created": 0, "owned_by": "myco",
                    "kind": "embedding", "bytes": m.size_bytes,
                })
            }),
    );
    data
}
