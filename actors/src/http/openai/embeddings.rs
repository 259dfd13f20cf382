//! `POST /v1/embeddings`: texts (or OpenAI token ids) into `embed` jobs.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::{bad_request, error, gate_model};
use crate::http::auth::Caller;
use crate::interactive;
use crate::node::handle::NodeHandle;

use myco_jobs::llm::openai::embeddings::{self as shapes, Texts};
use myco_jobs::llm::openai::request::Refusal;

pub async fn embeddings(
    State(node): State<NodeHandle>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    let req = match shapes::parse(&body) {
        Ok(r) => r,
        Err(message) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "invalid_body",
                message,
            );
        }
    };
    let Texts {
        model: name,
        texts,
        encoding,
        dimensions,
    } = match shapes::texts(req) {
        Ok(t) => t,
        Err(Refusal { param, message }) => {
            let code = if param == "encoding_format" {
                "unsupported_encoding"
            } else {
                "invalid_input"
            };
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some(&param),
                code,
                message,
            );
        }
    };
    if let Some(refused) = gate_model(&caller, &name) {
        return refused;
    }
    let model = match myco_jobs::model::resolve_embedding(
        &name,
        std::path::Path::new(""),
        &node.models_dir(),
    ) {
        Ok(m) => m,
        Err(e) => {
            return error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model"),
                "model_not_found",
                format!(
                    "the model `{}` does not exist on this node: {e}; {}, or see GET /api/swarm for the models nodes hold",
                    name,
                    e.hint()
                ),
            );
        }
    };
    let estimated = shapes::estimate_tokens(&texts);
    let vectors = match interactive::embed_now(&node, model, texts).await {
        Ok(v) => v,
        Err(interactive::EmbedError::Queue(e)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                "queue_unavailable",
                format!("{e}; try again later"),
            );
        }
        // The model's files (a bad tokenizer, a broken model.onnx) or a timeout: not the
        // request's fault, and not a bug.
        Err(interactive::EmbedError::Failed(e)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("model"),
                "model_unavailable",
                format!(
                    "{e}; check the model's directory (model.onnx, tokenizer.json and its config files; ./setup.sh fetches the default again)"
                ),
            );
        }
    };
    match shapes::answer(&name, estimated, vectors, encoding, dimensions) {
        Ok(body) => Json(body).into_response(),
        Err(Refusal { param, message }) => bad_request(&param, message),
    }
}
