//! The GGUF header reader: the metadata at the head of a GGUF file ([`GgufHeader`]:
//! version, tensor count, architecture, layers, hidden size, context), never tensor data.
//!
//! Every length it reads is bounded, so a damaged file is an error, not a huge allocation.
//! It must not load models or list directories.
//!
//! [`fixtures`] (cargo feature `test-fixtures`, or this crate's tests) writes GGUF files.

#[cfg(any(test, feature = "test-fixtures"))]
pub mod fixtures;
#[cfg(any(test, feature = "test-fixtures"))]
pub use fixtures::*;

use std::io::{BufReader, Read};
use std::path::Path;

/// What a GGUF header says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GgufHeader {
    pub version: u32,
    pub tensors: u64,
    pub architecture: Option<String>,
    pub name: Option<String>,
    pub layers: Option<u64>,
    pub embedding: Option<u64>,
    /// The context it was trained for (`context_length`).
    pub context: Option<u64>,
    pub heads: Option<u64>,
    pub kv_heads: Option<u64>,
    pub key_length: Option<u64>,
    pub value_length: Option<u64>,
}

impl GgufHeader {
    /// The KV cache for `n_ctx` positions, f16 keys and values as llama.cpp keeps them, if
    /// the header says enough to tell.
    pub fn kv_bytes(&self, n_ctx: u32) -> Option<u64> {
        let layers = self.layers?;
        let heads = self.heads.filter(|h| *h > 0)?;
        let kv_heads = self.kv_heads.unwrap_or(heads);
        let head = self.embedding? / heads;
        let k = self.key_length.unwrap_or(head);
        let v = self.value_length.unwrap_or(head);
        Some(
            layers
                .saturating_mul(kv_heads)
                .saturating_mul(k + v)
                .saturating_mul(2)
                .saturating_mul(u64::from(n_ctx)),
        )
    }

    /// The context a request runs with: `asked` when the model was trained for that many
    /// positions (else the error says the most it takes), or, not asked, `default` capped at
    /// the trained context.
    pub fn fit_context(&self, asked: Option<u32>, default: u32) -> Result<u32, ContextError> {
        match asked {
            Some(n) => self.check_context(n, 0, None).map(|()| n),
            None => Ok(self.context.map_or(default, |t| {
                u32::try_from(t)
                    .unwrap_or(u32::MAX)
                    .clamp(8, default.max(8))
            })),
        }
    }

    /// Whether `n_ctx` positions fit the model (its trained context) and, when `memory` is
    /// given, a node with that many bytes of memory (with the weights, `file_bytes`); the
    /// error says the most that fits. Checked before anything is allocated.
    pub fn check_context(
        &self,
        n_ctx: u32,
        file_bytes: u64,
        memory: Option<u64>,
    ) -> Result<(), ContextError> {
        if let Some(trained) = self.context
            && u64::from(n_ctx) > trained
        {
            return Err(ContextError::Trained { n_ctx, trained });
        }
        if let (Some(memory), Some(kv)) = (memory, self.kv_bytes(n_ctx))
            && kv.saturating_add(file_bytes) > memory
        {
            let per = self.kv_bytes(1).unwrap_or(1).max(1);
            let most = memory.saturating_sub(file_bytes) / per;
            return Err(ContextError::Memory {
                n_ctx,
                kv_mib: kv >> 20,
                memory_mib: memory >> 20,
                most: u32::try_from(most).unwrap_or(u32::MAX),
            });
        }
        Ok(())
    }
}

impl ContextError {
    /// What to ask for instead.
    pub fn hint(&self) -> String {
        match self {
            ContextError::Trained { trained, .. } => format!(
                "use n_ctx = {trained} or less (the model's trained context), or leave it out"
            ),
            ContextError::Memory { most, .. } => format!(
                "use n_ctx = {most} or less on this node, or run the job where there is more memory"
            ),
        }
    }
}

/// Why a context could not be fitted to a model file: its header, or the context.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error(transparent)]
    Header(#[from] GgufError),
    #[error(transparent)]
    Context(#[from] ContextError),
}

/// [`GgufHeader::fit_context`] for the model file at `path` (its header read here): what
/// job files and API requests alike run with, checked before anything is allocated.
pub fn fit_context_of(path: &Path, asked: Option<u32>, default: u32) -> Result<u32, FitError> {
    Ok(read_gguf_header(path)?.fit_context(asked, default)?)
}

/// Why a context is too big for a model or a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error(
        "n_ctx {n_ctx} is more than the model's trained context of {trained} tokens; use at most {trained}"
    )]
    Trained { n_ctx: u32, trained: u64 },
    #[error(
        "n_ctx {n_ctx} needs a {kv_mib} MiB KV cache besides the model, more than this node's {memory_mib} MiB of memory; use at most {most}"
    )]
    Memory {
        n_ctx: u32,
        kv_mib: u64,
        memory_mib: u64,
        most: u32,
    },
}

/// Why a GGUF header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file ({why}); is it a complete download of a .gguf model?")]
    Invalid { path: String, why: String },
}

const MAX_STRING: u64 = 1 << 20;
const MAX_KV: u64 = 1 << 20;

struct Reader<R> {
    r: R,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b)?;
        Ok(b)
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())?;
        if copied < n {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
    fn string(&mut self) -> Result<String, String> {
        let len = self.u64().map_err(|e| e.to_string())?;
        if len > MAX_STRING {
            return Err(format!("a string of {len} bytes"));
        }
        let mut buf = vec![0u8; len as usize];
        self.r.read_exact(&mut buf).map_err(|e| e.to_string())?;
        String::from_utf8(buf).map_err(|_| "a string that is not UTF-8".to_owned())
    }
}

