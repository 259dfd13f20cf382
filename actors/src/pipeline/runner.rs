//! Running a pipeline job: plan the model's layers over the nodes that hold it, open the
//! stages, feed the prompt into the ring, and collect the tokens as the last stage samples
//! them.
//!
//! The runner is the worker that leased the job (on any node that holds the model file: it
//! reads the tokenizer and the tensor sizes from it). It never carries hidden states: the
//! stages send those to each other.
//!
//! Failure: if a node of the plan leaves the swarm (or stops answering), the run is closed
//! and the layers are placed again on the nodes still up, and generation resumes from the
//! prompt plus the tokens generated so far: with greedy sampling the tokens are the same.
//! If they cannot hold the model, or the chain stalls, the attempt fails with the reason
//! and the queue retries it under its rules. The result lists each re-placement.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use myco_jobs::JobError;
use myco_jobs::llm::infer::engine::{Detokenizer, LlmModel};
use myco_jobs::llm::infer::{Finish, Generation, InferError, InferTask, StageReport};
use myco_jobs::llm::stage::ModelInfo;
use myco_runtime::cluster::wire::{
    Sampling, SeqKey, StageFrame, StageOpen, StageStep, StepInput, StreamPiece,
};
use myco_runtime::plan::{self, ModelShape, NodeMemory};
use myco_runtime::queue::JobId;
use ractor::ActorRef;
use tokio::sync::mpsc::{Receiver, Sender};

use crate::pipeline::stages::{MAX_CTX, StagesMsg};
use crate::swarm::view::{MemberView, Swarm};

/// How long stages may take to load.
const OPEN_TIMEOUT: Duration = Duration::from_secs(300);
/// A chain that produces no token for this long is stuck.
const STALL: Duration = Duration::from_secs(120);
/// Placements of one attempt: the first and up to this many re-placements.
const MAX_PLACEMENTS: u32 = 4;
/// Stage reports a placement's channel holds: each stage reports once when it opens, and
/// the last one token per step, which the runner reads before it feeds the next; a full
/// channel is a runner that has stopped reading (the sender drops what does not fit).
const REPORTS: usize = 64;

/// What a runner needs of its node.
#[derive(Debug, Clone)]
pub struct PipelineEnv {
    pub name: String,
    pub home: PathBuf,
    pub stages: ActorRef<StagesMsg>,
    /// The swarm, if this node is in one.
    pub swarm: Option<Swarm>,
    /// Memory offered to stages when the node is not in a swarm (else membership has it).
    pub stage_memory: Option<u64>,
    /// The cap on GPU memory for its stages (`--gpu-memory`).
    pub gpu_memory: Option<u64>,
}

/// The swarm's members as this node sees them (`None` outside a swarm).
fn members(env: &PipelineEnv) -> Option<Vec<MemberView>> {
    Some(env.swarm.as_ref()?.view().members())
}

/// The nodes that could host stages of `model` (file name and size, content hash `sha256`)
/// and the memory each offers: this node and the peers that are up, holding the file or
/// able to fetch their slice of it (a node that serves transfers, when the model's hash is
/// known).
pub async fn candidates(
    env: &PipelineEnv,
    model: &str,
    size: u64,
    sha256: Option<&str>,
) -> Vec<NodeMemory> {
    let Some(members) = members(env).filter(|m| !m.is_empty()) else {
        let (stage_cap, gpu_cap) = (env.stage_memory, env.gpu_memory);
        let offer = tokio::task::spawn_blocking(crate::features::detect)
            .await
            .map(|c| crate::features::stage_memory(&c, stage_cap, gpu_cap))
            .unwrap_or_default();
        return vec![NodeMemory {
            name: env.name.clone(),
            holds: true,
            free_bytes: offer.total,
            gpu_bytes: offer.gpu,
        }];
    };
    members
        .into_iter()
        .filter(MemberView::is_up)
        .filter_map(|m| {
            let info = m.info?;
            let holds = info
                .models
                .iter()
                .any(|f| f.size_bytes == size && f.path.file_name().is_some_and(|n| n == model));
            let fetches = sha256.is_some() && info.transfer_port.is_some();
            (holds || fetches).then_some(NodeMemory {
                name: m.name,
                holds,
                free_bytes: info.stage_memory,
                gpu_bytes: info.stage_gpu_memory,
            })
        })
        .collect()
}

