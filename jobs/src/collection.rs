//! Collections: a named set of embedding vectors with the chunks they came from, as written
//! by the archive pipeline and read by `myco query`.
//!
//! # On-disk format (version 2)
//!
//! A collection is a directory (`~/.myco/collections/NAME/`) of four files, all readable
//! without myco, and a keyword index:
//!
//! - `collection.json`: `{"format": "myco-collection", "version": 2, "name", "model",
//!   "model_bytes", "dim", "count", "files", "metric": "cosine", "normalized": true,
//!   "input", "updated_ms", "chunking": {"unit": "tokens", "max_tokens", "overlap",
//!   "chunker"}}` (`chunking` is absent in collections written before it was recorded).
//! - `vectors.npy`: a NumPy v1.0 array, `<f4`, C order, shape `(count, dim)`; row *i* is the
//!   L2-normalised vector of chunk *i* (so a dot product is the cosine). `numpy.load` reads it.
//! - `chunks.jsonl`: line *i* is chunk *i*: `{"source", "hash", "index", "start", "end",
//!   "text", "title", "headings"}` (the last two left out when the document has none), where `source` is the file's path relative to the archive root, `hash` the
//!   SHA-256 of the file's bytes, `index` the chunk's number within the file, and
//!   `start..end` its byte range in the file's extracted text.
//! - `files.jsonl`: one line per file: `{"path", "hash", "chunks", "first_row",
//!   "modified_ms"}` (`modified_ms`, the file's modification time in Unix ms when the
//!   collection was written, is absent in collections written before it was recorded).
//! - `keyword/`: a tantivy index of the chunks' text, one document per row with the row
//!   number as the u64 fast field `row` (see `crate::keyword`). Optional: a reader without
//!   it builds one in memory when a query needs it.
//!
//! - `vectors.usearch` (collections of [`crate::ann::ANN_MIN`] vectors or more): an HNSW
//!   index of `vectors.npy` (usearch's format; key = row, inner product, f32), which
//!   searches use for candidates and then rank exactly (see `crate::ann`). Optional: without
//!   it a search scans every vector.
//!
//! Version 1 is version 2 without `keyword/` (and often without `chunking`): this myco
//! queries it as it is (building the keyword index in memory when a query needs it), and
//! the next archive run writes it as version 2.
//!
//! Rows are sorted by `(source, index)`. A collection is replaced whole: the new one is
//! written beside it (`NAME.new`), synced, and renamed into place (the old one goes to
//! `NAME.old` for the moment between the two renames; [`recover`] finishes an interrupted
//! swap). Readers therefore see the old or the new collection, never a mix.

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::filter::Allowed;
#[cfg(feature = "embed")]
use crate::keyword::{self, KeywordIndex};

/// Built without the `embed` feature (the queue and cluster alone): collections are read
/// and searched by vector, and a keyword query says why it cannot run.
#[cfg(not(feature = "embed"))]
mod keyword {
    use std::path::Path;

    const MISSING: &str = "this myco was built without the `embed` feature, which keyword search needs: build it with default features";

    #[derive(Debug)]
    pub struct KeywordIndex;

    #[derive(Debug)]
    #[allow(dead_code, reason = "the shape the `embed` build indexes")]
    pub struct Entry<'a> {
        pub row: u64,
        pub text: &'a str,
        pub context: String,
    }

    pub fn open(_: &Path) -> Result<KeywordIndex, String> {
        Err(MISSING.into())
    }

    pub fn build<'a>(
        _: Option<&Path>,
        _: impl IntoIterator<Item = Entry<'a>>,
    ) -> Result<KeywordIndex, String> {
        Err(MISSING.into())
    }

    impl KeywordIndex {
        pub fn search_in(
            &self,
            _: &str,
            _: usize,
            _: Option<crate::filter::Allowed>,
        ) -> Result<Vec<(usize, f32)>, String> {
            Err(MISSING.into())
        }
    }
}
#[cfg(not(feature = "embed"))]
use keyword::KeywordIndex;

pub const FORMAT: &str = "myco-collection";
/// The version this myco writes; it reads [`OLDEST`] to this.
pub const VERSION: u32 = 2;
/// The oldest version this myco reads (version 1 has no keyword index: one is built in
/// memory the first time a query needs it).
pub const OLDEST: u32 = 1;
/// Where a collection keeps its keyword index (version 2 on).
pub const KEYWORD_DIR: &str = "keyword";

/// `collection.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: String,
    pub version: u32,
    pub name: String,
    /// The embedding model's name (its directory name).
    pub model: String,
    /// The size of its `model.onnx`: with the name, how nodes tell models apart.
    pub model_bytes: u64,
    pub dim: usize,
    pub count: usize,
    pub files: usize,
    pub metric: String,
    pub normalized: bool,
    /// The archive directory the collection mirrors.
    pub input: String,
    pub updated_ms: u64,
    /// How its chunks were cut. A collection written before this was recorded has none, and
    /// its next archive run chunks every file again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunking: Option<Chunking>,
}

/// How a collection's chunks were cut: part of each file's identity, so that changing any of
/// it re-chunks the files on the next run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunking {
    /// `"tokens"`: the model's own, counted with its tokenizer.
    pub unit: String,
    /// As the job gave it; 0 is the model's maximum.
    pub max_tokens: usize,
    pub overlap: usize,
    /// The chunker's revision: a change to how text is extracted or cut bumps it.
    pub chunker: u32,
}

