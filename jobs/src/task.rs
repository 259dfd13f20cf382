//! What the queue stores and the executors run: the [`Task`] enum, its [`JobKind`] label, the
//! classified [`JobError`], and the sync [`Executor`] that runs a task on the caller's thread.
//!
//! Executors are synchronous and own their model state; the actor layer puts each one on a
//! thread of its own. Nothing here knows about queues, leases or actors.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::archive::{self, ArchiveTask, DocsTask, ModelRef};
use crate::chunk::{self, ChunkError, ChunkParams};
use crate::infer::InferTask;

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

/// The job-kind label used for listing, metrics and capability matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Chunk,
    Noop,
    Embed,
    Archive,
    Infer,
    Pipeline,
}

impl JobKind {
    pub const ALL: [JobKind; 6] = [
        JobKind::Chunk,
        JobKind::Noop,
        JobKind::Embed,
        JobKind::Archive,
        JobKind::Infer,
        JobKind::Pipeline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Chunk => "chunk",
            JobKind::Noop => "noop",
            JobKind::Embed => "embed",
            JobKind::Archive => "archive",
            JobKind::Infer => "infer",
            JobKind::Pipeline => "pipeline",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Task {
    /// The task as it should travel to another node: a file it names is read here and
    /// carried inline, up to `max_bytes`; `None` if the file is larger (run it here). An
    /// unreadable file travels by name, to fail there as it would here.
    pub fn portable(&self, max_bytes: u64) -> Option<Task> {
        match self {
            Task::ChunkFile { path, params } => {
                let Ok(meta) = std::fs::metadata(path) else {
                    return Some(self.clone());
                };
                if meta.len() > max_bytes {
                    return None;
                }
                match std::fs::read(path) {
                    Ok(bytes) => Some(Task::ChunkInline {
                        path: path.clone(),
                        bytes,
                        params: *params,
                    }),
                    Err(_) => Some(self.clone()),
                }
            }
            Task::EmbedDocs(t) => {
                let mut t = t.clone();
                let mut total = 0u64;
                for doc in &mut t.docs {
                    if doc.bytes.is_some() {
                        continue;
                    }
                    let Ok(bytes) = std::fs::read(&doc.path) else {
                        continue;
                    };
                    total += bytes.len() as u64;
                    if total > max_bytes {
                        return None;
                    }
                    doc.bytes = Some(bytes);
                }
                Some(Task::EmbedDocs(t))
            }
            other => Some(other.clone()),
        }
    }

    /// The bytes of documents this task carries with it.
    pub fn inline_bytes(&self) -> u64 {
        match self {
            Task::ChunkInline { bytes, .. } => bytes.len() as u64,
            Task::EmbedDocs(t) => t
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
            Task::EmbedDocs(t) => Some(&t.model),
            Task::Archive(t) => Some(&t.model),
            Task::Infer(t) | Task::Pipeline(t) => Some(&t.model),
            _ => None,
        }
    }

    /// Only the owner may run it (it writes the owner's files, or reads its children).
    pub fn owner_only(&self) -> bool {
        matches!(self, Task::Archive(_) | Task::Chunk { .. })
    }

    /// Only a node with a GPU may run it.
    pub fn needs_gpu(&self) -> bool {
        matches!(self, Task::Infer(t) | Task::Pipeline(t) if t.gpu)
    }

    /// A task whose output streams to its clients as it runs (see [`RunContext::stream`]).
    pub fn streams(&self) -> bool {
        matches!(self, Task::Infer(_) | Task::Pipeline(_))
    }

    /// A parent that runs itself once its children have finished, with their results.
    pub fn joins(&self) -> bool {
        matches!(self, Task::Archive(_))
    }

    /// Input items (documents) the task covers, for progress.
    pub fn items(&self) -> u32 {
        match self {
            Task::EmbedDocs(t) => u32::try_from(t.docs.len()).unwrap_or(u32::MAX),
            _ => 1,
        }
    }

    /// Output units (chunks) in a result of this task, for progress.
    pub fn outputs(&self, result: &[u8]) -> u64 {
        match self {
            Task::EmbedDocs(t) => archive::count_chunks(t, result),
            Task::ChunkFile { .. } | Task::ChunkInline { .. } => {
                result.iter().filter(|b| **b == b'\n').count() as u64
            }
            _ => 0,
        }
    }

    pub fn kind(&self) -> JobKind {
        match self {
            Task::Chunk { .. } | Task::ChunkFile { .. } | Task::ChunkInline { .. } => {
                JobKind::Chunk
            }
            Task::Noop(_) => JobKind::Noop,
            Task::Embed { .. } | Task::EmbedDocs(_) => JobKind::Embed,
            Task::Archive(_) => JobKind::Archive,
            Task::Infer(_) => JobKind::Infer,
            Task::Pipeline(_) => JobKind::Pipeline,
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
            Task::EmbedDocs(t) => match &t.docs[..] {
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
        }
    }
}

/// Whether a failed attempt is worth repeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// Transient: the queue retries with backoff until `max_attempts`.
    Retryable,
    /// The input or spec is wrong: retrying cannot help, the job is dead at once.
    Fatal,
}

/// A failed attempt, classified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub class: ErrorClass,
    pub message: String,
}

impl JobError {
    pub fn retryable(message: impl Into<String>) -> Self {
        JobError {
            class: ErrorClass::Retryable,
            message: message.into(),
        }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        JobError {
            class: ErrorClass::Fatal,
            message: message.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class == ErrorClass::Retryable
    }
}

impl From<ChunkError> for JobError {
    fn from(e: ChunkError) -> Self {
        if e.is_retryable() {
            JobError::retryable(e.to_string())
        } else {
            JobError::fatal(e.to_string())
        }
    }
}

/// Visits the results of a joining parent's finished children, one result at a time.
pub type ChildResults<'a> =
    dyn Fn(&mut dyn FnMut(&[u8]) -> Result<(), JobError>) -> Result<(), JobError> + 'a;

/// What an executor sees of the attempt it runs.
pub struct RunContext<'a> {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Polled between units of work; true once the job is cancelled or timed out.
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
    /// For a parent that [`Task::joins`]: its children's results.
    pub children: Option<&'a ChildResults<'a>>,
    /// Where a streaming task (infer) sends its output as it goes: a token id (`None` for
    /// text released at the end) and the text it completes.
    pub stream: Option<&'a Stream<'a>>,
}

/// Receives a streaming task's pieces (see [`RunContext::stream`]).
pub type Stream<'a> = dyn Fn(Option<i32>, &str) + 'a;

impl std::fmt::Debug for RunContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Runs tasks synchronously. Output is JSON Lines: one JSON object per line, so results of
/// children concatenate into their parent's result.
pub trait Executor: Send {
    fn run(&mut self, task: &Task, ctx: &RunContext<'_>) -> Result<Vec<u8>, JobError>;
}

/// The executor for the built-in job kinds (chunk, noop, embed). Embedding models are
/// loaded on first use and kept: one instance lives on one worker thread.
#[derive(Debug)]
pub struct CpuExecutor {
    /// The node's home: where ONNX Runtime is found (`lib/`).
    home: PathBuf,
    #[cfg(feature = "embed")]
    models: std::collections::HashMap<PathBuf, crate::embed::EmbedModel>,
}

impl CpuExecutor {
    pub fn new(home: &std::path::Path) -> CpuExecutor {
        CpuExecutor {
            home: home.to_path_buf(),
            #[cfg(feature = "embed")]
            models: std::collections::HashMap::new(),
        }
    }

