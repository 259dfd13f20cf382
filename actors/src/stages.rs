//! The Stages actor: hosts this node's layer-range stages of pipeline jobs and routes the
//! stage chain's frames.
//!
//! A runner (the worker running a pipeline job, on any node) sends `Open` to each node of
//! its plan. Each loaded stage lives on its own thread, which owns the candle [`Stage`] and
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

use myco_jobs::stage::{Sampler, Stage, StageInput, StageOutput};
use myco_runtime::cluster::wire::{SeqKey, StageFrame, StageLoaded, StageOpen, Wire};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc::UnboundedSender;

use crate::membership::MembershipMsg;
use crate::peer::PeerMsg;

/// How long an unused stage stays loaded (the next job of the same model reuses it).
const LINGER: Duration = Duration::from_secs(60);

/// Positions a stage's rope tables cover (at most the model's own context).
const MAX_CTX: usize = 32_768;

/// Messages to the [`Stages`] actor.
#[derive(Debug)]
pub enum StagesMsg {
    /// A frame for this node: from a peer, from a stage here, or from a runner here.
    Frame(StageFrame),
    /// Send a frame to the node `to` (this node included).
    Send(String, StageFrame),
    /// Frames for the runner of `key` (`Opened`, `Token`, `Failed`) go to this channel.
    Listen(SeqKey, UnboundedSender<StageFrame>),
    Unlisten(SeqKey),
    /// Unload stages unused for [`LINGER`] (internal).
    Tick,
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
    pub membership: Option<ActorRef<MembershipMsg>>,
}

/// A loaded (or loading) stage and its thread.
#[derive(Debug)]
struct Hosted {
    tx: mpsc::Sender<Work>,
    runs: usize,
    idle_since: Instant,
}

type StageId = (PathBuf, u32, u32);

#[derive(Debug, Default)]
pub struct StagesState {
    hosted: HashMap<StageId, Hosted>,
    /// Which hosted stage each run uses here.
    runs: HashMap<SeqKey, StageId>,
    runners: HashMap<SeqKey, UnboundedSender<StageFrame>>,
}

impl Stages {
    async fn target(&self, myself: &ActorRef<StagesMsg>, node: &str) -> Option<Target> {
        if node == self.name {
            return Some(Target::Local(myself.clone()));
        }
        let m = self.membership.as_ref()?;
        m.call(|r| MembershipMsg::PeerRef(node.to_owned(), r), None)
            .await
            .ok()?
            .success_or(())
            .ok()
            .flatten()
            .map(Target::Remote)
    }

    async fn open(&self, myself: &ActorRef<StagesMsg>, state: &mut StagesState, open: StageOpen) {
        let key = open.key;
        let Some(runner) = self.target(myself, &open.runner).await else {
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
        let path = self.models_dir.join(&open.model);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == open.size => {}
            _ => {
                return refuse(format!(
                    "{} has no model file {} of {} bytes in {}",
                    self.name,
                    open.model,
                    open.size,
                    self.models_dir.display()
                ));
            }
        }
        let ring = self.target(myself, &open.ring).await;
        let next = match &open.next {
            Some(n) => match self.target(myself, n).await {
                Some(t) => Some(t),
                None => return refuse(format!("the next stage's node {n} is not up")),
            },
            None => None,
        };
        let Some(ring) = ring else {
            return refuse(format!("stage 0's node {} is not up", open.ring));
        };
        let id: StageId = (path.clone(), open.first, open.end);
        let hosted = match state.hosted.entry(id.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let (tx, rx) = mpsc::channel();
                let (first, end) = (open.first, open.end);
                let spawned = std::thread::Builder::new()
                    .name(format!("stage-{first}-{end}"))
                    .spawn(move || stage_thread(&path, first, end, rx));
                if let Err(e) = spawned {
                    return refuse(format!("cannot start a stage thread: {e}"));
                }
                v.insert(Hosted {
                    tx,
                    runs: 0,
                    idle_since: Instant::now(),
                })
            }
        };
        hosted.runs += 1;
        let route = Route {
            key,
            index: open.index,
            node: self.name.clone(),
            next: next.zip(open.next.clone()),
            ring: (ring, open.ring.clone()),
            runner,
            sampler: Sampler::new(
                open.sampling.temperature,
                open.sampling.top_k,
                open.sampling.top_p,
                open.sampling.seed,
            ),
            remaining: open.max_tokens,
            eog: open.eog,
            n_ctx: open.n_ctx,
        };
        let _ = hosted.tx.send(Work::Open(Box::new(route)));
        if let Some(old) = state.runs.insert(key, id) {
            // The same run opened twice here: forget the first.
            if let Some(h) = state.hosted.get_mut(&old) {
                h.runs = h.runs.saturating_sub(1);
            }
        }
    }

    fn close(state: &mut StagesState, key: SeqKey) {
        if let Some(id) = state.runs.remove(&key)
            && let Some(h) = state.hosted.get_mut(&id)
        {
            let _ = h.tx.send(Work::Close(key));
            h.runs = h.runs.saturating_sub(1);
            h.idle_since = Instant::now();
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
                StageFrame::Feed { key, pos, tokens } => {
                    if let Some(h) = state.runs.get(&key).and_then(|id| state.hosted.get(id)) {
                        let input = StageInput::Tokens(tokens);
                        let _ = h.tx.send(Work::Input { key, pos, input });
                    }
                }
                StageFrame::Hidden { key, pos, data } => {
                    if let Some(h) = state.runs.get(&key).and_then(|id| state.hosted.get(id)) {
                        let input = StageInput::Hidden(data);
                        let _ = h.tx.send(Work::Input { key, pos, input });
                    }
                }
                StageFrame::Close { key } => Self::close(state, key),
                report @ (StageFrame::Opened { .. }
                | StageFrame::Token { .. }
                | StageFrame::Failed { .. }) => {
                    let key = match &report {
                        StageFrame::Opened { key, .. }
                        | StageFrame::Token { key, .. }
                        | StageFrame::Failed { key, .. } => *key,
                        _ => return Ok(()),
                    };
                    if let Some(tx) = state.runners.get(&key) {
                        let _ = tx.send(report);
                    }
                }
            },
            StagesMsg::Send(to, frame) => match self.target(&myself, &to).await {
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
            StagesMsg::Tick => {
                // Dropping the sender ends the thread, which frees the stage.
                state
                    .hosted
                    .retain(|_, h| h.runs > 0 || h.idle_since.elapsed() < LINGER);
            }
        }
        Ok(())
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
    sampler: Sampler,
    remaining: u32,
    eog: Vec<u32>,
    n_ctx: u32,
}

