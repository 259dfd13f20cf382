//! `/v1/batches`: create (an uploaded file's lines become a batch job: see
//! [`myco_jobs::batch`]), retrieve, list and cancel, with OpenAI's `Batch` object.
//!
//! The queue holds the batch's work; what OpenAI's object says besides (its input file, its
//! metadata, when it was cancelled, or the errors of a file that could not run) lives in
//! `home/batches/ID.json`. A batch's status is read from both: its job waiting on its lines
//! is `in_progress`, its join `finalizing`, its join done `completed` (or `cancelled` after
//! a cancel, `expired` past its window), a file with bad lines `failed` at once (every bad
//! line named in `errors`, nothing run). Lines are checked when the batch is created, so
//! `validating` is never seen.

use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use myco_jobs::batch::{Endpoint, LineError, Written};
use myco_jobs::files::unix_now;
use myco_runtime::queue::{JobId, JobRecord, JobState, ListFilter, StateName};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error;
use super::files::{page, store};
use crate::http::auth::Caller;
use crate::node::handle::NodeHandle;

/// What `home/batches/ID.json` keeps of a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    /// Its job (none when its file could not run).
    job: Option<String>,
    endpoint: String,
    input_file_id: String,
    completion_window: String,
    created_at: u64,
    expires_at: u64,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    /// A file that could not run: every bad line.
    #[serde(default)]
    errors: Vec<ErrorOut>,
    #[serde(default)]
    failed_at: Option<u64>,
    #[serde(default)]
    cancelling_at: Option<u64>,
    /// The model the lines name (the first line's).
    #[serde(default)]
    model: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ErrorOut {
    code: String,
    message: String,
    param: Option<String>,
    line: Option<usize>,
}

fn dir(node: &NodeHandle) -> PathBuf {
    node.home().join("batches")
}

fn valid_id(id: &str) -> bool {
    id.strip_prefix("batch_").is_some_and(|r| {
        !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

fn save(dir: &std::path::Path, rec: &Record) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", rec.id));
    std::fs::write(
        &tmp,
        serde_json::to_vec(rec).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, dir.join(format!("{}.json", rec.id)))
}

/// Write `rec` off the async threads; Err: the response that says why not.
async fn save_record(node: &NodeHandle, rec: &Record) -> Result<(), Response> {
    let dir = dir(node);
    let saved = rec.clone();
    tokio::task::spawn_blocking(move || save(&dir, &saved))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(storage)
}

fn load(dir: &std::path::Path, id: &str) -> std::io::Result<Option<Record>> {
    if !valid_id(id) {
        return Ok(None);
    }
    match std::fs::read(dir.join(format!("{id}.json"))) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn load_all(dir: &std::path::Path) -> std::io::Result<Vec<Record>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".json")
            && let Some(rec) = load(dir, id)?
        {
            out.push(rec);
        }
    }
    // Newest first.
    out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    Ok(out)
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("batch_id"),
        "batch_not_found",
        format!("No batch found with id '{id}'."),
    )
}

fn storage(e: impl std::fmt::Display) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        None,
        "storage",
        format!("the node's batch records: {e}"),
    )
}

fn bad(param: &str, code: &str, message: String) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        Some(param),
        code,
        message,
    )
}

