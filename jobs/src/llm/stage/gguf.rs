//! GGUF files for stages: read a model's metadata and tensor table, and write a stage's
//! slice of it, a GGUF that llama.cpp loads as a model of its own.
//!
//! A slice of layers `first..end` keeps every metadata key but these:
//! - `{arch}.block_count` is `end - first`; per-layer arrays (of `block_count` entries) are
//!   cut to the range, and Gemma 3's sliding-window pattern, which llama.cpp derives from the
//!   layer index, is written out as the array of the original layers' kinds;
//! - the vocabulary is dropped (`tokenizer.ggml.model = "none"` with `{arch}.vocab_size`
//!   dummy tokens): stages take hidden states, never token ids, and the runner tokenizes;
//! - tensors `blk.{first+i}.*` become `blk.{i}.*`. The last stage keeps the output head
//!   (written as `token_embd.weight`, so llama.cpp ties it as the output); the others get a
//!   one-row dummy head, so the logits llama.cpp computes for every position cost nothing.
//!
//! Every length read is bounded, so a damaged file is an error, never a huge allocation.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::llm::ffi;

/// A metadata value, as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type id and elements.
    Array(u32, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(..) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// A non-negative integer value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(x) => Some(x.into()),
            Value::U16(x) => Some(x.into()),
            Value::U32(x) => Some(x.into()),
            Value::U64(x) => Some(x),
            Value::I8(x) => u64::try_from(x).ok(),
            Value::I16(x) => u64::try_from(x).ok(),
            Value::I32(x) => u64::try_from(x).ok(),
            Value::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, fastest first (ggml's `ne`).
    pub ne: Vec<u64>,
    /// ggml type id.
    pub ty: u32,
    /// From the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub bytes: u64,
}

impl TensorInfo {
    /// Bytes of one row (`ne[0]` values).
    pub fn row_bytes(&self) -> u64 {
        let info = ffi::type_info(self.ty);
        let n0 = self.ne.first().copied().unwrap_or(0);
        info.map_or(0, |t| n0 / t.block * t.bytes)
    }

    fn rows(&self) -> u64 {
        self.ne.iter().skip(1).product()
    }
}

/// A GGUF file's header: metadata and tensor table.
#[derive(Debug, Clone)]
pub struct Gguf {
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the data section starts in the file.
    pub data_start: u64,
}

const MAX_STRING: u64 = 16 << 20;
const MAX_ITEMS: u64 = 1 << 26;
const MAX_KV: u64 = 1 << 20;
const MAX_TENSORS: u64 = 1 << 20;

struct Reader<R> {
    r: R,
    at: u64,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("cut short at byte {}: {e}", self.at))?;
        self.at += N as u64;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn count(&mut self, max: u64, what: &str) -> Result<u64, String> {
        let n = self.u64()?;
        if n > max {
            return Err(format!("{what} count {n} is implausible"));
        }
        Ok(n)
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.count(MAX_STRING, "string length")?;
        let mut b = vec![0u8; n as usize];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("cut short at byte {}: {e}", self.at))?;
        self.at += n;
        String::from_utf8(b).map_err(|_| format!("a string before byte {} is not UTF-8", self.at))
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.bytes()?)),
            1 => Value::I8(i8::from_le_bytes(self.bytes()?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            7 => Value::Bool(self.bytes::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 if depth == 0 => {
                let elem = self.u32()?;
                let n = self.count(MAX_ITEMS, "array length")?;
                let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(elem, items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            _ => return Err(format!("unknown value type {ty}")),
        })
    }
}

impl Gguf {
    /// Read the header of the GGUF at `path`.
    pub fn read(path: &Path) -> Result<Gguf, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let mut r = Reader {
            r: BufReader::new(file),
            at: 0,
        };
        if &r.bytes::<4>()? != b"GGUF" {
            return Err("no GGUF magic".into());
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} (2 and 3 are read)"));
        }
        let n_tensors = r.count(MAX_TENSORS, "tensor")?;
        let n_kv = r.count(MAX_KV, "metadata")?;
        let mut kv = Vec::with_capacity(n_kv.min(4096) as usize);
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0)?;
            kv.push((key, value));
        }
        let alignment = kv
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(32);
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(format!(
                "general.alignment {alignment} is not a power of two"
            ));
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16) as usize);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > 4 {
                return Err(format!("tensor {name} has {n_dims} dimensions"));
            }
            let ne = (0..n_dims)
                .map(|_| r.u64())
                .collect::<Result<Vec<_>, _>>()?;
            let ty = r.u32()?;
            let offset = r.u64()?;
            let info =
                ffi::type_info(ty).ok_or_else(|| format!("tensor {name} has unknown type {ty}"))?;
            let n: u64 = ne
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| format!("tensor {name} is too large"))?;
            if !ne[0].is_multiple_of(info.block) {
                return Err(format!(
                    "tensor {name}: rows of {} are not whole {} blocks",
                    ne[0], info.name
                ));
            }
            let bytes = n / info.block * info.bytes;
            tensors.push(TensorInfo {
                name,
                ne,
                ty,
                offset,
                bytes,
            });
        }
        let data_start = r.at.div_ceil(alignment) * alignment;
        for t in &tensors {
            let end = data_start
                .checked_add(t.offset)
                .and_then(|x| x.checked_add(t.bytes));
            if end.is_none_or(|e| e > len) {
                return Err(format!(
                    "tensor {} runs past the end of the file (a partial download?)",
                    t.name
                ));
            }
        }
        Ok(Gguf {
            kv,
            tensors,
            alignment,
            data_start,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Where the tensors' data ends, aligned, from the start of the data section.
    pub fn data_end(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| (t.offset + t.bytes).div_ceil(self.alignment) * self.alignment)
            .max()
            .unwrap_or(0)
    }

    /// A slice that travels: the token embedding it carries after its data (stage 0's),
    /// its offset from the start of the data section. `Err` if the metadata says there is
    /// one and the file does not hold it.
    pub fn carried_embedding(&self, file_len: u64) -> Result<Option<TensorInfo>, String> {
        let Some(Value::Array(_, ne)) = self.get(keys::EMBD_NE) else {
            return Ok(None);
        };
        let ty = self
            .get(keys::EMBD_TYPE)
            .and_then(Value::as_u64)
            .and_then(|t| u32::try_from(t).ok())
            .ok_or("a slice names an embedding without its type")?;
        let ne: Vec<u64> = ne.iter().filter_map(Value::as_u64).collect();
        let info = ffi::type_info(ty).ok_or_else(|| format!("unknown embedding type {ty}"))?;
        let n = ne
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|_| ne.len() == 2 && ne[0].is_multiple_of(info.block))
            .ok_or("a slice's embedding has impossible dimensions")?;
        let t = TensorInfo {
            name: "token_embd.weight".into(),
            ne,
            ty,
            offset: self.data_end(),
            bytes: n / info.block * info.bytes,
        };
        if self.data_start + t.offset + t.bytes > file_len {
            return Err("the slice's embedding runs past the end of the file".into());
        }
        Ok(Some(t))
    }
}

