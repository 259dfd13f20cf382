//! Layer-range stages: run layers `first..end` of a llama-family GGUF model on candle, so a
//! model too big for one machine can run as a chain of stages on several.
//!
//! llama.cpp runs whole models only, so stages are written here over candle's quantized
//! primitives (`QMatMul`, `QTensor::embedding`, rms norm, rope, softmax, silu). A stage reads
//! the GGUF header once and then only its own tensors, one at a time: a node never needs
//! memory for the whole model.
//!
//! - Stage 0 (`first == 0`) owns the token embedding and takes token ids.
//! - The last stage (`end == n_layer`) owns the final norm and the output head, and returns
//!   the logits of the last position. With tied embeddings (no `output.weight`) it reads
//!   `token_embd.weight` for its head too.
//! - Every other stage takes and returns hidden states: `n_tok × n_embd` f32, row-major.
//! - Each stage keeps a KV cache per sequence, so several jobs share one loaded stage.
//!
//! Supported architectures: `llama` (which includes Mistral GGUFs) with interleaved rope,
//! and `qwen2` with half-split (NEOX) rope and Q/K/V biases. Others are refused by name.
//!
//! Exactness: with the same token chunking (a prompt batch, then one token at a time), a
//! chain of stages computes bit for bit what one stage with every layer computes, as hidden
//! states cross the wire as f32 and each op sees the same shapes.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::{QMatMul, QTensor, gguf_file};
use candle_core::{D, DType, Device, IndexOp, Module, Tensor};

/// Why a stage cannot load or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    #[error("model file {path} is missing")]
    Missing { path: String },
    #[error("{path} is not a GGUF model the stage engine can read: {why}")]
    Corrupt { path: String, why: String },
    #[error(
        "{path} is a `{arch}` model; layer-range stages run llama, mistral (arch llama) and qwen2 models only"
    )]
    Unsupported { path: String, arch: String },
    #[error("{path} uses {what}, which layer-range stages do not implement")]
    Feature { path: String, what: String },
    #[error("layers {first}..{end} are not a range of the model's {n_layer} layers")]
    Range { first: u32, end: u32, n_layer: u32 },
    #[error("position {pos} is past the context of {ctx} tokens")]
    Context { pos: usize, ctx: usize },
    #[error("stage input: {0}")]
    Input(String),
    #[error("stage engine (candle): {0}")]
    Engine(String),
}

impl From<candle_core::Error> for StageError {
    fn from(e: candle_core::Error) -> Self {
        StageError::Engine(e.to_string())
    }
}

impl StageError {
    /// Running it again cannot help: the request or the file is wrong.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, StageError::Engine(_))
    }
}

type Result<T> = std::result::Result<T, StageError>;

/// How rope pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rope {
    /// Consecutive pairs `(2i, 2i+1)` (ggml "norm"): llama and mistral GGUFs, whose Q/K
    /// weights the converter permuted.
    Interleaved,
    /// Halves `(i, i + d/2)` (ggml "neox"): qwen2.
    HalfSplit,
}

/// The model's shape, from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    pub arch: String,
    pub rope: Rope,
    pub n_layer: u32,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub rope_dims: usize,
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
    /// `output_norm.weight` and `output.weight` (or, tied, a second `token_embd.weight`).
    pub head_bytes: u64,
    /// No `output.weight`: the head reuses the embedding.
    pub tied: bool,
    /// Every tensor in the file.
    pub file_tensor_bytes: u64,
}

impl ModelInfo {
    /// Read the header of the GGUF file at `path`.
    pub fn read(path: &Path) -> Result<ModelInfo> {
        Ok(open(path)?.0)
    }

    /// The KV cache of one layer for `n_ctx` tokens (f32 keys and values).
    pub fn kv_bytes_per_layer(&self, n_ctx: u32) -> u64 {
        2 * (self.hp.n_kv_head * self.hp.head_dim * 4) as u64 * u64::from(n_ctx)
    }
}

fn tensor_bytes(ti: &gguf_file::TensorInfo) -> u64 {
    (ti.shape.elem_count() / ti.ggml_dtype.block_size() * ti.ggml_dtype.type_size()) as u64
}

