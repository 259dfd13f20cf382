//! Layer-range stages: run layers `first..end` of a GGUF model on llama.cpp, so a model too
//! big for one machine runs as a chain of stages on several.
//!
//! A stage is a llama.cpp model of its own: myco writes the stage's slice of the GGUF (its
//! layers renumbered from 0, the rest of the metadata kept; see [`gguf`]), loads it, and
//! removes the file (the mapping keeps it alive). Each stage then runs llama.cpp's own graph
//! for the architecture, on llama.cpp's kernels (CPU, or a GPU in a GPU build), so a chain of
//! stages computes what `infer` computes on the whole file.
//!
//! - Every stage takes hidden states (`llama_batch.embd`). Stage 0 makes them itself from
//!   token ids: the rows of `token_embd.weight`, dequantized by ggml's own function (the one
//!   llama.cpp's lookup uses), scaled as the architecture's graph scales token rows.
//! - A stage before the last hands out the residual stream after its last layer (the eval
//!   callback copies llama.cpp's `l_out-N` out); its slice has a one-row dummy head, so the
//!   output llama.cpp computes for every position costs nothing.
//! - The last stage returns the logits of the last position.
//! - Several sequences (runs) share one loaded stage: sequences of the same context size
//!   share a llama.cpp context of [`StageConfig::slots`] sequences (each with a KV buffer of
//!   its own, as in `infer`'s batcher), and [`Stage::forward_batch`] decodes a step of each of
//!   several sequences in one llama.cpp call (one compute step for consecutive sequence ids).
//!
//! Supported architectures: `llama` (Llama 3.x, Mistral, SmolLM), `qwen2`, `qwen3` and
//! `gemma3`; others are refused by name.
//!
//! Exactness: with the same token chunking (a prompt in chunks of [`UBATCH`], as llama.cpp
//! splits one batch, then one token at a time), a chain of stages computes bit for bit what
//! one stage with every layer computes, and that is what `infer` computes: hidden states cross
//! the wire as f32 and every op sees the same shapes.

pub mod gguf;
pub mod info;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;

use crate::llm::ffi;
pub use crate::llm::infer::engine::UBATCH;
use gguf::{TensorInfo, layer_of};
pub use info::{ARCHITECTURES, GPU_RESERVE, Hparams, ModelInfo, StageError};
use info::{Result, open};

/// What goes into a stage.
#[derive(Debug, Clone, PartialEq)]
pub enum StageInput {
    /// Token ids (stage 0).
    Tokens(Vec<u32>),
    /// Hidden states from the previous stage: `n_tok × n_embd` f32.
    Hidden(Vec<f32>),
}

/// What comes out of a stage.
#[derive(Debug, Clone, PartialEq)]
pub enum StageOutput {
    /// For the next stage: `n_tok × n_embd` f32.
    Hidden(Vec<f32>),
    /// The last stage: the logits of the last position (empty when none were asked for).
    Logits(Vec<f32>),
}

/// How a stage is loaded and its sequences run.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// Positions of a sequence begun without [`Stage::begin`].
    pub n_ctx: u32,
    /// Threads of a sequence begun without [`Stage::begin`] (0: every core).
    pub threads: u32,
    /// Where the slice of the model is written while llama.cpp loads it (removed after).
    pub scratch: PathBuf,
    /// Layers on the GPU (0: none; a CPU build has none to use). [`Stage::load_with`]
    /// lowers it to what fits in the GPU's free memory (at most `gpu_memory`).
    pub gpu_layers: u32,
    /// GPU memory the stage may use; unset: the GPU's free memory.
    pub gpu_memory: Option<u64>,
    /// Sequences that share one llama.cpp context (and decode together); more sequences
    /// of the same context size get another context.
    pub slots: u32,
}

impl StageConfig {
    pub fn new(n_ctx: u32) -> StageConfig {
        StageConfig {
            n_ctx,
            threads: 0,
            scratch: std::env::temp_dir(),
            gpu_layers: if GPU_BUILD { u32::MAX } else { 0 },
            gpu_memory: None,
            slots: 4,
        }
    }
}

/// Stage 0's token lookup: rows of `token_embd.weight`, read from the model file.
#[derive(Debug)]
struct Embedding {
    file: File,
    /// Where the file's tensor data starts.
    data_start: u64,
    tensor: TensorInfo,
    /// What the architecture's graph multiplies token rows by (Gemma: sqrt(n_embd)).
    scale: f32,
}

