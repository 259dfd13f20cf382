//! The executors: the sync [`Executor`] trait that runs a task on the caller's thread, and
//! [`CpuExecutor`] for the built-in kinds (chunk, noop, embed, archive, infer).
//!
//! Executors are synchronous and own their model state; the actor layer puts each one on a
//! thread of its own. Nothing here knows about queues, leases, actors or job files.

use std::path::PathBuf;
use std::time::Duration;

use crate::archive;
use crate::chunk;
use crate::error::JobError;
use crate::infer::{InferTask, Models};
use crate::model::ModelRef;
use crate::run::RunContext;
use crate::task::{ChunkLink, FailMode, NoopTask, Task};

/// Runs tasks synchronously. Output is JSON Lines: one JSON object per line, so results of
/// children concatenate into their parent's result.
pub trait Executor: Send {
    fn run(&mut self, task: &Task, ctx: &RunContext<'_>) -> Result<Vec<u8>, JobError>;
}

/// The executor for the built-in job kinds (chunk, noop, embed, archive, infer). Embedding
/// models are loaded on first use and kept by the executor: one instance lives on one
/// worker thread. LLMs are kept in the node's [`Models`] cache, which the node's executors
/// share.
#[derive(Debug)]
pub struct CpuExecutor {
    /// The node's home: where ONNX Runtime is found (`lib/`).
    home: PathBuf,
    #[cfg(feature = "embed")]
    models: std::collections::HashMap<PathBuf, crate::embed::EmbedModel>,
    /// The node's loaded LLMs.
    #[cfg_attr(not(feature = "infer"), allow(dead_code))]
    llms: Models,
}

impl CpuExecutor {
    /// An executor with a cache of LLMs of its own (see [`CpuExecutor::with_models`]).
    pub fn new(home: &std::path::Path) -> CpuExecutor {
        CpuExecutor::with_models(home, Models::new())
    }

    /// An executor sharing `llms`, the node's cache of loaded LLMs: give every executor of a
    /// node a clone of one cache, and each model is loaded once per node.
    pub fn with_models(home: &std::path::Path, llms: Models) -> CpuExecutor {
        CpuExecutor {
            home: home.to_path_buf(),
            #[cfg(feature = "embed")]
            models: std::collections::HashMap::new(),
            llms,
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
            Task::Infer(t) => infer(t, &self.home, &self.llms, ctx),
            // The worker hands these to the node's stage chain, which needs the swarm.
            Task::Pipeline(_) => Err(JobError::fatal(
                "a pipeline job runs on a node's stage chain, not on an executor",
            )),
        }
    }
}

/// Run an infer job on the node's shared copy of its model.
#[cfg(feature = "infer")]
fn infer(
    t: &InferTask,
    home: &std::path::Path,
    llms: &Models,
    ctx: &RunContext<'_>,
) -> Result<Vec<u8>, JobError> {
    let path = t.model.resolve(home);
    let model = llms.get(&path).map_err(JobError::from)?;
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
fn infer(
    _: &InferTask,
    _: &std::path::Path,
    _: &Models,
    _: &RunContext<'_>,
) -> Result<Vec<u8>, JobError> {
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
