//! The archive pipeline: a directory tree in, a searchable [`collection`] out.
//!
//! An `archive` job is planned at submit time into children ([`DocsTask`]), each a group of
//! files to chunk and embed. Files whose content hash the collection already holds (with the
//! same model and chunking) are left out, so a re-run on a grown archive only does the new work. The
//! children run anywhere in the swarm; when they have finished, the parent ([`ArchiveTask`])
//! runs on its owner and writes the collection from their results ([`join`]). Killed
//! mid-run, the queue resumes the children that had not finished; finished ones keep their
//! results.
//!
//! A child's result is JSON Lines: for each document, one line per chunk
//! (`{"source", "hash", "index", "start", "end", "text", "title", "headings", "vector"}`, the
//! vector as base64 little-endian f32; `title` and `headings` left out when the document has
//! none), then one line `{"doc", "hash", "chunks", "error"}` closing it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::chunk::{self, ChunkError, ChunkParams, Format};
use crate::collection::{self, ChunkRow, FileEntry, Meta};
use crate::error::JobError;
use crate::home;
use crate::run::ChildResults;

/// Moved to [`crate::model`]; kept here for old paths.
pub use crate::model::{ModelRef, local_models};

/// A child holds documents up to this many bytes (a larger file gets a child of its own)...
pub const CHILD_BYTES: u64 = 16 * 1024;
/// ...and at most this many documents: small enough for the swarm to share the work and for
/// progress to move, big enough for full embedding batches (about 16 KiB is 20 chunks).
pub const CHILD_DOCS: usize = 16;

/// One document of a child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Doc {
    /// Where the owner has it.
    pub path: PathBuf,
    /// Its path relative to the archive root, `/`-separated: its name in the collection.
    pub rel: String,
    /// SHA-256 of its bytes when planned.
    pub hash: String,
    /// The bytes, when the task travels to a node that may not have the file.
    pub bytes: Option<Vec<u8>>,
}

/// A child of an archive job: chunk and embed these documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocsTask {
    pub docs: Vec<Doc>,
    pub model: ModelRef,
    pub params: ChunkParams,
    pub batch_tokens: usize,
}

/// A file bigger than this is shared among several children, each chunking and embedding
/// a share of its sections ([`Part`]).
pub const PART_BYTES: u64 = 256 * 1024;
/// The most children one file is shared among.
pub const MAX_PARTS: u64 = 64;

/// Which share of one big document a child chunks: `index` of `of` equal shares of its
/// extracted text's sections (see [`chunk::split_in_tokens`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub index: u32,
    pub of: u32,
}

/// What a child does beyond a plain [`DocsTask`]: blank the archive's boilerplate lines,
/// and (for one big document) chunk only a part of it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DocsOptions {
    /// Keys of the archive's boilerplate lines (sorted; see [`chunk::boilerplate`]).
    pub boilerplate: Vec<u64>,
    /// The part of its one document this child covers; `None`: all of every document.
    pub part: Option<Part>,
}

/// The archive job itself: after its children, write the collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveTask {
    pub input: PathBuf,
    pub collection: String,
    pub model: ModelRef,
    pub params: ChunkParams,
    pub batch_tokens: usize,
}

/// Lowercase hex SHA-256.
pub fn hash_bytes(bytes: &[u8]) -> String {
    crate::model::identity::sha256_hex(bytes)
}

