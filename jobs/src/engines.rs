//! What an executor runs tasks with ([`Engines`]): the node's home, the embedding models
//! this executor has loaded (kept for its thread), and the node's shared cache of LLMs; and
//! the helpers the kinds' `run` share (embedding texts into JSON Lines).
//!
//! One instance lives on one executor thread. It must not know the kinds: they use it.

use std::path::{Path, PathBuf};

use crate::error::JobError;
use crate::llm::infer::Models;
use crate::model::ModelRef;
use crate::run::RunContext;
use crate::task::{ChunkLink, Task};

/// The model state an executor's tasks run on.
#[derive(Debug)]
pub struct Engines {
    /// The node's home: where ONNX Runtime is found (`lib/`).
    home: PathBuf,
    #[cfg(feature = "embed")]
    models: std::collections::HashMap<PathBuf, crate::embed::EmbedModel>,
    /// The node's loaded LLMs.
    #[cfg_attr(not(feature = "infer"), allow(dead_code))]
    llms: Models,
    /// ONNX Runtime threads of the embedding models it loads (0: every core).
    #[cfg_attr(not(feature = "embed"), allow(dead_code))]
    embed_threads: usize,
}

impl Engines {
    /// The engines of an executor: no embedding model loaded yet, and the node's `llms`.
    pub fn new(home: &Path, llms: Models) -> Engines {
        Engines {
            home: home.to_path_buf(),
            #[cfg(feature = "embed")]
            models: std::collections::HashMap::new(),
            llms,
            embed_threads: 0,
        }
    }

    /// Embedding models loaded from now on run on `n` ONNX Runtime threads (0: every core).
    pub fn set_embed_threads(&mut self, n: usize) {
        self.embed_threads = n;
    }

    /// The node's home: where models and ONNX Runtime are found.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The node's loaded LLMs.
    pub fn llms(&self) -> &Models {
        &self.llms
    }

    /// The loaded model `m`, loading it on first use.
    #[cfg(feature = "embed")]
    fn model(&mut self, m: &ModelRef) -> Result<&mut crate::embed::EmbedModel, JobError> {
        use std::collections::hash_map::Entry;
        let dir = m.resolve(&self.home);
        Ok(match self.models.entry(dir) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let loaded =
                    crate::embed::EmbedModel::load_with(v.key(), &self.home, self.embed_threads)
                        .map_err(|e| JobError::fatal(e.to_string()))?;
                v.insert(loaded)
            }
        })
    }

    /// The tokenizer chunks for `model` are sized with (the loaded model's own).
    #[cfg(feature = "embed")]
    pub fn chunk_tokenizer(
        &mut self,
        model: &ModelRef,
    ) -> Result<std::sync::Arc<dyn crate::chunk::Tokens>, JobError> {
        let tokens: std::sync::Arc<dyn crate::chunk::Tokens> = self.model(model)?.chunk_tokenizer();
        Ok(tokens)
    }

    #[cfg(not(feature = "embed"))]
    pub fn chunk_tokenizer(
        &mut self,
        _: &ModelRef,
    ) -> Result<std::sync::Arc<dyn crate::chunk::Tokens>, JobError> {
        Err(JobError::fatal(
            "this myco was built without the `embed` feature; rebuild with it",
        ))
    }

    #[cfg(feature = "embed")]
    pub fn embed_texts(
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
    pub fn embed_texts(
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

    pub fn embed(
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

/// A task handed to a kind that is not its own: a bug in the dispatch, never the user's.
pub fn misrouted(task: &Task, kind: &str) -> JobError {
    JobError::fatal(format!(
        "{} was handed to the {kind} kind's executor (a myco bug: please report it)",
        task.describe()
    ))
}