/// The revision of extraction and splitting that [`Chunking::chunker`] records.
pub const CHUNKER: u32 = 2;

/// One line of `chunks.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRow {
    pub source: String,
    pub hash: String,
    pub index: u32,
    pub start: usize,
    pub end: usize,
    pub text: String,
    /// The document's title, if it has one (not in collections written before titles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The headings the chunk falls under, outermost first (left out when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headings: Vec<String>,
}

/// Row `i` as the keyword index holds it.
fn entry(i: usize, r: &ChunkRow) -> keyword::Entry<'_> {
    let mut context = r.title.clone().unwrap_or_default();
    for h in &r.headings {
        context.push('\n');
        context.push_str(h);
    }
    keyword::Entry {
        row: i as u64,
        text: &r.text,
        context,
    }
}

/// One line of `files.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub hash: String,
    pub chunks: u32,
    pub first_row: u64,
    /// The file's modification time (Unix ms) when the collection was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_ms: Option<u64>,
}

/// Why a collection could not be read or written. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum CollectionError {
    #[error(
        "no collection `{name}` at {dir}; build it with an archive job (`myco run job.toml` with kind = \"archive\")"
    )]
    Missing { name: String, dir: PathBuf },
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("{path} is not a myco collection file: {why}")]
    Corrupt { path: PathBuf, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CollectionError + '_ {
    move |e| CollectionError::Io {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

fn corrupt(path: &Path, why: impl Into<String>) -> CollectionError {
    CollectionError::Corrupt {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// Whether `name` can be a collection name: a plain directory name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Finish or undo a swap that a crash interrupted: `NAME.old` without `NAME` goes back into
/// place; a half-written `NAME.new` is removed.
pub fn recover(dir: &Path) -> Result<(), CollectionError> {
    let old = sibling(dir, ".old");
    let new = sibling(dir, ".new");
    if !dir.exists() && old.exists() {
        std::fs::rename(&old, dir).map_err(io_err(&old))?;
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    if new.exists() {
        std::fs::remove_dir_all(&new).map_err(io_err(&new))?;
    }
    Ok(())
}

/// The collection's metadata, if it exists.
pub fn read_meta(dir: &Path) -> Result<Option<Meta>, CollectionError> {
    let path = dir.join("collection.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let meta: Meta = serde_json::from_str(&text).map_err(|e| corrupt(&path, e.to_string()))?;
    if meta.format != FORMAT || !(OLDEST..=VERSION).contains(&meta.version) {
        return Err(corrupt(
            &path,
            format!(
                "format {} version {} (this myco reads {FORMAT} versions {OLDEST} to {VERSION}: a newer myco wrote it?)",
                meta.format, meta.version
            ),
        ));
    }
    Ok(Some(meta))
}

/// One collection as `myco collections` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub name: String,
    pub model: String,
    pub version: u32,
    pub files: usize,
    pub chunks: usize,
    pub dim: usize,
    /// Bytes on disk, every file of its directory.
    pub bytes: u64,
    /// When its last archive run wrote it (Unix ms).
    pub updated_ms: u64,
    /// The archive directory it mirrors.
    pub input: String,
    /// Whether it has its keyword index on disk (version 2 on).
    pub keyword: bool,
    /// Why it cannot be read, when it cannot (it is listed anyway, so that it can be removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum()
}

/// Every collection under `collections` (a home's `collections/`), by name. Half-written
/// siblings (`NAME.new`, `NAME.old`) are not collections; an unreadable one is listed with its
/// error.
///
/// # Errors
///
/// Reading the directory (none there is an empty list).
pub fn list(collections: &Path) -> Result<Vec<Summary>, CollectionError> {
    let entries = match std::fs::read_dir(collections) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(collections)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(collections))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        if !dir.is_dir() || !valid_name(&name) || name.ends_with(".new") || name.ends_with(".old") {
            continue;
        }
        // No `recover` here: a run of another process may be writing `NAME.new` right now.
        let mut summary = Summary {
            name,
            model: String::new(),
            version: 0,
            files: 0,
            chunks: 0,
            dim: 0,
            bytes: dir_bytes(&dir),
            updated_ms: 0,
            input: String::new(),
            keyword: dir.join(KEYWORD_DIR).is_dir(),
            error: None,
        };
        match read_meta(&dir) {
            Ok(Some(m)) => {
                if let Err(e) = check_files(&dir, &m) {
                    summary.error = Some(format!(
                        "{e}; build it again (submit its archive job), or remove it"
                    ));
                }
                summary.model = m.model;
                summary.version = m.version;
                summary.files = m.files;
                summary.chunks = m.count;
                summary.dim = m.dim;
                summary.updated_ms = m.updated_ms;
                summary.input = m.input;
            }
            Ok(None) => continue,
            Err(e) => summary.error = Some(e.to_string()),
        }
        out.push(summary);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes the collection `name` under `collections` (with any half-written siblings).
/// `Ok(false)` when there is none.
///
/// # Errors
///
/// A name that is not a collection name, or the removal's I/O error.
pub fn remove(collections: &Path, name: &str) -> Result<bool, CollectionError> {
    let dir = collections.join(name);
    if !valid_name(name) {
        return Err(CollectionError::Io {
            path: dir,
            why: format!("`{name}` is not a collection name (letters, digits, `-`, `_`, `.`)"),
        });
    }
    recover(&dir)?;
    if !dir.join("collection.json").exists() {
        return Ok(false);
    }
    // Renamed away first: a reader sees the whole collection or none of it.
    let doomed = sibling(&dir, ".old");
    std::fs::rename(&dir, &doomed).map_err(io_err(&dir))?;
    std::fs::remove_dir_all(&doomed).map_err(io_err(&doomed))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(true)
}

/// The files a collection holds, by relative path → content hash (empty if there is none).
pub fn manifest(dir: &Path) -> Result<HashMap<String, String>, CollectionError> {
    let path = dir.join("files.jsonl");
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let mut out = HashMap::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(io_err(&path))?;
        if line.is_empty() {
            continue;
        }
        let f: FileEntry =
            serde_json::from_str(&line).map_err(|e| corrupt(&path, e.to_string()))?;
        out.insert(f.path, f.hash);
    }
    Ok(out)
}

/// A collection loaded for search: vectors contiguous in one allocation, chunk lines in one
/// string.
#[derive(Debug)]
pub struct Collection {
    pub dir: PathBuf,
    pub meta: Meta,
    vectors: Vec<f32>,
    chunks: String,
    /// Start of each line of `chunks`, plus its end.
    lines: Vec<usize>,
    /// The HNSW index of a collection of [`ANN_MIN`] vectors or more (memory-mapped).
    #[cfg(feature = "embed")]
    ann: Option<crate::ann::AnnIndex>,
    /// The keyword index, opened (or, for a version 1 collection, built in memory) by the
    /// first query that needs it.
    keyword: std::sync::OnceLock<Result<KeywordIndex, String>>,
    /// `files.jsonl`, read by the first filtered query.
    files: std::sync::OnceLock<Result<Vec<FileEntry>, String>>,
}

/// How a query ranks chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Vector and keyword hits merged by their standardised scores ([`fuse_scores`]).
    #[default]
    Hybrid,
    /// Nearest vectors (cosine) only.
    Vector,
    /// BM25 over the chunks' words only.
    Keyword,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Hybrid, Mode::Vector, Mode::Keyword];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Hybrid => "hybrid",
            Mode::Vector => "vector",
            Mode::Keyword => "keyword",
        }
    }

    /// Whether the query needs its embedding.
    pub fn uses_vectors(self) -> bool {
        self != Mode::Keyword
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a search mode: use hybrid, vector or keyword"))
    }
}

