//! The model files a node holds (`~/.myco/models`): GGUF files, with their architecture and
//! shape read from the file header, and ONNX model directories. Nodes advertise these so
//! that jobs needing a model go where it is.
//!
//! The GGUF reader reads only the metadata at the head of the file, never tensor data, and
//! bounds every length it reads, so a damaged file is an error, not a huge allocation.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A model file on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    /// The name jobs use: the file name without `.gguf`, or the directory name.
    pub name: String,
    pub path: PathBuf,
    pub format: ModelFormat,
    pub size_bytes: u64,
    /// From the header (`general.architecture` for GGUF), if readable.
    pub architecture: Option<String>,
    /// Transformer layers (`<arch>.block_count`), if known.
    pub layers: Option<u64>,
    /// Hidden size (`<arch>.embedding_length`), if known.
    pub embedding: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Gguf,
    Onnx,
}

/// What a GGUF header says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GgufHeader {
    pub version: u32,
    pub tensors: u64,
    pub architecture: Option<String>,
    pub name: Option<String>,
    pub layers: Option<u64>,
    pub embedding: Option<u64>,
    pub context: Option<u64>,
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
enum Value {
    Int(u64),
    Str(String),
    Other,
}

fn value<R: Read>(r: &mut Reader<R>, ty: u32) -> Result<Value, String> {
    let io = |e: std::io::Error| e.to_string();
    Ok(match ty {
        0 | 1 | 7 => Value::Int(u64::from(r.bytes::<1>().map_err(io)?[0])),
        2 | 3 => Value::Int(u64::from(u16::from_le_bytes(r.bytes().map_err(io)?))),
        4 | 5 => Value::Int(u64::from(r.u32().map_err(io)?)),
        6 => {
            r.skip(4).map_err(io)?;
            Value::Other
        }
        10 | 11 => Value::Int(r.u64().map_err(io)?),
        12 => {
            r.skip(8).map_err(io)?;
            Value::Other
        }
        8 => Value::Str(r.string()?),
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
            Value::Other
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
    let invalid = |why: String| GgufError::Invalid {
        path: shown.clone(),
        why,
    };
    let mut r = Reader {
        r: BufReader::new(file),
    };
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
            Value::Str(s) if key == "general.architecture" => h.architecture = Some(s),
            Value::Str(s) if key == "general.name" => h.name = Some(s),
            Value::Int(n) => ints.push((key, n)),
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
    }
    Ok(h)
}

/// The models under `dir`: `*.gguf` files, and directories holding a `model.onnx`. A file
/// whose header cannot be read is listed without an architecture (and logged).
pub fn scan(dir: &Path) -> Vec<ModelFile> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_file() && name.to_ascii_lowercase().ends_with(".gguf") {
            let size_bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            let header = read_gguf_header(&path)
                .map_err(|e| tracing::warn!("model {}: {e}", path.display()))
                .ok();
            out.push(ModelFile {
                name: name[..name.len() - 5].to_owned(),
                format: ModelFormat::Gguf,
                size_bytes,
                architecture: header.as_ref().and_then(|h| h.architecture.clone()),
                layers: header.as_ref().and_then(|h| h.layers),
                embedding: header.as_ref().and_then(|h| h.embedding),
                path,
            });
        } else if path.join("model.onnx").is_file() {
            let size_bytes = std::fs::metadata(path.join("model.onnx"))
                .map(|m| m.len())
                .unwrap_or(0);
            out.push(ModelFile {
                name,
                format: ModelFormat::Onnx,
                size_bytes,
                architecture: Some("onnx".into()),
                layers: None,
                embedding: None,
                path,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tiny_llama_fixture() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let shape = myco_jobs::gguf::TinyLlama::default();
        shape.write(&path, true).unwrap();
        let h = read_gguf_header(&path).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.architecture.as_deref(), Some("llama"));
        assert_eq!(h.layers, Some(u64::from(shape.n_layer)));
        assert_eq!(h.embedding, Some(u64::from(shape.n_embd)));
        assert_eq!(h.tensors, 3 + 9 * u64::from(shape.n_layer));
    }

    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }

    fn gguf() -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(2u64.to_le_bytes()); // tensors
        b.extend(5u64.to_le_bytes()); // kv pairs
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "llama.block_count");
        b.extend(4u32.to_le_bytes());
        b.extend(4u32.to_le_bytes());
        s(&mut b, "tokenizer.ggml.tokens");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "<s>");
        s(&mut b, "</s>");
        s(&mut b, "general.alignment");
        b.extend(4u32.to_le_bytes());
        b.extend(32u32.to_le_bytes());
        s(&mut b, "llama.embedding_length");
        b.extend(10u32.to_le_bytes());
        b.extend(128u64.to_le_bytes());
        b
    }

    #[test]
    fn reads_the_header_and_skips_arrays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        std::fs::write(&path, gguf()).unwrap();
        let h = read_gguf_header(&path).unwrap();
        assert_eq!(h.architecture.as_deref(), Some("llama"));
        assert_eq!(h.layers, Some(4));
        assert_eq!(h.embedding, Some(128));
        assert_eq!(h.tensors, 2);
        let models = scan(dir.path());
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].name, "tiny");
        assert_eq!(models[0].architecture.as_deref(), Some("llama"));
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.gguf");
        let good = gguf();
        for cut in [0, 3, 4, 10, 30, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            let e = read_gguf_header(&path).unwrap_err();
            assert!(e.to_string().contains("bad.gguf"), "{e}");
        }
        let mut huge = good[..24].to_vec();
        huge.extend(u64::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert!(read_gguf_header(&path).is_err());
        // Listed, without an architecture.
        assert_eq!(scan(dir.path())[0].architecture, None);
    }
}