/// The `Batch` object of `rec`, as its job stands.
fn object(rec: &Record, job: Option<&JobRecord>, written: Option<&Written>) -> serde_json::Value {
    let secs = |ms: u64| ms / 1000;
    let now = unix_now();
    let mut status = "in_progress";
    let (mut finalizing_at, mut completed_at, mut cancelled_at, mut expired_at) =
        (None, None, None, None);
    let mut failed_at = rec.failed_at;
    let mut counts = json!({ "total": 0, "completed": 0, "failed": 0 });
    if !rec.errors.is_empty() {
        status = "failed";
    }
    if let Some(job) = job {
        if let Some(c) = job.children {
            counts = json!({
                "total": c.total,
                "completed": c.done,
                "failed": c.dead + c.cancelled,
            });
        }
        let joining = matches!(
            job.state,
            JobState::Queued | JobState::Leased { .. } | JobState::Failed { .. }
        );
        let finished_at = job.finished_ms.map(secs);
        match &job.state {
            JobState::Waiting if rec.cancelling_at.is_some() => status = "cancelling",
            JobState::Waiting => status = "in_progress",
            _ if joining => {
                status = if rec.cancelling_at.is_some() {
                    "cancelling"
                } else {
                    "finalizing"
                };
                finalizing_at = Some(secs(job.updated_ms));
            }
            JobState::Done => {
                if let Some(w) = written {
                    counts =
                        json!({ "total": w.total, "completed": w.completed, "failed": w.failed });
                }
                if rec.cancelling_at.is_some() {
                    status = "cancelled";
                    cancelled_at = finished_at;
                } else if finished_at.unwrap_or(now) >= rec.expires_at
                    && written.is_some_and(|w| w.completed < w.total)
                {
                    status = "expired";
                    expired_at = Some(rec.expires_at);
                } else {
                    status = "completed";
                    completed_at = finished_at;
                }
            }
            JobState::Cancelled => {
                status = "cancelled";
                cancelled_at = finished_at;
            }
            _ => {
                status = "failed";
                failed_at = finished_at;
            }
        }
    }
    let errors = (!rec.errors.is_empty()).then(|| json!({ "object": "list", "data": rec.errors }));
    json!({
        "id": rec.id,
        "object": "batch",
        "endpoint": rec.endpoint,
        "model": rec.model,
        "errors": errors,
        "input_file_id": rec.input_file_id,
        "completion_window": rec.completion_window,
        "status": status,
        "output_file_id": written.and_then(|w| w.output_file_id.clone()),
        "error_file_id": written.and_then(|w| w.error_file_id.clone()),
        "created_at": rec.created_at,
        "in_progress_at": rec.job.as_ref().map(|_| rec.created_at),
        "expires_at": rec.expires_at,
        "finalizing_at": finalizing_at,
        "completed_at": completed_at,
        "failed_at": failed_at,
        "expired_at": expired_at,
        "cancelling_at": rec.cancelling_at,
        "cancelled_at": cancelled_at,
        "request_counts": counts,
        "metadata": rec.metadata,
        // myco's own: the job that runs it (`myco status JOB`, the dashboard's job page).
        "myco": { "job": rec.job },
    })
}

/// `rec`'s object, read with its job.
async fn object_of(node: &NodeHandle, rec: &Record) -> serde_json::Value {
    let queue = node.queue().clone();
    let job: Option<JobId> = rec.job.as_deref().and_then(|j| j.parse().ok());
    let read = tokio::task::spawn_blocking(move || {
        let Some(id) = job else {
            return (None, None);
        };
        let job = queue.get(id).ok().flatten();
        let written = job
            .as_ref()
            .filter(|j| j.state == JobState::Done)
            .and_then(|_| queue.result(id).ok().flatten())
            .and_then(|b| serde_json::from_slice::<Written>(&b).ok());
        (job, written)
    })
    .await
    .unwrap_or((None, None));
    object(rec, read.0.as_ref(), read.1.as_ref())
}

