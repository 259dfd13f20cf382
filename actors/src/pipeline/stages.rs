//! The Stages actor: hosts this node's layer-range stages of pipeline jobs and routes the
//! stage chain's frames.
//!
//! A runner (the worker running a pipeline job, on any node) sends `Open` to each node of
//! its plan. Each loaded stage lives on its own thread, which owns the llama.cpp [`Stage`] and
//! runs its frames in arrival order; the actor only routes. Several runs share a loaded
//! stage, one KV cache (sequence) each. A stage nobody has used for [`LINGER`] is unloaded.
//!
//! Frames flow as a ring: runner → `Feed` (the prompt) → stage 0 → `Hidden` → … → the last
//! stage, which samples and sends the token both to stage 0 (`Feed`, the next step) and to
//! the runner (`Token`). Stages send straight to the next stage's node, never through the
//! runner.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use myco_jobs::llm::stage::{
    Sampler, SamplerParams, Stage, StageConfig, StageInput, StageOutput, Step,
};
use myco_runtime::cluster::wire::{
    HostedStage, Sampling, SeqKey, StageFrame, StageLoaded, StageOpen, StageStep, StepInput, Wire,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc::Sender;

use crate::swarm::protocol::PeerMsg;
use crate::swarm::view::Swarm;

/// How long an unused stage stays loaded (the next job of the same model reuses it).
const LINGER: Duration = Duration::from_secs(60);

/// The largest context a pipeline run may ask for (at most the model's own).
pub const MAX_CTX: u32 = 32_768;

/// Messages to the [`Stages`] actor.
#[derive(Debug)]
pub enum StagesMsg {
    /// A frame for this node: from a peer, from a stage here, or from a runner here.
    Frame(StageFrame),
    /// Send a frame to the node `to` (this node included).
    Send(String, StageFrame),
    /// Frames for the runner of `key` (`Opened`, `Token`, `Failed`) go to this channel.
    Listen(SeqKey, Sender<StageFrame>),
    Unlisten(SeqKey),
    /// Unload stages unused for [`LINGER`] (internal).
    Tick,
    /// A slice this node fetched into its model cache, or why not (internal): the opens
    /// that waited for it go on.
    Fetched(PathBuf, Result<(), String>),
}

// Local only: never serialized (the cluster feature requires the impl).
impl ractor::Message for StagesMsg {}

/// Where a frame goes: this node's Stages actor, or a peer's PeerService.
#[derive(Debug, Clone)]
enum Target {
    Local(ActorRef<StagesMsg>),
    Remote(ActorRef<PeerMsg>),
}

impl Target {
    fn send(&self, frame: StageFrame) -> bool {
        match self {
            Target::Local(a) => a.cast(StagesMsg::Frame(frame)).is_ok(),
            Target::Remote(p) => p.cast(PeerMsg::Stage(Wire::new(frame))).is_ok(),
        }
    }
}

/// The Stages actor's fixed settings.
#[derive(Debug, Clone)]
pub struct Stages {
    pub name: String,
    pub models_dir: PathBuf,
    /// Where stages write their slice of a model while llama.cpp loads it.
    pub scratch: PathBuf,
    /// The swarm, if this node is in one.
    pub swarm: Option<Swarm>,
    /// GPU memory the node's stages may use (`--gpu-memory`); unset: the GPU's free memory.
    pub gpu_memory: Option<u64>,
    /// Fetching the slice of a stage of a model this node does not hold.
    pub travel: Option<crate::travel::Travel>,
    /// Runs of a stage that share one llama.cpp context and decode together (the node's
    /// `--parallel`); more runs get another context.
    pub slots: u32,
}

/// A loaded (or loading) stage and its thread.
#[derive(Debug)]
struct Hosted {
    tx: mpsc::SyncSender<Work>,
    runs: usize,
    idle_since: Instant,
}

type StageId = (PathBuf, u32, u32);

/// Frames a stage thread's feed holds. A run has at most its prompt's chunks and one step
/// in flight, so only a thread that has stopped keeping up fills it: then the run that does
/// not fit fails back to its runner, which places it again.
const FEED: usize = 256;

#[derive(Debug, Default)]
pub struct StagesState {
    hosted: HashMap<StageId, Hosted>,
    /// Which hosted stage each run uses here, and the node running it.
    runs: HashMap<SeqKey, (StageId, String)>,
    runners: HashMap<SeqKey, Sender<StageFrame>>,
    /// What [`Stages::post`] last posted.
    posted: Vec<HostedStage>,
    /// Slices being fetched, and the opens waiting for each.
    fetching: HashMap<PathBuf, Vec<StageOpen>>,
}

impl Stages {
    fn target(&self, myself: &ActorRef<StagesMsg>, node: &str) -> Option<Target> {
        if node == self.name {
            return Some(Target::Local(myself.clone()));
        }
        self.swarm.as_ref()?.view().peer(node).map(Target::Remote)
    }

    async fn open(&self, myself: &ActorRef<StagesMsg>, state: &mut StagesState, open: StageOpen) {
        let key = open.key;
        let Some(runner) = self.target(myself, &open.runner) else {
            tracing::warn!(runner = %open.runner, "a stage was asked for by a node that is not up");
            return;
        };
        let refuse = |why: String| {
            runner.send(StageFrame::Opened {
                key,
                index: open.index,
                node: self.name.clone(),
                result: Err(why),
            });
        };
        // A peer names a file of our models folder, by its bare name: never a path (`../x`,
        // `/etc/x`) that would reach outside it.
        if !is_file_name(&open.model) {
            return refuse(format!(
                "`{}` is not a model file name (a stage opens only a file of the models folder, by name)",
                open.model
            ));
        }
        let mut path = self.models_dir.join(&open.model);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == open.size => {}
            // A model this node does not hold: its slice, from the cache or a holder.
            _ => match self.slice(myself, state, &open) {
                Ok(Some(slice)) => path = slice,
                // Fetching: the open goes on when the slice is here.
                Ok(None) => return,
                Err(why) => return refuse(why),
            },
        }
        let ring = self.target(myself, &open.ring);
        let next = match &open.next {
            Some(n) => match self.target(myself, n) {
                Some(t) => Some(t),
                None => return refuse(format!("the next stage's node {n} is not up")),
            },
            None => None,
        };
        let Some(ring) = ring else {
            return refuse(format!("stage 0's node {} is not up", open.ring));
        };
        let id: StageId = (path, open.first, open.end);
        let route = Route {
            key,
            index: open.index,
            node: self.name.clone(),
            next: next.zip(open.next.clone()),
            ring: (ring, open.ring.clone()),
            runner: runner.clone(),
            runner_at_ring: open.runner == open.ring,
            sampling: open.sampling.clone(),
            sampler: None,
            remaining: open.max_tokens,
            eog: open.eog,
            n_ctx: open.n_ctx,
            threads: open.threads,
            stages: open.stages.max(1),
        };
        // The same run opened twice here: close the first.
        Self::close(state, key);
        let mut work = Work::Open(Box::new(route));
        // A thread that ended (a failed load, a panic) is replaced: it loads afresh.
        for _ in 0..2 {
            let hosted = match state.hosted.get_mut(&id) {
                Some(h) => h,
                None => match spawn_stage(&id, &self.scratch, self.gpu_memory, self.slots) {
                    Ok(h) => state.hosted.entry(id.clone()).or_insert(h),
                    Err(e) => return refuse(format!("cannot start a stage thread: {e}")),
                },
            };
            match hosted.tx.try_send(work) {
                Ok(()) => {
                    hosted.runs += 1;
                    state.runs.insert(key, (id, open.runner));
                    return;
                }
                Err(mpsc::TrySendError::Full(_)) => {
                    return refuse(format!("the stage's feed is full ({FEED} frames)"));
                }
                Err(mpsc::TrySendError::Disconnected(back)) => {
                    state.hosted.remove(&id);
                    work = back;
                }
            }
        }
        refuse("the stage thread keeps failing".into());
    }

    /// The slice of `open`'s range, for a node without the model: `Some` if it is in the
    /// cache; `None` if it is being fetched (the open waits, and is handled again when it
    /// arrives); `Err` if it cannot be had.
    fn slice(
        &self,
        myself: &ActorRef<StagesMsg>,
        state: &mut StagesState,
        open: &StageOpen,
    ) -> Result<Option<PathBuf>, String> {
        let missing = || {
            format!(
                "no model file {} of {} bytes in {}",
                open.model,
                open.size,
                self.models_dir.display()
            )
        };
        let (Some(travel), Some(swarm)) = (&self.travel, &self.swarm) else {
            return Err(missing());
        };
        // The model is known by the content hash its runner's node gives it.
        let source = swarm
            .view()
            .members()
            .into_iter()
            .find(|m| m.name == open.runner)
            .and_then(|m| m.info)
            .and_then(|i| {
                i.models.into_iter().find(|f| {
                    f.size_bytes == open.size
                        && f.path.file_name().is_some_and(|n| *n == *open.model)
                })
            })
            .and_then(|f| f.sha256)
            .ok_or_else(|| {
                format!(
                    "{}, and the runner's node {} names no content hash for it to fetch it by",
                    missing(),
                    open.runner
                )
            })?;
        let path =
            myco_jobs::model::cache::slice_path(&travel.cache, &source, open.first, open.end);
        if myco_jobs::model::cache::cached(&path).is_some() {
            myco_jobs::model::cache::touch(&path);
            return Ok(Some(path));
        }
        let waiting = state.fetching.entry(path.clone()).or_default();
        waiting.push(open.clone());
        if waiting.len() == 1 {
            let in_use: std::collections::HashSet<PathBuf> =
                state.hosted.keys().map(|(p, _, _)| p.clone()).collect();
            let (travel, me, model) = (travel.clone(), myself.clone(), open.model.clone());
            let (first, end, runner) = (open.first, open.end, open.runner.clone());
            tokio::spawn(async move {
                let got = travel
                    .slice(&model, &source, first, end, Some(&runner), &|p| {
                        in_use.contains(p)
                    })
                    .await;
                let _ = me.cast(StagesMsg::Fetched(path, got.map(|_| ())));
            });
        }
        Ok(None)
    }

    fn close(state: &mut StagesState, key: SeqKey) {
        if let Some((id, _)) = state.runs.remove(&key)
            && let Some(h) = state.hosted.get_mut(&id)
        {
            // A full feed drops the Close: the thread then keeps the run's cache until
            // the stage itself is dropped (idle for LINGER with no run).
            let _ = h.tx.try_send(Work::Close(key));
            h.runs = h.runs.saturating_sub(1);
            h.idle_since = Instant::now();
        }
    }

    /// Close the runs whose runner's node is no longer up (nobody would close them).
    fn close_orphans(&self, state: &mut StagesState) {
        let Some(swarm) = self.swarm.as_ref().filter(|_| !state.runs.is_empty()) else {
            return;
        };
        let up = swarm.view().up();
        let orphans: Vec<SeqKey> = state
            .runs
            .iter()
            .filter(|(_, (_, runner))| !up.contains(runner))
            .map(|(k, _)| *k)
            .collect();
        for key in orphans {
            tracing::info!(job = %key.job, "closing a stage run whose runner left");
            Self::close(state, key);
        }
    }
}

