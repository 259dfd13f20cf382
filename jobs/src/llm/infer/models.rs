//! A node's loaded LLMs ([`Models`]: kept while memory allows, their GPU layers decided at
//! load by [`GpuPolicy`]) and how it serves requests to them ([`Served`]: in the model's
//! shared batch, [`super::batch`], as many at once as [`Serving`] allows and their KV caches
//! fit).
//!
//! Synchronous, like the engine: callers run on executor threads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::batch::{Batcher, Event, Request};
use super::engine::{Detokenizer, LlmModel, devices, threads};
use super::types::{Finish, Generation, InferError, InferParams, Prompt};

/// Memory kept free beyond a model's file size when deciding what stays loaded (contexts,
/// KV caches, the rest of the node).
pub const HEADROOM: u64 = 512 << 20;

/// A node's loaded models, shared by the executors it gives a clone to (each request makes
/// its own context), least recently used first. They stay loaded while memory allows:
/// loading one more evicts the least recently used until the new file fits, with
/// [`HEADROOM`] to spare, both in available memory and beside the models kept (llama.cpp
/// maps model files, and mapped pages count as available, so the sizes of the loaded files
/// are counted against total memory too). A model still in use by a running request stays
/// alive (it is an `Arc`) until that request ends.
///
/// Owned by the node, not the process: two nodes in one process (tests, an embedded node)
/// keep separate caches. Only the llama.cpp backend ([`backend`]) is process-wide.
#[derive(Clone, Default)]
pub struct Models {
    loaded: Arc<Mutex<Loaded>>,
    gpu: GpuPolicy,
    serving: Serving,
}

/// The loaded models by path and the GPU layers asked for (None: as many as fit), least
/// recently used first.
type Loaded = Vec<((PathBuf, Option<u32>), Arc<Entry>)>;

/// A loaded model and its batchers, one per context size and thread count asked for. The
/// batchers' threads hold the model, not the entry: evicting the entry ends them (once their
/// requests are done) and frees the model.
struct Entry {
    model: Arc<LlmModel>,
    batchers: Mutex<HashMap<(u32, i32), Batcher>>,
}

/// How a node serves requests to its models: how many at once per model (`n_parallel`), and
/// the decode threads of a request that does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serving {
    /// Requests decoded together in one model's context, at most (fewer when their KV caches
    /// do not fit in memory).
    pub parallel: u32,
    /// Decode threads (0: one per core).
    pub threads: u32,
}

impl Default for Serving {
    fn default() -> Self {
        Serving {
            parallel: DEFAULT_PARALLEL,
            threads: 0,
        }
    }
}

/// Requests a node decodes together per model unless told (`--parallel`).
pub const DEFAULT_PARALLEL: u32 = 4;

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("loaded", &self.loaded())
            .field("gpu", &self.gpu)
            .finish()
    }
}

/// How a node puts LLM layers on its GPU (a build with a GPU backend, on a machine with a
/// GPU): `layers` of each model, for jobs that do not say (`gpu_layers` in `[infer]`);
/// unset, as many as fit in the GPU's free memory, of which the node uses at most `memory`.
/// What does not fit runs on the CPU, from RAM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuPolicy {
    /// The node's `--gpu-layers`.
    pub layers: Option<u32>,
    /// The node's `--gpu-memory`: bytes of GPU memory its models may use.
    pub memory: Option<u64>,
}

impl GpuPolicy {
    /// The GPU memory models may take now: the first GPU's free memory as its backend reads
    /// it, at most `memory`. None without a GPU.
    pub fn budget(&self) -> Option<u64> {
        let gpu = devices().into_iter().find(|d| {
            matches!(
                d.kind,
                crate::llm::ffi::DeviceKind::Gpu | crate::llm::ffi::DeviceKind::Igpu
            )
        })?;
        Some(self.memory.map_or(gpu.free, |m| m.min(gpu.free)))
    }

    /// The layers of the model at `path` to put on the GPU: `asked` (the job's), else the
    /// node's, else all that fit in [`GpuPolicy::budget`] with their KV cache for `n_ctx`
    /// positions. None leaves it to llama.cpp (every layer), which is also what a machine
    /// without a GPU gets (there is nothing to offload to).
    pub fn layers_for(&self, path: &Path, asked: Option<u32>, n_ctx: u32) -> Option<u32> {
        if let Some(n) = asked.or(self.layers) {
            return Some(n);
        }
        let budget = self.budget()?;
        fit_layers(path, n_ctx, budget)
    }
}

