//! OpenAI-compatible endpoints, so existing RAG tools can use a node: `POST /v1/embeddings`.
//!
//! A request becomes an ordinary job (kind `embed`, high priority so interactive requests go
//! ahead of batch work), goes through the durable queue like any other, and the handler waits
//! for it. Errors use OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::node::NodeHandle;

fn error(
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

/// `input` is a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Input,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

pub async fn embeddings(State(node): State<NodeHandle>, body: axum::body::Bytes) -> Response {
    let req: EmbeddingsRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "invalid_body",
                format!(
                    "cannot read the request: {e}; send {{\"model\": ..., \"input\": \"text\" or [\"texts\"]}}"
                ),
            );
        }
    };
    if req.encoding_format.as_deref().is_some_and(|f| f != "float") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("encoding_format"),
            "unsupported_encoding",
            "only encoding_format \"float\" is supported".into(),
        );
    }
    let texts = match req.input {
        Input::One(t) => vec![t],
        Input::Many(v) => v,
    };
    if texts.is_empty() || texts.len() > 2048 {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("input"),
            "invalid_input",
            format!("input holds {} texts; send 1 to 2048", texts.len()),
        );
    }
    let dir = if req.model.contains('/') {
        std::path::PathBuf::from(&req.model)
    } else {
        node.models_dir.join(&req.model)
    };
    if !dir.join("model.onnx").is_file() {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model"),
            "model_not_found",
            format!(
                "the model `{}` does not exist on this node (no model.onnx in {}); run ./setup.sh for all-MiniLM-L6-v2, or see GET /api/swarm for the models nodes hold",
                req.model,
                dir.display()
            ),
        );
    }
    let estimated_tokens: usize = texts.iter().map(|t| t.len() / 4 + 2).sum();
    let model = myco_jobs::archive::ModelRef::at(&dir);
    let vectors = match crate::query::embed_now(&node, model, texts).await {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                "internal",
                e.to_string(),
            );
        }
    };
    let data: Vec<_> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| json!({ "object": "embedding", "index": i, "embedding": v }))
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        // An estimate (4 bytes a token) until the tokenizer counts them.
        "usage": { "prompt_tokens": estimated_tokens, "total_tokens": estimated_tokens },
    }))
    .into_response()
}