/// A metadata value, as far as myco needs it.
enum Meta {
    Int(u64),
    Str(String),
    Other,
}

fn value<R: Read>(r: &mut Reader<R>, ty: u32) -> Result<Meta, String> {
    let io = |e: std::io::Error| e.to_string();
    Ok(match ty {
        0 | 1 | 7 => Meta::Int(u64::from(r.bytes::<1>().map_err(io)?[0])),
        2 | 3 => Meta::Int(u64::from(u16::from_le_bytes(r.bytes().map_err(io)?))),
        4 | 5 => Meta::Int(u64::from(r.u32().map_err(io)?)),
        6 => {
            r.skip(4).map_err(io)?;
            Meta::Other
        }
        10 | 11 => Meta::Int(r.u64().map_err(io)?),
        12 => {
            r.skip(8).map_err(io)?;
            Meta::Other
        }
        8 => Meta::Str(r.string()?),
        9 => {
            let item = r.u32().map_err(io)?;
            let count = r.u64().map_err(io)?;
            let fixed = match item {
                0 | 1 | 7 => Some(1),
                2 | 3 => Some(2),
                4..=6 => Some(4),
                10..=12 => Some(8),
                _ => None,
            };
            match fixed {
                Some(size) => r.skip(count.saturating_mul(size)).map_err(io)?,
                None => {
                    for _ in 0..count {
                        value(r, item)?;
                    }
                }
            }
            Meta::Other
        }
        other => return Err(format!("an unknown value type {other}")),
    })
}

/// Read the metadata at the head of a GGUF file.
pub fn read_gguf_header(path: &Path) -> Result<GgufHeader, GgufError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| GgufError::Io {
        path: shown.clone(),
        source,
    })?;
    parse_gguf_header(BufReader::new(file), &shown)
}

/// [`read_gguf_header`] of bytes from any reader (`shown` names it in errors).
pub fn parse_gguf_header(r: impl Read, shown: &str) -> Result<GgufHeader, GgufError> {
    let invalid = |why: String| GgufError::Invalid {
        path: shown.to_owned(),
        why,
    };
    let mut r = Reader { r };
    let magic: [u8; 4] = r.bytes().map_err(|e| invalid(e.to_string()))?;
    if &magic != b"GGUF" {
        return Err(invalid("it does not start with GGUF".into()));
    }
    let version = r.u32().map_err(|e| invalid(e.to_string()))?;
    if !(2..=3).contains(&version) {
        return Err(invalid(format!(
            "format version {version} (myco reads 2 and 3)"
        )));
    }
    let tensors = r.u64().map_err(|e| invalid(e.to_string()))?;
    let kvs = r.u64().map_err(|e| invalid(e.to_string()))?;
    if kvs > MAX_KV {
        return Err(invalid(format!("{kvs} metadata entries")));
    }
    let mut h = GgufHeader {
        version,
        tensors,
        ..GgufHeader::default()
    };
    let mut ints: Vec<(String, u64)> = Vec::new();
    for _ in 0..kvs {
        let key = r.string().map_err(&invalid)?;
        let ty = r.u32().map_err(|e| invalid(e.to_string()))?;
        match value(&mut r, ty).map_err(&invalid)? {
            Meta::Str(s) if key == "general.architecture" => h.architecture = Some(s),
            Meta::Str(s) if key == "general.name" => h.name = Some(s),
            Meta::Int(n) => ints.push((key, n)),
            _ => {}
        }
    }
    if let Some(arch) = &h.architecture {
        let get = |suffix: &str| {
            let key = format!("{arch}.{suffix}");
            ints.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
        };
        h.layers = get("block_count");
        h.embedding = get("embedding_length");
        h.context = get("context_length");
        h.heads = get("attention.head_count");
        h.kv_heads = get("attention.head_count_kv");
        h.key_length = get("attention.key_length");
        h.value_length = get("attention.value_length");
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A llama-8B-like header: 32 layers, 32 heads of 128 (8 for K and V), trained for 8192.
    fn eight_b() -> GgufHeader {
        GgufHeader {
            layers: Some(32),
            embedding: Some(4096),
            context: Some(8192),
            heads: Some(32),
            kv_heads: Some(8),
            ..GgufHeader::default()
        }
    }

    #[test]
    fn a_context_is_bounded_by_the_model_and_the_memory() {
        let h = eight_b();
        // f16 K and V: 32 layers × 8 heads × (128 + 128) × 2 bytes = 128 KiB a position.
        assert_eq!(h.kv_bytes(1), Some(128 << 10));
        assert!(h.check_context(8192, 0, None).is_ok());
        let e = h.check_context(131_072, 0, None).unwrap_err();
        assert!(e.to_string().contains("use at most 8192"), "{e}");
        // 4 GiB of weights on a node of 5 GiB: 1 GiB of KV is 8192 positions.
        let weights = 4u64 << 30;
        assert!(h.check_context(8192, weights, Some(5 << 30)).is_ok());
        let e = h
            .check_context(8192, weights, Some((5 << 30) - 1))
            .unwrap_err();
        assert!(
            matches!(e, ContextError::Memory { most: 8191, .. }),
            "{e:?}"
        );
        // Left out: the trained context, at most the default.
        assert_eq!(h.fit_context(None, 4096).unwrap(), 4096);
        let small = GgufHeader {
            context: Some(512),
            ..eight_b()
        };
        assert_eq!(small.fit_context(None, 4096).unwrap(), 512);
        assert_eq!(small.fit_context(Some(256), 4096).unwrap(), 256);
        assert!(small.fit_context(Some(1024), 4096).is_err());
    }
}
