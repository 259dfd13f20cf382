//! The node's HTTP API (axum): jobs (submit, list, status, result, cancel), `/health` and
//! `/metrics` (Prometheus text format).
//!
//! Handlers are thin: they parse the request, call [`NodeHandle`] / the queue, and map
//! errors to `{"error": {"code", "message", "hint"}}` with a fitting status. Blocking reads go
//! through `spawn_blocking`. No job logic lives here.

use std::fmt::Write as _;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use myco_jobs::JobKind;
use myco_runtime::queue::{
    CancelOutcome, Histogram, JobId, JobState, JobView, ListFilter, QueueError, StateName,
};
use serde::{Deserialize, Serialize};

use crate::node::{NodeHandle, SpecSource, SubmitError};

pub fn router(node: NodeHandle) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/jobs", post(submit).get(list))
        .route("/api/jobs/{id}", get(status))
        .route("/api/jobs/{id}/result", get(result))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/swarm", get(swarm))
        .route("/api/plan", get(plan))
        .route("/api/query", post(query))
        .route("/api/jobs/{id}/stream", get(stream))
        .route("/v1/embeddings", post(crate::openai::embeddings))
        .route(
            "/v1/chat/completions",
            post(crate::openai::chat_completions),
        )
        .route("/v1/completions", post(crate::openai::completions))
        .route("/v1/models", get(crate::openai::models))
        .route("/api/swarm/ping", get(ping))
        .with_state(node)
}

/// An API error: `{"error": {"code", "message", "hint", "problems"?}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    hint: String,
    problems: Option<serde_json::Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: String, hint: &str) -> Self {
        ApiError {
            status,
            code,
            message,
            hint: hint.to_owned(),
            problems: None,
        }
    }

    fn bad_id(raw: &str) -> Self {
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
            body["error"]["problems"] = p;
        }
        (self.status, Json(body)).into_response()
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
            QueueError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the node is shutting down".into(),
                "retry once it is back",
            ),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
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
                problems: serde_json::to_value(&error.problems).ok(),
            },
            SubmitError::Queue(q) => q.into(),
        }
    }
}

fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::from_string(raw).map_err(|_| ApiError::bad_id(raw))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                e.to_string(),
                "",
            )
        })?
        .map_err(ApiError::from)
}

#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
    node: String,
    holder: String,
    version: &'static str,
    uptime_s: u64,
    jobs: std::collections::BTreeMap<&'static str, u64>,
    /// Results of stolen jobs waiting for their owners.
    outbox: u64,
}

async fn health(State(node): State<NodeHandle>) -> Result<Json<Health>, ApiError> {
    let q = node.queue.clone();
    let (counts, outbox) = blocking(move || Ok((q.counts()?, q.outbox_len()?))).await?;
    Ok(Json(Health {
        outbox,
        status: "ok",
        node: node.name.clone(),
        holder: node.queue.holder().to_owned(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: node.started.elapsed().as_secs(),
        jobs: StateName::ALL
            .iter()
            .map(|s| (s.as_str(), counts[s.index()]))
            .collect(),
    }))
}

/// `POST /api/jobs` body: one spec, or a batch.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SubmitBody {
    Batch { jobs: Vec<SpecSource> },
    One(SpecSource),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SubmitReply {
    pub jobs: Vec<myco_runtime::queue::Submitted>,
}

async fn submit(
    State(node): State<NodeHandle>,
    Json(body): Json<SubmitBody>,
) -> Result<(StatusCode, Json<SubmitReply>), ApiError> {
    let specs = match body {
        SubmitBody::Batch { jobs } => jobs,
        SubmitBody::One(one) => vec![one],
    };
    if specs.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty",
            "no jobs in the request".into(),
            "send {\"toml\": ..., \"base_dir\": ...} or {\"jobs\": [...]}",
        ));
    }
    let jobs = node.submit(specs).await?;
    let status = if jobs.iter().any(|j| j.created) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(SubmitReply { jobs })))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    kind: Option<String>,
    parent: Option<String>,
    /// Include children in a listing without `parent`.
    #[serde(default)]
    all: bool,
    limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ListReply {
    pub jobs: Vec<JobView>,
}

