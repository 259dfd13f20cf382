//! A running node, the composition root: it opens the queue, starts the actor tree and
//! (optionally) the HTTP API, wires them together, and runs the shutdown protocol.
//!
//! `myco node` starts one with the API; `myco run` starts one without it, submits a job and
//! waits. Everything else reaches the node through [`handle::NodeHandle`].

pub mod handle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use myco_runtime::access::{Access, ApiToken};
use myco_runtime::cluster::discovery::DiscoveryConfig;
use myco_runtime::cluster::secret::SwarmSecret;
use myco_runtime::cluster::wire::Role;
use myco_runtime::config::{ConfigError, Home, NodeConfig};
use myco_runtime::queue::{Queue, QueueError, QueueOptions};
use ractor::Actor;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::coordinator::Coordinator;
use crate::node::handle::{NodeHandle, Parts};
use crate::supervisor::{NodeSupervisor, SupervisorMsg};
use crate::swarm::membership::Membership;
use crate::swarm::view::Swarm;
use crate::worker::ExecutorFactory;

/// Errors starting or stopping a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(
        "cannot listen on {addr}: {source}; is another node running? pick a free address with --api (or MYCO_API)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the node's actors: {0}")]
    Actors(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What a node runs besides its queue and workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Services {
    /// Serve the HTTP API.
    pub api: bool,
    /// Join the swarm (cluster port, discovery, heartbeats, stealing).
    pub cluster: bool,
}

impl Services {
    /// `myco node`: everything.
    pub const NODE: Services = Services {
        api: true,
        cluster: true,
    };
    /// `myco run`: the queue and workers of this process only.
    pub const EMBEDDED: Services = Services {
        api: false,
        cluster: false,
    };
}

/// A started node.
#[derive(Debug)]
pub struct Node {
    handle: NodeHandle,
    config: NodeConfig,
    supervisor: ractor::ActorRef<SupervisorMsg>,
    supervisor_task: JoinHandle<()>,
    api: Option<(SocketAddr, CancellationToken, JoinHandle<()>)>,
    home: Home,
    /// Ends the background hashing of the node's models at shutdown.
    identify_stop: Arc<std::sync::atomic::AtomicBool>,
    /// The transfer listener's task, if it serves one.
    transfers: Option<JoinHandle<()>>,
}

impl Node {
    /// Open the queue under `home`, start the actors, serve the API if `services.api`, and
    /// join the swarm if `services.cluster`.
    pub async fn start(
        home: Home,
        config: NodeConfig,
        services: Services,
    ) -> Result<Node, NodeError> {
        let serve_api = services.api;
        config.validate()?;
        home.ensure()?;
        let name = config.node_name();
        // The jobs the last run was running when it ended without finishing them.
        let running_path = home.root().join("running");
        let died_running = myco_runtime::running::Running::read(&running_path);
        let oom_killed = myco_runtime::running::Running::killed_for_memory(&died_running);
        if !oom_killed.is_empty() {
            tracing::warn!(
                jobs = oom_killed.len(),
                "the last run of this node was killed for memory while running jobs: each is queued again once, and goes dead if it was running at such a kill before"
            );
        }
        let opts = QueueOptions {
            node: name.clone(),
            backoff_base_ms: config.backoff_base.as_millis() as u64,
            backoff_max_ms: config.backoff_max.as_millis() as u64,
            retention_interactive_ms: config.retention.as_millis() as u64,
            retention_batch_ms: config.batch_retention.as_millis() as u64,
            // Fault injection for the disk-full tests; unset in any real use.
            disk_full_while: std::env::var_os(myco_runtime::queue::FAULT_DISK_FULL_ENV)
                .map(std::path::PathBuf::from),
            oom_killed,
            ..QueueOptions::default()
        };
        let path = home.queue_path();
        let queue = tokio::task::spawn_blocking(move || Queue::open(&path, opts))
            .await
            .map_err(|e| NodeError::Actors(e.to_string()))??;
        // The queue is this process's: what the last run was running is in it now.
        let running = Arc::new(myco_runtime::running::Running::create(&running_path));
        let workers = config.worker_count();
        let budget = crate::budget::CpuBudget::new(config.thread_count());
        // The executives run LLM requests: each waits on its request while the model's
        // batch decodes them together, so there are as many as the batch takes.
        let parallel = config.parallel_count();
        let executives = parallel as usize;
        let exec_home = home.root().to_path_buf();
        // The node's LLMs, loaded once and shared by its own executors (not by other nodes
        // of the same process), decoding with the budget's cores.
        #[cfg(feature = "infer")]
        let models = myco_jobs::llm::infer::Models::with_gpu(myco_jobs::llm::infer::GpuPolicy {
            layers: config.gpu_layers,
            memory: config.gpu_memory,
        })
        .serving(myco_jobs::llm::infer::Serving {
            parallel,
            threads: budget.cores(),
        });
        #[cfg(not(feature = "infer"))]
        let models = myco_jobs::llm::infer::Models::new();
        let embed_threads = budget.batch_threads(workers);
        let factory: ExecutorFactory = Arc::new(move || {
            Box::new(
                myco_jobs::CpuExecutor::with_models(&exec_home, models.clone())
                    .embed_threads(embed_threads),
            ) as Box<dyn myco_jobs::Executor>
        });
        // The API listener is bound first so that the swarm can advertise its address.
        let api_listener = if serve_api {
            Some(
                tokio::net::TcpListener::bind(config.api)
                    .await
                    .map_err(|source| NodeError::Bind {
                        addr: config.api,
                        source,
                    })?,
            )
        } else {
            None
        };
        let api_addr = match &api_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let caps = tokio::task::spawn_blocking(crate::features::detect)
            .await
            .map_err(|e| NodeError::Actors(e.to_string()))?;
        let gpu = !caps.gpus.is_empty();
        let mut transfers = None;
        // The client end of transfers (this node fetching from a peer).
        let mut fetcher = None;
        // Transfers in flight and the model cache, for heartbeats and the API.
        let board = myco_runtime::cluster::transfer::Board::default();
        board.rescan(&myco_jobs::home::cache_dir(home.root()));
        let membership = if services.cluster {
            let (secret, created) = SwarmSecret::load_or_create(&home.secret_path())
                .map_err(|e| NodeError::Actors(e.to_string()))?;
            if created {
                tracing::info!(
                    path = %home.secret_path().display(),
                    "created a new swarm secret; other machines join with `myco invite`"
                );
            }
            let caps = caps.clone();
            // The transfer listener: the model files this node holds, by content hash, to
            // members of the swarm only (mutual TLS with the swarm's authority).
            let transfer = serve_transfers(&home, &config, &secret, &board).await;
            fetcher = secret.tls().ok();
            let mut roles = vec![Role::Coordinator];
            if workers > 0 {
                roles.push(Role::Worker);
            }
            if !caps.gpus.is_empty() {
                roles.push(Role::Executive);
            }
            let (publisher, swarm) = Swarm::channel(&name);
            let membership = Membership {
                name: name.clone(),
                secret,
                listen: config.cluster,
                join: config.join.clone(),
                discovery: config.discovery.then(|| DiscoveryConfig {
                    iface: config.discovery_iface,
                    port: config.discovery_port,
                    ..DiscoveryConfig::default()
                }),
                heartbeat: config.heartbeat,
                peer_timeout: config.peer_timeout,
                api_addr: api_addr.map(|a| a.to_string()),
                caps,
                models_dir: home.models_dir(),
                kinds: crate::features::kinds(),
                roles,
                slots: (workers + executives) as u32,
                stage_memory: config.stage_memory,
                gpu_memory: config.gpu_memory,
                publisher,
                events: None,
                transfer_port: transfer.as_ref().map(|t| t.0),
                board: board.clone(),
            };
            transfers = transfer.map(|t| t.1);
            Some((membership, swarm))
        } else {
            None
        };
        let swarm = membership
            .as_ref()
            .map(|(_, s): &(Membership, Swarm)| s.clone());
        let travel = swarm.as_ref().map(|swarm| crate::travel::Travel {
            board: board.clone(),
            tls: fetcher.clone(),
            cache: myco_jobs::home::cache_dir(home.root()),
            cap: config
                .model_cache
                .unwrap_or(myco_runtime::config::DEFAULT_MODEL_CACHE),
            swarm: Some(swarm.clone()),
        });
        let streams = crate::streams::Streams::default();
        // What jobs submitted by clients (not the owner) may read: below the data roots, or
        // a model in the models folder. Checked at submit, and again when such a job runs.
        let client_access = Access::below(
            &config
                .data_roots
                .iter()
                .cloned()
                .chain([home.models_dir()])
                .collect::<Vec<_>>(),
        );
        let supervisor = NodeSupervisor {
            coordinator: Coordinator {
                queue: queue.clone(),
                kinds: crate::features::kinds(),
                home: home.root().to_path_buf(),
                lease: config.lease,
                tick: config.tick,
                prefetch: (workers * 16).max(32),
                slots: (workers + executives) as u32,
                executives: executives as u32,
                gpu,
                swarm: None,
                travel: travel.clone(),
                auto_pull: config.auto_pull,
            },
            workers,
            executives,
            streams: streams.clone(),
            factory,
            budget,
            membership,
            name: name.clone(),
            home: home.root().to_path_buf(),
            stage_memory: config.stage_memory,
            gpu_memory: config.gpu_memory,
            client_access: client_access.clone(),
            running,
            travel: travel.clone(),
        };
        let (supervisor, supervisor_task) = Actor::spawn(None, supervisor, ())
            .await
            .map_err(|e| NodeError::Actors(e.to_string()))?;
        let supervisor_ref = supervisor.clone();
        let coordinator = supervisor
            .call(SupervisorMsg::Coordinator, None)
            .await
            .map_err(|e| NodeError::Actors(e.to_string()))?
            .success_or(NodeError::Actors("no coordinator".into()))?;
        #[cfg(feature = "pipeline")]
        let pipeline = supervisor
            .call(SupervisorMsg::Pipeline, None)
            .await
            .map_err(|e| NodeError::Actors(e.to_string()))?
            .success_or(NodeError::Actors("no answer from the supervisor".into()))?;
        let handle = NodeHandle::new(Parts {
            name,
            queue,
            coordinator,
            supervisor,
            swarm,
            home: home.root().to_path_buf(),
            streams,
            gpu,
            #[cfg(feature = "pipeline")]
            pipeline,
            travel,
        });
        let api = if let (Some(listener), Some(addr)) = (api_listener, api_addr) {
            let token = CancellationToken::new();
            let (api_token, made) = ApiToken::load_or_create(&home.api_token_path())
                .map_err(|e| NodeError::Actors(e.to_string()))?;
            if made {
                tracing::info!(path = %home.api_token_path().display(), "made the API token (`myco token` prints it)");
            }
            for r in &config.data_roots {
                if !r.is_dir() {
                    tracing::warn!(root = %r.display(), "a data root is not a directory: nothing below it can be read");
                }
            }
            let gate = crate::http::auth::Gate::new(
                api_token,
                addr.ip().is_loopback(),
                config.public_metrics,
                client_access,
                config.rate_limit,
            )
            .with_browsers(crate::http::browsers::Browsers::new(
                &config.allowed_hosts,
                &config.allowed_origins,
            ));
            let app = crate::http::router(handle.clone(), Arc::new(gate));
            // Batches past their window stop; expired files go.
            handle.spawn_edge(crate::http::openai::batches::sweep(handle.clone()));
            let listener = crate::http::listen::Limited::new(
                listener,
                config.max_connections as usize,
                config.max_connections_per_client as usize,
            );
            let task = tokio::spawn(crate::http::listen::serve(
                listener,
                app,
                config.header_timeout,
                token.clone(),
            ));
            std::fs::write(home.api_addr_path(), addr.to_string())?;
            Some((addr, token, task))
        } else {
            None
        };
        tracing::info!(
            node = %handle.name(),
            holder = handle.queue().holder(),
            workers,
            api = ?api.as_ref().map(|a| a.0),
            "node started"
        );
        Ok(Node {
            supervisor: supervisor_ref,
            handle,
            config,
            supervisor_task,
            api,
            identify_stop: identify_in_background(&home),
            transfers,
            home,
        })
    }

    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|a| a.0)
    }

    /// Resolves if the actor tree stops on its own (a coordinator failure).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.supervisor_task).await;
    }

    pub fn supervisor_alive(&self) -> bool {
        !self.supervisor_task.is_finished()
    }

    /// The shutdown protocol: stop the API, drain the workers (running jobs finish within
    /// the grace period, unstarted leases go back), then commit and close the queue.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        const EDGE_DEADLINE: Duration = Duration::from_secs(5);
        self.identify_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = &self.transfers {
            t.abort();
        }
        if let Some((_, token, mut task)) = self.api {
            // End the edge's followers and streams first: axum's graceful shutdown waits for
            // every open response, and a client following a queued job would hold it forever.
            // A follower dropped so leaves its job as it is (queued jobs stay queued).
            let edge = self.handle.edge().clone();
            edge.stop.cancel();
            edge.tasks.close();
            token.cancel();
            if tokio::time::timeout(EDGE_DEADLINE, edge.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    tasks = edge.tasks.len(),
                    "HTTP tasks still running after {EDGE_DEADLINE:?}; leaving them"
                );
            }
            if tokio::time::timeout(EDGE_DEADLINE, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("HTTP connections still open after {EDGE_DEADLINE:?}; closing them");
                task.abort();
            }
            let _ = std::fs::remove_file(self.home.api_addr_path());
        }
        let grace = self.config.shutdown_grace;
        let drained = self
            .supervisor
            .call(
                |reply| SupervisorMsg::Shutdown { grace, reply },
                Some(grace + Duration::from_secs(15)),
            )
            .await;
        if !drained.is_ok_and(|r| r.is_success()) {
            tracing::warn!("the actors did not confirm a clean stop");
        }
        let _ = self.supervisor_task.await;
        self.handle.queue().shutdown().await;
        tracing::info!("node stopped cleanly");
        Ok(())
    }
}

