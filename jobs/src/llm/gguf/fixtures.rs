//! A small GGUF (version 3) writer, and the tiny random-weight models that tests and benches
//! make with it (no model hub needed).
//!
//! [`TinyLlama`] writes a real GGUF of one of the architectures the stage engine supports
//! ([`Arch`]: llama, qwen2, qwen3, gemma3), its weight matrices in one of several ggml types
//! ([`WType`]: F32, F16, Q8_0, Q4_0, Q4_K) drawn from a seeded PRNG, its norms and biases in
//! F32. Every architecture has the same SentencePiece-style (`llama`) vocabulary with all 256
//! byte tokens (so any string tokenizes), ChatML control tokens and a ChatML chat template.
//! llama.cpp loads it through the same code path as any model; the key and tensor names are
//! those of llama.cpp's `src/llama-arch.cpp` and `src/models/<arch>.cpp`.
//!
//! A test fixture (cargo feature `test-fixtures`, or this crate's own tests): nothing in
//! myco's run-time code calls it, and nothing here quantizes real weights (quantized tensors
//! are random valid blocks).

use std::io;
use std::path::Path;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
}

/// A tensor of F32 values; `ne` in ggml order (fastest dimension first).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub ne: Vec<u64>,
    pub data: Vec<f32>,
}

/// A tensor already in its on-disk form: `data` holds the `ne` values in `wtype`'s layout
/// (little-endian values, or ggml's blocks), so its length is [`WType::row_bytes`] of
/// `ne[0]` times the other dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub name: String,
    pub ne: Vec<u64>,
    pub wtype: WType,
    pub data: Vec<u8>,
}

/// An architecture [`TinyLlama`] can write: the GGUF `general.architecture`, which is also
/// the prefix of its hyperparameter keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Llama: RMS norms, SwiGLU, normal (interleaved) rope, a separate output matrix.
    Llama,
    /// Qwen2: llama plus F32 biases on Q, K and V; NEOX rope (implied by the architecture).
    Qwen2,
    /// Qwen3: llama plus RMS norms of Q and K per head (no biases); NEOX rope.
    /// `attention.key_length` and `value_length` are written (equal to n_embd / n_head).
    Qwen3,
    /// Gemma3: Q/K norms, norms after attention and after the feed-forward, tied embeddings
    /// (no `output.weight`), sliding-window attention on five layers of every six (see
    /// [`GEMMA3_SLIDING_WINDOW`]), NEOX rope with a base per kind of layer.
    Gemma3,
}

impl Arch {
    /// Every architecture, in a fixed order.
    pub const ALL: [Arch; 4] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3, Arch::Gemma3];

    /// The GGUF architecture string (`general.architecture`, and the key prefix).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// The sliding window of a gemma3 fixture's local layers (`gemma3.attention.sliding_window`):
/// small, so a prompt of a few hundred tokens crosses it. llama.cpp's default pattern makes
/// layers `i % 6 < 5` local and every sixth layer global.
pub const GEMMA3_SLIDING_WINDOW: u32 = 64;

/// The ggml type [`TinyLlama`] writes its weight matrices in (norms and biases are always
/// F32). The variants are named as ggml names the types.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WType {
    F32,
    F16,
    /// Blocks of 32: an f16 scale `d`, then 32 `i8`; value `q * d`.
    Q8_0,
    /// Blocks of 32: an f16 scale `d`, then 16 bytes of nibbles (low nibbles are values
    /// 0..16, high nibbles 16..32); value `(q - 8) * d`.
    Q4_0,
    /// Super-blocks of 256: f16 `d` and `dmin`, 12 bytes of eight 6-bit scales and mins,
    /// 128 bytes of nibbles; value `d * scale * q - dmin * min` (ggml's `block_q4_K`).
    Q4_K,
}

impl WType {
    /// Every type, in a fixed order.
    pub const ALL: [WType; 5] = [
        WType::F32,
        WType::F16,
        WType::Q8_0,
        WType::Q4_0,
        WType::Q4_K,
    ];

