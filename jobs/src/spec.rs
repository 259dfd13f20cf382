//! The `job.toml` format, version 1: parsing, validation and planning into [`Task`]s.
//!
//! This is the edge where strings become types: everything after [`JobSpec::parse`] works on
//! enums and checked values. A malformed file yields a [`SpecError`] listing *every* problem
//! with its field path and a hint. Nothing here touches the queue or runs a job.
//!
//! ```toml
//! version = 1                  # required: the format version
//! kind = "chunk"               # chunk | noop | embed | archive
//! priority = 0                 # higher runs first (-1000..=1000), FIFO within a priority
//! max_attempts = 3             # failed attempts before the job is dead (1..=100)
//! timeout = "10m"              # one attempt's time limit (humantime: "30s", "1h 30m")
//! idempotency_key = "nightly"  # optional: a second submit with this key returns the first job
//!
//! [chunk]
//! input = "docs/"              # a file, a directory (recursive) or a glob, relative to this file
//! max_tokens = 256             # chunk size in tokens (characters for now)
//! overlap = 32                 # tokens shared by neighbouring chunks
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::archive::{self, ArchiveTask, ModelRef};
use crate::chunk::{self, ChunkParams};
use crate::task::{FailMode, NoopTask, Task};

/// The only format version this build reads.
pub const SPEC_VERSION: u32 = 1;

/// What a user asks for, as read from `job.toml` (before validation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub version: u32,
    pub kind: SpecKind,
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub chunk: Option<ChunkSection>,
    #[serde(default)]
    pub noop: Option<NoopSection>,
    #[serde(default)]
    pub embed: Option<EmbedSection>,
    #[serde(default)]
    pub archive: Option<ArchiveSection>,
    #[serde(default)]
    pub infer: Option<InferSection>,
    /// The same settings as `[infer]`, run as layer-range stages across nodes.
    #[serde(default)]
    pub pipeline: Option<InferSection>,
}

/// The job kinds a user can name in `kind = "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecKind {
    Chunk,
    Noop,
    Embed,
    Archive,
    Infer,
    Pipeline,
}

/// `[infer]`: generate text with an LLM (a GGUF file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferSection {
    /// A GGUF file: a path, or a file name under `~/.myco/models`.
    pub model: String,
    /// Text to continue; or give `messages`.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Chat messages, rendered with the model's chat template.
    #[serde(default)]
    pub messages: Option<Vec<crate::infer::Message>>,
    #[serde(default = "default_max_new")]
    pub max_tokens: u32,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_k: Option<i32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub repeat_penalty: Option<f32>,
    #[serde(default)]
    pub seed: u32,
    /// Run only on a node that has a GPU.
    #[serde(default)]
    pub gpu: bool,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default = "default_n_ctx")]
    pub n_ctx: u32,
    /// Decoding threads (0: one per core).
    #[serde(default)]
    pub threads: u32,
}

fn default_max_new() -> u32 {
    256
}
fn default_n_ctx() -> u32 {
    4096
}

/// `[archive]`: chunk and embed a directory tree into a named collection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSection {
    /// A directory (recursive), a file or a glob, relative to this file.
    pub input: PathBuf,
    /// The collection's name: it is written to `~/.myco/collections/NAME`.
    pub collection: String,
    #[serde(default = "default_embed_model")]
    pub model: String,
    /// Chunk size in characters (all-MiniLM-L6-v2 reads at most 256 tokens, about 1000
    /// characters of English).
    #[serde(default = "default_archive_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "default_archive_overlap")]
    pub overlap: usize,
    #[serde(default = "default_batch_tokens")]
    pub batch_tokens: usize,
}

fn default_archive_max_tokens() -> usize {
    800
}
fn default_archive_overlap() -> usize {
    100
}

/// `[embed]`: turn texts into vectors with a sentence-embedding model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedSection {
    /// A model name under `~/.myco/models`, or a path to a model directory.
    #[serde(default = "default_embed_model")]
    pub model: String,
    /// The texts; or give `chunks` instead.
    #[serde(default)]
    pub texts: Vec<String>,
    /// A chunk job's result (JSON Lines, e.g. from `myco run chunk.toml --out chunks.jsonl`):
    /// each chunk is embedded, and its vector's line names the chunk.
    #[serde(default)]
    pub chunks: Option<PathBuf>,
    /// Estimated tokens per batch: short texts go many to a batch, long ones few.
    #[serde(default = "default_batch_tokens")]
    pub batch_tokens: usize,
}

