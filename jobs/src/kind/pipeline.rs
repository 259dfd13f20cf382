//! The `pipeline` kind: generate text with an LLM split into layer-range stages across
//! nodes. Its `[pipeline]` section (the same settings as `[infer]`), validation, planning
//! and traits.
//!
//! It must not place or run stages (that is the node's stage chain, in myco-actors).

use std::path::Path;

use super::traits::{ExecutorKind, Gpu, KindTraits, Lane};
use crate::engines::Engines;
use crate::error::JobError;
use crate::llm::infer::InferOptions;
use crate::run::RunContext;
use crate::spec::env::SpecEnv;
use crate::spec::plan::{Checked, Plan};
use crate::spec::problem::{Problems, SpecError};
use crate::task::Task;

pub const TRAITS: KindTraits = KindTraits {
    lane: Lane::Executive,
    streams: true,
    joins: false,
    joins_failed: false,
    owner_only: false,
    gpu: Gpu::IfAsked,
    executor: ExecutorKind::StageChain,
};

/// `[pipeline]`: the same settings as `[infer]`.
pub type Section = InferOptions;

pub fn check(section: Option<&Section>, env: &SpecEnv<'_>, p: &mut Problems) -> Option<Checked> {
    if section.is_some_and(|s| s.gpu_layers.is_some()) {
        p.bad(
            "pipeline.gpu_layers",
            "a pipeline's stages put as many of their layers on each node's GPU as fit there",
            "remove `gpu_layers`; to keep GPU memory free on a node, start it with --gpu-memory SIZE",
        );
    }
    if section.is_some_and(|s| {
        s.json
            || s.grammar.is_some()
            || s.json_schema.is_some()
            || s.tools.is_some()
            || s.logprobs.is_some()
    }) {
        p.bad(
            "pipeline.grammar",
            "a pipeline's last stage samples without a grammar and reports no log-probabilities: json, grammar, json_schema, tools and logprobs are not supported for pipeline jobs yet",
            "remove them, or run the model as an `infer` job on a node that holds it whole",
        );
    }
    super::infer::check_llm("pipeline", section, env, p).map(|t| Task::Pipeline(t).into())
}

pub fn plan(task: &Task, _collections: &Path) -> Result<Plan, SpecError> {
    Ok(Plan::single(task.clone()))
}

/// A pipeline task runs on the node's stage chain (the worker hands it there, as its traits
/// say), never on an executor.
pub fn run(_: &Task, _: &mut Engines, _: &RunContext<'_>) -> Result<Vec<u8>, JobError> {
    Err(JobError::fatal(
        "a pipeline job runs on a node's stage chain, not on an executor",
    ))
}
