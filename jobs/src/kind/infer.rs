//! The `infer` kind: generate text with an LLM (a GGUF file, whole on one node). Its
//! `[infer]` section ([`InferOptions`], shared with the API and the CLI), validation,
//! planning and traits; [`check_llm`] is shared with the `pipeline` kind.
//!
//! It must not load or run a model (that is [`crate::infer::engine`]).

use std::path::Path;

use super::traits::{ExecutorKind, Gpu, KindTraits, Lane};
use crate::infer::{InferOptions, InferTask};
use crate::model;
use crate::spec::env::SpecEnv;
use crate::spec::plan::{Checked, Plan};
use crate::spec::problem::{Problems, SpecError, field};
use crate::task::Task;

pub const TRAITS: KindTraits = KindTraits {
    lane: Lane::Executive,
    streams: true,
    joins: false,
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
        Some(name) => model::resolve_llm(name, env.base_dir, env.models_dir, env.remote)
            .map_err(|why| p.bad(&field(table, "model"), why.to_string(), why.hint()))
            .ok(),
    };
    Some(InferTask {
        gpu: i.gpu,
        model: model?,
        prompt: prompt?,
        params: params?,
    })
}

pub fn plan(task: &Task, _collections: &Path) -> Result<Plan, SpecError> {
    Ok(Plan::single(task.clone()))
}