fn default_embed_model() -> String {
    "all-MiniLM-L6-v2".to_owned()
}
fn default_batch_tokens() -> usize {
    8192
}

/// `[chunk]`: cut documents into token-sized pieces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkSection {
    pub input: PathBuf,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "default_overlap")]
    pub overlap: usize,
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
}

/// `[noop]`: a job that does nothing but return its payload. For smoke tests, benchmarks and
/// failure drills (`fail_attempts`, `fail_mode`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopSection {
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub sleep_ms: u64,
    #[serde(default)]
    pub fail_attempts: u32,
    #[serde(default)]
    pub fail_mode: FailMode,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_max_tokens() -> usize {
    256
}
fn default_overlap() -> usize {
    32
}
fn default_tokenizer() -> String {
    "chars".to_owned()
}

/// One thing wrong with a job file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Dotted field path (`chunk.max_tokens`), or empty for the file as a whole.
    pub field: String,
    pub message: String,
    pub hint: String,
}

/// Every problem found in a job file. Display prints one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{}", render(.problems))]
pub struct SpecError {
    pub problems: Vec<Problem>,
}

fn render(problems: &[Problem]) -> String {
    let mut out = String::from("invalid job spec:");
    for p in problems {
        let field = if p.field.is_empty() {
            "(file)"
        } else {
            &p.field
        };
        out.push_str(&format!("\n  - {field}: {}", p.message));
        if !p.hint.is_empty() {
            out.push_str(&format!("\n    hint: {}", p.hint));
        }
    }
    out
}

impl SpecError {
    fn one(field: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        SpecError {
            problems: vec![Problem {
                field: field.to_owned(),
                message: message.into(),
                hint: hint.into(),
            }],
        }
    }
}

/// A validated job: the scheduling envelope plus the task to run.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub priority: i32,
    pub max_attempts: u32,
    pub timeout: Duration,
    pub idempotency_key: Option<String>,
    pub task: Task,
}

/// A job ready for the queue: its own task and the children it fans out into.
#[derive(Debug, Clone)]
pub struct Plan {
    pub task: Task,
    pub children: Vec<Task>,
}

impl JobSpec {
    /// Parse and validate `job.toml` text. Relative paths resolve against `base_dir` (the
    /// directory of the job file). Checks that input paths exist.
    pub fn parse(text: &str, base_dir: &Path) -> Result<JobSpec, SpecError> {
        JobSpec::parse_in(text, base_dir, &default_home().join("models"))
    }

    /// Like [`JobSpec::parse`], resolving model names in `models_dir` (the node's).
    pub fn parse_in(text: &str, base_dir: &Path, models_dir: &Path) -> Result<JobSpec, SpecError> {
        JobSpec::parse_swarm(text, base_dir, models_dir, &[])
    }

    /// Like [`JobSpec::parse_in`], also accepting an infer model held only by peers
    /// (`remote`: their GGUF files, by file name and size). Such a job runs where the model is.
    pub fn parse_swarm(
        text: &str,
        base_dir: &Path,
        models_dir: &Path,
        remote: &[ModelRef],
    ) -> Result<JobSpec, SpecError> {
        let file = parse_file(text)?;
        file.validate_in(base_dir, models_dir, remote)
    }

    /// Expand the job into the tasks the queue stores, with collections in the default
    /// home (see [`JobSpec::plan_in`]).
    pub fn plan(&self) -> Result<Plan, SpecError> {
        self.plan_in(&default_home().join("collections"))
    }