/// A llama.cpp context shared by up to [`StageConfig::slots`] sequences of `n_ctx`
/// positions each.
#[derive(Debug)]
struct Pool {
    ctx: ffi::Context,
    n_ctx: usize,
    /// Which of its sequence ids are taken.
    used: Vec<bool>,
}

#[derive(Debug)]
struct Sequence {
    /// Its context, and its sequence id there.
    pool: u64,
    id: i32,
    len: usize,
    n_ctx: usize,
}

/// One step of one sequence for [`Stage::forward_batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub seq: u64,
    /// The sequence's length so far (0 starts it afresh).
    pub pos: usize,
    pub input: StageInput,
    /// The last stage: the logits of the step's last position (false skips the head).
    pub logits: bool,
}

/// Layers `first..end` of a model, loaded.
pub struct Stage {
    hp: Hparams,
    first: u32,
    end: u32,
    config: StageConfig,
    model: Arc<ffi::Model>,
    embed: Option<Embedding>,
    pools: HashMap<u64, Pool>,
    next_pool: u64,
    seqs: HashMap<u64, Sequence>,
    /// The tensors of the original file this stage holds, with their bytes.
    loaded: Vec<(String, u64)>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("arch", &self.hp.arch)
            .field("first", &self.first)
            .field("end", &self.end)
            .field("sequences", &self.seqs.len())
            .finish_non_exhaustive()
    }
}

/// Stages run on a GPU when the build has a GPU backend (`vulkan`, `cuda`, `metal`).
pub const GPU_BUILD: bool = cfg!(any(feature = "vulkan", feature = "cuda", feature = "metal"));

/// Names slices written at the same time apart.
static SLICES: AtomicU64 = AtomicU64::new(0);

/// Write the slice of layers `first..end` of the model at `path` (whose SHA-256 is
/// `source`) to `out`, as a slice that travels: a node without the model loads it as the
/// stage with [`Stage::load_with`] (see [`gguf::write_slice`]). Written beside `out` and
/// renamed, so `out` is whole or absent.
pub fn write_travelling_slice(
    path: &Path,
    source: &str,
    first: u32,
    end: u32,
    out: &Path,
) -> Result<()> {
    let (info, header) = open(path)?;
    if info.slice.is_some() || first >= end || end > info.hp.n_layer {
        return Err(StageError::Range {
            first,
            end,
            n_layer: info.hp.n_layer,
        });
    }
    let scratch_err = |why: String| StageError::Scratch {
        dir: out
            .parent()
            .map_or_else(String::new, |d| d.display().to_string()),
        why,
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| scratch_err(e.to_string()))?;
    }
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let written = gguf::write_slice(&header, path, &info.hp.arch, first, end, &tmp, Some(source))
        .and_then(|()| std::fs::rename(&tmp, out).map_err(|e| e.to_string()));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(scratch_err)
}

impl Stage {
    /// Load layers `first..end` of the model at `path`; sequences default to `ctx`
    /// positions.
    pub fn load(path: &Path, first: u32, end: u32, ctx: usize) -> Result<Stage> {
        let ctx = u32::try_from(ctx).unwrap_or(u32::MAX);
        Stage::load_with(path, first, end, StageConfig::new(ctx))
    }