/// How many layers of the whole model at `path` fit in `budget` bytes of GPU memory (more
/// than the model has: all, and its output head). Needs the GGUF reader of the stage engine;
/// a build without it (or a file it cannot read) leaves the choice to llama.cpp.
#[cfg(feature = "pipeline")]
fn fit_layers(path: &Path, n_ctx: u32, budget: u64) -> Option<u32> {
    let info = crate::llm::stage::info::ModelInfo::read(path).ok()?;
    Some(info.gpu_layers_that_fit(0, info.hp.n_layer, n_ctx, budget, true))
}

#[cfg(not(feature = "pipeline"))]
fn fit_layers(_: &Path, _: u32, _: u64) -> Option<u32> {
    None
}

impl Models {
    /// An empty cache, layers on the GPU as many as fit.
    pub fn new() -> Models {
        Models::default()
    }

    /// An empty cache with the node's GPU policy.
    pub fn with_gpu(gpu: GpuPolicy) -> Models {
        Models {
            gpu,
            ..Models::default()
        }
    }

    /// The same cache settings, serving requests as `serving` says.
    pub fn serving(self, serving: Serving) -> Models {
        Models { serving, ..self }
    }

    /// The model at `path` ready to serve requests in its shared batch ([`Served`]), loaded
    /// as [`Models::get_for`] loads it.
    pub fn serve(
        &self,
        path: &Path,
        gpu_layers: Option<u32>,
        n_ctx: u32,
    ) -> Result<Served, InferError> {
        check_context(path, n_ctx)?;
        let entry = self.entry(path, gpu_layers, n_ctx, || memory().0, || memory().1)?;
        Ok(Served {
            entry,
            serving: self.serving,
        })
    }

    /// The model at `path`, loaded once per cache and kept while memory allows.
    pub fn get(&self, path: &Path) -> Result<Arc<LlmModel>, InferError> {
        self.get_for(path, None, InferParams::default().n_ctx)
    }

    /// The model at `path` with `gpu_layers` on the GPU (None: the node's policy), sized for
    /// requests of `n_ctx` positions when it is loaded now.
    pub fn get_for(
        &self,
        path: &Path,
        gpu_layers: Option<u32>,
        n_ctx: u32,
    ) -> Result<Arc<LlmModel>, InferError> {
        Ok(self
            .entry(path, gpu_layers, n_ctx, || memory().0, || memory().1)?
            .model
            .clone())
    }

    /// Like [`Models::get`], with the available-memory reading and the total given (for
    /// tests).
    pub fn get_with(
        &self,
        path: &Path,
        available: impl Fn() -> u64,
        total: u64,
    ) -> Result<Arc<LlmModel>, InferError> {
        let n_ctx = InferParams::default().n_ctx;
        Ok(self
            .entry(path, None, n_ctx, available, || total)?
            .model
            .clone())
    }

    fn entry(
        &self,
        path: &Path,
        gpu_layers: Option<u32>,
        n_ctx: u32,
        available: impl Fn() -> u64,
        total: impl Fn() -> u64,
    ) -> Result<Arc<Entry>, InferError> {
        let key = (path.to_path_buf(), gpu_layers);
        {
            let mut loaded = self.lock();
            if let Some(i) = loaded.iter().position(|(k, _)| *k == key) {
                let entry = loaded.remove(i);
                let model = entry.1.clone();
                loaded.push(entry);
                return Ok(model);
            }
            // Make room first: evicting after the load would have both in memory at once.
            let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
            let need = size(path) + HEADROOM;
            // Read only when a model is loaded (not per request: a memory reading each).
            let total = if loaded.is_empty() { u64::MAX } else { total() };
            while !loaded.is_empty()
                && (available() < need
                    || loaded.iter().map(|((p, _), _)| size(p)).sum::<u64>() + need > total)
            {
                let ((evicted, _), _) = loaded.remove(0);
                tracing::info!(model = %evicted.display(), "evicted the least recently used model to make room");
            }
        }
        // Load outside the lock: other threads keep using other models meanwhile. The GPU's
        // share is decided now, from the GPU's free memory now (once loaded, the model's own
        // layers take from it: deciding again per request would reload it).
        let layers = self.gpu.layers_for(path, gpu_layers, n_ctx);
        let model = Arc::new(LlmModel::load_with(path, layers)?);
        if let Some((done, of)) = model.placement().gpu_layers {
            tracing::info!(model = %path.display(), "{done} of {of} layers on the GPU");
        }
        let mut loaded = self.lock();
        if let Some((_, m)) = loaded.iter().find(|(k, _)| *k == key) {
            return Ok(m.clone());
        }
        let entry = Arc::new(Entry {
            model,
            batchers: Mutex::new(HashMap::new()),
        });
        loaded.push((key, entry.clone()));
        Ok(entry)
    }