    /// ggml's name of the type (`ggml_type_name`): `f32`, `f16`, `q8_0`, `q4_0`, `q4_K`.
    pub fn name(self) -> &'static str {
        match self {
            WType::F32 => "f32",
            WType::F16 => "f16",
            WType::Q8_0 => "q8_0",
            WType::Q4_0 => "q4_0",
            WType::Q4_K => "q4_K",
        }
    }

    /// The type [`WType::name`] names (case-insensitive), if any.
    pub fn from_name(name: &str) -> Option<WType> {
        WType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// The `ggml_type` id a GGUF tensor info holds.
    pub fn ggml_type(self) -> u32 {
        match self {
            WType::F32 => 0,
            WType::F16 => 1,
            WType::Q4_0 => 2,
            WType::Q8_0 => 8,
            WType::Q4_K => 12,
        }
    }

    /// The `llama_ftype` of a model whose matrices are all of this type
    /// (`general.file_type`; all-Q4_K is llama.cpp's `MOSTLY_Q4_K_S`).
    pub fn file_type(self) -> u32 {
        match self {
            WType::F32 => 0,
            WType::F16 => 1,
            WType::Q4_0 => 2,
            WType::Q8_0 => 7,
            WType::Q4_K => 14,
        }
    }

    /// Values per block: a row's length (`ne[0]`) must be a multiple of it.
    pub fn block_len(self) -> u64 {
        match self {
            WType::F32 | WType::F16 => 1,
            WType::Q8_0 | WType::Q4_0 => 32,
            WType::Q4_K => 256,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn block_bytes(self) -> u64 {
        match self {
            WType::F32 => 4,
            WType::F16 => 2,
            WType::Q8_0 => 34,
            WType::Q4_0 => 18,
            WType::Q4_K => 144,
        }
    }

    /// The bytes of a row of `n` values, or `None` when `n` is not whole blocks.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        n.is_multiple_of(self.block_len())
            .then(|| n / self.block_len() * self.block_bytes())
    }
}

/// The IEEE half-precision bits of `x`, rounded to nearest, ties to even (as ggml's
/// `GGML_FP32_TO_FP16`): subnormals kept, too large values to infinity, NaN stays NaN.
pub fn f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man == 0 { 0 } else { 0x200 };
    }
    // The exponent rebiased for f16 (bias 15 instead of 127).
    let e = exp - 112;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    // Keep the top bits of `m`, dropping `shift`, rounded to nearest even; a carry out of
    // the mantissa correctly bumps the exponent (up to infinity).
    let round = |m: u32, shift: u32| {
        let kept = m >> shift;
        let rest = m & ((1 << shift) - 1);
        let half = 1 << (shift - 1);
        kept + u32::from(rest > half || (rest == half && kept & 1 == 1))
    };
    if e <= 0 {
        // Below 2^-25 everything rounds to zero; otherwise a subnormal `k * 2^-24`.
        if e < -10 {
            return sign;
        }
        return sign | round(man | 0x80_0000, (14 - e) as u32) as u16;
    }
    sign | round(((e as u32) << 23) | man, 13) as u16
}

const ALIGN: usize = 32;

fn pad(n: usize) -> usize {
    (ALIGN - n % ALIGN) % ALIGN
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn put_value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U32(x) => {
            b.extend(4u32.to_le_bytes());
            b.extend(x.to_le_bytes());
        }
        Value::F32(x) => {
            b.extend(6u32.to_le_bytes());
            b.extend(x.to_le_bytes());
        }
        Value::Bool(x) => {
            b.extend(7u32.to_le_bytes());
            b.push(u8::from(*x));
        }
        Value::Str(s) => {
            b.extend(8u32.to_le_bytes());
            put_str(b, s);
        }
        Value::Strs(a) => {
            b.extend(9u32.to_le_bytes());
            b.extend(8u32.to_le_bytes());
            b.extend((a.len() as u64).to_le_bytes());
            a.iter().for_each(|s| put_str(b, s));
        }
        Value::F32s(a) => {
            b.extend(9u32.to_le_bytes());
            b.extend(6u32.to_le_bytes());
            b.extend((a.len() as u64).to_le_bytes());
            a.iter().for_each(|x| b.extend(x.to_le_bytes()));
        }
        Value::I32s(a) => {
            b.extend(9u32.to_le_bytes());
            b.extend(5u32.to_le_bytes());
            b.extend((a.len() as u64).to_le_bytes());
            a.iter().for_each(|x| b.extend(x.to_le_bytes()));
        }
    }
}

/// Encode a GGUF v3 file of F32 tensors: metadata, tensor infos, then the data, each
/// tensor aligned to 32.
pub fn encode(meta: &[(&str, Value)], tensors: &[Tensor]) -> Vec<u8> {
    let raw: Vec<RawTensor> = tensors
        .iter()
        .map(|t| RawTensor {
            name: t.name.clone(),
            ne: t.ne.clone(),
            wtype: WType::F32,
            data: t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
        .collect();
    encode_raw(meta, &raw)
}

/// Encode a GGUF v3 file of tensors of any [`WType`]: metadata, tensor infos, then the
/// data, each tensor aligned to 32. The data is written as given: its length is not checked
/// against `ne`.
pub fn encode_raw<K: AsRef<str>>(meta: &[(K, Value)], tensors: &[RawTensor]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(0x4655_4747u32.to_le_bytes());
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut b, k.as_ref());
        put_value(&mut b, v);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut b, &t.name);
        b.extend((t.ne.len() as u32).to_le_bytes());
        t.ne.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(t.wtype.ggml_type().to_le_bytes());
        b.extend((offset as u64).to_le_bytes());
        offset += t.data.len() + pad(t.data.len());
    }
    b.resize(b.len() + pad(b.len()), 0);
    for t in tensors {
        b.extend(&t.data);
        b.resize(b.len() + pad(b.len()), 0);
    }
    b
}

