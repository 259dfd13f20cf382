//! `POST /v1/chat/completions` and `POST /v1/completions`: a request becomes an infer job,
//! waited for whole or streamed as server-sent events.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::{bad_request, error, gate_model, unix_now};
use crate::http::auth::Caller;
use crate::node::handle::NodeHandle;
use std::time::Duration;

use super::response::*;
use crate::http::sse;
use crate::interactive::{self, Follow, Followed, Relay};
use myco_jobs::llm::openai::request::{Converted, Refusal, convert, parse};

/// The longest a non-streaming request waits for its answer.
pub(super) const WAIT_LIMIT: Duration = Duration::from_secs(900);

pub async fn chat_completions(
    State(node): State<NodeHandle>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    complete(node, caller, body, Flavor::Chat).await
}

pub async fn completions(
    State(node): State<NodeHandle>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    complete(node, caller, body, Flavor::Text).await
}

pub(super) async fn complete(
    node: NodeHandle,
    caller: Caller,
    body: axum::body::Bytes,
    flavor: Flavor,
) -> Response {
    let req = match parse(&body, flavor) {
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
    let Converted {
        model: name,
        prompt,
        params,
        n_ctx: req_n_ctx,
        shape,
        stream,
    } = match convert(req, flavor) {
        Ok(c) => c,
        Err(Refusal { param, message }) => return bad_request(&param, message),
    };
    if let Some(refused) = gate_model(&caller, &name) {
        return refused;
    }
    let model = match node.find_model(&name).await {
        Ok(m) => m,
        Err(e) => {
            return error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model"),
                "model_not_found",
                e.to_string(),
            );
        }
    };
    // The context is bounded by the model (its trained context) before anything is
    // allocated; the node that runs it checks again, and its memory.
    let mut params = params;
    if model.path.is_file() {
        let path = model.path.clone();
        let (asked, default) = (req_n_ctx, params.n_ctx);
        let fitted = tokio::task::spawn_blocking(move || {
            myco_jobs::model::fit_context_of(&path, asked, default)
        })
        .await;
        match fitted {
            Ok(Ok(n_ctx)) => params.n_ctx = n_ctx,
            Ok(Err(e @ myco_jobs::model::FitError::Context(_))) => {
                return bad_request("n_ctx", e.to_string());
            }
            Ok(Err(e)) => return bad_request("model", e.to_string()),
            Err(_) => {}
        }
    }
    let task = myco_jobs::llm::infer::InferTask {
        gpu: false,
        model,
        prompt,
        params,
    };
    let id = match interactive::submit(&node, task).await {
        Ok(id) => id,
        // A request this model cannot serve as it runs (split into stages, with a grammar).
        Err(myco_runtime::queue::QueueError::Invalid(why)) => {
            return bad_request("response_format", why);
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                "queue",
                e.to_string(),
            );
        }
    };
    let mut rx = interactive::spawn_follow(
        &node,
        id,
        Follow {
            cancel_on_drop: stream,
            progress: false,
        },
    );
    if !stream {
        // The whole answer at once: wait for the end, at most WAIT_LIMIT (then the job is
        // cancelled: it may wait for a node holding its model that never comes). A client
        // that goes away stops waiting, and the job still finishes (its result stays on
        // record).
        let wait = async {
            loop {
                match rx.recv().await {
                    Some(Followed::Piece(_) | Followed::Progress(_)) => {}
                    Some(Followed::End(rec)) => return Some(rec),
                    None => return None,
                }
            }
        };
        return match tokio::time::timeout(WAIT_LIMIT, wait).await {
            Ok(Some(rec)) => finished(&node, flavor, &name, *rec, shape).await,
            Ok(None) => failed_internal(id),
            Err(_) => {
                let _ = node.cancel(id).await;
                error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "server_error",
                    None,
                    "timeout",
                    format!(
                        "request {id} did not finish within {} s and was cancelled; GET /api/jobs/{id} says why it waited",
                        WAIT_LIMIT.as_secs()
                    ),
                )
            }
        };
    }
    // Wait for the first event: a request that fails at once (a prompt too long, no chat
    // template) gets a plain error response, not a broken stream.
    let first = match rx.recv().await {
        Some(Followed::End(rec)) if rec.state != myco_runtime::queue::JobState::Done => {
            return failed(&rec);
        }
        Some(first) => first,
        None => return failed_internal(id),
    };
    let created = unix_now();
    let (mut sse, response) = sse::channel();
    let edge = node.clone();
    edge.spawn_edge(async move {
        let frame = |v: serde_json::Value| format!("data: {v}\n\n").into_bytes();
        let chunk = |choice: serde_json::Value| {
            json!({
                "id": flavor.id(id), "object": flavor.object(true), "created": created,
                "model": name, "choices": [choice],
            })
        };
        if flavor == Flavor::Chat && !sse.send(frame(chunk(flavor.delta("", None)))).await {
            return;
        }
        let mut relay = Relay::default();
        let mut next = Some(first);
        // Returning drops `rx`: a client that went away cancels the job.
        while let Some(event) = match next.take() {
            Some(e) => Some(e),
            None => sse.next(&mut rx).await,
        } {
            match event {
                Followed::Progress(_) => {}
                // Text that may turn out to be a tool call waits for the end.
                Followed::Piece(_) if shape.tools => {}
                Followed::Piece(p) => {
                    if let Some(text) = relay.piece(&p)
                        && !sse.send(frame(chunk(flavor.delta(&text, None)))).await
                    {
                        return;
                    }
                }
                Followed::End(rec) => {
                    let out = match generation(&node, &rec).await {
                        Ok(g) => {
                            let mut out = Vec::new();
                            for delta in tool_call_deltas(&g) {
                                out.push(frame(chunk(json!({
                                    "index": 0, "delta": delta, "finish_reason": null,
                                }))));
                            }
                            let rest = if g.tool_calls.is_empty() {
                                relay.rest(&g.text)
                            } else {
                                None
                            };
                            // Log-probabilities come whole with the last text (clients
                            // gather a stream's `logprobs.content` lists).
                            if rest.is_some() || shape.logprobs {
                                let mut c = chunk(flavor.delta(rest.as_deref().unwrap_or(""), None));
                                if flavor == Flavor::Chat && rest.is_none() {
                                    c["choices"][0]["delta"] = json!({ "content": "" });
                                }
                                if shape.logprobs {
                                    c["choices"][0]["logprobs"] = logprobs_of(flavor, &g);
                                }
                                out.push(frame(c));
                            }
                            let finish = finish_name(g.finish_reason);
                            let mut last = chunk(flavor.delta("", Some(finish)));
                            last["usage"] = usage(&g);
                            out.push(frame(last));
                            out
                        }
                        Err((_, kind, code, message)) => vec![frame(json!({
                            "error": { "message": message, "type": kind, "param": null, "code": code }
                        }))],
                    };
                    for f in out {
                        sse.send(f).await;
                    }
                    sse.send(b"data: [DONE]\n\n".to_vec()).await;
                    return;
                }
            }
        }
    });
    response
}
