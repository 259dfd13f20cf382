//! The `infer` kind: generate text with an LLM (a GGUF file, whole on one node). Its
//! `[infer]` section ([`InferOptions`], shared with the API and the CLI), validation,
//! planning and traits; [`check_llm`] is shared with the `pipeline` kind.
//!
//! Its `run` generates on the node's cached model; it must not load or run llama.cpp
//! itself (that is [`crate::llm::infer::engine`]).

use std::path::Path;

use super::traits::{ExecutorKind, Gpu, KindTraits, Lane};
use crate::engines::Engines;
#[cfg(feature = "infer")]
use crate::engines::misrouted;
use crate::error::JobError;
use crate::llm::infer::{InferOptions, InferTask};
use crate::model;
use crate::run::RunContext;
use crate::spec::env::SpecEnv;
use crate::spec::plan::{Checked, Plan};
use crate::spec::problem::{Problems, SpecError, field};
use crate::task::Task;

pub const TRAITS: KindTraits = KindTraits {
    lane: Lane::Executive,
    streams: true,
    joins: false,
    joins_failed: false,
    owner_only: false,
    gpu: Gpu::IfAsked,
    executor: ExecutorKind::Cpu,
};

/// `[infer]`: the model, the prompt and the sampling settings.
pub type Section = InferOptions;

pub fn check(section: Option<&Section>, env: &SpecEnv<'_>, p: &mut Problems) -> Option<Checked> {
    check_llm("infer", section, env, p).map(|t| Task::Infer(t).into())
}

/// Check an LLM section named `table` (`infer` or `pipeline`): its prompt, its settings and
/// its model, which this node or a peer must hold.
pub fn check_llm(
    table: &str,
    section: Option<&InferOptions>,
    env: &SpecEnv<'_>,
    p: &mut Problems,
) -> Option<InferTask> {
    let Some(i) = section else {
        p.bad(
            table,
            format!("missing `[{table}]` table"),
            format!("add `[{table}]` with `model = \"file.gguf\"` and `prompt = \"...\"`"),
        );
        return None;
    };
    let prompt = i.prompt(table).map_err(|e| p.extend([e])).ok();
    let params = i.params(table).map_err(|e| p.extend(e)).ok();
    // Held here, or else by a peer (then the job waits for that peer).
    let model = match &i.model {
        None => {
            p.bad(
                &field(table, "model"),
                "missing: the GGUF model to run",
                "add `model = \"file.gguf\"`: a path, or a file name under ~/.myco/models",
            );
            None
        }
        // A path (not a name in the models folder) is a file the submitter names: gated
        // before anything looks at it, and again once resolved.
        Some(name)
            if model::is_path(name)
                && env
                    .readable(&field(table, "model"), Path::new(name), p)
                    .is_none() =>
        {
            None
        }
        Some(name) => model::resolve_llm(name, env.base_dir, env.models_dir, env.remote)
            .map_err(|why| p.bad(&field(table, "model"), why.to_string(), why.hint()))
            .ok()
            // A path (not a name in the models folder) is a file the submitter names.
            .filter(|m| !model::is_path(name) || env.may_read(&field(table, "model"), &m.path, p)),
    };
    let (model, mut params) = (model?, params?);
    // The context is bounded by the model before anything is allocated (here, at submit,
    // when this node has the file; the node that runs it checks again, and its memory).
    if model.path.is_file() {
        match model::fit_context_of(&model.path, i.n_ctx, params.n_ctx) {
            Ok(n_ctx) => params.n_ctx = n_ctx,
            Err(model::FitError::Context(e)) => {
                p.bad(&field(table, "n_ctx"), e.to_string(), e.hint());
            }
            Err(model::FitError::Header(e)) => p.bad(
                &field(table, "model"),
                e.to_string(),
                "point `model` at a complete GGUF file",
            ),
        }
    }
    Some(InferTask {
        gpu: i.gpu,
        model,
        prompt: prompt?,
        params,
    })
}

pub fn plan(task: &Task, _collections: &Path) -> Result<Plan, SpecError> {
    Ok(Plan::single(task.clone()))
}

/// Run an infer task in the shared batch of the node's copy of its model, streaming its text.
#[cfg(feature = "infer")]
pub fn run(task: &Task, engines: &mut Engines, ctx: &RunContext<'_>) -> Result<Vec<u8>, JobError> {
    let Task::Infer(t) = task else {
        return Err(misrouted(task, "infer"));
    };
    let path = t.model.resolve(engines.home());
    let model = engines
        .llms()
        .serve(&path, t.params.gpu_layers, t.params.n_ctx)
        .map_err(JobError::from)?;
    let generation = model
        .generate(&t.prompt, &t.params, ctx.cancelled, &mut |id, text| {
            if let Some(stream) = ctx.stream {
                stream(id, text);
            }
        })
        .map_err(JobError::from)?;
    let mut out = serde_json::to_vec(&generation)
        .map_err(|e| JobError::fatal(format!("encoding the result: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

/// Without llama.cpp in the build, an infer task fails at once, saying why.
#[cfg(not(feature = "infer"))]
pub fn run(_: &Task, _: &mut Engines, _: &RunContext<'_>) -> Result<Vec<u8>, JobError> {
    Err(JobError::fatal(
        "this myco was built without the `infer` feature (llama.cpp); rebuild with it",
    ))
}
