//! The `batch` kind: many LLM or embedding requests as one job, a child each, joined into
//! OpenAI's batch output and error files (see [`crate::batch`]). Its `[batch]` section reads
//! an OpenAI batch input file (`input`), or makes the requests from files (`files`, a
//! `prompt` with `{text}` and `{path}`: a map over an archive); the API's `/v1/batches`
//! makes the same task from an uploaded file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::traits::{ExecutorKind, Gpu, KindTraits, Lane};
use crate::batch::{self, BatchTask, Endpoint, LineError};
use crate::engines::{Engines, misrouted};
use crate::error::JobError;
use crate::run::RunContext;
use crate::spec::env::SpecEnv;
use crate::spec::plan::{Checked, Plan};
use crate::spec::problem::{Problems, SpecError};
use crate::task::Task;

pub const TRAITS: KindTraits = KindTraits {
    lane: Lane::Batch,
    streams: false,
    // The parent writes the output files from its children's answers...
    joins: true,
    // ...even when every line failed (the error file says why each did)...
    joins_failed: true,
    // ...on its owner, whose file store holds them.
    owner_only: true,
    gpu: Gpu::Never,
    executor: ExecutorKind::Cpu,
};

/// `[batch]`: an OpenAI batch input file, or a map of a prompt over files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// An OpenAI batch input file (JSON Lines of `{custom_id, method, url, body}`),
    /// relative to this file.
    #[serde(default)]
    pub input: Option<PathBuf>,
    /// The endpoint the requests call (default: the first line's `url`; for a map,
    /// `/v1/chat/completions`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The map form: files (a directory, a file or a glob, relative to this file), a
    /// request each, whose `custom_id` is the file's path.
    #[serde(default)]
    pub files: Option<PathBuf>,
    /// The map form: the user message (or, for `/v1/completions`, the prompt), in which
    /// `{text}` stands for the file's text and `{path}` for its path.
    #[serde(default)]
    pub prompt: Option<String>,
    /// The map form: a system message before it.
    #[serde(default)]
    pub system: Option<String>,
    /// The map form: the model and the request's settings, as in a request's body.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
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
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<Vec<String>>,
    #[serde(default)]
    pub n_ctx: Option<u32>,
    #[serde(default)]
    pub chat_template: Option<String>,
    /// How long the batch may take (OpenAI's `completion_window`): lines not finished by
    /// then are not run. Default 24 h.
    #[serde(default, with = "humantime_serde")]
    pub completion_window: Option<std::time::Duration>,
}

/// The default completion window (OpenAI's only one).
pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

pub fn check(section: Option<&Section>, env: &SpecEnv<'_>, p: &mut Problems) -> Option<Checked> {
    let Some(s) = section else {
        p.bad(
            "batch",
            "missing `[batch]` table",
            "add `[batch]` with `input = \"requests.jsonl\"`, or `files = \"docs/**/*.md\"`, `prompt = \"... {text}\"` and `model = \"...\"`",
        );
        return None;
    };
    let endpoint = match s.endpoint.as_deref() {
        None => None,
        Some(url) => match Endpoint::parse(url) {
            Some(e) => Some(e),
            None => {
                p.bad(
                    "batch.endpoint",
                    format!("`{url}` is not an endpoint a batch calls"),
                    format!("use one of {}", Endpoint::names()),
                );
                return None;
            }
        },
    };
    let window = s.completion_window.unwrap_or(WINDOW);
    let (bytes, endpoint, field) = match (&s.input, &s.files) {
        (Some(input), None) => {
            let path = env.readable("batch.input", input, p)?;
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    p.bad(
                        "batch.input",
                        format!("cannot read `{}`: {e}", path.display()),
                        "point `input` at an OpenAI batch input file (JSON Lines)",
                    );
                    return None;
                }
            };
            let endpoint = endpoint
                .or_else(|| first_url(&bytes))
                .unwrap_or(Endpoint::Chat);
            (bytes, endpoint, "batch.input")
        }
        (None, Some(files)) => {
            let endpoint = endpoint.unwrap_or(Endpoint::Chat);
            let bytes = map_requests(s, files, endpoint, env, p)?;
            (bytes, endpoint, "batch.files")
        }
        _ => {
            p.bad(
                "batch",
                "give `input` (an OpenAI batch input file) or `files` (a map over files), not both",
                "`input = \"requests.jsonl\"`, or `files = \"docs/**/*.md\"` with `prompt` and `model`",
            );
            return None;
        }
    };
    let Ok(id) = new_id() else {
        p.bad("batch", "no randomness for the batch's id", "try again");
        return None;
    };
    match from_bytes(id, &bytes, endpoint, window, env) {
        Ok(task) => Some(task.into()),
        Err(errors) => {
            for e in errors {
                line_problem(p, field, &e);
            }
            None
        }
    }
}

