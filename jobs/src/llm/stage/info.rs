//! What a stage needs to know of a model before loading any of it: its architecture and
//! hyperparameters ([`Hparams`]), and the bytes of each layer and of the rest
//! ([`ModelInfo`]), read from the GGUF header; how many layers fit on a GPU; and why a
//! stage cannot load or run ([`StageError`]). No llama.cpp here: the planner, `myco plan`
//! and the infer engine's GPU fit read it too.

use std::path::{Path, PathBuf};

use super::gguf::{Gguf, Value, keys, layer_of};

/// GPU memory kept free beyond the layers and KV caches put on a GPU: llama.cpp's compute
/// buffers (a few hundred MiB for the prompt batch of a 7B model) and the driver's own.
pub const GPU_RESERVE: u64 = 512 << 20;

/// Why a stage cannot load or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    #[error("model file {path} is missing")]
    Missing { path: String },
    #[error("{path} is not a GGUF model the stage engine can read: {why}")]
    Corrupt { path: String, why: String },
    #[error(
        "{path} is a `{arch}` model; layer-range stages run llama (Llama, Mistral, SmolLM), qwen2, qwen3 and gemma3 models only"
    )]
    Unsupported { path: String, arch: String },
    #[error("layers {first}..{end} are not a range of the model's {n_layer} layers")]
    Range { first: u32, end: u32, n_layer: u32 },
    #[error("position {pos} is past the context of {ctx} tokens")]
    Context { pos: usize, ctx: usize },
    #[error("stage input: {0}")]
    Input(String),
    #[error("writing the stage's slice of the model to {dir}: {why}")]
    Scratch { dir: String, why: String },
    #[error("stage engine (llama.cpp): {0}")]
    Engine(String),
}

impl StageError {
    /// Running it again cannot help: the request or the file is wrong.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, StageError::Engine(_) | StageError::Scratch { .. })
    }
}

pub(super) type Result<T> = std::result::Result<T, StageError>;

/// The architectures stages run.
pub const ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "gemma3"];

/// The model's shape, from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    pub arch: String,
    pub n_layer: u32,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    /// The context the model was trained for.
    pub ctx_len: usize,
}

/// A model's header: its shape and the size of every tensor, read without loading any.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub hp: Hparams,
    /// Bytes of each layer's tensors (`blk.{i}.*`).
    pub layer_bytes: Vec<u64>,
    /// `token_embd.weight`.
    pub embed_bytes: u64,
    /// Everything else: `output_norm.weight` and `output.weight` (or, tied, a second
    /// `token_embd.weight`), and any other tensor outside the layers (`rope_freqs.weight`).
    pub head_bytes: u64,
    /// No `output.weight`: the head reuses the embedding.
    pub tied: bool,
    /// Every tensor in the file.
    pub file_tensor_bytes: u64,
    /// The file is a slice that travelled (layers of another model, with what a stage
    /// needs of it): what it was cut from.
    pub slice: Option<SliceOf>,
}

/// What a slice that travels was cut from ([`super::gguf::keys`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SliceOf {
    /// The source model's SHA-256.
    pub source: String,
    pub first: u32,
    pub end: u32,
    /// Stage 0's token embedding, after the slice's data.
    pub embedding: Option<super::gguf::TensorInfo>,
}

impl ModelInfo {
    /// Read the header of the GGUF file at `path`.
    pub fn read(path: &Path) -> Result<ModelInfo> {
        Ok(open(path)?.0)
    }

    /// The KV cache of one layer for `n_ctx` tokens (f16 keys and values, as llama.cpp
    /// keeps them).
    pub fn kv_bytes_per_layer(&self, n_ctx: u32) -> u64 {
        2 * (self.hp.n_kv_head * self.hp.head_dim * 2) as u64 * u64::from(n_ctx)
    }

    /// How many of layers `first..end` to put on a GPU with `budget` bytes free, as
    /// llama.cpp's `n_gpu_layers` counts them: it offloads the last layers first, and a
    /// count above the layers also moves the output head (`head`: the range ends the model).
    /// Each layer takes its tensors and its KV cache for `n_ctx` positions; [`GPU_RESERVE`]
    /// stays free for llama.cpp's compute buffers and the driver. The embedding lookup
    /// stays on the CPU, as llama.cpp keeps it.
    pub fn gpu_layers_that_fit(
        &self,
        first: u32,
        end: u32,
        n_ctx: u32,
        budget: u64,
        head: bool,
    ) -> u32 {
        let budget = budget.saturating_sub(GPU_RESERVE);
        let kv = self.kv_bytes_per_layer(n_ctx);
        let layers: Vec<u64> = (first..end.min(self.hp.n_layer))
            .map(|i| self.layer_bytes.get(i as usize).copied().unwrap_or(0) + kv)
            .collect();
        let n = layers.len() as u32;
        let all = layers.iter().sum::<u64>() + if head { self.head_bytes } else { 0 };
        if all <= budget {
            // Every layer, and the head: llama.cpp takes any count above the layer count.
            return n + 1;
        }
        let mut used = 0u64;
        let mut fit = 0u32;
        for bytes in layers.iter().rev() {
            if used + bytes > budget {
                break;
            }
            used += bytes;
            fit += 1;
        }
        fit
    }
}

