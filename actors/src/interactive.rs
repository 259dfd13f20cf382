//! Interactive requests at a node (an OpenAI call, `myco ask`, a query's embedding): jobs
//! submitted ahead of batch work ([`INTERACTIVE_PRIORITY`]), and following a job to its end
//! with its streamed pieces ([`follow`]), which the API's job stream, the OpenAI endpoints
//! and the CLI's waits all go through.
//!
//! A request is an ordinary job in this node's durable queue. If this node holds the model,
//! its executive runs it; if only a peer does, the job waits here until that peer steals it
//! (the job names the model by file name and size, and nodes only lease or steal jobs whose
//! model they hold). Tokens come back through this node's [`Streams`](crate::streams).

use std::path::{Path, PathBuf};
use std::time::Duration;

use myco_jobs::JobSpec;
use myco_jobs::Task;
use myco_jobs::archive::ModelRef;
use myco_jobs::llm::infer::{Generation, InferTask};
use myco_runtime::access::Access;
use myco_runtime::cluster::wire::StreamPiece;
use myco_runtime::queue::{JobId, JobRecord, JobState, JobView, NewJob, QueueError, Submitted};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::node::handle::{NodeHandle, SubmitError};
use crate::streams::Subscription;

/// Interactive requests go ahead of batch jobs (which default to 0); the queue keeps them,
/// once finished, for the node's retention of interactive jobs only.
pub use myco_runtime::queue::INTERACTIVE_PRIORITY;

/// Why an interactive embedding failed.
/// Why an embedding request failed: the queue could not take it (`Queue`), or its job did
/// not give vectors (the model's files, a timeout: `Failed`).
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{0}")]
    Queue(String),
    #[error("{0}")]
    Failed(String),
}

/// Cancels a job when dropped while armed: the request that waits for it is gone (its
/// client went away), so the work stops too.
struct CancelOnDrop {
    node: NodeHandle,
    id: JobId,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let (node, id) = (self.node.clone(), self.id);
            tokio::spawn(async move {
                let _ = node.cancel(id).await;
            });
        }
    }
}

/// Embed `texts` with `model` now: an interactive job through the queue, awaited.
pub async fn embed_now(
    node: &NodeHandle,
    model: ModelRef,
    texts: Vec<String>,
) -> Result<Vec<Vec<f32>>, EmbedError> {
    let job = NewJob {
        task: Task::Embed {
            model,
            texts,
            batch_tokens: myco_jobs::kind::embed::DEFAULT_BATCH_TOKENS,
            links: Vec::new(),
        },
        priority: INTERACTIVE_PRIORITY,
        max_attempts: 2,
        timeout_ms: 120_000,
        idempotency_key: None,
        children: Vec::new(),
    };
    let failed = EmbedError::Failed;
    let id = node
        .queue()
        .submit(vec![job])
        .await
        .map_err(|e| EmbedError::Queue(e.to_string()))?
        .first()
        .ok_or_else(|| EmbedError::Queue("the queue accepted no job".into()))?
        .id;
    let mut guard = CancelOnDrop {
        node: node.clone(),
        id,
        armed: true,
    };
    let rec = match tokio::time::timeout(
        Duration::from_secs(130),
        node.wait(id, Duration::from_millis(250)),
    )
    .await
    {
        Ok(Ok(rec)) => rec,
        Ok(Err(e)) => return Err(EmbedError::Queue(e.to_string())),
        Err(_) => {
            return Err(failed(format!(
                "job {id} did not finish in time; it was cancelled"
            )));
        }
    };
    guard.armed = false;
    if rec.state != JobState::Done {
        let why = rec.last_error.map(|e| e.message).unwrap_or_default();
        return Err(failed(format!(
            "embedding job {id} ended {}: {why}",
            rec.state.name()
        )));
    }
    let q = node.queue().clone();
    let result = match tokio::task::spawn_blocking(move || q.result(id)).await {
        Ok(Ok(Some(bytes))) => bytes,
        other => {
            return Err(failed(format!(
                "job {id}'s result is unreadable: {other:?}"
            )));
        }
    };
    #[derive(Deserialize)]
    struct Line {
        vector: Vec<f32>,
    }
    result
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice::<Line>(l)
                .map(|l| l.vector)
                .map_err(|e| failed(format!("job {id}'s result is unreadable: {e}")))
        })
        .collect()
}

