//! Which tasks a holder may take ([`Fit`]): its job kinds, the models it holds, whether it is
//! the job's owner and has a GPU. The queue and the stealing protocol ask it.
//!
//! It must not look at queues or nodes: only at a task and the holder's description.

use serde::{Deserialize, Serialize};

use crate::kind::JobKind;
use crate::task::Task;

/// Which tasks a holder may take: its job kinds; with `models` set, only tasks whose model
/// it holds; and unless it is the owner, only tasks that need no owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fit {
    pub kinds: Vec<JobKind>,
    /// The holder's models as `(name, bytes)` (see [`ModelRef::id`]); `None`: any model.
    pub models: Option<Vec<(String, u64)>>,
    /// The job's own node (it may run owner-only tasks such as an archive's join).
    pub owner: bool,
    /// The holder has a GPU.
    pub gpu: bool,
}

impl Fit {
    /// What the owner's own workers take: anything of their kinds.
    pub fn local(kinds: &[JobKind]) -> Fit {
        Fit {
            kinds: kinds.to_vec(),
            models: None,
            owner: true,
            gpu: false,
        }
    }

    /// What a thief holding `models` takes.
    pub fn thief(kinds: &[JobKind], models: Vec<(String, u64)>) -> Fit {
        Fit {
            kinds: kinds.to_vec(),
            models: Some(models),
            owner: false,
            gpu: false,
        }
    }

    pub fn accepts(&self, task: &Task) -> bool {
        if !self.kinds.contains(&task.kind())
            || (!self.owner && task.owner_only())
            || (task.needs_gpu() && !self.gpu)
        {
            return false;
        }
        match (&self.models, task.model()) {
            // A pipeline job whose owner holds the model stays there: its runner only
            // coordinates (the stages spread the work), and its tokens stream where its
            // clients wait.
            (_, Some(m))
                if !self.owner && m.path.is_absolute() && task.kind() == JobKind::Pipeline =>
            {
                false
            }
            // The owner found a model given by path at submit (the path is absolute); one
            // named only by a peer's copy has a bare file name for its path.
            (Some(_), Some(m)) if self.owner && m.path.is_absolute() => true,
            (Some(models), Some(m)) => models.iter().any(|(n, b)| *n == m.name && *b == m.bytes),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::infer::{InferParams, InferTask, Prompt};
    use crate::model::ModelRef;

    fn llm(path: &str, pipeline: bool) -> Task {
        let t = InferTask {
            model: ModelRef {
                name: "m.gguf".into(),
                path: path.into(),
                bytes: 10,
            },
            prompt: Prompt::Text("hi".into()),
            params: InferParams::default(),
            gpu: false,
        };
        if pipeline {
            Task::Pipeline(t)
        } else {
            Task::Infer(t)
        }
    }

    #[test]
    fn thieves_take_llm_jobs_of_models_they_hold_but_not_pipelines_the_owner_can_run() {
        let kinds = [JobKind::Infer, JobKind::Pipeline];
        let holder = Fit::thief(&kinds, vec![("m.gguf".into(), 10)]);
        let other = Fit::thief(&kinds, vec![("n.gguf".into(), 10)]);
        let owner = Fit {
            models: Some(Vec::new()),
            ..Fit::local(&kinds)
        };
        // Resolved at the owner (an absolute path): the owner holds the model.
        assert!(holder.accepts(&llm("/home/a/models/m.gguf", false)));
        assert!(!holder.accepts(&llm("/home/a/models/m.gguf", true)));
        assert!(owner.accepts(&llm("/home/a/models/m.gguf", true)));
        // Named after a peer's copy: whoever holds it runs it.
        assert!(holder.accepts(&llm("m.gguf", true)));
        assert!(!other.accepts(&llm("m.gguf", true)));
        assert!(!owner.accepts(&llm("m.gguf", true)));
    }
}