    /// Load layers `first..end` of the model at `path`: write their slice to
    /// `config.scratch`, load it with llama.cpp, remove the file. `path` may also be a slice
    /// that travelled ([`write_travelling_slice`]) of that range: it loads as it is.
    pub fn load_with(path: &Path, first: u32, end: u32, config: StageConfig) -> Result<Stage> {
        let (info, header) = open(path)?;
        let hp = info.hp.clone();
        if first >= end || end > hp.n_layer {
            return Err(StageError::Range {
                first,
                end,
                n_layer: hp.n_layer,
            });
        }
        let last = end == hp.n_layer;
        let scratch_err = |why: String| StageError::Scratch {
            dir: config.scratch.display().to_string(),
            why,
        };
        if let Some(slice) = &info.slice
            && (slice.first, slice.end) != (first, end)
        {
            return Err(StageError::Corrupt {
                path: path.display().to_string(),
                why: format!(
                    "it is the slice of layers {}..{}, not {first}..{end}",
                    slice.first, slice.end
                ),
            });
        }
        std::fs::create_dir_all(&config.scratch).map_err(|e| scratch_err(e.to_string()))?;
        let stem = path
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned());
        let slice = config.scratch.join(format!(
            ".myco-stage-{stem}-{first}-{end}-{}-{}.gguf",
            std::process::id(),
            SLICES.fetch_add(1, Ordering::Relaxed)
        ));
        // A slice that travelled loads as it is; of a whole model, the range is written out.
        let (slice, written) = match &info.slice {
            Some(_) => (path.to_path_buf(), Ok(())),
            None => {
                let written = gguf::write_slice(&header, path, &hp.arch, first, end, &slice, None);
                (slice, written)
            }
        };
        let model = written.map_err(scratch_err).and_then(|()| {
            crate::llm::infer::engine::backend().map_err(|e| StageError::Engine(e.to_string()))?;
            // VRAM first, then RAM: the layers that fit in the GPU's free memory go there
            // (the range's last ones, as llama.cpp offloads), the rest run on the CPU.
            let policy = crate::llm::infer::GpuPolicy {
                layers: None,
                memory: config.gpu_memory,
            };
            let gpu_layers = match policy.budget() {
                Some(budget) if config.gpu_layers > 0 => config
                    .gpu_layers
                    .min(info.gpu_layers_that_fit(first, end, config.n_ctx, budget, last)),
                _ => config.gpu_layers,
            };
            ffi::Model::load(&slice, gpu_layers).map_err(StageError::Engine)
        });
        // The mapping (or the copy on the GPU) keeps what llama.cpp needs.
        if info.slice.is_none() {
            let _ = std::fs::remove_file(&slice);
        }
        let model = Arc::new(model?);
        if model.n_embd() != hp.n_embd || (last && model.n_vocab() != hp.n_vocab) {
            return Err(StageError::Engine(format!(
                "the slice loaded as n_embd {} and {} tokens, not {} and {}",
                model.n_embd(),
                model.n_vocab(),
                hp.n_embd,
                hp.n_vocab
            )));
        }
        let mut loaded = Vec::new();
        let embed = if first == 0 {
            let tensor = match &info.slice {
                Some(s) => s.embedding.clone(),
                None => header.tensor("token_embd.weight").cloned(),
            };
            let tensor = tensor.ok_or_else(|| StageError::Corrupt {
                path: path.display().to_string(),
                why: "no token_embd.weight".into(),
            })?;
            loaded.push((tensor.name.clone(), tensor.bytes));
            let file = File::open(path).map_err(|_| StageError::Missing {
                path: path.display().to_string(),
            })?;
            let scale = if hp.arch == "gemma3" {
                (hp.n_embd as f32).sqrt()
            } else {
                1.0
            };
            Some(Embedding {
                file,
                data_start: header.data_start,
                tensor,
                scale,
            })
        } else {
            None
        };
        match &info.slice {
            // Named as in the source model.
            Some(_) => {
                for t in &header.tensors {
                    let name = match layer_of(&t.name) {
                        Some((il, tail)) => format!("blk.{}.{tail}", il + first),
                        None if t.name == "token_embd.weight" && !last => continue,
                        None if t.name == "token_embd.weight" && !info.tied => {
                            "output.weight".into()
                        }
                        // The output norm is in every slice's graph, and the last stage's.
                        None if !last => continue,
                        None => t.name.clone(),
                    };
                    loaded.push((name, t.bytes));
                }
            }
            None => {
                for t in &header.tensors {
                    let mine = match layer_of(&t.name) {
                        Some((il, _)) => (first..end).contains(&il),
                        None if t.name == "token_embd.weight" => last && info.tied,
                        None => last,
                    };
                    if mine {
                        loaded.push((t.name.clone(), t.bytes));
                    }
                }
            }
        }
        Ok(Stage {
            hp,
            first,
            end,
            config,
            model,
            embed,
            pools: HashMap::new(),
            next_pool: 0,
            seqs: HashMap::new(),
            loaded,
        })
    }

    pub fn hparams(&self) -> &Hparams {
        &self.hp
    }

    pub fn range(&self) -> (u32, u32) {
        (self.first, self.end)
    }

    /// The tensors of the file this stage holds, with their bytes (a tied head counts in
    /// the first stage and in the last, which both need it).
    pub fn tensors(&self) -> &[(String, u64)] {
        &self.loaded
    }

    /// Where llama.cpp put the stage's slice (GPU layers, buffers), from its load report.
    pub fn placement(&self) -> &crate::llm::ffi::Placement {
        self.model.placement()
    }

    /// The bytes of the tensors it holds.
    pub fn tensor_bytes(&self) -> u64 {
        self.loaded.iter().map(|(_, b)| b).sum()
    }

    /// Tokens in `seq`'s cache.
    pub fn sequence_len(&self, seq: u64) -> usize {
        self.seqs.get(&seq).map_or(0, |s| s.len)
    }

    pub fn sequences(&self) -> usize {
        self.seqs.len()
    }

    /// The shared context of sequence `seq`, and its sequence id there.
    pub fn context_of(&self, seq: u64) -> Option<(u64, i32)> {
        self.seqs.get(&seq).map(|s| (s.pool, s.id))
    }

    /// The llama.cpp contexts its sequences share.
    pub fn contexts(&self) -> usize {
        self.pools.len()
    }

    /// Forget a sequence's KV cache.
    pub fn drop_sequence(&mut self, seq: u64) {
        let Some(s) = self.seqs.remove(&seq) else {
            return;
        };
        let Some(pool) = self.pools.get_mut(&s.pool) else {
            return;
        };
        pool.ctx.forget(s.id);
        if let Some(u) = pool.used.get_mut(s.id as usize) {
            *u = false;
        }
        // An empty context goes, unless it is the only one (the next run reuses it).
        if !pool.used.contains(&true) && self.pools.len() > 1 {
            self.pools.remove(&s.pool);
        }
    }

    /// Start (or restart) sequence `seq` with a context of `n_ctx` positions, in a shared
    /// context of sequences of that size (a new one, decoding with `threads` threads, 0:
    /// every core, when those there are full).
    pub fn begin(&mut self, seq: u64, n_ctx: u32, threads: u32) -> Result<()> {
        self.drop_sequence(seq);
        let n_ctx = n_ctx.clamp(8, u32::try_from(self.hp.ctx_len).unwrap_or(u32::MAX).max(8));
        let free = self.pools.iter().find_map(|(&id, p)| {
            (p.n_ctx == n_ctx as usize)
                .then(|| p.used.iter().position(|u| !u))
                .flatten()
                .map(|slot| (id, slot))
        });
        let (pool, slot) = match free {
            Some(found) => found,
            None => {
                let slots = self.config.slots.max(1);
                let capture = (self.end != self.hp.n_layer).then(|| self.end - self.first - 1);
                let threads = crate::llm::infer::engine::threads(threads);
                let cells = n_ctx.saturating_mul(slots);
                let ctx = ffi::Context::shared(&self.model, cells, slots, threads, capture)
                    .map_err(StageError::Engine)?;
                let id = self.next_pool;
                self.next_pool += 1;
                self.pools.insert(
                    id,
                    Pool {
                        ctx,
                        n_ctx: n_ctx as usize,
                        used: vec![false; slots as usize],
                    },
                );
                (id, 0)
            }
        };
        if let Some(p) = self.pools.get_mut(&pool) {
            p.used[slot] = true;
            p.ctx.forget(slot as i32);
        }
        self.seqs.insert(
            seq,
            Sequence {
                pool,
                id: slot as i32,
                len: 0,
                n_ctx: n_ctx as usize,
            },
        );
        Ok(())
    }

    /// Run `input` (tokens at positions `pos..pos+n`) of sequence `seq` through this stage's
    /// layers, with the logits of the last position if it is the last stage. `pos` must be
    /// the sequence's length so far (0 starts it afresh).
    pub fn forward(&mut self, seq: u64, pos: usize, input: StageInput) -> Result<StageOutput> {
        self.forward_with(seq, pos, input, true)
    }

    /// [`Stage::forward`]; `logits: false` skips the last stage's head (a prompt chunk
    /// before the last).
    pub fn forward_with(
        &mut self,
        seq: u64,
        pos: usize,
        input: StageInput,
        logits: bool,
    ) -> Result<StageOutput> {
        let step = Step {
            seq,
            pos,
            input,
            logits,
        };
        self.forward_batch(vec![step])
            .pop()
            .unwrap_or_else(|| Err(StageError::Input("no step".into())))
    }

    /// Run a step of each of several sequences (one step per sequence) through this stage's
    /// layers: the steps of sequences that share a context in one llama.cpp decode, rows in
    /// the steps' order. One result per step, in order; a step that is wrong fails alone, a
    /// decode that fails fails its steps.
    pub fn forward_batch(&mut self, steps: Vec<Step>) -> Vec<Result<StageOutput>> {
        let mut out: Vec<Option<Result<StageOutput>>> = (0..steps.len()).map(|_| None).collect();
        let mut groups: Vec<(u64, Vec<Prepared>)> = Vec::new();
        let mut fresh = Vec::new();
        for (i, step) in steps.into_iter().enumerate() {
            let (seq, began) = (step.seq, !self.seqs.contains_key(&step.seq));
            match self.prepare(i, step, &groups) {
                Ok((pool, p)) => {
                    if began {
                        fresh.push((p.seq, i));
                    }
                    match groups.iter_mut().find(|(id, _)| *id == pool) {
                        Some((_, g)) => g.push(p),
                        None => groups.push((pool, vec![p])),
                    }
                }
                Err(e) => {
                    if began {
                        self.drop_sequence(seq);
                    }
                    out[i] = Some(Err(e));
                }
            }
        }
        for (pool, group) in groups {
            match self.decode(pool, &group) {
                Ok(results) => {
                    for (p, r) in group.iter().zip(results) {
                        out[p.index] = Some(Ok(r));
                    }
                }
                Err(e) => {
                    for p in &group {
                        out[p.index] = Some(Err(e.clone()));
                    }
                }
            }
        }
        let results: Vec<Result<StageOutput>> = out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StageError::Engine("not decoded".into()))))
            .collect();
        // A sequence begun for a step that failed is not kept.
        for (seq, i) in fresh {
            if results.get(i).is_some_and(Result::is_err) {
                self.drop_sequence(seq);
            }
        }
        results
    }

    /// Check step `index` and make its rows; its context's id. `groups`: the steps already
    /// taken for this batch.
    fn prepare(
        &mut self,
        index: usize,
        step: Step,
        groups: &[(u64, Vec<Prepared>)],
    ) -> Result<(u64, Prepared)> {
        let n_embd = self.hp.n_embd;
        let embd = match (step.input, &self.embed) {
            (StageInput::Tokens(ids), Some(embed)) => embed.rows(&ids, self.hp.n_vocab)?,
            (StageInput::Hidden(h), None) => {
                if h.is_empty() || !h.len().is_multiple_of(n_embd) {
                    return Err(StageError::Input(format!(
                        "{} hidden values are not whole rows of {n_embd}",
                        h.len(),
                    )));
                }
                h
            }
            (StageInput::Tokens(_), None) => {
                return Err(StageError::Input(
                    "token ids sent to a stage that does not own the embedding".into(),
                ));
            }
            (StageInput::Hidden(_), Some(_)) => {
                return Err(StageError::Input(
                    "hidden states sent to stage 0, which takes token ids".into(),
                ));
            }
        };
        let rows = embd.len() / n_embd;
        if rows == 0 {
            return Err(StageError::Input("no tokens".into()));
        }
        if groups
            .iter()
            .any(|(_, g)| g.iter().any(|p| p.seq == step.seq))
        {
            return Err(StageError::Input(format!(
                "two steps of sequence {} in one batch",
                step.seq
            )));
        }
        if !self.seqs.contains_key(&step.seq) {
            self.begin(step.seq, self.config.n_ctx, self.config.threads)?;
        }
        let Some(sequence) = self.seqs.get_mut(&step.seq) else {
            return Err(StageError::Engine("the sequence was not begun".into()));
        };
        let pos = step.pos;
        if pos + rows > sequence.n_ctx {
            return Err(StageError::Context {
                pos: pos + rows,
                ctx: sequence.n_ctx,
            });
        }
        if pos == 0 && sequence.len > 0 {
            if let Some(p) = self.pools.get_mut(&sequence.pool) {
                p.ctx.forget(sequence.id);
            }
            sequence.len = 0;
        }
        if sequence.len != pos {
            return Err(StageError::Input(format!(
                "sequence {} is at position {}, not {pos}",
                step.seq, sequence.len
            )));
        }
        Ok((
            sequence.pool,
            Prepared {
                index,
                seq: step.seq,
                id: sequence.id,
                pos,
                embd,
                logits: step.logits,
            },
        ))
    }

    /// One decode of the steps of sequences sharing context `pool`: hidden states of every
    /// row for the next stage, or (the last stage) each step's last logits.
    fn decode(&mut self, pool: u64, group: &[Prepared]) -> Result<Vec<StageOutput>> {
        let n_embd = self.hp.n_embd;
        let last = self.end == self.hp.n_layer;
        // In the order of their sequence ids: llama.cpp computes a step of sequences of
        // consecutive ids at once, and hands the captured rows out in that order.
        let mut order: Vec<usize> = (0..group.len()).collect();
        order.sort_by_key(|&i| group[i].id);
        let sorted: Vec<&Prepared> = order.iter().map(|&i| &group[i]).collect();
        let mut rows = Vec::new();
        let mut embd = Vec::new();
        for p in &sorted {
            let n = p.embd.len() / n_embd;
            for r in 0..n {
                rows.push(ffi::Row {
                    seq: p.id,
                    pos: (p.pos + r) as u32,
                    output: !last || (p.logits && r + 1 == n),
                });
            }
            embd.extend_from_slice(&p.embd);
        }
        let Some(ctx) = self.pools.get_mut(&pool).map(|p| &mut p.ctx) else {
            return Err(StageError::Engine("the sequence's context is gone".into()));
        };
        ctx.decode_rows(&embd, &rows).map_err(StageError::Engine)?;
        let mut outputs = Vec::with_capacity(group.len());
        if last {
            let mut at = 0i32;
            for p in &sorted {
                at += (p.embd.len() / n_embd) as i32;
                outputs.push(StageOutput::Logits(if p.logits {
                    ctx.logits_at(at - 1).map_err(StageError::Engine)?.to_vec()
                } else {
                    Vec::new()
                }));
            }
        } else {
            let h = ctx.take_hidden().map_err(StageError::Engine)?;
            if h.len() != embd.len() {
                return Err(StageError::Engine(format!(
                    "the stage handed out {} values for {} positions",
                    h.len(),
                    rows.len()
                )));
            }
            let mut from = 0;
            for p in &sorted {
                let to = from + p.embd.len();
                outputs.push(StageOutput::Hidden(h[from..to].to_vec()));
                from = to;
            }
        }
        // Back in the group's order.
        let mut back: Vec<Option<StageOutput>> = (0..group.len()).map(|_| None).collect();
        for (&i, o) in order.iter().zip(outputs) {
            back[i] = Some(o);
        }
        let outputs: Vec<StageOutput> = back.into_iter().flatten().collect();
        for p in group {
            if let Some(s) = self.seqs.get_mut(&p.seq) {
                s.len = p.pos + p.embd.len() / n_embd;
            }
        }
        Ok(outputs)
    }
}

