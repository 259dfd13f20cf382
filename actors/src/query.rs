//! Search a collection: embed the query through the queue (an interactive `embed` job, so it
//! goes ahead of batch work and runs on whichever worker holds the model), then an exact
//! nearest-neighbour scan over the collection's vectors.
//!
//! Loaded collections are cached per process and reloaded when `collection.json` changes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use myco_jobs::Task;
use myco_jobs::archive::ModelRef;
use myco_jobs::collection::{self, Collection};
use myco_runtime::queue::{JobState, NewJob};
use serde::{Deserialize, Serialize};

use crate::node::NodeHandle;

/// Interactive requests go ahead of batch jobs (which default to 0).
pub const INTERACTIVE_PRIORITY: i32 = 500;

/// `POST /api/query`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryRequest {
    pub collection: String,
    pub text: String,
    #[serde(default = "default_k")]
    pub k: usize,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryReply {
    pub collection: String,
    pub model: String,
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

type Cache = Mutex<HashMap<PathBuf, (u64, Arc<Collection>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The collection `name` of this node, from the cache unless it changed on disk.
async fn load(node: &NodeHandle, name: &str) -> Result<Arc<Collection>, QueryError> {
    if !collection::valid_name(name) {
        return Err(QueryError::BadRequest(format!(
            "`{name}` is not a collection name (letters, digits, `-`, `_`, `.`)"
        )));
    }
    let dir = node.collections_dir().join(name);
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
        let mut cache = cache().lock().unwrap_or_else(|p| p.into_inner());
        if let Some((updated, c)) = cache.get(&dir)
            && *updated == meta.updated_ms
        {
            return Ok(c.clone());
        }
        let c = Arc::new(Collection::open(&dir).map_err(|e| QueryError::Failed(e.to_string()))?);
        cache.insert(dir, (c.meta.updated_ms, c.clone()));
        Ok(c)
    })
    .await
    .map_err(|e| QueryError::Failed(e.to_string()))?
}

/// Embed `texts` with `model` now: an interactive job through the queue, awaited.
pub async fn embed_now(
    node: &NodeHandle,
    model: ModelRef,
    texts: Vec<String>,
) -> Result<Vec<Vec<f32>>, QueryError> {
    let job = NewJob {
        task: Task::Embed {
            model,
            texts,
            batch_tokens: 8192,
            links: Vec::new(),
        },
        priority: INTERACTIVE_PRIORITY,
        max_attempts: 2,
        timeout_ms: 120_000,
        idempotency_key: None,
        children: Vec::new(),
    };
    let failed = |m: String| QueryError::Failed(m);
    let id = node
        .queue
        .submit(vec![job])
        .await
        .map_err(|e| failed(e.to_string()))?
        .first()
        .ok_or_else(|| failed("the queue accepted no job".into()))?
        .id;
    let rec = match tokio::time::timeout(
        Duration::from_secs(130),
        node.wait(id, Duration::from_millis(250)),
    )
    .await
    {
        Ok(Ok(rec)) => rec,
        Ok(Err(e)) => return Err(failed(e.to_string())),
        Err(_) => {
            let _ = node.cancel(id).await;
            return Err(failed(format!(
                "job {id} did not finish in time; it was cancelled"
            )));
        }
    };
    if rec.state != JobState::Done {
        let why = rec.last_error.map(|e| e.message).unwrap_or_default();
        return Err(failed(format!(
            "embedding job {id} ended {}: {why}",
            rec.state.name()
        )));
    }
    let q = node.queue.clone();
    let result = match tokio::task::spawn_blocking(move || q.result(id)).await {
        Ok(Ok(Some(bytes))) => bytes,
        other => {
            return Err(failed(format!(
                "job {id}'s result is unreadable: {other:?}"
            )));
        }
    };
    #[derive(Deserialize)]
    struct Line {
        vector: Vec<f32>,
    }
    result
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice::<Line>(l)
                .map(|l| l.vector)
                .map_err(|e| failed(format!("job {id}'s result is unreadable: {e}")))
        })
        .collect()
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
        path: node.models_dir.join(&c.meta.model),
        bytes: c.meta.model_bytes,
    };
    let started = Instant::now();
    let vector = embed_now(node, model, vec![req.text.clone()])
        .await?
        .pop()
        .ok_or_else(|| QueryError::Failed("the model returned no vector".into()))?;
    let embed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if vector.len() != c.meta.dim {
        return Err(QueryError::Failed(format!(
            "the query vector has {} dimensions and the collection {}: was it built with another model?",
            vector.len(),
            c.meta.dim
        )));
    }
    let started = Instant::now();
    let k = req.k;
    let c2 = c.clone();
    let hits = tokio::task::spawn_blocking(move || c2.search(&vector, k))
        .await
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
        });
    }
    Ok(QueryReply {
        collection: req.collection,
        model: c.meta.model.clone(),
        searched: c.len(),
        embed_ms,
        search_ms,
        hits: out,
    })
}