/// The shape of a test model. Despite the name, any [`Arch`].
///
/// Every weight matrix's rows (`n_embd`, and `n_ff` for `ffn_down`) must be whole blocks of
/// `wtype` ([`WType::block_len`]: 32 for Q8_0 and Q4_0, 256 for Q4_K); [`TinyLlama::check`]
/// says whether they are. A matrix whose rows are not is written in F32 instead (as
/// llama.cpp's quantizer falls back to a type that fits), so the file still loads.
///
/// The weights: matrices uniform in ±0.08 (or the same RMS in a quantized type; gemma3's
/// token embeddings, which are also its output, ±0.04), qwen2's biases ±0.08, norms 1 but
/// the per-head Q/K norms of qwen3 and gemma3 2, which keeps greedy output varied. The
/// default (llama, F32) is byte for byte the file this writer made before it had other
/// architectures and types, so are `bench()` and every other llama F32 shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TinyLlama {
    pub n_embd: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_ff: u32,
    pub n_layer: u32,
    pub n_ctx: u32,
    pub seed: u64,
    pub arch: Arch,
    pub wtype: WType,
}

impl Default for TinyLlama {
    fn default() -> Self {
        TinyLlama {
            n_embd: 128,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 256,
            n_layer: 3,
            n_ctx: 512,
            seed: 42,
            arch: Arch::Llama,
            wtype: WType::F32,
        }
    }
}

/// Words the vocabulary holds whole (as `▁word`), besides the byte tokens.
const WORDS: &[&str] = &[
    "the", "a", "of", "and", "to", "in", "is", "it", "swarm", "node", "job", "queue", "model",
    "token", "hello", "world", "myco", "embed", "chunk", "layer", "machine", "run", "work",
];

/// The ChatML chat template every fixture carries (unless left out).
const CHAT_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The weights' magnitude: F32 and F16 weights are uniform in `±SCALE`; the quantized types'
/// scales give their values the same RMS (`SCALE / √3`), within at most 1.6 `SCALE`.
const SCALE: f32 = 0.08;

/// The weights of the per-head Q and K norms (qwen3, gemma3). With norms of 1 a random
/// model's attention logits have a standard deviation near 1, so attention is nearly
/// uniform, every position sees about the mean of its context, and greedy decoding soon
/// repeats one token; at 2 attention picks positions and the output stays varied.
const QK_NORM: f32 = 2.0;

/// SplitMix64: the same weights on every machine, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-scale, scale).
    fn weight(&mut self, scale: f32) -> f32 {
        (self.unit() * 2.0 - 1.0) * scale
    }

    /// Uniform in `lo..lo + n`.
    fn small(&mut self, lo: u8, n: u8) -> u8 {
        lo + (self.next() % u64::from(n)) as u8
    }

    /// `n` random bytes.
    fn bytes(&mut self, b: &mut Vec<u8>, n: usize) {
        for _ in 0..n / 8 {
            b.extend(self.next().to_le_bytes());
        }
        if !n.is_multiple_of(8) {
            b.extend(&self.next().to_le_bytes()[..n % 8]);
        }
    }

    /// A block's scale factor: uniform in [0.8, 1.2), so blocks differ.
    fn spread(&mut self) -> f32 {
        0.8 + 0.4 * self.unit()
    }
}

/// Pack eight 6-bit scales and mins as ggml's `block_q4_K.scales` (the inverse of its
/// `get_scale_min_k4`): bytes 0..4 hold scales 0..4, bytes 4..8 mins 0..4, each with the
/// top two bits of scale (or min) `j + 4` above; bytes 8..12 the low nibbles of scale and
/// min `j + 4`.
fn pack_q4_k_scales(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = scales[j] | ((scales[j + 4] >> 4) << 6);
        q[j + 4] = mins[j] | ((mins[j + 4] >> 4) << 6);
        q[j + 8] = (scales[j + 4] & 0xF) | ((mins[j + 4] & 0xF) << 4);
    }
    q
}