/// The result of infer job `id`, done.
pub async fn generation(node: &NodeHandle, id: JobId) -> Result<Generation, String> {
    let q = node.queue().clone();
    let bytes = match tokio::task::spawn_blocking(move || q.result(id)).await {
        Ok(Ok(Some(b))) => b,
        Ok(Ok(None)) => return Err(format!("job {id} has no result")),
        Ok(Err(e)) => return Err(format!("the result of {id} is unreadable: {e}")),
        Err(e) => return Err(format!("the result of {id} is unreadable: {e}")),
    };
    serde_json::from_slice(&bytes).map_err(|e| format!("the result of {id} is unreadable: {e}"))
}

/// Submit an interactive LLM request (ahead of batch work); returns its id. It is an infer
/// job, or a pipeline job when no node that holds the model can hold it whole: then its
/// layers run as stages over several nodes, planned from the memory they offer.
pub async fn submit(node: &NodeHandle, task: InferTask) -> Result<JobId, QueueError> {
    let task = if split(node, &task).await {
        if task.params.grammar.is_some() || task.prompt.extras().is_some() {
            return Err(QueueError::Invalid(format!(
                "{} is too big for any one node and runs as layer-range stages, which do not take a grammar (JSON mode, a JSON schema, tools) or report log-probabilities yet",
                task.model.name
            )));
        }
        Task::Pipeline(task)
    } else {
        Task::Infer(task)
    };
    let job = NewJob {
        task,
        priority: INTERACTIVE_PRIORITY,
        // A second attempt covers a node lost mid-generation; a failure of the request
        // itself (a prompt too long, no chat template) is fatal and not retried.
        max_attempts: 2,
        timeout_ms: 600_000,
        idempotency_key: None,
        children: Vec::new(),
    };
    node.queue()
        .submit(vec![job])
        .await?
        .first()
        .map(|s| s.id)
        .ok_or_else(|| QueueError::Internal("the queue accepted no job".into()))
}

/// Read a batch's input (`bytes`, OpenAI's JSON Lines of `endpoint`) into a batch job of
/// id `id` whose lines may name only models `access` lets the caller use, and queue it
/// below interactive requests. Err(Ok): every bad line; Err(Err): the queue's refusal.
pub async fn submit_batch(
    node: &NodeHandle,
    id: String,
    bytes: Vec<u8>,
    endpoint: myco_jobs::batch::Endpoint,
    window: std::time::Duration,
    access: Access,
) -> Result<Submitted, Result<Vec<myco_jobs::batch::LineError>, SubmitError>> {
    let remote: Vec<ModelRef> = if node.swarm().is_some() {
        node.peer_models().await
    } else {
        Vec::new()
    };
    let models_dir = node.models_dir();
    let collections = node.collections_dir();
    let submitter = crate::node::handle::submitter_of(&access);
    type Refusal = Result<Vec<myco_jobs::batch::LineError>, SubmitError>;
    let joined = |e: tokio::task::JoinError| -> Refusal {
        Err(QueueError::Internal(format!("planning failed: {e}")).into())
    };
    let task = tokio::task::spawn_blocking(move || {
        let refused = std::cell::OnceCell::new();
        let env = myco_jobs::spec::env::SpecEnv {
            base_dir: Path::new(""),
            models_dir: &models_dir,
            remote: &remote,
            access: &access,
            refused: &refused,
        };
        myco_jobs::kind::batch::from_bytes(id, &bytes, endpoint, window, &env)
    })
    .await
    .map_err(joined)?
    .map_err(Ok)?;
    // A line whose model no node can hold whole runs in stages, as the same request
    // would over the API (which cannot take a grammar, tools or log-probabilities yet).
    let task = split_lines(node, task).await.map_err(Ok)?;
    let job = tokio::task::spawn_blocking(move || -> Result<NewJob, Refusal> {
        let spec = JobSpec {
            priority: 0,
            max_attempts: 3,
            timeout: std::time::Duration::from_secs(600),
            idempotency_key: None,
            task,
        };
        let plan = spec
            .plan_in(&collections)
            .map_err(|error| Err(SubmitError::Spec { index: 0, error }))?;
        Ok(NewJob::from_spec(&spec, plan))
    })
    .await
    .map_err(joined)??;
    let submitted = node
        .queue()
        .submit_as(vec![job], submitter)
        .await
        .map_err(|e| Err(e.into()))?;
    submitted
        .first()
        .copied()
        .ok_or_else(|| Err(QueueError::Internal("the queue accepted no job".into()).into()))
}

