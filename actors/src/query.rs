//! Search a collection: embed the query, then rank its chunks by [`Mode`]: nearest vectors,
//! BM25 over their words (no embedding needed), or both fused (the default; see
//! [`myco_jobs::collection::fuse_scores`]).
//!
//! On a node ([`query`]) the query is embedded through the queue (an interactive `embed` job,
//! so it goes ahead of batch work and runs on whichever worker holds the model: see
//! [`crate::interactive`]), and open collections are kept by the node
//! ([`crate::collections`]) and opened again when `collection.json` changes. Without a node
//! ([`query_here`]) the model is loaded in this process and no queue is opened, so a home
//! whose queue another process holds (a `myco run`) can still be searched.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use myco_jobs::archive::ModelRef;
use myco_jobs::collection::{self, Collection, Mode};
use myco_jobs::filter::Filter;
use serde::{Deserialize, Serialize};

use crate::collections::Collections;
use crate::interactive::embed_now;
use crate::node::handle::NodeHandle;

/// `POST /api/query`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryRequest {
    pub collection: String,
    pub text: String,
    #[serde(default = "default_k")]
    pub k: usize,
    /// `hybrid` (the default), `vector` or `keyword`.
    #[serde(default)]
    pub mode: Mode,
    /// Only chunks of files that pass (source glob, types, modification time); applied
    /// before ranking.
    #[serde(default, skip_serializing_if = "Filter::is_empty")]
    pub filter: Filter,
}

fn default_k() -> usize {
    5
}

/// One nearest chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryHit {
    pub rank: usize,
    pub score: f32,
    pub source: String,
    pub index: u32,
    pub start: usize,
    pub end: usize,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryReply {
    pub collection: String,
    pub model: String,
    pub mode: Mode,
    /// Chunks searched: those the filter lets through (all of them without one).
    pub searched: usize,
    pub embed_ms: f64,
    /// What searching added to the embedding (in hybrid mode BM25 runs while the query is
    /// embedded, so this is less than the two searches took).
    pub search_ms: f64,
    pub hits: Vec<QueryHit>,
}

/// Why a query failed; `BadRequest` is the caller's to fix.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The collection's files cannot be read (truncated, garbled): rebuild it.
    #[error("{0}")]
    Damaged(String),
    /// The embedding model cannot embed the query (its files, or another model than the
    /// collection's).
    #[error("{0}")]
    Unavailable(String),
    /// A bug (a task that panicked).
    #[error("{0}")]
    Failed(String),
}

/// The collection `name` in `collections`, from `open` unless it changed on disk.
async fn load(
    open: &Collections,
    collections: &Path,
    name: &str,
) -> Result<Arc<Collection>, QueryError> {
    if !collection::valid_name(name) {
        return Err(QueryError::BadRequest(format!(
            "`{name}` is not a collection name (letters, digits, `-`, `_`, `.`)"
        )));
    }
    let dir = collections.join(name);
    let open = open.clone();
    tokio::task::spawn_blocking(move || {
        let _ = collection::recover(&dir);
        let meta = collection::read_meta(&dir)
            .map_err(|e| QueryError::Damaged(e.to_string()))?
            .ok_or_else(|| {
                QueryError::NotFound(
                    collection::CollectionError::Missing {
                        name: dir
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        dir: dir.clone(),
                    }
                    .to_string(),
                )
            })?;
        open.get(&dir, meta.updated_ms)
            .map_err(|e| QueryError::Damaged(e.to_string()))
    })
    .await
    .map_err(|e| QueryError::Failed(e.to_string()))?
}

/// Answer a query on this node.
pub async fn query(node: &NodeHandle, req: QueryRequest) -> Result<QueryReply, QueryError> {
    let embed = |model: ModelRef, text: String| async move {
        embed_now(node, model, vec![text])
            .await
            .map_err(|e| e.to_string())?
            .pop()
            .ok_or_else(|| "the model returned no vector".to_owned())
    };
    let place = Place {
        open: node.collections(),
        collections: &node.collections_dir(),
        models: &node.models_dir(),
    };
    answer(place, req, embed).await
}

/// Answer a query on the collections of `home` without a node: the model (when the mode
/// needs one) is loaded in this process for this query, on `threads` threads (0: every
/// core). Reads only collection and model files, never the queue.
pub async fn query_here(
    home: &Path,
    req: QueryRequest,
    threads: usize,
) -> Result<QueryReply, QueryError> {
    let root = home.to_path_buf();
    #[cfg(feature = "embed")]
    let embed = |model: ModelRef, text: String| async move {
        tokio::task::spawn_blocking(move || {
            let mut m = myco_jobs::embed::EmbedModel::load_with(&model.path, &root, threads)
                .map_err(|e| e.to_string())?;
            m.embed(&[text], 1)
                .map_err(|e| e.to_string())?
                .pop()
                .ok_or_else(|| "the model returned no vector".to_owned())
        })
        .await
        .map_err(|e| e.to_string())?
    };
    #[cfg(not(feature = "embed"))]
    let embed = |_: ModelRef, _: String| async move {
        let _ = (root, threads);
        Err::<Vec<f32>, _>(
            "this myco was built without the `embed` feature; rebuild with it, or query with --mode keyword"
                .to_owned(),
        )
    };
    let place = Place {
        open: &Collections::default(),
        collections: &myco_jobs::home::collections_dir(home),
        models: &myco_jobs::home::models_dir(home),
    };
    answer(place, req, embed).await
}

