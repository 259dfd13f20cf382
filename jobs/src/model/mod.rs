//! Models in one place: [`ModelRef`] (a model as a job names it), the models a node holds
//! (`~/.myco/models`: [`local_models`] by name and size, [`scan`] with what their headers
//! say, read by `header.rs`), and model *name resolution* ([`resolve_llm`] for GGUF files,
//! [`resolve_embedding`] for ONNX model directories): the one way a job file, an API request
//! or the CLI turns a model name into a [`ModelRef`].
//!
//! Reads the file system only (headers, sizes); it loads no model and must not know about
//! tasks, specs or executors.

pub mod cache;
pub mod identity;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::llm::gguf::{
    ContextError, FitError, GgufError, GgufHeader, fit_context_of, parse_gguf_header,
    read_gguf_header,
};

use crate::home;

/// A model as a job names it: an embedding model directory (`model.onnx` and its tokenizer
/// files) or a GGUF file. Nodes match models by name and size (of `model.onnx`, or of the
/// file): a thief runs the job with its own copy under `models/NAME` if it has one of that
/// size, and a node without one is never given the job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    /// Where the submitting node has it.
    pub path: PathBuf,
    pub bytes: u64,
}

impl ModelRef {
    /// The model at `dir` (a directory, or a GGUF file).
    pub fn at(dir: &Path) -> ModelRef {
        ModelRef {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: dir.to_path_buf(),
            bytes: model_bytes(dir).unwrap_or(0),
        }
    }

    /// The directory to load it from on a node whose home is `home`: the node's own copy,
    /// else the path it was submitted with.
    pub fn resolve(&self, home: &Path) -> PathBuf {
        let local = home::models_dir(home).join(&self.name);
        if model_bytes(&local) == Some(self.bytes) {
            local
        } else {
            self.path.clone()
        }
    }

    pub fn id(&self) -> (String, u64) {
        (self.name.clone(), self.bytes)
    }
}

/// A model's size: a file's own, or a directory's `model.onnx`.
fn model_bytes(path: &Path) -> Option<u64> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return Some(meta.len());
    }
    std::fs::metadata(path.join("model.onnx"))
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// The models under `home/models` (embedding model directories and GGUF files), as
/// `(name, bytes)`: what a node matches jobs' [`ModelRef::id`]s against.
pub fn local_models(home: &Path) -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir(home::models_dir(home)) else {
        return Vec::new();
    };
    let mut out: Vec<(String, u64)> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let bytes = model_bytes(&e.path())?;
            Some((e.file_name().to_string_lossy().into_owned(), bytes))
        })
        .collect();
    out.sort();
    out
}

/// The GGUF files under `dir` (a home's `models/`), without reading them.
pub fn gguf_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
        })
        .collect()
}

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
    /// The SHA-256 of its bytes ([`identity`]), once this node has read it (heartbeats of
    /// protocol 6 on carry it).
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Gguf,
    Onnx,
}

/// The models under `dir`: `*.gguf` files, and directories holding a `model.onnx`. A file
/// whose header cannot be read is listed without an architecture (and logged). A GGUF file's
/// content hash comes with it when the home's cache remembers it (`dir` is a home's
/// `models/`, its cache beside it; nothing is hashed here).
pub fn scan(dir: &Path) -> Vec<ModelFile> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let cache = dir
        .parent()
        .map_or_else(|| PathBuf::from(home::CACHE), home::cache_dir);
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_file() && name.to_ascii_lowercase().ends_with(".gguf") {
            // The file's size, through a symbolic link (a model kept in a download folder or
            // another tool's cache): the directory entry's own metadata is the link's.
            let size_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
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
                sha256: identity::known(&path, &cache),
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
                sha256: None,
                path,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

impl ModelRef {
    /// A GGUF file only a peer holds, by its file name and size: the job names it so, and
    /// each node that runs it loads its own copy of that name and size (its `path` is the
    /// bare file name, never an absolute path).
    pub fn held_by_peer(file: &str, bytes: u64) -> ModelRef {
        ModelRef {
            name: file.to_owned(),
            path: PathBuf::from(file),
            bytes,
        }
    }
}

/// Why a model name does not resolve. Display says what is missing; [`ModelError::hint`]
/// says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error(
        "no model file at {}, and no peer holds one of that name",
        looked.display()
    )]
    NoLlm { name: String, looked: PathBuf },
    #[error("no embedding model at {} (no model.onnx)", dir.display())]
    NoEmbedding { name: String, dir: PathBuf },
}

