//! Batches: many requests of one endpoint (OpenAI's Batch API input lines, or requests a
//! map job makes from files) as one parent job with a child per request, and the join that
//! writes their answers, in input order, as OpenAI's batch output and error files.
//!
//! A line is read and checked by the code the API reads a request with
//! ([`crate::llm::openai`]), so it becomes the same infer or embed task, and its answer the
//! same body. Every bad line is named by its number before anything is queued.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::JobError;
use crate::files::FileStore;
use crate::llm::infer::{Generation, InferTask};
use crate::llm::openai::embeddings::{self, Encoding};
use crate::llm::openai::request::{self, Converted};
use crate::llm::openai::response::{Flavor, Shape, completion};
use crate::model::{self, ModelRef};
use crate::run::{Child, ChildResults, Outcome};
use crate::spec::env::SpecEnv;
use crate::spec::problem::Problems;
use crate::task::Task;
pub use crate::task::{BatchLine, BatchTask, Endpoint, LineShape};

/// The most requests a batch holds (OpenAI's limit).
pub const MAX_LINES: usize = 50_000;

/// A line that cannot run, as OpenAI's batch `errors` name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1 for the first line; 0 for the file as a whole.
    pub line: usize,
    pub code: &'static str,
    pub param: Option<String>,
    pub message: String,
}

impl LineError {
    fn new(line: usize, code: &'static str, param: Option<&str>, message: String) -> LineError {
        LineError {
            line,
            code,
            param: param.map(str::to_owned),
            message,
        }
    }
}

/// One input line as OpenAI's batch file has it.
#[derive(Debug, Deserialize)]
struct InputLine {
    #[serde(default)]
    custom_id: Option<serde_json::Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    body: Option<serde_json::Value>,
}

/// The first request of a batch input file (its first line that is not blank), as JSON.
pub fn first_line(bytes: &[u8]) -> Option<serde_json::Value> {
    let first = bytes
        .split(|b| *b == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))?;
    serde_json::from_slice(first).ok()
}

/// The most line errors told: enough to fix a file, not a flood.
const MAX_ERRORS: usize = 100;