/// `n` random weights in `wtype`'s layout (`n` whole blocks of it), spanning about
/// `±scale` with the RMS of uniform `±scale` values (`scale / √3`) in every type.
fn random_data(rng: &mut Rng, wtype: WType, n: u64, scale: f32) -> Vec<u8> {
    let blocks = (n / wtype.block_len()) as usize;
    let mut b = Vec::with_capacity(blocks * wtype.block_bytes() as usize);
    match wtype {
        WType::F32 => (0..blocks).for_each(|_| b.extend(rng.weight(scale).to_le_bytes())),
        WType::F16 => {
            (0..blocks).for_each(|_| b.extend(f16_bits(rng.weight(scale)).to_le_bytes()));
        }
        WType::Q8_0 => {
            // q uniform in -127..=127.
            for _ in 0..blocks {
                b.extend(f16_bits(scale / 127.0 * rng.spread()).to_le_bytes());
                (0..32).for_each(|_| b.push(rng.small(1, 255).wrapping_sub(128)));
            }
        }
        WType::Q4_0 => {
            // Nibbles 1..=15, values -7..=7 times d (RMS 4.32 d): symmetric, as 0..16 would
            // put a bias of -d / 2 in every weight, which the residual stream sums up until
            // one token wins every step.
            for _ in 0..blocks {
                b.extend(f16_bits(scale / 7.5 * rng.spread()).to_le_bytes());
                (0..16).for_each(|_| b.push(rng.small(1, 15) | (rng.small(1, 15) << 4)));
            }
        }
        WType::Q4_K => {
            // A value is `d * sc * q - dmin * m` with q in 0..16, 6-bit scales `sc` drawn
            // from 32..64 (RMS 48; the packing's top bits used) and each min `m` within 8 of
            // its scale. `dmin = 7.5 d` centres a sub-block on zero when `m == sc`, and off
            // by at most 60 d otherwise (a random offset per sub-block, no bias overall);
            // `d` gives the values an RMS of about 48 * 4.6 d = scale / √3.
            for _ in 0..blocks {
                let d = scale / 387.0 * rng.spread();
                b.extend(f16_bits(d).to_le_bytes());
                b.extend(f16_bits(7.5 * d).to_le_bytes());
                let scales: [u8; 8] = std::array::from_fn(|_| rng.small(32, 32));
                let mins: [u8; 8] =
                    std::array::from_fn(|j| (scales[j] + rng.small(0, 17) - 8).min(63));
                b.extend(pack_q4_k_scales(&scales, &mins));
                rng.bytes(&mut b, 128);
            }
        }
    }
    b
}

impl TinyLlama {
    /// The scaling benches' model: llama, Q4_0, n_embd 1024, 8 layers (about 51 MB), so a
    /// token costs real work (the pipeline, scale and structured-output benches, the stage
    /// experiments; [`TinyLlama::bench`] is the f32 one of the inference benches).
    pub fn bench_q4() -> TinyLlama {
        TinyLlama {
            n_embd: 1024,
            n_head: 16,
            n_head_kv: 4,
            n_ff: 2816,
            n_layer: 8,
            n_ctx: 2048,
            seed: 7,
            arch: Arch::Llama,
            wtype: WType::Q4_0,
        }
    }

    /// The benches' size: 8 layers, n_embd 512 (about 100 MB of f32), so a token costs
    /// real work.
    pub fn bench() -> TinyLlama {
        TinyLlama {
            n_embd: 512,
            n_head: 8,
            n_head_kv: 4,
            n_ff: 1536,
            n_layer: 8,
            n_ctx: 2048,
            seed: 7,
            arch: Arch::Llama,
            wtype: WType::F32,
        }
    }

    /// A shape every [`WType`] fits (rows of 256 and 512, whole Q4_K super-blocks): n_embd
    /// 256, 4 heads of 64 (2 for K and V), n_ff 512, 6 layers (so a gemma3 model has five
    /// local layers and a global one), context 512. About 3.7 M weights: 15 MB in F32, 2 MB
    /// in Q4_0 or Q4_K.
    pub fn small(arch: Arch, wtype: WType) -> TinyLlama {
        TinyLlama {
            n_embd: 256,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 512,
            n_layer: 6,
            n_ctx: 512,
            seed: 42,
            arch,
            wtype,
        }
    }

