//! Jobs over HTTP: submit, list, status, result (JSON Lines), the event stream of a job
//! (`/api/jobs/{id}/stream`: pieces, then one `end` event with its status, for every kind),
//! cancel, retry (a dead or cancelled job, fresh attempts), resubmit (a new job of the same
//! task), the queue's numbers (`/api/stats`: counts, the last hour by minute) and `/health`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use myco_jobs::JobKind;
use myco_runtime::queue::{
    CancelOutcome, JobId, JobState, JobView, ListFilter, Minute, QueueError, RetryOutcome,
    StateName, Submitted,
};
use serde::{Deserialize, Serialize};

use crate::http::auth::Caller;
use crate::http::error::{ApiError, blocking, parse_id};
use crate::http::sse;
use crate::interactive::{self, Follow, Followed};
use crate::node::handle::{NodeHandle, SpecSource};

#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
    node: String,
    holder: String,
    version: &'static str,
    uptime_s: u64,
    jobs: std::collections::BTreeMap<String, u64>,
    /// Results of stolen jobs waiting for their owners.
    outbox: u64,
}

async fn health(State(node): State<NodeHandle>) -> Result<Json<Health>, ApiError> {
    let stats = stats_of(&node).await?;
    Ok(Json(Health {
        outbox: stats.outbox,
        status: "ok",
        node: stats.node,
        holder: node.queue().holder().to_owned(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: node.started().elapsed().as_secs(),
        jobs: stats.counts,
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

/// The most job files one `POST /api/jobs` takes (each is checked and planned before any
/// is enqueued).
pub const MAX_JOBS_PER_SUBMIT: usize = 10_000;

async fn submit(
    State(node): State<NodeHandle>,
    Extension(caller): Extension<Caller>,
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
    if specs.len() > MAX_JOBS_PER_SUBMIT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_jobs",
            format!(
                "{} jobs in one request, more than {MAX_JOBS_PER_SUBMIT}",
                specs.len()
            ),
            "send them in several requests (a directory or glob input makes one job of many files)",
        ));
    }
    let jobs = node.submit_as(specs, caller.access).await?;
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
    /// Only jobs whose id or description contains this (ignoring case).
    text: Option<String>,
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
        text: q.text.filter(|t| !t.trim().is_empty()),
        limit: q.limit.unwrap_or(100).min(100_000),
    };
    let queue = node.queue().clone();
    let jobs = blocking(move || queue.list(&filter)).await?;
    Ok(Json(ListReply {
        jobs: jobs.iter().map(|r| r.view()).collect(),
    }))
}

/// `GET /api/jobs/{id}`: the job's view and its task (the spec as planned).
#[derive(Debug, Serialize, Deserialize)]
pub struct JobPage {
    #[serde(flatten)]
    pub view: JobView,
    pub task: serde_json::Value,
}

async fn status(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
) -> Result<Json<JobPage>, ApiError> {
    let id = parse_id(&id)?;
    let Some(rec) = node.get(id).await? else {
        return Err(QueueError::NotFound(id).into());
    };
    let mut view = rec.view();
    if rec.state == JobState::Queued
        && matches!(rec.kind, JobKind::Infer | JobKind::Pipeline)
        && let Some(m) = rec.task.model()
    {
        let holders: Vec<String> = node
            .swarm_models()
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
        } else if rec.task.needs_gpu() && !node.any_gpu(&holders).await {
            view.waiting = Some(format!(
                "the job requires a GPU, and no node holding {} has one ({}); it waits until one is up",
                m.name,
                holders.join(", ")
            ));
        }
    }
    Ok(Json(JobPage {
        view,
        task: serde_json::to_value(&rec.task).unwrap_or_default(),
    }))
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
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    // A batch's result is its answers: its output file, then its error file.
    if let Some(files) = node.batch_files(&rec).await {
        tokio::task::spawn_blocking(move || {
            for path in files {
                let sent = std::fs::File::open(&path).and_then(|mut f| {
                    use std::io::Read;
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let n = f.read(&mut buf)?;
                        if n == 0 {
                            return Ok(true);
                        }
                        if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                            return Ok(false);
                        }
                    }
                });
                match sent {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        });
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(sse::body(rx))
            .map_err(ApiError::internal);
    }
    let ids = node.results(&rec).await?;
    let queue = node.queue().clone();
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
        .body(sse::body(rx))
        .map_err(ApiError::internal)
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    /// Cancel the job if the client disconnects before it ends.
    #[serde(default)]
    cancel_on_disconnect: bool,
}