/// Open a GGUF file and read its header.
pub(super) fn open(path: &Path) -> Result<(ModelInfo, Gguf)> {
    let shown = path.display().to_string();
    let corrupt = |why: String| StageError::Corrupt {
        path: shown.clone(),
        why,
    };
    if !path.is_file() {
        return Err(StageError::Missing { path: shown });
    }
    let g = Gguf::read(path).map_err(corrupt)?;
    let arch = g
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| corrupt("no general.architecture".into()))?
        .to_owned();
    if !ARCHITECTURES.contains(&arch.as_str()) {
        return Err(StageError::Unsupported { path: shown, arch });
    }
    let int = |key: &str| -> Option<usize> {
        g.get(&format!("{arch}.{key}"))
            .and_then(Value::as_u64)
            .and_then(|x| usize::try_from(x).ok())
    };
    let need = |key: &str| int(key).ok_or_else(|| corrupt(format!("no {arch}.{key}")));
    let slice = slice_of(&g, path).map_err(corrupt)?;
    let n_layer = match &slice {
        Some(_) => g
            .get(keys::N_LAYER)
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| corrupt(format!("no {}", keys::N_LAYER)))?,
        None => need("block_count")?,
    };
    // A slice's layers are numbered from 0: where they sit in the source.
    let shift = slice.as_ref().map_or(0, |s| s.first);
    let n_embd = need("embedding_length")?;
    let n_head = need("attention.head_count")?;
    let n_kv_head = int("attention.head_count_kv").unwrap_or(n_head);
    if n_head == 0 || n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
        return Err(corrupt(format!(
            "{n_head} attention heads and {n_kv_head} KV heads do not group"
        )));
    }
    let head_dim = int("attention.key_length").unwrap_or(n_embd / n_head);
    let embd = g
        .tensor("token_embd.weight")
        .ok_or_else(|| corrupt("no token_embd.weight".into()))?;
    if embd.ne.first().copied() != Some(n_embd as u64) {
        return Err(corrupt(format!(
            "token_embd.weight rows are not {n_embd} wide"
        )));
    }
    let n_vocab = match &slice {
        Some(_) => g.get(keys::N_VOCAB).and_then(Value::as_u64).unwrap_or(0),
        None => embd.ne.get(1).copied().unwrap_or(0),
    } as usize;
    let hp = Hparams {
        n_layer: u32::try_from(n_layer).map_err(|_| corrupt("too many layers".into()))?,
        n_embd,
        n_head,
        n_kv_head,
        head_dim,
        n_vocab,
        ctx_len: int("context_length").unwrap_or(4096),
        arch,
    };
    let mut layer_bytes = vec![0u64; n_layer];
    let (mut embed_bytes, mut head_bytes, mut file_tensor_bytes) = (0, 0, 0);
    for t in &g.tensors {
        file_tensor_bytes += t.bytes;
        if let Some((i, _)) = layer_of(&t.name) {
            match layer_bytes.get_mut((i + shift) as usize) {
                Some(slot) => *slot += t.bytes,
                None => {
                    return Err(corrupt(format!("{} is past block_count {n_layer}", t.name)));
                }
            }
        } else if t.name == "token_embd.weight" {
            embed_bytes += t.bytes;
        } else {
            head_bytes += t.bytes;
        }
    }
    let tied = match &slice {
        Some(_) => matches!(g.get(keys::TIED), Some(Value::Bool(true))),
        None => g.tensor("output.weight").is_none(),
    };
    if let Some(s) = &slice {
        // The slice's `token_embd.weight` is its head (the last stage's) or a dummy row; the
        // embedding it carries, if any, is stage 0's.
        let last = s.end == hp.n_layer;
        head_bytes += if last { embed_bytes } else { 0 };
        embed_bytes = s.embedding.as_ref().map_or(0, |e| e.bytes);
        if s.end > hp.n_layer || s.first >= s.end {
            return Err(corrupt(format!(
                "a slice of layers {}..{} of {} layers",
                s.first, s.end, hp.n_layer
            )));
        }
    } else if tied {
        head_bytes += embed_bytes;
    }
    let info = ModelInfo {
        path: path.to_path_buf(),
        hp,
        layer_bytes,
        embed_bytes,
        head_bytes,
        tied,
        file_tensor_bytes,
        slice,
    };
    Ok((info, g))
}

/// What a slice that travels was cut from; `None` for any other GGUF.
fn slice_of(g: &Gguf, path: &Path) -> std::result::Result<Option<SliceOf>, String> {
    let Some(source) = g.get(keys::SOURCE).and_then(Value::as_str) else {
        return Ok(None);
    };
    let int = |k: &str| {
        g.get(k)
            .and_then(Value::as_u64)
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| format!("a slice without {k}"))
    };
    let (first, end) = (int(keys::FIRST)?, int(keys::END)?);
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let embedding = g.carried_embedding(len)?;
    if (first == 0) != embedding.is_some() {
        return Err("stage 0's slice carries the embedding, and only it".into());
    }
    Ok(Some(SliceOf {
        source: source.to_owned(),
        first,
        end,
        embedding,
    }))
}
