//! Text embeddings: an ONNX sentence-embedding model run by fastembed on ONNX Runtime,
//! which is loaded at run time from a shared library (ort's `load-dynamic`).
//!
//! A model is a directory with `model.onnx`, `tokenizer.json`, `config.json`,
//! `special_tokens_map.json`, `tokenizer_config.json` and, optionally,
//! `1_Pooling/config.json` (sentence-transformers' pooling config: myco reads it, since
//! fastembed would silently use CLS pooling for a user-defined model). Vectors are
//! L2-normalised. Everything here is synchronous and owns its model: callers keep an
//! [`EmbedModel`] on a thread of its own. Every failure names the file and the fix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};

/// The command that fetches the default model and ONNX Runtime.
pub const SETUP_HINT: &str = "run ./setup.sh from the myco source tree (it fetches the default model and ONNX Runtime), or point MYCO_ORT_LIB at libonnxruntime.so";

/// Why embedding could not start or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbedError {
    #[error("ONNX Runtime library not found (looked for {looked}); {SETUP_HINT}")]
    RuntimeMissing { looked: String },
    #[error(
        "cannot load ONNX Runtime from {path}: {why}; it must be ONNX Runtime >= 1.24 for this platform; {SETUP_HINT}"
    )]
    RuntimeBroken { path: String, why: String },
    #[error(
        "embedding model file {path} is missing; {SETUP_HINT}, or give the path of a directory holding model.onnx and its tokenizer files"
    )]
    ModelFileMissing { path: String },
    #[error("embedding model {path} cannot be loaded: {why}; is model.onnx complete? {SETUP_HINT}")]
    ModelBroken { path: String, why: String },
    #[error("embedding failed: {0}")]
    Run(String),
    #[error("cancelled")]
    Cancelled,
}

/// Where to find `libonnxruntime.so`: `MYCO_ORT_LIB` or `ORT_DYLIB_PATH` if set (and then
/// only there: an explicit path that is wrong is an error, not a fallback), else the `lib/`
/// directory of `home`, where setup.sh puts it.
pub fn runtime_candidates(home: &Path) -> Vec<PathBuf> {
    for var in ["MYCO_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var) {
            return vec![PathBuf::from(p)];
        }
    }
    vec![crate::home::lib_dir(home).join("libonnxruntime.so")]
}

/// Process-wide on purpose: ONNX Runtime's environment is one per process (ort's
/// `init_from` may run once), so this is not node state. Loaded models are the executor's.
static RUNTIME: OnceLock<Result<PathBuf, EmbedError>> = OnceLock::new();