/// Follow a job as server-sent events: `progress` events (the job's status, at the start
/// and whenever it changes), `piece` events (`{"run", "token", "text"}`) as its output
/// streams (LLM tokens), then one `end` event with the job's final status. Works for every
/// kind (only streaming kinds send pieces): it is how `myco submit --wait`, `myco run` and
/// `myco ask` wait, with no polling.
async fn stream(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if node.get(id).await?.is_none() {
        return Err(QueueError::NotFound(id).into());
    }
    let mut rx = interactive::spawn_follow(
        &node,
        id,
        Follow {
            cancel_on_drop: q.cancel_on_disconnect,
            progress: true,
        },
    );
    let (mut sse, response) = sse::channel();
    node.spawn_edge(async move {
        // Returning drops `rx` (and with `cancel_on_disconnect`, a client gone cancels).
        while let Some(event) = sse.next(&mut rx).await {
            let (name, data, end) = match event {
                Followed::Piece(p) => ("piece", serde_json::to_string(&p), false),
                Followed::Progress(view) => ("progress", serde_json::to_string(&view), false),
                Followed::End(rec) => ("end", serde_json::to_string(&rec.view()), true),
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
pub struct RetryReply {
    pub id: JobId,
    /// Jobs queued again: the job, or a parent's failed children.
    pub requeued: u32,
}

/// Queue a dead or cancelled job again with fresh attempts; 409 for a live or done one.
async fn retry(
    State(node): State<NodeHandle>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<RetryReply>, ApiError> {
    let id = parse_id(&id)?;
    match node.retry_as(id, &caller.access).await? {
        RetryOutcome::Requeued { jobs } => Ok(Json(RetryReply { id, requeued: jobs })),
        RetryOutcome::NotRetryable(state) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_retryable",
            format!(
                "job {id} is {state}: only a dead or cancelled job (or a parent with failed children) is retried"
            ),
            if state.is_terminal() {
                "to run a finished job again, resubmit it (`myco resubmit ID`)"
            } else {
                "wait for it to end, or cancel it first (`myco cancel ID`)"
            },
        )),
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ResubmitReply {
    /// The job resubmitted.
    pub from: JobId,
    pub job: Submitted,
}

/// Submit an ended job again as a new job (same task, children and scheduling).
async fn resubmit(
    State(node): State<NodeHandle>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ResubmitReply>), ApiError> {
    let from = parse_id(&id)?;
    let job = node.resubmit_as(from, &caller.access).await?;
    Ok((StatusCode::CREATED, Json(ResubmitReply { from, job })))
}

/// `GET /api/stats`: the queue in numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsReply {
    pub node: String,
    /// Jobs by state (children included).
    pub counts: std::collections::BTreeMap<String, u64>,
    /// Queued jobs by kind.
    pub queued_by_kind: std::collections::BTreeMap<String, u64>,
    /// Jobs finished since the node started, by kind and final state.
    pub finished: Vec<FinishedCount>,
    /// The last hour by minute (since the node started): throughput, latency, and who ran
    /// the jobs (stealing shows as other nodes' shares).
    pub minutes: Vec<Minute>,
    /// Results of stolen jobs waiting for their owners.
    pub outbox: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinishedCount {
    pub kind: String,
    pub state: StateName,
    pub jobs: u64,
}

/// The queue's numbers, for the dashboard and `/api/events`.
pub async fn stats_of(node: &NodeHandle) -> Result<StatsReply, ApiError> {
    let q = node.queue().clone();
    let (counts, outbox) = blocking(move || Ok((q.counts()?, q.outbox_len()?))).await?;
    let stats = node.queue().stats();
    let mut finished: Vec<FinishedCount> = stats
        .finished
        .iter()
        .map(|((kind, state), n)| FinishedCount {
            kind: kind.as_str().to_owned(),
            state: *state,
            jobs: *n,
        })
        .collect();
    finished.sort_by(|a, b| (&a.kind, a.state).cmp(&(&b.kind, b.state)));
    Ok(StatsReply {
        node: node.name().to_owned(),
        counts: StateName::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), counts[s.index()]))
            .collect(),
        queued_by_kind: stats
            .queued_by_kind
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.as_str().to_owned(), *n))
            .collect(),
        finished,
        minutes: stats.recent.last_hour(node.queue().now_ms()),
        outbox,
    })
}

async fn stats(State(node): State<NodeHandle>) -> Result<Json<StatsReply>, ApiError> {
    stats_of(&node).await.map(Json)
}

/// The job routes.
pub fn routes() -> Router<NodeHandle> {
    Router::new()
        .route("/health", get(health))
        .route("/api/jobs", post(submit).get(list))
        .route("/api/jobs/{id}", get(status))
        .route("/api/jobs/{id}/result", get(result))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/jobs/{id}/retry", post(retry))
        .route("/api/jobs/{id}/resubmit", post(resubmit))
        .route("/api/stats", get(stats))
        .route("/api/jobs/{id}/stream", get(stream))
}