/// Open a GGUF file and read its header.
fn open(path: &Path) -> Result<(ModelInfo, gguf_file::Content, BufReader<File>)> {
    let shown = path.display().to_string();
    let corrupt = |why: String| StageError::Corrupt {
        path: shown.clone(),
        why,
    };
    let file = File::open(path).map_err(|_| StageError::Missing {
        path: shown.clone(),
    })?;
    let mut reader = BufReader::new(file);
    let ct = gguf_file::Content::read(&mut reader).map_err(|e| corrupt(e.to_string()))?;
    let get = |key: &str| ct.metadata.get(key);
    let arch = get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| corrupt("no general.architecture".into()))?;
    let rope = match arch.as_str() {
        "llama" => Rope::Interleaved,
        "qwen2" => Rope::HalfSplit,
        _ => {
            return Err(StageError::Unsupported { path: shown, arch });
        }
    };
    let int = |key: &str| -> Option<usize> {
        let v = get(&format!("{arch}.{key}"))?;
        v.to_u64()
            .ok()
            .or_else(|| v.to_i32().ok().and_then(|x| u64::try_from(x).ok()))
            .or_else(|| v.to_i64().ok().and_then(|x| u64::try_from(x).ok()))
            .and_then(|x| usize::try_from(x).ok())
    };
    let float = |key: &str| -> Option<f32> {
        let v = get(&format!("{arch}.{key}"))?;
        v.to_f32()
            .ok()
            .or_else(|| v.to_f64().ok().map(|x| x as f32))
    };
    let need = |key: &str| int(key).ok_or_else(|| corrupt(format!("no {arch}.{key}")));
    let n_layer = need("block_count")?;
    let n_embd = need("embedding_length")?;
    let n_head = need("attention.head_count")?;
    let n_kv_head = int("attention.head_count_kv").unwrap_or(n_head);
    if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 {
        return Err(corrupt(format!(
            "{n_head} attention heads and {n_kv_head} KV heads do not group"
        )));
    }
    let head_dim = int("attention.key_length").unwrap_or(n_embd / n_head);
    let rope_dims = int("rope.dimension_count").unwrap_or(head_dim);
    if rope_dims == 0 || rope_dims % 2 != 0 || rope_dims > head_dim {
        return Err(corrupt(format!(
            "rope.dimension_count {rope_dims} does not fit heads of {head_dim}"
        )));
    }
    if let Some(kind) = get(&format!("{arch}.rope.scaling.type")).and_then(|v| v.to_string().ok())
        && kind != "none"
    {
        return Err(StageError::Feature {
            path: shown,
            what: format!("rope scaling `{kind}`"),
        });
    }
    let embd = ct
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| corrupt("no token_embd.weight".into()))?;
    let n_vocab = embd.shape.dims().first().copied().unwrap_or(0);
    let hp = Hparams {
        rope,
        n_layer: u32::try_from(n_layer).map_err(|_| corrupt("too many layers".into()))?,
        n_embd,
        n_head,
        n_kv_head,
        head_dim,
        n_vocab,
        rms_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_base: float("rope.freq_base").unwrap_or(10_000.0),
        rope_dims,
        ctx_len: int("context_length").unwrap_or(4096),
        arch,
    };
    let mut layer_bytes = vec![0u64; n_layer];
    let (mut embed_bytes, mut head_bytes, mut file_tensor_bytes) = (0, 0, 0);
    for (name, ti) in &ct.tensor_infos {
        let b = tensor_bytes(ti);
        file_tensor_bytes += b;
        if let Some(i) = layer_of(name) {
            match layer_bytes.get_mut(i) {
                Some(slot) => *slot += b,
                None => return Err(corrupt(format!("{name} is past block_count {n_layer}"))),
            }
        } else if name == "token_embd.weight" {
            embed_bytes += b;
        } else if name.starts_with("output") {
            head_bytes += b;
        }
    }
    let tied = !ct.tensor_infos.contains_key("output.weight");
    if tied {
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
    };
    Ok((info, ct, reader))
}

/// `blk.7.attn_q.weight` → 7.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

struct Layer {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    bias: Option<[Tensor; 3]>,
    wo: QMatMul,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

/// One sequence's KV cache: per owned layer, keys and values after rope (`1 × n_kv × len ×
/// head_dim`).
#[derive(Default)]
struct Sequence {
    len: usize,
    kv: Vec<Option<(Tensor, Tensor)>>,
}

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
    /// The last stage: the logits of the last position.
    Logits(Vec<f32>),
}

