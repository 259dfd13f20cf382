//! The approximate nearest-neighbour index of a big collection: HNSW through usearch.
//!
//! Below [`ANN_MIN`] vectors an exact scan is fast enough (a few ms) and no index is
//! written. From there on the collection holds `vectors.usearch`: an HNSW graph over its
//! rows (key = row number), inner-product metric on the L2-normalised vectors, vectors kept
//! in it as f32 (f16 halved the file but, without usearch's SIMD kernels, which this build
//! leaves out, converting every f16 made building 3.7x and searching 1.8x slower: 50k
//! vectors built in 108 s against 29 s). It is memory-mapped when opened (`view`): the
//! pages the searches touch are read in, nothing is copied. A search asks the graph for more
//! candidates than it returns and ranks those by their exact dot product with the query
//! (from `vectors.npy`), so scores are exact cosines.
//!
//! This file must not know about chunks, keywords or the queue.

use std::path::Path;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// Collections with fewer vectors are searched exactly, without an index.
pub const ANN_MIN: usize = 20_000;
/// The index's file in a collection's directory.
pub const ANN_FILE: &str = "vectors.usearch";
/// HNSW's links per node (M).
const CONNECTIVITY: usize = 16;
/// Candidates kept while inserting (efConstruction).
const EXPANSION_ADD: usize = 128;
/// Candidates kept while searching (efSearch), at least, up to [`EF_ROWS`] vectors; more for
/// a bigger index (see [`AnnIndex::want`]) and for a bigger `k`.
const EXPANSION_SEARCH: usize = 128;
/// The index size up to which [`EXPANSION_SEARCH`] is enough: at 200k vectors it found
/// recall@10 1.0 on the ann bench, at 1M 0.914, so beyond this efSearch grows with log2 of
/// the size (1M: 425).
const EF_ROWS: usize = 200_000;
/// Candidates ranked exactly per result asked for.
const RERANK: usize = 4;

fn options(dim: usize) -> IndexOptions {
    IndexOptions {
        dimensions: dim,
        metric: MetricKind::IP,
        quantization: ScalarKind::F32,
        connectivity: CONNECTIVITY,
        expansion_add: EXPANSION_ADD,
        expansion_search: EXPANSION_SEARCH,
        multi: false,
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// An open index.
pub struct AnnIndex {
    index: Index,
}

impl std::fmt::Debug for AnnIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnnIndex")
            .field("size", &self.index.size())
            .finish_non_exhaustive()
    }
}

