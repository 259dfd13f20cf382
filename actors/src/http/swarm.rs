//! The swarm over HTTP: `/api/swarm` (members), `/api/plan` (how a pipeline job would be
//! placed), `/api/swarm/ping` (the remote call overhead), `/api/query` (search a
//! collection) and `/api/collections` (list them; `DELETE /api/collections/NAME`).

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};

use crate::http::error::ApiError;
use crate::node::handle::NodeHandle;
use crate::query::{QueryError, QueryReply, QueryRequest};
use crate::swarm::view::MemberView;

#[derive(Debug, Serialize, Deserialize)]
pub struct SwarmReply {
    pub nodes: Vec<MemberView>,
}

/// Nearest chunks of a collection to a text.
async fn query(
    State(node): State<NodeHandle>,
    body: axum::body::Bytes,
) -> Result<Json<QueryReply>, ApiError> {
    let req: QueryRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("cannot read the query: {e}"),
            "send {\"collection\": \"NAME\", \"text\": \"...\", \"k\": 5}",
        )
    })?;
    crate::query::query(&node, req)
        .await
        .map(Json)
        .map_err(|e| match e {
            QueryError::BadRequest(m) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                m,
                "send {\"collection\": \"NAME\", \"text\": \"...\", \"k\": 5}",
            ),
            QueryError::NotFound(m) => ApiError::new(
                StatusCode::NOT_FOUND,
                "no_collection",
                m,
                "list collections under ~/.myco/collections of the node",
            ),
            QueryError::Damaged(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "collection_damaged",
                m,
                "the collection's files are damaged: build it again (submit its archive job), or DELETE /api/collections/NAME",
            ),
            QueryError::Unavailable(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "model_unavailable",
                m,
                "check the embedding model's directory (model.onnx, tokenizer.json and its config files; ./setup.sh fetches the default again)",
            ),
            QueryError::Failed(m) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "query_failed",
                m,
                "see the node's log",
            ),
        })
}

/// `GET /api/collections`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CollectionsReply {
    pub collections: Vec<myco_jobs::collection::Summary>,
}

/// `DELETE /api/collections/NAME`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RemovedReply {
    pub name: String,
    pub removed: bool,
}

fn collection_failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "collections_failed",
        e.to_string(),
        "see the node's log",
    )
}

/// The collections in this node's home.
async fn collections(State(node): State<NodeHandle>) -> Result<Json<CollectionsReply>, ApiError> {
    let dir = node.collections_dir();
    let list = tokio::task::spawn_blocking(move || myco_jobs::collection::list(&dir))
        .await
        .map_err(collection_failed)?
        .map_err(collection_failed)?;
    Ok(Json(CollectionsReply { collections: list }))
}

/// Removes a collection of this node's home: its files are gone when this answers.
async fn remove_collection(
    State(node): State<NodeHandle>,
    Path(name): Path<String>,
) -> Result<Json<RemovedReply>, ApiError> {
    if !myco_jobs::collection::valid_name(&name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_collection",
            format!("`{name}` is not a collection name (letters, digits, `-`, `_`, `.`)"),
            "GET /api/collections lists them",
        ));
    }
    let dir = node.collections_dir();
    let open = node.collections().clone();
    let n = name.clone();
    let removed = tokio::task::spawn_blocking(move || {
        let removed = myco_jobs::collection::remove(&dir, &n);
        open.forget(&dir.join(&n));
        removed
    })
    .await
    .map_err(collection_failed)?
    .map_err(collection_failed)?;
    if !removed {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_collection",
            format!("no collection `{name}` on this node"),
            "GET /api/collections lists them",
        ));
    }
    Ok(Json(RemovedReply { name, removed }))
}

/// The swarm as this node sees it: itself first, then every peer it knows of.
async fn swarm(State(node): State<NodeHandle>) -> Json<SwarmReply> {
    Json(SwarmReply {
        nodes: node.members().await,
    })
}

#[derive(Debug, Deserialize)]
struct PlanQuery {
    model: String,
    n_ctx: Option<u32>,
}

/// `GET /api/plan`: how a pipeline job of this model would be placed now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanReply {
    pub model: String,
    pub architecture: String,
    pub layers: u32,
    pub n_ctx: u32,
    /// Everything, with the KV cache at `n_ctx`.
    pub total_bytes: u64,
    pub kv_bytes_per_layer: u64,
    /// The nodes up (holding the file or able to fetch their slice of it), with the memory
    /// each offers to stages.
    pub nodes: Vec<myco_runtime::plan::NodeMemory>,
    pub stages: Vec<myco_runtime::plan::Stage>,
    /// What each stage on a node without the file fetches, and from whom (a node that has
    /// the slice in its cache fetches nothing).
    #[serde(default)]
    pub fetches: Vec<PlannedFetch>,
    /// Why no plan exists, if none does.
    pub error: Option<String>,
    /// The model's content hash, once this node has read the file.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Replicas or a split, and why.
    #[serde(default)]
    pub choice: Option<PlanChoice>,
}