#[derive(Debug, Deserialize)]
pub struct CreateBatch {
    #[serde(default)]
    input_file_id: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    completion_window: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

/// The longest completion window myco takes (OpenAI's is 24 h, its only one; myco also
/// takes shorter and longer ones as durations, "1h", "7d").
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest (a window shorter than a sweep is only for trying the window out).
const MIN_WINDOW: Duration = Duration::from_secs(10);
/// How often lines past their batch's window are stopped.
const SWEEP: Duration = Duration::from_secs(5);

/// `POST /v1/batches`.
pub async fn create(
    State(node): State<NodeHandle>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    let req: CreateBatch = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad(
                "body",
                "invalid_body",
                format!(
                    "cannot read the request: {e}; send {{\"input_file_id\", \"endpoint\", \"completion_window\": \"24h\"}}"
                ),
            );
        }
    };
    let missing = |param: &str| {
        bad(
            param,
            "missing_required_parameter",
            format!("Missing required parameter: '{param}'."),
        )
    };
    let Some(input_file_id) = req.input_file_id else {
        return missing("input_file_id");
    };
    let Some(url) = req.endpoint else {
        return missing("endpoint");
    };
    let Some(window_text) = req.completion_window else {
        return missing("completion_window");
    };
    let Some(endpoint) = Endpoint::parse(&url) else {
        return bad(
            "endpoint",
            "invalid_value",
            format!(
                "`{url}` is not an endpoint a batch calls here; use one of {}",
                Endpoint::names()
            ),
        );
    };
    let window = match humantime::parse_duration(&window_text) {
        Ok(w) if w >= MIN_WINDOW && w <= MAX_WINDOW => w,
        _ => {
            return bad(
                "completion_window",
                "invalid_value",
                format!(
                    "`{window_text}` is not a window a batch takes: use \"24h\" (or a duration from 10s to 7d)"
                ),
            );
        }
    };
    if let Some(m) = &req.metadata
        && !m.is_null()
        && !m.as_object().is_some_and(|o| {
            o.len() <= 16
                && o.values()
                    .all(|v| v.as_str().is_some_and(|s| s.len() <= 512))
                && o.keys().all(|k| k.len() <= 64)
        })
    {
        return bad(
            "metadata",
            "invalid_value",
            "metadata is at most 16 string keys (64 characters) with string values (512)".into(),
        );
    }
    let files = store(&node);
    let fid = input_file_id.clone();
    let found =
        tokio::task::spawn_blocking(move || -> std::io::Result<Option<(String, Vec<u8>)>> {
            let Some(meta) = files.get(&fid)? else {
                return Ok(None);
            };
            let Some(path) = files.path(&fid)? else {
                return Ok(None);
            };
            Ok(Some((meta.purpose, std::fs::read(path)?)))
        })
        .await;
    let (purpose, bytes) = match found {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => {
            return error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("input_file_id"),
                "file_not_found",
                format!("No such File object: {input_file_id}"),
            );
        }
        Ok(Err(e)) => return storage(e),
        Err(e) => return storage(e),
    };
    if purpose != "batch" {
        return bad(
            "input_file_id",
            "invalid_value",
            format!(
                "{input_file_id} has purpose `{purpose}`: a batch reads a file uploaded with purpose `batch`"
            ),
        );
    }
    let id = match myco_jobs::kind::batch::new_id() {
        Ok(id) => id,
        Err(e) => return storage(e),
    };
    let model = first_model(&bytes);
    let created_at = unix_now();
    let mut rec = Record {
        id: id.clone(),
        job: None,
        endpoint: url,
        input_file_id,
        completion_window: window_text,
        created_at,
        expires_at: created_at + window.as_secs(),
        metadata: req.metadata.filter(|m| !m.is_null()),
        errors: Vec::new(),
        failed_at: None,
        cancelling_at: None,
        model,
    };
    match crate::interactive::submit_batch(
        &node,
        id.clone(),
        bytes,
        endpoint,
        window,
        caller.access.clone(),
    )
    .await
    {
        Ok(submitted) => {
            rec.job = Some(submitted.id.to_string());
            tracing::info!(batch = %id, job = %submitted.id, "batch created");
        }
        Err(Ok(lines)) => {
            rec.errors = lines.iter().map(error_out).collect();
            rec.failed_at = Some(created_at);
            tracing::info!(batch = %id, errors = lines.len(), "batch failed: its file has bad lines");
        }
        Err(Err(e)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                "queue",
                format!("cannot queue the batch: {e}"),
            );
        }
    }
    if let Err(r) = save_record(&node, &rec).await {
        return r;
    }
    Json(object_of(&node, &rec).await).into_response()
}

fn error_out(e: &LineError) -> ErrorOut {
    ErrorOut {
        code: e.code.to_owned(),
        message: e.message.clone(),
        param: e.param.clone(),
        line: (e.line > 0).then_some(e.line),
    }
}

/// The model the first line names (the batch's `model`).
fn first_model(bytes: &[u8]) -> Option<String> {
    myco_jobs::batch::first_line(bytes)?
        .get("body")?
        .get("model")?
        .as_str()
        .map(str::to_owned)
}

async fn read_record(node: &NodeHandle, id: &str) -> Result<Record, Response> {
    let dir = dir(node);
    let id2 = id.to_owned();
    match tokio::task::spawn_blocking(move || load(&dir, &id2)).await {
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => Err(not_found(id)),
        Ok(Err(e)) => Err(storage(e)),
        Err(e) => Err(storage(e)),
    }
}

