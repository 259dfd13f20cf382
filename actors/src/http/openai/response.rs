//! Answers: the shape of a completion or a streamed chunk, usage, and the errors of jobs that
//! did not finish.

use super::{error, unix_now};
use crate::interactive;
use crate::node::handle::NodeHandle;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub(super) use myco_jobs::llm::openai::response::{
    Flavor, Shape, finish_name, logprobs_of, tool_call_deltas, usage,
};

pub(super) fn failed_internal(id: myco_runtime::queue::JobId) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        None,
        "internal",
        format!("lost track of job {id}"),
    )
}

/// A finished job's generation, or the error to answer with (status, type, code, message).
pub(super) async fn generation(
    node: &NodeHandle,
    rec: &myco_runtime::queue::JobRecord,
) -> Result<myco_jobs::llm::infer::Generation, (StatusCode, &'static str, &'static str, String)> {
    use myco_runtime::queue::JobState;
    let id = rec.id;
    match rec.state {
        JobState::Done => {}
        JobState::Cancelled => {
            return Err((
                StatusCode::CONFLICT,
                "server_error",
                "cancelled",
                format!("request {id} was cancelled"),
            ));
        }
        _ => {
            let why = rec
                .last_error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| "unknown".into());
            // The request's own faults are fatal in the engine: report them as the
            // client's; anything else is the server's.
            let fatal = rec.last_error.as_ref().is_some_and(|e| !e.is_retryable());
            return Err(if fatal {
                (
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_request",
                    why,
                )
            } else {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "failed",
                    why,
                )
            });
        }
    }
    interactive::generation(node, id).await.map_err(|why| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal",
            why,
        )
    })
}

pub(super) fn failed(rec: &myco_runtime::queue::JobRecord) -> Response {
    let (status, kind, code, message) = match rec.state {
        myco_runtime::queue::JobState::Cancelled => (
            StatusCode::CONFLICT,
            "server_error",
            "cancelled",
            format!("request {} was cancelled", rec.id),
        ),
        _ => {
            let e = rec.last_error.as_ref();
            let message = e
                .map(|e| e.message.clone())
                .unwrap_or_else(|| "unknown".into());
            if e.is_some_and(|e| !e.is_retryable()) {
                (
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_request",
                    message,
                )
            } else {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "failed",
                    message,
                )
            }
        }
    };
    error(status, kind, None, code, message)
}

/// The non-streaming answer for a finished job.
pub(super) async fn finished(
    node: &NodeHandle,
    flavor: Flavor,
    model: &str,
    rec: myco_runtime::queue::JobRecord,
    shape: Shape,
) -> Response {
    let g = match generation(node, &rec).await {
        Ok(g) => g,
        Err((status, kind, code, message)) => return error(status, kind, None, code, message),
    };
    Json(myco_jobs::llm::openai::response::completion(
        flavor,
        rec.id,
        model,
        unix_now(),
        &g,
        shape,
    ))
    .into_response()
}
