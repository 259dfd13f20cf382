//! The NodeSupervisor: owns the Coordinator and the Worker pool, restarts workers that fail,
//! and runs the shutdown protocol (drain → stop workers → stop coordinator).
//!
//! A failed worker is replaced at once (its job was already recorded as failed). A failed
//! coordinator stops the node: its state is volatile and every lease is in redb, so the node
//! exits with an error and loses nothing. This actor does no work of its own.

use std::collections::HashMap;
use std::time::Duration;

use myco_runtime::queue::Queue;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use myco_jobs::Lane;

use crate::coordinator::{Coordinator, CoordinatorMsg};
#[cfg(feature = "pipeline")]
use crate::pipeline::runner::PipelineEnv;
#[cfg(feature = "pipeline")]
use crate::pipeline::stages::{Stages, StagesMsg};
use crate::streams::Streams;
use crate::swarm::membership::{Membership, MembershipMsg};
use crate::swarm::peer::PeerService;
use crate::swarm::protocol::PeerMsg;
use crate::swarm::view::{Swarm, SwarmSignals};
use crate::worker::{ExecutorFactory, Worker};

/// Messages to the [`NodeSupervisor`].
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Drain the node: let running jobs finish within `grace`, hand back the rest, stop
    /// every child, then reply.
    Shutdown {
        grace: Duration,
        reply: RpcReplyPort<()>,
    },
    /// The coordinator, for the API (cancellations, load).
    Coordinator(RpcReplyPort<ActorRef<CoordinatorMsg>>),
    /// How many times workers were restarted.
    Restarts(RpcReplyPort<u64>),
    /// What running and planning pipeline jobs needs of this node (its Stages actor).
    #[cfg(feature = "pipeline")]
    Pipeline(RpcReplyPort<PipelineEnv>),
}

// Local only: never serialized (the cluster feature requires the impl).
impl ractor::Message for SupervisorMsg {}

/// Fixed settings of a node's actor tree.
pub struct NodeSupervisor {
    pub coordinator: Coordinator,
    /// Batch-lane workers.
    pub workers: usize,
    /// Executive-lane workers (LLM inference; 0 on a node that runs none).
    pub executives: usize,
    pub streams: Streams,
    pub factory: ExecutorFactory,
    /// The node's cores, shared by its workers.
    pub budget: crate::budget::CpuBudget,
    /// The swarm side (membership, peer service), if this node joins one, and the view of
    /// the swarm its Membership publishes.
    pub membership: Option<(Membership, Swarm)>,
    /// The node's name, home directory and the memory it offers stages (pipeline jobs).
    pub name: String,
    pub home: std::path::PathBuf,
    pub stage_memory: Option<u64>,
    /// GPU memory its models and stages may use (`--gpu-memory`).
    pub gpu_memory: Option<u64>,
    /// What jobs submitted by clients may read (checked again when they run).
    pub client_access: myco_runtime::access::Access,
    /// The jobs this node is running now, on disk (see [`myco_runtime::running`]).
    pub running: std::sync::Arc<myco_runtime::running::Running>,
    /// Fetching models and slices from peers (in a swarm).
    pub travel: Option<crate::travel::Travel>,
}

impl std::fmt::Debug for NodeSupervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSupervisor")
            .field("workers", &self.workers)
            .field("executives", &self.executives)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct SupervisorState {
    coordinator: ActorRef<CoordinatorMsg>,
    membership: Option<ActorRef<MembershipMsg>>,
    peer: Option<ActorRef<PeerMsg>>,
    /// What every worker gets.
    env: WorkerEnv,
    /// Live workers by actor id → their index.
    workers: HashMap<ActorId, usize>,
    restarts: u64,
    stopping: bool,
}

/// What each worker is given besides its index.
#[derive(Debug, Clone)]
struct WorkerEnv {
    coordinator: ActorRef<CoordinatorMsg>,
    queue: Queue,
    #[cfg(feature = "pipeline")]
    pipeline: PipelineEnv,
}

impl NodeSupervisor {
    fn swarm(&self) -> Option<Swarm> {
        self.membership.as_ref().map(|(_, s)| s.clone())
    }

