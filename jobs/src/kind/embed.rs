//! The `embed` kind: turn texts (or a chunk job's result) into vectors with a
//! sentence-embedding model. Its `[embed]` section, validation, planning and traits. Archive
//! children (`EmbedDocs`) are of this kind too.
//!
//! Its `run` embeds through the executor's [`Engines`](crate::engines::Engines); it must
//! not load a model itself (that is [`crate::embed`]).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::traits::{ExecutorKind, Gpu, KindTraits, Lane};
use crate::access;
use crate::archive;
use crate::chunk;
use crate::engines::{Engines, misrouted};
use crate::error::JobError;
use crate::model;
use crate::run::RunContext;
use crate::spec::env::SpecEnv;
use crate::spec::plan::{Checked, Plan};
use crate::spec::problem::{Problems, SpecError};
use crate::task::{ChunkLink, Task};

pub const TRAITS: KindTraits = KindTraits {
    lane: Lane::Batch,
    streams: false,
    joins: false,
    joins_failed: false,
    owner_only: false,
    gpu: Gpu::Never,
    executor: ExecutorKind::Cpu,
};

/// The embedding model jobs use when they name none (`./setup.sh` installs it).
pub const DEFAULT_MODEL: &str = "all-MiniLM-L6-v2";
/// Padded tokens per embedding batch, unless the job says otherwise. Small on purpose: ONNX
/// Runtime's arena keeps the largest activations a session has run (per worker), and a batch
/// of 8192 tokens at 256 per text grew it by ~1 GB per worker; on the CPU a batch of 512
/// embeds as fast per token or faster (`benches/memory.rs`: 1,000 files 2,290 MiB / 43.7 s
/// at 8192, 502 MiB / 23.2 s at 512, 2 workers).
pub const DEFAULT_BATCH_TOKENS: usize = 512;

/// `[embed]`: turn texts into vectors with a sentence-embedding model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// A model name under `~/.myco/models`, or a path to a model directory.
    #[serde(default = "default_model")]
    pub model: String,
    /// The texts; or give `chunks` instead.
    #[serde(default)]
    pub texts: Vec<String>,
    /// A chunk job's result (JSON Lines, e.g. from `myco run chunk.toml --out chunks.jsonl`):
    /// each chunk is embedded, and its vector's line names the chunk.
    #[serde(default)]
    pub chunks: Option<PathBuf>,
    /// Estimated tokens per batch: short texts go many to a batch, long ones few.
    #[serde(default = "default_batch_tokens")]
    pub batch_tokens: usize,
}

pub(crate) fn default_model() -> String {
    DEFAULT_MODEL.to_owned()
}
pub(crate) fn default_batch_tokens() -> usize {
    DEFAULT_BATCH_TOKENS
}

pub fn check(section: Option<&Section>, env: &SpecEnv<'_>, p: &mut Problems) -> Option<Checked> {
    let Some(e) = section else {
        p.bad(
            "embed",
            "missing `[embed]` table",
            "add `[embed]` with `texts = [\"...\"]`",
        );
        return None;
    };
    let mut texts = e.texts.clone();
    let mut links = Vec::new();
    match &e.chunks {
        Some(_) if !texts.is_empty() => p.bad(
            "embed.chunks",
            "give `texts` or `chunks`, not both",
            "remove one of them",
        ),
        Some(path) => match env
            .readable("embed.chunks", path, p)
            .map(|path| read_chunks(&path))
        {
            None => {}
            Some(Ok(chunks)) => {
                for c in chunks {
                    links.push(ChunkLink {
                        source: c.source,
                        index: c.index,
                        start: c.start,
                        end: c.end,
                    });
                    texts.push(c.text);
                }
            }
            Some(Err(why)) => p.bad(
                "embed.chunks",
                why,
                "point `chunks` at a chunk job's result: `myco run chunk.toml --out chunks.jsonl`",
            ),
        },
        None => {}
    }
    if texts.is_empty() || texts.len() > 100_000 {
        p.bad(
            if e.chunks.is_some() {
                "embed.chunks"
            } else {
                "embed.texts"
            },
            format!("{} texts", texts.len()),
            "give 1 to 100000 texts per job; submit more jobs for more",
        );
    }
    if e.batch_tokens == 0 {
        p.bad(
            "embed.batch_tokens",
            "must be at least 1",
            "leave it out for the default (512)",
        );
    }
    // A path (not a name in the models folder) is a file the submitter names: gated
    // before anything looks at it, and again once resolved.
    if model::is_path(&e.model) {
        env.readable("embed.model", Path::new(&e.model), p)?;
    }
    let model = model::resolve_embedding(&e.model, env.base_dir, env.models_dir)
        .map_err(|why| p.bad("embed.model", why.to_string(), why.hint()))
        .ok()?;
    if !env.may_read("embed.model", &model.path, p) {
        return None;
    }
    Some(
        Task::Embed {
            model,
            texts,
            batch_tokens: e.batch_tokens,
            links,
        }
        .into(),
    )
}

/// The largest chunks file (a chunk job's result) an embed job reads.
pub const MAX_CHUNKS_BYTES: u64 = 64 << 20;

/// The chunks in a chunk job's result file (JSON Lines of `{source, index, start, end,
/// text}`): a regular file of at most [`MAX_CHUNKS_BYTES`]. Errors name the path as the job
/// gave it and where a line is wrong, never what the file holds.
fn read_chunks(path: &Path) -> Result<Vec<chunk::Chunk>, String> {
    let bytes = access::read_regular(path, MAX_CHUNKS_BYTES).map_err(|e| match e {
        access::ReadError::TooBig { .. } => format!(
            "{e}; split the chunks over several embed jobs, or embed the documents with an archive job"
        ),
        e => format!("cannot read it: {e}"),
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        format!(
            "{}: not UTF-8 text (byte {})",
            path.display(),
            e.valid_up_to()
        )
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                format!(
                    "{} line {} column {}: not a chunk (a JSON object of source, index, start, end and text)",
                    path.display(),
                    i + 1,
                    e.column()
                )
            })
        })
        .collect()
}

pub fn plan(task: &Task, _collections: &Path) -> Result<Plan, SpecError> {
    Ok(Plan::single(task.clone()))
}

/// Run an embed task: texts (or an archive's documents) into vectors, as JSON Lines.
pub fn run(task: &Task, engines: &mut Engines, ctx: &RunContext<'_>) -> Result<Vec<u8>, JobError> {
    match task {
        Task::Embed {
            model,
            texts,
            batch_tokens,
            links,
        } => engines.embed(model, texts, *batch_tokens, links, ctx),
        Task::EmbedDocs(t) | Task::EmbedDocsWith(t, _) => {
            let plain = archive::DocsOptions::default();
            let options = match task {
                Task::EmbedDocsWith(_, options) => options,
                _ => &plain,
            };
            let tokens = engines.chunk_tokenizer(&t.model)?;
            archive::run_docs(t, options, ctx.cancelled, &*tokens, &mut |texts| {
                engines.embed_texts(&t.model, texts, t.batch_tokens, ctx)
            })
        }
        other => Err(misrouted(other, "embed")),
    }
}