/// A batch's LLM lines as pipeline jobs where their model must be split (see
/// [`split`]); Err: the lines that ask what stages cannot do.
async fn split_lines(
    node: &NodeHandle,
    mut task: myco_jobs::Task,
) -> Result<myco_jobs::Task, Vec<myco_jobs::batch::LineError>> {
    let myco_jobs::Task::Batch(b) = &mut task else {
        return Ok(task);
    };
    let mut staged_models: std::collections::HashMap<(PathBuf, u32), bool> = Default::default();
    let mut errors = Vec::new();
    for (i, line) in b.lines.iter_mut().enumerate() {
        let Some(request) = line.request.as_deref_mut() else {
            continue;
        };
        let myco_jobs::Task::Infer(t) = request else {
            continue;
        };
        let key = (t.model.path.clone(), t.params.n_ctx);
        let staged = match staged_models.get(&key) {
            Some(s) => *s,
            None => {
                let s = split(node, t).await;
                staged_models.insert(key, s);
                s
            }
        };
        if !staged {
            continue;
        }
        if t.params.grammar.is_some() || t.prompt.extras().is_some() {
            errors.push(myco_jobs::batch::LineError {
                line: i + 1,
                code: "invalid_request",
                param: Some("body.response_format".into()),
                message: format!(
                    "{} is too big for any one node and runs as layer-range stages, which do not take a grammar (JSON mode, a JSON schema, tools) or report log-probabilities yet",
                    t.model.name
                ),
            });
            continue;
        }
        *request = myco_jobs::Task::Pipeline(t.clone());
    }
    if errors.is_empty() {
        Ok(task)
    } else {
        Err(errors)
    }
}

/// Whether `task`'s model must be split: the plan over the nodes that hold it (read from
/// this node's copy of the file) has more than one stage. Without a copy here, or without a
/// plan at all, it is an infer job as before (which waits for a node that holds the model).
#[cfg(feature = "pipeline")]
pub(crate) async fn split(node: &NodeHandle, task: &InferTask) -> bool {
    let path = &task.model.path;
    if !path.is_absolute() || !path.is_file() {
        return false;
    }
    match crate::pipeline::runner::plan_for(node.pipeline(), path, task.params.n_ctx).await {
        Ok((_, _, _, Ok(stages))) => stages.len() > 1,
        _ => false,
    }
}

#[cfg(not(feature = "pipeline"))]
pub(crate) async fn split(_: &NodeHandle, _: &InferTask) -> bool {
    false
}

/// What following a job yields.
#[derive(Debug)]
pub enum Followed {
    /// Streamed output, in order.
    Piece(StreamPiece),
    /// The job's status, when asked for ([`Follow::progress`]): once at the start and
    /// whenever it changed.
    Progress(Box<JobView>),
    /// The job finished (done, dead or cancelled); nothing follows.
    End(Box<JobRecord>),
}