/// How the swarm runs a model: whole on each node that can hold it (replicas), or split in
/// layer ranges over several (a pipeline).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanChoice {
    /// `replicas` or `split`.
    pub mode: String,
    /// The nodes that can hold it whole (with the KV cache for `n_ctx` tokens).
    pub whole_on: Vec<String>,
    pub why: String,
}

/// Replicas when some node can hold the model whole: each request then runs on one node
/// with no hops, and requests spread over every such node; a split only for a model that fits
/// nowhere whole.
pub fn choose(total: u64, n_ctx: u32, nodes: &[myco_runtime::plan::NodeMemory]) -> PlanChoice {
    let whole_on: Vec<String> = nodes
        .iter()
        .filter(|n| n.free_bytes >= total)
        .map(|n| n.name.clone())
        .collect();
    let gib = |b: u64| format!("{:.2} GiB", b as f64 / f64::from(1u32 << 30));
    if whole_on.is_empty() {
        let most = nodes.iter().map(|n| n.free_bytes).max().unwrap_or(0);
        PlanChoice {
            mode: "split".into(),
            why: format!(
                "no node can hold it whole ({} with the KV cache for {n_ctx} tokens; the most one offers is {}): requests for it run as pipeline jobs, split as below",
                gib(total),
                gib(most)
            ),
            whole_on,
        }
    } else {
        PlanChoice {
            mode: "replicas".into(),
            why: format!(
                "it fits whole on {} of the {} nodes up ({}): requests and infer jobs for it run whole on one node each, spread over them (an idle node without the file pulls it when jobs wait for it); a split would only add hops. A pipeline job runs it whole too",
                whole_on.len(),
                nodes.len(),
                whole_on.join(", ")
            ),
            whole_on,
        }
    }
}

/// A stage's slice that its node will fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedFetch {
    pub node: String,
    pub first: u32,
    pub end: u32,
    pub bytes: u64,
    pub from: String,
}

#[cfg(not(feature = "pipeline"))]
async fn plan(Query(q): Query<PlanQuery>) -> Result<Json<PlanReply>, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "no_pipelines",
        format!(
            "this node was built without pipeline jobs, so it cannot plan `{}` (n_ctx {:?})",
            q.model, q.n_ctx
        ),
        "ask a node built with the `pipeline` feature (the default)",
    ))
}

#[cfg(feature = "pipeline")]
async fn plan(
    State(node): State<NodeHandle>,
    Query(q): Query<PlanQuery>,
) -> Result<Json<PlanReply>, ApiError> {
    let n_ctx = q.n_ctx.unwrap_or(4096).max(8);
    // Planning reads the model's header here: the node asked must hold the file.
    let path = node
        .find_model(&q.model)
        .await
        .ok()
        .map(|m| m.path)
        // A peer's model comes back as a bare file name (see `find_model`).
        .filter(|p| p.is_absolute() && p.is_file())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!("this node ({}) holds no model `{}`", node.name(), q.model),
                "put the GGUF file in ~/.myco/models, or ask a node that holds it (--api)",
            )
        })?;

    let (info, shape, nodes, planned) =
        crate::pipeline::runner::plan_for(node.pipeline(), &path, n_ctx)
            .await
            .map_err(|why| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_model",
                    why,
                    "layer-range stages need a llama, mistral or qwen2 GGUF",
                )
            })?;
    let (stages, error) = match planned {
        Ok(s) => (s, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let sha256 = myco_jobs::model::identity::known(&path, &node.cache_dir());
    let holders: Vec<&str> = nodes
        .iter()
        .filter(|n| n.holds)
        .map(|n| n.name.as_str())
        .collect();
    let members = node.members().await;
    let fetches = stages
        .iter()
        .filter(|s| !holders.contains(&s.node.as_str()))
        .filter(|s| {
            // Already in that node's cache: nothing to fetch.
            !members.iter().any(|m| {
                m.name == s.node
                    && m.info.as_ref().is_some_and(|i| {
                        i.cached.iter().any(|c| {
                            Some(&c.source) == sha256.as_ref()
                                && (c.first, c.end) == (s.first, s.end)
                        })
                    })
            })
        })
        .map(|s| PlannedFetch {
            node: s.node.clone(),
            first: s.first,
            end: s.end,
            bytes: crate::pipeline::runner::slice_bytes(&info, s.first, s.end),
            // The runner's node first (it holds the file), as the stage asks.
            from: if holders.contains(&node.name()) {
                node.name().to_owned()
            } else {
                holders
                    .first()
                    .map_or_else(String::new, |h| (*h).to_owned())
            },
        })
        .collect();
    let choice = Some(choose(shape.total_bytes(), n_ctx, &nodes));
    Ok(Json(PlanReply {
        model: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        architecture: info.hp.arch.clone(),
        layers: info.hp.n_layer,
        n_ctx,
        total_bytes: shape.total_bytes(),
        kv_bytes_per_layer: shape.kv_bytes_per_layer,
        nodes,
        stages,
        choice,
        fetches,
        error,
        sha256,
    }))
}

#[derive(Debug, Deserialize)]
struct PingQuery {
    peer: String,
    count: Option<u32>,
}

/// Round trip of calls to a peer's PeerService against the same calls to our own (an
/// in-process actor call): the remote call overhead.
async fn ping(
    State(node): State<NodeHandle>,
    Query(q): Query<PingQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let count = q.count.unwrap_or(200).clamp(1, 100_000);
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_peer",
            format!("no peer `{}` is up", q.peer),
            "see `myco swarm`",
        )
    };
    let (remote_us, local_us) = node.ping(&q.peer, count).await.ok_or_else(not_found)?;
    Ok(Json(serde_json::json!({
        "peer": q.peer,
        "count": count,
        "remote_us": remote_us,
        "local_us": local_us,
        "overhead_us": remote_us - local_us,
        "ratio": remote_us / local_us.max(1e-9),
    })))
}

