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

use super::request::*;
use super::response::*;
use crate::http::sse;
use crate::interactive::{self, Follow, Followed, Relay};

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
    let req: CompletionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let shape = match flavor {
                Flavor::Chat => {
                    "{\"model\": ..., \"messages\": [{\"role\": \"user\", \"content\": ...}]}"
                }
                Flavor::Text => "{\"model\": ..., \"prompt\": ...}",
            };
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "invalid_body",
                format!("cannot read the request: {e}; send {shape}"),
            );
        }
    };
    let extras = match extras(&req, flavor == Flavor::Chat) {
        Ok(e) => e,
        Err((param, why)) => return bad_request(&param, format!("{param}: {why}")),
    };
    // How the answer is told: tool calls are read from the whole output, so a request that
    // may call tools streams its text (or its calls) once generation ends.
    let shape = Shape {
        tools: extras
            .tools
            .as_ref()
            .is_some_and(|t| t.choice != myco_jobs::llm::infer::ToolChoice::None),
        logprobs: extras.logprobs.is_some(),
    };
    let seed = match seed(req.seed) {
        Ok(s) => s,
        Err(why) => return bad_request("seed", why),
    };
    let prompt = match (flavor, req.messages, req.prompt) {
        (Flavor::Chat, Some(m), _) if !m.is_empty() => match messages(m) {
            Ok(p) => p,
            Err((param, why)) => return bad_request(&param, format!("{param}: {why}")),
        },
        (Flavor::Chat, _, _) => {
            return bad_request("messages", "messages is missing or empty".into());
        }
        (Flavor::Text, _, Some(p)) => myco_jobs::llm::infer::Prompt::Text(p),
        (Flavor::Text, _, None) => return bad_request("prompt", "prompt is missing".into()),
    };
    let prompt = prompt.with(extras);
    if req.n.is_some_and(|n| n != 1) {
        return bad_request("n", "only n = 1 is supported".into());
    }
    // Checked as a job file's `[infer]` is: one set of rules wherever a request comes from.
    let req_n_ctx = req.n_ctx;
    let options = myco_jobs::llm::infer::InferOptions {
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_k: req.top_k,
        top_p: req.top_p,
        min_p: req.min_p,
        repeat_penalty: req.repeat_penalty,
        seed: Some(seed),
        stop: match req.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        },
        n_ctx: req_n_ctx,
        chat_template: req.chat_template,
        json: json_mode(req.response_format.as_ref()),
        grammar: req.grammar,
        threads: req.threads,
        ..myco_jobs::llm::infer::InferOptions::default()
    };
    let params = match options.params("") {
        Ok(p) => p,
        Err(problems) => {
            let param = problems
                .first()
                .map(|p| p.field.clone())
                .unwrap_or_default();
            let message = problems
                .iter()
                .map(|p| format!("{}: {}; {}", p.field, p.message, p.hint))
                .collect::<Vec<_>>()
                .join("\n");
            return bad_request(&param, message);
        }
    };
    if let Some(refused) = gate_model(&caller, &req.model) {
        return refused;
    }
    let model = match node.find_model(&req.model).await {
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
            cancel_on_drop: req.stream,
            progress: false,
        },
    );
    let name = req.model;
    if !req.stream {
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