impl ModelError {
    /// What the user can do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            ModelError::NoLlm { .. } => {
                "give the path of a GGUF file, or put it in ~/.myco/models on a node of the swarm and give its name"
            }
            ModelError::NoEmbedding { .. } => {
                "run ./setup.sh for the default all-MiniLM-L6-v2, or give the path of a directory with model.onnx and its tokenizer files"
            }
        }
    }

    /// The name as given.
    pub fn name(&self) -> &str {
        match self {
            ModelError::NoLlm { name, .. } | ModelError::NoEmbedding { name, .. } => name,
        }
    }
}

/// Whether a model name is a path (it has a `/` or starts with `.`) rather than a name
/// under the models directory.
pub fn is_path(name: &str) -> bool {
    name.contains('/') || name.starts_with('.')
}

fn relative_to(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The GGUF model `name`, as every entry point resolves it:
///
/// - a path (see [`is_path`]), relative to `base_dir` (a job file's directory; give `""`
///   for the current directory): that file;
/// - else a file in `models_dir` named `name`, or `name.gguf`;
/// - else a model in `peers` (GGUF files peers hold, as [`ModelRef::held_by_peer`]) whose
///   file is `name` or `name.gguf`: the job then runs where that model is.
///
/// A local file is returned with its absolute path.
pub fn resolve_llm(
    name: &str,
    base_dir: &Path,
    models_dir: &Path,
    peers: &[ModelRef],
) -> Result<ModelRef, ModelError> {
    let by_name = !is_path(name);
    let bare = name.strip_suffix(".gguf").unwrap_or(name);
    let path = if by_name {
        let exact = models_dir.join(name);
        let with_ext = models_dir.join(format!("{bare}.gguf"));
        if !exact.is_file() && with_ext.is_file() {
            with_ext
        } else {
            exact
        }
    } else {
        relative_to(base_dir, Path::new(name))
    };
    if path.is_file() {
        return Ok(ModelRef::at(
            &std::path::absolute(&path).unwrap_or_else(|_| path.clone()),
        ));
    }
    let held = by_name
        .then(|| {
            peers
                .iter()
                .find(|m| m.name == name || m.name == format!("{bare}.gguf"))
        })
        .flatten();
    match held {
        Some(m) => Ok(m.clone()),
        None => Err(ModelError::NoLlm {
            name: name.to_owned(),
            looked: path,
        }),
    }
}

/// The embedding model `name`: a directory with `model.onnx` (and its tokenizer files),
/// given as a path (see [`is_path`]) relative to `base_dir`, or by name under `models_dir`.
pub fn resolve_embedding(
    name: &str,
    base_dir: &Path,
    models_dir: &Path,
) -> Result<ModelRef, ModelError> {
    let dir = if is_path(name) {
        relative_to(base_dir, Path::new(name))
    } else {
        models_dir.join(name)
    };
    if dir.join("model.onnx").is_file() {
        Ok(ModelRef::at(&dir))
    } else {
        Err(ModelError::NoEmbedding {
            name: name.to_owned(),
            dir,
        })
    }
}

/// The most tokens the embedding model in `dir` reads, special tokens included:
/// sentence-transformers' `max_seq_length` (what the model was trained for: 256 for
/// all-MiniLM-L6-v2, whose tokenizer says 512), else the tokenizer's `model_max_length`,
/// never more than the model's position embeddings; 512 when no file says.
#[must_use]
pub fn embedding_max_length(dir: &Path) -> usize {
    let read = |name: &str, key: &str| -> Option<usize> {
        let text = std::fs::read_to_string(dir.join(name)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let n = v[key].as_f64()?;
        // Some tokenizers say 1e30 for "no limit".
        (1.0..1e9).contains(&n).then_some(n as usize)
    };
    let said = read("sentence_bert_config.json", "max_seq_length")
        .or_else(|| read("tokenizer_config.json", "model_max_length"))
        .unwrap_or(512);
    read("config.json", "max_position_embeddings").map_or(said, |p| said.min(p))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn llm_names_resolve_locally_then_at_peers() {
        let dir = tempfile::tempdir().unwrap();
        let models = crate::home::models_dir(dir.path());
        std::fs::create_dir_all(&models).unwrap();
        std::fs::write(models.join("a.gguf"), b"GGUF....").unwrap();
        let peers = [ModelRef::held_by_peer("b.gguf", 99)];
        for name in ["a", "a.gguf"] {
            let m = resolve_llm(name, Path::new("/nowhere"), &models, &peers).unwrap();
            assert_eq!((m.name.as_str(), m.bytes), ("a.gguf", 8));
            assert!(m.path.is_absolute());
        }
        let by_path = resolve_llm("models/a.gguf", dir.path(), Path::new("/x"), &[]).unwrap();
        assert_eq!(by_path.name, "a.gguf");
        for name in ["b", "b.gguf"] {
            let m = resolve_llm(name, dir.path(), &models, &peers).unwrap();
            assert_eq!(m, peers[0]);
        }
        // A path is never looked up at peers.
        let e = resolve_llm("./b.gguf", dir.path(), &models, &peers).unwrap_err();
        assert!(e.to_string().contains("no model file at"), "{e}");
        assert!(resolve_llm("c", dir.path(), &models, &peers).is_err());
    }

    #[test]
    fn models_behind_symbolic_links_are_found_and_measured_as_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let models = crate::home::models_dir(dir.path());
        let elsewhere = dir.path().join("downloads");
        std::fs::create_dir_all(&models).unwrap();
        std::fs::create_dir_all(elsewhere.join("embed")).unwrap();
        let body = vec![7u8; 5000];
        std::fs::write(elsewhere.join("real.gguf"), &body).unwrap();
        std::fs::write(elsewhere.join("embed/model.onnx"), b"onnx").unwrap();
        std::os::unix::fs::symlink(elsewhere.join("real.gguf"), models.join("linked.gguf"))
            .unwrap();
        std::os::unix::fs::symlink(elsewhere.join("embed"), models.join("mini")).unwrap();
        // A link to a link.
        std::os::unix::fs::symlink(models.join("linked.gguf"), models.join("twice.gguf")).unwrap();
        let scanned = scan(&models);
        let sizes: Vec<(&str, u64)> = scanned
            .iter()
            .map(|m| (m.name.as_str(), m.size_bytes))
            .collect();
        assert_eq!(sizes, [("linked", 5000), ("mini", 4), ("twice", 5000)]);
        assert_eq!(
            local_models(dir.path()),
            [
                ("linked.gguf".to_owned(), 5000),
                ("mini".to_owned(), 4),
                ("twice.gguf".to_owned(), 5000)
            ]
        );
        let m = resolve_llm("linked", Path::new("/"), &models, &[]).unwrap();
        assert_eq!((m.name.as_str(), m.bytes), ("linked.gguf", 5000));
        // A dangling link is not a model.
        std::fs::remove_file(elsewhere.join("real.gguf")).unwrap();
        assert_eq!(scan(&models).len(), 1);
    }

    #[test]
    fn embedding_models_need_model_onnx() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        std::fs::create_dir_all(&m).unwrap();
        let e = resolve_embedding("m", Path::new("/"), dir.path()).unwrap_err();
        assert!(e.to_string().contains("no model.onnx"), "{e}");
        std::fs::write(m.join("model.onnx"), b"onnx").unwrap();
        let r = resolve_embedding("m", Path::new("/"), dir.path()).unwrap();
        assert_eq!((r.name.as_str(), r.bytes), ("m", 4));
        assert_eq!(
            resolve_embedding("./m", dir.path(), Path::new("/")).unwrap(),
            r
        );
    }
}

/// The header reader and the directory scan, on fixtures written here.
#[cfg(test)]
mod scan_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_the_tiny_llama_fixture() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let shape = crate::llm::gguf::TinyLlama::default();
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
