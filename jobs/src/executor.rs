//! The executors: the sync [`Executor`] trait that runs a task on the caller's thread, and
//! [`CpuExecutor`], which runs every kind whose traits say `ExecutorKind::Cpu` by handing
//! the task to its kind's `run` ([`crate::kind::run`]) with this executor's [`Engines`].
//!
//! Executors are synchronous and own their model state; the actor layer puts each one on a
//! thread of its own. Nothing here knows about queues, leases, actors or job files.

use crate::engines::Engines;
use crate::error::JobError;
use crate::llm::infer::Models;
use crate::run::RunContext;
use crate::task::Task;

/// Runs tasks synchronously. Output is JSON Lines: one JSON object per line, so results of
/// children concatenate into their parent's result.
pub trait Executor: Send {
    fn run(&mut self, task: &Task, ctx: &RunContext<'_>) -> Result<Vec<u8>, JobError>;
}

/// The executor for the built-in job kinds (chunk, noop, embed, archive, infer). Embedding
/// models are loaded on first use and kept by the executor: one instance lives on one
/// worker thread. LLMs are kept in the node's [`Models`] cache, which the node's executors
/// share.
#[derive(Debug)]
pub struct CpuExecutor {
    engines: Engines,
}

impl CpuExecutor {
    /// An executor with a cache of LLMs of its own (see [`CpuExecutor::with_models`]).
    pub fn new(home: &std::path::Path) -> CpuExecutor {
        CpuExecutor::with_models(home, Models::new())
    }

    /// An executor sharing `llms`, the node's cache of loaded LLMs: give every executor of a
    /// node a clone of one cache, and each model is loaded once per node.
    pub fn with_models(home: &std::path::Path, llms: Models) -> CpuExecutor {
        CpuExecutor {
            engines: Engines::new(home, llms),
        }
    }

    /// The same, with embedding models running on `n` ONNX Runtime threads (0: every core).
    pub fn embed_threads(mut self, n: usize) -> CpuExecutor {
        self.engines.set_embed_threads(n);
        self
    }
}

impl Executor for CpuExecutor {
    fn run(&mut self, task: &Task, ctx: &RunContext<'_>) -> Result<Vec<u8>, JobError> {
        crate::kind::run(task, &mut self.engines, ctx)
    }
}