/// `POST /api/models/pull` body.
#[derive(Debug, Deserialize)]
pub struct PullRequest {
    pub model: String,
    /// The node to fetch from (default: the first that holds it).
    #[serde(default)]
    pub from: Option<String>,
}

/// Fetch a model from a peer into this node's models folder (the owner only: it writes
/// into the node's home).
async fn pull(
    State(node): State<NodeHandle>,
    axum::Extension(caller): axum::Extension<crate::http::auth::Caller>,
    Json(req): Json<PullRequest>,
) -> Result<Json<crate::node::handle::PulledModel>, ApiError> {
    if !caller.owner {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "owner_only",
            "only the node's owner may add models to it".into(),
            "run `myco models pull` on the node's machine (it uses the API token)",
        ));
    }
    node.pull_model(&req.model, req.from.as_deref())
        .await
        .map(Json)
        .map_err(|why| {
            ApiError::new(
                StatusCode::CONFLICT,
                "pull_failed",
                why,
                "see `myco models` for what each node holds",
            )
        })
}

/// `DELETE /api/models/{name}`: remove a model from this node (the owner only).
async fn remove_model(
    State(node): State<NodeHandle>,
    axum::Extension(caller): axum::Extension<crate::http::auth::Caller>,
    Path(name): Path<String>,
) -> Result<Json<crate::travel::RemovedModel>, ApiError> {
    if !caller.owner {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "owner_only",
            "only the node's owner may remove models from it".into(),
            "run `myco models rm` on the node's machine (it uses the API token)",
        ));
    }
    let bare = name.strip_suffix(".gguf").unwrap_or(&name);
    if bare.is_empty() || bare.contains('/') || bare.starts_with('.') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_model",
            format!("`{name}` is not a model file name"),
            "myco models lists them",
        ));
    }
    node.remove_model(bare).await.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "this node ({}) holds no model `{bare}` and no slice of it",
                node.name()
            ),
            "myco models lists what each node holds and has cached",
        )
    })
}

/// The swarm's and collections' routes.
pub fn routes() -> Router<NodeHandle> {
    Router::new()
        .route("/api/swarm", get(swarm))
        .route("/api/plan", get(plan))
        .route("/api/query", post(query))
        .route("/api/collections", get(collections))
        .route("/api/collections/{name}", delete(remove_collection))
        .route("/api/swarm/ping", get(ping))
        .route("/api/models/pull", post(pull))
        .route("/api/models/{name}", delete(remove_model))
}

#[cfg(test)]
mod tests {
    use myco_runtime::plan::NodeMemory;

    use super::choose;

    fn node(name: &str, free: u64) -> NodeMemory {
        NodeMemory {
            name: name.into(),
            holds: true,
            free_bytes: free,
            gpu_bytes: 0,
        }
    }

    #[test]
    fn replicas_where_a_node_holds_the_model_whole_else_a_split() {
        let nodes = [node("a", 10), node("b", 6), node("c", 4)];
        let c = choose(5, 512, &nodes);
        assert_eq!(
            (c.mode.as_str(), c.whole_on.clone()),
            ("replicas", vec!["a".to_owned(), "b".to_owned()])
        );
        assert!(c.why.contains("2 of the 3 nodes up (a, b)"), "{}", c.why);
        let c = choose(11, 512, &nodes);
        assert_eq!(c.mode, "split");
        assert!(c.whole_on.is_empty());
        assert!(c.why.contains("no node can hold it whole"), "{}", c.why);
    }
}
