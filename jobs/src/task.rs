//! What the queue stores: the [`Task`] enum (serialized into the redb queue with
//! bincode + serde: its variants and their fields keep their order; a new kind's variants go
//! at the end) and the small payload types it holds, with the per-variant facts that need no
//! kind (what a task carries, describes and outputs).
//!
//! A task's kind and traits ([`Task::kind`], [`Task::streams`], ...) are answered by
//! [`crate::kind`], which sits above this file; the executors are in [`crate::executor`].
//! Nothing here knows about queues, leases, actors, specs or executors.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::archive::{self, ArchiveTask, DocsOptions, DocsTask};
use crate::chunk::ChunkParams;
use crate::llm::infer::InferTask;
use crate::model::ModelRef;

/// Moved to [`crate::error`] and [`crate::run`]; kept here for old paths.
pub use crate::error::{ErrorClass, JobError};
pub use crate::run::{ChildResults, RunContext, Stream};

/// A unit of work, as stored in the queue. Parents (`Chunk` over a directory) fan out into
/// children at submit time and never run themselves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Task {
    /// Chunk every file under `input` (a parent: one `ChunkFile` child per file).
    Chunk { input: PathBuf, params: ChunkParams },
    /// Chunk one file.
    ChunkFile { path: PathBuf, params: ChunkParams },
    /// Chunk one file whose bytes travel with the task: what a `ChunkFile` becomes when it
    /// is lent to another node, which may not have the file.
    ChunkInline {
        path: PathBuf,
        bytes: Vec<u8>,
        params: ChunkParams,
    },
    /// Return the payload; for smoke tests, benchmarks and failure drills.
    Noop(NoopTask),
    /// Embed texts with `model`. When the texts are chunks (the result of a chunk job),
    /// `links` says where each came from, and each vector's line carries it.
    Embed {
        model: ModelRef,
        texts: Vec<String>,
        batch_tokens: usize,
        links: Vec<ChunkLink>,
    },
    /// Chunk and embed a group of documents: a child of an archive job.
    EmbedDocs(DocsTask),
    /// Build a collection from a directory tree: a parent whose children are `EmbedDocs`,
    /// and which runs itself, on its owner, once they have finished (it writes the
    /// collection from their results).
    Archive(ArchiveTask),
    /// Generate text with an LLM (a GGUF file, whole on one node).
    Infer(InferTask),
    /// Generate text with an LLM split into layer-range stages across nodes (or whole, on
    /// the stage engine, when one node can hold it). The node's stage chain runs it.
    Pipeline(InferTask),
    /// [`Task::EmbedDocs`] with options: the archive's boilerplate lines to blank out of
    /// each document before chunking, and for a big document the part this child covers
    /// (see [`DocsOptions`]). A variant of its own, appended last, so that queued
    /// `EmbedDocs` records still decode and a child without options keeps its old shape.
    EmbedDocsWith(DocsTask, DocsOptions),
    /// Many LLM or embedding requests (a batch): a parent with a child per request (an
    /// `Infer` or `Embed` task), which runs itself, on its owner, once they have finished
    /// (it writes the output and error files). Appended in job format 3.
    Batch(BatchTask),
}

/// Where an embedded text came from: a chunk of a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLink {
    pub source: String,
    pub index: u32,
    pub start: usize,
    pub end: usize,
}

/// The diagnostic no-op job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoopTask {
    pub payload: String,
    pub sleep_ms: u64,
    /// Fail this many attempts before succeeding.
    pub fail_attempts: u32,
    pub fail_mode: FailMode,
}

/// How a failing no-op fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    #[default]
    Retryable,
    Fatal,
    Panic,
}

impl Task {
    /// A parent: a task that fans out into children at submit time (a chunk job over a
    /// directory, an archive).
    pub fn is_parent(&self) -> bool {
        matches!(self, Task::Chunk { .. } | Task::Archive(_) | Task::Batch(_))
    }

    /// The documents (files, directories, glob patterns) running this task reads from the
    /// submitting node's disk and returns as text, chunks or vectors: what an API's access
    /// rule is checked against. Model files are not among them: they are loaded, never
    /// returned (and a file that is no model is refused as one).
    pub fn inputs(&self) -> Vec<&Path> {
        match self {
            Task::Chunk { input, .. } => vec![input.as_path()],
            Task::ChunkFile { path, .. } => vec![path.as_path()],
            Task::EmbedDocs(d) | Task::EmbedDocsWith(d, _) => {
                d.docs.iter().map(|doc| doc.path.as_path()).collect()
            }
            Task::Archive(a) => vec![a.input.as_path()],
            Task::ChunkInline { .. }
            | Task::Noop(_)
            | Task::Embed { .. }
            | Task::Infer(_)
            | Task::Pipeline(_)
            | Task::Batch(_) => Vec::new(),
        }
    }

    /// The job asked for a GPU (`gpu = true`).
    pub fn asks_gpu(&self) -> bool {
        matches!(self, Task::Infer(t) | Task::Pipeline(t) if t.gpu)
    }

