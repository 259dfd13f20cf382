//! The `archive` kind: chunk and embed a directory tree into a named collection. Its
//! `[archive]` section, validation, planning (one `EmbedDocs` child per group of files the
//! collection does not already hold) and traits; the job is keyed by its collection.
//!
//! Its `run` hands the join to [`crate::archive`]; it must not chunk, embed or write a
//! collection itself.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::embed::{default_batch_tokens, default_model};
use super::traits::{ExecutorKind, Gpu, KindTraits, Lane};
use crate::archive::{self, ArchiveTask};
use crate::chunk::ChunkParams;
use crate::collection;
use crate::engines::{Engines, misrouted};
use crate::error::JobError;
use crate::model;
use crate::run::RunContext;
use crate::spec::env::{SpecEnv, is_glob};
use crate::spec::plan::{Checked, Plan};
use crate::spec::problem::{Problems, SpecError};
use crate::task::Task;

pub const TRAITS: KindTraits = KindTraits {
    lane: Lane::Batch,
    streams: false,
    // The parent writes the collection from its children's results...
    joins: true,
    joins_failed: false,
    // ...on its owner, whose collection it is.
    owner_only: true,
    gpu: Gpu::Never,
    executor: ExecutorKind::Cpu,
};

/// `[archive]`: chunk and embed a directory tree into a named collection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// A directory (recursive), a file or a glob, relative to this file.
    pub input: PathBuf,
    /// The collection's name: it is written to `~/.myco/collections/NAME`.
    pub collection: String,
    #[serde(default = "default_model")]
    pub model: String,
    /// Chunk size in the model's tokens, counted with its own tokenizer; by default the
    /// most the model reads (254 for all-MiniLM-L6-v2: 256 less its two special tokens).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Tokens a chunk shares with the one before it (at most half a chunk).
    #[serde(default = "default_overlap")]
    pub overlap: usize,
    #[serde(default = "default_batch_tokens")]
    pub batch_tokens: usize,
}

/// About an eighth of the default chunk.
fn default_overlap() -> usize {
    32
}

/// An archive is keyed by its collection unless the file says otherwise: submitting it
/// again while it runs resumes that run (see [`KindTraits::joins`]).
pub fn check(section: Option<&Section>, env: &SpecEnv<'_>, p: &mut Problems) -> Option<Checked> {
    let Some(a) = section else {
        p.bad(
            "archive",
            "missing `[archive]` table",
            "add `[archive]` with `input = \"docs/\"` and `collection = \"NAME\"`",
        );
        return None;
    };
    if let Some(max) = a.max_tokens {
        super::chunk::check_chunking(p, "archive", max, a.overlap);
    }
    if !collection::valid_name(&a.collection) {
        p.bad(
            "archive.collection",
            format!("`{}` is not a valid collection name", a.collection),
            "use letters, digits, `-`, `_` and `.` (not first), at most 128",
        );
    }
    if a.batch_tokens == 0 {
        p.bad(
            "archive.batch_tokens",
            "must be at least 1",
            "leave it out for the default (512)",
        );
    }
    let input = env.readable("archive.input", &a.input, p)?;
    if !input.exists() && !is_glob(&a.input) {
        p.bad(
            "archive.input",
            format!("`{}` does not exist", input.display()),
            "point `input` at the archive's directory (relative paths start at the job file's directory)",
        );
    }
    // A path (not a name in the models folder) is a file the submitter names: gated
    // before anything looks at it, and again once resolved.
    if model::is_path(&a.model) {
        env.readable("archive.model", Path::new(&a.model), p)?;
    }
    let model = model::resolve_embedding(&a.model, env.base_dir, env.models_dir)
        .map_err(|why| p.bad("archive.model", why.to_string(), why.hint()))
        .ok()?;
    if !env.may_read("archive.model", &model.path, p) {
        return None;
    }
    let most = model::embedding_max_length(&model.path);
    if let Some(max) = a.max_tokens
        && max > most
    {
        p.bad(
            "archive.max_tokens",
            format!(
                "{max} is more than {} reads ({most} tokens, special tokens included)",
                model.name
            ),
            "leave `max_tokens` out for the most the model reads, or give less",
        );
    }
    Some(Checked {
        default_key: Some(format!("archive:{}", a.collection)),
        task: Task::Archive(ArchiveTask {
            input,
            collection: a.collection.clone(),
            model,
            // 0: the model's maximum, fitted to its tokenizer where the chunks are made.
            params: ChunkParams {
                max_tokens: a.max_tokens.unwrap_or(0),
                overlap: a.overlap,
            },
            batch_tokens: a.batch_tokens,
        }),
    })
}

/// The archive becomes a parent with one `EmbedDocs` child per group of files that
/// `collections` does not already hold.
pub fn plan(task: &Task, collections: &Path) -> Result<Plan, SpecError> {
    let Task::Archive(a) = task else {
        return Ok(Plan::single(task.clone()));
    };
    let planned = archive::plan(a, collections).map_err(|e| {
        SpecError::one(
            "archive.input",
            e.to_string(),
            "point `input` at a readable directory of documents",
        )
    })?;
    let boilerplate = planned.boilerplate;
    Ok(Plan {
        task: task.clone(),
        children: planned
            .children
            .into_iter()
            .map(|(t, part)| {
                if boilerplate.is_empty() && part.is_none() {
                    Task::EmbedDocs(t)
                } else {
                    let options = archive::DocsOptions {
                        boilerplate: boilerplate.clone(),
                        part,
                    };
                    Task::EmbedDocsWith(t, options)
                }
            })
            .collect(),
    })
}

/// Run an archive parent once its children are done: join their results into the collection.
pub fn run(task: &Task, engines: &mut Engines, ctx: &RunContext<'_>) -> Result<Vec<u8>, JobError> {
    match task {
        Task::Archive(t) => archive::join(t, engines.home(), ctx.children),
        other => Err(misrouted(other, "archive")),
    }
}