/// The content hash of the model file at `path`, once this node's heartbeats carry it (so
/// that a node asked to run a stage of it knows what to fetch).
fn sha_of(env: &PipelineEnv, path: &Path) -> Option<String> {
    let (name, size) = file_of(path);
    env.swarm
        .as_ref()?
        .view()
        .me
        .as_ref()?
        .models
        .iter()
        .find(|f| f.size_bytes == size && f.path.file_name().is_some_and(|n| *n == *name))?
        .sha256
        .clone()
}

/// The bytes of the slice a stage of `first..end` fetches (its tensors; its KV cache is
/// made where it runs).
pub fn slice_bytes(info: &ModelInfo, first: u32, end: u32) -> u64 {
    let layers: u64 = info.layer_bytes[first as usize..end as usize].iter().sum();
    let embed = if first == 0 { info.embed_bytes } else { 0 };
    let head = if end == info.hp.n_layer {
        info.head_bytes
    } else {
        0
    };
    layers + embed + head
}

/// A model file's name and size, as nodes advertise them.
fn file_of(path: &Path) -> (String, u64) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (name, std::fs::metadata(path).map_or(0, |m| m.len()))
}

/// The shape the planner needs, from the model's header.
pub fn shape(info: &ModelInfo, n_ctx: u32) -> ModelShape {
    ModelShape {
        layer_bytes: info.layer_bytes.clone(),
        embed_bytes: info.embed_bytes,
        head_bytes: info.head_bytes,
        kv_bytes_per_layer: info.kv_bytes_per_layer(n_ctx),
    }
}

/// The nodes that are up now (this node included).
fn up(env: &PipelineEnv) -> Option<BTreeSet<String>> {
    Some(env.swarm.as_ref()?.view().up())
}

/// The tokenizer's view of a request: prompt tokens, end-of-generation tokens.
struct Prepared {
    vocab: LlmModel,
    prompt: Vec<u32>,
    eog: Vec<u32>,
    info: ModelInfo,
    /// The job's context, at most the model's own (stages cover no more).
    n_ctx: u32,
}

fn prepare(path: &Path, task: &InferTask) -> Result<Prepared, JobError> {
    if task.prompt.extras().is_some() {
        return Err(JobError::fatal(
            "a pipeline's last stage samples without a grammar and reports no log-probabilities: tools, JSON schemas and logprobs are not supported for pipeline jobs yet; run the model as an `infer` job on a node that holds it whole",
        ));
    }
    let info = ModelInfo::read(path).map_err(|e| JobError::fatal(e.to_string()))?;
    let vocab = LlmModel::load_vocab(path).map_err(JobError::from)?;
    let text = vocab
        .render(&task.prompt, task.params.chat_template.as_deref())
        .map_err(JobError::from)?;
    let prompt: Vec<u32> = vocab
        .tokenize(&text)
        .into_iter()
        .filter_map(|t| u32::try_from(t).ok())
        .collect();
    let trained = u32::try_from(info.hp.ctx_len).unwrap_or(u32::MAX);
    let n_ctx = task.params.n_ctx.max(8).min(trained).min(MAX_CTX);
    if prompt.is_empty() {
        return Err(JobError::fatal("the prompt is empty"));
    }
    if prompt.len() >= n_ctx as usize {
        return Err(JobError::from(InferError::PromptTooLong {
            tokens: prompt.len(),
            n_ctx,
        }));
    }
    let eog = vocab.eog_tokens();
    Ok(Prepared {
        vocab,
        prompt,
        eog,
        info,
        n_ctx,
    })
}

/// One placement's stages, as planned and as they reported. Dropping it closes the run on
/// every stage (also when the job's timeout drops the runner).
struct Placement {
    key: SeqKey,
    plan: Vec<plan::Stage>,
    reports: Vec<Option<StageReport>>,
    stages: ActorRef<StagesMsg>,
}

