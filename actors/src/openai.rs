//! OpenAI-compatible endpoints, so existing RAG tools can use a node: `POST /v1/embeddings`.
//!
//! A request becomes an ordinary job (kind `embed`, high priority so interactive requests go
//! ahead of batch work), goes through the durable queue like any other, and the handler waits
//! for it. Errors use OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use myco_jobs::Task;
use myco_runtime::queue::{JobState, NewJob};
use serde::Deserialize;
use serde_json::json;

use crate::node::NodeHandle;

/// Interactive requests go ahead of batch jobs (which default to 0).
const INTERACTIVE_PRIORITY: i32 = 500;

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
    let job = NewJob {
        task: Task::Embed {
            model: dir,
            texts,
            batch_tokens: 8192,
        },
        priority: INTERACTIVE_PRIORITY,
        max_attempts: 2,
        timeout_ms: 120_000,
        idempotency_key: None,
        children: Vec::new(),
    };
    let internal = |m: String| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            "internal",
            m,
        )
    };
    let id = match node.queue.submit(vec![job]).await {
        Ok(s) => match s.first() {
            Some(s) => s.id,
            None => return internal("the queue accepted no job".into()),
        },
        Err(e) => return internal(e.to_string()),
    };
    let finished = tokio::time::timeout(
        Duration::from_secs(130),
        node.wait(id, Duration::from_millis(2)),
    )
    .await;
    let rec = match finished {
        Ok(Ok(rec)) => rec,
        Ok(Err(e)) => return internal(e.to_string()),
        Err(_) => {
            let _ = node.cancel(id).await;
            return internal(format!("job {id} did not finish in time; it was cancelled"));
        }
    };
    if rec.state != JobState::Done {
        let why = rec.last_error.map(|e| e.message).unwrap_or_default();
        return internal(format!(
            "embedding job {id} ended {}: {why}",
            rec.state.name()
        ));
    }
    let q = node.queue.clone();
    let result = match tokio::task::spawn_blocking(move || q.result(id)).await {
        Ok(Ok(Some(bytes))) => bytes,
        other => return internal(format!("job {id}'s result is unreadable: {other:?}")),
    };
    let mut data = Vec::new();
    for line in result.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => return internal(format!("job {id}'s result is unreadable: {e}")),
        };
        data.push(json!({ "object": "embedding", "index": v["index"], "embedding": v["vector"] }));
    }
    Json(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        // An estimate (4 bytes a token) until the tokenizer counts them.
        "usage": { "prompt_tokens": estimated_tokens, "total_tokens": estimated_tokens },
    }))
    .into_response()
}