/// `GET /v1/batches/{id}`.
pub async fn retrieve(State(node): State<NodeHandle>, Path(id): Path<String>) -> Response {
    match read_record(&node, &id).await {
        Ok(rec) => Json(object_of(&node, &rec).await).into_response(),
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/batches`: newest first.
pub async fn list(State(node): State<NodeHandle>, Query(q): Query<ListQuery>) -> Response {
    let dir = dir(&node);
    let all = match tokio::task::spawn_blocking(move || load_all(&dir)).await {
        Ok(Ok(all)) => all,
        Ok(Err(e)) => return storage(e),
        Err(e) => return storage(e),
    };
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    let (recs, more) = page(all, |r: &Record| r.id.as_str(), q.after.as_deref(), limit);
    let mut data = Vec::with_capacity(recs.len());
    for rec in &recs {
        data.push(object_of(&node, rec).await);
    }
    Json(json!({
        "object": "list",
        "data": data,
        "first_id": recs.first().map(|r| r.id.clone()),
        "last_id": recs.last().map(|r| r.id.clone()),
        "has_more": more,
    }))
    .into_response()
}

/// `POST /v1/batches/{id}/cancel`: the lines not finished are cancelled; the batch is
/// `cancelling` until its join has written what did finish, then `cancelled`.
pub async fn cancel(State(node): State<NodeHandle>, Path(id): Path<String>) -> Response {
    let mut rec = match read_record(&node, &id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let now = object_of(&node, &rec).await;
    let status = now["status"].as_str().unwrap_or("").to_owned();
    match status.as_str() {
        "cancelling" | "cancelled" => return Json(now).into_response(),
        "in_progress" | "finalizing" | "validating" => {}
        other => {
            return bad(
                "batch_id",
                "invalid_value",
                format!("batch {id} is {other}: only a batch in progress can be cancelled"),
            );
        }
    }
    rec.cancelling_at = Some(unix_now());
    if let Err(r) = save_record(&node, &rec).await {
        return r;
    }
    if let Some(job) = rec.job.as_deref().and_then(|j| j.parse::<JobId>().ok()) {
        let n = stop_lines(&node, job).await;
        tracing::info!(batch = %id, lines = n, "batch cancelled: its unfinished lines are cancelled");
    }
    Json(object_of(&node, &rec).await).into_response()
}

/// Cancel the lines of batch job `job` that have not finished; how many.
async fn stop_lines(node: &NodeHandle, job: JobId) -> usize {
    let queue = node.queue().clone();
    let open = tokio::task::spawn_blocking(move || -> Vec<JobId> {
        let Ok(children) = queue.children(job) else {
            return Vec::new();
        };
        children
            .into_iter()
            .filter(|c| {
                queue
                    .get(*c)
                    .ok()
                    .flatten()
                    .is_some_and(|r| !r.state.is_terminal())
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    let n = open.len();
    for child in open {
        let _ = node.cancel(child).await;
    }
    n
}

/// Every few seconds ([`SWEEP`]): the lines of batches past their window are cancelled (the
/// join then writes what finished, the rest as `batch_expired`); every minute, files past
/// their expiry go.
pub async fn sweep(node: NodeHandle) {
    let mut every = tokio::time::interval(SWEEP);
    let mut round = 0u64;
    loop {
        every.tick().await;
        let queue = node.queue().clone();
        let due = tokio::task::spawn_blocking(move || -> Vec<(JobId, String)> {
            let waiting = queue
                .list(&ListFilter {
                    kind: Some(myco_jobs::JobKind::Batch),
                    state: Some(StateName::Leased),
                    limit: 10_000,
                    ..ListFilter::default()
                })
                .unwrap_or_default();
            let now = unix_now();
            waiting
                .into_iter()
                .filter(|r| r.state == JobState::Waiting)
                .filter_map(|r| match &r.task {
                    myco_jobs::Task::Batch(b) if b.expires_at <= now => Some((r.id, b.id.clone())),
                    _ => None,
                })
                .collect()
        })
        .await
        .unwrap_or_default();
        for (job, id) in due {
            let n = stop_lines(&node, job).await;
            if n > 0 {
                tracing::info!(batch = %id, lines = n, "batch past its completion window: its unfinished lines are not run");
            }
        }
        round += 1;
        if round % 12 != 1 {
            continue;
        }
        let files = store(&node);
        let _ = tokio::task::spawn_blocking(move || {
            files.sweep();
            let _ = files.list();
        })
        .await;
    }
}