/// Load ONNX Runtime once per process, from where [`runtime_candidates`] says. A missing or
/// wrong library is an error, not a panic.
pub fn init_runtime(home: &Path) -> Result<PathBuf, EmbedError> {
    if let Some(done) = RUNTIME.get() {
        // A process loads one ONNX Runtime, once.
        return done.clone();
    }
    let candidates = runtime_candidates(home);
    match candidates.iter().find(|p| p.is_file()) {
        Some(path) => init_runtime_at(path),
        None => Err(EmbedError::RuntimeMissing {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Load ONNX Runtime from `path`. Only the first call in a process loads anything; later
/// calls return its outcome.
pub fn init_runtime_at(path: &Path) -> Result<PathBuf, EmbedError> {
    RUNTIME
        .get_or_init(|| {
            let shown = path.display().to_string();
            let builder = std::panic::catch_unwind(|| ort::init_from(path))
                .map_err(|_| EmbedError::RuntimeBroken {
                    path: shown.clone(),
                    why: "loading it crashed".into(),
                })?
                .map_err(|e| EmbedError::RuntimeBroken {
                    path: shown.clone(),
                    why: e.to_string(),
                })?;
            // Loading the library and its API table is the check; the environment itself is
            // made by the first session (fastembed's), which refuses one made here.
            drop(builder);
            Ok(path.to_path_buf())
        })
        .clone()
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, EmbedError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|_| EmbedError::ModelFileMissing {
        path: path.display().to_string(),
    })
}

/// The pooling a sentence-transformers model asks for; mean if it does not say.
fn pooling(dir: &Path) -> Pooling {
    let Ok(text) = std::fs::read_to_string(dir.join("1_Pooling").join("config.json")) else {
        return Pooling::Mean;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if v["pooling_mode_cls_token"].as_bool() == Some(true) {
        Pooling::Cls
    } else {
        Pooling::Mean
    }
}

/// The model's tokenizer as the chunker counts with it: no truncation, no padding, no
/// special tokens, and the model's maximum (see [`crate::model::embedding_max_length`]).
#[derive(Debug, Clone)]
pub struct ChunkTokenizer {
    tokenizer: tokenizers::Tokenizer,
    /// Content tokens a text may hold: the maximum less the special tokens added.
    max_tokens: usize,
    /// The tokenizer never joins text across whitespace (BERT's and whitespace
    /// pre-tokenizers): a word can be tokenized alone, once per document.
    by_word: bool,
    /// Each word's token pieces (byte ranges within the word), shared by every document this
    /// tokenizer chunks; cleared when it would pass [`CACHED_WORDS`].
    words: Arc<Mutex<WordPieces>>,
}

/// Each word's token pieces, as byte ranges within the word.
type WordPieces = HashMap<Box<str>, Box<[(u32, u32)]>>;

/// The most words [`ChunkTokenizer`] keeps the pieces of (a few tens of MB at most).
const CACHED_WORDS: usize = 1 << 18;

/// The words of `text` (runs between whitespace) with their byte offsets.
fn words(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::with_capacity(text.len() / 5);
    let mut rest = text;
    let mut base = 0;
    while let Some(start) = rest.find(|c: char| !c.is_whitespace()) {
        let word_and_on = &rest[start..];
        let len = word_and_on
            .find(char::is_whitespace)
            .unwrap_or(word_and_on.len());
        out.push((base + start, &word_and_on[..len]));
        base += start + len;
        rest = &word_and_on[len..];
    }
    out
}

impl ChunkTokenizer {
    /// The chunker's copy of `tokenizer`, for a model reading `max_length` tokens.
    fn new(tokenizer: &tokenizers::Tokenizer, max_length: usize) -> ChunkTokenizer {
        let mut tokenizer = tokenizer.clone();
        tokenizer.with_padding(None);
        // Removing truncation cannot fail (only setting an impossible one can).
        let _ = tokenizer.with_truncation(None);
        let special = tokenizer.encode_fast("", true).map_or(2, |e| e.len());
        use tokenizers::PreTokenizerWrapper as P;
        let by_word = matches!(
            tokenizer.get_pre_tokenizer(),
            Some(P::BertPreTokenizer(_) | P::Whitespace(_) | P::WhitespaceSplit(_))
        );
        ChunkTokenizer {
            tokenizer,
            max_tokens: max_length.saturating_sub(special).max(1),
            by_word,
            words: Arc::default(),
        }
    }

    /// Token byte ranges of `text` by one call of the tokenizer.
    fn encode_spans(&self, text: &str) -> Result<Vec<(usize, usize)>, String> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| e.to_string())?;
        Ok(encoding
            .get_offsets()
            .iter()
            .copied()
            .filter(|(a, b)| a < b)
            .collect())
    }

    /// The tokenizer of the model in `dir`, without loading the model.
    pub fn load(dir: &Path) -> Result<ChunkTokenizer, EmbedError> {
        let bytes = read(dir, "tokenizer.json")?;
        let tokenizer =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| EmbedError::ModelBroken {
                path: dir.join("tokenizer.json").display().to_string(),
                why: e.to_string(),
            })?;
        Ok(ChunkTokenizer::new(
            &tokenizer,
            crate::model::embedding_max_length(dir),
        ))
    }
}

impl crate::chunk::Tokens for ChunkTokenizer {
    /// One pass over the document. Where the tokenizer never joins text across whitespace,
    /// each distinct word is tokenized once per tokenizer (not per document) and its pieces
    /// reused: the words not seen before go to the tokenizer in one call, joined by spaces.
    /// Text repeats its words, so this is several times faster than one call on the whole
    /// text, with the same result.
    fn spans(&self, text: &str) -> Result<Vec<std::ops::Range<usize>>, String> {
        if !self.by_word {
            return Ok(self
                .encode_spans(text)?
                .into_iter()
                .map(|(a, b)| a..b)
                .collect());
        }
        let words = words(text);
        let mut cache = self.words.lock().unwrap_or_else(PoisonError::into_inner);
        let mut new: HashMap<&str, Vec<(u32, u32)>> = HashMap::new();
        for &(_, word) in &words {
            if !cache.contains_key(word) {
                new.entry(word).or_default();
            }
        }
        if !new.is_empty() {
            drop(cache);
            let mut joined = String::new();
            let mut starts = Vec::with_capacity(new.len());
            let mut keys = Vec::with_capacity(new.len());
            for &word in new.keys() {
                if !joined.is_empty() {
                    joined.push(' ');
                }
                starts.push(joined.len());
                keys.push(word);
                joined.push_str(word);
            }
            for (a, b) in self.encode_spans(&joined)? {
                // No token crosses the joining space (the pre-tokenizer splits there).
                let i = starts.partition_point(|&s| s <= a).saturating_sub(1);
                let s = starts[i];
                if let Some(pieces) = new.get_mut(keys[i]) {
                    pieces.push(((a - s) as u32, (b - s) as u32));
                }
            }
            cache = self.words.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() + new.len() > CACHED_WORDS {
                cache.clear();
            }
            for (word, pieces) in &new {
                cache.insert(Box::from(*word), pieces.as_slice().into());
            }
        }
        let mut out = Vec::with_capacity(words.len() * 3 / 2);
        for (at, word) in words {
            let pieces: &[(u32, u32)] = match new.get(word) {
                Some(pieces) => pieces,
                None => cache.get(word).map_or(&[], |p| p),
            };
            out.extend(
                pieces
                    .iter()
                    .map(|&(a, b)| at + a as usize..at + b as usize),
            );
        }
        Ok(out)
    }

    fn count(&self, text: &str) -> usize {
        self.tokenizer
            .encode_fast(text, false)
            .map_or(usize::MAX, |e| e.len())
    }

    fn max_tokens(&self) -> usize {
        self.max_tokens
    }
}

/// A loaded embedding model. Not `Sync`: keep it on the thread that owns it.
pub struct EmbedModel {
    inner: TextEmbedding,
    dir: PathBuf,
    chunker: Arc<ChunkTokenizer>,
}

impl std::fmt::Debug for EmbedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedModel")
            .field("dir", &self.dir)
            .finish()
    }
}