/// The constant of reciprocal-rank fusion ([`fuse`]): a hit at rank r (from 1) of a list
/// adds 1 / (RRF_K + r). 60 as in Cormack et al. (2009).
pub const RRF_K: f32 = 60.0;
/// How many hits each list gives the fusion (at least; `k` if more).
pub const FUSE_DEPTH: usize = 50;

/// Merges scored lists by z-score fusion (the sum of each list's standardised scores:
/// CombSUM over z-scores, Montague and Aslam 2001), best first (ties: the earlier row). A
/// row a list does not hold counts as that list's lowest; a list of one hit, or of equal
/// scores, says only which rows it holds (1 for them, 0 for the rest). Unlike rank fusion
/// (and min-max or clipped normalisations), this keeps how far a hit stands out: a passage
/// quoted word for word, far ahead in the keyword list, beats a chunk the vector list puts
/// first by a hair.
pub fn fuse_scores(lists: &[&[Hit]], k: usize) -> Vec<Hit> {
    let mut rows: Vec<usize> = lists.iter().flat_map(|l| l.iter().map(|h| h.row)).collect();
    rows.sort_unstable();
    rows.dedup();
    let mut scores: HashMap<usize, f32> = rows.iter().map(|r| (*r, 0.0)).collect();
    for list in lists {
        if list.is_empty() {
            continue;
        }
        let n = list.len() as f32;
        let mean = list.iter().map(|h| h.score).sum::<f32>() / n;
        let sd = (list.iter().map(|h| (h.score - mean).powi(2)).sum::<f32>() / n).sqrt();
        let z = |s: f32| if sd > 0.0 { (s - mean) / sd } else { 1.0 };
        let floor = if sd > 0.0 {
            list.iter()
                .map(|h| z(h.score))
                .fold(f32::INFINITY, f32::min)
        } else {
            0.0
        };
        let held: HashMap<usize, f32> = list.iter().map(|h| (h.row, z(h.score))).collect();
        for (row, score) in &mut scores {
            *score += held.get(row).copied().unwrap_or(floor);
        }
    }
    best(
        scores
            .into_iter()
            .map(|(row, score)| Hit { row, score })
            .collect(),
        k,
    )
}

/// The `k` best of `hits`, best first (ties: the earlier row).
fn best(mut hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)));
    hits.truncate(k);
    hits
}

/// Merges ranked lists by reciprocal-rank fusion, best first (ties: the earlier row): the
/// common alternative to [`fuse_scores`], which the retrieval bench reports beside it.
pub fn fuse(lists: &[&[Hit]], k: usize) -> Vec<Hit> {
    let mut scores: HashMap<usize, f32> = HashMap::new();
    for list in lists {
        for (rank, hit) in list.iter().enumerate() {
            *scores.entry(hit.row).or_default() += 1.0 / (RRF_K + rank as f32 + 1.0);
        }
    }
    best(
        scores
            .into_iter()
            .map(|(row, score)| Hit { row, score })
            .collect(),
        k,
    )
}