    /// The paths of the models loaded now, least recently used first.
    pub fn loaded(&self) -> Vec<PathBuf> {
        self.lock().iter().map(|((p, _), _)| p.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Refuse a context the model was not trained for, or whose KV cache (with the weights)
/// would not fit in this node's memory, before anything is allocated. Remembered per model
/// file and context (a header holds the vocabulary: not read per request).
fn check_context(path: &Path, n_ctx: u32) -> Result<(), InferError> {
    type Key = (PathBuf, u64, u32);
    static TOTAL: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static CHECKED: Mutex<Option<HashMap<Key, Result<(), String>>>> = Mutex::new(None);
    let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    let key = (path.to_path_buf(), bytes, n_ctx);
    let mut checked = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
    let memo = checked.get_or_insert_with(HashMap::new);
    if let Some(r) = memo.get(&key) {
        return r.clone().map_err(InferError::Context);
    }
    let total = *TOTAL.get_or_init(|| memory().1);
    let r = match crate::model::read_gguf_header(path) {
        Ok(header) => header
            .check_context(n_ctx, bytes, Some(total))
            .map_err(|e| e.to_string()),
        // Not a GGUF header: loading says why.
        Err(_) => Ok(()),
    };
    if memo.len() >= 1024 {
        memo.clear();
    }
    memo.insert(key, r.clone());
    r.map_err(InferError::Context)
}

/// Memory the system can give without swapping, and its total (bytes); unknown counts as
/// plenty.
fn memory() -> (u64, u64) {
    sysinfo::System::new().map_or((u64::MAX, u64::MAX), |mut sys| {
        sys.refresh_memory();
        (sys.available_memory(), sys.total_memory())
    })
}

/// A loaded model as a node serves it: requests go into its shared batch.
pub struct Served {
    entry: Arc<Entry>,
    serving: Serving,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("model", &self.entry.model)
            .field("serving", &self.serving)
            .finish()
    }
}

/// How often a waiting request polls its cancel flag.
const POLL: Duration = Duration::from_millis(20);

impl Served {
    /// The model.
    pub fn model(&self) -> &Arc<LlmModel> {
        &self.entry.model
    }

    /// Run one request in the model's batch, together with the other requests to it of the
    /// same context size and threads: the same contract as [`LlmModel::generate`] (pieces
    /// add up to the text, stop strings cut it), and the result says how many prompt tokens
    /// came from the prompt cache.
    pub fn generate(
        &self,
        prompt: &Prompt,
        params: &InferParams,
        cancelled: &dyn Fn() -> bool,
        on_token: &mut dyn FnMut(Option<i32>, &str),
    ) -> Result<Generation, InferError> {
        let model = &self.entry.model;
        let prepared = model.prepare(prompt, params)?;
        let tokens = prepared.tokens.clone();
        let n_ctx = params.n_ctx.max(8);
        let threads = threads(if params.threads == 0 {
            self.serving.threads
        } else {
            params.threads
        });
        let halt = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let prompt_tokens = tokens.len() as u32;
        self.submit(
            Request {
                tokens,
                n_ctx,
                max_tokens: params.max_tokens,
                sampling: params.sampling(),
                grammar: prepared.grammar.clone(),
                triggers: prepared.triggers.clone(),
                logprobs: prepared.logprobs,
                halt: halt.clone(),
                events: tx,
            },
            threads,
        )?;
        // Halts the sequence however this returns (an error, a panic in on_token).
        struct Halt(Arc<AtomicBool>);
        impl Drop for Halt {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _halt = Halt(halt);
        let mut out_tokens = Vec::new();
        let mut detok = Detokenizer::new(&params.stop);
        let mut piece = Vec::with_capacity(16);
        let (mut cached, mut prompt_ms) = (0, 0.0);
        let mut generating = Instant::now();
        let mut logprobs = prepared.logprobs.map(|_| Vec::new());
        let finish = loop {
            if cancelled() {
                return Err(InferError::Cancelled);
            }
            let event = match rx.recv_timeout(POLL) {
                Ok(e) => e,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(InferError::Engine("the decode thread ended".into()));
                }
            };
            match event {
                Event::Started {
                    cached: c,
                    prompt_ms: ms,
                } => {
                    (cached, prompt_ms) = (c, ms);
                    generating = Instant::now();
                }
                Event::Token(t, logprob) => {
                    out_tokens.push(t);
                    if let (Some(list), Some(lp)) = (logprobs.as_mut(), logprob) {
                        list.push(lp);
                    }
                    model.piece(t, &mut piece);
                    let (new, stopped) = detok.push(&piece);
                    on_token(Some(t), &new);
                    if stopped {
                        break Finish::Stop;
                    }
                }
                Event::End(f) => break f,
                Event::Failed(e) => return Err(e),
            }
        };
        let rest = detok.flush();
        if !rest.is_empty() {
            on_token(None, &rest);
        }
        let mut g = Generation {
            text: detok.text(),
            completion_tokens: out_tokens.len() as u32,
            tokens: out_tokens,
            prompt_tokens,
            cached_tokens: cached,
            finish_reason: finish,
            prompt_ms,
            generation_ms: generating.elapsed().as_secs_f64() * 1000.0,
            stages: Vec::new(),
            replaced: Vec::new(),
            tool_calls: Vec::new(),
            logprobs,
        };
        prepared.conclude(model, &mut g);
        Ok(g)
    }

    /// Hand `request` to the batcher for its context size and threads, starting one when
    /// there is none (or the last one ended, idle).
    fn submit(&self, request: Request, threads: i32) -> Result<(), InferError> {
        let key = (request.n_ctx, threads);
        let mut batchers = self
            .entry
            .batchers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let request = match batchers.get(&key) {
            Some(b) => match b.submit(request) {
                Ok(()) => return Ok(()),
                Err(r) => *r,
            },
            None => request,
        };
        let model = self.entry.model.clone();
        let slots = slots_that_fit(model.path(), request.n_ctx, self.serving.parallel);
        let batcher = Batcher::spawn(model, slots, request.n_ctx, threads)?;
        tracing::debug!(
            slots,
            n_ctx = request.n_ctx,
            "started a batch for {}",
            self.entry.model.path().display()
        );
        batcher
            .submit(request)
            .map_err(|_| InferError::Engine("the decode thread ended at once".into()))?;
        batchers.insert(key, batcher);
        Ok(())
    }
}

/// Sequences of `n_ctx` positions whose KV caches fit in the memory available now beside
/// the model, at most `parallel` and at least one.
fn slots_that_fit(path: &Path, n_ctx: u32, parallel: u32) -> u32 {
    let parallel = parallel.max(1);
    let Some(per_seq) = kv_bytes(path, n_ctx) else {
        return parallel;
    };
    let free = memory().0.saturating_sub(HEADROOM);
    let fit = u32::try_from(free / per_seq.max(1)).unwrap_or(u32::MAX);
    fit.clamp(1, parallel)
}

/// The KV cache of one sequence of `n_ctx` positions of the model at `path` (f16 keys and
/// values of every layer).
#[cfg(feature = "pipeline")]
fn kv_bytes(path: &Path, n_ctx: u32) -> Option<u64> {
    let info = crate::llm::stage::info::ModelInfo::read(path).ok()?;
    Some(info.kv_bytes_per_layer(n_ctx) * u64::from(info.hp.n_layer))
}

#[cfg(not(feature = "pipeline"))]
fn kv_bytes(_: &Path, _: u32) -> Option<u64> {
    None
}
