//! [`NodeHandle`]: the narrow, cloneable view of a running node that everything above the
//! actors uses (the HTTP API, interactive requests, `myco run`, benches): submit, cancel,
//! get, wait, the swarm's members and models, load and restarts.
//!
//! Its fields are private: callers go through these methods, so the actor tree behind it can
//! change without them. It holds no logic of its own beyond the submit path (validate and
//! plan every spec, then one enqueue) and model lookup; it must not import the HTTP layer.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use myco_jobs::JobSpec;
use myco_jobs::SpecError;
use myco_jobs::archive::ModelRef;
use myco_jobs::spec::Refused;
use myco_runtime::access::{Access, Outside};
use myco_runtime::models::ModelFile;
use myco_runtime::queue::{
    CancelOutcome, JobId, JobRecord, JobState, NewJob, Queue, QueueError, RetryOutcome, Submitted,
    Submitter,
};
use ractor::ActorRef;

use crate::collections::Collections;
use crate::coordinator::{CoordinatorMsg, Load};
#[cfg(feature = "pipeline")]
use crate::pipeline::runner::PipelineEnv;
use crate::streams::Streams;
use crate::supervisor::SupervisorMsg;
use crate::swarm::protocol::{PEERS_GROUP, PeerMsg};
use crate::swarm::stealing;
use crate::swarm::view::{MemberView, Swarm, SwarmModel, gguf_models};

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
    /// A job would read a file the caller may not read.
    #[error("job {index}: {outside}")]
    Outside { index: usize, outside: Outside },
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// `error` with the node's home shown as `$MYCO_HOME`.
fn hide(mut error: SpecError, home: &str) -> SpecError {
    if home.len() > 1 {
        for p in &mut error.problems {
            p.message = p.message.replace(home, "$MYCO_HOME");
            p.hint = p.hint.replace(home, "$MYCO_HOME");
        }
    }
    error
}

/// Who submits, by what they may read: the owner reads anything, a client below the roots.
pub(crate) fn submitter_of(access: &Access) -> Submitter {
    match access {
        Access::Any => Submitter::Owner,
        Access::Below(_) => Submitter::Client,
    }
}

pub use crate::travel::PulledModel;

/// Why a model cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelLookupError {
    #[error(
        "no node of the swarm holds a model `{0}`: put the GGUF file in ~/.myco/models on a node (GET /v1/models lists the models the swarm holds)"
    )]
    NotFound(String),
}

/// The parts of a running node its users need. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    name: String,
    queue: Queue,
    coordinator: ActorRef<CoordinatorMsg>,
    supervisor: ActorRef<SupervisorMsg>,
    /// The swarm as Membership publishes it, if this node is in one.
    swarm: Option<Swarm>,
    started: Instant,
    /// The node's home: models, collections and the queue are under it.
    home: PathBuf,
    /// Streamed output (LLM tokens) of this node's jobs.
    streams: Streams,
    /// Collections opened for queries.
    collections: Collections,
    /// This node has a GPU (detected at start).
    gpu: bool,
    /// What pipeline planning needs (`/api/plan`).
    #[cfg(feature = "pipeline")]
    pipeline: PipelineEnv,
    /// The tasks the HTTP edge spawns (job followers, SSE writers), and the signal that
    /// ends them when the node stops.
    edge: Edge,
    /// The client end of model transfers (in a swarm).
    travel: Option<crate::travel::Travel>,
}

/// The HTTP edge's background tasks: every one is tracked and ends when `stop` is
/// cancelled, so a stopping node can wait for them (with a deadline) instead of leaving a
/// client's open stream to hold up axum's graceful shutdown without bound.
#[derive(Debug, Clone, Default)]
pub struct Edge {
    pub stop: tokio_util::sync::CancellationToken,
    pub tasks: tokio_util::task::TaskTracker,
}

/// The parts a [`NodeHandle`] is made of, as the node's start-up wires them.
#[derive(Debug)]
pub struct Parts {
    pub name: String,
    pub queue: Queue,
    pub coordinator: ActorRef<CoordinatorMsg>,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub swarm: Option<Swarm>,
    pub home: PathBuf,
    pub streams: Streams,
    pub gpu: bool,
    #[cfg(feature = "pipeline")]
    pub pipeline: PipelineEnv,
    /// The client end of model transfers (in a swarm).
    pub travel: Option<crate::travel::Travel>,
}