/// One search result: a row and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub row: usize,
    pub score: f32,
}

impl Collection {
    /// Load the collection in `dir` (named `name` in errors).
    pub fn open(dir: &Path) -> Result<Collection, CollectionError> {
        recover(dir)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let meta = read_meta(dir)?.ok_or_else(|| CollectionError::Missing {
            name,
            dir: dir.to_path_buf(),
        })?;
        let npy = dir.join("vectors.npy");
        let bytes = std::fs::read(&npy).map_err(io_err(&npy))?;
        let (shape, data) = npy_parse(&bytes).map_err(|why| corrupt(&npy, why))?;
        if shape != (meta.count, meta.dim) {
            return Err(corrupt(
                &npy,
                format!(
                    "shape {shape:?} does not match collection.json ({}, {})",
                    meta.count, meta.dim
                ),
            ));
        }
        let vectors: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let cpath = dir.join("chunks.jsonl");
        let chunks = std::fs::read_to_string(&cpath).map_err(io_err(&cpath))?;
        let mut lines = vec![0];
        lines.extend(
            chunks
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        if lines.len() - 1 != meta.count {
            return Err(corrupt(
                &cpath,
                format!("{} lines for {} vectors", lines.len() - 1, meta.count),
            ));
        }
        #[cfg(feature = "embed")]
        let ann = {
            let path = dir.join(crate::ann::ANN_FILE);
            if path.exists() {
                Some(crate::ann::open(&path, meta.dim).map_err(|why| corrupt(&path, why))?)
            } else {
                None
            }
        };
        Ok(Collection {
            dir: dir.to_path_buf(),
            meta,
            vectors,
            chunks,
            lines,
            keyword: std::sync::OnceLock::new(),
            files: std::sync::OnceLock::new(),
            #[cfg(feature = "embed")]
            ann,
        })
    }

    /// Whether searches go through an HNSW index (else they scan every vector).
    pub fn has_ann(&self) -> bool {
        #[cfg(feature = "embed")]
        let has = self.ann.is_some();
        #[cfg(not(feature = "embed"))]
        let has = false;
        has
    }

    /// The keyword index: the collection's own, or for an old one without, built in memory
    /// from its chunks (once per opening).
    pub fn keyword_index(&self) -> Result<&KeywordIndex, CollectionError> {
        let dir = self.dir.join(KEYWORD_DIR);
        self.keyword
            .get_or_init(|| {
                if dir.exists() {
                    return keyword::open(&dir);
                }
                let mut rows = Vec::with_capacity(self.len());
                for i in 0..self.len() {
                    rows.push(self.row(i).map_err(|e| e.to_string())?);
                }
                keyword::build(None, rows.iter().enumerate().map(|(i, r)| entry(i, r)))
            })
            .as_ref()
            .map_err(|why| corrupt(&dir, why.clone()))
    }

    /// The files it holds (`files.jsonl`), read once.
    pub fn files(&self) -> Result<&[FileEntry], CollectionError> {
        let path = self.dir.join("files.jsonl");
        self.files
            .get_or_init(|| {
                let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
                text.lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| serde_json::from_str(l).map_err(|e| e.to_string()))
                    .collect()
            })
            .as_deref()
            .map_err(|why| corrupt(&path, why.clone()))
    }

    /// The rows `filter` lets through, and how many.
    pub fn allowed(
        &self,
        filter: &crate::filter::Compiled,
    ) -> Result<(Allowed, usize), CollectionError> {
        let count = self.len();
        let mut allowed = vec![false; count];
        let mut n = 0;
        for f in self.files()? {
            if filter.matches(&f.path, f.modified_ms) {
                let start = usize::try_from(f.first_row)
                    .unwrap_or(usize::MAX)
                    .min(count);
                let end = start.saturating_add(f.chunks as usize).min(count);
                allowed[start..end].iter_mut().for_each(|a| *a = true);
                n += end - start;
            }
        }
        Ok((std::sync::Arc::new(allowed), n))
    }

    /// The `k` chunks best matching `text` (and its embedding `vector`, for the modes that use
    /// it), best first. Scores are the mode's own: cosine, BM25, or the fused score (a sum of
    /// z-scores).
    pub fn query(
        &self,
        mode: Mode,
        text: &str,
        vector: Option<&[f32]>,
        k: usize,
    ) -> Result<Vec<Hit>, CollectionError> {
        self.query_in(mode, text, vector, k, None)
    }

    /// [`Collection::query`] among the `allowed` rows only (every row when `None`): each
    /// ranking considers only them, so up to `k` come back however few rows pass.
    pub fn query_in(
        &self,
        mode: Mode,
        text: &str,
        vector: Option<&[f32]>,
        k: usize,
        allowed: Option<&Allowed>,
    ) -> Result<Vec<Hit>, CollectionError> {
        let depth = k.max(FUSE_DEPTH);
        let vector_hits = |n| {
            vector
                .map(|v| self.search_in(v, n, allowed))
                .unwrap_or_default()
        };
        Ok(match mode {
            Mode::Vector => vector_hits(k),
            Mode::Keyword => self.keyword_hits(text, k, allowed)?,
            Mode::Hybrid => fuse_scores(
                &[
                    &vector_hits(depth),
                    &self.keyword_hits(text, depth, allowed)?,
                ],
                k,
            ),
        })
    }