    /// The loaded model `m`, loading it on first use.
    #[cfg(feature = "embed")]
    fn model(&mut self, m: &ModelRef) -> Result<&mut crate::embed::EmbedModel, JobError> {
        use std::collections::hash_map::Entry;
        let dir = m.resolve(&self.home);
        Ok(match self.models.entry(dir) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let loaded = crate::embed::EmbedModel::load(v.key(), &self.home)
                    .map_err(|e| JobError::fatal(e.to_string()))?;
                v.insert(loaded)
            }
        })
    }

    #[cfg(feature = "embed")]
    fn embed_texts(
        &mut self,
        model: &ModelRef,
        texts: &[&str],
        batch_tokens: usize,
        ctx: &RunContext<'_>,
    ) -> Result<Vec<Vec<f32>>, JobError> {
        self.model(model)?
            .embed_budget(texts, batch_tokens, ctx.cancelled)
            .map_err(|e| match e {
                crate::embed::EmbedError::Cancelled => JobError::retryable("cancelled"),
                e => JobError::fatal(e.to_string()),
            })
    }

    #[cfg(not(feature = "embed"))]
    fn embed_texts(
        &mut self,
        _: &ModelRef,
        _: &[&str],
        _: usize,
        _: &RunContext<'_>,
    ) -> Result<Vec<Vec<f32>>, JobError> {
        Err(JobError::fatal(
            "this myco was built without the `embed` feature; rebuild with it",
        ))
    }

