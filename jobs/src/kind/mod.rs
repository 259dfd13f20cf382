//! The job kinds: [`JobKind`] (what `kind = "..."` names, deserialized directly from the job
//! file, and the label the queue stores), the registry that dispatches from a kind to its
//! module, and a stored [`Task`]'s kind and traits.
//!
//! One module per kind (`chunk.rs`, `embed.rs`, ...) holds its `[section]` struct, its
//! validation (`check`: every problem with its field path), its planning (`plan`), how it runs
//! on an executor (`run`) and its [`KindTraits`] table (`TRAITS`). Adding a kind is a new module and one line in the
//! `kinds!` list below, plus its variant in the stored [`Task`] enum and the arm of
//! [`Task::kind`]. This file holds no kind's logic, and the kind modules never import it.

pub mod archive;
pub mod batch;
pub mod chunk;
pub mod embed;
pub mod infer;
pub mod noop;
pub mod pipeline;
mod traits;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use traits::{ExecutorKind, Gpu, KindTraits, Lane};

use crate::engines::Engines;
use crate::error::JobError;
use crate::run::RunContext;
use crate::spec::env::SpecEnv;
use crate::spec::plan::{Checked, Plan};
use crate::spec::problem::{Problems, SpecError};
use crate::task::Task;

/// Declares [`JobKind`] and the registry from one list of `Variant => module` lines. The
/// module's name is the kind's name in job files (`kind = "chunk"`, `[chunk]`) and must be
/// the variant's name in lowercase (a test checks it). The queue stores a kind by its
/// position: append new kinds at the end.
macro_rules! kinds {
    ($($variant:ident => $module:ident),* $(,)?) => {
        /// A job kind: what a job file's `kind = "..."` names (deserialized directly from
        /// it), and the label used for listing, metrics and capability matching.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(rename_all = "lowercase")]
        pub enum JobKind {
            $($variant),*
        }

        impl JobKind {
            /// Every kind, in stored order.
            pub const ALL: [JobKind; [$(JobKind::$variant),*].len()] = [$(JobKind::$variant),*];

            /// The kind's name in job files and the API (`chunk`, `infer`, ...).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(JobKind::$variant => stringify!($module)),*
                }
            }

            /// The kind's traits (see [`KindTraits`]).
            pub fn traits(self) -> &'static KindTraits {
                match self {
                    $(JobKind::$variant => &$module::TRAITS),*
                }
            }
        }

        /// Every kind's `[section]` of a job file, as read (before validation).
        #[derive(Debug, Clone, Default)]
        pub struct Sections {
            $(pub $module: Option<$module::Section>,)*
        }

        impl Sections {
            /// Read the value of the top-level key `name` if it names a kind's section;
            /// `Ok(false)` if no kind has that name.
            pub fn read<'de, A: serde::de::MapAccess<'de>>(
                &mut self,
                name: &str,
                map: &mut A,
            ) -> Result<bool, A::Error> {
                match name {
                    $(stringify!($module) => self.$module = Some(map.next_value()?),)*
                    _ => return Ok(false),
                }
                Ok(true)
            }

            /// The kinds whose sections the file has, in [`JobKind::ALL`] order.
            pub fn present(&self) -> Vec<JobKind> {
                let mut out = Vec::new();
                $(if self.$module.is_some() {
                    out.push(JobKind::$variant);
                })*
                out
            }

            /// Check the section of `kind` (it may be missing) into the task it asks for;
            /// every problem goes to `problems`.
            pub fn check(
                &self,
                kind: JobKind,
                env: &SpecEnv<'_>,
                problems: &mut Problems,
            ) -> Option<Checked> {
                match kind {
                    $(JobKind::$variant => $module::check(self.$module.as_ref(), env, problems)),*
                }
            }
        }

        /// Run a task with an executor's engines: its kind's `run`.
        pub fn run(
            task: &Task,
            engines: &mut Engines,
            ctx: &RunContext<'_>,
        ) -> Result<Vec<u8>, JobError> {
            match task.kind() {
                $(JobKind::$variant => $module::run(task, engines, ctx)),*
            }
        }

        /// Expand a validated task into the tasks the queue stores (its kind's `plan`), with
        /// collections under `collections`.
        pub fn plan(task: &Task, collections: &Path) -> Result<Plan, SpecError> {
            match task.kind() {
                $(JobKind::$variant => $module::plan(task, collections)),*
            }
        }
    };
}

kinds! {
    Chunk => chunk,
    Noop => noop,
    Embed => embed,
    Archive => archive,
    Infer => infer,
    Pipeline => pipeline,
    Batch => batch,
}

impl JobKind {
    /// The kind named `s` (as in a job file), if there is one.
    pub fn parse(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The lane whose workers run jobs of this kind.
    pub fn lane(self) -> Lane {
        self.traits().lane
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored task's kind, and the traits it has by its kind.
impl Task {
    pub fn kind(&self) -> JobKind {
        match self {
            Task::Chunk { .. } | Task::ChunkFile { .. } | Task::ChunkInline { .. } => {
                JobKind::Chunk
            }
            Task::Noop(_) => JobKind::Noop,
            Task::Embed { .. } | Task::EmbedDocs(_) | Task::EmbedDocsWith(..) => JobKind::Embed,
            Task::Archive(_) => JobKind::Archive,
            Task::Infer(_) => JobKind::Infer,
            Task::Pipeline(_) => JobKind::Pipeline,
            Task::Batch(_) => JobKind::Batch,
        }
    }

    /// Its kind's traits.
    pub fn traits(&self) -> &'static KindTraits {
        self.kind().traits()
    }

    /// The lane whose workers run it.
    pub fn lane(&self) -> Lane {
        self.traits().lane
    }

    /// Only the owner may run it (it writes the owner's files, or reads its children).
    pub fn owner_only(&self) -> bool {
        self.traits().owner_only && self.is_parent()
    }

    /// Only a node with a GPU may run it.
    pub fn needs_gpu(&self) -> bool {
        self.traits().gpu == Gpu::IfAsked && self.asks_gpu()
    }

    /// A task whose output streams to its clients as it runs (see
    /// [`RunContext::stream`](crate::RunContext::stream)).
    pub fn streams(&self) -> bool {
        self.traits().streams
    }

    /// A parent that runs itself once its children have finished, with their results.
    pub fn joins(&self) -> bool {
        self.traits().joins && self.is_parent()
    }

    /// A joining parent that joins even when none of its children is done.
    pub fn joins_failed(&self) -> bool {
        self.joins() && self.traits().joins_failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names_and_parse_back() {
        for k in JobKind::ALL {
            let json = serde_json::to_string(&k).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(JobKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(JobKind::parse("embedd"), None);
    }

    #[test]
    fn llm_kinds_run_on_the_executive_lane() {
        let executive: Vec<_> = JobKind::ALL
            .into_iter()
            .filter(|k| k.lane() == Lane::Executive)
            .collect();
        assert_eq!(executive, [JobKind::Infer, JobKind::Pipeline]);
    }
}
