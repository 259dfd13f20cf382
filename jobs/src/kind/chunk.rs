//! The `chunk` kind: cut documents into token-sized pieces. Its `[chunk]` section, its
//! validation, its planning (a directory or glob becomes a parent with one `ChunkFile` child
//! per file) and its traits.
//!
//! Its `run` calls [`crate::chunk`] and writes the chunks as JSON Lines; it must not split
//! text itself.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::traits::{ExecutorKind, Gpu, KindTraits, Lane};
use crate::chunk::{self, ChunkParams, Format};
use crate::engines::{Engines, misrouted};
use crate::error::JobError;
use crate::run::RunContext;
use crate::spec::env::{SpecEnv, is_glob};
use crate::spec::plan::{Checked, Plan};
use crate::spec::problem::{Problems, SpecError};
use crate::task::Task;

pub const TRAITS: KindTraits = KindTraits {
    lane: Lane::Batch,
    streams: false,
    joins: false,
    joins_failed: false,
    // The parent over a directory never runs: it stays with its owner.
    owner_only: true,
    gpu: Gpu::Never,
    executor: ExecutorKind::Cpu,
};

/// `[chunk]`: cut documents into token-sized pieces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// A file, a directory (recursive) or a glob, relative to the job file.
    pub input: PathBuf,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "default_overlap")]
    pub overlap: usize,
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
}

fn default_max_tokens() -> usize {
    256
}
fn default_overlap() -> usize {
    32
}
fn default_tokenizer() -> String {
    "chars".to_owned()
}

pub fn check(section: Option<&Section>, env: &SpecEnv<'_>, p: &mut Problems) -> Option<Checked> {
    let Some(c) = section else {
        p.bad(
            "chunk",
            "missing `[chunk]` table",
            "add `[chunk]` with at least `input = \"path/to/docs\"`",
        );
        return None;
    };
    check_chunking(p, "chunk", c.max_tokens, c.overlap);
    if c.tokenizer != "chars" {
        p.bad(
            "chunk.tokenizer",
            format!("tokenizer `{}` is not supported", c.tokenizer),
            "use `tokenizer = \"chars\"`",
        );
    }
    let input = env.readable("chunk.input", &c.input, p)?;
    if !input.exists() && !is_glob(&c.input) {
        p.bad(
            "chunk.input",
            format!("`{}` does not exist", input.display()),
            "point `input` at an existing file, directory or glob (relative paths start at the job file's directory)",
        );
    } else if input.is_file() && Format::from_path(&input).is_none() {
        p.bad(
            "chunk.input",
            format!("`{}` is not a supported document", input.display()),
            format!("myco chunks {}", Format::SUPPORTED),
        );
    }
    Some(
        Task::Chunk {
            input,
            params: ChunkParams {
                max_tokens: c.max_tokens,
                overlap: c.overlap,
            },
        }
        .into(),
    )
}

/// Chunk sizes any kind that chunks accepts: `table.max_tokens` and `table.overlap`.
pub fn check_chunking(p: &mut Problems, table: &str, max_tokens: usize, overlap: usize) {
    if max_tokens == 0 || max_tokens > 1_000_000 {
        p.bad(
            &format!("{table}.max_tokens"),
            format!("{max_tokens} is out of range"),
            "use 1 to 1000000 tokens per chunk",
        );
    }
    if overlap >= max_tokens.max(1) {
        p.bad(
            &format!("{table}.overlap"),
            format!("{overlap} must be smaller than max_tokens ({max_tokens})"),
            "lower `overlap`, e.g. to an eighth of `max_tokens`",
        );
    }
}

/// A directory or glob input becomes a parent with one `ChunkFile` child per file; a file
/// becomes a `ChunkFile` job of its own.
pub fn plan(task: &Task, _collections: &Path) -> Result<Plan, SpecError> {
    let Task::Chunk { input, params } = task else {
        return Ok(Plan::single(task.clone()));
    };
    let files = chunk::expand_input(input).map_err(|e| {
        SpecError::one(
            "chunk.input",
            e.to_string(),
            "point `input` at an existing file, directory or glob",
        )
    })?;
    if input.is_file() {
        return Ok(Plan::single(Task::ChunkFile {
            path: input.clone(),
            params: *params,
        }));
    }
    if files.is_empty() {
        return Err(SpecError::one(
            "chunk.input",
            format!("`{}` holds no files", input.display()),
            "add documents to it or point `input` elsewhere",
        ));
    }
    let children = files
        .into_iter()
        .map(|path| Task::ChunkFile {
            path,
            params: *params,
        })
        .collect();
    Ok(Plan {
        task: task.clone(),
        children,
    })
}

/// Run a chunk task: a file's chunks as JSON Lines. The parent never runs itself.
pub fn run(task: &Task, _: &mut Engines, ctx: &RunContext<'_>) -> Result<Vec<u8>, JobError> {
    let chunks = match task {
        Task::Chunk { input, .. } => {
            return Err(JobError::fatal(format!(
                "chunk job over {} has no children to run: it is a parent and never runs itself",
                input.display()
            )));
        }
        Task::ChunkInline {
            path,
            bytes,
            params,
        } => chunk::chunk_bytes(path, bytes, params, ctx.cancelled)?,
        Task::ChunkFile { path, params } => chunk::chunk_file(path, params, ctx.cancelled)?,
        other => return Err(misrouted(other, "chunk")),
    };
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.text.len() + 96).sum());
    for c in &chunks {
        serde_json::to_writer(&mut out, c)
            .map_err(|e| JobError::fatal(format!("encoding chunk: {e}")))?;
        out.push(b'\n');
    }
    Ok(out)
}