/// Read a batch input file's lines (JSON Lines; blank lines are skipped) into requests of
/// `endpoint`, models resolved as a job file's are (`env`); Err: every bad line (up to
/// 100), and nothing is run.
pub fn read_lines(
    bytes: &[u8],
    endpoint: Endpoint,
    env: &SpecEnv<'_>,
) -> Result<Vec<BatchLine>, Vec<LineError>> {
    let mut errors = Vec::new();
    let mut lines = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut models = Models::default();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        if errors.len() >= MAX_ERRORS {
            break;
        }
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if lines.len() + errors.len() >= MAX_LINES {
            errors.push(LineError::new(
                0,
                "too_many_tasks",
                None,
                format!("a batch holds at most {MAX_LINES} requests; split the file"),
            ));
            break;
        }
        match read_line(raw, n, endpoint, env, &mut seen, &mut models) {
            Ok(line) => lines.push(line),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() && lines.is_empty() {
        errors.push(LineError::new(
            0,
            "empty_file",
            None,
            "the file holds no requests: one JSON object a line, {\"custom_id\", \"method\": \"POST\", \"url\", \"body\"}".into(),
        ));
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

/// An LLM resolved with its fitted context, or (the field at fault, why not).
type Llm = Result<(ModelRef, u32), (String, String)>;

/// Models resolved once each, however many lines name them.
#[derive(Default)]
struct Models {
    /// By (name, the context asked for, the default context).
    llm: HashMap<(String, Option<u32>, u32), Llm>,
    embedding: HashMap<String, Result<ModelRef, String>>,
}

fn read_line(
    raw: &[u8],
    n: usize,
    endpoint: Endpoint,
    env: &SpecEnv<'_>,
    seen: &mut HashSet<String>,
    models: &mut Models,
) -> Result<BatchLine, LineError> {
    let line: InputLine = serde_json::from_slice(raw).map_err(|e| {
        LineError::new(
            n,
            "invalid_json_line",
            None,
            format!("line {n} is not a JSON object of {{\"custom_id\", \"method\", \"url\", \"body\"}}: {e}"),
        )
    })?;
    let missing = |param: &str| {
        LineError::new(
            n,
            "missing_required_parameter",
            Some(param),
            format!("Missing required parameter: '{param}'."),
        )
    };
    let custom_id = match line.custom_id {
        None | Some(serde_json::Value::Null) => return Err(missing("custom_id")),
        Some(serde_json::Value::String(s)) if !s.is_empty() => s,
        Some(_) => {
            return Err(LineError::new(
                n,
                "invalid_request",
                Some("custom_id"),
                "custom_id is a non-empty string".into(),
            ));
        }
    };
    if !seen.insert(custom_id.clone()) {
        return Err(LineError::new(
            n,
            "duplicate_custom_id",
            Some("custom_id"),
            format!(
                "custom_id `{custom_id}` is on an earlier line too; each request needs its own"
            ),
        ));
    }
    match line.method.as_deref() {
        None => return Err(missing("method")),
        Some("POST") => {}
        Some(other) => {
            return Err(LineError::new(
                n,
                "invalid_request",
                Some("method"),
                format!("method `{other}`: a batch's requests are POST"),
            ));
        }
    }
    match line.url.as_deref() {
        None => return Err(missing("url")),
        Some(url) if url == endpoint.url() => {}
        Some(url) => {
            return Err(LineError::new(
                n,
                "url_mismatch",
                Some("url"),
                format!(
                    "url `{url}` is not the batch's endpoint `{}`; a batch calls one endpoint",
                    endpoint.url()
                ),
            ));
        }
    }
    let Some(body) = line.body else {
        return Err(missing("body"));
    };
    let body_bytes = serde_json::to_vec(&body).unwrap_or_default();
    let bad = |param: String, message: String| {
        LineError::new(
            n,
            "invalid_request",
            Some(&format!("body.{param}")),
            message,
        )
    };
    match endpoint {
        Endpoint::Chat | Endpoint::Completions => {
            let flavor = if endpoint == Endpoint::Chat {
                Flavor::Chat
            } else {
                Flavor::Text
            };
            let req = request::parse(&body_bytes, flavor).map_err(|m| bad("".into(), m))?;
            let Converted {
                model: name,
                prompt,
                mut params,
                n_ctx,
                shape,
                stream,
            } = request::convert(req, flavor).map_err(|r| bad(r.param, r.message))?;
            if stream {
                return Err(LineError::new(
                    n,
                    "invalid_request",
                    Some("body.stream"),
                    "a batch's answers are written to its output file: leave `stream` out".into(),
                ));
            }
            let key = (name.clone(), n_ctx, params.n_ctx);
            let found = models
                .llm
                .entry(key)
                .or_insert_with(|| llm_model(&name, n_ctx, params.n_ctx, env));
            let (model, fitted) = found.clone().map_err(|(code, message)| {
                let code = if code == "model" {
                    "model_not_found"
                } else {
                    "invalid_request"
                };
                LineError::new(n, code, Some("body.model"), message)
            })?;
            params.n_ctx = fitted;
            Ok(BatchLine {
                custom_id,
                model: name,
                shape: LineShape {
                    tools: shape.tools,
                    logprobs: shape.logprobs,
                    ..LineShape::default()
                },
                request: Some(Box::new(Task::Infer(InferTask {
                    gpu: false,
                    model,
                    prompt,
                    params,
                }))),
            })
        }
        Endpoint::Embeddings => {
            let req = embeddings::parse(&body_bytes).map_err(|m| bad("".into(), m))?;
            let t = embeddings::texts(req).map_err(|r| bad(r.param, r.message))?;
            let found = models
                .embedding
                .entry(t.model.clone())
                .or_insert_with(|| embedding_model(&t.model, env));
            let model = found
                .clone()
                .map_err(|m| LineError::new(n, "model_not_found", Some("body.model"), m))?;
            Ok(BatchLine {
                custom_id,
                model: t.model,
                shape: LineShape {
                    base64: t.encoding == Encoding::Base64,
                    dimensions: t.dimensions.and_then(|d| u32::try_from(d).ok()),
                    tokens: u32::try_from(embeddings::estimate_tokens(&t.texts))
                        .unwrap_or(u32::MAX),
                    ..LineShape::default()
                },
                request: Some(Box::new(Task::Embed {
                    model,
                    texts: t.texts,
                    batch_tokens: crate::kind::embed::DEFAULT_BATCH_TOKENS,
                    links: Vec::new(),
                })),
            })
        }
    }
}

/// An LLM named by a line, as `[infer]`'s `model` resolves (a peer's model too), with the
/// context fitted to it; Err: (`model` or `n_ctx`, why).
fn llm_model(name: &str, asked: Option<u32>, default: u32, env: &SpecEnv<'_>) -> Llm {
    let mut p = Problems::default();
    if model::is_path(name) && env.readable("model", Path::new(name), &mut p).is_none() {
        return Err(("model".into(), first_message(p)));
    }
    let m = model::resolve_llm(name, env.base_dir, env.models_dir, env.remote)
        .map_err(|why| ("model".to_owned(), format!("{why}; {}", why.hint())))?;
    if model::is_path(name) && !env.may_read("model", &m.path, &mut p) {
        return Err(("model".into(), first_message(p)));
    }
    let mut n_ctx = default;
    if m.path.is_file() {
        n_ctx = model::fit_context_of(&m.path, asked, default).map_err(|e| match e {
            model::FitError::Context(e) => ("n_ctx".to_owned(), e.to_string()),
            model::FitError::Header(e) => ("model".to_owned(), e.to_string()),
        })?;
    }
    Ok((m, n_ctx))
}

fn embedding_model(name: &str, env: &SpecEnv<'_>) -> Result<ModelRef, String> {
    let mut p = Problems::default();
    if model::is_path(name) && env.readable("model", Path::new(name), &mut p).is_none() {
        return Err(first_message(p));
    }
    model::resolve_embedding(name, env.base_dir, env.models_dir)
        .map_err(|why| format!("{why}; {}", why.hint()))
}

fn first_message(p: Problems) -> String {
    p.into_vec()
        .into_iter()
        .next()
        .map(|p| p.message)
        .unwrap_or_default()
}

/// What a batch's join wrote, as its parent's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// The ids of batch `id`'s output and error files.
pub fn output_ids(id: &str) -> (String, String) {
    (format!("file-{id}-output"), format!("file-{id}-errors"))
}

/// Write a batch's output and error files from its children (in input order), into the
/// node's file store: each line answered as the API answers the same request; a line that
/// failed with the error the API gives; a line never run (cancelled, or past the window)
/// with `batch_cancelled` or `batch_expired`. A join that runs again (its node killed
/// mid-join) writes the same files again.
pub fn join(
    task: &BatchTask,
    home: &Path,
    children: Option<&ChildResults<'_>>,
) -> Result<Vec<u8>, JobError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut written = Written {
        total: task.lines.len() as u64,
        ..Written::default()
    };
    let expired = crate::files::unix_now() >= task.expires_at;
    let mut index = 0usize;
    if let Some(children) = children {
        children(&mut |child: Child<'_>| {
            let Some(line) = task.lines.get(index) else {
                return Err(JobError::fatal(format!(
                    "batch {} has more children than its {} lines",
                    task.id,
                    task.lines.len()
                )));
            };
            index += 1;
            let (ok, text) = answer(task, line, child, expired)?;
            if ok {
                written.completed += 1;
                out.extend_from_slice(text.as_bytes());
                out.push(b'\n');
            } else {
                written.failed += 1;
                errors.extend_from_slice(text.as_bytes());
                errors.push(b'\n');
            }
            Ok(())
        })?;
    }
    let store = FileStore::of_home(home);
    let (out_id, err_id) = output_ids(&task.id);
    let put = |id: &str, suffix: &str, bytes: &[u8]| {
        store
            .put(
                id,
                &format!("{}_{suffix}.jsonl", task.id),
                "batch_output",
                bytes,
            )
            .map_err(|e| {
                JobError::retryable(format!("writing batch {}'s {suffix} file: {e}", task.id))
            })
    };
    if written.completed > 0 {
        put(&out_id, "output", &out)?;
        written.output_file_id = Some(out_id);
    }
    if written.failed > 0 {
        put(&err_id, "errors", &errors)?;
        written.error_file_id = Some(err_id);
    }
    let mut result = serde_json::to_vec(&written)
        .map_err(|e| JobError::fatal(format!("encoding the result: {e}")))?;
    result.push(b'\n');
    Ok(result)
}

/// One line's output: (a success, its JSON line).
fn answer(
    task: &BatchTask,
    line: &BatchLine,
    child: Child<'_>,
    expired: bool,
) -> Result<(bool, String), JobError> {
    let head = |response: serde_json::Value, error: serde_json::Value| {
        json!({
            "id": format!("batch_req_{}", child.id),
            "custom_id": line.custom_id,
            "response": response,
            "error": error,
        })
        .to_string()
    };
    let request_id = format!("req_{}", child.id);
    let failed = |status: u16, kind: &str, code: &str, message: &str| {
        head(
            json!({
                "status_code": status, "request_id": request_id,
                "body": { "error": { "message": message, "type": kind, "param": null, "code": code } },
            }),
            serde_json::Value::Null,
        )
    };
    match child.outcome {
        Outcome::Done(result) => {
            let first = result
                .split(|b| *b == b'\n')
                .find(|l| !l.is_empty())
                .unwrap_or_default();
            let damaged = |e: serde_json::Error| {
                JobError::fatal(format!("line {}'s result is damaged: {e}", line.custom_id))
            };
            let body = match task.endpoint {
                Endpoint::Chat | Endpoint::Completions => {
                    let g: Generation = serde_json::from_slice(first).map_err(damaged)?;
                    let flavor = if task.endpoint == Endpoint::Chat {
                        Flavor::Chat
                    } else {
                        Flavor::Text
                    };
                    let shape = Shape {
                        tools: line.shape.tools,
                        logprobs: line.shape.logprobs,
                    };
                    completion(flavor, child.id, &line.model, task.created_at, &g, shape)
                }
                Endpoint::Embeddings => {
                    let vectors = embed_vectors(result).map_err(damaged)?;
                    let encoding = if line.shape.base64 {
                        Encoding::Base64
                    } else {
                        Encoding::Float
                    };
                    match embeddings::answer(
                        &line.model,
                        line.shape.tokens as usize,
                        vectors,
                        encoding,
                        line.shape.dimensions.map(|d| d as usize),
                    ) {
                        Ok(body) => body,
                        Err(r) => {
                            return Ok((
                                false,
                                failed(400, "invalid_request_error", "invalid_value", &r.message),
                            ));
                        }
                    }
                }
            };
            Ok((
                true,
                head(
                    json!({ "status_code": 200, "request_id": request_id, "body": body }),
                    serde_json::Value::Null,
                ),
            ))
        }
        Outcome::Failed { message, fatal } => Ok((
            false,
            if fatal {
                failed(400, "invalid_request_error", "invalid_request", message)
            } else {
                failed(500, "server_error", "failed", message)
            },
        )),
        Outcome::Cancelled => {
            let (code, message) = if expired {
                (
                    "batch_expired",
                    "This request could not be executed before the completion window expired.",
                )
            } else {
                (
                    "batch_cancelled",
                    "This request was cancelled with its batch.",
                )
            };
            Ok((
                false,
                head(
                    serde_json::Value::Null,
                    json!({ "code": code, "message": message }),
                ),
            ))
        }
    }
}

/// The vectors of an embed task's result (one JSON line each: `{"vector": [...]}` or the
/// like, in order).
fn embed_vectors(result: &[u8]) -> Result<Vec<Vec<f32>>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Line {
        vector: Vec<f32>,
    }
    result
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice::<Line>(l).map(|l| l.vector))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::cell::OnceCell;

    use super::*;
    use crate::access::Access;
    use crate::llm::gguf::fixtures::TinyLlama;
    use crate::run::Outcome;

    fn with_env<T>(f: impl FnOnce(&SpecEnv<'_>) -> T) -> T {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        TinyLlama::default()
            .write(&models.join("tiny.gguf"), true)
            .unwrap();
        let refused = OnceCell::new();
        let env = SpecEnv {
            base_dir: dir.path(),
            models_dir: &models,
            remote: &[],
            access: &Access::Any,
            refused: &refused,
        };
        f(&env)
    }

    fn chat(id: &str, content: &str) -> String {
        serde_json::json!({
            "custom_id": id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "tiny.gguf", "messages": [{"role": "user", "content": content}], "max_tokens": 4},
        })
        .to_string()
    }

    #[test]
    fn every_bad_line_is_named_by_its_number() {
        let file = [
            chat("a", "hi"),
            "{not json".into(),
            chat("a", "again"),
            r#"{"custom_id": "c", "method": "GET", "url": "/v1/chat/completions", "body": {}}"#
                .into(),
            r#"{"custom_id": "d", "method": "POST", "url": "/v1/embeddings", "body": {}}"#.into(),
            r#"{"method": "POST", "url": "/v1/chat/completions", "body": {}}"#.into(),
            chat("g", "hi").replace("tiny.gguf", "nope.gguf"),
            chat("h", "hi").replace("\"max_tokens\":4", "\"max_tokens\":4,\"stream\":true"),
            chat("i", "hi").replace("\"max_tokens\":4", "\"max_tokens\":0"),
            String::new(),
        ]
        .join("\n");
        let errors = with_env(|env| read_lines(file.as_bytes(), Endpoint::Chat, env)).unwrap_err();
        let got: Vec<(usize, &str, Option<&str>)> = errors
            .iter()
            .map(|e| (e.line, e.code, e.param.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (2, "invalid_json_line", None),
                (3, "duplicate_custom_id", Some("custom_id")),
                (4, "invalid_request", Some("method")),
                (5, "url_mismatch", Some("url")),
                (6, "missing_required_parameter", Some("custom_id")),
                (7, "model_not_found", Some("body.model")),
                (8, "invalid_request", Some("body.stream")),
                (9, "invalid_request", Some("body.max_tokens")),
            ],
            "{errors:#?}"
        );
        let empty = with_env(|env| read_lines(b"\n\n", Endpoint::Chat, env)).unwrap_err();
        assert_eq!(empty[0].code, "empty_file");
    }

    #[test]
    fn lines_become_the_requests_the_api_makes() {
        let file = format!("{}\n{}\n", chat("first", "hello"), chat("second", "bye"));
        let lines = with_env(|env| read_lines(file.as_bytes(), Endpoint::Chat, env)).unwrap();
        assert_eq!(lines.len(), 2);
        let Some(Task::Infer(t)) = lines[0].request.as_deref() else {
            panic!("{:?}", lines[0].request)
        };
        assert_eq!(t.model.name, "tiny.gguf");
        assert_eq!(t.params.max_tokens, 4);
        let task = Task::Batch(BatchTask {
            id: "batch_t".into(),
            endpoint: Endpoint::Chat,
            lines,
            created_at: 1,
            expires_at: u64::MAX,
        });
        let Task::Batch(b) = &task else { panic!() };
        assert_eq!(b.lines[1].custom_id, "second");
    }

    #[test]
    fn the_join_writes_answers_in_input_order_and_failures_apart() {
        let home = tempfile::tempdir().unwrap();
        let line = |id: &str| BatchLine {
            custom_id: id.into(),
            model: "tiny".into(),
            shape: LineShape::default(),
            request: None,
        };
        let task = BatchTask {
            id: "batch_j".into(),
            endpoint: Endpoint::Chat,
            lines: vec![line("one"), line("two"), line("three"), line("four")],
            created_at: 5,
            expires_at: u64::MAX,
        };
        let g = |text: &str| {
            let mut v = serde_json::to_vec(&Generation {
                text: text.into(),
                tokens: vec![1, 2],
                prompt_tokens: 3,
                cached_tokens: 0,
                completion_tokens: 2,
                finish_reason: crate::llm::infer::Finish::Length,
                prompt_ms: 1.0,
                generation_ms: 1.0,
                stages: Vec::new(),
                replaced: Vec::new(),
                tool_calls: Vec::new(),
                logprobs: None,
            })
            .unwrap();
            v.push(b'\n');
            v
        };
        let (a, d) = (g("first answer"), g("fourth answer"));
        let visit = |f: &mut dyn FnMut(Child<'_>) -> Result<(), JobError>| {
            f(Child {
                id: "01A",
                outcome: Outcome::Done(&a),
            })?;
            f(Child {
                id: "01B",
                outcome: Outcome::Failed {
                    message: "the prompt is too long",
                    fatal: true,
                },
            })?;
            f(Child {
                id: "01C",
                outcome: Outcome::Cancelled,
            })?;
            f(Child {
                id: "01D",
                outcome: Outcome::Done(&d),
            })
        };
        let result = join(&task, home.path(), Some(&visit)).unwrap();
        let w: Written = serde_json::from_slice(&result).unwrap();
        assert_eq!((w.total, w.completed, w.failed), (4, 2, 2));
        let store = FileStore::of_home(home.path());
        let read = |id: &Option<String>| -> Vec<serde_json::Value> {
            let path = store.path(id.as_deref().unwrap()).unwrap().unwrap();
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let out = read(&w.output_file_id);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["custom_id"], "one");
        assert_eq!(out[0]["response"]["status_code"], 200);
        assert_eq!(
            out[0]["response"]["body"]["choices"][0]["message"]["content"],
            "first answer"
        );
        assert_eq!(out[0]["response"]["body"]["object"], "chat.completion");
        assert_eq!(out[1]["custom_id"], "four");
        let errs = read(&w.error_file_id);
        assert_eq!(errs[0]["custom_id"], "two");
        assert_eq!(errs[0]["response"]["status_code"], 400);
        assert_eq!(
            errs[0]["response"]["body"]["error"]["message"],
            "the prompt is too long"
        );
        assert_eq!(errs[1]["custom_id"], "three");
        assert_eq!(errs[1]["error"]["code"], "batch_cancelled");
        assert!(errs[1]["response"].is_null());
    }
}
