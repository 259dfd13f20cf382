//! A Worker: pulls one job at a time from its Coordinator and runs it on its own executor
//! thread, then reports the outcome to the queue.
//!
//! The executor (llama.cpp, ONNX, or the CPU kinds) is synchronous and lives on a thread the
//! worker owns ([`ExecutorThread`]); `handle` only awaits it. A panic inside the executor is
//! recorded as a retryable failure, and then the worker fails on purpose so its supervisor
//! replaces it (and its possibly broken executor state). A job that overruns its timeout is
//! failed the same way: the stuck thread is abandoned to finish on its own.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use myco_jobs::{Child, ChildResults, Executor, JobError, Outcome, RunContext, Task};
use myco_runtime::cluster::wire::{StreamFrame, StreamPiece, Wire};
use myco_runtime::queue::{INTERACTIVE_PRIORITY, JobState, OutboxEntry, Queue};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use myco_jobs::Lane;

use crate::budget::{self, CpuBudget};
use crate::coordinator::{Assignment, CoordinatorMsg};

#[cfg(feature = "pipeline")]
use crate::pipeline::runner::{self, PipelineEnv};
use crate::streams::Streams;
use crate::swarm::protocol::PeerMsg;
use crate::swarm::view::Swarm;

/// Makes the executor a new worker thread owns.
pub type ExecutorFactory = Arc<dyn Fn() -> Box<dyn Executor> + Send + Sync>;

/// Messages to a [`Worker`].
#[derive(Debug)]
pub enum WorkerMsg {
    /// Ask the coordinator for a job, run it, repeat.
    Pull,
}

// Local only: never serialized (the cluster feature requires the impl).
impl ractor::Message for WorkerMsg {}

/// A worker's fixed settings.
pub struct Worker {
    pub index: usize,
    /// The lane it pulls from: batch, or the executive (LLM inference).
    pub lane: Lane,
    pub coordinator: ActorRef<CoordinatorMsg>,
    /// Where the output of streaming jobs of this node goes.
    pub streams: Streams,
    /// For streaming a stolen job's output to its owner.
    pub swarm: Option<Swarm>,
    pub queue: Queue,
    pub factory: ExecutorFactory,
    /// The node's cores: interactive jobs take them, batch jobs yield (see [`budget`]).
    pub budget: CpuBudget,
    /// What jobs submitted by clients may read: their files are checked again before they
    /// run (a symlink swapped in after submit).
    pub client_access: myco_runtime::access::Access,
    /// The jobs this node is running now, on disk: one that was running when the node died
    /// twice goes dead.
    pub running: Arc<myco_runtime::running::Running>,
    /// For pipeline jobs: the node's stage host and swarm.
    #[cfg(feature = "pipeline")]
    pub pipeline: PipelineEnv,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .field("lane", &self.lane)
            .finish_non_exhaustive()
    }
}

/// Why an attempt produced no result.
#[derive(Debug)]
enum RunError {
    Job(JobError),
    Panicked(String),
    /// The thread is gone (it panicked earlier).
    Gone,
}

struct Command {
    task: Task,
    /// For a parent that joins its children: the queue to read their results from.
    children: Option<(Queue, myco_runtime::queue::JobId)>,
    attempt: u32,
    /// The lease token: tells this run's streamed pieces from another's.
    run: u64,
    cancel: Arc<AtomicBool>,
    /// Batch work: pause at item boundaries while interactive work runs.
    yields: Option<CpuBudget>,
    /// Where a streaming task's pieces go.
    stream: Option<tokio::sync::mpsc::Sender<StreamPiece>>,
    reply: oneshot::Sender<Result<Vec<u8>, RunError>>,
}

/// A thread that owns one executor and runs commands on it, one at a time.
#[derive(Debug)]
pub struct ExecutorThread {
    tx: std::sync::mpsc::SyncSender<Command>,
}