    /// The `k` best chunks for `text` by BM25 alone, among the `allowed` rows (every row when
    /// `None`). Hybrid search fuses [`FUSE_DEPTH`] of these with as many vector hits
    /// ([`fuse_scores`]); a caller may run this while the query is being embedded.
    pub fn keyword_hits(
        &self,
        text: &str,
        k: usize,
        allowed: Option<&Allowed>,
    ) -> Result<Vec<Hit>, CollectionError> {
        let hits = self
            .keyword_index()?
            .search_in(text, k, allowed.cloned())
            .map_err(|why| corrupt(&self.dir.join(KEYWORD_DIR), why))?;
        Ok(hits
            .into_iter()
            .map(|(row, score)| Hit { row, score })
            .collect())
    }

    pub fn len(&self) -> usize {
        self.meta.count
    }

    pub fn is_empty(&self) -> bool {
        self.meta.count == 0
    }

    /// Row `i`'s vector.
    pub fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.meta.dim..(i + 1) * self.meta.dim]
    }

    /// Row `i`'s chunk.
    pub fn row(&self, i: usize) -> Result<ChunkRow, CollectionError> {
        let line = &self.chunks[self.lines[i]..self.lines[i + 1]];
        serde_json::from_str(line.trim_end()).map_err(|e| {
            corrupt(
                &self.dir.join("chunks.jsonl"),
                format!("line {}: {e}", i + 1),
            )
        })
    }

    /// The `k` rows nearest to `query` (L2-normalised, of the collection's dimension), best
    /// first. Exact: one dot product per row over contiguous memory, no allocation per row.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        self.search_in(query, k, None)
    }

    /// [`Collection::search`] among the `allowed` rows only (every row when `None`). With an
    /// HNSW index and enough rows allowed ([`crate::ann::ANN_MIN`]), the graph is searched
    /// with the filter (rows it rejects are passed through, never returned); fewer rows are
    /// scanned exactly, which is then both cheaper and exact.
    pub fn search_in(&self, query: &[f32], k: usize, allowed: Option<&Allowed>) -> Vec<Hit> {
        #[cfg(feature = "embed")]
        if let Some(ann) = &self.ann
            && query.len() == self.meta.dim
            && allowed.is_none_or(|a| a.iter().filter(|x| **x).count() >= crate::ann::ANN_MIN)
            && let Ok(rows) = match allowed {
                None => ann.candidates(query, k),
                Some(a) => {
                    ann.candidates_where(query, k, |row| a.get(row).copied().unwrap_or(false))
                }
            }
        {
            return self.rank(&rows, query, k);
        }
        match allowed {
            None => search(&self.vectors, self.meta.dim, query, k),
            Some(a) => search_where(&self.vectors, self.meta.dim, query, k, |row| a[row]),
        }
    }

    /// The `k` best of `rows` by their exact dot product with `query`, best first.
    #[cfg(feature = "embed")]
    fn rank(&self, rows: &[usize], query: &[f32], k: usize) -> Vec<Hit> {
        let mut rows = rows.to_vec();
        rows.sort_unstable();
        rows.dedup();
        let hits = rows
            .into_iter()
            .filter(|r| *r < self.len())
            .map(|row| Hit {
                row,
                score: dot(self.vector(row), query),
            })
            .collect();
        best(hits, k)
    }
}

/// Exact top-`k` by dot product over `vectors` (rows of `dim` floats, contiguous).
pub fn search(vectors: &[f32], dim: usize, query: &[f32], k: usize) -> Vec<Hit> {
    search_where(vectors, dim, query, k, |_| true)
}

/// [`search`] over the rows `keep` accepts.
pub fn search_where(
    vectors: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    keep: impl Fn(usize) -> bool,
) -> Vec<Hit> {
    if dim == 0 || query.len() != dim || k == 0 {
        return Vec::new();
    }
    // `top` is kept sorted best first; k is small, so insertion beats a heap.
    let mut top: Vec<Hit> = Vec::with_capacity(k + 1);
    for (row, v) in vectors.chunks_exact(dim).enumerate() {
        if !keep(row) {
            continue;
        }
        let score = dot(v, query);
        if top.len() == k && score <= top[k - 1].score {
            continue;
        }
        let at = top.partition_point(|h| h.score >= score);
        top.insert(at, Hit { row, score });
        top.truncate(k);
    }
    top
}