/// A step checked and made into rows, for one decode.
#[derive(Debug)]
struct Prepared {
    /// Its place in the batch.
    index: usize,
    seq: u64,
    /// Its sequence id in its context.
    id: i32,
    pos: usize,
    embd: Vec<f32>,
    logits: bool,
}

impl Embedding {
    /// The hidden states of token ids: their rows, dequantized and scaled.
    fn rows(&self, ids: &[u32], n_vocab: usize) -> Result<Vec<f32>> {
        let n_embd = self.tensor.ne.first().copied().unwrap_or(0) as usize;
        let mut out = vec![0f32; ids.len() * n_embd];
        let mut raw = vec![0u8; self.tensor.row_bytes() as usize];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(n_embd)) {
            if id as usize >= n_vocab {
                return Err(StageError::Input(format!(
                    "token {id} is outside the vocabulary of {n_vocab}"
                )));
            }
            gguf::read_row(
                &self.file,
                self.data_start,
                &self.tensor,
                u64::from(id),
                &mut raw,
            )
            .map_err(StageError::Engine)?;
            ffi::to_float(self.tensor.ty, &raw, row).map_err(StageError::Engine)?;
            if self.scale != 1.0 {
                row.iter_mut().for_each(|x| *x *= self.scale);
            }
        }
        Ok(out)
    }
}

pub use crate::llm::infer::engine::SamplerParams;

/// Picks the next token from logits, with llama.cpp's samplers (the same chain as `infer`,
/// so the same settings pick the same tokens).
pub struct Sampler {
    chain: LlamaSampler,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").finish_non_exhaustive()
    }
}

impl Sampler {
    pub fn new(p: &SamplerParams, n_vocab: usize) -> Sampler {
        Sampler {
            chain: crate::llm::infer::engine::sampler_chain(p, i32::try_from(n_vocab).unwrap_or(0)),
        }
    }

    /// Tokens generated before (a resumed run): the repeat penalty counts them.
    pub fn accept(&mut self, tokens: &[u32]) {
        for &t in tokens {
            self.chain.accept(LlamaToken(t as i32));
        }
    }

    /// The next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let mut data = LlamaTokenDataArray::from_iter(
            (0i32..)
                .zip(logits)
                .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i), l, 0.0)),
            false,
        );
        data.apply_sampler(&mut self.chain);
        let token = data
            .selected_token()
            .unwrap_or(LlamaToken(argmax(logits) as i32));
        self.chain.accept(token);
        u32::try_from(token.0).unwrap_or(0)
    }
}

/// The index of the largest logit (the first, on a tie).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests;
