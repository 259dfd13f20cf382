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
use myco_runtime::config::{ConfigError, Home, NodeConfig};
use myco_runtime::queue::{
    CancelOutcome, JobId, JobRecord, NewJob, Queue, QueueError, QueueOptions, Submitted,
};
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::coordinator::{Coordinator, CoordinatorMsg, Load};
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
    pub started: Instant,
}

impl NodeHandle {
    /// Validate and plan every spec, then enqueue them all in one transaction. A bad spec
    /// refuses the whole submission.
    pub async fn submit(&self, specs: Vec<SpecSource>) -> Result<Vec<Submitted>, SubmitError> {
        // Planning walks directories: keep it off the async threads.
        let jobs = tokio::task::spawn_blocking(move || {
            specs
                .into_iter()
                .enumerate()
                .map(|(index, src)| {
                    let spec = JobSpec::parse(&src.toml, &src.base_dir)
                        .map_err(|error| SubmitError::Spec { index, error })?;
                    let plan = spec
                        .plan()
                        .map_err(|error| SubmitError::Spec { index, error })?;
                    Ok(NewJob::from_spec(&spec, plan))
                })
                .collect::<Result<Vec<NewJob>, SubmitError>>()
        })
        .await
        .map_err(|e| QueueError::Invalid(format!("planning failed: {e}")))??;
        Ok(self.queue.submit(jobs).await?)
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
    pub async fn wait(&self, id: JobId, poll: Duration) -> Result<JobRecord, QueueError> {
        loop {
            match self.get(id).await? {
                Some(rec) if rec.state.is_terminal() => return Ok(rec),
                Some(_) => tokio::time::sleep(poll).await,
                None => return Err(QueueError::NotFound(id)),
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

    pub async fn worker_restarts(&self) -> u64 {
        self.supervisor
            .call(SupervisorMsg::Restarts, Some(Duration::from_secs(2)))
            .await
            .ok()
            .and_then(|r| r.success_or(()).ok())
            .unwrap_or(0)
    }
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
    /// Open the queue under `home`, start the actors, and serve the API if `serve_api`.
    pub async fn start(home: Home, config: NodeConfig, serve_api: bool) -> Result<Node, NodeError> {
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
        let factory: ExecutorFactory =
            Arc::new(|| Box::new(myco_jobs::CpuExecutor) as Box<dyn myco_jobs::Executor>);
        let supervisor = NodeSupervisor {
            coordinator: Coordinator {
                queue: queue.clone(),
                kinds: JobKind::ALL.to_vec(),
                lease: config.lease,
                tick: config.tick,
                prefetch: (workers * 16).max(32),
            },
            workers,
            factory,
        };
        let (supervisor, supervisor_task) = Actor::spawn(None, supervisor, ())
            .await
            .map_err(|e| NodeError::Actors(e.to_string()))?;
        let coordinator = supervisor
            .call(SupervisorMsg::Coordinator, None)
            .await
            .map_err(|e| NodeError::Actors(e.to_string()))?
            .success_or(NodeError::Actors("no coordinator".into()))?;
        let handle = NodeHandle {
            name,
            queue,
            coordinator,
            supervisor,
            started: Instant::now(),
        };
        let api = if serve_api {
            let listener = tokio::net::TcpListener::bind(config.api)
                .await
                .map_err(|source| NodeError::Bind {
                    addr: config.api,
                    source,
                })?;
            let addr = listener.local_addr()?;
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
