//! A validated job ([`JobSpec`]: the scheduling envelope and its task), what it becomes for
//! the queue ([`Plan`]: its own task and the children it fans out into), and a kind
//! section's outcome ([`Checked`]).
//!
//! Plain types: planning itself is each kind's (see [`crate::kind`]).

use std::time::Duration;

use crate::task::Task;

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

impl Plan {
    /// A job of one task, without children.
    pub fn single(task: Task) -> Plan {
        Plan {
            task,
            children: Vec::new(),
        }
    }
}

/// A kind's section, checked: the task it asks for, and the idempotency key the job gets
/// when the file gives none.
#[derive(Debug, Clone)]
pub struct Checked {
    pub task: Task,
    pub default_key: Option<String>,
}

impl From<Task> for Checked {
    fn from(task: Task) -> Checked {
        Checked {
            task,
            default_key: None,
        }
    }
}
