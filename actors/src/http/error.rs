//! The API's errors: `{"error": {"code", "message", "hint", "problems"?}}` with a fitting
//! status, from the queue's and the submit path's errors; and the helpers handlers share to
//! parse ids and run blocking reads. No handler lives here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use myco_runtime::queue::{JobId, QueueError};

use crate::node::handle::SubmitError;

/// An API error: `{"error": {"code", "message", "hint", "problems"?}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    hint: String,
    problems: Option<Box<serde_json::Value>>,
    /// Seconds for a `Retry-After` header (a 503 the client should retry).
    retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: String, hint: &str) -> Self {
        ApiError {
            status,
            code,
            message,
            hint: hint.to_owned(),
            problems: None,
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// A fault of the node's own (a task that died, a response it could not build).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
            "",
        )
    }

    pub fn bad_id(raw: &str) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_id",
            format!("`{raw}` is not a job id"),
            "job ids are 26-character ULIDs, as printed by `myco submit` and `myco jobs`",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "error": { "code": self.code, "message": self.message, "hint": self.hint }
        });
        if let Some(p) = self.problems {
            body["error"]["problems"] = *p;
        }
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::NotFound(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no job {id} on this node"),
                "list jobs with `myco jobs`",
            ),
            QueueError::Invalid(m) => ApiError::new(StatusCode::CONFLICT, "invalid", m, ""),
            QueueError::Conflict(m) => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                m,
                "an idempotency key returns the job first submitted with it only for the same spec; nothing was enqueued",
            ),
            QueueError::Format(f) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "format",
                format!("this node cannot read a stored record: {f}"),
                "a newer myco wrote to this node's queue: run that version here",
            ),
            QueueError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the node is shutting down".into(),
                "retry once it is back",
            ),
            QueueError::Storage(s) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage",
                format!("the node could not record this: {s}; nothing of it was kept"),
                if s.is_disk_full() {
                    "the disk holding the node's home is full: free space there, then retry (the node recovers by itself)"
                } else {
                    "the node's storage failed: see its log, then retry"
                },
            )
            .retry_after(5),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
                "see the node's log",
            ),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Spec { index, error } => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_spec",
                message: format!("job {index}: {error}"),
                hint: "fix the fields named above; nothing was enqueued".into(),
                problems: serde_json::to_value(&error.problems).ok().map(Box::new),
                retry_after: None,
            },
            SubmitError::Outside { index, outside } => ApiError::new(
                StatusCode::FORBIDDEN,
                "outside_data_roots",
                format!("job {index}: {outside}"),
                "over HTTP, jobs read only files below the node's data roots (start it with --data-root DIR, or data_roots in config.toml), symlinks resolved; the node's owner (the API token, from this machine: `myco submit`) may name any path; nothing was enqueued",
            ),
            SubmitError::Queue(q) => q.into(),
        }
    }
}

pub fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::from_string(raw).map_err(|_| ApiError::bad_id(raw))
}

pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}