fn rel_name(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// When the file at `path` was last modified (Unix ms), if the file system says.
fn modified_ms(path: &Path) -> Option<u64> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

/// The supported documents under `input`, as `(path, relative name)`.
fn documents(input: &Path) -> Result<Vec<(PathBuf, String)>, ChunkError> {
    let root = if input.is_file() {
        input.parent().unwrap_or(Path::new("")).to_path_buf()
    } else {
        input.to_path_buf()
    };
    Ok(chunk::expand_input(input)?
        .into_iter()
        .filter(|p| Format::from_path(p).is_some())
        .map(|p| {
            let rel = rel_name(&root, &p);
            (p, rel)
        })
        .collect())
}

/// How `task` cuts its chunks, as its collection records it.
fn chunking(params: &ChunkParams) -> collection::Chunking {
    collection::Chunking {
        unit: "tokens".into(),
        max_tokens: params.max_tokens,
        overlap: params.overlap,
        chunker: collection::CHUNKER,
    }
}

/// Whether the collection in `dir` was made with `model` and `params` (so its chunks and
/// vectors can be kept).
fn same_build(dir: &Path, model: &ModelRef, params: &ChunkParams) -> bool {
    matches!(collection::read_meta(dir), Ok(Some(m))
        if m.model == model.name
            && m.model_bytes == model.bytes
            && m.chunking.as_ref() == Some(&chunking(params)))
}

/// What an archive job will do: its children, and how many files it leaves alone.
#[derive(Debug)]
pub struct ArchivePlan {
    /// The children, with the part of their document each covers (for a big file).
    pub children: Vec<(DocsTask, Option<Part>)>,
    pub unchanged: usize,
    /// The archive's boilerplate lines ([`chunk::boilerplate`]), for the children to drop.
    pub boilerplate: Vec<u64>,
}

/// Plan an archive job against the collections in `collections`: hash every supported
/// document, leave out those the collection holds with that hash, and group the rest.
pub fn plan(task: &ArchiveTask, collections: &Path) -> Result<ArchivePlan, ChunkError> {
    let dir = collections.join(&task.collection);
    let _ = collection::recover(&dir);
    let known = if same_build(&dir, &task.model, &task.params) {
        collection::manifest(&dir).unwrap_or_default()
    } else {
        Default::default()
    };
    let mut children = Vec::new();
    let mut group: Vec<Doc> = Vec::new();
    let mut group_bytes = 0u64;
    let mut unchanged = 0;
    let docs = documents(&task.input)?;
    // An even sample of the whole archive (changed or not) to learn its boilerplate from.
    let sampled = chunk::boilerplate::sample(docs.len());
    let mut texts = Vec::with_capacity(sampled.len());
    for (i, (path, rel)) in docs.into_iter().enumerate() {
        let bytes = match chunk::read_document(&path) {
            Ok(bytes) => bytes,
            // Not a document (a device, a pipe) or too big to read whole: a child of its
            // own, whose run says so for this file alone.
            Err(ChunkError::NotRegular { .. } | ChunkError::TooBig { .. }) => {
                let doc = Doc {
                    path,
                    rel,
                    hash: String::new(),
                    bytes: None,
                };
                children.push((vec![doc], None));
                continue;
            }
            Err(e) => return Err(e),
        };
        if sampled.binary_search(&i).is_ok()
            && let Some(format) = Format::from_path(&path)
            && let Ok((text, _)) = chunk::extract_with_outline(&path, format, &bytes)
        {
            texts.push(text);
        }
        let hash = hash_bytes(&bytes);
        if known.get(&rel) == Some(&hash) {
            unchanged += 1;
            continue;
        }
        let size = bytes.len() as u64;
        if size > PART_BYTES {
            // A big file: children of its own, each a share of it.
            let of = size.div_ceil(PART_BYTES).min(MAX_PARTS) as u32;
            let doc = Doc {
                path,
                rel,
                hash,
                bytes: None,
            };
            for index in 0..of {
                children.push((vec![doc.clone()], Some(Part { index, of })));
            }
            continue;
        }
        if !group.is_empty() && (group_bytes + size > CHILD_BYTES || group.len() >= CHILD_DOCS) {
            children.push((std::mem::take(&mut group), None));
            group_bytes = 0;
        }
        group_bytes += size;
        group.push(Doc {
            path,
            rel,
            hash,
            bytes: None,
        });
    }
    if !group.is_empty() {
        children.push((group, None));
    }
    Ok(ArchivePlan {
        children: children
            .into_iter()
            .map(|(docs, part)| {
                let t = DocsTask {
                    docs,
                    model: task.model.clone(),
                    params: task.params,
                    batch_tokens: task.batch_tokens,
                };
                (t, part)
            })
            .collect(),
        unchanged,
        boilerplate: chunk::boilerplate::learn(texts.iter().map(String::as_str)),
    })
}

/// One chunk line of a child's result.
#[derive(Debug, Serialize, Deserialize)]
struct ChunkLine {
    source: String,
    hash: String,
    index: u32,
    start: usize,
    end: usize,
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    headings: Vec<String>,
    vector: String,
    /// The part of a big document it came from (its `index` counts within the part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    part: Option<u32>,
}

/// The line closing a document in a child's result.
#[derive(Debug, Serialize, Deserialize)]
struct DocLine {
    doc: String,
    hash: String,
    chunks: u32,
    /// Why the document could not be chunked (it stays out of the collection, and the next
    /// run tries it again).
    error: Option<String>,
    /// Bytes of its extracted text blanked as the archive's boilerplate.
    #[serde(default, skip_serializing_if = "is_zero")]
    boilerplate_bytes: u64,
    /// The part of a big document this child covered (`chunks` counts that part's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    part: Option<u32>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Embeds texts, in order: the executor's loaded model.
pub type EmbedFn<'a> = dyn FnMut(&[&str]) -> Result<Vec<Vec<f32>>, JobError> + 'a;

/// Run a child: chunk every document, embed all chunks with `embed`, and write the result
/// lines. A document that cannot be read or parsed is reported in its line; trouble that may
/// pass (I/O) fails the child for a retry.
pub fn run_docs(
    task: &DocsTask,
    options: &DocsOptions,
    cancelled: &dyn Fn() -> bool,
    tokens: &dyn chunk::Tokens,
    embed: &mut EmbedFn<'_>,
) -> Result<Vec<u8>, JobError> {
    struct Done {
        rel: String,
        hash: String,
        chunks: Vec<chunk::Chunk>,
        error: Option<String>,
        blanked: usize,
    }
    let mut docs = Vec::with_capacity(task.docs.len());
    for doc in &task.docs {
        if cancelled() {
            return Err(JobError::retryable("cancelled"));
        }
        let read;
        let bytes = match &doc.bytes {
            Some(b) => b.as_slice(),
            None => match chunk::read_document(&doc.path) {
                Ok(b) => {
                    read = b;
                    read.as_slice()
                }
                Err(ChunkError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    docs.push(Done {
                        rel: doc.rel.clone(),
                        hash: doc.hash.clone(),
                        chunks: Vec::new(),
                        error: Some(format!("{}: the file is gone", doc.path.display())),
                        blanked: 0,
                    });
                    continue;
                }
                // Not a document (a device, a pipe) or too big: this one fails, the
                // others go on.
                Err(e @ (ChunkError::NotRegular { .. } | ChunkError::TooBig { .. })) => {
                    docs.push(Done {
                        rel: doc.rel.clone(),
                        hash: doc.hash.clone(),
                        chunks: Vec::new(),
                        error: Some(e.to_string()),
                        blanked: 0,
                    });
                    continue;
                }
                Err(e) => {
                    return Err(JobError::retryable(format!(
                        "reading {}: {e}",
                        doc.path.display()
                    )));
                }
            },
        };
        let hash = hash_bytes(bytes);
        let chunked = chunk::chunk_bytes_dropping(
            &doc.path,
            bytes,
            &task.params,
            Some(tokens),
            cancelled,
            &options.boilerplate,
            options.part.map(|p| (p.index, p.of)),
        );
        match chunked {
            Ok((chunks, blanked)) => docs.push(Done {
                rel: doc.rel.clone(),
                hash,
                chunks,
                error: None,
                blanked,
            }),
            Err(ChunkError::Cancelled) => return Err(JobError::retryable("cancelled")),
            Err(e) if e.is_retryable() => return Err(JobError::retryable(e.to_string())),
            Err(e) => docs.push(Done {
                rel: doc.rel.clone(),
                hash,
                chunks: Vec::new(),
                error: Some(e.to_string()),
                blanked: 0,
            }),
        }
    }
    let texts: Vec<&str> = docs
        .iter()
        .flat_map(|d| d.chunks.iter().map(|c| c.text.as_str()))
        .collect();
    let vectors = if texts.is_empty() {
        Vec::new()
    } else {
        embed(&texts)?
    };
    if vectors.len() != texts.len() {
        return Err(JobError::fatal(format!(
            "the model returned {} vectors for {} texts",
            vectors.len(),
            texts.len()
        )));
    }
    let mut vectors = vectors.into_iter();
    let mut out = Vec::with_capacity(texts.iter().map(|t| t.len() + 2200).sum());
    let encode = |e: serde_json::Error| JobError::fatal(format!("encoding a result: {e}"));
    for d in docs {
        for c in &d.chunks {
            let v = vectors.next().unwrap_or_default();
            let mut raw = Vec::with_capacity(v.len() * 4);
            v.iter()
                .for_each(|x| raw.extend_from_slice(&x.to_le_bytes()));
            let line = ChunkLine {
                source: d.rel.clone(),
                hash: d.hash.clone(),
                index: c.index,
                start: c.start,
                end: c.end,
                text: c.text.clone(),
                title: c.title.clone(),
                headings: c.headings.clone(),
                vector: B64.encode(raw),
                part: options.part.map(|p| p.index),
            };
            serde_json::to_writer(&mut out, &line).map_err(encode)?;
            out.push(b'\n');
        }
        let line = DocLine {
            doc: d.rel,
            hash: d.hash,
            chunks: u32::try_from(d.chunks.len()).unwrap_or(u32::MAX),
            error: d.error,
            boilerplate_bytes: d.blanked as u64,
            part: options.part.map(|p| p.index),
        };
        serde_json::to_writer(&mut out, &line).map_err(encode)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// How many chunks a child's result holds (for progress): its lines less one per document.
pub fn count_chunks(task: &DocsTask, output: &[u8]) -> u64 {
    let lines = output.iter().filter(|b| **b == b'\n').count();
    lines.saturating_sub(task.docs.len()) as u64
}

/// The archive job's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinSummary {
    pub collection: String,
    pub dir: PathBuf,
    /// Files and chunks in the collection now.
    pub files: usize,
    pub chunks: usize,
    /// Files embedded by this run, and kept from the previous one.
    pub embedded: usize,
    pub kept: usize,
    /// Files the previous collection held that are gone from the archive.
    pub removed: usize,
    /// Documents that could not be chunked: `(path, why)`. They are retried by the next run.
    pub failed: Vec<(String, String)>,
    /// Bytes of extracted text dropped as the archive's boilerplate (lines most of its files
    /// share), in the files embedded by this run.
    #[serde(default)]
    pub boilerplate_bytes: u64,
}

/// Write the collection: what the children embedded, plus what the previous collection holds
/// for files still in the archive and not embedded again. Runs on the job's owner.
pub fn join(
    task: &ArchiveTask,
    home: &Path,
    children: Option<&ChildResults<'_>>,
) -> Result<Vec<u8>, JobError> {
    let dir = home::collection_dir(home, &task.collection);
    collection::recover(&dir).map_err(|e| JobError::retryable(e.to_string()))?;
    // Each file still in the archive, with its modification time (for query filters).
    let modified: BTreeMap<String, Option<u64>> = documents(&task.input)
        .map_err(|e| JobError::fatal(e.to_string()))?
        .into_iter()
        .map(|(path, rel)| (rel, modified_ms(&path)))
        .collect();
    let current: BTreeSet<String> = modified.keys().cloned().collect();
    let mut rows: Vec<(ChunkRow, Vec<f32>)> = Vec::new();
    // Rows of big documents shared among children, with their part: numbered in order below.
    let mut parted: Vec<(u32, ChunkRow, Vec<f32>)> = Vec::new();
    let mut files: BTreeMap<String, (String, u32)> = BTreeMap::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut boilerplate_bytes = 0;
    if let Some(children) = children {
        children(&mut |child: crate::run::Child<'_>| {
            let crate::run::Outcome::Done(bytes) = child.outcome else {
                return Ok(());
            };
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if line.starts_with(b"{\"doc\"") {
                    let d: DocLine = serde_json::from_slice(line).map_err(|e| {
                        JobError::fatal(format!("a child's result is damaged: {e}"))
                    })?;
                    boilerplate_bytes += d.boilerplate_bytes;
                    match d.error {
                        Some(why) => failed.push((d.doc, why)),
                        None => {
                            // A big document's parts add up.
                            let entry = files.entry(d.doc).or_insert((d.hash, 0));
                            entry.1 += d.chunks;
                        }
                    }
                    continue;
                }
                let c: ChunkLine = serde_json::from_slice(line)
                    .map_err(|e| JobError::fatal(format!("a child's result is damaged: {e}")))?;
                let raw = B64
                    .decode(c.vector.as_bytes())
                    .map_err(|e| JobError::fatal(format!("a child's vector is damaged: {e}")))?;
                let v: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let row = ChunkRow {
                    source: c.source,
                    hash: c.hash,
                    index: c.index,
                    start: c.start,
                    end: c.end,
                    text: c.text,
                    title: c.title,
                    headings: c.headings,
                };
                match c.part {
                    Some(part) => parted.push((part, row, v)),
                    None => rows.push((row, v)),
                }
            }
            Ok(())
        })?;
    }
    // A document any part of which failed is left out whole (the next run tries it again).
    failed.sort();
    failed.dedup_by(|a, b| a.0 == b.0);
    for (doc, _) in &failed {
        files.remove(doc);
    }
    // A big document's chunks, numbered across its parts as one child would have.
    parted.sort_by(|a, b| (&a.1.source, a.0, a.1.index).cmp(&(&b.1.source, b.0, b.1.index)));
    let mut next: Option<(String, u32)> = None;
    for (_, mut row, v) in parted {
        let index = match &next {
            Some((source, n)) if *source == row.source => *n,
            _ => 0,
        };
        next = Some((row.source.clone(), index + 1));
        row.index = index;
        rows.push((row, v));
    }
    let embedded = files.len();
    rows.retain(|(r, _)| current.contains(&r.source) && files.contains_key(&r.source));
    files.retain(|rel, _| current.contains(rel));
    // Keep the previous collection's rows for files still here and not embedded again.
    let mut kept = 0;
    let mut removed = 0;
    if same_build(&dir, &task.model, &task.params) {
        let old =
            collection::Collection::open(&dir).map_err(|e| JobError::retryable(e.to_string()))?;
        let old_files =
            collection::manifest(&dir).map_err(|e| JobError::retryable(e.to_string()))?;
        for rel in old_files.keys() {
            if !current.contains(rel) {
                removed += 1;
            } else if !files.contains_key(rel) {
                kept += 1;
            }
        }
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for i in 0..old.len() {
            let row = old.row(i).map_err(|e| JobError::fatal(e.to_string()))?;
            if current.contains(&row.source) && !files.contains_key(&row.source) {
                *counts.entry(row.source.clone()).or_default() += 1;
                rows.push((row, old.vector(i).to_vec()));
            }
        }
        for (rel, hash) in old_files {
            if current.contains(&rel) && !files.contains_key(&rel) {
                let n = counts.get(&rel).copied().unwrap_or(0);
                files.insert(rel, (hash, n));
            }
        }
    }
    rows.sort_by(|a, b| (&a.0.source, a.0.index).cmp(&(&b.0.source, b.0.index)));
    let dim = rows.first().map_or(0, |(_, v)| v.len());
    if let Some((r, v)) = rows.iter().find(|(_, v)| v.len() != dim) {
        return Err(JobError::fatal(format!(
            "{} chunk {} has a {}-dimensional vector, others {dim}: the model changed during the run; run the job again",
            r.source,
            r.index,
            v.len()
        )));
    }
    let mut entries = Vec::with_capacity(files.len());
    let mut first_row = 0u64;
    for (path, (hash, chunks)) in &files {
        entries.push(FileEntry {
            path: path.clone(),
            hash: hash.clone(),
            chunks: *chunks,
            first_row,
            modified_ms: modified.get(path).copied().flatten(),
        });
        first_row += u64::from(*chunks);
    }
    let meta = Meta {
        format: collection::FORMAT.into(),
        version: collection::VERSION,
        name: task.collection.clone(),
        model: task.model.name.clone(),
        model_bytes: task.model.bytes,
        dim,
        count: rows.len(),
        files: entries.len(),
        metric: "cosine".into(),
        normalized: true,
        input: task.input.display().to_string(),
        updated_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        chunking: Some(chunking(&task.params)),
    };
    collection::write(&dir, &meta, &rows, &entries)
        .map_err(|e| JobError::retryable(e.to_string()))?;
    let summary = JoinSummary {
        collection: task.collection.clone(),
        dir,
        files: entries.len(),
        chunks: rows.len(),
        embedded,
        kept,
        removed,
        failed,
        boilerplate_bytes,
    };
    let mut out = serde_json::to_vec(&summary)
        .map_err(|e| JobError::fatal(format!("encoding the summary: {e}")))?;
    out.push(b'\n');
    Ok(out)
}