impl ExecutorThread {
    /// `low`: run at the lowest CPU priority (a batch worker's thread, and the ONNX Runtime
    /// threads it starts).
    fn spawn(name: String, factory: ExecutorFactory, low: bool) -> std::io::Result<ExecutorThread> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Command>(1);
        std::thread::Builder::new().name(name).spawn(move || {
            if low {
                budget::lower_this_thread();
            }
            let mut exec = factory();
            while let Ok(cmd) = rx.recv() {
                let cancel = cmd.cancel.clone();
                let yields = cmd.yields.clone();
                // Every kind polls this between items: batch work yields there.
                let cancelled = move || {
                    if let Some(b) = &yields {
                        b.yield_to_interactive(budget::MAX_PAUSE);
                    }
                    cancel.load(Ordering::Relaxed)
                };
                let visit = |f: &mut dyn FnMut(Child<'_>) -> Result<(), JobError>| {
                    let Some((queue, id)) = &cmd.children else {
                        return Ok(());
                    };
                    let read = |e: myco_runtime::queue::QueueError| {
                        JobError::retryable(format!("reading the children's results: {e}"))
                    };
                    for child in queue.children(*id).map_err(read)? {
                        let key = child.to_string();
                        let result = queue.result(child).map_err(read)?;
                        let rec = match result {
                            Some(_) => None,
                            None => queue.get(child).map_err(read)?,
                        };
                        let outcome = match (&result, &rec) {
                            (Some(r), _) => Outcome::Done(r),
                            (None, Some(r)) if r.state == JobState::Dead => {
                                let e = r.last_error.as_ref();
                                Outcome::Failed {
                                    message: e.map_or("failed", |e| e.message.as_str()),
                                    fatal: e.is_some_and(|e| !e.is_retryable()),
                                }
                            }
                            _ => Outcome::Cancelled,
                        };
                        f(Child { id: &key, outcome })?;
                    }
                    Ok(())
                };
                let run = cmd.run;
                let stream = cmd.stream.clone().map(|tx| {
                    move |token: Option<i32>, text: &str| {
                        // Bounded: a forwarder that falls STREAM_BUFFER pieces behind holds
                        // the decode loop up; one that is gone lets it go on.
                        let _ = tx.blocking_send(StreamPiece {
                            run,
                            token,
                            text: text.to_owned(),
                        });
                    }
                });
                let ctx = RunContext {
                    attempt: cmd.attempt,
                    cancelled: &cancelled,
                    children: cmd
                        .children
                        .is_some()
                        .then_some(&visit as &ChildResults<'_>),
                    stream: stream.as_ref().map(|s| s as &myco_jobs::task::Stream<'_>),
                };
                match catch_unwind(AssertUnwindSafe(|| exec.run(&cmd.task, &ctx))) {
                    Ok(result) => {
                        let _ = cmd.reply.send(result.map_err(RunError::Job));
                    }
                    Err(panic) => {
                        let _ = cmd
                            .reply
                            .send(Err(RunError::Panicked(panic_message(&panic))));
                        // The executor may be in a broken state: end the thread.
                        return;
                    }
                }
            }
        })?;
        Ok(ExecutorThread { tx })
    }

    /// Run the command `cmd` makes with the reply channel it is given, and await the reply.
    async fn run(
        &self,
        cmd: impl FnOnce(oneshot::Sender<Result<Vec<u8>, RunError>>) -> Command,
    ) -> Result<Vec<u8>, RunError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(cmd(reply)).is_err() {
            return Err(RunError::Gone);
        }
        rx.await.unwrap_or(Err(RunError::Gone))
    }
}

/// How often streamed pieces go out after the first: about 60 times a second.
const FLUSH: Duration = Duration::from_millis(16);

/// Pieces a job's stream holds before its producer waits: the forwarder takes up to 256
/// every [`FLUSH`], so only a stalled forwarder fills it.
pub(crate) const STREAM_BUFFER: usize = 1024;