#[derive(Debug)]
enum Work {
    Open(Box<Route>),
    Input {
        key: SeqKey,
        pos: u32,
        input: StageInput,
    },
    Close(SeqKey),
}

/// Load the stage, then run its frames in order until the actor drops the sender.
fn stage_thread(path: &std::path::Path, first: u32, end: u32, rx: mpsc::Receiver<Work>) {
    let started = Instant::now();
    let mut stage = Stage::load(path, first, end, MAX_CTX);
    match &stage {
        Ok(s) => tracing::info!(
            model = %path.display(), first, end,
            mib = s.tensor_bytes() as f64 / (1 << 20) as f64,
            ms = started.elapsed().as_millis() as u64,
            "stage loaded"
        ),
        Err(e) => {
            tracing::warn!(model = %path.display(), first, end, error = %e, "stage load failed")
        }
    }
    let mut routes: HashMap<SeqKey, (u64, Route)> = HashMap::new();
    let mut next_seq = 0u64;
    while let Ok(work) = rx.recv() {
        match work {
            Work::Open(route) => {
                let result = match &stage {
                    Ok(s) => Ok(StageLoaded {
                        tensor_bytes: s.tensor_bytes(),
                        tensors: s.tensors().iter().map(|(n, _)| n.clone()).collect(),
                    }),
                    Err(e) => Err(format!("{}: {e}", route.node)),
                };
                route.runner.send(StageFrame::Opened {
                    key: route.key,
                    index: route.index,
                    node: route.node.clone(),
                    result,
                });
                next_seq += 1;
                routes.insert(route.key, (next_seq, *route));
            }
            Work::Close(key) => {
                if let (Some((seq, _)), Ok(s)) = (routes.remove(&key), stage.as_mut()) {
                    s.drop_sequence(seq);
                }
            }
            Work::Input { key, pos, input } => {
                let (Some((seq, route)), Ok(s)) = (routes.get_mut(&key), stage.as_mut()) else {
                    continue;
                };
                let n_in = match &input {
                    StageInput::Tokens(t) => t.len(),
                    StageInput::Hidden(h) => h.len() / s.hparams().n_embd.max(1),
                } as u32;
                let failed = |route: &Route, why: String, unreachable: Option<&String>| {
                    route.runner.send(StageFrame::Failed {
                        key,
                        node: route.node.clone(),
                        why,
                        unreachable: unreachable.cloned(),
                    });
                };
                match s.forward(*seq, pos as usize, input) {
                    Ok(StageOutput::Hidden(data)) => match &route.next {
                        Some((next, name)) => {
                            if !next.send(StageFrame::Hidden { key, pos, data }) {
                                failed(route, format!("cannot reach {name}"), Some(name));
                            }
                        }
                        None => failed(route, "no next stage for hidden states".into(), None),
                    },
                    Ok(StageOutput::Logits(logits)) => {
                        let token = route.sampler.sample(&logits);
                        route.remaining = route.remaining.saturating_sub(1);
                        let at = pos + n_in;
                        let eog = route.eog.contains(&token);
                        let last = eog || route.remaining == 0 || at >= route.n_ctx;
                        route.runner.send(StageFrame::Token {
                            key,
                            token,
                            eog,
                            last,
                        });
                        if !last {
                            let feed = StageFrame::Feed {
                                key,
                                pos: at,
                                tokens: vec![token],
                            };
                            if !route.ring.0.send(feed) {
                                let name = &route.ring.1;
                                failed(route, format!("cannot reach {name}"), Some(name));
                            }
                        }
                    }
                    Err(e) => failed(route, e.to_string(), None),
                }
            }
        }
    }
}
