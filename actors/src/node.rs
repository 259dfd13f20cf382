//! A running node: the queue, the actor tree and (optionally) the HTTP API, wired together,
//! with the submit path they share and the shutdown protocol.
//!
//! `myco node` starts one with the API; `myco run` starts one without it, submits a job and
//! waits. [`NodeHandle`] is the cheap, cloneable view the API handlers use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use myco_jobs::{JobKind, JobSpec, SpecError};
use myco_runtime::cluster::discovery::DiscoveryConfig;
use myco_runtime::cluster::secret::SwarmSecret;
use myco_runtime::cluster::wire::Role;
use myco_runtime::config::{ConfigError, Home, NodeConfig};
use myco_runtime::queue::{
    CancelOutcome, JobId, JobRecord, NewJob, Queue, QueueError, QueueOptions, Submitted,
};
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::coordinator::{Coordinator, CoordinatorMsg, Load};
use crate::membership::{MemberView, Membership, MembershipMsg};
use crate::supervisor::{NodeSupervisor, SupervisorMsg};
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

/// A `job.toml` to submit: its text, and the directory its relative paths start from.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SpecSource {
    pub toml: String,
    pub base_dir: PathBuf,
}

/// Why a submission was refused. Nothing of it was enqueued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("job {index}: {error}")]
    Spec { index: usize, error: SpecError },
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The parts of a node the API needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    pub name: String,
    pub queue: Queue,
    pub coordinator: ActorRef<CoordinatorMsg>,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub membership: Option<ActorRef<MembershipMsg>>,
    pub started: Instant,
    /// Where model names in job files resolve.
    pub models_dir: std::path::PathBuf,
    /// Streamed output (LLM tokens) of this node's jobs.
    pub streams: crate::streams::Streams,
    /// This node has a GPU (detected at start).
    pub gpu: bool,
    /// What pipeline planning needs (`/api/plan`).
    pub pipeline: crate::pipeline::PipelineEnv,
}

impl NodeHandle {
    /// Validate and plan every spec, then enqueue them all in one transaction. A bad spec
    /// refuses the whole submission.
    pub async fn submit(&self, specs: Vec<SpecSource>) -> Result<Vec<Submitted>, SubmitError> {
        // Infer jobs may name a model only a peer holds.
        let remote: Vec<myco_jobs::archive::ModelRef> = if self.membership.is_some() {
            crate::infer::swarm_models(self)
                .await
                .into_iter()
                .map(|m| myco_jobs::archive::ModelRef {
                    path: PathBuf::from(&m.file),
                    name: m.file,
                    bytes: m.bytes,
                })
                .collect()
        } else {
            Vec::new()
        };
        // Planning walks directories: keep it off the async threads.
        let models_dir = self.models_dir.clone();
        let collections = self.collections_dir();
        let jobs = tokio::task::spawn_blocking(move || {
            specs
                .into_iter()
                .enumerate()
                .map(|(index, src)| {
                    let spec = JobSpec::parse_swarm(&src.toml, &src.base_dir, &models_dir, &remote)
                        .map_err(|error| SubmitError::Spec { index, error })?;
                    let plan = spec
                        .plan_in(&collections)
                        .map_err(|error| SubmitError::Spec { index, error })?;
                    Ok(NewJob::from_spec(&spec, plan))
                })
                .collect::<Result<Vec<NewJob>, SubmitError>>()
        })
        .await
        .map_err(|e| QueueError::Invalid(format!("planning failed: {e}")))??;
        Ok(self.queue.submit(jobs).await?)
    }

    /// Where collections live: beside the models, in the node's home.
    pub fn collections_dir(&self) -> PathBuf {
        self.home().join("collections")
    }

    /// The node's home directory.
    pub fn home(&self) -> PathBuf {
        self.models_dir
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default()
    }

    /// Cancel a job (and its children); a running attempt is told to stop.
    pub async fn cancel(&self, id: JobId) -> Result<CancelOutcome, QueueError> {
        let outcome = self.queue.cancel(id).await?;
        let _ = self.coordinator.cast(CoordinatorMsg::Cancel(id));
        if let Ok(children) = self.queue.children(id) {
            for child in children {
                let _ = self.coordinator.cast(CoordinatorMsg::Cancel(child));
            }
        }
        Ok(outcome)
    }

    pub async fn get(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        let queue = self.queue.clone();
        tokio::task::spawn_blocking(move || queue.get(id))
            .await
            .map_err(|e| QueueError::Invalid(e.to_string()))?
    }

