//! A small GGUF (version 3) writer, and the tiny random-weight llama model that tests and
//! benches make with it (no model hub needed).
//!
//! The test model is a real llama-architecture GGUF: F32 weights from a seeded PRNG, a
//! SentencePiece-style (`llama`) vocabulary with all 256 byte tokens (so any string
//! tokenizes), ChatML control tokens and a ChatML chat template. llama.cpp loads it through
//! the same code path as any model.
//!
//! A test fixture (cargo feature `test-fixtures`, or this crate's own tests): nothing in
//! myco's run-time code calls it.

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

/// Encode a GGUF v3 file: metadata, tensor infos, then the data, each tensor aligned to 32.
pub fn encode(meta: &[(&str, Value)], tensors: &[Tensor]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(0x4655_4747u32.to_le_bytes());
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut b, k);
        put_value(&mut b, v);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut b, &t.name);
        b.extend((t.ne.len() as u32).to_le_bytes());
        t.ne.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(0u32.to_le_bytes()); // GGML_TYPE_F32
        b.extend((offset as u64).to_le_bytes());
        let n = t.data.len() * 4;
        offset += n + pad(n);
    }
    b.resize(b.len() + pad(b.len()), 0);
    for t in tensors {
        t.data.iter().for_each(|x| b.extend(x.to_le_bytes()));
        b.resize(b.len() + pad(b.len()), 0);
    }
    b
}

/// The shape of the test model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TinyLlama {
    pub n_embd: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_ff: u32,
    pub n_layer: u32,
    pub n_ctx: u32,
    pub seed: u64,
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
        }
    }
}

/// Words the vocabulary holds whole (as `▁word`), besides the byte tokens.
const WORDS: &[&str] = &[
    "the", "a", "of", "and", "to", "in", "is", "it", "swarm", "node", "job", "queue", "model",
    "token", "hello", "world", "myco", "embed", "chunk", "layer", "machine", "run", "work",
];

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

    /// Uniform in [-scale, scale).
    fn weight(&mut self, scale: f32) -> f32 {
        let unit = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        (unit * 2.0 - 1.0) * scale
    }
}

impl TinyLlama {
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

    /// The model as GGUF bytes. `chat_template: false` leaves the template out.
    pub fn encode(&self, chat_template: bool) -> Vec<u8> {
        let (tokens, scores, types) = TinyLlama::vocab();
        let n_vocab = tokens.len() as u64;
        let head_dim = self.n_embd / self.n_head;
        let n_embd_kv = u64::from(head_dim * self.n_head_kv);
        let mut meta: Vec<(&str, Value)> = vec![
            ("general.architecture", Value::Str("llama".into())),
            (
                "general.name",
                Value::Str("myco tiny llama (random weights)".into()),
            ),
            ("general.file_type", Value::U32(0)),
            ("llama.context_length", Value::U32(self.n_ctx)),
            ("llama.embedding_length", Value::U32(self.n_embd)),
            ("llama.block_count", Value::U32(self.n_layer)),
            ("llama.feed_forward_length", Value::U32(self.n_ff)),
            ("llama.attention.head_count", Value::U32(self.n_head)),
            ("llama.attention.head_count_kv", Value::U32(self.n_head_kv)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
            ("llama.rope.dimension_count", Value::U32(head_dim)),
            ("llama.rope.freq_base", Value::F32(10_000.0)),
            ("tokenizer.ggml.model", Value::Str("llama".into())),
            ("tokenizer.ggml.tokens", Value::Strs(tokens)),
            ("tokenizer.ggml.scores", Value::F32s(scores)),
            ("tokenizer.ggml.token_type", Value::I32s(types)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        ];
        if chat_template {
            meta.push((
                "tokenizer.chat_template",
                Value::Str(
                    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                        .into(),
                ),
            ));
        }
        let mut rng = Rng(self.seed);
        let (e, ff) = (u64::from(self.n_embd), u64::from(self.n_ff));
        let t = |name: String, ne: Vec<u64>, rng: &mut Rng, norm: bool| {
            let n: u64 = ne.iter().product();
            let data = if norm {
                vec![1.0; n as usize]
            } else {
                (0..n).map(|_| rng.weight(0.08)).collect()
            };
            Tensor { name, ne, data }
        };
        let mut tensors = vec![
            t(
                "token_embd.weight".into(),
                vec![e, n_vocab],
                &mut rng,
                false,
            ),
            t("output_norm.weight".into(), vec![e], &mut rng, true),
            t("output.weight".into(), vec![e, n_vocab], &mut rng, false),
        ];
        for i in 0..self.n_layer {
            let b = |s: &str| format!("blk.{i}.{s}.weight");
            tensors.push(t(b("attn_norm"), vec![e], &mut rng, true));
            tensors.push(t(b("attn_q"), vec![e, e], &mut rng, false));
            tensors.push(t(b("attn_k"), vec![e, n_embd_kv], &mut rng, false));
            tensors.push(t(b("attn_v"), vec![e, n_embd_kv], &mut rng, false));
            tensors.push(t(b("attn_output"), vec![e, e], &mut rng, false));
            tensors.push(t(b("ffn_norm"), vec![e], &mut rng, true));
            tensors.push(t(b("ffn_gate"), vec![e, ff], &mut rng, false));
            tensors.push(t(b("ffn_up"), vec![e, ff], &mut rng, false));
            tensors.push(t(b("ffn_down"), vec![ff, e], &mut rng, false));
        }
        encode(&meta, &tensors)
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
}