    /// Expand the job into the tasks the queue stores. A directory or glob input becomes a
    /// parent with one child per file; an archive becomes a parent with one child per group
    /// of files that `collections` does not already hold.
    pub fn plan_in(&self, collections: &Path) -> Result<Plan, SpecError> {
        match &self.task {
            Task::Archive(a) => {
                let planned = archive::plan(a, collections).map_err(|e| {
                    SpecError::one(
                        "archive.input",
                        e.to_string(),
                        "point `input` at a readable directory of documents",
                    )
                })?;
                Ok(Plan {
                    task: self.task.clone(),
                    children: planned.children.into_iter().map(Task::EmbedDocs).collect(),
                })
            }
            Task::Chunk { input, params } => {
                let files = chunk::expand_input(input).map_err(|e| {
                    SpecError::one(
                        "chunk.input",
                        e.to_string(),
                        "point `input` at an existing file, directory or glob",
                    )
                })?;
                if input.is_file() {
                    return Ok(Plan {
                        task: Task::ChunkFile {
                            path: input.clone(),
                            params: *params,
                        },
                        children: Vec::new(),
                    });
                }
                if files.is_empty() {
                    return Err(SpecError::one(
                        "chunk.input",
                        format!("`{}` holds no files", input.display()),
                        "add documents to it or point `input` elsewhere",
                    ));
                }
                let children = files
                    .into_iter()
                    .map(|path| Task::ChunkFile {
                        path,
                        params: *params,
                    })
                    .collect();
                Ok(Plan {
                    task: self.task.clone(),
                    children,
                })
            }
            Task::ChunkFile { .. }
            | Task::ChunkInline { .. }
            | Task::Noop(_)
            | Task::Embed { .. }
            | Task::EmbedDocs(_)
            | Task::Infer(_)
            | Task::Pipeline(_) => Ok(Plan {
                task: self.task.clone(),
                children: Vec::new(),
            }),
        }
    }
}

/// `$MYCO_HOME`, else `~/.myco`.
fn default_home() -> PathBuf {
    std::env::var_os("MYCO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".myco")))
        .unwrap_or_else(|| PathBuf::from(".myco"))
}

fn parse_file(text: &str) -> Result<JobFile, SpecError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_problem(text, "", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        toml_problem(text, &path, e.inner())
    })
}

fn toml_problem(text: &str, field: &str, e: &toml::de::Error) -> SpecError {
    let message = e.message().trim().to_owned();
    let at = e
        .span()
        .map(|span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        })
        .unwrap_or_default();
    let hint = if message.contains("unknown field") {
        "remove the field or fix its spelling; see examples/*.toml for every field"
    } else if message.contains("missing field") {
        "add the field; `version = 1` and `kind` are required"
    } else if message.contains("invalid type") {
        "give the field a value of the expected type"
    } else if message.contains("unknown variant") {
        "use one of the listed values"
    } else {
        "fix the TOML syntax at the place shown"
    };
    SpecError::one(field, format!("{message}{at}"), hint)
}

