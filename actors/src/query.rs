//! Search a collection: embed the query through the queue (an interactive `embed` job, so it
//! goes ahead of batch work and runs on whichever worker holds the model: see
//! [`crate::interactive`]), then rank its chunks by [`Mode`]: nearest vectors, BM25 over
//! their words (no embedding needed), or both fused by reciprocal rank (the default).
//!
//! Open collections are kept by the node ([`crate::collections`]) and opened again when
//! `collection.json` changes.

use std::sync::Arc;
use std::time::Instant;

use myco_jobs::archive::ModelRef;
use myco_jobs::collection::{self, Collection, Mode};
use serde::{Deserialize, Serialize};

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
    /// Chunks searched.
    pub searched: usize,
    pub embed_ms: f64,
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
    #[error("{0}")]
    Failed(String),
}

/// The collection `name` of this node, from the cache unless it changed on disk.
async fn load(node: &NodeHandle, name: &str) -> Result<Arc<Collection>, QueryError> {
    if !collection::valid_name(name) {
        return Err(QueryError::BadRequest(format!(
            "`{name}` is not a collection name (letters, digits, `-`, `_`, `.`)"
        )));
    }
    let dir = node.collections_dir().join(name);
    let open = node.collections().clone();
    tokio::task::spawn_blocking(move || {
        let _ = collection::recover(&dir);
        let meta = collection::read_meta(&dir)
            .map_err(|e| QueryError::Failed(e.to_string()))?
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
            .map_err(|e| QueryError::Failed(e.to_string()))
    })
    .await
    .map_err(|e| QueryError::Failed(e.to_string()))?
}

/// Answer a query on this node.
pub async fn query(node: &NodeHandle, req: QueryRequest) -> Result<QueryReply, QueryError> {
    if req.text.trim().is_empty() {
        return Err(QueryError::BadRequest("the query text is empty".into()));
    }
    if req.k == 0 || req.k > 1000 {
        return Err(QueryError::BadRequest(format!(
            "k = {} is out of range; ask for 1 to 1000 results",
            req.k
        )));
    }
    let c = load(node, &req.collection).await?;
    let model = ModelRef {
        name: c.meta.model.clone(),
        path: node.models_dir().join(&c.meta.model),
        bytes: c.meta.model_bytes,
    };
    let started = Instant::now();
    let vector = if req.mode.uses_vectors() {
        let vector = embed_now(node, model, vec![req.text.clone()])
            .await
            .map_err(|e| QueryError::Failed(e.0))?
            .pop()
            .ok_or_else(|| QueryError::Failed("the model returned no vector".into()))?;
        if vector.len() != c.meta.dim {
            return Err(QueryError::Failed(format!(
                "the query vector has {} dimensions and the collection {}: was it built with another model?",
                vector.len(),
                c.meta.dim
            )));
        }
        Some(vector)
    } else {
        None
    };
    let embed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    let (k, mode, text) = (req.k, req.mode, req.text.clone());
    let c2 = c.clone();
    let hits = tokio::task::spawn_blocking(move || c2.query(mode, &text, vector.as_deref(), k))
        .await
        .map_err(|e| QueryError::Failed(e.to_string()))?
        .map_err(|e| QueryError::Failed(e.to_string()))?;
    let search_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut out = Vec::with_capacity(hits.len());
    for (rank, h) in hits.into_iter().enumerate() {
        let row = c
            .row(h.row)
            .map_err(|e| QueryError::Failed(e.to_string()))?;
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
        searched: c.len(),
        embed_ms,
        search_ms,
        hits: out,
    })
}