async fn list(
    State(node): State<NodeHandle>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ListReply>, ApiError> {
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(StateName::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_state",
                format!("unknown state `{s}`"),
                "use queued, leased, done, failed, dead or cancelled",
            )
        })?),
    };
    let kind = match q.kind.as_deref() {
        None => None,
        Some(k) => Some(JobKind::parse(k).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_kind",
                format!("unknown kind `{k}`"),
                "use chunk or noop",
            )
        })?),
    };
    let parent = q.parent.as_deref().map(parse_id).transpose()?;
    let filter = ListFilter {
        state,
        kind,
        parent,
        top_level: !q.all,
        limit: q.limit.unwrap_or(100).min(100_000),
    };
    let queue = node.queue.clone();
    let jobs = blocking(move || queue.list(&filter)).await?;
    Ok(Json(ListReply {
        jobs: jobs.iter().map(|r| r.view()).collect(),
    }))
}

async fn status(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_id(&id)?;
    let Some(rec) = node.get(id).await? else {
        return Err(QueueError::NotFound(id).into());
    };
    let mut view = rec.view();
    if rec.state == JobState::Queued
        && matches!(rec.kind, JobKind::Infer | JobKind::Pipeline)
        && let Some(m) = rec.task.model()
    {
        let holders: Vec<String> = crate::infer::swarm_models(&node)
            .await
            .into_iter()
            .filter(|s| s.file == m.name && s.bytes == m.bytes)
            .flat_map(|s| s.nodes)
            .collect();
        if holders.is_empty() {
            view.waiting = Some(format!(
                "no node of the swarm holds the model {} ({} bytes); the job waits until a node with that file is up",
                m.name, m.bytes
            ));
        } else if rec.task.needs_gpu() && !crate::infer::any_gpu(&node, &holders).await {
            view.waiting = Some(format!(
                "the job requires a GPU, and no node holding {} has one ({}); it waits until one is up",
                m.name,
                holders.join(", ")
            ));
        }
    }
    Ok(Json(view))
}

/// Stream a job's result as JSON Lines: a leaf's own, or a parent's children's in order.
async fn result(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let Some(rec) = node.get(id).await? else {
        return Err(QueueError::NotFound(id).into());
    };
    if rec.state != JobState::Done {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_done",
            format!("job {id} is {}, not done", rec.state.name()),
            "wait for it with `myco submit --wait` or check `myco status ID`",
        ));
    }
    let ids = if rec.children.is_some() && !rec.task.joins() {
        let q = node.queue.clone();
        blocking(move || q.children(id)).await?
    } else {
        vec![id]
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    let queue = node.queue.clone();
    // Reads one result at a time, so memory stays bounded whatever the job's size; ends
    // when the client goes away.
    tokio::task::spawn_blocking(move || {
        for child in ids {
            let item = match queue.result(child) {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => continue,
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(crate::sse::body(rx))
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                e.to_string(),
                "",
            )
        })
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    /// Cancel the job if the client disconnects before it ends.
    #[serde(default)]
    cancel_on_disconnect: bool,
}

/// Follow a job as server-sent events: `piece` events (`{"run", "token", "text"}`) as its
/// output streams (LLM tokens), then one `end` event with the job's status. Works for any
/// job; only streaming kinds (infer) send pieces.
async fn stream(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if node.get(id).await?.is_none() {
        return Err(QueueError::NotFound(id).into());
    }
    let mut rx = crate::infer::spawn_follow(&node, id, q.cancel_on_disconnect);
    let (mut sse, response) = crate::sse::channel();
    tokio::spawn(async move {
        // Returning drops `rx` (and with `cancel_on_disconnect`, a client gone cancels).
        while let Some(event) = sse.next(&mut rx).await {
            let (name, data, end) = match event {
                crate::infer::Followed::Piece(p) => ("piece", serde_json::to_string(&p), false),
                crate::infer::Followed::End(rec) => {
                    ("end", serde_json::to_string(&rec.view()), true)
                }
            };
            let Ok(data) = data else { return };
            let frame = format!("event: {name}\ndata: {data}\n\n").into_bytes();
            if !sse.send(frame).await || end {
                return;
            }
        }
    });
    Ok(response)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CancelReply {
    pub id: JobId,
    pub outcome: CancelOutcome,
}

async fn cancel(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
) -> Result<Json<CancelReply>, ApiError> {
    let id = parse_id(&id)?;
    let outcome = node.cancel(id).await?;
    Ok(Json(CancelReply { id, outcome }))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SwarmReply {
    pub nodes: Vec<crate::membership::MemberView>,
}

/// Nearest chunks of a collection to a text.
async fn query(
    State(node): State<NodeHandle>,
    body: axum::body::Bytes,
) -> Result<Json<crate::query::QueryReply>, ApiError> {
    use crate::query::QueryError;
    let req: crate::query::QueryRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("cannot read the query: {e}"),
            "send {\"collection\": \"NAME\", \"text\": \"...\", \"k\": 5}",
        )
    })?;
    crate::query::query(&node, req)
        .await
        .map(Json)
        .map_err(|e| match e {
            QueryError::BadRequest(m) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                m,
                "send {\"collection\": \"NAME\", \"text\": \"...\", \"k\": 5}",
            ),
            QueryError::NotFound(m) => ApiError::new(
                StatusCode::NOT_FOUND,
                "no_collection",
                m,
                "list collections under ~/.myco/collections of the node",
            ),
            QueryError::Failed(m) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "query_failed",
                m,
                "see the node's log",
            ),
        })
}