impl Placement {
    fn nodes(&self) -> BTreeSet<String> {
        self.plan.iter().map(|s| s.node.clone()).collect()
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        for s in &self.plan {
            let _ = self.stages.cast(StagesMsg::Send(
                s.node.clone(),
                StageFrame::Close { key: self.key },
            ));
        }
        let _ = self.stages.cast(StagesMsg::Unlisten(self.key));
    }
}

/// How a placement ended.
enum Ended {
    Done(Finish),
    /// These nodes left: place again without them.
    Lost(BTreeSet<String>, String),
}

/// Run a pipeline job. `run` is the lease token (it tags streamed pieces).
pub async fn run(
    env: &PipelineEnv,
    job: JobId,
    task: &InferTask,
    run: u64,
    cancel: Arc<AtomicBool>,
    stream: Option<Sender<StreamPiece>>,
) -> Result<Vec<u8>, JobError> {
    let path = task.model.resolve(&env.home);
    let prepared = {
        let (path, task) = (path.clone(), task.clone());
        tokio::task::spawn_blocking(move || prepare(&path, &task))
            .await
            .map_err(|e| JobError::retryable(format!("preparing the prompt: {e}")))??
    };
    let (model, size) = file_of(&path);
    let sha256 = sha_of(env, &path);
    let n_ctx = prepared.n_ctx;
    let shape = shape(&prepared.info, n_ctx);

    let mut state = Progress {
        tokens: Vec::new(),
        text: Detokenizer::new(&task.params.stop),
        piece: Vec::new(),
        run,
        stream,
    };
    let mut lost: BTreeSet<String> = BTreeSet::new();
    let mut replaced: Vec<String> = Vec::new();
    // When the first token came, and how long after its placement's prompt was fed (what
    // `infer` reports as prompt_ms: prompt processing until the first token).
    let mut first_token: Option<(Instant, f64)> = None;
    for placement_no in 0..MAX_PLACEMENTS {
        let nodes: Vec<NodeMemory> = candidates(env, &model, size, sha256.as_deref())
            .await
            .into_iter()
            .filter(|n| !lost.contains(&n.name))
            .collect();
        let stages = plan::plan(&shape, &nodes).map_err(|e| {
            let why = format!("cannot place {model}: {e}");
            match replaced.last() {
                Some(r) => JobError::retryable(format!("{r}; {why}")),
                None => JobError::retryable(why),
            }
        })?;
        let key = SeqKey {
            job,
            run: run.wrapping_mul(16).wrapping_add(u64::from(placement_no)),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(REPORTS);
        let _ = env.stages.cast(StagesMsg::Listen(key, tx));
        let mut placement = Placement {
            key,
            reports: vec![None; stages.len()],
            plan: stages,
            stages: env.stages.clone(),
        };
        let remaining = task
            .params
            .max_tokens
            .saturating_sub(state.tokens.len() as u32);
        let result = drive(
            env,
            &mut placement,
            &prepared,
            task,
            &model,
            size,
            n_ctx,
            remaining,
            &mut state,
            &mut rx,
            &cancel,
            &mut first_token,
        )
        .await;
        match result {
            Ok(Ended::Done(finish)) => {
                let text = state.finish().await;
                let generation = Generation {
                    text,
                    completion_tokens: state.tokens.len() as u32,
                    tokens: state.tokens.iter().map(|&t| t as i32).collect(),
                    prompt_tokens: prepared.prompt.len() as u32,
                    cached_tokens: 0,
                    finish_reason: finish,
                    prompt_ms: first_token.map_or(0.0, |(_, ms)| ms),
                    generation_ms: first_token
                        .map_or(0.0, |(at, _)| at.elapsed().as_secs_f64() * 1000.0),
                    stages: std::mem::take(&mut placement.reports)
                        .into_iter()
                        .flatten()
                        .collect(),
                    replaced,
                    tool_calls: Vec::new(),
                    logprobs: None,
                };
                let mut out = serde_json::to_vec(&generation)
                    .map_err(|e| JobError::fatal(format!("encoding the result: {e}")))?;
                out.push(b'\n');
                return Ok(out);
            }
            Ok(Ended::Lost(gone, why)) => {
                tracing::warn!(%job, nodes = ?gone, %why, "placing the stages again");
                replaced.push(why);
                lost.extend(gone);
            }
            Err(e) => return Err(e),
        }
    }
    Err(JobError::retryable(format!(
        "stages were lost {MAX_PLACEMENTS} times: {}",
        replaced.join("; ")
    )))
}

/// What a job has generated so far (kept across placements).
struct Progress {
    tokens: Vec<u32>,
    text: Detokenizer,
    piece: Vec<u8>,
    run: u64,
    stream: Option<Sender<StreamPiece>>,
}

impl Progress {
    /// Add a token; true if a stop string ended generation.
    async fn push(&mut self, vocab: &LlmModel, token: u32) -> bool {
        self.tokens.push(token);
        vocab.piece(token as i32, &mut self.piece);
        let (text, stopped) = self.text.push(&self.piece);
        if let Some(s) = &self.stream {
            let _ = s
                .send(StreamPiece {
                    run: self.run,
                    token: Some(token as i32),
                    text,
                })
                .await;
        }
        stopped
    }

    async fn finish(&mut self) -> String {
        let rest = self.text.flush();
        if !rest.is_empty()
            && let Some(s) = &self.stream
        {
            let _ = s
                .send(StreamPiece {
                    run: self.run,
                    token: None,
                    text: rest,
                })
                .await;
        }
        self.text.text()
    }
}

/// Prompt tokens per feed: llama.cpp's compute step, so the stages split a prompt as `infer`
/// does (and compute the same numbers); it also caps a hidden-state frame at `CHUNK × n_embd`
/// f32 and paces progress.
const CHUNK: usize = myco_jobs::llm::stage::UBATCH as usize;

/// Open one placement's stages and generate until the end, a lost node, or an error.
#[allow(clippy::too_many_arguments)]
async fn drive(
    env: &PipelineEnv,
    placement: &mut Placement,
    prepared: &Prepared,
    task: &InferTask,
    model: &str,
    size: u64,
    n_ctx: u32,
    remaining: u32,
    state: &mut Progress,
    rx: &mut Receiver<StageFrame>,
    cancel: &AtomicBool,
    first_token: &mut Option<(Instant, f64)>,
) -> Result<Ended, JobError> {
    let key = placement.key;
    let p = &task.params;
    for (i, s) in placement.plan.iter().enumerate() {
        let open = StageOpen {
            key,
            index: i as u32,
            model: model.to_owned(),
            size,
            first: s.first,
            end: s.end,
            n_ctx,
            threads: p.threads,
            next: placement.plan.get(i + 1).map(|n| n.node.clone()),
            ring: placement.plan[0].node.clone(),
            runner: env.name.clone(),
            sampling: Sampling {
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
                min_p: p.min_p,
                repeat_penalty: p.repeat_penalty,
                // The first placement draws as `infer` does with this seed; a new placement
                // draws anew, but reproducibly.
                seed: p
                    .seed
                    .wrapping_add((state.tokens.len() as u32).wrapping_mul(0x9E37_79B9)),
                generated: state.tokens.clone(),
            },
            max_tokens: remaining,
            eog: prepared.eog.clone(),
            stages: placement.plan.len() as u32,
        };
        let _ = env.stages.cast(StagesMsg::Send(
            s.node.clone(),
            StageFrame::Open(Box::new(open)),
        ));
    }
    let mut watch = Watch::new(env, placement);
    // Wait for every stage to load (and fetch its slice, where it must).
    let mut deadline = Instant::now() + OPEN_TIMEOUT;
    while placement.reports.iter().any(Option::is_none) {
        match watch.next(env, placement, rx, cancel, deadline).await? {
            Event::Frame(StageFrame::Opened {
                index,
                node,
                result,
                ..
            }) => {
                let i = index as usize;
                let Some(s) = placement.plan.get(i) else {
                    continue;
                };
                let loaded = result.map_err(|why| {
                    JobError::retryable(format!("the stage on {node} cannot load: {why}"))
                })?;
                placement.reports[i].get_or_insert(StageReport {
                    node,
                    first: s.first,
                    end: s.end,
                    tensor_bytes: loaded.tensor_bytes,
                    tensors: loaded.tensors,
                });
            }
            // A stage node fetching its slice is not stalled.
            Event::Stalled if fetching(env, placement) => {
                deadline = Instant::now() + OPEN_TIMEOUT;
            }
            Event::Stalled => {
                return Err(JobError::retryable(format!(
                    "the stages did not load within {}s",
                    OPEN_TIMEOUT.as_secs()
                )));
            }
            event => {
                if let Some(end) = settle(event, placement, "while the stages loaded") {
                    return end;
                }
            }
        }
    }
    tracing::info!(
        plan = %plan::explain(&placement.plan).trim_end().replace('\n', "; "),
        "pipeline stages open"
    );
    // The prompt, and what was generated before a re-placement, in chunks.
    // The prompt in chunks, then (a resumed run) each token generated before, one at a
    // time as it was the first time: the stages then compute the same numbers again, and a
    // greedy run goes on with the same tokens.
    let fed = Instant::now();
    let feed: Vec<&[u32]> = prepared
        .prompt
        .chunks(CHUNK)
        .chain(state.tokens.chunks(1))
        .collect();
    let chunks = feed.len();
    let mut pos = 0u32;
    for (i, chunk) in feed.into_iter().enumerate() {
        let _ = env.stages.cast(StagesMsg::Send(
            placement.plan[0].node.clone(),
            StageFrame::Steps(vec![StageStep {
                key,
                pos,
                input: StepInput::Tokens(chunk.to_vec()),
                sample: i + 1 == chunks,
                report: false,
            }]),
        ));
        pos += chunk.len() as u32;
    }
    // The first token waits for the whole prompt.
    let mut deadline = Instant::now() + STALL * chunks as u32;
    loop {
        match watch.next(env, placement, rx, cancel, deadline).await? {
            Event::Frame(StageFrame::Token {
                token, eog, last, ..
            }) => {
                deadline = Instant::now() + STALL;
                first_token
                    .get_or_insert_with(|| (Instant::now(), fed.elapsed().as_secs_f64() * 1000.0));
                if eog || state.push(&prepared.vocab, token).await {
                    return Ok(Ended::Done(Finish::Stop));
                }
                if last {
                    return Ok(Ended::Done(Finish::Length));
                }
            }
            Event::Stalled => {
                return Err(JobError::retryable(format!(
                    "the stage chain produced no token for {}s (a stage node hangs)",
                    STALL.as_secs()
                )));
            }
            event => {
                let when = format!("after {} tokens", state.tokens.len());
                if let Some(end) = settle(event, placement, &when) {
                    return end;
                }
            }
        }
    }
}

/// Whether a node of the placement has a transfer in flight (its heartbeat says).
fn fetching(env: &PipelineEnv, placement: &Placement) -> bool {
    let Some(swarm) = &env.swarm else {
        return false;
    };
    let nodes = placement.nodes();
    swarm
        .view()
        .members()
        .into_iter()
        .filter(|m| nodes.contains(&m.name))
        .any(|m| m.info.is_some_and(|i| !i.transfers.is_empty()))
}

/// `b (layers 3..5)`.
fn describe(plan: &[plan::Stage], node: &str) -> String {
    plan.iter()
        .find(|s| s.node == node)
        .map(|s| format!("{node} (layers {}..{})", s.first, s.end))
        .unwrap_or_else(|| node.to_owned())
}

/// What a failure or a lost node means for the run: `None` for a frame to ignore.
fn settle(event: Event, placement: &Placement, when: &str) -> Option<Result<Ended, JobError>> {
    let resumed = "; placed the layers again and resumed";
    match event {
        Event::Frame(StageFrame::Failed {
            node,
            why,
            unreachable: Some(gone),
            ..
        }) => {
            tracing::debug!(%node, %why, "a stage lost touch with the next");
            Some(Ok(Ended::Lost(
                BTreeSet::from([gone.clone()]),
                format!(
                    "{} became unreachable from {node} {when}{resumed}",
                    describe(&placement.plan, &gone)
                ),
            )))
        }
        Event::Frame(StageFrame::Failed {
            node, why, fatal, ..
        }) => {
            let message = format!("the stage on {node} failed: {why}");
            Some(Err(if fatal {
                JobError::fatal(message)
            } else {
                JobError::retryable(message)
            }))
        }
        Event::Lost(gone) => {
            let names: Vec<String> = gone.iter().map(|g| describe(&placement.plan, g)).collect();
            Some(Ok(Ended::Lost(
                gone,
                format!("{} left {when}{resumed}", names.join(", ")),
            )))
        }
        Event::Frame(_) | Event::Stalled => None,
    }
}

enum Event {
    Frame(StageFrame),
    Lost(BTreeSet<String>),
    Stalled,
}

/// Waits for the runner's next event, checking every 250 ms for cancellation, the deadline
/// and the placement's nodes still being up (and the same processes: a node that restarted
/// at once has lost its stages, though its name never left the swarm).
struct Watch {
    check: tokio::time::Interval,
    /// The cluster sessions of each peer of the placement when it began.
    sessions: std::collections::HashMap<String, Vec<u64>>,
}

/// The cluster sessions of the peers named in `nodes`.
fn sessions(
    env: &PipelineEnv,
    nodes: &BTreeSet<String>,
) -> std::collections::HashMap<String, Vec<u64>> {
    let Some(swarm) = &env.swarm else {
        return Default::default();
    };
    swarm
        .view()
        .peers
        .iter()
        .filter(|p| nodes.contains(&p.name))
        .map(|p| (p.name.clone(), p.sessions.clone()))
        .collect()
}

impl Watch {
    fn new(env: &PipelineEnv, placement: &Placement) -> Watch {
        let mut check = tokio::time::interval(Duration::from_millis(250));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Watch {
            check,
            sessions: sessions(env, &placement.nodes()),
        }
    }

    async fn next(
        &mut self,
        env: &PipelineEnv,
        placement: &Placement,
        rx: &mut Receiver<StageFrame>,
        cancel: &AtomicBool,
        deadline: Instant,
    ) -> Result<Event, JobError> {
        loop {
            tokio::select! {
                biased;
                frame = rx.recv() => {
                    return match frame {
                        Some(f) => Ok(Event::Frame(f)),
                        None => Err(JobError::retryable("the node's stage host stopped")),
                    };
                }
                _ = self.check.tick() => {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(JobError::retryable("cancelled"));
                    }
                    if Instant::now() >= deadline {
                        return Ok(Event::Stalled);
                    }
                    if let Some(up) = up(env) {
                        let mut gone: BTreeSet<String> =
                            placement.nodes().difference(&up).cloned().collect();
                        // Up, but none of the sessions it had: it restarted.
                        for (node, now) in sessions(env, &placement.nodes()) {
                            let before = self.sessions.get(&node);
                            if before.is_some_and(|b| !b.is_empty() && !now.iter().any(|s| b.contains(s))) {
                                gone.insert(node);
                            }
                        }
                        if !gone.is_empty() {
                            return Ok(Event::Lost(gone));
                        }
                    }
                }
            }
        }
    }
}

/// The plan for `myco plan`: the model's header from this node's file, the memory of the
/// nodes that hold it.
pub async fn plan_for(
    env: &PipelineEnv,
    path: &Path,
    n_ctx: u32,
) -> Result<
    (
        ModelInfo,
        ModelShape,
        Vec<NodeMemory>,
        Result<Vec<plan::Stage>, plan::PlanError>,
    ),
    String,
> {
    let p = path.to_path_buf();
    let info = tokio::task::spawn_blocking(move || ModelInfo::read(&p))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let (model, size) = file_of(path);
    let nodes = candidates(env, &model, size, sha_of(env, path).as_deref()).await;
    let shape = shape(&info, n_ctx);
    let planned = plan::plan(&shape, &nodes);
    Ok((info, shape, nodes, planned))
}