impl EmbedModel {
    /// Load the model in `dir`, with ONNX Runtime from `home` (see [`init_runtime`]).
    pub fn load(dir: &Path, home: &Path) -> Result<EmbedModel, EmbedError> {
        EmbedModel::load_with(dir, home, 0)
    }

    /// Load it to run on `threads` ONNX Runtime threads (0: every core).
    pub fn load_with(dir: &Path, home: &Path, threads: usize) -> Result<EmbedModel, EmbedError> {
        init_runtime(home)?;
        let onnx = read(dir, "model.onnx")?;
        let files = TokenizerFiles {
            tokenizer_file: read(dir, "tokenizer.json")?,
            config_file: read(dir, "config.json")?,
            special_tokens_map_file: read(dir, "special_tokens_map.json")?,
            tokenizer_config_file: read(dir, "tokenizer_config.json")?,
        };
        let model = UserDefinedEmbeddingModel::new(onnx, files).with_pooling(pooling(dir));
        // Truncate where the model does (its trained length), not at the tokenizer's 512.
        let max_length = crate::model::embedding_max_length(dir);
        let mut options = InitOptionsUserDefined::new().with_max_length(max_length);
        if threads > 0 {
            options = options.with_intra_threads(threads);
        }
        let inner = TextEmbedding::try_new_from_user_defined(model, options).map_err(|e| {
            EmbedError::ModelBroken {
                path: dir.join("model.onnx").display().to_string(),
                why: e.to_string(),
            }
        })?;
        let chunker = Arc::new(ChunkTokenizer::new(&inner.tokenizer, max_length));
        Ok(EmbedModel {
            inner,
            dir: dir.to_path_buf(),
            chunker,
        })
    }

    /// The tokenizer chunks for this model are sized with.
    pub fn chunk_tokenizer(&self) -> Arc<ChunkTokenizer> {
        Arc::clone(&self.chunker)
    }

    /// The model's token count for each text (after truncation to the model's maximum).
    pub fn token_counts(&self, texts: &[&str]) -> Result<Vec<usize>, EmbedError> {
        texts
            .iter()
            .map(|t| {
                self.inner
                    .tokenizer
                    .encode(*t, true)
                    .map(|e| e.len())
                    .map_err(|e| EmbedError::Run(format!("tokenizing: {e}")))
            })
            .collect()
    }

    /// Embed texts in batches formed by a token budget: texts are counted with the model's
    /// tokenizer and grouped by length, and a batch holds as many as fit in `batch_tokens`
    /// counting padding (a batch costs `texts × longest`). Short texts thus go many to a
    /// batch and long ones few, and little compute is spent on padding. Vectors come back in
    /// the order of `texts`, L2-normalised. `cancelled` is polled between batches.
    pub fn embed_budget(
        &mut self,
        texts: &[&str],
        batch_tokens: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let counts = self.token_counts(texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| (counts[i], i));
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let mut start = 0;
        while start < order.len() {
            if cancelled() {
                return Err(EmbedError::Cancelled);
            }
            let mut end = start + 1;
            // Sorted ascending: the text added last is the longest of the batch.
            while end < order.len() && (end + 1 - start) * counts[order[end]] <= batch_tokens {
                end += 1;
            }
            let batch: Vec<&str> = order[start..end].iter().map(|&i| texts[i]).collect();
            let vectors = self.embed(&batch, batch.len())?;
            for (&i, v) in order[start..end].iter().zip(vectors) {
                out[i] = v;
            }
            start = end;
        }
        Ok(out)
    }

    /// Embed texts, L2-normalised, in batches of `batch`.
    pub fn embed<S: AsRef<str> + Send + Sync>(
        &mut self,
        texts: &[S],
        batch: usize,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut vectors = self
            .inner
            .embed(texts, Some(batch.max(1)))
            .map_err(|e| EmbedError::Run(e.to_string()))?;
        for v in &mut vectors {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
        Ok(vectors)
    }
}
