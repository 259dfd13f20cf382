//! A small HTTP client for a node's API, with errors that say what to do.
//!
//! Only request plumbing here; what to print lives in the commands (`cmd/`).

use std::net::SocketAddr;

use anyhow::{Context, Result, anyhow};
use myco_actors::SpecSource;
use myco_actors::http::jobs::{CancelReply, ListReply, SubmitReply};
use myco_runtime::queue::JobView;
use serde::de::DeserializeOwned;

/// Talks to one node.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

/// An error the node returned, already phrased for a person.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", if .hint.is_empty() { String::new() } else { format!("\nhint: {}", .hint) })]
pub struct NodeSaid {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub hint: String,
}

/// The node could not be reached at all.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach a myco node at {addr}: {why}\nhint: start one with `myco node`, point --api (or MYCO_API) at a running node, or run the job without a node: `myco run FILE`"
)]
pub struct Unreachable {
    pub addr: String,
    pub why: String,
}

impl Client {
    /// A client of the node at `addr`, sending `token` (the node's API token) if given.
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Client {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token
            && let Ok(mut v) =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.trim()))
        {
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        Client {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .default_headers(headers)
                // Under the node's header timeout (10 s by default), which closes idle
                // kept-alive connections: one reused as the node closes it would fail.
                .pool_idle_timeout(std::time::Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| Unreachable {
            addr: self.base.clone(),
            why: root_cause(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let err = &body["error"];
        let text = |k: &str| err[k].as_str().unwrap_or_default().to_owned();
        Err(NodeSaid {
            status,
            code: text("code"),
            message: if err.is_null() {
                format!("the node answered HTTP {status}")
            } else {
                text("message")
            },
            hint: text("hint"),
        }
        .into())
    }

    async fn json<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        let resp = self.send(req).await?;
        resp.json::<T>()
            .await
            .context("the node sent a reply this myco cannot read; are both the same version?")
    }

    pub async fn submit(&self, specs: Vec<SpecSource>) -> Result<SubmitReply> {
        let body = serde_json::json!({ "jobs": specs });
        self.json(
            self.http
                .post(format!("{}/api/jobs", self.base))
                .json(&body),
        )
        .await
    }

    pub async fn status(&self, id: &str) -> Result<JobView> {
        self.json(self.http.get(format!("{}/api/jobs/{id}", self.base)))
            .await
    }

    pub async fn list(&self, query: &[(&str, String)]) -> Result<ListReply> {
        self.json(
            self.http
                .get(format!("{}/api/jobs", self.base))
                .query(query),
        )
        .await
    }

    pub async fn cancel(&self, id: &str) -> Result<CancelReply> {
        self.json(
            self.http
                .post(format!("{}/api/jobs/{id}/cancel", self.base)),
        )
        .await
    }

    pub async fn retry(&self, id: &str) -> Result<myco_actors::http::jobs::RetryReply> {
        self.json(self.http.post(format!("{}/api/jobs/{id}/retry", self.base)))
            .await
    }

    pub async fn resubmit(&self, id: &str) -> Result<myco_actors::http::jobs::ResubmitReply> {
        self.json(
            self.http
                .post(format!("{}/api/jobs/{id}/resubmit", self.base)),
        )
        .await
    }

    pub async fn remove_model(&self, model: &str) -> Result<myco_actors::travel::RemovedModel> {
        self.json(
            self.http
                .delete(format!("{}/api/models/{model}", self.base)),
        )
        .await
    }

    pub async fn pull(
        &self,
        model: &str,
        from: Option<&str>,
    ) -> Result<myco_actors::node::handle::PulledModel> {
        self.json(
            self.http
                .post(format!("{}/api/models/pull", self.base))
                .json(&serde_json::json!({ "model": model, "from": from })),
        )
        .await
    }

    pub async fn swarm(&self) -> Result<myco_actors::http::swarm::SwarmReply> {
        self.json(self.http.get(format!("{}/api/swarm", self.base)))
            .await
    }

    pub async fn plan(
        &self,
        model: &str,
        n_ctx: u32,
    ) -> Result<myco_actors::http::swarm::PlanReply> {
        self.json(
            self.http
                .get(format!("{}/api/plan", self.base))
                .query(&[("model", model.to_owned()), ("n_ctx", n_ctx.to_string())]),
        )
        .await
    }

    pub async fn query(
        &self,
        req: &myco_actors::query::QueryRequest,
    ) -> Result<myco_actors::query::QueryReply> {
        self.json(self.http.post(format!("{}/api/query", self.base)).json(req))
            .await
    }

    pub async fn collections(&self) -> Result<myco_actors::http::swarm::CollectionsReply> {
        self.json(self.http.get(format!("{}/api/collections", self.base)))
            .await
    }

    pub async fn remove_collection(
        &self,
        name: &str,
    ) -> Result<myco_actors::http::swarm::RemovedReply> {
        self.json(
            self.http
                .delete(format!("{}/api/collections/{name}", self.base)),
        )
        .await
    }

    /// A job's events as server-sent events (`progress`, `piece`s, then `end`); with
    /// `cancel_on_disconnect`, the job is cancelled if this client goes away first.
    pub async fn stream(&self, id: &str, cancel_on_disconnect: bool) -> Result<reqwest::Response> {
        self.send(
            self.http
                .get(format!("{}/api/jobs/{id}/stream", self.base))
                .query(&[("cancel_on_disconnect", cancel_on_disconnect)]),
        )
        .await
    }

    /// The raw result stream (JSON Lines).
    pub async fn result(&self, id: &str) -> Result<reqwest::Response> {
        self.send(self.http.get(format!("{}/api/jobs/{id}/result", self.base)))
            .await
    }
}

fn root_cause(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    let text = source.to_string();
    if text.is_empty() {
        anyhow!("{e}").to_string()
    } else {
        text
    }
}

/// Read server-sent events from `resp`, calling `on_event(event, data)` for each (the event
/// name is `message` when none is given). Stops when `on_event` returns false or the
/// stream ends.
pub async fn read_sse(
    resp: reqwest::Response,
    mut on_event: impl FnMut(&str, &str) -> Result<bool>,
) -> Result<()> {
    use futures_util::StreamExt;
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| anyhow!("the stream broke off: {}", root_cause(&e)))?;
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..end + 2).collect();
            let frame = String::from_utf8_lossy(&frame);
            let mut event = "message";
            let mut data: Option<String> = None;
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim();
                } else if let Some(d) = line.strip_prefix("data:") {
                    let data = data.get_or_insert_with(String::new);
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            // A frame without data (a keep-alive comment) is no event.
            let Some(data) = data else { continue };
            if !on_event(event, &data)? {
                return Ok(());
            }
        }
    }
    Ok(())
}