    fn embed(
        &mut self,
        model: &ModelRef,
        texts: &[String],
        batch_tokens: usize,
        links: &[ChunkLink],
        ctx: &RunContext<'_>,
    ) -> Result<Vec<u8>, JobError> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = self.embed_texts(model, &refs, batch_tokens, ctx)?;
        let mut out = Vec::with_capacity(vectors.len() * 4096);
        for (i, v) in vectors.iter().enumerate() {
            let line = match links.get(i) {
                None => serde_json::json!({ "index": i, "vector": v }),
                Some(l) => serde_json::json!({
                    "index": i,
                    "vector": v,
                    "source": l.source,
                    "chunk": l.index,
                    "start": l.start,
                    "end": l.end,
                    "text": texts[i],
                }),
            };
            serde_json::to_writer(&mut out, &line)
                .map_err(|e| JobError::fatal(format!("encoding a vector: {e}")))?;
            out.push(b'\n');
        }
        Ok(out)
    }
}

impl Executor for CpuExecutor {
    fn run(&mut self, task: &Task, ctx: &RunContext<'_>) -> Result<Vec<u8>, JobError> {
        match task {
            Task::Chunk { input, .. } => Err(JobError::fatal(format!(
                "chunk job over {} has no children to run: it is a parent and never runs itself",
                input.display()
            ))),
            Task::ChunkFile { .. } | Task::ChunkInline { .. } => {
                let chunks = match task {
                    Task::ChunkInline {
                        path,
                        bytes,
                        params,
                    } => chunk::chunk_bytes(path, bytes, params, ctx.cancelled)?,
                    Task::ChunkFile { path, params } => {
                        chunk::chunk_file(path, params, ctx.cancelled)?
                    }
                    _ => Vec::new(),
                };
                let mut out = Vec::with_capacity(chunks.iter().map(|c| c.text.len() + 96).sum());
                for c in &chunks {
                    serde_json::to_writer(&mut out, c)
                        .map_err(|e| JobError::fatal(format!("encoding chunk: {e}")))?;
                    out.push(b'\n');
                }
                Ok(out)
            }
            Task::Noop(n) => run_noop(n, ctx),
            Task::Embed {
                model,
                texts,
                batch_tokens,
                links,
            } => self.embed(model, texts, *batch_tokens, links, ctx),
            Task::EmbedDocs(t) => archive::run_docs(t, ctx.cancelled, &mut |texts| {
                self.embed_texts(&t.model, texts, t.batch_tokens, ctx)
            }),
            Task::Archive(t) => archive::join(t, &self.home, ctx.children),
            Task::Infer(t) => infer(t, &self.home, ctx),
            // The worker hands these to the node's stage chain, which needs the swarm.
            Task::Pipeline(_) => Err(JobError::fatal(
                "a pipeline job runs on a node's stage chain, not on an executor",
            )),
        }
    }
}