impl NodeHandle {
    pub fn new(p: Parts) -> NodeHandle {
        NodeHandle {
            name: p.name,
            queue: p.queue,
            coordinator: p.coordinator,
            supervisor: p.supervisor,
            swarm: p.swarm,
            started: Instant::now(),
            home: p.home,
            streams: p.streams,
            collections: Collections::default(),
            gpu: p.gpu,
            travel: p.travel,
            #[cfg(feature = "pipeline")]
            pipeline: p.pipeline,
            edge: Edge::default(),
        }
    }

    /// The HTTP edge's tasks and their stop signal.
    pub fn edge(&self) -> &Edge {
        &self.edge
    }

    /// Run `task` at the edge: tracked, and dropped (not finished) when the node stops. A
    /// follower dropped so never cancels its job: the job stays queued for the next run.
    pub fn spawn_edge<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = self.edge.stop.clone();
        self.edge.tasks.spawn(async move {
            // Stop first: at a stop, a follower whose SSE writer was just dropped sees both
            // the stop and its closed channel ready; taking the channel would cancel its job
            // as if the client had gone away.
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// The node's name in the swarm.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's durable queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The streamed output of this node's jobs.
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// Collections opened for queries.
    pub fn collections(&self) -> &Collections {
        &self.collections
    }

    /// What running and planning pipeline jobs needs of this node.
    #[cfg(feature = "pipeline")]
    pub fn pipeline(&self) -> &PipelineEnv {
        &self.pipeline
    }

    /// When the node started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The node's home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Where model names in job files resolve.
    pub fn models_dir(&self) -> PathBuf {
        myco_jobs::home::models_dir(&self.home)
    }

    /// What the node keeps to save work (model identities; fetched models later).
    pub fn cache_dir(&self) -> PathBuf {
        myco_jobs::home::cache_dir(&self.home)
    }

    /// Where collections live: beside the models, in the node's home.
    pub fn collections_dir(&self) -> PathBuf {
        myco_jobs::home::collections_dir(&self.home)
    }

    /// Validate and plan every spec, then enqueue them all in one transaction. A bad spec
    /// refuses the whole submission. The node's owner's submission: its jobs may read any
    /// path the node can (see [`NodeHandle::submit_as`]).
    pub async fn submit(&self, specs: Vec<SpecSource>) -> Result<Vec<Submitted>, SubmitError> {
        self.submit_as(specs, Access::Any).await
    }

    /// [`NodeHandle::submit`] for a caller whose jobs may read only what `access` allows:
    /// every input is checked before planning reads it, and every file planning found in
    /// it (a directory's, a glob's) after, with symlinks resolved.
    pub async fn submit_as(
        &self,
        specs: Vec<SpecSource>,
        access: Access,
    ) -> Result<Vec<Submitted>, SubmitError> {
        // Infer jobs may name a model only a peer holds.
        let remote: Vec<ModelRef> = if self.swarm.is_some() {
            self.peer_models().await
        } else {
            Vec::new()
        };
        // Planning walks directories: keep it off the async threads.
        let models_dir = self.models_dir();
        let collections = self.collections_dir();
        let submitter = submitter_of(&access);
        // Problems told to a client name the node's home as $MYCO_HOME, not where it is.
        let home = (access != Access::Any).then(|| self.home.display().to_string());
        let jobs = tokio::task::spawn_blocking(move || {
            specs
                .into_iter()
                .enumerate()
                .map(|(index, src)| {
                    let spec =
                        JobSpec::parse_as(&src.toml, &src.base_dir, &models_dir, &remote, &access)
                            .map_err(|refused| match refused {
                                Refused::Spec(error) => SubmitError::Spec {
                                    index,
                                    error: match &home {
                                        Some(home) => hide(error, home),
                                        None => error,
                                    },
                                },
                                Refused::Outside(outside) => {
                                    SubmitError::Outside { index, outside }
                                }
                            })?;
                    let check = |task: &myco_jobs::Task| {
                        task.inputs().into_iter().try_for_each(|p| {
                            access
                                .check(p)
                                .map_err(|outside| SubmitError::Outside { index, outside })
                        })
                    };
                    check(&spec.task)?;
                    let plan = spec
                        .plan_in(&collections)
                        .map_err(|error| SubmitError::Spec { index, error })?;
                    check(&plan.task)?;
                    plan.children.iter().try_for_each(check)?;
                    Ok(NewJob::from_spec(&spec, plan))
                })
                .collect::<Result<Vec<NewJob>, SubmitError>>()
        })
        .await
        .map_err(|e| QueueError::Internal(format!("planning failed: {e}")))??;
        Ok(self.queue.submit_as(jobs, submitter).await?)
    }

    /// Check that the caller may read every file job `id` (and its children) would read
    /// again: a retry or resubmit runs as the caller who asks, not as who submitted it.
    async fn check_rerun(&self, id: JobId, access: &Access) -> Result<(), SubmitError> {
        if *access == Access::Any {
            return Ok(());
        }
        let queue = self.queue.clone();
        let access = access.clone();
        tokio::task::spawn_blocking(move || {
            let rec = queue.get(id)?.ok_or(QueueError::NotFound(id))?;
            let mut tasks = vec![rec.task];
            for child in queue.children(id)? {
                if let Some(c) = queue.get(child)? {
                    tasks.push(c.task);
                }
            }
            for task in &tasks {
                for p in task.inputs() {
                    access
                        .check(p)
                        .map_err(|outside| SubmitError::Outside { index: 0, outside })?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| QueueError::Internal(format!("checking job {id} failed: {e}")))?
    }

    /// Queue an ended job again, as `access` may (see [`Queue::retry`]).
    pub async fn retry_as(&self, id: JobId, access: &Access) -> Result<RetryOutcome, SubmitError> {
        self.check_rerun(id, access).await?;
        Ok(self.queue.retry(id).await?)
    }

    /// Submit an ended job again as a new one, as `access` may (see [`Queue::resubmit`]).
    pub async fn resubmit_as(&self, id: JobId, access: &Access) -> Result<Submitted, SubmitError> {
        self.check_rerun(id, access).await?;
        Ok(self.queue.resubmit(id, submitter_of(access)).await?)
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
            .map_err(|e| QueueError::Internal(e.to_string()))?
    }

    /// Wait until job `id` is finished; returns its record. Woken by the queue's commits
    /// that finish jobs, and at the latest every `poll` (a safety net, not a poll of the
    /// caller's).
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

    /// The jobs whose results, in order, make up `rec`'s result: a parent's children's,
    /// unless it joins them into its own; a leaf's own.
    /// A done batch's answers: its output file, then its error file (its stored result
    /// only says where they are). `None` for any other job.
    pub async fn batch_files(&self, rec: &JobRecord) -> Option<Vec<PathBuf>> {
        if !matches!(rec.task, myco_jobs::Task::Batch(_)) || rec.state != JobState::Done {
            return None;
        }
        let queue = self.queue.clone();
        let id = rec.id;
        let store = myco_jobs::files::FileStore::of_home(&self.home);
        tokio::task::spawn_blocking(move || {
            let bytes = queue.result(id).ok()??;
            let w: myco_jobs::batch::Written = serde_json::from_slice(&bytes).ok()?;
            Some(
                [w.output_file_id, w.error_file_id]
                    .into_iter()
                    .flatten()
                    .filter_map(|f| store.path(&f).ok().flatten())
                    .collect(),
            )
        })
        .await
        .ok()
        .flatten()
    }

    pub async fn results(&self, rec: &JobRecord) -> Result<Vec<JobId>, QueueError> {
        let id = rec.id;
        if rec.children.is_none() || rec.task.joins() {
            return Ok(vec![id]);
        }
        let queue = self.queue.clone();
        tokio::task::spawn_blocking(move || queue.children(id))
            .await
            .map_err(|e| QueueError::Internal(e.to_string()))?
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
        match &self.swarm {
            Some(s) => s.view().members(),
            None => vec![MemberView {
                name: self.name.clone(),
                status: "self".into(),
                info: None,
                why_not: None,
                heartbeat_age_ms: 0,
            }],
        }
    }

    /// Fetch the GGUF model `name` from a peer that holds it (`from`, or the first that
    /// says its content hash and serves transfers) into this node's models folder: it is
    /// then held here like any model. The file appears only once its bytes hash right.
    /// Remove a model from this node (its file and its cached slices); `None` if it has
    /// neither. A slice that a loaded stage uses stays.
    pub async fn remove_model(&self, name: &str) -> Option<crate::travel::RemovedModel> {
        let travel = self.travel.clone()?;
        let (models, name) = (self.models_dir(), name.to_owned());
        let loaded: Vec<std::path::PathBuf> = self
            .swarm
            .as_ref()
            .map(|s| s.stage_board().get())
            .unwrap_or_default()
            .into_iter()
            .map(|st| std::path::PathBuf::from(st.model))
            .collect();
        tokio::task::spawn_blocking(move || {
            travel.remove(&models, &name, &|p| {
                // A loaded stage names its file: a cache slice is `<first>-<end>.gguf`.
                loaded.iter().any(|l| p.file_name() == l.file_name())
            })
        })
        .await
        .ok()
        .flatten()
    }

    pub async fn pull_model(&self, name: &str, from: Option<&str>) -> Result<PulledModel, String> {
        match &self.travel {
            Some(t) => t.pull(&self.models_dir(), name, from).await,
            None => Err("this node is in no swarm: there is no peer to fetch from".into()),
        }
    }

    /// The published swarm, if this node is in one.
    pub fn swarm(&self) -> Option<&Swarm> {
        self.swarm.as_ref()
    }

    pub async fn worker_restarts(&self) -> u64 {
        self.supervisor
            .call(SupervisorMsg::Restarts, Some(Duration::from_secs(2)))
            .await
            .ok()
            .and_then(|r| r.success_or(()).ok())
            .unwrap_or(0)
    }

    /// The GGUF models of the swarm (this node's included), by name: as Membership last
    /// scanned and heard them; a node outside a swarm scans its own directory.
    pub async fn swarm_models(&self) -> Vec<SwarmModel> {
        let mut files: Vec<(String, ModelFile)> = Vec::new();
        for member in self.members().await {
            let models = match member.info {
                Some(info) if member.is_up() => info.models,
                None if member.status == "self" => {
                    let dir = self.models_dir();
                    tokio::task::spawn_blocking(move || myco_runtime::models::scan(&dir))
                        .await
                        .unwrap_or_default()
                }
                _ => continue,
            };
            files.extend(models.into_iter().map(|m| (member.name.clone(), m)));
        }
        gguf_models(files)
    }

    /// The GGUF models the swarm holds, as jobs name a peer's model (by file name and size:
    /// each node loads its own copy).
    /// The GGUF models only peers hold.
    pub(crate) async fn peer_models(&self) -> Vec<ModelRef> {
        self.swarm_models()
            .await
            .iter()
            .map(|m| ModelRef::held_by_peer(&m.file, m.bytes))
            .collect()
    }

    /// The GGUF model `name` (a path, a file name, or a name without `.gguf`): this node's
    /// copy, else a peer's. Resolved as job files resolve it.
    pub async fn find_model(&self, name: &str) -> Result<ModelRef, ModelLookupError> {
        let resolve = |peers: &[ModelRef]| {
            myco_jobs::model::resolve_llm(name, Path::new(""), &self.models_dir(), peers)
        };
        // This node's own copy first: the swarm's models (a directory scan outside a swarm)
        // are read only when it has none.
        if let Ok(m) = resolve(&[]) {
            return Ok(m);
        }
        resolve(&self.peer_models().await).map_err(|_| ModelLookupError::NotFound(name.to_owned()))
    }

    /// The mean round trip of `count` calls to the PeerService of `peer`, and of the same
    /// calls to this node's own (an in-process actor call), in microseconds; `None` if the
    /// peer is not up or stops answering.
    pub async fn ping(&self, peer: &str, count: u32) -> Option<(f64, f64)> {
        let remote = self.swarm.as_ref()?.view().peer(peer)?;
        let local = ractor::pg::get_members(&PEERS_GROUP.to_owned())
            .into_iter()
            .find(|c| c.get_id().is_local())
            .map(ActorRef::<PeerMsg>::from)?;
        let remote_us = stealing::ping(&remote, count).await?;
        let local_us = stealing::ping(&local, count).await?;
        Some((remote_us, local_us))
    }

    /// Whether any of the named nodes (this one included) has a GPU.
    pub async fn any_gpu(&self, names: &[String]) -> bool {
        if self.gpu && names.contains(&self.name) {
            return true;
        }
        self.members().await.into_iter().any(|m| {
            m.status == "up"
                && names.contains(&m.name)
                && m.info.is_some_and(|i| !i.caps.gpus.is_empty())
        })
    }
}