/// `blk.7.attn_q.weight` → (7, `attn_q.weight`).
pub fn layer_of(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (n, tail) = rest.split_once('.')?;
    Some((n.parse().ok()?, tail))
}

/// Where a slice's tensor comes from.
enum Source {
    /// A tensor of the original file.
    File(TensorInfo),
    /// Zeros, `bytes` long (the dummy head).
    Zeros,
}

/// The metadata of a slice that travels (see [`write_slice`]): a stage loads it as it is,
/// without the model it was cut from.
pub mod keys {
    /// The SHA-256 of the model the slice was cut from.
    pub const SOURCE: &str = "myco.slice.source";
    /// The range of the source's layers.
    pub const FIRST: &str = "myco.slice.first";
    pub const END: &str = "myco.slice.end";
    /// The source's layers and vocabulary.
    pub const N_LAYER: &str = "myco.slice.n_layer";
    pub const N_VOCAB: &str = "myco.slice.n_vocab";
    /// The source has no `output.weight` (its head is its embedding).
    pub const TIED: &str = "myco.slice.tied";
    /// Stage 0's: the type and dimensions of the token embedding, whose data follows the
    /// GGUF's own (aligned), where llama.cpp never reads.
    pub const EMBD_TYPE: &str = "myco.slice.embd_type";
    pub const EMBD_NE: &str = "myco.slice.embd_ne";
}

