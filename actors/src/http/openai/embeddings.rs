//! `POST /v1/embeddings`: texts (or OpenAI token ids) into `embed` jobs.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::{bad_request, error, gate_model};
use crate::http::auth::Caller;
use crate::interactive;
use crate::node::handle::NodeHandle;

/// `input` is a string or a list of strings, or token ids of OpenAI's `cl100k_base`
/// tokenizer (one list, or a list of lists), which LangChain's `OpenAIEmbeddings` sends by
/// default: they are decoded back into the text they stand for.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Input {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

/// The text of `cl100k_base` token ids (the tokenizer of OpenAI's embedding models, which
/// OpenAI clients count and send with); Err names the first id that is none of its.
pub(super) fn decode_ids(ids: &[u32]) -> Result<String, String> {
    let bpe = tiktoken_rs::cl100k_base_singleton();
    bpe.decode(ids).map_err(|e| {
        format!("token ids are read as OpenAI's cl100k_base tokenizer, and these are not its: {e}")
    })
}

#[derive(Debug, Deserialize)]
pub(super) struct EmbeddingsRequest {
    pub model: String,
    pub input: Input,
    /// `float` (a list of numbers) or `base64` (the little-endian f32 bytes, which the
    /// official client asks for unless told otherwise).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Accepted when it is the model's own size: these models cannot shorten their vectors.
    #[serde(default)]
    pub dimensions: Option<usize>,
}

/// How `/v1/embeddings` writes each vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoding {
    Float,
    Base64,
}

/// The longest text `/v1/embeddings` embeds (OpenAI's models take 8192 tokens, these far
/// fewer).
pub const MAX_EMBED_INPUT_BYTES: usize = 64 << 10;
/// The most text one `/v1/embeddings` request carries (OpenAI's limit is 300k tokens).
pub const MAX_EMBED_REQUEST_BYTES: usize = 4 << 20;

pub async fn embeddings(
    State(node): State<NodeHandle>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
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
    let encoding = match req.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("encoding_format"),
                "unsupported_encoding",
                format!("encoding_format `{other}` is not one of \"float\", \"base64\""),
            );
        }
    };
    let texts = match req.input {
        Input::One(t) => vec![t],
        Input::Many(v) => v,
        Input::Tokens(ids) => match decode_ids(&ids) {
            Ok(t) => vec![t],
            Err(e) => return bad_request("input", e),
        },
        Input::ManyTokens(lists) => match lists.iter().map(|ids| decode_ids(ids)).collect() {
            Ok(v) => v,
            Err(e) => return bad_request("input", e),
        },
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
    if let Some(refused) = gate_model(&caller, &req.model) {
        return refused;
    }
    let model = match myco_jobs::model::resolve_embedding(
        &req.model,
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
                    req.model,
                    e.hint()
                ),
            );
        }
    };
    // Bounded before anything is tokenized (a tokenizer holds every token of a text, and
    // the model reads only its first few hundred).
    if let Some((i, t)) = texts
        .iter()
        .enumerate()
        .find(|(_, t)| t.len() > MAX_EMBED_INPUT_BYTES)
    {
        return bad_request(
            "input",
            format!(
                "input {i} is {} bytes, more than the {MAX_EMBED_INPUT_BYTES} an input may have (the model reads only its first {} tokens); chunk the text (myco's chunk jobs do) and send the pieces",
                t.len(),
                myco_jobs::model::embedding_max_length(&model.path)
            ),
        );
    }
    let total: usize = texts.iter().map(String::len).sum();
    if total > MAX_EMBED_REQUEST_BYTES {
        return bad_request(
            "input",
            format!(
                "the inputs are {total} bytes together, more than the {MAX_EMBED_REQUEST_BYTES} a request may have; send them in several requests"
            ),
        );
    }
    let estimated_tokens: usize = texts.iter().map(|t| t.len() / 4 + 2).sum();
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
    if let Some(d) = req.dimensions
        && let Some(have) = vectors.first().map(Vec::len)
        && d != have
    {
        return bad_request(
            "dimensions",
            format!(
                "`{}` makes {have}-dimensional vectors and cannot shorten them; leave dimensions out, or set it to {have}",
                req.model
            ),
        );
    }
    let data: Vec<_> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = match encoding {
                Encoding::Float => json!(v),
                Encoding::Base64 => json!(base64_f32(&v)),
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
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

/// A vector as OpenAI's `base64` encoding has it: the f32 values' little-endian bytes.
pub(super) fn base64_f32(v: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