fn spawn_stage(
    id: &StageId,
    scratch: &std::path::Path,
    gpu_memory: Option<u64>,
    slots: u32,
) -> std::io::Result<Hosted> {
    let (tx, rx) = mpsc::sync_channel(FEED);
    let (path, first, end) = id.clone();
    let config = StageConfig {
        scratch: scratch.to_path_buf(),
        gpu_memory,
        slots,
        ..StageConfig::new(MAX_CTX)
    };
    std::thread::Builder::new()
        .name(format!("stage-{first}-{end}"))
        .spawn(move || stage_thread(&path, first, end, config, rx))?;
    Ok(Hosted {
        tx,
        runs: 0,
        idle_since: Instant::now(),
    })
}

impl Stages {
    /// Hand a frame's steps to the stage threads of their runs: the steps for one hosted
    /// stage in one piece of work, so that they are decoded together.
    fn steps(&self, myself: &ActorRef<StagesMsg>, state: &mut StagesState, steps: Vec<StageStep>) {
        let mut per_stage: Vec<(StageId, Vec<Input>)> = Vec::new();
        for step in steps {
            let Some((id, _)) = state.runs.get(&step.key) else {
                continue;
            };
            let input = Input {
                key: step.key,
                pos: step.pos,
                input: match step.input {
                    StepInput::Tokens(t) => StageInput::Tokens(t),
                    StepInput::Hidden(h) => StageInput::Hidden(h),
                },
                sample: step.sample,
            };
            match per_stage.iter_mut().find(|(i, _)| i == id) {
                Some((_, v)) => v.push(input),
                None => per_stage.push((id.clone(), vec![input])),
            }
        }
        for (id, inputs) in per_stage {
            let Some(h) = state.hosted.get(&id) else {
                continue;
            };
            let keys: Vec<SeqKey> = inputs.iter().map(|i| i.key).collect();
            if let Err(mpsc::TrySendError::Full(_)) = h.tx.try_send(Work::Steps(inputs)) {
                let (first, end) = (id.1, id.2);
                for key in keys {
                    tracing::warn!(job = %key.job, first, end, "a stage's feed is full: failing the run");
                    let runner = state.runs.get(&key).map(|(_, r)| r.clone());
                    if let Some(t) = runner.and_then(|r| self.target(myself, &r)) {
                        t.send(StageFrame::Failed {
                            key,
                            node: self.name.clone(),
                            why: format!(
                                "the stage of layers {first}..{end} on {} fell {FEED} frames behind",
                                self.name
                            ),
                            unreachable: None,
                            fatal: false,
                        });
                    }
                    Self::close(state, key);
                }
            }
        }
    }
}