/// Builds the index of `vectors` (rows of `dim` floats) with `threads` threads and saves it
/// to `path`.
///
/// # Errors
///
/// usearch's, as text (memory, I/O).
pub fn build(path: &Path, vectors: &[f32], dim: usize, threads: usize) -> Result<(), String> {
    if dim == 0 {
        return Err("vectors of no dimensions".into());
    }
    let rows = vectors.len() / dim;
    let index = Index::new(&options(dim)).map_err(err)?;
    let threads = threads.clamp(1, 64);
    index
        .reserve_capacity_and_threads(rows, threads)
        .map_err(err)?;
    let per = rows.div_ceil(threads).max(1);
    let failed = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for (t, part) in vectors.chunks(per * dim).enumerate() {
            let (index, failed) = (&index, &failed);
            s.spawn(move || {
                for (i, v) in part.chunks_exact(dim).enumerate() {
                    let row = (t * per + i) as u64;
                    if let Err(e) = index.add(row, v) {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let path_str = path
        .to_str()
        .ok_or_else(|| format!("{}: not a UTF-8 path", path.display()))?;
    index.save(path_str).map_err(err)
}

/// Opens the index at `path` for vectors of `dim` floats, memory-mapped.
///
/// # Errors
///
/// usearch's, as text: a missing, damaged or mismatched file.
pub fn open(path: &Path, dim: usize) -> Result<AnnIndex, String> {
    let path_str = path
        .to_str()
        .ok_or_else(|| format!("{}: not a UTF-8 path", path.display()))?;
    let index = Index::new(&options(dim)).map_err(err)?;
    index.view(path_str).map_err(err)?;
    if index.dimensions() != dim {
        return Err(format!(
            "the index holds {}-dimensional vectors, the collection {dim}",
            index.dimensions()
        ));
    }
    Ok(AnnIndex { index })
}

impl AnnIndex {
    /// How many vectors it holds.
    pub fn len(&self) -> usize {
        self.index.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Candidate rows for the `k` nearest to `query`: more than `k` (see [`RERANK`]), for the
    /// caller to rank exactly.
    ///
    /// # Errors
    ///
    /// usearch's, as text.
    pub fn candidates(&self, query: &[f32], k: usize) -> Result<Vec<usize>, String> {
        let want = self.want(k);
        if want == 0 {
            return Ok(Vec::new());
        }
        let found = self.index.search(query, want).map_err(err)?;
        Ok(keys(found.keys))
    }

    /// How many candidates to ask for, the search's expansion set to suit.
    fn want(&self, k: usize) -> usize {
        let want = (k * RERANK).max(k).min(self.len());
        let grow = (self.len() as f64 / EF_ROWS as f64).log2().max(0.0);
        let ef = (EXPANSION_SEARCH as f64 * (1.0 + grow)) as usize;
        self.index.change_expansion_search(ef.max(want));
        want
    }

    /// [`AnnIndex::candidates`] among the rows `keep` accepts: the graph is walked through
    /// every row, and only accepted ones are returned.
    ///
    /// # Errors
    ///
    /// usearch's, as text.
    pub fn candidates_where(
        &self,
        query: &[f32],
        k: usize,
        keep: impl Fn(usize) -> bool,
    ) -> Result<Vec<usize>, String> {
        let want = self.want(k);
        if want == 0 {
            return Ok(Vec::new());
        }
        let found = self
            .index
            .filtered_search(query, want, |key| usize::try_from(key).is_ok_and(&keep))
            .map_err(err)?;
        Ok(keys(found.keys))
    }
}

fn keys(keys: Vec<u64>) -> Vec<usize> {
    keys.into_iter()
        .filter_map(|k| usize::try_from(k).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Deterministic unit vectors around a few centres.
    fn vectors(rows: usize, dim: usize) -> Vec<f32> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..8).map(|_| (0..dim).map(|_| next()).collect()).collect();
        let mut out = Vec::with_capacity(rows * dim);
        for r in 0..rows {
            let c = &centres[r % centres.len()];
            let v: Vec<f32> = c.iter().map(|x| x + 0.5 * next()).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            out.extend(v.iter().map(|x| x / n));
        }
        out
    }

    /// 3,000 vectors of 32 dimensions, and their index built, saved and opened.
    fn built() -> (tempfile::TempDir, std::path::PathBuf, Vec<f32>, AnnIndex) {
        let (rows, dim) = (3_000, 32);
        let v = vectors(rows, dim);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(ANN_FILE);
        build(&path, &v, dim, 2).unwrap();
        let ann = open(&path, dim).unwrap();
        (tmp, path, v, ann)
    }

    #[test]
    fn built_saved_viewed_and_its_candidates_hold_the_exact_nearest() {
        let (rows, dim) = (3_000, 32);
        let (tmp, path, v, ann) = built();
        assert_eq!(ann.len(), rows);
        let mut found = 0;
        for q in (0..rows).step_by(97) {
            let query = &v[q * dim..(q + 1) * dim];
            // The exact 10 nearest, by a plain scan.
            let mut exact: Vec<(f32, usize)> = v
                .chunks_exact(dim)
                .enumerate()
                .map(|(i, x)| (x.iter().zip(query).map(|(a, b)| a * b).sum(), i))
                .collect();
            exact.sort_by(|a, b| b.0.total_cmp(&a.0));
            let cands = ann.candidates(query, 10).unwrap();
            assert!(cands.len() >= 10);
            found += exact[..10]
                .iter()
                .filter(|(_, i)| cands.contains(i))
                .count();
        }
        let asked = rows.div_ceil(97) * 10;
        assert!(found * 100 >= asked * 95, "recall {found}/{asked}");
        assert!(open(&path, dim + 1).is_err());
        assert!(open(&tmp.path().join("missing"), dim).is_err());
    }

    #[test]
    fn filtered_candidates_are_only_kept_rows_and_enough_of_them() {
        let dim = 32;
        let (_tmp, _, v, ann) = built();
        // A query at an odd row; only even rows kept.
        let query = &v[101 * dim..102 * dim];
        let cands = ann.candidates_where(query, 10, |r| r % 2 == 0).unwrap();
        assert!(cands.len() >= 10, "{cands:?}");
        assert!(cands.iter().all(|r| r % 2 == 0), "{cands:?}");
        assert!(ann.candidates(query, 10).unwrap().contains(&101));
    }
}