/// Write the slice of layers `first..end` of `src` (read from `path`) to `out`. `last`: it
/// ends at the model's last layer, so it keeps the output head.
///
/// `travels`: the source's SHA-256, for a slice sent to a node without the model: it also
/// says what it was cut from ([`keys`]), and stage 0's carries the token embedding after
/// the GGUF's data (the stage looks its rows up there). Writing is deterministic: the same
/// model and range give the same bytes on every node.
pub fn write_slice(
    src: &Gguf,
    path: &Path,
    arch: &str,
    first: u32,
    end: u32,
    out: &Path,
    travels: Option<&str>,
) -> Result<(), String> {
    let n_layer = src
        .get(&format!("{arch}.block_count"))
        .and_then(Value::as_u64)
        .ok_or("no block_count")?;
    let last = u64::from(end) == n_layer;
    let n_embd = src
        .get(&format!("{arch}.embedding_length"))
        .and_then(Value::as_u64)
        .ok_or("no embedding_length")?;
    let head = src
        .tensor("output.weight")
        .or_else(|| src.tensor("token_embd.weight"))
        .ok_or("no token_embd.weight")?;
    let n_vocab = if last {
        head.ne.get(1).copied().unwrap_or(1)
    } else {
        1
    };
    let range = first as usize..end as usize;
    let mut kv: Vec<(String, Value)> = Vec::with_capacity(src.kv.len());
    for (k, v) in &src.kv {
        if k.starts_with("tokenizer.") {
            continue;
        }
        let v = match v {
            _ if *k == format!("{arch}.block_count") => Value::U32(end - first),
            Value::Array(ty, items) if k.starts_with(arch) && items.len() as u64 == n_layer => {
                Value::Array(*ty, items[range.clone()].to_vec())
            }
            v => v.clone(),
        };
        kv.push((k.clone(), v));
    }
    // Gemma 3 picks local (sliding-window) or global attention by layer index: write the
    // original layers' kinds out.
    let pattern_key = format!("{arch}.attention.sliding_window_pattern");
    let swa = src
        .get(&format!("{arch}.attention.sliding_window"))
        .and_then(Value::as_u64)
        .is_some_and(|w| w > 0);
    if arch == "gemma3" && swa && !matches!(src.get(&pattern_key), Some(Value::Array(..))) {
        let n_pattern = src.get(&pattern_key).and_then(Value::as_u64).unwrap_or(6);
        let kinds = range
            .clone()
            .map(|il| {
                let il = il as u64;
                Value::U32(u32::from(n_pattern == 0 || il % n_pattern < n_pattern - 1))
            })
            .collect();
        kv.retain(|(k, _)| *k != pattern_key);
        kv.push((pattern_key, Value::Array(4, kinds)));
    }
    kv.push(("tokenizer.ggml.model".into(), Value::Str("none".into())));
    kv.retain(|(k, _)| *k != format!("{arch}.vocab_size"));
    kv.push((format!("{arch}.vocab_size"), Value::U32(n_vocab as u32)));
    let embd = src
        .tensor("token_embd.weight")
        .ok_or("no token_embd.weight")?;
    // Stage 0's embedding, when the slice travels.
    let carried = travels.is_some() && first == 0;
    if let Some(source) = travels {
        kv.retain(|(k, _)| !k.starts_with("myco.slice."));
        kv.push((keys::SOURCE.into(), Value::Str(source.to_owned())));
        kv.push((keys::FIRST.into(), Value::U32(first)));
        kv.push((keys::END.into(), Value::U32(end)));
        kv.push((keys::N_LAYER.into(), Value::U64(n_layer)));
        kv.push((
            keys::N_VOCAB.into(),
            Value::U64(embd.ne.get(1).copied().unwrap_or(0)),
        ));
        kv.push((
            keys::TIED.into(),
            Value::Bool(src.tensor("output.weight").is_none()),
        ));
        if carried {
            kv.push((keys::EMBD_TYPE.into(), Value::U32(embd.ty)));
            kv.push((
                keys::EMBD_NE.into(),
                Value::Array(10, embd.ne.iter().map(|&d| Value::U64(d)).collect()),
            ));
        }
    }

    let mut tensors: Vec<(TensorInfo, Source)> = Vec::new();
    let f32_info = |name: &str, ne: Vec<u64>| {
        let bytes = ne.iter().product::<u64>() * 4;
        TensorInfo {
            name: name.into(),
            ne,
            ty: 0,
            offset: 0,
            bytes,
        }
    };
    if last {
        let mut t = head.clone();
        t.name = "token_embd.weight".into();
        tensors.push((t, Source::File(head.clone())));
    } else {
        tensors.push((
            f32_info("token_embd.weight", vec![n_embd, 1]),
            Source::Zeros,
        ));
    }
    for t in &src.tensors {
        match layer_of(&t.name) {
            Some((il, tail)) if (first..end).contains(&il) => {
                let mut s = t.clone();
                s.name = format!("blk.{}.{tail}", il - first);
                tensors.push((s, Source::File(t.clone())));
            }
            Some(_) => {}
            None if t.name == "token_embd.weight" || t.name == "output.weight" => {}
            // output_norm, rope_freqs, ...: small, needed by every slice's graph.
            None => tensors.push((t.clone(), Source::File(t.clone()))),
        }
    }
    // Offsets in the slice.
    let align = src.alignment;
    let mut offset = 0u64;
    for (t, _) in &mut tensors {
        t.offset = offset;
        offset = (offset + t.bytes).div_ceil(align) * align;
    }
    let mut head_bytes = Vec::new();
    head_bytes.extend(b"GGUF");
    head_bytes.extend(3u32.to_le_bytes());
    head_bytes.extend((tensors.len() as u64).to_le_bytes());
    head_bytes.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in &kv {
        put_str(&mut head_bytes, k);
        head_bytes.extend(v.type_id().to_le_bytes());
        put_value(&mut head_bytes, v);
    }
    for (t, _) in &tensors {
        put_str(&mut head_bytes, &t.name);
        head_bytes.extend((t.ne.len() as u32).to_le_bytes());
        t.ne.iter().for_each(|d| head_bytes.extend(d.to_le_bytes()));
        head_bytes.extend(t.ty.to_le_bytes());
        head_bytes.extend(t.offset.to_le_bytes());
    }
    let pad = |n: u64| (align - n % align) % align;
    head_bytes.resize(head_bytes.len() + pad(head_bytes.len() as u64) as usize, 0);

    let io = |e: std::io::Error| format!("writing {}: {e}", out.display());
    let mut w = BufWriter::with_capacity(1 << 20, File::create(out).map_err(io)?);
    w.write_all(&head_bytes).map_err(io)?;
    let mut input = File::open(path).map_err(|e| e.to_string())?;
    let zeros = [0u8; 4096];
    for (t, source) in &tensors {
        match source {
            Source::File(orig) => {
                input
                    .seek(SeekFrom::Start(src.data_start + orig.offset))
                    .map_err(|e| e.to_string())?;
                let copied =
                    std::io::copy(&mut (&mut input).take(orig.bytes), &mut w).map_err(io)?;
                if copied != orig.bytes {
                    return Err(format!("{} was cut short", path.display()));
                }
            }
            Source::Zeros => {
                let mut left = t.bytes;
                while left > 0 {
                    let n = left.min(zeros.len() as u64);
                    w.write_all(&zeros[..n as usize]).map_err(io)?;
                    left -= n;
                }
            }
        }
        w.write_all(&zeros[..pad(t.bytes) as usize]).map_err(io)?;
    }
    if carried {
        // At the aligned end of the tensors' data (each tensor above was padded).
        input
            .seek(SeekFrom::Start(src.data_start + embd.offset))
            .map_err(|e| e.to_string())?;
        let copied = std::io::copy(&mut (&mut input).take(embd.bytes), &mut w).map_err(io)?;
        if copied != embd.bytes {
            return Err(format!("{} was cut short", path.display()));
        }
    }
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_data()
        .map_err(io)?;
    Ok(())
}