    #[cfg(feature = "pipeline")]
    async fn spawn_stages(
        &self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<ActorRef<StagesMsg>, ActorProcessingErr> {
        let stages = Stages {
            name: self.name.clone(),
            models_dir: myco_jobs::home::models_dir(&self.home),
            scratch: myco_jobs::home::scratch_dir(&self.home),
            swarm: self.swarm(),
            gpu_memory: self.gpu_memory,
            travel: self.travel.clone(),
            slots: self.executives.max(1) as u32,
        };
        let (stages, _) = Actor::spawn_linked(None, stages, (), myself.get_cell()).await?;
        Ok(stages)
    }

    /// Spawn worker `index`: the first [`NodeSupervisor::workers`] are the batch lane's, the
    /// rest the executive's.
    async fn spawn_worker(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        env: &WorkerEnv,
        index: usize,
    ) -> Result<ActorId, ActorProcessingErr> {
        let lane = if index < self.workers {
            Lane::Batch
        } else {
            Lane::Executive
        };
        let worker = Worker {
            index,
            lane,
            coordinator: env.coordinator.clone(),
            streams: self.streams.clone(),
            swarm: self.swarm(),
            queue: env.queue.clone(),
            factory: self.factory.clone(),
            budget: self.budget.clone(),
            client_access: self.client_access.clone(),
            running: self.running.clone(),
            #[cfg(feature = "pipeline")]
            pipeline: env.pipeline.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, worker, (), myself.get_cell()).await?;
        Ok(actor.get_id())
    }
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut coordinator = self.coordinator.clone();
        #[cfg(feature = "pipeline")]
        let stages = self.spawn_stages(&myself).await?;
        // Membership tells the coordinator of the swarm on a channel the coordinator owns.
        let (membership, peer, events) = match &self.membership {
            Some((m, swarm)) => {
                let (tx, rx) = tokio::sync::watch::channel(SwarmSignals::default());
                let m = Membership {
                    events: Some(tx),
                    ..m.clone()
                };
                let (membership, _) = Actor::spawn_linked(None, m, (), myself.get_cell()).await?;
                let service = PeerService {
                    name: self.name.clone(),
                    queue: self.coordinator.queue.clone(),
                    membership: membership.clone(),
                    streams: self.streams.clone(),
                    #[cfg(feature = "pipeline")]
                    stages: stages.clone(),
                };
                let (peer, _) = Actor::spawn_linked(None, service, (), myself.get_cell()).await?;
                coordinator.swarm = Some((membership.clone(), swarm.clone()));
                (Some(membership), Some(peer), Some(rx))
            }
            None => (None, None, None),
        };
        let (coordinator, _) =
            Actor::spawn_linked(None, coordinator, events, myself.get_cell()).await?;
        let env = WorkerEnv {
            coordinator: coordinator.clone(),
            queue: self.coordinator.queue.clone(),
            #[cfg(feature = "pipeline")]
            pipeline: PipelineEnv {
                name: self.name.clone(),
                home: self.home.clone(),
                stages,
                swarm: self.swarm(),
                stage_memory: self.stage_memory,
                gpu_memory: self.gpu_memory,
            },
        };
        let mut workers = HashMap::new();
        for index in 0..self.workers + self.executives {
            let id = self.spawn_worker(&myself, &env, index).await?;
            workers.insert(id, index);
        }
        Ok(SupervisorState {
            coordinator,
            membership,
            peer,
            env,
            workers,
            restarts: 0,
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Shutdown { grace, reply } => {
                state.stopping = true;
                let drained = state
                    .coordinator
                    .call(|r| CoordinatorMsg::Drain { grace, reply: r }, None)
                    .await;
                if !drained.is_ok_and(|r| r.is_success()) {
                    tracing::warn!("the coordinator did not confirm the drain");
                }
                for child in myself.get_children() {
                    if child.get_id() != state.coordinator.get_id() {
                        let _ = child
                            .stop_and_wait(
                                Some("node shutting down".into()),
                                Some(Duration::from_secs(5)),
                            )
                            .await;
                    }
                }
                state
                    .coordinator
                    .stop_and_wait(
                        Some("node shutting down".into()),
                        Some(Duration::from_secs(5)),
                    )
                    .await
                    .ok();
                let _ = reply.send(());
                myself.stop(None);
            }
            SupervisorMsg::Coordinator(reply) => {
                let _ = reply.send(state.coordinator.clone());
            }
            SupervisorMsg::Restarts(reply) => {
                let _ = reply.send(state.restarts);
            }
            #[cfg(feature = "pipeline")]
            SupervisorMsg::Pipeline(reply) => {
                let _ = reply.send(state.env.pipeline.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (who, failure) = match &event {
            SupervisionEvent::ActorFailed(who, err) => (who.clone(), Some(err.to_string())),
            SupervisionEvent::ActorTerminated(who, _, _) => (who.clone(), None),
            _ => return Ok(()),
        };
        let core = [
            Some(state.coordinator.get_id()),
            state.membership.as_ref().map(|m| m.get_id()),
            state.peer.as_ref().map(|p| p.get_id()),
            #[cfg(feature = "pipeline")]
            Some(state.env.pipeline.stages.get_id()),
        ];
        if core.contains(&Some(who.get_id())) {
            if !state.stopping {
                tracing::error!(actor = ?who.get_name(), error = ?failure, "a core actor stopped; stopping the node");
                myself.stop(Some("core actor stopped".into()));
            }
            return Ok(());
        }
        let Some(index) = state.workers.remove(&who.get_id()) else {
            return Ok(());
        };
        if state.stopping {
            return Ok(());
        }
        match failure {
            Some(err) => {
                tracing::warn!(worker = index, error = %err, "worker failed; restarting it")
            }
            None => tracing::warn!(worker = index, "worker stopped; restarting it"),
        }
        state.restarts += 1;
        let id = self.spawn_worker(&myself, &state.env, index).await?;
        state.workers.insert(id, index);
        Ok(())
    }
}