/// Run an infer job on the process's shared copy of its model.
#[cfg(feature = "infer")]
fn infer(t: &InferTask, home: &std::path::Path, ctx: &RunContext<'_>) -> Result<Vec<u8>, JobError> {
    use crate::infer::engine;
    let path = t.model.resolve(home);
    let model = engine::shared_model(&path).map_err(JobError::from)?;
    let generation = model
        .generate(&t.prompt, &t.params, ctx.cancelled, &mut |id, text| {
            if let Some(stream) = ctx.stream {
                stream(id, text);
            }
        })
        .map_err(JobError::from)?;
    let mut out = serde_json::to_vec(&generation)
        .map_err(|e| JobError::fatal(format!("encoding the result: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(not(feature = "infer"))]
fn infer(_: &InferTask, _: &std::path::Path, _: &RunContext<'_>) -> Result<Vec<u8>, JobError> {
    Err(JobError::fatal(
        "this myco was built without the `infer` feature (llama.cpp); rebuild with it",
    ))
}

fn run_noop(n: &NoopTask, ctx: &RunContext<'_>) -> Result<Vec<u8>, JobError> {
    if n.sleep_ms > 0 {
        let until = std::time::Instant::now() + Duration::from_millis(n.sleep_ms);
        while std::time::Instant::now() < until {
            if (ctx.cancelled)() {
                return Err(JobError::retryable("cancelled"));
            }
            std::thread::sleep(Duration::from_millis(5).min(until - std::time::Instant::now()));
        }
    }
    if ctx.attempt <= n.fail_attempts {
        let msg = format!("noop: planned failure on attempt {}", ctx.attempt);
        match n.fail_mode {
            FailMode::Retryable => return Err(JobError::retryable(msg)),
            FailMode::Fatal => return Err(JobError::fatal(msg)),
            #[allow(clippy::panic)]
            FailMode::Panic => panic!("{msg}"),
        }
    }
    let mut out = serde_json::to_vec(&serde_json::json!({ "payload": n.payload }))
        .map_err(|e| JobError::fatal(format!("encoding result: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

/// Which tasks a holder may take: its job kinds; with `models` set, only tasks whose model
/// it holds; and unless it is the owner, only tasks that need no owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fit {
    pub kinds: Vec<JobKind>,
    /// The holder's models as `(name, bytes)` (see [`ModelRef::id`]); `None`: any model.
    pub models: Option<Vec<(String, u64)>>,
    /// The job's own node (it may run owner-only tasks such as an archive's join).
    pub owner: bool,
    /// The holder has a GPU.
    pub gpu: bool,
}

impl Fit {
    /// What the owner's own workers take: anything of their kinds.
    pub fn local(kinds: &[JobKind]) -> Fit {
        Fit {
            kinds: kinds.to_vec(),
            models: None,
            owner: true,
            gpu: false,
        }
    }

    /// What a thief holding `models` takes.
    pub fn thief(kinds: &[JobKind], models: Vec<(String, u64)>) -> Fit {
        Fit {
            kinds: kinds.to_vec(),
            models: Some(models),
            owner: false,
            gpu: false,
        }
    }

    pub fn accepts(&self, task: &Task) -> bool {
        if !self.kinds.contains(&task.kind())
            || (!self.owner && task.owner_only())
            || (task.needs_gpu() && !self.gpu)
        {
            return false;
        }
        match (&self.models, task.model()) {
            // A pipeline job whose owner holds the model stays there: its runner only
            // coordinates (the stages spread the work), and its tokens stream where its
            // clients wait.
            (_, Some(m))
                if !self.owner && m.path.is_absolute() && task.kind() == JobKind::Pipeline =>
            {
                false
            }
            // The owner found a model given by path at submit (the path is absolute); one
            // named only by a peer's copy has a bare file name for its path.
            (Some(_), Some(m)) if self.owner && m.path.is_absolute() => true,
            (Some(models), Some(m)) => models.iter().any(|(n, b)| *n == m.name && *b == m.bytes),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::{InferParams, InferTask, Prompt};

    fn llm(path: &str, pipeline: bool) -> Task {
        let t = InferTask {
            model: ModelRef {
                name: "m.gguf".into(),
                path: path.into(),
                bytes: 10,
            },
            prompt: Prompt::Text("hi".into()),
            params: InferParams::default(),
            gpu: false,
        };
        if pipeline {
            Task::Pipeline(t)
        } else {
            Task::Infer(t)
        }
    }

    #[test]
    fn thieves_take_llm_jobs_of_models_they_hold_but_not_pipelines_the_owner_can_run() {
        let kinds = [JobKind::Infer, JobKind::Pipeline];
        let holder = Fit::thief(&kinds, vec![("m.gguf".into(), 10)]);
        let other = Fit::thief(&kinds, vec![("n.gguf".into(), 10)]);
        let owner = Fit {
            models: Some(Vec::new()),
            ..Fit::local(&kinds)
        };
        // Resolved at the owner (an absolute path): the owner holds the model.
        assert!(holder.accepts(&llm("/home/a/models/m.gguf", false)));
        assert!(!holder.accepts(&llm("/home/a/models/m.gguf", true)));
        assert!(owner.accepts(&llm("/home/a/models/m.gguf", true)));
        // Named after a peer's copy: whoever holds it runs it.
        assert!(holder.accepts(&llm("m.gguf", true)));
        assert!(!other.accepts(&llm("m.gguf", true)));
        assert!(!owner.accepts(&llm("m.gguf", true)));
    }
}