    /// Whether llama.cpp can load this shape with every matrix in `wtype`: heads that divide
    /// `n_embd` (and K/V heads that divide the heads), at least one layer, and rows of whole
    /// blocks. Every problem, in one message.
    pub fn check(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            problems.push(format!(
                "n_head {} does not divide n_embd {}",
                self.n_head, self.n_embd
            ));
        }
        if self.n_head_kv == 0 || !self.n_head.is_multiple_of(self.n_head_kv) {
            problems.push(format!(
                "n_head_kv {} does not divide n_head {}",
                self.n_head_kv, self.n_head
            ));
        }
        if self.n_layer == 0 {
            problems.push("n_layer is 0".to_owned());
        }
        let block = self.wtype.block_len();
        for (field, n) in [("n_embd", self.n_embd), ("n_ff", self.n_ff)] {
            if !u64::from(n).is_multiple_of(block) {
                problems.push(format!(
                    "{field} {n} is not a multiple of {}'s block of {block} (those matrices \
                     would be written in f32)",
                    self.wtype.name()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The vocabulary: `<unk>`, `<s>`, `</s>`, `<|im_start|>`, `<|im_end|>`, the 256 byte
    /// tokens `<0x00>`..`<0xFF>`, then whole words.
    pub fn vocab() -> (Vec<String>, Vec<f32>, Vec<i32>) {
        let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let mut types = vec![2, 3, 3, 3, 3];
        let mut scores = vec![0.0; 5];
        for byte in 0..=255u8 {
            tokens.push(format!("<0x{byte:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        for (i, w) in WORDS.iter().enumerate() {
            tokens.push(format!("\u{2581}{w}"));
            types.push(1);
            scores.push(-1.0 - i as f32 / 100.0);
        }
        (tokens, scores, types)
    }

    fn head_dim(&self) -> u32 {
        self.n_embd.checked_div(self.n_head).unwrap_or(0)
    }

    /// The metadata: `general.*`, the hyperparameters under `{arch}.`, the tokenizer.
    fn metadata(&self, chat_template: bool) -> Vec<(String, Value)> {
        let arch = self.arch.name();
        let head_dim = self.head_dim();
        let (eps, freq_base) = match self.arch {
            Arch::Llama => (1e-5, 10_000.0),
            Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 => (1e-6, 1_000_000.0),
        };
        let mut hparams = vec![
            ("context_length", Value::U32(self.n_ctx)),
            ("embedding_length", Value::U32(self.n_embd)),
            ("block_count", Value::U32(self.n_layer)),
            ("feed_forward_length", Value::U32(self.n_ff)),
            ("attention.head_count", Value::U32(self.n_head)),
            ("attention.head_count_kv", Value::U32(self.n_head_kv)),
            ("attention.layer_norm_rms_epsilon", Value::F32(eps)),
            ("rope.dimension_count", Value::U32(head_dim)),
            ("rope.freq_base", Value::F32(freq_base)),
        ];
        if matches!(self.arch, Arch::Qwen3 | Arch::Gemma3) {
            hparams.push(("attention.key_length", Value::U32(head_dim)));
            hparams.push(("attention.value_length", Value::U32(head_dim)));
        }
        if self.arch == Arch::Gemma3 {
            hparams.push((
                "attention.sliding_window",
                Value::U32(GEMMA3_SLIDING_WINDOW),
            ));
            hparams.push(("rope.freq_base_swa", Value::F32(10_000.0)));
        }
        let (tokens, scores, types) = TinyLlama::vocab();
        let mut meta: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::Str(arch.into())),
            (
                "general.name".into(),
                Value::Str(format!("myco tiny {arch} (random weights)")),
            ),
            (
                "general.file_type".into(),
                Value::U32(self.wtype.file_type()),
            ),
        ];
        meta.extend(hparams.into_iter().map(|(k, v)| (format!("{arch}.{k}"), v)));
        meta.extend([
            ("tokenizer.ggml.model".into(), Value::Str("llama".into())),
            ("tokenizer.ggml.tokens".into(), Value::Strs(tokens)),
            ("tokenizer.ggml.scores".into(), Value::F32s(scores)),
            ("tokenizer.ggml.token_type".into(), Value::I32s(types)),
            ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
        ]);
        if chat_template {
            meta.push((
                "tokenizer.chat_template".into(),
                Value::Str(CHAT_TEMPLATE.into()),
            ));
        }
        meta
    }

    /// The tensors, in file order, with their data.
    fn tensors(&self) -> Vec<RawTensor> {
        let n_vocab = TinyLlama::vocab().0.len() as u64;
        let (e, ff) = (u64::from(self.n_embd), u64::from(self.n_ff));
        let head_dim = u64::from(self.head_dim());
        let kv = head_dim * u64::from(self.n_head_kv);
        let mut rng = Rng(self.seed);
        // A weight matrix: in `wtype` when its rows are whole blocks, else in F32.
        let matrix = |name: String, ne: Vec<u64>, scale: f32, rng: &mut Rng| {
            let wtype = if self.wtype.row_bytes(ne[0]).is_some() {
                self.wtype
            } else {
                WType::F32
            };
            let data = random_data(rng, wtype, ne.iter().product(), scale);
            RawTensor {
                name,
                ne,
                wtype,
                data,
            }
        };
        let norm = |name: String, n: u64, value: f32| RawTensor {
            name,
            ne: vec![n],
            wtype: WType::F32,
            data: (0..n).flat_map(|_| value.to_le_bytes()).collect(),
        };
        let bias = |name: String, n: u64, rng: &mut Rng| RawTensor {
            name,
            ne: vec![n],
            wtype: WType::F32,
            data: random_data(rng, WType::F32, n, SCALE),
        };
        // Gemma3's output is its token embeddings, which it also scales by √n_embd on the
        // way in: at full scale the current token's own logit beats every other and greedy
        // decoding repeats it, so they are half as large.
        let embd_scale = if self.arch == Arch::Gemma3 {
            SCALE / 2.0
        } else {
            SCALE
        };
        let mut tensors = vec![
            matrix(
                "token_embd.weight".into(),
                vec![e, n_vocab],
                embd_scale,
                &mut rng,
            ),
            norm("output_norm.weight".into(), e, 1.0),
        ];
        if self.arch != Arch::Gemma3 {
            let output = matrix("output.weight".into(), vec![e, n_vocab], SCALE, &mut rng);
            tensors.push(output);
        }
        for i in 0..self.n_layer {
            let w = |s: &str| format!("blk.{i}.{s}.weight");
            let b = |s: &str| format!("blk.{i}.{s}.bias");
            tensors.push(norm(w("attn_norm"), e, 1.0));
            tensors.push(matrix(w("attn_q"), vec![e, e], SCALE, &mut rng));
            tensors.push(matrix(w("attn_k"), vec![e, kv], SCALE, &mut rng));
            tensors.push(matrix(w("attn_v"), vec![e, kv], SCALE, &mut rng));
            if self.arch == Arch::Qwen2 {
                tensors.push(bias(b("attn_q"), e, &mut rng));
                tensors.push(bias(b("attn_k"), kv, &mut rng));
                tensors.push(bias(b("attn_v"), kv, &mut rng));
            }
            if matches!(self.arch, Arch::Qwen3 | Arch::Gemma3) {
                tensors.push(norm(w("attn_q_norm"), head_dim, QK_NORM));
                tensors.push(norm(w("attn_k_norm"), head_dim, QK_NORM));
            }
            tensors.push(matrix(w("attn_output"), vec![e, e], SCALE, &mut rng));
            if self.arch == Arch::Gemma3 {
                tensors.push(norm(w("post_attention_norm"), e, 1.0));
            }
            tensors.push(norm(w("ffn_norm"), e, 1.0));
            tensors.push(matrix(w("ffn_gate"), vec![e, ff], SCALE, &mut rng));
            tensors.push(matrix(w("ffn_up"), vec![e, ff], SCALE, &mut rng));
            tensors.push(matrix(w("ffn_down"), vec![ff, e], SCALE, &mut rng));
            if self.arch == Arch::Gemma3 {
                tensors.push(norm(w("post_ffw_norm"), e, 1.0));
            }
        }
        tensors
    }

    /// The model as GGUF bytes. `chat_template: false` leaves the template out. The shape
    /// should pass [`TinyLlama::check`]; a matrix whose rows are not whole blocks of `wtype`
    /// is written in F32.
    pub fn encode(&self, chat_template: bool) -> Vec<u8> {
        encode_raw(&self.metadata(chat_template), &self.tensors())
    }

    /// Write the model to `path`.
    pub fn write(&self, path: &Path, chat_template: bool) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, self.encode(chat_template))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// A half's value (ggml's `GGML_FP16_TO_FP32`).
    fn f16_value(h: u16) -> f32 {
        let sign = u32::from(h & 0x8000) << 16;
        let exp = u32::from((h >> 10) & 0x1f);
        let man = u32::from(h & 0x3ff);
        match exp {
            0 => {
                let v = man as f32 / (1u32 << 24) as f32;
                if sign == 0 { v } else { -v }
            }
            0x1f => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
            _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
        }
    }

    /// ggml's `get_scale_min_k4`.
    fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }

    /// ggml's `dequantize_row_*` for the types written here.
    fn dequantize(wtype: WType, b: &[u8]) -> Vec<f32> {
        let half = |b: &[u8], i: usize| f16_value(u16::from_le_bytes([b[i], b[i + 1]]));
        let block = wtype.block_bytes() as usize;
        let mut y = Vec::new();
        for x in b.chunks(block) {
            match wtype {
                WType::F32 => y.push(f32::from_le_bytes([x[0], x[1], x[2], x[3]])),
                WType::F16 => y.push(half(x, 0)),
                WType::Q8_0 => {
                    let d = half(x, 0);
                    y.extend(x[2..].iter().map(|&q| f32::from(q as i8) * d));
                }
                WType::Q4_0 => {
                    let d = half(x, 0);
                    let qs = &x[2..];
                    y.extend(qs.iter().map(|&q| f32::from((q & 0xF) as i8 - 8) * d));
                    y.extend(qs.iter().map(|&q| f32::from((q >> 4) as i8 - 8) * d));
                }
                WType::Q4_K => {
                    let (d, dmin) = (half(x, 0), half(x, 2));
                    let (scales, qs) = (&x[4..16], &x[16..]);
                    for (k, q) in qs.chunks(32).enumerate() {
                        let (s1, m1) = scale_min_k4(2 * k, scales);
                        let (s2, m2) = scale_min_k4(2 * k + 1, scales);
                        let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
                        let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
                        y.extend(q.iter().map(|&q| d1 * f32::from(q & 0xF) - m1));
                        y.extend(q.iter().map(|&q| d2 * f32::from(q >> 4) - m2));
                    }
                }
            }
        }
        y
    }

    fn sha256(b: &[u8]) -> String {
        Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    }

    #[test]
    fn the_tiny_model_is_deterministic_and_aligned() {
        let a = TinyLlama::default().encode(true);
        let b = TinyLlama::default().encode(true);
        assert_eq!(a, b);
        assert_eq!(&a[..4], b"GGUF");
        assert_eq!(a.len() % ALIGN, 0);
        let other = TinyLlama {
            seed: 7,
            ..TinyLlama::default()
        };
        assert_ne!(other.encode(true), a);
        let (tokens, _, _) = TinyLlama::vocab();
        let unique: std::collections::HashSet<_> = tokens.iter().collect();
        assert_eq!(unique.len(), tokens.len(), "no duplicate tokens");
    }

    /// The default llama F32 model is the bytes it was before other architectures and types
    /// came: the hashes of files written by the writer of commit f99dde3.
    #[test]
    fn the_default_model_has_not_changed() {
        assert_eq!(
            sha256(&TinyLlama::default().encode(true)),
            "845ed0c3ce39a06c23e5d8bc5c3b780814b1b40dc0eb3afe8d6a991480d3c190"
        );
        assert_eq!(
            sha256(&TinyLlama::default().encode(false)),
            "956354d99f7c6693df85c5ade6d6b762d41cc0bbb1bd1607dc066270bb1a13b3"
        );
        let six = TinyLlama {
            seed: 9,
            n_layer: 6,
            ..TinyLlama::default()
        };
        assert_eq!(
            sha256(&six.encode(true)),
            "2f720cfa2b3719caa63a054ab084fa7c6ec345bc6a166b678e54399f2563a0de"
        );
    }

    #[test]
    fn f16_rounds_to_nearest_even() {
        for (x, bits) in [
            (1.0, 0x3C00),
            (-2.0, 0xC000),
            (0.1, 0x2E66),
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (65504.0, 0x7BFF),
            (65520.0, 0x7C00), // halfway to the next step: even is infinity
            (1e6, 0x7C00),
            (f32::NEG_INFINITY, 0xFC00),
            (6.103_515_6e-5, 0x0400),        // 2^-14, the smallest normal
            (5.960_464_5e-8, 0x0001),        // 2^-24, the smallest subnormal
            (2.980_232_2e-8, 0x0000),        // 2^-25: a tie, to even zero
            (4.470_348_4e-8, 0x0001),        // 1.5 * 2^-25 rounds up
            (-3.0 * 5.960_464_5e-8, 0x8003), // a negative subnormal
            (1.0 + 1.0 / 2048.0, 0x3C00),    // a tie between 1 and the next: even
            (1.0 + 3.0 / 2048.0, 0x3C02),    // a tie between odd and even: up
        ] {
            assert_eq!(f16_bits(x), bits, "{x:e}");
        }
        assert_eq!(f16_bits(f32::NAN) & 0x7C00, 0x7C00);
        assert_ne!(f16_bits(f32::NAN) & 0x3FF, 0);
        // Every finite half converts back to itself, and the point halfway between two
        // neighbours (exact in f32) goes to the one with an even mantissa.
        for h in 0..0x7BFFu16 {
            for sign in [0, 0x8000] {
                let (a, b) = (h | sign, (h + 1) | sign);
                assert_eq!(f16_bits(f16_value(a)), a);
                let mid = (f16_value(a) + f16_value(b)) / 2.0;
                let even = if a & 1 == 0 { a } else { b };
                assert_eq!(f16_bits(mid), even, "between {a:#06x} and {b:#06x}");
            }
        }
    }

    #[test]
    fn q4_k_scales_unpack_as_ggml_reads_them() {
        let mut rng = Rng(3);
        for _ in 0..100 {
            let scales: [u8; 8] = std::array::from_fn(|_| rng.small(0, 64));
            let mins: [u8; 8] = std::array::from_fn(|_| rng.small(0, 64));
            let packed = pack_q4_k_scales(&scales, &mins);
            for j in 0..8 {
                assert_eq!(scale_min_k4(j, &packed), (scales[j], mins[j]));
            }
        }
    }

    /// Each type's random weights dequantize (as ggml does) to about the F32 weights'
    /// magnitude: within twice SCALE, an RMS within a fifth of uniform ±SCALE's, no mean to
    /// speak of, and many distinct values.
    #[test]
    fn every_type_has_the_f32_weights_magnitude() {
        let n = 256 * 64;
        let uniform_rms = SCALE / 3f32.sqrt();
        for wtype in WType::ALL {
            let data = random_data(&mut Rng(5), wtype, n, SCALE);
            assert_eq!(Some(data.len() as u64), wtype.row_bytes(n));
            let w = dequantize(wtype, &data);
            assert_eq!(w.len() as u64, n);
            let max = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let mean = w.iter().sum::<f32>() / n as f32;
            let rms = (w.iter().map(|x| x * x).sum::<f32>() / n as f32).sqrt();
            println!("{wtype:?}: max {max:.4} rms {rms:.4} mean {mean:.5}");
            assert!(max <= 2.0 * SCALE, "{wtype:?}: max {max}");
            let ratio = rms / uniform_rms;
            assert!((0.8..1.2).contains(&ratio), "{wtype:?}: rms {rms}");
            assert!(mean.abs() < 0.005, "{wtype:?}: mean {mean}");
            let distinct: std::collections::HashSet<u32> = w.iter().map(|x| x.to_bits()).collect();
            assert!(distinct.len() > 100, "{wtype:?}: {} values", distinct.len());
        }
    }

    /// Every tensor has ggml's byte length for its type (blocks times type size): matrices
    /// in the shape's type, norms and biases in F32; the architecture's own tensors are
    /// there; and the file is the header plus the aligned tensors.
    #[test]
    fn every_tensor_has_ggmls_size_for_its_type() {
        let sizes = [
            (WType::F16, 2, 1),
            (WType::Q8_0, 34, 32),
            (WType::Q4_0, 18, 32),
            (WType::Q4_K, 144, 256),
        ];
        for (wtype, bytes, block) in sizes {
            assert_eq!((wtype.block_bytes(), wtype.block_len()), (bytes, block));
        }
        for arch in Arch::ALL {
            for wtype in WType::ALL {
                let shape = TinyLlama::small(arch, wtype);
                assert_eq!(shape.check(), Ok(()));
                let tensors = shape.tensors();
                let mut data = 0;
                for t in &tensors {
                    let want = if t.ne.len() == 2 { wtype } else { WType::F32 };
                    assert_eq!(t.wtype, want, "{}", t.name);
                    let rows: u64 = t.ne[1..].iter().product();
                    let row = (t.ne[0] / want.block_len()) * want.block_bytes();
                    assert_eq!(t.ne[0] % want.block_len(), 0, "{}", t.name);
                    assert_eq!(t.data.len() as u64, row * rows, "{}", t.name);
                    data += t.data.len() + pad(t.data.len());
                }
                let has = |name: &str| tensors.iter().any(|t| t.name == name);
                let last = shape.n_layer - 1;
                assert_eq!(has("output.weight"), arch != Arch::Gemma3);
                assert_eq!(has(&format!("blk.{last}.attn_k.bias")), arch == Arch::Qwen2);
                assert_eq!(
                    has(&format!("blk.{last}.attn_q_norm.weight")),
                    matches!(arch, Arch::Qwen3 | Arch::Gemma3)
                );
                assert_eq!(
                    has(&format!("blk.{last}.post_ffw_norm.weight")),
                    arch == Arch::Gemma3
                );
                let names: std::collections::HashSet<_> = tensors.iter().map(|t| &t.name).collect();
                assert_eq!(names.len(), tensors.len(), "no duplicate names");
                let file = encode_raw(&shape.metadata(false), &tensors);
                // Magic, version, the two counts, then the metadata.
                let mut header = vec![0; 24];
                for (k, v) in &shape.metadata(false) {
                    put_str(&mut header, k);
                    put_value(&mut header, v);
                }
                let header = header.len();
                let infos: usize = tensors
                    .iter()
                    .map(|t| 8 + t.name.len() + 4 + 8 * t.ne.len() + 4 + 8)
                    .sum();
                assert_eq!(
                    file.len(),
                    header + infos + pad(header + infos) + data,
                    "{arch:?} {wtype:?}"
                );
                let meta = shape.metadata(false);
                let prefix = format!("{}.", arch.name());
                assert!(
                    meta.iter()
                        .filter(|(k, _)| !k.starts_with("general.") && !k.starts_with("tokenizer."))
                        .all(|(k, _)| k.starts_with(&prefix))
                );
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_say_so_and_fall_back_to_f32() {
        let shape = TinyLlama {
            wtype: WType::Q4_K,
            ..TinyLlama::default()
        };
        let err = shape.check().unwrap_err();
        assert!(
            err.contains("n_embd 128 is not a multiple of q4_K's block of 256"),
            "{err}"
        );
        assert!(!err.contains("n_ff"), "{err}");
        // Only `ffn_down`, whose rows are n_ff long, fits.
        for t in shape.tensors() {
            let want = if t.name.ends_with("ffn_down.weight") {
                WType::Q4_K
            } else {
                WType::F32
            };
            assert_eq!(t.wtype, want, "{}", t.name);
        }
        let bad = TinyLlama {
            n_head: 3,
            n_layer: 0,
            ..TinyLlama::default()
        };
        let err = bad.check().unwrap_err();
        assert!(err.contains("n_head 3 does not divide n_embd 128"), "{err}");
        assert!(
            err.contains("n_head_kv 2 does not divide n_head 3"),
            "{err}"
        );
        assert!(err.contains("n_layer is 0"), "{err}");
        assert_eq!(TinyLlama::default().check(), Ok(()));
        assert_eq!(TinyLlama::bench().check(), Ok(()));
        assert_eq!(TinyLlama::bench_q4().check(), Ok(()));
    }
}