/// A fresh batch id: `batch_` and 24 random hex digits.
pub fn new_id() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b)?;
    Ok(format!(
        "batch_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

/// The batch `id` of the requests in `bytes` (OpenAI's batch input lines) to `endpoint`,
/// to finish within `window`; Err: every bad line.
pub fn from_bytes(
    id: String,
    bytes: &[u8],
    endpoint: Endpoint,
    window: std::time::Duration,
    env: &SpecEnv<'_>,
) -> Result<Task, Vec<LineError>> {
    let created_at = crate::files::unix_now();
    let lines = batch::read_lines(bytes, endpoint, env)?;
    Ok(Task::Batch(BatchTask {
        id,
        endpoint,
        lines,
        created_at,
        expires_at: created_at.saturating_add(window.as_secs()),
    }))
}

/// A line's problem as a job file's problem.
fn line_problem(p: &mut Problems, field: &str, e: &LineError) {
    let at = match (e.line, &e.param) {
        (0, _) => field.to_owned(),
        (n, Some(param)) => format!("{field} line {n}: {param}"),
        (n, None) => format!("{field} line {n}"),
    };
    p.bad(&at, e.message.clone(), format!("({})", e.code));
}

/// The endpoint the first line names, if it names one.
fn first_url(bytes: &[u8]) -> Option<Endpoint> {
    Endpoint::parse(batch::first_line(bytes)?.get("url")?.as_str()?)
}

/// The map form's requests, as an OpenAI batch input file: one per file, its path the
/// `custom_id`.
fn map_requests(
    s: &Section,
    files: &Path,
    endpoint: Endpoint,
    env: &SpecEnv<'_>,
    p: &mut Problems,
) -> Option<Vec<u8>> {
    if endpoint == Endpoint::Embeddings {
        p.bad(
            "batch.endpoint",
            "a map over files asks an LLM: embedding files is an archive job's work",
            "use `kind = \"archive\"` to embed files into a collection",
        );
        return None;
    }
    let Some(prompt) = &s.prompt else {
        p.bad(
            "batch.prompt",
            "missing: the request for each file",
            "add `prompt = \"Summarize this report:\\n\\n{text}\"` ({text}: the file's text, {path}: its path)",
        );
        return None;
    };
    let Some(model) = &s.model else {
        p.bad(
            "batch.model",
            "missing: the GGUF model to run",
            "add `model = \"file.gguf\"`: a path, or a file name under ~/.myco/models",
        );
        return None;
    };
    let pattern = env.readable("batch.files", files, p)?;
    let found = match crate::chunk::expand_input(&pattern) {
        Ok(f) => f,
        Err(e) => {
            p.bad(
                "batch.files",
                e.to_string(),
                "point `files` at a directory, a file or a glob of documents",
            );
            return None;
        }
    };
    let mut out = Vec::new();
    for path in found {
        if !env.may_read("batch.files", &path, p) {
            return None;
        }
        let rel = path
            .strip_prefix(env.base_dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        let text = match crate::chunk::extract(&path) {
            Ok((_, t)) => t,
            Err(e) => {
                p.bad(
                    &format!("batch.files: {rel}"),
                    e.to_string(),
                    "leave the file out of `files`, or fix it",
                );
                continue;
            }
        };
        // One pass, so that a file's text holding `{path}` stays as it is.
        let filled = prompt
            .split("{text}")
            .map(|part| part.replace("{path}", &rel))
            .collect::<Vec<_>>()
            .join(&text);
        let mut body = serde_json::json!({ "model": model });
        match endpoint {
            Endpoint::Completions => body["prompt"] = filled.into(),
            _ => {
                let mut messages = Vec::new();
                if let Some(system) = &s.system {
                    messages.push(serde_json::json!({ "role": "system", "content": system }));
                }
                messages.push(serde_json::json!({ "role": "user", "content": filled }));
                body["messages"] = messages.into();
            }
        }
        let settings = [
            ("max_tokens", s.max_tokens.map(serde_json::Value::from)),
            ("temperature", s.temperature.map(serde_json::Value::from)),
            ("top_k", s.top_k.map(serde_json::Value::from)),
            ("top_p", s.top_p.map(serde_json::Value::from)),
            ("min_p", s.min_p.map(serde_json::Value::from)),
            (
                "repeat_penalty",
                s.repeat_penalty.map(serde_json::Value::from),
            ),
            ("seed", s.seed.map(serde_json::Value::from)),
            ("stop", s.stop.clone().map(serde_json::Value::from)),
            ("n_ctx", s.n_ctx.map(serde_json::Value::from)),
            (
                "chat_template",
                s.chat_template.clone().map(serde_json::Value::from),
            ),
        ];
        for (key, value) in settings {
            if let Some(v) = value {
                body[key] = v;
            }
        }
        let line = serde_json::json!({
            "custom_id": rel, "method": "POST", "url": endpoint.url(), "body": body,
        });
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    p.is_empty().then_some(out)
}

/// The batch becomes a parent with a child per line (its request); the parent keeps the
/// lines' ids and shapes.
pub fn plan(task: &Task, _collections: &Path) -> Result<Plan, SpecError> {
    let Task::Batch(b) = task else {
        return Ok(Plan::single(task.clone()));
    };
    let mut parent = b.clone();
    let mut children = Vec::with_capacity(parent.lines.len());
    for line in &mut parent.lines {
        match line.request.take() {
            Some(request) => children.push(*request),
            None => {
                return Err(SpecError::one(
                    "batch",
                    format!("line `{}` has no request", line.custom_id),
                    "submit the batch again",
                ));
            }
        }
    }
    Ok(Plan {
        task: Task::Batch(parent),
        children,
    })
}

/// Run a batch parent once its children have finished: write its output files.
pub fn run(task: &Task, engines: &mut Engines, ctx: &RunContext<'_>) -> Result<Vec<u8>, JobError> {
    match task {
        Task::Batch(t) => batch::join(t, engines.home(), ctx.children),
        other => Err(misrouted(other, "batch")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchLine, LineShape};
    use crate::task::NoopTask;

    #[test]
    fn a_batch_plans_into_a_child_per_line_and_keeps_only_the_lines_ids() {
        let line = |id: &str| BatchLine {
            custom_id: id.into(),
            model: "m".into(),
            shape: LineShape::default(),
            request: Some(Box::new(Task::Noop(NoopTask {
                payload: id.into(),
                ..NoopTask::default()
            }))),
        };
        let task = Task::Batch(BatchTask {
            id: "batch_p".into(),
            endpoint: Endpoint::Chat,
            lines: vec![line("first"), line("second")],
            created_at: 1,
            expires_at: 2,
        });
        let plan = plan(&task, Path::new("")).unwrap();
        let payloads: Vec<String> = plan
            .children
            .iter()
            .map(|c| match c {
                Task::Noop(n) => n.payload.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(payloads, ["first", "second"]);
        let Task::Batch(parent) = &plan.task else {
            panic!("{:?}", plan.task)
        };
        assert!(parent.lines.iter().all(|l| l.request.is_none()));
        assert_eq!(parent.lines[1].custom_id, "second");
        assert!(plan.task.is_parent() && plan.task.joins_failed());
    }
}