/// How to follow a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Follow {
    /// A receiver dropped before the end (a client that went away) cancels the job, which
    /// frees the executor running it.
    pub cancel_on_drop: bool,
    /// Also send the job's status as it changes ([`Followed::Progress`]).
    pub progress: bool,
}

/// Follow job `id`: its streamed pieces (and with [`Follow::progress`] its status as it
/// changes), then its final record. Runs until the job ends or the receiver is dropped. The
/// job's record is read when the queue commits finished jobs (and at the latest every
/// second, a safety net), not once per piece: no client polls.
pub async fn follow(node: NodeHandle, id: JobId, tx: mpsc::Sender<Followed>, how: Follow) {
    let cancel_on_drop = how.cancel_on_drop;
    let mut shown = String::new();
    let mut sub = Subscription::new(node.streams(), id);
    let queue = node.queue().clone();
    let mut finished = Box::pin(queue.finished());
    finished.as_mut().enable();
    let mut check = true;
    loop {
        if check {
            check = false;
            match node.get(id).await {
                Ok(Some(rec)) if rec.state.is_terminal() => {
                    // Pieces published before the end are all here by now.
                    while let Some(p) = sub.try_next() {
                        if tx.send(Followed::Piece(p)).await.is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(Followed::End(Box::new(rec))).await;
                    return;
                }
                Ok(Some(rec)) if how.progress => {
                    let view = rec.view();
                    let now = serde_json::to_string(&view).unwrap_or_default();
                    if now != shown {
                        shown = now;
                        if tx.send(Followed::Progress(Box::new(view))).await.is_err() {
                            if cancel_on_drop {
                                let _ = node.cancel(id).await;
                            }
                            return;
                        }
                    }
                }
                Ok(Some(_)) => {}
                _ => return,
            }
        }
        tokio::select! {
            piece = sub.next() => {
                let Some(p) = piece else {
                    // The stream was dropped: keep waiting for the end on the record.
                    sub = Subscription::new(node.streams(), id);
                    check = true;
                    continue;
                };
                if tx.send(Followed::Piece(p)).await.is_err() {
                    if cancel_on_drop {
                        let _ = node.cancel(id).await;
                    }
                    return;
                }
            }
            () = &mut finished => {
                // Arm the next wake-up before reading, so no commit in between is missed.
                finished = Box::pin(queue.finished());
                finished.as_mut().enable();
                check = true;
            }
            () = tx.closed() => {
                if cancel_on_drop {
                    tracing::info!(%id, "the client went away: cancelling its request");
                    let _ = node.cancel(id).await;
                }
                return;
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => check = true,
        }
    }
}

/// Follow job `id` in a background task; the receiver gets its pieces and end.
pub fn spawn_follow(node: &NodeHandle, id: JobId, how: Follow) -> mpsc::Receiver<Followed> {
    let (tx, rx) = mpsc::channel(256);
    node.spawn_edge(follow(node.clone(), id, tx, how));
    rx
}

/// Keeps the text a client has been sent: pieces of one run only (a job run again streams
/// again from its start), and at the end whatever of the final text it has not seen.
#[derive(Debug, Default)]
pub struct Relay {
    run: Option<u64>,
    sent: String,
}

impl Relay {
    /// The text of `piece` to send on, if any.
    pub fn piece(&mut self, piece: &StreamPiece) -> Option<String> {
        if *self.run.get_or_insert(piece.run) != piece.run || piece.text.is_empty() {
            return None;
        }
        self.sent.push_str(&piece.text);
        Some(piece.text.clone())
    }

    /// The part of the final `text` not yet sent (all of it was, normally).
    pub fn rest(&mut self, text: &str) -> Option<String> {
        let rest = text.strip_prefix(self.sent.as_str())?;
        if rest.is_empty() {
            return None;
        }
        self.sent.push_str(rest);
        Some(rest.to_owned())
    }
}