/// The swarm as this node sees it: itself first, then every peer it knows of.
async fn swarm(State(node): State<NodeHandle>) -> Json<SwarmReply> {
    Json(SwarmReply {
        nodes: node.members().await,
    })
}

#[derive(Debug, Deserialize)]
struct PlanQuery {
    model: String,
    n_ctx: Option<u32>,
}

/// `GET /api/plan`: how a pipeline job of this model would be placed now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanReply {
    pub model: String,
    pub architecture: String,
    pub layers: u32,
    pub n_ctx: u32,
    /// Everything, with the KV cache at `n_ctx`.
    pub total_bytes: u64,
    pub kv_bytes_per_layer: u64,
    /// The nodes holding the file, with the memory each offers to stages.
    pub nodes: Vec<myco_runtime::plan::NodeMemory>,
    pub stages: Vec<myco_runtime::plan::Stage>,
    /// Why no plan exists, if none does.
    pub error: Option<String>,
}

async fn plan(
    State(node): State<NodeHandle>,
    Query(q): Query<PlanQuery>,
) -> Result<Json<PlanReply>, ApiError> {
    let n_ctx = q.n_ctx.unwrap_or(4096).max(8);
    // Planning reads the model's header here: the node asked must hold the file.
    let path = crate::infer::find_model(&node, &q.model)
        .await
        .ok()
        .map(|m| m.path)
        // A peer's model comes back as a bare file name (see `find_model`).
        .filter(|p| p.is_absolute() && p.is_file())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!("this node ({}) holds no model `{}`", node.name, q.model),
                "put the GGUF file in ~/.myco/models, or ask a node that holds it (--api)",
            )
        })?;

    let (info, shape, nodes, planned) = crate::pipeline::plan_for(&node.pipeline, &path, n_ctx)
        .await
        .map_err(|why| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_model",
                why,
                "layer-range stages need a llama, mistral or qwen2 GGUF",
            )
        })?;
    let (stages, error) = match planned {
        Ok(s) => (s, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Ok(Json(PlanReply {
        model: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        architecture: info.hp.arch.clone(),
        layers: info.hp.n_layer,
        n_ctx,
        total_bytes: shape.total_bytes(),
        kv_bytes_per_layer: shape.kv_bytes_per_layer,
        nodes,
        stages,
        error,
    }))
}

#[derive(Debug, Deserialize)]
struct PingQuery {
    peer: String,
    count: Option<u32>,
}

/// Round trip of calls to a peer's PeerService against the same calls to our own (an
/// in-process actor call): the remote call overhead.
async fn ping(
    State(node): State<NodeHandle>,
    Query(q): Query<PingQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let count = q.count.unwrap_or(200).clamp(1, 100_000);
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_peer",
            format!("no peer `{}` is up", q.peer),
            "see `myco swarm`",
        )
    };
    let membership = node.membership.clone().ok_or_else(not_found)?;
    let remote = membership
        .call(
            |r| crate::membership::MembershipMsg::PeerRef(q.peer.clone(), r),
            None,
        )
        .await
        .ok()
        .and_then(|r| r.success_or(()).ok())
        .flatten()
        .ok_or_else(not_found)?;
    let local = ractor::pg::get_members(&crate::peer::PEERS_GROUP.to_owned())
        .into_iter()
        .find(|c| c.get_id().is_local())
        .map(ractor::ActorRef::<crate::peer::PeerMsg>::from)
        .ok_or_else(not_found)?;
    let remote_us = crate::stealing::ping(&remote, count)
        .await
        .ok_or_else(not_found)?;
    let local_us = crate::stealing::ping(&local, count)
        .await
        .ok_or_else(not_found)?;
    Ok(Json(serde_json::json!({
        "peer": q.peer,
        "count": count,
        "remote_us": remote_us,
        "local_us": local_us,
        "overhead_us": remote_us - local_us,
        "ratio": remote_us / local_us.max(1e-9),
    })))
}

