//! Collections: a named set of embedding vectors with the chunks they came from, as written
//! by the archive pipeline and read by `myco query`.
//!
//! # On-disk format (version 1)
//!
//! A collection is a directory (`~/.myco/collections/NAME/`) of four files, all readable
//! without myco:
//!
//! - `collection.json`: `{"format": "myco-collection", "version": 1, "name", "model",
//!   "model_bytes", "dim", "count", "files", "metric": "cosine", "normalized": true,
//!   "input", "updated_ms"}`.
//! - `vectors.npy`: a NumPy v1.0 array, `<f4`, C order, shape `(count, dim)`; row *i* is the
//!   L2-normalised vector of chunk *i* (so a dot product is the cosine). `numpy.load` reads it.
//! - `chunks.jsonl`: line *i* is chunk *i*: `{"source", "hash", "index", "start", "end",
//!   "text"}`, where `source` is the file's path relative to the archive root, `hash` the
//!   SHA-256 of the file's bytes, `index` the chunk's number within the file, and
//!   `start..end` its byte range in the file's extracted text.
//! - `files.jsonl`: one line per file: `{"path", "hash", "chunks", "first_row"}`.
//!
//! Rows are sorted by `(source, index)`. A collection is replaced whole: the new one is
//! written beside it (`NAME.new`), synced, and renamed into place (the old one goes to
//! `NAME.old` for the moment between the two renames; [`recover`] finishes an interrupted
//! swap). Readers therefore see the old or the new collection, never a mix.

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "myco-collection";
pub const VERSION: u32 = 1;

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
}

/// One line of `chunks.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRow {
    pub source: String,
    pub hash: String,
    pub index: u32,
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// One line of `files.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub hash: String,
    pub chunks: u32,
    pub first_row: u64,
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
    if meta.format != FORMAT || meta.version != VERSION {
        return Err(corrupt(
            &path,
            format!(
                "format {} version {} (this myco reads {FORMAT} version {VERSION})",
                meta.format, meta.version
            ),
        ));
    }
    Ok(Some(meta))
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
        Ok(Collection {
            dir: dir.to_path_buf(),
            meta,
            vectors,
            chunks,
            lines,
        })
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
        search(&self.vectors, self.meta.dim, query, k)
    }
}

/// Exact top-`k` by dot product over `vectors` (rows of `dim` floats, contiguous).
pub fn search(vectors: &[f32], dim: usize, query: &[f32], k: usize) -> Vec<Hit> {
    if dim == 0 || query.len() != dim || k == 0 {
        return Vec::new();
    }
    // `top` is kept sorted best first; k is small, so insertion beats a heap.
    let mut top: Vec<Hit> = Vec::with_capacity(k + 1);
    for (row, v) in vectors.chunks_exact(dim).enumerate() {
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
    std::fs::create_dir_all(&new).map_err(io_err(&new))?;
    let write_file = |name: &str, f: &dyn Fn(&mut dyn Write) -> std::io::Result<()>| {
        let path = new.join(name);
        let file = std::fs::File::create(&path).map_err(io_err(&path))?;
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
    let data = &bytes[start + len..];
    if data.len() != rows * dim * 4 {
        return Err(format!(
            "{} data bytes for shape ({rows}, {dim}), expected {}",
            data.len(),
            rows * dim * 4
        ));
    }
    Ok(((rows, dim), data))
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