/// A dot product written so the compiler vectorises it (eight independent accumulators).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Write a collection into `dir`, replacing what is there (see the module docs). `rows`
/// must be sorted by `(source, index)`, each vector of `meta.dim` floats.
pub fn write(
    dir: &Path,
    meta: &Meta,
    rows: &[(ChunkRow, Vec<f32>)],
    files: &[FileEntry],
) -> Result<(), CollectionError> {
    recover(dir)?;
    let new = sibling(dir, ".new");
    // A collection holds the documents' text: its owner's alone (0700, files 0600).
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&new)
            .map_err(io_err(&new))?;
    }
    let write_file = |name: &str, f: &dyn Fn(&mut dyn Write) -> std::io::Result<()>| {
        let path = new.join(name);
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(&path))?
        };
        let mut w = BufWriter::new(file);
        f(&mut w).map_err(io_err(&path))?;
        let file = w.into_inner().map_err(|e| io_err(&path)(e.into_error()))?;
        file.sync_all().map_err(io_err(&path))
    };
    write_file("vectors.npy", &|w| {
        w.write_all(&npy_header(rows.len(), meta.dim))?;
        for (_, v) in rows {
            for x in v {
                w.write_all(&x.to_le_bytes())?;
            }
        }
        Ok(())
    })?;
    write_file("chunks.jsonl", &|w| {
        for (r, _) in rows {
            serde_json::to_writer(&mut *w, r)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })?;
    // Without the `embed` feature there is no keyword index to write (it is optional:
    // readers build one when they need it).
    #[cfg(feature = "embed")]
    keyword::build(
        Some(&new.join(KEYWORD_DIR)),
        rows.iter().enumerate().map(|(i, (r, _))| entry(i, r)),
    )
    .map_err(|why| CollectionError::Io {
        path: new.join(KEYWORD_DIR),
        why,
    })?;
    #[cfg(feature = "embed")]
    if rows.len() >= crate::ann::ANN_MIN && meta.dim > 0 {
        let mut flat = Vec::with_capacity(rows.len() * meta.dim);
        rows.iter().for_each(|(_, v)| flat.extend_from_slice(v));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let path = new.join(crate::ann::ANN_FILE);
        crate::ann::build(&path, &flat, meta.dim, threads)
            .map_err(|why| CollectionError::Io { path, why })?;
    }
    write_file("files.jsonl", &|w| {
        for f in files {
            serde_json::to_writer(&mut *w, f)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })?;
    write_file("collection.json", &|w| {
        serde_json::to_writer_pretty(&mut *w, meta)?;
        w.write_all(b"\n")
    })?;
    sync_dir(&new)?;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let old = sibling(dir, ".old");
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(io_err(dir))?;
    }
    std::fs::rename(&new, dir).map_err(io_err(&new))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), CollectionError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The header of a NumPy v1.0 `.npy` file holding `rows × dim` little-endian f32.
pub fn npy_header(rows: usize, dim: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    // magic (6) + version (2) + length (2) + dict + padding + '\n', a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let len = dict.len() + pad + 1;
    let mut out = Vec::with_capacity(10 + len);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out
}

/// Parse a `.npy` file of 2-D little-endian f32 in C order: its shape and data bytes.
pub fn npy_parse(bytes: &[u8]) -> Result<((usize, usize), &[u8]), String> {
    let ((rows, dim), start) = npy_read_header(bytes)?;
    let data = &bytes[start..];
    let want = npy_data_len(rows, dim)?;
    if data.len() as u64 != want {
        return Err(format!(
            "{} data bytes for shape ({rows}, {dim}), expected {want}",
            data.len(),
        ));
    }
    Ok(((rows, dim), data))
}

/// The bytes of a (rows, dim) f32 array.
fn npy_data_len(rows: usize, dim: usize) -> Result<u64, String> {
    (rows as u64)
        .checked_mul(dim as u64)
        .and_then(|n| n.checked_mul(4))
        .ok_or_else(|| format!("shape ({rows}, {dim}) is too big"))
}

/// The shape of a `.npy` file of f32 rows and where its data starts, from its first bytes.
fn npy_read_header(bytes: &[u8]) -> Result<((usize, usize), usize), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated .npy header")?;
    if !header.contains("'descr': '<f4'") {
        return Err(format!(
            "expected little-endian f32 ('<f4'), header is {header}"
        ));
    }
    if header.contains("'fortran_order': True") {
        return Err("expected C order, found Fortran order".into());
    }
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or("no shape in .npy header")?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|e| format!("bad shape {shape}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let (rows, dim) = match dims[..] {
        [r, d] => (r, d),
        _ => return Err(format!("expected a 2-D array, shape is ({shape})")),
    };
    Ok(((rows, dim), start + len))
}