impl JobFile {
    /// Check every field; report all problems at once.
    pub fn validate_in(
        self,
        base_dir: &Path,
        models_dir: &Path,
        remote: &[ModelRef],
    ) -> Result<JobSpec, SpecError> {
        let mut problems = Vec::new();
        let mut bad = |field: &str, message: String, hint: &str| {
            problems.push(Problem {
                field: field.to_owned(),
                message,
                hint: hint.to_owned(),
            })
        };
        if self.version != SPEC_VERSION {
            bad(
                "version",
                format!("unsupported version {}", self.version),
                "this myco reads `version = 1`",
            );
        }
        if !(-1000..=1000).contains(&self.priority) {
            bad(
                "priority",
                format!("{} is out of range", self.priority),
                "use a priority from -1000 to 1000 (higher runs first)",
            );
        }
        if !(1..=100).contains(&self.max_attempts) {
            bad(
                "max_attempts",
                format!("{} is out of range", self.max_attempts),
                "use 1 to 100 attempts",
            );
        }
        if self.timeout.is_zero() {
            bad(
                "timeout",
                "must be longer than zero".into(),
                "write a duration such as \"30s\" or \"10m\"",
            );
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > 256)
        {
            bad(
                "idempotency_key",
                "must be 1 to 256 bytes long".into(),
                "use a short stable name, e.g. \"archive-2026-11-22\"",
            );
        }
        let want = match self.kind {
            SpecKind::Chunk => "chunk",
            SpecKind::Noop => "noop",
            SpecKind::Embed => "embed",
            SpecKind::Archive => "archive",
            SpecKind::Infer => "infer",
            SpecKind::Pipeline => "pipeline",
        };
        let present = [
            ("chunk", self.chunk.is_some()),
            ("noop", self.noop.is_some()),
            ("embed", self.embed.is_some()),
            ("archive", self.archive.is_some()),
            ("infer", self.infer.is_some()),
            ("pipeline", self.pipeline.is_some()),
        ];
        for (other, _) in present.iter().filter(|(n, p)| *p && *n != want) {
            bad(
                other,
                format!("a `[{other}]` table does not belong in a `kind = \"{want}\"` job"),
                "remove it, or change `kind`",
            );
        }
        let infer_section = match self.kind {
            SpecKind::Pipeline => &self.pipeline,
            _ => &self.infer,
        };
        let task = match self.kind {
            SpecKind::Chunk => match &self.chunk {
                None => {
                    bad(
                        "chunk",
                        "missing `[chunk]` table".into(),
                        "add `[chunk]` with at least `input = \"path/to/docs\"`",
                    );
                    None
                }
                Some(c) => {
                    check_chunking(&mut bad, "chunk", c.max_tokens, c.overlap);
                    if c.tokenizer != "chars" {
                        bad(
                            "chunk.tokenizer",
                            format!("tokenizer `{}` is not supported", c.tokenizer),
                            "use `tokenizer = \"chars\"`",
                        );
                    }
                    let input = resolve(base_dir, &c.input);
                    if !input.exists() && !is_glob(&c.input) {
                        bad(
                            "chunk.input",
                            format!("`{}` does not exist", input.display()),
                            "point `input` at an existing file, directory or glob (relative paths start at the job file's directory)",
                        );
                    } else if input.is_file() && chunk::Format::from_path(&input).is_none() {
                        bad(
                            "chunk.input",
                            format!("`{}` is not a supported document", input.display()),
                            &format!("myco chunks {}", chunk::Format::SUPPORTED),
                        );
                    }
                    Some(Task::Chunk {
                        input,
                        params: ChunkParams {
                            max_tokens: c.max_tokens,
                            overlap: c.overlap,
                        },
                    })
                }
            },
            SpecKind::Embed => match &self.embed {
                None => {
                    bad(
                        "embed",
                        "missing `[embed]` table".into(),
                        "add `[embed]` with `texts = [\"...\"]`",
                    );
                    None
                }
                Some(e) => {
                    let mut texts = e.texts.clone();
                    let mut links = Vec::new();
                    match &e.chunks {
                        Some(_) if !texts.is_empty() => bad(
                            "embed.chunks",
                            "give `texts` or `chunks`, not both".into(),
                            "remove one of them",
                        ),
                        Some(path) => match read_chunks(&resolve(base_dir, path)) {
                            Ok(chunks) => {
                                for c in chunks {
                                    links.push(crate::task::ChunkLink {
                                        source: c.source,
                                        index: c.index,
                                        start: c.start,
                                        end: c.end,
                                    });
                                    texts.push(c.text);
                                }
                            }
                            Err(why) => bad(
                                "embed.chunks",
                                why,
                                "point `chunks` at a chunk job's result: `myco run chunk.toml --out chunks.jsonl`",
                            ),
                        },
                        None => {}
                    }
                    if texts.is_empty() || texts.len() > 100_000 {
                        bad(
                            if e.chunks.is_some() {
                                "embed.chunks"
                            } else {
                                "embed.texts"
                            },
                            format!("{} texts", texts.len()),
                            "give 1 to 100000 texts per job; submit more jobs for more",
                        );
                    }
                    if e.batch_tokens == 0 {
                        bad(
                            "embed.batch_tokens",
                            "must be at least 1".into(),
                            "leave it out for the default (8192)",
                        );
                    }
                    let dir = model_dir(&mut bad, "embed.model", &e.model, base_dir, models_dir);
                    Some(Task::Embed {
                        model: ModelRef::at(&dir),
                        texts,
                        batch_tokens: e.batch_tokens,
                        links,
                    })
                }
            },
            SpecKind::Archive => match &self.archive {
                None => {
                    bad(
                        "archive",
                        "missing `[archive]` table".into(),
                        "add `[archive]` with `input = \"docs/\"` and `collection = \"NAME\"`",
                    );
                    None
                }
                Some(a) => {
                    check_chunking(&mut bad, "archive", a.max_tokens, a.overlap);
                    if !crate::collection::valid_name(&a.collection) {
                        bad(
                            "archive.collection",
                            format!("`{}` is not a valid collection name", a.collection),
                            "use letters, digits, `-`, `_` and `.` (not first), at most 128",
                        );
                    }
                    if a.batch_tokens == 0 {
                        bad(
                            "archive.batch_tokens",
                            "must be at least 1".into(),
                            "leave it out for the default (8192)",
                        );
                    }
                    let input = resolve(base_dir, &a.input);
                    if !input.exists() && !is_glob(&a.input) {
                        bad(
                            "archive.input",
                            format!("`{}` does not exist", input.display()),
                            "point `input` at the archive's directory (relative paths start at the job file's directory)",
                        );
                    }
                    let dir = model_dir(&mut bad, "archive.model", &a.model, base_dir, models_dir);
                    Some(Task::Archive(ArchiveTask {
                        input,
                        collection: a.collection.clone(),
                        model: ModelRef::at(&dir),
                        params: ChunkParams {
                            max_tokens: a.max_tokens,
                            overlap: a.overlap,
                        },
                        batch_tokens: a.batch_tokens,
                    }))
                }
            },
            SpecKind::Infer | SpecKind::Pipeline => match infer_section {
                None => {
                    bad(
                        want,
                        format!("missing `[{want}]` table"),
                        &format!(
                            "add `[{want}]` with `model = \"file.gguf\"` and `prompt = \"...\"`"
                        ),
                    );
                    None
                }
                Some(i) => {
                    let prompt = match (&i.prompt, &i.messages) {
                        (Some(p), None) => Some(crate::infer::Prompt::Text(p.clone())),
                        (None, Some(m)) if !m.is_empty() => {
                            Some(crate::infer::Prompt::Chat(m.clone()))
                        }
                        _ => {
                            bad(
                                &format!("{want}.prompt"),
                                "give `prompt` or `messages` (not both, not neither)".into(),
                                "e.g. prompt = \"Once upon a time\", or messages = [{ role = \"user\", content = \"hi\" }]",
                            );
                            None
                        }
                    };
                    if i.max_tokens == 0 || i.max_tokens > 1_000_000 {
                        bad(
                            &format!("{want}.max_tokens"),
                            format!("{} is out of range", i.max_tokens),
                            "use 1 to 1000000",
                        );
                    }
                    if i.n_ctx < 8 {
                        bad(
                            &format!("{want}.n_ctx"),
                            format!("{} is too small", i.n_ctx),
                            "use at least 8 tokens of context (the default is 4096)",
                        );
                    }
                    let by_name = !(i.model.contains('/') || i.model.starts_with('.'));
                    let bare = i.model.strip_suffix(".gguf").unwrap_or(&i.model);
                    let path = if by_name {
                        let exact = models_dir.join(&i.model);
                        let with_ext = models_dir.join(format!("{bare}.gguf"));
                        if !exact.is_file() && with_ext.is_file() {
                            with_ext
                        } else {
                            exact
                        }
                    } else {
                        resolve(base_dir, Path::new(&i.model))
                    };
                    // Held here, or else by a peer (then the job waits for that peer).
                    let model = if path.is_file() {
                        Some(ModelRef::at(
                            &std::path::absolute(&path).unwrap_or_else(|_| path.clone()),
                        ))
                    } else if by_name {
                        remote
                            .iter()
                            .find(|m| m.name == i.model || m.name == format!("{bare}.gguf"))
                            .cloned()
                    } else {
                        None
                    };
                    if model.is_none() {
                        bad(
                            &format!("{want}.model"),
                            format!(
                                "no model file at {}, and no peer holds one of that name",
                                path.display()
                            ),
                            "give the path of a GGUF file, or put it in ~/.myco/models on a node of the swarm and give its name",
                        );
                    }
                    let d = crate::infer::InferParams::default();
                    prompt.zip(model).map(|(prompt, model)| {
                        let task = crate::infer::InferTask {
                            gpu: i.gpu,
                            model,
                            prompt,
                            params: crate::infer::InferParams {
                                max_tokens: i.max_tokens,
                                temperature: i.temperature.unwrap_or(d.temperature),
                                top_k: i.top_k.unwrap_or(d.top_k),
                                top_p: i.top_p.unwrap_or(d.top_p),
                                min_p: i.min_p.unwrap_or(d.min_p),
                                repeat_penalty: i.repeat_penalty.unwrap_or(d.repeat_penalty),
                                seed: i.seed,
                                stop: i.stop.clone(),
                                n_ctx: i.n_ctx,
                                threads: i.threads,
                            },
                        };
                        if self.kind == SpecKind::Pipeline {
                            Task::Pipeline(task)
                        } else {
                            Task::Infer(task)
                        }
                    })
                }
            },
            SpecKind::Noop => {
                let n = self.noop.clone().unwrap_or_default();
                Some(Task::Noop(NoopTask {
                    payload: n.payload,
                    sleep_ms: n.sleep_ms,
                    fail_attempts: n.fail_attempts,
                    fail_mode: n.fail_mode,
                }))
            }
        };
        match task {
            Some(task) if problems.is_empty() => Ok(JobSpec {
                priority: self.priority,
                max_attempts: self.max_attempts,
                timeout: self.timeout,
                // An archive is keyed by its collection unless it says otherwise: submitting
                // it again while it runs resumes that run (see `Task::joins`).
                idempotency_key: self.idempotency_key.or_else(|| match &task {
                    Task::Archive(a) => Some(format!("archive:{}", a.collection)),
                    _ => None,
                }),
                task,
            }),
            _ => Err(SpecError { problems }),
        }
    }
}