/// Hash the node's GGUF models that have no remembered identity yet, and those that appear
/// or change later (a look every 5 s), on a thread of its own (a 40 GB file is read once, at
/// disk speed, and remembered: see [`myco_jobs::model::identity`]). Returns the flag that
/// stops it.
fn identify_in_background(home: &Home) -> Arc<std::sync::atomic::AtomicBool> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let (models, cache) = (home.models_dir(), myco_jobs::home::cache_dir(home.root()));
    let spawned = std::thread::Builder::new()
        .name("myco-identify".into())
        .spawn(move || {
            let stopped = || flag.load(std::sync::atomic::Ordering::Relaxed);
            // A model that appears (or changes) later is read on the next round.
            while !stopped() {
                identify_all(&models, &cache, &stopped);
                for _ in 0..50 {
                    if stopped() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start hashing the models");
    }
    stop
}

/// Hash every GGUF model in `models` that `cache` has no identity of.
fn identify_all(models: &std::path::Path, cache: &std::path::Path, stopped: &dyn Fn() -> bool) {
    use myco_jobs::model::identity;
    // File names and stamps only: no header is read for what is known already.
    for path in myco_jobs::model::gguf_files(models) {
        // Known, with its manifest (a file fetched without one is read once more for it).
        if identity::known(&path, cache).is_some() && identity::manifest(&path, cache).is_some() {
            continue;
        }
        let started = std::time::Instant::now();
        match identity::identify(&path, cache, stopped) {
            Ok(sha) => {
                let secs = started.elapsed().as_secs_f64();
                let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
                tracing::info!(
                    model = %path.display(),
                    sha256 = %sha,
                    mb_per_s = (bytes as f64 / 1e6 / secs.max(1e-6)).round(),
                    "model identified by its content"
                );
            }
            Err(_) if stopped() => return,
            Err(e) => tracing::warn!(model = %path.display(), error = %e, "cannot hash the model"),
        }
    }
}

/// For tests: damage the bytes of this chunk index once in the transfers a node serves.
pub const FAULT_CORRUPT_CHUNK_ENV: &str = "MYCO_FAULT_CORRUPT_CHUNK";

/// Start the transfer listener on the cluster's address (any port): its port and task.
async fn serve_transfers(
    home: &Home,
    config: &NodeConfig,
    secret: &SwarmSecret,
    board: &myco_runtime::cluster::transfer::Board,
) -> Option<(u16, JoinHandle<()>)> {
    use myco_runtime::cluster::transfer;
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(config.cluster.ip(), 0))
        .await
        .map_err(|e| tracing::warn!(error = %e, "cannot listen for model transfers"))
        .ok()?;
    let port = listener.local_addr().ok()?.port();
    let tls = secret
        .tls()
        .map_err(|e| tracing::warn!(error = %e, "no TLS for model transfers"))
        .ok()?;
    let (models, cache) = (home.models_dir(), myco_jobs::home::cache_dir(home.root()));
    // The models it holds, and the slices in its cache (fetched, or written to serve).
    let files: transfer::Files = {
        let (models, cache) = (models.clone(), cache.clone());
        Arc::new(move |sha: &str| {
            use myco_jobs::model::identity;
            let path = myco_jobs::model::gguf_files(&models)
                .into_iter()
                .find(|p| identity::known(p, &cache).as_deref() == Some(sha))
                .or_else(|| {
                    myco_jobs::model::cache::slices(&cache)
                        .into_iter()
                        .find(|c| c.sha256 == sha)
                        .map(|c| c.path)
                })?;
            Some(transfer::Served {
                manifest: identity::manifest(&path, &cache),
                path,
            })
        })
    };
    let opts = transfer::ServeOptions {
        rate: config.transfer_rate,
        corrupt_chunk: std::env::var(FAULT_CORRUPT_CHUNK_ENV)
            .ok()
            .and_then(|v| v.parse().ok()),
        slicer: slicer(models, cache, board.clone()),
    };
    Some((
        port,
        tokio::spawn(transfer::serve(listener, tls, files, opts)),
    ))
}

/// Slices of the models this node holds, for peers that run a stage of one: written once
/// into the model cache (deterministic, so any holder gives the same bytes), then served
/// from there by their own hash.
#[cfg(feature = "pipeline")]
fn slicer(
    models: std::path::PathBuf,
    cache: std::path::PathBuf,
    board: myco_runtime::cluster::transfer::Board,
) -> Option<myco_runtime::cluster::transfer::Slicer> {
    use myco_jobs::model::{cache as slices, identity};
    // One slice written at a time.
    let writing = Arc::new(std::sync::Mutex::new(()));
    Some(Arc::new(move |source: &str, first: u32, end: u32| {
        let _one = writing
            .lock()
            .map_err(|_| "a slice writer panicked".to_owned())?;
        let out = slices::slice_path(&cache, source, first, end);
        if let Some(c) = slices::cached(&out) {
            slices::touch(&out);
            return Ok((c.sha256, c.bytes));
        }
        let model = myco_jobs::model::gguf_files(&models)
            .into_iter()
            .find(|p| identity::known(p, &cache).as_deref() == Some(source))
            .ok_or_else(|| format!("no model of sha256 {source} here"))?;
        let started = std::time::Instant::now();
        myco_jobs::llm::stage::write_travelling_slice(&model, source, first, end, &out)
            .map_err(|e| e.to_string())?;
        // Its hash and manifest, remembered as any file's.
        let sha = identity::identify(&out, &cache, &|| false)
            .map_err(|e| format!("{}: {e}", out.display()))?;
        slices::remember(&out, &sha).map_err(|e| format!("{}: {e}", out.display()))?;
        board.rescan(&cache);
        let bytes = std::fs::metadata(&out).map_or(0, |m| m.len());
        tracing::info!(
            model = %model.display(), first, end, bytes, ms = started.elapsed().as_millis() as u64,
            "wrote a slice to serve"
        );
        Ok((sha, bytes))
    }))
}

#[cfg(not(feature = "pipeline"))]
fn slicer(
    _models: std::path::PathBuf,
    _cache: std::path::PathBuf,
    _board: myco_runtime::cluster::transfer::Board,
) -> Option<myco_runtime::cluster::transfer::Slicer> {
    None
}