/// Layers `first..end` of a model, loaded.
pub struct Stage {
    hp: Hparams,
    first: u32,
    end: u32,
    device: Device,
    embed: Option<QTensor>,
    head: Option<(Tensor, QMatMul)>,
    layers: Vec<Layer>,
    /// Rope tables, `ctx × rope_dims/2`.
    cos: Tensor,
    sin: Tensor,
    ctx: usize,
    seqs: HashMap<u64, Sequence>,
    /// The tensors this stage read, with their bytes.
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

/// Stages run on a GPU when one is there (a `cuda` build).
pub const GPU_BUILD: bool = cfg!(feature = "cuda");

/// The device stages run on: the first CUDA GPU when built with `cuda`, else the CPU.
pub fn device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return d;
    }
    Device::Cpu
}

impl Stage {
    /// Load layers `first..end` of the model at `path`, reading only their tensors (plus the
    /// embedding for stage 0 and the head for the last stage). `ctx` caps positions.
    pub fn load(path: &Path, first: u32, end: u32, ctx: usize) -> Result<Stage> {
        let (info, ct, mut reader) = open(path)?;
        let hp = info.hp;
        if first >= end || end > hp.n_layer {
            return Err(StageError::Range {
                first,
                end,
                n_layer: hp.n_layer,
            });
        }
        let device = device();
        let mut loaded = Vec::new();
        let shown = path.display().to_string();
        let mut read = |name: &str| -> Result<QTensor> {
            let ti = ct
                .tensor_infos
                .get(name)
                .ok_or_else(|| StageError::Corrupt {
                    path: shown.clone(),
                    why: format!("no tensor {name}"),
                })?;
            loaded.push((name.to_owned(), tensor_bytes(ti)));
            ct.tensor(&mut reader, name, &device)
                .map_err(|e| StageError::Corrupt {
                    path: shown.clone(),
                    why: format!("reading {name}: {e}"),
                })
        };
        let embed = if first == 0 {
            Some(read("token_embd.weight")?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity((end - first) as usize);
        for i in first..end {
            let mut w = |s: &str| read(&format!("blk.{i}.{s}"));
            let bias = if hp.arch == "qwen2" {
                Some([
                    w("attn_q.bias")?.dequantize(&device)?,
                    w("attn_k.bias")?.dequantize(&device)?,
                    w("attn_v.bias")?.dequantize(&device)?,
                ])
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: w("attn_norm.weight")?.dequantize(&device)?,
                wq: QMatMul::from_qtensor(w("attn_q.weight")?)?,
                wk: QMatMul::from_qtensor(w("attn_k.weight")?)?,
                wv: QMatMul::from_qtensor(w("attn_v.weight")?)?,
                bias,
                wo: QMatMul::from_qtensor(w("attn_output.weight")?)?,
                ffn_norm: w("ffn_norm.weight")?.dequantize(&device)?,
                gate: QMatMul::from_qtensor(w("ffn_gate.weight")?)?,
                up: QMatMul::from_qtensor(w("ffn_up.weight")?)?,
                down: QMatMul::from_qtensor(w("ffn_down.weight")?)?,
            });
        }
        let head = if end == hp.n_layer {
            let norm = read("output_norm.weight")?.dequantize(&device)?;
            let out = if info.tied {
                read("token_embd.weight")?
            } else {
                read("output.weight")?
            };
            Some((norm, QMatMul::from_qtensor(out)?))
        } else {
            None
        };
        let freq_factors = match ct.tensor_infos.contains_key("rope_freqs.weight") {
            true => Some(
                read("rope_freqs.weight")?
                    .dequantize(&Device::Cpu)?
                    .to_vec1::<f32>()?,
            ),
            false => None,
        };
        let ctx = ctx.clamp(1, hp.ctx_len.max(1));
        let (cos, sin) = rope_tables(&hp, ctx, freq_factors.as_deref(), &device)?;
        Ok(Stage {
            hp,
            first,
            end,
            device,
            embed,
            head,
            layers,
            cos,
            sin,
            ctx,
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

    /// The tensors this stage read from the file, with their bytes.
    pub fn tensors(&self) -> &[(String, u64)] {
        &self.loaded
    }

    /// The bytes of the tensors it read.
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

    /// Forget a sequence's KV cache.
    pub fn drop_sequence(&mut self, seq: u64) {
        self.seqs.remove(&seq);
    }

    /// Run `input` (tokens at positions `pos..pos+n`) of sequence `seq` through this stage's
    /// layers. `pos` must be the sequence's length so far (0 starts it afresh).
    pub fn forward(&mut self, seq: u64, pos: usize, input: StageInput) -> Result<StageOutput> {
        let hp = &self.hp;
        let mut x = match (input, &self.embed) {
            (StageInput::Tokens(ids), Some(embed)) => {
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= hp.n_vocab) {
                    return Err(StageError::Input(format!(
                        "token {bad} is outside the vocabulary of {}",
                        hp.n_vocab
                    )));
                }
                let n = ids.len();
                let ids = Tensor::from_vec(ids, n, &self.device)?;
                embed.embedding(&ids)?.unsqueeze(0)?
            }
            (StageInput::Hidden(h), None) => {
                if h.is_empty() || h.len() % hp.n_embd != 0 {
                    return Err(StageError::Input(format!(
                        "{} hidden values are not whole rows of {}",
                        h.len(),
                        hp.n_embd
                    )));
                }
                let n = h.len() / hp.n_embd;
                Tensor::from_vec(h, (1, n, hp.n_embd), &self.device)?
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
        let t = x.dim(1)?;
        if t == 0 {
            return Err(StageError::Input("no tokens".into()));
        }
        if pos + t > self.ctx {
            return Err(StageError::Context {
                pos: pos + t,
                ctx: self.ctx,
            });
        }
        let n_owned = self.layers.len();
        let sequence = self.seqs.entry(seq).or_default();
        if pos == 0 {
            *sequence = Sequence::default();
        }
        if sequence.len != pos {
            return Err(StageError::Input(format!(
                "sequence {seq} is at position {}, not {pos}",
                sequence.len
            )));
        }
        sequence.kv.resize_with(n_owned, || None);
        let mask = if t > 1 {
            Some(causal_mask(t, pos, &self.device)?)
        } else {
            None
        };
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        for (layer, kv) in self.layers.iter().zip(sequence.kv.iter_mut()) {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, hp.rms_eps)?;
            let attn = attention(hp, layer, &h, kv, mask.as_ref(), &cos, &sin)?;
            x = (x + attn)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, hp.rms_eps)?;
            let ff = layer.down.forward(
                &(candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?,
            )?;
            x = (x + ff)?;
        }
        sequence.len = pos + t;
        match &self.head {
            Some((norm, output)) => {
                let last = x.i((.., t - 1..t, ..))?.contiguous()?;
                let last = candle_nn::ops::rms_norm(&last, norm, hp.rms_eps)?;
                let logits = output.forward(&last)?.flatten_all()?;
                Ok(StageOutput::Logits(
                    logits.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                ))
            }
            None => Ok(StageOutput::Hidden(
                x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            )),
        }
    }
}

/// Attention of one layer over `x` (`1 × t × n_embd`, normed), appending to its KV cache.
fn attention(
    hp: &Hparams,
    layer: &Layer,
    x: &Tensor,
    kv: &mut Option<(Tensor, Tensor)>,
    mask: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    let (mut q, mut k, mut v) = (
        layer.wq.forward(x)?,
        layer.wk.forward(x)?,
        layer.wv.forward(x)?,
    );
    if let Some([bq, bk, bv]) = &layer.bias {
        q = q.broadcast_add(bq)?;
        k = k.broadcast_add(bk)?;
        v = v.broadcast_add(bv)?;
    }
    let hd = hp.head_dim;
    let q = q
        .reshape((b, t, hp.n_head, hd))?
        .transpose(1, 2)?
        .contiguous()?;
    let k = k
        .reshape((b, t, hp.n_kv_head, hd))?
        .transpose(1, 2)?
        .contiguous()?;
    let v = v
        .reshape((b, t, hp.n_kv_head, hd))?
        .transpose(1, 2)?
        .contiguous()?;
    let q = rope(hp, &q, cos, sin)?;
    let k = rope(hp, &k, cos, sin)?;
    let (k, v) = match kv.take() {
        None => (k, v),
        Some((kc, vc)) => (Tensor::cat(&[&kc, &k], 2)?, Tensor::cat(&[&vc, &v], 2)?),
    };
    *kv = Some((k.clone(), v.clone()));
    let n_rep = hp.n_head / hp.n_kv_head;
    let k = repeat_kv(k, n_rep)?;
    let v = repeat_kv(v, n_rep)?;
    let att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
    let att = match mask {
        None => att,
        Some(m) => {
            let m = m.broadcast_as(att.shape())?;
            let neg = Tensor::new(f32::NEG_INFINITY, att.device())?.broadcast_as(att.shape())?;
            m.where_cond(&neg, &att)?
        }
    };
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    let y = att.matmul(&v.contiguous()?)?;
    let y = y.transpose(1, 2)?.reshape((b, t, hp.n_head * hd))?;
    Ok(layer.wo.forward(&y)?)
}

/// Rope over the first `rope_dims` of each head (the rest pass through).
fn rope(hp: &Hparams, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = hp.head_dim;
    let rd = hp.rope_dims.min(hd);
    let rot = if rd == hd {
        x.clone()
    } else {
        x.narrow(D::Minus1, 0, rd)?.contiguous()?
    };
    let rot = match hp.rope {
        Rope::Interleaved => candle_nn::rotary_emb::rope_i(&rot, cos, sin)?,
        Rope::HalfSplit => candle_nn::rotary_emb::rope(&rot, cos, sin)?,
    };
    if rd == hd {
        Ok(rot)
    } else {
        Ok(Tensor::cat(&[&rot, &x.narrow(D::Minus1, rd, hd - rd)?], D::Minus1)?.contiguous()?)
    }
}

/// Rope tables computed the way ggml does (`theta *= base^(-2/d)` per pair, in f32), so
/// logits stay close to llama.cpp's: `ctx × rope_dims/2` cos and sin.
fn rope_tables(
    hp: &Hparams,
    ctx: usize,
    freq_factors: Option<&[f32]>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = hp.rope_dims / 2;
    let scale = hp.rope_base.powf(-2.0 / hp.rope_dims as f32);
    let mut cos = Vec::with_capacity(ctx * half);
    let mut sin = Vec::with_capacity(ctx * half);
    for p in 0..ctx {
        let mut theta = p as f32;
        for i in 0..half {
            let ff = freq_factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0);
            let th = theta / ff;
            cos.push(th.cos());
            sin.push(th.sin());
            theta *= scale;
        }
    }
    Ok((
        Tensor::from_vec(cos, (ctx, half), device)?,
        Tensor::from_vec(sin, (ctx, half), device)?,
    ))
}

/// `t × (pos + t)`, 1 where a query may not see a key (a later position).
fn causal_mask(t: usize, pos: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<u8> = (0..t)
        .flat_map(|i| (0..pos + t).map(move |j| u8::from(j > pos + i)))
        .collect();
    Ok(Tensor::from_slice(&mask, (t, pos + t), device)?)
}

/// Repeat each KV head `n_rep` times in a row (head `h` reads KV head `h / n_rep`).
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, n_kv, t, d) = x.dims4()?;
    Ok(Tensor::cat(&vec![&x; n_rep], 2)?.reshape((b, n_kv * n_rep, t, d))?)
}

/// Picks the next token from logits: greedy at temperature 0, else top-k, top-p and
/// temperature with a seeded draw (the same seed gives the same tokens on any node).
#[derive(Debug, Clone)]
pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    state: u64,
}

impl Sampler {
    pub fn new(temperature: f32, top_k: i32, top_p: f32, seed: u64) -> Sampler {
        Sampler {
            temperature,
            top_k: usize::try_from(top_k).unwrap_or(0),
            top_p,
            state: seed ^ 0x6d79_636f_5f73_616d,
        }
    }

    fn next_unit(&mut self) -> f32 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if self.top_k > 0 {
            idx.truncate(self.top_k);
        }
        let max = logits[idx[0]];
        let mut probs: Vec<f32> = idx
            .iter()
            .map(|&i| ((logits[i] - max) / self.temperature).exp())
            .collect();
        let sum: f32 = probs.iter().sum();
        let mut acc = 0.0;
        let all = probs.len();
        let mut keep = all;
        for (n, p) in probs.iter_mut().enumerate() {
            *p /= sum;
            acc += *p;
            if acc >= self.top_p && keep == all {
                keep = n + 1;
            }
        }
        probs.truncate(keep);
        let total: f32 = probs.iter().sum();
        let mut r = self.next_unit() * total;
        for (n, p) in probs.iter().enumerate() {
            r -= p;
            if r <= 0.0 {
                return idx[n] as u32;
            }
        }
        idx[keep - 1] as u32
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