/// The chunks in a chunk job's result file (JSON Lines of `{source, index, start, end,
/// text}`).
fn read_chunks(path: &Path) -> Result<Vec<chunk::Chunk>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| format!("{} line {}: not a chunk: {e}", path.display(), i + 1))
        })
        .collect()
}

fn check_chunking(
    bad: &mut impl FnMut(&str, String, &str),
    table: &str,
    max_tokens: usize,
    overlap: usize,
) {
    if max_tokens == 0 || max_tokens > 1_000_000 {
        bad(
            &format!("{table}.max_tokens"),
            format!("{max_tokens} is out of range"),
            "use 1 to 1000000 tokens per chunk",
        );
    }
    if overlap >= max_tokens.max(1) {
        bad(
            &format!("{table}.overlap"),
            format!("{overlap} must be smaller than max_tokens ({max_tokens})"),
            "lower `overlap`, e.g. to an eighth of `max_tokens`",
        );
    }
}

/// The directory of the embedding model `name`: a path if it looks like one, else a name
/// under `models_dir`. Reports a missing `model.onnx`.
fn model_dir(
    bad: &mut impl FnMut(&str, String, &str),
    field: &str,
    name: &str,
    base_dir: &Path,
    models_dir: &Path,
) -> PathBuf {
    let dir = if name.contains('/') || name.starts_with('.') {
        resolve(base_dir, Path::new(name))
    } else {
        models_dir.join(name)
    };
    if !dir.join("model.onnx").is_file() {
        bad(
            field,
            format!("no embedding model at {} (no model.onnx)", dir.display()),
            "run ./setup.sh for the default all-MiniLM-L6-v2, or give the path of a directory with model.onnx and its tokenizer files",
        );
    }
    dir
}

