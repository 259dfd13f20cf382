//! What the queue stores and the executors run: the [`Task`] enum, its [`JobKind`] label, the
//! classified [`JobError`], and the sync [`Executor`] that runs a task on the caller's thread.
//!
//! Executors are synchronous and own their model state; the actor layer puts each one on a
//! thread of its own. Nothing here knows about queues, leases or actors.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::chunk::{self, ChunkError, ChunkParams};

/// A unit of work, as stored in the queue. Parents (`Chunk` over a directory) fan out into
/// children at submit time and never run themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Embed texts with the model in `model` (a directory).
    Embed {
        model: PathBuf,
        texts: Vec<String>,
        batch_tokens: usize,
    },
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
}

impl JobKind {
    pub const ALL: [JobKind; 3] = [JobKind::Chunk, JobKind::Noop, JobKind::Embed];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Chunk => "chunk",
            JobKind::Noop => "noop",
            JobKind::Embed => "embed",
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
            other => Some(other.clone()),
        }
    }

    pub fn kind(&self) -> JobKind {
        match self {
            Task::Chunk { .. } | Task::ChunkFile { .. } | Task::ChunkInline { .. } => {
                JobKind::Chunk
            }
            Task::Noop(_) => JobKind::Noop,
            Task::Embed { .. } => JobKind::Embed,
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
            Task::Embed { model, texts, .. } => format!(
                "embed {} texts with {}",
                texts.len(),
                model.file_name().unwrap_or_default().to_string_lossy()
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

/// What an executor sees of the attempt it runs.
pub struct RunContext<'a> {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Polled between units of work; true once the job is cancelled or timed out.
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
}

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

    #[cfg(feature = "embed")]
    fn embed(
        &mut self,
        model: &std::path::Path,
        texts: &[String],
        batch_tokens: usize,
        ctx: &RunContext<'_>,
    ) -> Result<Vec<u8>, JobError> {
        use std::collections::hash_map::Entry;
        let m = match self.models.entry(model.to_path_buf()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(
                crate::embed::EmbedModel::load(model, &self.home)
                    .map_err(|e| JobError::fatal(e.to_string()))?,
            ),
        };
        let mut out = Vec::new();
        let mut start = 0;
        while start < texts.len() {
            if (ctx.cancelled)() {
                return Err(JobError::retryable("cancelled"));
            }
            // A batch holds texts up to the token budget (estimated at 4 bytes a token).
            let mut end = start;
            let mut tokens = 0;
            while end < texts.len()
                && (end == start || tokens + texts[end].len() / 4 + 2 <= batch_tokens)
            {
                tokens += texts[end].len() / 4 + 2;
                end += 1;
            }
            let vectors = m
                .embed(&texts[start..end], end - start)
                .map_err(|e| JobError::fatal(e.to_string()))?;
            for (i, v) in vectors.iter().enumerate() {
                serde_json::to_writer(
                    &mut out,
                    &serde_json::json!({ "index": start + i, "vector": v }),
                )
                .map_err(|e| JobError::fatal(format!("encoding a vector: {e}")))?;
                out.push(b'\n');
            }
            start = end;
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
            #[cfg(feature = "embed")]
            Task::Embed {
                model,
                texts,
                batch_tokens,
            } => self.embed(model, texts, *batch_tokens, ctx),
            #[cfg(not(feature = "embed"))]
            Task::Embed { .. } => Err(JobError::fatal(
                "this myco was built without the `embed` feature; rebuild with it",
            )),
        }
    }
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