    /// Wait until a job is finished; returns its record.
    /// Wait until job `id` is finished: woken by the queue's commits that finish jobs, and
    /// at the latest every `poll`.
    pub async fn wait(&self, id: JobId, poll: Duration) -> Result<JobRecord, QueueError> {
        loop {
            let finished = self.queue.finished();
            tokio::pin!(finished);
            finished.as_mut().enable();
            match self.get(id).await? {
                Some(rec) if rec.state.is_terminal() => return Ok(rec),
                Some(_) => {}
                None => return Err(QueueError::NotFound(id)),
            }
            tokio::select! {
                () = &mut finished => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    pub async fn load(&self) -> Option<Load> {
        self.coordinator
            .call(CoordinatorMsg::Load, Some(Duration::from_secs(2)))
            .await
            .ok()
            .and_then(|r| r.success_or(()).ok())
    }

    /// The swarm as this node sees it (itself first); just itself outside a swarm.
    pub async fn members(&self) -> Vec<MemberView> {
        match &self.membership {
            Some(m) => m
                .call(MembershipMsg::Members, Some(Duration::from_secs(2)))
                .await
                .ok()
                .and_then(|r| r.success_or(()).ok())
                .unwrap_or_default(),
            None => vec![MemberView {
                name: self.name.clone(),
                status: "self".into(),
                info: None,
                heartbeat_age_ms: 0,
            }],
        }
    }

    pub async fn worker_restarts(&self) -> u64 {
        self.supervisor
            .call(SupervisorMsg::Restarts, Some(Duration::from_secs(2)))
            .await
            .ok()
            .and_then(|r| r.success_or(()).ok())
            .unwrap_or(0)
    }
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
    supervisor_task: JoinHandle<()>,
    api: Option<(SocketAddr, CancellationToken, JoinHandle<()>)>,
    home: Home,
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
        let opts = QueueOptions {
            node: name.clone(),
            backoff_base_ms: config.backoff_base.as_millis() as u64,
            backoff_max_ms: config.backoff_max.as_millis() as u64,
            ..QueueOptions::default()
        };
        let path = home.queue_path();
        let queue = tokio::task::spawn_blocking(move || Queue::open(&path, opts))
            .await
            .map_err(|e| NodeError::Actors(e.to_string()))??;
        let workers = config.worker_count();
        // One executive runs LLM inference: a decode already uses every core.
        let executives = 1;
        let exec_home = home.root().to_path_buf();
        let factory: ExecutorFactory = Arc::new(move || {
            Box::new(myco_jobs::CpuExecutor::new(&exec_home)) as Box<dyn myco_jobs::Executor>
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
        let caps = tokio::task::spawn_blocking(myco_runtime::detect::detect)
            .await
            .map_err(|e| NodeError::Actors(e.to_string()))?;
        let gpu = !caps.gpus.is_empty();
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
            let mut roles = vec![Role::Coordinator];
            if workers > 0 {
                roles.push(Role::Worker);
            }
            if !caps.gpus.is_empty() {
                roles.push(Role::Executive);
            }
            Some(Membership {
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
                kinds: JobKind::ALL.to_vec(),
                roles,
                slots: (workers + executives) as u32,
                stage_memory: config.stage_memory,
            })
        } else {
            None
        };
        let streams = crate::streams::Streams::default();
        let supervisor = NodeSupervisor {
            coordinator: Coordinator {
                queue: queue.clone(),
                kinds: JobKind::ALL.to_vec(),
                home: home.root().to_path_buf(),
                lease: config.lease,
                tick: config.tick,
                prefetch: (workers * 16).max(32),
                slots: (workers + executives) as u32,
                executives: executives as u32,
                gpu,
                membership: None,
            },
            workers,
            executives,
            streams: streams.clone(),
            factory,
            membership,
            name: name.clone(),
            home: home.root().to_path_buf(),
            stage_memory: config.stage_memory,
        };
        let (supervisor, supervisor_task) = Actor::spawn(None, supervisor, ())
            .await
            .map_err(|e| NodeError::Actors(e.to_string()))?;
        let coordinator = supervisor
            .call(SupervisorMsg::Coordinator, None)
            .await
            .map_err(|e| NodeError::Actors(e.to_string()))?
            .success_or(NodeError::Actors("no coordinator".into()))?;
        let membership = supervisor
            .call(SupervisorMsg::Membership, None)
            .await
            .map_err(|e| NodeError::Actors(e.to_string()))?
            .success_or(NodeError::Actors("no answer from the supervisor".into()))?;
        let pipeline = supervisor
            .call(SupervisorMsg::Pipeline, None)
            .await
            .map_err(|e| NodeError::Actors(e.to_string()))?
            .success_or(NodeError::Actors("no answer from the supervisor".into()))?;
        let handle = NodeHandle {
            pipeline,
            name,
            queue,
            coordinator,
            supervisor,
            membership,
            started: Instant::now(),
            models_dir: home.models_dir(),
            streams,
            gpu,
        };
        let api = if let (Some(listener), Some(addr)) = (api_listener, api_addr) {
            let token = CancellationToken::new();
            let app = crate::api::router(handle.clone());
            let stop = token.clone();
            // Results stream in several writes: without TCP_NODELAY, Nagle's algorithm and
            // delayed ACKs add ~40 ms to each response.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            let task = tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the HTTP API stopped");
                }
            });
            std::fs::write(home.api_addr_path(), addr.to_string())?;
            Some((addr, token, task))
        } else {
            None
        };
        tracing::info!(
            node = %handle.name,
            holder = handle.queue.holder(),
            workers,
            api = ?api.as_ref().map(|a| a.0),
            "node started"
        );
        Ok(Node {
            handle,
            config,
            supervisor_task,
            api,
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
        if let Some((_, token, task)) = self.api {
            token.cancel();
            let _ = task.await;
            let _ = std::fs::remove_file(self.home.api_addr_path());
        }
        let grace = self.config.shutdown_grace;
        let drained = self
            .handle
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
        self.handle.queue.shutdown().await;
        tracing::info!("node stopped cleanly");
        Ok(())
    }
}