fn is_glob(p: &Path) -> bool {
    p.to_string_lossy().contains(['*', '?', '['])
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        match JobSpec::parse(text, Path::new(env!("CARGO_MANIFEST_DIR"))) {
            Ok(spec) => panic!("expected an error, got {spec:?}"),
            Err(e) => e.problems,
        }
    }

    #[test]
    fn noop_parses_with_defaults() {
        let spec = JobSpec::parse("version = 1\nkind = \"noop\"\n", Path::new("/")).unwrap();
        assert_eq!(spec.max_attempts, 3);
        assert_eq!(spec.priority, 0);
        assert!(matches!(spec.task, Task::Noop(_)));
    }

    #[test]
    fn bad_toml_names_the_line() {
        let p = problems("version = 1\nkind = \"noop\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].message.contains("line 2"), "{p:?}");
    }

    #[test]
    fn unknown_field_is_named() {
        let p =
            problems("version = 1\nkind = \"chunk\"\n[chunk]\ninput = \"src\"\nmax_tokenz = 3\n");
        assert_eq!(p[0].field, "chunk.max_tokenz");
        assert!(p[0].message.contains("unknown field"), "{p:?}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let p = problems(
            "version = 1\nkind = \"chunk\"\n[chunk]\ninput = \"src\"\nmax_tokens = \"big\"\n",
        );
        assert_eq!(p[0].field, "chunk.max_tokens", "{p:?}");
        assert!(p[0].hint.contains("type"));
    }

    #[test]
    fn every_problem_is_reported() {
        let p = problems(
            "version = 2\nkind = \"chunk\"\nmax_attempts = 0\n[chunk]\ninput = \"nope/\"\nmax_tokens = 10\noverlap = 10\n",
        );
        let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["version", "max_attempts", "chunk.overlap", "chunk.input"]
        );
    }

    #[test]
    fn missing_section_and_unknown_kind() {
        let p = problems("version = 1\nkind = \"chunk\"\n");
        assert_eq!(p[0].field, "chunk");
        let p = problems("version = 1\nkind = \"embedd\"\n");
        assert_eq!(p[0].field, "kind");
        assert!(
            p[0].message.contains("chunk"),
            "lists the valid kinds: {p:?}"
        );
    }
}