impl Actor for Stages {
    type Msg = StagesMsg;
    type State = StagesState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        // Slices a killed node left behind (they live only while llama.cpp loads them).
        if let Ok(dir) = std::fs::read_dir(&self.scratch) {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().starts_with(".myco-stage-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        myself.send_interval(Duration::from_secs(10), || StagesMsg::Tick);
        Ok(StagesState::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StagesMsg::Frame(frame) => match frame {
                StageFrame::Open(open) => self.open(&myself, state, *open).await,
                StageFrame::Steps(steps) => {
                    // Tokens the last stage sent round the ring tell the runner here too.
                    for step in steps.iter().filter(|s| s.report) {
                        if let (Some(tx), StepInput::Tokens(t)) =
                            (state.runners.get(&step.key), &step.input)
                            && let Some(&token) = t.first()
                        {
                            let _ = tx.try_send(StageFrame::Token {
                                key: step.key,
                                token,
                                eog: false,
                                last: false,
                            });
                        }
                    }
                    self.steps(&myself, state, steps);
                }
                StageFrame::Close { key } => Self::close(state, key),
                report @ (StageFrame::Opened { .. }
                | StageFrame::Token { .. }
                | StageFrame::Failed { .. }) => {
                    if let Some(tx) = report.key().and_then(|k| state.runners.get(&k))
                        && tx.try_send(report).is_err()
                    {
                        // A live runner reads every report before the next step: a full
                        // channel is a runner that is stuck or gone, which its own
                        // deadlines end.
                        tracing::debug!("a stage report for a runner that does not read");
                    }
                }
            },
            StagesMsg::Send(to, frame) => match self.target(&myself, &to) {
                Some(t) => {
                    t.send(frame);
                }
                None => tracing::debug!(node = %to, "a stage frame for a node that is not up"),
            },
            StagesMsg::Listen(key, tx) => {
                state.runners.insert(key, tx);
            }
            StagesMsg::Unlisten(key) => {
                state.runners.remove(&key);
            }
            StagesMsg::Fetched(path, result) => {
                for open in state.fetching.remove(&path).unwrap_or_default() {
                    match &result {
                        Ok(()) => Box::pin(self.open(&myself, state, open)).await,
                        Err(why) => {
                            if let Some(runner) = self.target(&myself, &open.runner) {
                                runner.send(StageFrame::Opened {
                                    key: open.key,
                                    index: open.index,
                                    node: self.name.clone(),
                                    result: Err(why.clone()),
                                });
                            }
                        }
                    }
                }
            }
            StagesMsg::Tick => {
                self.close_orphans(state);
                // Dropping the sender ends the thread, which frees the stage.
                state
                    .hosted
                    .retain(|_, h| h.runs > 0 || h.idle_since.elapsed() < LINGER);
            }
        }
        self.post(state);
        Ok(())
    }
}

impl Stages {
    /// Post the hosted stages to the swarm's board when they changed (heartbeats carry
    /// them: the dashboard shows which node hosts which layers).
    fn post(&self, state: &mut StagesState) {
        let Some(swarm) = &self.swarm else { return };
        let mut now: Vec<HostedStage> = state
            .hosted
            .iter()
            .map(|((path, first, end), h)| HostedStage {
                model: path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                first: *first,
                end: *end,
                runs: h.runs as u32,
            })
            .collect();
        now.sort_by(|a, b| (&a.model, a.first).cmp(&(&b.model, b.first)));
        if now != state.posted {
            swarm.stage_board().set(now.clone());
            state.posted = now;
        }
    }
}

/// One run's place in the chain, as a stage thread keeps it.
#[derive(Debug)]
struct Route {
    key: SeqKey,
    index: u32,
    node: String,
    /// The next stage and its node's name.
    next: Option<(Target, String)>,
    ring: (Target, String),
    runner: Target,
    /// The runner and stage 0 share a node: one frame tells both.
    runner_at_ring: bool,
    sampling: Sampling,
    /// Made on the first sample (the last stage only).
    sampler: Option<Sampler>,
    remaining: u32,
    eog: Vec<u32>,
    n_ctx: u32,
    threads: u32,
    /// Stages in its chain.
    stages: u32,
}

/// One run's input, as a stage thread queues it.
#[derive(Debug)]
struct Input {
    key: SeqKey,
    pos: u32,
    input: StageInput,
    sample: bool,
}

#[derive(Debug)]
enum Work {
    Open(Box<Route>),
    /// Steps of several runs that arrived together.
    Steps(Vec<Input>),
    Close(SeqKey),
}

/// Load the stage, then run its frames until the actor drops the sender. A stage that cannot
/// load answers the Opens already queued and ends (the next Open loads anew); a panic ends it
/// too, after telling the runners.
///
/// Each round decodes, in one llama.cpp call, the next single-position step of each of up to
/// 1/`stages` of its runs (the runs waiting longest first), then one prompt chunk (the oldest),
/// as `infer`'s batcher does: the runs then travel the chain in groups, a group at each stage
/// at once, and a long prompt does not stall the runs that are generating. A run's steps run
/// in the order they came.
fn stage_thread(
    path: &std::path::Path,
    first: u32,
    end: u32,
    config: StageConfig,
    rx: mpsc::Receiver<Work>,
) {
    let started = Instant::now();
    let mut stage = match Stage::load_with(path, first, end, config) {
        Ok(s) => {
            tracing::info!(
                model = %path.display(), first, end,
                mib = s.tensor_bytes() as f64 / (1 << 20) as f64,
                ms = started.elapsed().as_millis() as u64,
                "stage loaded"
            );
            s
        }
        Err(e) => {
            tracing::warn!(model = %path.display(), first, end, error = %e, "stage load failed");
            while let Ok(work) = rx.try_recv() {
                if let Work::Open(route) = work {
                    route.runner.send(StageFrame::Opened {
                        key: route.key,
                        index: route.index,
                        node: route.node.clone(),
                        result: Err(e.to_string()),
                    });
                }
            }
            return;
        }
    };
    let mut runs = Runs {
        n_embd: stage.hparams().n_embd,
        ..Runs::default()
    };
    let mut use_ = Use::new(first, end);
    loop {
        use_.report(&mut runs.away, &mut runs.forward, &mut runs.forward_cpu);
        if runs.idle() {
            let idle = Instant::now();
            let work = rx.recv();
            use_.idle += idle.elapsed();
            match work {
                Ok(work) => runs.take(&mut stage, work),
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(work) => runs.take(&mut stage, work),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        let (batches, wake) = runs.next_batches(&stage);
        if batches.is_empty()
            && let Some(at) = wake
        {
            // A group gathering: wait for its runs (or other work) until it is due.
            let gathering = Instant::now();
            let work = rx.recv_timeout(at.saturating_duration_since(Instant::now()));
            use_.gathering += gathering.elapsed();
            match work {
                Ok(work) => runs.take(&mut stage, work),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            continue;
        }
        for batch in batches {
            let busy = Instant::now();
            use_.decodes += 1;
            use_.rows += batch.len() as u64;
            let ok = runs.run(&mut stage, batch);
            use_.busy += busy.elapsed();
            if !ok {
                return;
            }
        }
    }
}

/// This thread's CPU time (0 where the clock cannot be read).
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.max(0) as u32)
}

/// How a stage thread spent its time, logged (debug) every few seconds while it works: what
/// to look at when a split runs slower than its stages could.
struct Use {
    first: u32,
    end: u32,
    since: Instant,
    decodes: u64,
    rows: u64,
    /// Decoding and passing outputs on.
    busy: Duration,
    /// Waiting for a group's runs ([`GATHER`]).
    gathering: Duration,
    /// Waiting with nothing to do.
    idle: Duration,
}

impl Use {
    fn new(first: u32, end: u32) -> Use {
        Use {
            first,
            end,
            since: Instant::now(),
            decodes: 0,
            rows: 0,
            busy: Duration::ZERO,
            gathering: Duration::ZERO,
            idle: Duration::ZERO,
        }
    }

    fn report(
        &mut self,
        away: &mut (Duration, u64),
        forward: &mut Duration,
        forward_cpu: &mut Duration,
    ) {
        let span = self.since.elapsed();
        if span < Duration::from_secs(1) {
            return;
        }
        if self.decodes > 0 {
            let pct = |d: Duration| 100.0 * d.as_secs_f64() / span.as_secs_f64();
            tracing::debug!(
                first = self.first,
                end = self.end,
                decodes = self.decodes,
                rows_per_decode = self.rows as f64 / self.decodes as f64,
                ms_per_decode = self.busy.as_secs_f64() * 1e3 / self.decodes as f64,
                ms_forward = forward.as_secs_f64() * 1e3 / self.decodes as f64,
                ms_forward_cpu = forward_cpu.as_secs_f64() * 1e3 / self.decodes as f64,
                busy_pct = pct(self.busy),
                gathering_pct = pct(self.gathering),
                idle_pct = pct(self.idle),
                ms_away = away.0.as_secs_f64() * 1e3 / away.1.max(1) as f64,
                "stage use"
            );
        }
        *away = (Duration::ZERO, 0);
        *forward = Duration::ZERO;
        *forward_cpu = Duration::ZERO;
        *self = Use::new(self.first, self.end);
    }
}

/// How long a group of runs waits at a stage for the rest of its runs. llama.cpp's CPU
/// kernels multiply rows 4 at a time and the rest one by one (with the bench model's Q4_0
/// layers: 4 rows in 2.1 ms, 3 rows in 3.2 ms), so a group of 3 that waits for its fourth
/// run costs less than it saves, and once whole the group travels the chain together.
const GATHER: Duration = Duration::from_millis(4);

/// A stage thread's runs and the steps waiting for it.
#[derive(Debug, Default)]
struct Runs {
    routes: HashMap<SeqKey, (u64, Route)>,
    /// Each run's steps in the order they came, with when (a count) each came.
    waiting: HashMap<SeqKey, std::collections::VecDeque<(u64, Input)>>,
    arrived: u64,
    /// When each run's oldest waiting step came.
    since: HashMap<SeqKey, Instant>,
    /// Runs generating here (their steps are single positions), with when each last
    /// decoded here.
    generating: HashMap<SeqKey, Instant>,
    next_seq: u64,
    /// Values in a row of hidden states.
    n_embd: usize,
    /// When each run's last step left this stage (see [`Use`]).
    left: HashMap<SeqKey, Instant>,
    /// Time from a step leaving this stage to the run's next step arriving here, summed, and
    /// how many (the rest of the ring: the other stages and the hops between).
    away: (Duration, u64),
    /// Time in llama.cpp's decode, and this thread's CPU time in it (see [`Use`]).
    forward: Duration,
    forward_cpu: Duration,
}

impl Runs {
    fn idle(&self) -> bool {
        self.waiting.values().all(|q| q.is_empty())
    }

    /// The most runs one decode takes: 1/`stages` of them.
    fn cap(&self) -> usize {
        let stages = self
            .routes
            .values()
            .map(|(_, r)| r.stages)
            .max()
            .unwrap_or(1)
            .max(1) as usize;
        self.routes.len().div_ceil(stages).max(1)
    }

    fn take(&mut self, stage: &mut Stage, work: Work) {
        match work {
            Work::Open(route) => {
                self.next_seq += 1;
                let seq = self.next_seq;
                let result = stage
                    .begin(seq, route.n_ctx, route.threads)
                    .map(|()| StageLoaded {
                        tensor_bytes: stage.tensor_bytes(),
                        tensors: stage.tensors().iter().map(|(n, _)| n.clone()).collect(),
                    })
                    .map_err(|e| e.to_string());
                let ok = result.is_ok();
                route.runner.send(StageFrame::Opened {
                    key: route.key,
                    index: route.index,
                    node: route.node.clone(),
                    result,
                });
                if ok {
                    self.routes.insert(route.key, (seq, *route));
                }
            }
            Work::Close(key) => self.end(stage, key),
            Work::Steps(inputs) => {
                for input in inputs {
                    if let Some(left) = self.left.remove(&input.key) {
                        self.away.0 += left.elapsed();
                        self.away.1 += 1;
                    }
                    if self.routes.contains_key(&input.key) {
                        self.arrived += 1;
                        self.since.entry(input.key).or_insert_with(Instant::now);
                        self.waiting
                            .entry(input.key)
                            .or_default()
                            .push_back((self.arrived, input));
                    }
                }
            }
        }
    }

    fn end(&mut self, stage: &mut Stage, key: SeqKey) {
        if let Some((seq, _)) = self.routes.remove(&key) {
            stage.drop_sequence(seq);
        }
        self.waiting.remove(&key);
        self.since.remove(&key);
        self.generating.remove(&key);
        self.left.remove(&key);
    }

    /// What to decode this round: the single-position steps at the head of up to
    /// 1/`stages` of the runs (oldest first), then the oldest prompt chunk; and when to look
    /// again if a group is gathering ([`GATHER`]).
    fn next_batches(&mut self, stage: &Stage) -> (Vec<Vec<Input>>, Option<Instant>) {
        let cap = self.cap();
        let mut wake = None;
        let mut singles: Vec<(u64, SeqKey)> = Vec::new();
        let mut chunks: Vec<(u64, SeqKey, usize)> = Vec::new();
        for (key, q) in &self.waiting {
            let Some((at, input)) = q.front() else {
                continue;
            };
            match input_rows(&input.input, self.n_embd) {
                1 => singles.push((*at, *key)),
                rows => chunks.push((*at, *key, rows)),
            }
        }
        singles.sort_unstable_by_key(|(at, _)| *at);
        chunks.sort_unstable_by_key(|(at, ..)| *at);
        // Runs decode together only in one context, and in one compute step only with
        // consecutive sequence ids there: the oldest step's run and its waiting neighbours.
        let context = |key: &SeqKey| {
            self.routes
                .get(key)
                .and_then(|(seq, _)| stage.context_of(*seq))
        };
        if let Some((_, oldest)) = singles.first() {
            if let Some((pool, id)) = context(oldest) {
                // Groups are fixed blocks of sequence ids, 1/N of the runs (with 8 runs
                // and 2 stages, 4: one whole tile, see GATHER): a run's group is its block,
                // so groups do not trade runs and, once whole, travel the chain together.
                let block = cap.max(1);
                let block_of = |i: i32| i as usize / block;
                let mine = block_of(id);
                let in_block = |k: &SeqKey| matches!(context(k), Some((p, i)) if p == pool && block_of(i) == mine);
                let mut group: Vec<(u64, SeqKey)> = singles
                    .iter()
                    .filter(|(_, k)| in_block(k))
                    .copied()
                    .collect();
                // Short of its block's generating runs: wait for them a little (the runs it
                // has are not decoded this round). Only the first stage waits: were two
                // stages each to wait for the runs the other holds, neither would get them.
                let first = self.routes.get(oldest).is_some_and(|(_, r)| r.index == 0);
                // Runs of the block that decoded here lately (a run that stopped, or waits
                // for its turn elsewhere, is not waited for).
                let generating = self
                    .generating
                    .iter()
                    .filter(|(k, at)| in_block(k) && at.elapsed() < 5 * GATHER)
                    .count();
                let since = self.since.get(oldest).copied();
                if first
                    && group.len() < generating
                    && let Some(since) = since
                    && since.elapsed() < GATHER
                {
                    wake = Some(since + GATHER);
                    group.clear();
                }
                singles = group;
            } else {
                singles.truncate(1);
            }
        }
        chunks.truncate(1);
        // One chunk a round, decoded alone (above): a prompt is then computed as it is alone
        // (prompts of several runs in one decode part from their lone runs at once).
        let mut batches = Vec::new();
        let since = &mut self.since;
        let mut pop = |key: &SeqKey| {
            let q = self.waiting.get_mut(key)?;
            let input = q.pop_front().map(|(_, i)| i);
            if q.is_empty() {
                self.waiting.remove(key);
                since.remove(key);
            } else {
                since.insert(*key, Instant::now());
            }
            input
        };
        let group: Vec<Input> = singles.iter().filter_map(|(_, k)| pop(k)).collect();
        for input in &group {
            self.generating.insert(input.key, Instant::now());
        }
        if !group.is_empty() {
            batches.push(group);
        }
        let prefill: Vec<Input> = chunks.iter().filter_map(|(_, k, _)| pop(k)).collect();
        if !prefill.is_empty() {
            batches.push(prefill);
        }
        (batches, wake)
    }

    /// Decode one batch and pass each output on. False if the engine panicked (the thread
    /// ends, after telling the runners).
    fn run(&mut self, stage: &mut Stage, batch: Vec<Input>) -> bool {
        let mut steps = Vec::with_capacity(batch.len());
        let mut meta = Vec::with_capacity(batch.len());
        for input in batch {
            let Some((seq, _)) = self.routes.get(&input.key) else {
                continue;
            };
            let rows = input_rows(&input.input, self.n_embd) as u32;
            meta.push((input.key, input.pos, rows, input.sample));
            steps.push(Step {
                seq: *seq,
                pos: input.pos as usize,
                input: input.input,
                logits: input.sample,
            });
        }
        if steps.is_empty() {
            return true;
        }
        let started = Instant::now();
        let cpu = thread_cpu();
        let results =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.forward_batch(steps)));
        self.forward += started.elapsed();
        self.forward_cpu += thread_cpu().saturating_sub(cpu);
        let Ok(results) = results else {
            for (key, ..) in &meta {
                if let Some((_, route)) = self.routes.get(key) {
                    route.runner.send(StageFrame::Failed {
                        key: *key,
                        node: route.node.clone(),
                        why: "the stage engine panicked".into(),
                        unreachable: None,
                        fatal: false,
                    });
                }
            }
            return false;
        };
        let n_vocab = stage.hparams().n_vocab;
        // The outputs for each node, sent together.
        let mut out: Vec<(String, Target, Vec<StageStep>, Vec<SeqKey>)> = Vec::new();
        let mut gone = Vec::new();
        for ((key, pos, rows, sample), result) in meta.into_iter().zip(results) {
            let Some((_, route)) = self.routes.get_mut(&key) else {
                continue;
            };
            match pass_on(route, key, pos, rows, sample, result, n_vocab) {
                Passed::Forward(node, target, step) => {
                    self.left.insert(key, Instant::now());
                    match out.iter_mut().find(|(n, ..)| *n == node) {
                        Some((_, _, steps, keys)) => {
                            steps.push(step);
                            keys.push(key);
                        }
                        None => out.push((node, target, vec![step], vec![key])),
                    }
                }
                Passed::Kept => {}
                Passed::Ended => gone.push(key),
            }
        }
        for (node, target, steps, keys) in out {
            if !target.send(StageFrame::Steps(steps)) {
                for key in keys {
                    if let Some((_, route)) = self.routes.get(&key) {
                        failed(
                            route,
                            key,
                            format!("cannot reach {node}"),
                            Some(&node),
                            false,
                        );
                    }
                    gone.push(key);
                }
            }
        }
        for key in gone {
            self.end(stage, key);
        }
        true
    }
}