/// Read row `row` of tensor `t` (raw bytes) from a GGUF file whose data starts at
/// `data_start`.
pub fn read_row(
    file: &File,
    data_start: u64,
    t: &TensorInfo,
    row: u64,
    out: &mut [u8],
) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let rb = t.row_bytes();
    if row >= t.rows() || out.len() as u64 != rb {
        return Err(format!("row {row} is outside {}", t.name));
    }
    file.read_exact_at(out, data_start + t.offset + row * rb)
        .map_err(|e| format!("reading {}: {e}", t.name))
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn put_value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.extend(x.to_le_bytes()),
        Value::U16(x) => b.extend(x.to_le_bytes()),
        Value::I16(x) => b.extend(x.to_le_bytes()),
        Value::U32(x) => b.extend(x.to_le_bytes()),
        Value::I32(x) => b.extend(x.to_le_bytes()),
        Value::F32(x) => b.extend(x.to_le_bytes()),
        Value::Bool(x) => b.push(u8::from(*x)),
        Value::Str(s) => put_str(b, s),
        Value::Array(ty, items) => {
            b.extend(ty.to_le_bytes());
            b.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|x| put_value(b, x));
        }
        Value::U64(x) => b.extend(x.to_le_bytes()),
        Value::I64(x) => b.extend(x.to_le_bytes()),
        Value::F64(x) => b.extend(x.to_le_bytes()),
    }
}