/// Send a job's streamed pieces where its clients wait: this node's [`Streams`], or for a
/// stolen job, the owner's PeerService. Pieces that pile up go out together.
async fn forward(
    mut rx: tokio::sync::mpsc::Receiver<StreamPiece>,
    id: myco_runtime::queue::JobId,
    owner: Option<String>,
    streams: Streams,
    swarm: Option<Swarm>,
) {
    let peer: Option<ActorRef<PeerMsg>> = match (&owner, &swarm) {
        (Some(owner), Some(s)) => s.view().peer(owner),
        _ => None,
    };
    if owner.is_some() && peer.is_none() {
        tracing::debug!(%id, "the owner is unreachable: its clients get the result at the end");
    }
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        let pieces = std::mem::take(&mut batch);
        match (&owner, &peer) {
            (None, _) => streams.publish(id, pieces),
            (Some(_), Some(peer)) => {
                let _ = peer.cast(PeerMsg::Stream(Wire::new(StreamFrame { id, pieces })));
            }
            (Some(_), None) => {}
        }
        // The first piece goes out at once (time to first token); after it, pieces go out
        // in groups at most every FLUSH, so that a fast decode loop does not wake this task
        // (and take a core from it) once per token.
        tokio::time::sleep(FLUSH).await;
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

impl Worker {
    /// Why a job of this node may not run as its submitter: a client's job whose files have
    /// come to lie outside the data roots since it was submitted.
    async fn refused(&self, id: myco_runtime::queue::JobId, task: &Task) -> Option<String> {
        if task.inputs().is_empty() || self.client_access == myco_runtime::access::Access::Any {
            return None;
        }
        let inputs: Vec<std::path::PathBuf> =
            task.inputs().into_iter().map(|p| p.to_path_buf()).collect();
        let queue = self.queue.clone();
        let access = self.client_access.clone();
        tokio::task::spawn_blocking(move || {
            let rec = queue.get(id).ok().flatten()?;
            if rec.submitter != myco_runtime::queue::Submitter::Client {
                return None;
            }
            inputs
                .iter()
                .find_map(|p| access.check(p).err())
                .map(|outside| format!("{outside}; the job may read only files below them"))
        })
        .await
        .ok()
        .flatten()
    }
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = ExecutorThread;
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ExecutorThread::spawn(
            format!("myco-exec-{}", self.index),
            self.factory.clone(),
            self.lane == Lane::Batch,
        )?)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        myself.cast(WorkerMsg::Pull)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        exec: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let WorkerMsg::Pull = msg;
        let lane = self.lane;
        let got = self
            .coordinator
            .call(|reply| CoordinatorMsg::RequestWork(lane, reply), None)
            .await?;
        let Ok(Some(Assignment {
            lease,
            cancel,
            owner,
        })) = got.success_or(())
        else {
            // The node is draining (or the coordinator is gone).
            myself.stop(Some("drained".into()));
            return Ok(());
        };
        let id = lease.id;
        let token = lease.token;
        let timeout = Duration::from_millis(lease.timeout_ms.max(1));
        // A joining parent reads its children's results here, at its owner.
        let children = (owner.is_none() && lease.task.joins()).then(|| (self.queue.clone(), id));
        let (stream, forwarder) = if lease.task.streams() {
            let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
            let forwarder = tokio::spawn(forward(
                rx,
                id,
                owner.clone(),
                self.streams.clone(),
                self.swarm.clone(),
            ));
            (Some(tx), Some(forwarder))
        } else {
            (None, None)
        };
        let pipeline = matches!(lease.task, Task::Pipeline(_));
        // LLM requests and the API's and CLI's requests are interactive: batch work yields
        // the cores while they run. The rest is batch work, which yields.
        let interactive = lane == Lane::Executive || lease.priority >= INTERACTIVE_PRIORITY;
        let _running = interactive.then(|| self.budget.enter());
        let yields = (!interactive).then(|| self.budget.clone());
        let refused = if owner.is_none() {
            self.refused(id, &lease.task).await
        } else {
            None
        };
        // Only this node's own jobs: a stolen one's owner counts its losses.
        let own = owner.is_none();
        if own {
            self.running.start(id);
        }
        let outcome = match lease.task {
            _ if refused.is_some() => Ok(Err(RunError::Job(JobError::fatal(
                refused.unwrap_or_default(),
            )))),
            // A pipeline job drives stages across the swarm: async, on no executor thread.
            #[cfg(feature = "pipeline")]
            Task::Pipeline(task) => {
                tokio::time::timeout(timeout, async {
                    runner::run(&self.pipeline, id, &task, token, cancel.clone(), stream)
                        .await
                        .map_err(RunError::Job)
                })
                .await
            }
            task => {
                tokio::time::timeout(
                    timeout,
                    exec.run(|reply| Command {
                        task,
                        children,
                        attempt: lease.attempt,
                        run: token,
                        cancel: cancel.clone(),
                        yields,
                        stream,
                        reply,
                    }),
                )
                .await
            }
        };
        if let Some(mut f) = forwarder {
            // Once the executor has dropped its sender, the forwarder ends after sending the
            // rest, so every piece goes out before the result. A stuck executor (a timeout)
            // keeps its sender: then stop forwarding.
            if outcome.is_err()
                || tokio::time::timeout(Duration::from_secs(5), &mut f)
                    .await
                    .is_err()
            {
                f.abort();
            }
        }
        let cancelled = cancel.load(Ordering::SeqCst);
        let mut broken: Option<String> = None;
        let result: Option<Result<Vec<u8>, JobError>> = match outcome {
            Ok(Ok(output)) => Some(Ok(output)),
            Ok(Err(_)) if cancelled => None,
            Ok(Err(RunError::Job(e))) => Some(Err(e)),
            Ok(Err(RunError::Panicked(msg))) => {
                broken = Some(format!("executor panicked on job {id}: {msg}"));
                Some(Err(JobError::retryable(format!(
                    "executor panicked: {msg}"
                ))))
            }
            Ok(Err(RunError::Gone)) => {
                broken = Some("executor thread is gone".into());
                Some(Err(JobError::retryable("executor thread was lost")))
            }
            Err(_) => {
                cancel.store(true, Ordering::SeqCst);
                // A pipeline's runner is async and was dropped; the executor thread is fine.
                if !pipeline {
                    broken = Some(format!("job {id} overran its timeout"));
                }
                Some(Err(JobError::retryable(format!(
                    "timed out after {timeout:?}"
                ))))
            }
        };
        let report = match (result, owner) {
            (None, _) => Ok(()),
            // A stolen job: keep the outcome durably until its owner acknowledges it. Wait
            // for the commit, so the delivery that `Finished` triggers finds it.
            (Some(result), Some(owner)) => {
                let entry = OutboxEntry {
                    owner,
                    token,
                    result,
                };
                self.queue.outbox_put(id, entry).await
            }
            (Some(Ok(output)), None) => self.queue.complete_detached(id, output).await,
            (Some(Err(e)), None) => self.queue.fail_detached(id, token, e).await,
        };
        if own {
            self.running.end(id);
        }
        let _ = self.coordinator.cast(CoordinatorMsg::Finished(id));
        report?;
        if let Some(why) = broken {
            // Let the supervisor replace this worker and its executor thread.
            return Err(why.into());
        }
        myself.cast(WorkerMsg::Pull)?;
        Ok(())
    }
}