/// Positions a step covers: one for a generated token, more for a prompt chunk.
fn input_rows(input: &StageInput, n_embd: usize) -> usize {
    match input {
        StageInput::Tokens(t) => t.len(),
        StageInput::Hidden(h) => h.len() / n_embd.max(1),
    }
}

/// What became of a run's output.
enum Passed {
    /// A step for the next stage (or round the ring), for this node.
    Forward(String, Target, StageStep),
    /// Nothing to send (a prompt chunk before the last, at the last stage).
    Kept,
    /// The run ended here: its last token, or a failure told to its runner.
    Ended,
}

fn failed(
    route: &Route,
    key: SeqKey,
    why: String,
    unreachable: Option<&String>,
    fatal: bool,
) -> bool {
    route.runner.send(StageFrame::Failed {
        key,
        node: route.node.clone(),
        why,
        unreachable: unreachable.cloned(),
        fatal,
    })
}

/// Pass one run's output on: hidden states to the next stage, or (the last stage) a sampled
/// token to the runner and round the ring.
fn pass_on(
    route: &mut Route,
    key: SeqKey,
    pos: u32,
    n_in: u32,
    sample: bool,
    result: Result<StageOutput, myco_jobs::llm::stage::StageError>,
    n_vocab: usize,
) -> Passed {
    match result {
        Ok(StageOutput::Hidden(data)) => match &route.next {
            Some((next, name)) => Passed::Forward(
                name.clone(),
                next.clone(),
                StageStep {
                    key,
                    pos,
                    input: StepInput::Hidden(data),
                    sample,
                    report: false,
                },
            ),
            None => {
                failed(
                    route,
                    key,
                    "no next stage for hidden states".into(),
                    None,
                    true,
                );
                Passed::Ended
            }
        },
        Ok(StageOutput::Logits(_)) if !sample => Passed::Kept,
        Ok(StageOutput::Logits(logits)) => {
            let sampling = &route.sampling;
            let sampler = route.sampler.get_or_insert_with(|| {
                let mut s = Sampler::new(
                    &SamplerParams {
                        temperature: sampling.temperature,
                        top_k: sampling.top_k,
                        top_p: sampling.top_p,
                        min_p: sampling.min_p,
                        repeat_penalty: sampling.repeat_penalty,
                        seed: sampling.seed,
                    },
                    n_vocab,
                );
                s.accept(&sampling.generated);
                s
            });
            let token = sampler.sample(&logits);
            route.remaining = route.remaining.saturating_sub(1);
            let at = pos + n_in;
            let eog = route.eog.contains(&token);
            let last = eog || route.remaining == 0 || at >= route.n_ctx;
            if last || !route.runner_at_ring {
                let told = route.runner.send(StageFrame::Token {
                    key,
                    token,
                    eog,
                    last,
                });
                if !told || last {
                    return Passed::Ended;
                }
            }
            Passed::Forward(
                route.ring.1.clone(),
                route.ring.0.clone(),
                StageStep {
                    key,
                    pos: at,
                    input: StepInput::Tokens(vec![token]),
                    sample: true,
                    report: route.runner_at_ring,
                },
            )
        }
        Err(e) => {
            failed(route, key, e.to_string(), None, e.is_fatal());
            Passed::Ended
        }
    }
}

/// A bare file name: one normal path component (no `/`, `..`, or root).
fn is_file_name(name: &str) -> bool {
    let mut parts = std::path::Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    ) && !name.contains('/')
}

#[cfg(test)]
mod tests {
    use super::is_file_name;

    #[test]
    fn a_stage_opens_only_a_bare_file_name() {
        assert!(is_file_name("llama-3-8b-q4.gguf"));
        for bad in ["../x.gguf", "/etc/passwd", "a/b.gguf", "..", ".", "", "x/"] {
            assert!(!is_file_name(bad), "{bad}");
        }
    }
}
