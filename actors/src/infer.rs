//! LLM requests at a node: find a model in the swarm, submit an infer job, and follow it,
//! streaming its tokens.
//!
//! A request is an ordinary job in this node's durable queue. If this node holds the model,
//! its executive runs it; if only a peer does, the job waits here until that peer steals it
//! (the job names the model by file name and size, and nodes only lease or steal jobs whose
//! model they hold). Tokens come back through this node's [`Streams`](crate::streams).

use std::time::Duration;

use myco_jobs::Task;
use myco_jobs::archive::ModelRef;
use myco_jobs::infer::{Generation, InferTask};
use myco_runtime::cluster::wire::StreamPiece;
use myco_runtime::models::ModelFormat;
use myco_runtime::queue::{JobId, JobRecord, NewJob, QueueError};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::node::NodeHandle;
use crate::query::INTERACTIVE_PRIORITY;
use crate::streams::Subscription;

/// A GGUF model some node of the swarm holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwarmModel {
    /// The name requests use: the file name without `.gguf`.
    pub id: String,
    pub file: String,
    pub bytes: u64,
    pub architecture: Option<String>,
    /// The nodes that hold it.
    pub nodes: Vec<String>,
}

/// The GGUF models of the swarm (this node's included), by name: as Membership last scanned
/// and heard them; a node outside a swarm scans its own directory.
pub async fn swarm_models(node: &NodeHandle) -> Vec<SwarmModel> {
    let mut files: Vec<(String, myco_runtime::models::ModelFile)> = Vec::new();
    for member in node.members().await {
        let models = match member.info {
            Some(info) if member.status == "self" || member.status == "up" => info.models,
            None if member.status == "self" => {
                let dir = node.models_dir.clone();
                tokio::task::spawn_blocking(move || myco_runtime::models::scan(&dir))
                    .await
                    .unwrap_or_default()
            }
            _ => continue,
        };
        files.extend(models.into_iter().map(|m| (member.name.clone(), m)));
    }
    let mut out: Vec<SwarmModel> = Vec::new();
    for (holder, m) in files {
        if m.format != ModelFormat::Gguf {
            continue;
        }
        let file = m
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| m.name.clone());
        match out
            .iter_mut()
            .find(|s| s.file == file && s.bytes == m.size_bytes)
        {
            Some(s) if !s.nodes.contains(&holder) => s.nodes.push(holder),
            Some(_) => {}
            None => out.push(SwarmModel {
                id: m.name.clone(),
                file,
                bytes: m.size_bytes,
                architecture: m.architecture.clone(),
                nodes: vec![holder],
            }),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Why a model cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelLookupError {
    #[error(
        "no node of the swarm holds a model `{0}`: put the GGUF file in ~/.myco/models on a node (GET /v1/models lists the models the swarm holds)"
    )]
    NotFound(String),
}

/// The GGUF model `name` (a path, a file name, or a name without `.gguf`): this node's
/// copy, else a peer's.
pub async fn find_model(node: &NodeHandle, name: &str) -> Result<ModelRef, ModelLookupError> {
    if name.contains('/') {
        let path = std::path::PathBuf::from(name);
        return if path.is_file() {
            Ok(ModelRef::at(&std::path::absolute(&path).unwrap_or(path)))
        } else {
            Err(ModelLookupError::NotFound(name.to_owned()))
        };
    }
    let bare = name.strip_suffix(".gguf").unwrap_or(name);
    for candidate in [name.to_owned(), format!("{bare}.gguf")] {
        let path = node.models_dir.join(&candidate);
        if path.is_file() {
            return Ok(ModelRef::at(&path));
        }
    }
    swarm_models(node)
        .await
        .into_iter()
        .find(|m| m.id == bare || m.file == name)
        .map(|m| ModelRef {
            name: m.file.clone(),
            // The holder's path; each node loads its own copy of the same name and size.
            path: std::path::PathBuf::from(&m.file),
            bytes: m.bytes,
        })
        .ok_or_else(|| ModelLookupError::NotFound(name.to_owned()))
}

/// The result of infer job `id`, done.
pub async fn generation(node: &NodeHandle, id: JobId) -> Result<Generation, String> {
    let q = node.queue.clone();
    let bytes = match tokio::task::spawn_blocking(move || q.result(id)).await {
        Ok(Ok(Some(b))) => b,
        Ok(Ok(None)) => return Err(format!("job {id} has no result")),
        Ok(Err(e)) => return Err(format!("the result of {id} is unreadable: {e}")),
        Err(e) => return Err(format!("the result of {id} is unreadable: {e}")),
    };
    serde_json::from_slice(&bytes).map_err(|e| format!("the result of {id} is unreadable: {e}"))
}

/// Submit an interactive infer job (ahead of batch work); returns its id.
pub async fn submit(node: &NodeHandle, task: InferTask) -> Result<JobId, QueueError> {
    let job = NewJob {
        task: Task::Infer(task),
        priority: INTERACTIVE_PRIORITY,
        // A second attempt covers a node lost mid-generation; a failure of the request
        // itself (a prompt too long, no chat template) is fatal and not retried.
        max_attempts: 2,
        timeout_ms: 600_000,
        idempotency_key: None,
        children: Vec::new(),
    };
    node.queue
        .submit(vec![job])
        .await?
        .first()
        .map(|s| s.id)
        .ok_or_else(|| QueueError::Invalid("the queue accepted no job".into()))
}

/// What following a job yields.
#[derive(Debug)]
pub enum Followed {
    /// Streamed output, in order.
    Piece(StreamPiece),
    /// The job finished (done, dead or cancelled); nothing follows.
    End(Box<JobRecord>),
}

/// Follow job `id`: its streamed pieces, then its final record. Runs until the job ends or
/// the receiver is dropped; with `cancel_on_drop`, a receiver dropped before the end (a
/// client that went away) cancels the job, which frees the executor running it. The job's
/// record is read when the queue finishes jobs (and every second), not once per piece.
pub async fn follow(node: NodeHandle, id: JobId, tx: mpsc::Sender<Followed>, cancel_on_drop: bool) {
    let mut sub = Subscription::new(&node.streams, id);
    let queue = node.queue.clone();
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
                Ok(Some(_)) => {}
                _ => return,
            }
        }
        tokio::select! {
            piece = sub.next() => {
                let Some(p) = piece else {
                    // The stream was dropped: keep waiting for the end on the record.
                    sub = Subscription::new(&node.streams, id);
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
pub fn spawn_follow(
    node: &NodeHandle,
    id: JobId,
    cancel_on_drop: bool,
) -> mpsc::Receiver<Followed> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(follow(node.clone(), id, tx, cancel_on_drop));
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

/// Whether any of the named nodes (this one included) has a GPU.
pub async fn any_gpu(node: &NodeHandle, names: &[String]) -> bool {
    if node.gpu && names.contains(&node.name) {
        return true;
    }
    node.members().await.into_iter().any(|m| {
        m.status == "up"
            && names.contains(&m.name)
            && m.info.is_some_and(|i| !i.caps.gpus.is_empty())
    })
}