async fn metrics(State(node): State<NodeHandle>) -> Result<Response, ApiError> {
    let q = node.queue.clone();
    let counts = blocking(move || q.counts()).await?;
    let stats = node.queue.stats();
    let restarts = node.worker_restarts().await;
    let load = node.load().await;
    let mut out = String::new();
    family(
        &mut out,
        "myco_jobs",
        "Jobs in this node's queue, by state.",
        "gauge",
    );
    for s in StateName::ALL {
        let _ = writeln!(out, "myco_jobs{{state=\"{s}\"}} {}", counts[s.index()]);
    }
    family(
        &mut out,
        "myco_jobs_finished_total",
        "Jobs finished since the node started, by kind and final state.",
        "counter",
    );
    for kind in JobKind::ALL {
        for s in [StateName::Done, StateName::Dead, StateName::Cancelled] {
            let n = stats.finished.get(&(kind, s)).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "myco_jobs_finished_total{{kind=\"{kind}\",state=\"{s}\"}} {n}"
            );
        }
    }
    family(
        &mut out,
        "myco_job_attempts_failed_total",
        "Failed attempts since the node started, by kind.",
        "counter",
    );
    for kind in JobKind::ALL {
        let n = stats.failed_attempts.get(&kind).copied().unwrap_or(0);
        let _ = writeln!(out, "myco_job_attempts_failed_total{{kind=\"{kind}\"}} {n}");
    }
    family(
        &mut out,
        "myco_job_latency_seconds",
        "Time from submission to done, by kind.",
        "histogram",
    );
    for kind in JobKind::ALL {
        let h = stats.latency.get(&kind).cloned().unwrap_or_default();
        write_histogram(&mut out, kind, &h);
    }
    family(
        &mut out,
        "myco_queue_commits_total",
        "Queue write transactions committed.",
        "counter",
    );
    let _ = writeln!(out, "myco_queue_commits_total {}", stats.commits);
    family(
        &mut out,
        "myco_queue_ops_total",
        "Queue operations committed.",
        "counter",
    );
    let _ = writeln!(out, "myco_queue_ops_total {}", stats.ops);
    family(
        &mut out,
        "myco_worker_restarts_total",
        "Workers replaced after a failure.",
        "counter",
    );
    let _ = writeln!(out, "myco_worker_restarts_total {restarts}");
    if let Some(load) = load {
        family(
            &mut out,
            "myco_jobs_running",
            "Jobs running on this node's workers.",
            "gauge",
        );
        let _ = writeln!(out, "myco_jobs_running {}", load.running);
        family(
            &mut out,
            "myco_workers_idle",
            "Batch workers waiting for a job.",
            "gauge",
        );
        let _ = writeln!(out, "myco_workers_idle {}", load.idle_workers);
        family(
            &mut out,
            "myco_executives_idle",
            "Executives (LLM inference) waiting for a job.",
            "gauge",
        );
        let _ = writeln!(out, "myco_executives_idle {}", load.idle_executives);
        family(
            &mut out,
            "myco_steals_total",
            "Successful steals by this node.",
            "counter",
        );
        let _ = writeln!(out, "myco_steals_total {}", load.steals);
        family(
            &mut out,
            "myco_stolen_jobs_total",
            "Jobs this node stole from peers.",
            "counter",
        );
        let _ = writeln!(out, "myco_stolen_jobs_total {}", load.stolen_jobs);
        family(
            &mut out,
            "myco_steal_seconds_total",
            "Summed latency of successful steals.",
            "counter",
        );
        let _ = writeln!(out, "myco_steal_seconds_total {}", load.steal_seconds);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

/// The `# HELP` and `# TYPE` lines that open a metric family.
fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn write_histogram(out: &mut String, kind: JobKind, h: &Histogram) {
    let mut cumulative = 0;
    for (i, bound) in Histogram::BOUNDS_MS.iter().enumerate() {
        cumulative += h.buckets[i];
        let le = *bound as f64 / 1000.0;
        let _ = writeln!(
            out,
            "myco_job_latency_seconds_bucket{{kind=\"{kind}\",le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "myco_job_latency_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(
        out,
        "myco_job_latency_seconds_sum{{kind=\"{kind}\"}} {}",
        h.sum_ms as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "myco_job_latency_seconds_count{{kind=\"{kind}\"}} {}",
        h.count
    );
}