/// A blocking task's result, its failure a query's.
fn joined<T>(
    r: Result<Result<T, collection::CollectionError>, tokio::task::JoinError>,
) -> Result<T, QueryError> {
    r.map_err(|e| QueryError::Failed(e.to_string()))?
        .map_err(|e| QueryError::Damaged(e.to_string()))
}

/// Where a query's collection and model are found.
struct Place<'a> {
    open: &'a Collections,
    collections: &'a Path,
    models: &'a Path,
}

/// Answer `req` from `place`, its text embedded by `embed` when the mode needs a vector.
async fn answer<F, Fut>(
    place: Place<'_>,
    req: QueryRequest,
    embed: F,
) -> Result<QueryReply, QueryError>
where
    F: FnOnce(ModelRef, String) -> Fut,
    Fut: Future<Output = Result<Vec<f32>, String>>,
{
    if req.text.trim().is_empty() {
        return Err(QueryError::BadRequest("the query text is empty".into()));
    }
    if req.text.len() > 64 << 10 {
        return Err(QueryError::BadRequest(format!(
            "the query text is {} bytes; ask with at most 65536",
            req.text.len()
        )));
    }
    if req.k == 0 || req.k > 1000 {
        return Err(QueryError::BadRequest(format!(
            "k = {} is out of range; ask for 1 to 1000 results",
            req.k
        )));
    }
    let filter = req.filter.compile().map_err(QueryError::BadRequest)?;
    let c = load(place.open, place.collections, &req.collection).await?;
    let model = ModelRef {
        name: c.meta.model.clone(),
        path: place.models.join(&c.meta.model),
        bytes: c.meta.model_bytes,
    };
    let started = Instant::now();
    // The rows the filter lets through, once for both rankings.
    let (allowed, searched) = if req.filter.is_empty() {
        (None, c.len())
    } else {
        let c2 = c.clone();
        let (a, n) = joined(tokio::task::spawn_blocking(move || c2.allowed(&filter)).await)?;
        (Some(a), n)
    };
    let (k, mode) = (req.k, req.mode);
    let depth = k.max(collection::FUSE_DEPTH);
    // BM25 needs no vector: in hybrid mode it runs while the query is being embedded.
    let keyword = (mode != Mode::Vector).then(|| {
        let (c2, text, allowed) = (c.clone(), req.text.clone(), allowed.clone());
        let n = if mode == Mode::Keyword { k } else { depth };
        tokio::task::spawn_blocking(move || c2.keyword_hits(&text, n, allowed.as_ref()))
    });
    let mut embed_ms = 0.0;
    let vector_hits = if mode.uses_vectors() {
        let vector = embed(model, req.text.clone())
            .await
            .map_err(QueryError::Unavailable)?;
        embed_ms = started.elapsed().as_secs_f64() * 1000.0;
        if vector.len() != c.meta.dim {
            return Err(QueryError::Unavailable(format!(
                "the query vector has {} dimensions and the collection {}: was it built with another model?",
                vector.len(),
                c.meta.dim
            )));
        }
        let n = if mode == Mode::Vector { k } else { depth };
        let (c2, allowed) = (c.clone(), allowed.clone());
        Some(joined(
            tokio::task::spawn_blocking(move || Ok(c2.search_in(&vector, n, allowed.as_ref())))
                .await,
        )?)
    } else {
        None
    };
    let keyword_hits = match keyword {
        Some(task) => Some(joined(task.await)?),
        None => None,
    };
    let hits = match (vector_hits, keyword_hits) {
        (Some(v), Some(w)) => collection::fuse_scores(&[&v, &w], k),
        (Some(hits), None) | (None, Some(hits)) => hits,
        (None, None) => Vec::new(),
    };
    // What the search added to the embedding (BM25 overlaps it in hybrid mode).
    let search_ms = started.elapsed().as_secs_f64() * 1000.0 - embed_ms;
    let mut out = Vec::with_capacity(hits.len());
    for (rank, h) in hits.into_iter().enumerate() {
        let row = c
            .row(h.row)
            .map_err(|e| QueryError::Damaged(e.to_string()))?;
        out.push(QueryHit {
            rank: rank + 1,
            score: h.score,
            source: row.source,
            index: row.index,
            start: row.start,
            end: row.end,
            text: row.text,
            title: row.title,
            headings: row.headings,
        });
    }
    Ok(QueryReply {
        collection: req.collection,
        model: c.meta.model.clone(),
        mode: req.mode,
        searched,
        embed_ms,
        search_ms,
        hits: out,
    })
}