/// Whether the files of the collection in `dir` have the sizes `meta` says, read cheaply
/// (the vectors' header and size, the chunks' size and last byte): what a listing tells
/// of a damaged collection before a query trips on it.
fn check_files(dir: &Path, meta: &Meta) -> Result<(), CollectionError> {
    use std::io::{Read, Seek, SeekFrom};
    let npy = dir.join("vectors.npy");
    let mut f = std::fs::File::open(&npy).map_err(io_err(&npy))?;
    let len = f.metadata().map_err(io_err(&npy))?.len();
    let mut head = Vec::new();
    (&mut f)
        .take(64 << 10)
        .read_to_end(&mut head)
        .map_err(io_err(&npy))?;
    let ((rows, dim), start) = npy_read_header(&head).map_err(|why| corrupt(&npy, why))?;
    if (rows, dim) != (meta.count, meta.dim) {
        return Err(corrupt(
            &npy,
            format!(
                "shape ({rows}, {dim}) does not match collection.json ({}, {})",
                meta.count, meta.dim
            ),
        ));
    }
    let want = npy_data_len(rows, dim).map_err(|why| corrupt(&npy, why))? + start as u64;
    if len != want {
        return Err(corrupt(
            &npy,
            format!("{len} bytes, {want} expected (truncated?)"),
        ));
    }
    let cpath = dir.join("chunks.jsonl");
    let mut c = std::fs::File::open(&cpath).map_err(io_err(&cpath))?;
    let clen = c.metadata().map_err(io_err(&cpath))?.len();
    if meta.count > 0 {
        let mut last = [0u8];
        c.seek(SeekFrom::Start(clen.saturating_sub(1)))
            .and_then(|_| c.read_exact(&mut last))
            .map_err(io_err(&cpath))?;
        if clen < meta.count as u64 || last[0] != b'\n' {
            return Err(corrupt(&cpath, "cut off (truncated?)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(source: &str, index: u32) -> ChunkRow {
        ChunkRow {
            source: source.into(),
            hash: "h".into(),
            index,
            start: 0,
            end: 1,
            text: format!("{source} {index}"),
            title: None,
            headings: Vec::new(),
        }
    }

    fn unit(dim: usize, hot: usize) -> Vec<f32> {
        let mut v = vec![0.0; dim];
        v[hot] = 1.0;
        v
    }

    #[test]
    fn write_open_search_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        let rows: Vec<_> = (0..5)
            .map(|i| (row("a.md", i), unit(10, i as usize)))
            .collect();
        let meta = Meta {
            format: FORMAT.into(),
            version: VERSION,
            name: "c".into(),
            model: "m".into(),
            model_bytes: 1,
            dim: 10,
            count: 5,
            files: 1,
            metric: "cosine".into(),
            normalized: true,
            input: "/x".into(),
            updated_ms: 0,
            chunking: None,
        };
        write(&dir, &meta, &rows, &[]).unwrap();
        let c = Collection::open(&dir).unwrap();
        assert_eq!(c.len(), 5);
        let mut q = unit(10, 3);
        q[4] = 0.5;
        let hits = c.search(&q, 2);
        assert_eq!(hits.iter().map(|h| h.row).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(c.row(3).unwrap(), rows[3].0);
        assert_eq!(c.vector(2), &rows[2].1[..]);
        // Replacing it leaves no siblings behind.
        write(&dir, &meta, &rows, &[]).unwrap();
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    fn meta(count: usize, dim: usize) -> Meta {
        Meta {
            format: FORMAT.into(),
            version: VERSION,
            name: "c".into(),
            model: "m".into(),
            model_bytes: 1,
            dim,
            count,
            files: 1,
            metric: "cosine".into(),
            normalized: true,
            input: "/x".into(),
            updated_ms: 0,
            chunking: None,
        }
    }

    #[cfg(feature = "embed")]
    #[test]
    fn modes_rank_by_vectors_words_or_both() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        let texts = [
            "the queue leases jobs to workers",
            "workers steal jobs from busy peers",
            "a vector index answers nearest neighbour queries",
            "the keyword index ranks chunks by their words",
        ];
        let rows: Vec<_> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut r = row("a.md", i as u32);
                r.text = (*t).into();
                (r, unit(4, i))
            })
            .collect();
        write(&dir, &meta(4, 4), &rows, &[]).unwrap();
        assert!(dir.join(KEYWORD_DIR).is_dir());
        let c = Collection::open(&dir).unwrap();
        let first = |mode, text, v: Option<&[f32]>| c.query(mode, text, v, 4).unwrap()[0].row;
        // The words point at row 1, the vector at row 2.
        let v = unit(4, 2);
        assert_eq!(first(Mode::Keyword, "steal from peers", None), 1);
        assert_eq!(first(Mode::Vector, "steal from peers", Some(&v)), 2);
        // Fused: row 2 (vector first, no keyword hit) against row 1 (the only keyword hit,
        // vector second by a little): a row both lists rank high wins.
        let mut v = unit(4, 2);
        v[1] = 0.9;
        assert_eq!(first(Mode::Hybrid, "steal from peers", Some(&v)), 1);
        // Without a vector, hybrid is keyword only.
        assert_eq!(
            c.query(Mode::Hybrid, "index words", None, 1).unwrap()[0].row,
            3
        );
        assert!("fuzzy".parse::<Mode>().unwrap_err().contains("hybrid"));
    }

    /// A filter is applied before ranking: in every mode only its files' rows come back,
    /// and as many as asked for even when they are the worst matches.
    #[cfg(feature = "embed")]
    #[test]
    fn a_filter_narrows_every_mode_before_ranking() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        // 40 rows over 4 files; each row's text and vector point at itself.
        let names = ["a.md", "b.html", "guide/c.md", "guide/d.txt"];
        let rows: Vec<_> = (0..40)
            .map(|i| {
                let mut r = row(names[i / 10], (i % 10) as u32);
                r.text = format!(
                    "lease queue worker {}",
                    ["alpha", "beta", "gamma", "delta"][i / 10]
                );
                (r, unit(40, i))
            })
            .collect();
        let files: Vec<FileEntry> = (0..4)
            .map(|f| FileEntry {
                path: names[f].into(),
                hash: "h".into(),
                chunks: 10,
                first_row: (f * 10) as u64,
                modified_ms: Some(1_000 * f as u64),
            })
            .collect();
        write(&dir, &meta(40, 40), &rows, &files).unwrap();
        let c = Collection::open(&dir).unwrap();
        let guide = crate::filter::Filter {
            source: Some("guide/**".into()),
            types: vec!["txt".into()],
            ..crate::filter::Filter::default()
        };
        let (allowed, n) = c.allowed(&guide.compile().unwrap()).unwrap();
        assert_eq!(n, 10);
        // The vector and the words both point at a.md's rows (0, and "alpha").
        let v = unit(40, 0);
        for mode in [Mode::Vector, Mode::Keyword, Mode::Hybrid] {
            let hits = c
                .query_in(mode, "worker alpha", Some(&v), 5, Some(&allowed))
                .unwrap();
            assert_eq!(hits.len(), 5, "{mode:?}: {hits:?}");
            assert!(
                hits.iter().all(|h| (30..40).contains(&h.row)),
                "{mode:?}: {hits:?}"
            );
            let unfiltered = c.query(mode, "worker alpha", Some(&v), 5).unwrap();
            assert!(
                unfiltered.iter().all(|h| h.row < 10),
                "{mode:?}: {unfiltered:?}"
            );
        }
        let recent = crate::filter::Filter {
            modified_after_ms: Some(2_000),
            ..crate::filter::Filter::default()
        };
        let (_, n) = c.allowed(&recent.compile().unwrap()).unwrap();
        assert_eq!(n, 20);
    }

    #[cfg(feature = "embed")]
    #[test]
    fn a_version_1_collection_is_still_queried_in_every_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        let rows: Vec<_> = (0..3)
            .map(|i| (row("b.md", i), unit(3, i as usize)))
            .collect();
        let mut m = meta(3, 3);
        m.version = 1;
        write(&dir, &m, &rows, &[]).unwrap();
        // What version 1 wrote: no keyword index.
        std::fs::remove_dir_all(dir.join(KEYWORD_DIR)).unwrap();
        let c = Collection::open(&dir).unwrap();
        assert_eq!(c.meta.version, 1);
        assert_eq!(c.query(Mode::Keyword, "b.md 2", None, 1).unwrap()[0].row, 2);
        let v = unit(3, 1);
        assert_eq!(c.query(Mode::Vector, "x", Some(&v), 1).unwrap()[0].row, 1);
        // A newer version than this myco reads is refused by name.
        let mut m = meta(3, 3);
        m.version = VERSION + 1;
        write(&dir, &m, &rows, &[]).unwrap();
        let err = Collection::open(&dir).unwrap_err().to_string();
        assert!(err.contains("newer myco"), "{err}");
    }

    #[test]
    fn listed_with_counts_and_removed_whole() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(list(&tmp.path().join("none")).unwrap().is_empty());
        let rows: Vec<_> = (0..3)
            .map(|i| (row("b.md", i), unit(3, i as usize)))
            .collect();
        for name in ["beta", "alpha"] {
            let mut m = meta(3, 3);
            m.name = name.into();
            write(&tmp.path().join(name), &m, &rows, &[]).unwrap();
        }
        std::fs::create_dir_all(tmp.path().join("gamma.new")).unwrap();
        std::fs::create_dir_all(tmp.path().join("broken")).unwrap();
        std::fs::write(tmp.path().join("broken/collection.json"), "{").unwrap();
        let all = list(tmp.path()).unwrap();
        let names: Vec<_> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["alpha", "beta", "broken"]);
        assert_eq!((all[0].chunks, all[0].dim, all[0].version), (3, 3, VERSION));
        assert_eq!(all[0].keyword, cfg!(feature = "embed"));
        assert!(all[0].bytes > 36 && all[0].error.is_none());
        assert!(all[2].error.as_deref().unwrap().contains("collection.json"));

        assert!(remove(tmp.path(), "alpha").unwrap());
        assert!(!tmp.path().join("alpha").exists());
        assert!(!tmp.path().join("alpha.old").exists());
        assert!(!remove(tmp.path(), "alpha").unwrap());
        assert!(remove(tmp.path(), "../x").is_err());
        assert!(remove(tmp.path(), "broken").unwrap());
        let names: Vec<_> = list(tmp.path())
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["beta"]);
    }

    #[test]
    fn interrupted_swap_is_recovered() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        std::fs::create_dir_all(sibling(&dir, ".old")).unwrap();
        std::fs::write(sibling(&dir, ".old").join("collection.json"), "{}").unwrap();
        std::fs::create_dir_all(sibling(&dir, ".new")).unwrap();
        recover(&dir).unwrap();
        assert!(dir.join("collection.json").exists());
        assert!(!sibling(&dir, ".new").exists());
    }

    #[test]
    fn npy_header_is_aligned_and_parses() {
        for (r, d) in [(0, 384), (7, 3), (123_456, 1024)] {
            let mut bytes = npy_header(r, d);
            assert_eq!(bytes.len() % 64, 0);
            bytes.extend(std::iter::repeat_n(0u8, r * d * 4));
            assert_eq!(npy_parse(&bytes).unwrap().0, (r, d));
        }
    }

    #[test]
    fn search_keeps_the_best_k() {
        let dim = 3;
        let vectors: Vec<f32> = (0..100).flat_map(|i| [i as f32, 0.0, 1.0]).collect();
        let hits = search(&vectors, dim, &[1.0, 0.0, 0.0], 3);
        assert_eq!(hits.iter().map(|h| h.row).collect::<Vec<_>>(), [99, 98, 97]);
        assert_eq!(dot(&[1.0; 19], &[2.0; 19]), 38.0);
    }
}