    /// The task as it should travel to another node: a file it names is read here and
    /// carried inline, up to `max_bytes`; `None` if the files are larger, or cannot be read
    /// here (run it here: the other node must never read a file of its own by that name).
    pub fn portable(&self, max_bytes: u64) -> Option<Task> {
        match self {
            Task::ChunkFile { path, params } => {
                // A file that cannot be read here does not travel by its name (the other
                // node could have a file of that name): it runs here, and fails here.
                let meta = std::fs::metadata(path).ok()?;
                if meta.len() > max_bytes {
                    return None;
                }
                crate::chunk::read_document(path)
                    .ok()
                    .map(|bytes| Task::ChunkInline {
                        path: path.clone(),
                        bytes,
                        params: *params,
                    })
            }
            Task::EmbedDocs(t) | Task::EmbedDocsWith(t, _) => {
                let mut t = t.clone();
                let mut total = 0u64;
                for doc in &mut t.docs {
                    if doc.bytes.is_some() {
                        continue;
                    }
                    // As above: a document that cannot be read here keeps the task here.
                    let bytes = crate::chunk::read_document(&doc.path).ok()?;
                    total += bytes.len() as u64;
                    if total > max_bytes {
                        return None;
                    }
                    doc.bytes = Some(bytes);
                }
                Some(match self {
                    Task::EmbedDocsWith(_, options) => Task::EmbedDocsWith(t, options.clone()),
                    _ => Task::EmbedDocs(t),
                })
            }
            other => Some(other.clone()),
        }
    }

    /// The bytes of documents this task carries with it.
    pub fn inline_bytes(&self) -> u64 {
        match self {
            Task::ChunkInline { bytes, .. } => bytes.len() as u64,
            Task::EmbedDocs(t) | Task::EmbedDocsWith(t, _) => t
                .docs
                .iter()
                .map(|d| d.bytes.as_ref().map_or(0, |b| b.len() as u64))
                .sum(),
            _ => 0,
        }
    }

    /// The model a node must hold to run this task.
    pub fn model(&self) -> Option<&ModelRef> {
        match self {
            Task::Embed { model, .. } => Some(model),
            Task::EmbedDocs(t) | Task::EmbedDocsWith(t, _) => Some(&t.model),
            Task::Archive(t) => Some(&t.model),
            Task::Infer(t) | Task::Pipeline(t) => Some(&t.model),
            _ => None,
        }
    }

    /// Input items (documents) the task covers, for progress.
    pub fn items(&self) -> u32 {
        match self {
            // A big document shared among children counts once, with its last part.
            Task::EmbedDocsWith(_, DocsOptions { part: Some(p), .. }) => {
                u32::from(p.index + 1 == p.of)
            }
            Task::EmbedDocs(t) | Task::EmbedDocsWith(t, _) => {
                u32::try_from(t.docs.len()).unwrap_or(u32::MAX)
            }
            _ => 1,
        }
    }

    /// Output units (chunks) in a result of this task, for progress.
    pub fn outputs(&self, result: &[u8]) -> u64 {
        match self {
            Task::EmbedDocs(t) | Task::EmbedDocsWith(t, _) => archive::count_chunks(t, result),
            Task::ChunkFile { .. } | Task::ChunkInline { .. } => {
                result.iter().filter(|b| **b == b'\n').count() as u64
            }
            _ => 0,
        }
    }

    /// A short human description, e.g. the file a child chunks.
    pub fn describe(&self) -> String {
        match self {
            Task::Chunk { input, .. } => format!("chunk {}", input.display()),
            Task::ChunkFile { path, .. } | Task::ChunkInline { path, .. } => {
                format!("chunk {}", path.display())
            }
            Task::Noop(_) => "noop".to_owned(),
            Task::Embed { model, texts, .. } => {
                format!("embed {} texts with {}", texts.len(), model.name)
            }
            Task::EmbedDocsWith(t, DocsOptions { part: Some(p), .. }) if t.docs.len() == 1 => {
                format!("embed {} (part {} of {})", t.docs[0].rel, p.index + 1, p.of)
            }
            Task::EmbedDocs(t) | Task::EmbedDocsWith(t, _) => match &t.docs[..] {
                [one] => format!("embed {}", one.rel),
                [first, ..] => format!("embed {} and {} more", first.rel, t.docs.len() - 1),
                [] => "embed nothing".to_owned(),
            },
            Task::Archive(t) => format!(
                "archive {} into collection {}",
                t.input.display(),
                t.collection
            ),
            Task::Infer(t) => format!("infer {} tokens with {}", t.params.max_tokens, t.model.name),
            Task::Pipeline(t) => format!(
                "infer {} tokens with {} in stages",
                t.params.max_tokens, t.model.name
            ),
            Task::Batch(b) => format!(
                "batch {} of {} requests to {}",
                b.id,
                b.lines.len(),
                b.endpoint.url()
            ),
        }
    }
}

/// What a batch's requests call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [Endpoint::Chat, Endpoint::Completions, Endpoint::Embeddings];

    pub fn url(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }

    pub fn parse(url: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.url() == url)
    }

    /// The endpoints, as a list for messages.
    pub fn names() -> String {
        Endpoint::ALL
            .iter()
            .map(|e| format!("`{}`", e.url()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A batch as the queue stores its parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchTask {
    /// `batch_` and the id its creator gave it: its output files are named after it.
    pub id: String,
    pub endpoint: Endpoint,
    pub lines: Vec<BatchLine>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds: the end of its completion window. Lines not finished by then are not
    /// run; the output holds those that were.
    pub expires_at: u64,
}

/// One request of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchLine {
    pub custom_id: String,
    /// The model as the request names it (the answer's `model`).
    pub model: String,
    pub shape: LineShape,
    /// The request's task until the batch is planned (then its child holds it: a stored
    /// parent has `None` here).
    pub request: Option<Box<Task>>,
}

/// What a line's answer carries besides its text or vectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineShape {
    pub tools: bool,
    pub logprobs: bool,
    /// Embeddings: as base64 (else floats).
    pub base64: bool,
    /// Embeddings: the dimensions asked for.
    pub dimensions: Option<u32>,
    /// Embeddings: the texts' tokens, estimated (the answer's `usage`).
    pub tokens: u32,
}
