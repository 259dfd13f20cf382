//! The `job.toml` format, version 1: parsing, validation and planning into [`Task`]s.
//!
//! This is the edge where strings become types: everything after [`JobSpec::parse`] works on
//! enums and checked values. A malformed file yields a [`SpecError`] listing *every* problem
//! with its field path and a hint. Nothing here touches the queue or runs a job.
//!
//! The generic parts are cut into files: the envelope and its checks (`file.rs`), reading
//! TOML (`read.rs`), problems (`problem.rs`), what a section's check sees (`env.rs`), and the
//! validated job and its plan (`plan.rs`). Each kind's section, rules and planning live in
//! its module under [`crate::kind`]. This file only ties them together.
//!
//! ```toml
//! version = 1                  # required: the format version
//! kind = "chunk"               # chunk | noop | embed | archive | infer | pipeline
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

pub mod env;
pub mod file;
pub mod plan;
pub mod problem;
pub mod read;

use std::path::Path;

pub use file::{JobFile, Refused, SPEC_VERSION};
pub use plan::{Checked, JobSpec, Plan};
pub use problem::{Problem, Problems, SpecError};

/// The kinds' sections under their old names.
pub use crate::kind::archive::Section as ArchiveSection;
pub use crate::kind::chunk::Section as ChunkSection;
pub use crate::kind::embed::Section as EmbedSection;
pub use crate::kind::noop::Section as NoopSection;
pub use crate::llm::infer::InferOptions as InferSection;

use crate::home;
use crate::kind;
use crate::model::ModelRef;

impl JobSpec {
    /// Parse and validate `job.toml` text. Relative paths resolve against `base_dir` (the
    /// directory of the job file). Checks that input paths exist.
    pub fn parse(text: &str, base_dir: &Path) -> Result<JobSpec, SpecError> {
        JobSpec::parse_in(text, base_dir, &home::models_dir(&home::default_home()))
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
        let file = read::parse_file(text)?;
        file.validate_in(base_dir, models_dir, remote)
    }

    /// Like [`JobSpec::parse_swarm`], for a submitter who may read only what `access`
    /// allows: every field that names a file is checked before it is read.
    pub fn parse_as(
        text: &str,
        base_dir: &Path,
        models_dir: &Path,
        remote: &[ModelRef],
        access: &crate::access::Access,
    ) -> Result<JobSpec, Refused> {
        let file = read::parse_file(text)?;
        file.validate_as(base_dir, models_dir, remote, access)
    }

    /// Expand the job into the tasks the queue stores, with collections in the default
    /// home (see [`JobSpec::plan_in`]).
    pub fn plan(&self) -> Result<Plan, SpecError> {
        self.plan_in(&home::collections_dir(&home::default_home()))
    }

    /// Expand the job into the tasks the queue stores (its kind's planning). A directory or
    /// glob input becomes a parent with one child per file; an archive becomes a parent with
    /// one child per group of files that `collections` does not already hold.
    pub fn plan_in(&self, collections: &Path) -> Result<Plan, SpecError> {
        kind::plan(&self.task, collections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Task;

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

    #[test]
    fn infer_settings_and_model_are_checked_together() {
        let p = problems(
            "version = 1\nkind = \"infer\"\n[infer]\nprompt = \"hi\"\nmax_tokens = 0\nn_ctx = 4\n",
        );
        let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["infer.max_tokens", "infer.n_ctx", "infer.model"]);
        let p = problems(
            "version = 1\nkind = \"pipeline\"\n[pipeline]\nmodel = \"./nope.gguf\"\nprompt = \"hi\"\n",
        );
        assert_eq!(p[0].field, "pipeline.model");
        assert!(p[0].message.contains("no model file at"), "{p:?}");
    }

    #[test]
    fn a_pipeline_refuses_gpu_layers_by_name() {
        let p = problems(
            "version = 1\nkind = \"pipeline\"\n[pipeline]\nmodel = \"./nope.gguf\"\nprompt = \"hi\"\ngpu_layers = 8\n",
        );
        assert_eq!(p[0].field, "pipeline.gpu_layers", "{p:?}");
        assert!(p[0].hint.contains("--gpu-memory"), "{p:?}");
    }

    #[test]
    fn unknown_top_level_fields_and_foreign_sections() {
        let p = problems("version = 1\nkind = \"noop\"\npriorty = 3\n");
        assert!(p[0].message.contains("unknown field `priorty`"), "{p:?}");
        let p = problems("version = 1\nkind = \"noop\"\n[chunk]\ninput = \"src\"\n");
        assert_eq!(p[0].field, "chunk");
        assert!(p[0].message.contains("does not belong"), "{p:?}");
    }

    #[test]
    fn an_archive_is_keyed_by_its_collection() {
        let home = tempfile::tempdir().unwrap();
        let model = home.path().join("m");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("model.onnx"), b"onnx").unwrap();
        let text = "version = 1\nkind = \"archive\"\n[archive]\ninput = \"src\"\ncollection = \"docs\"\nmodel = \"m\"\n";
        let spec =
            JobSpec::parse_in(text, Path::new(env!("CARGO_MANIFEST_DIR")), home.path()).unwrap();
        assert_eq!(spec.idempotency_key.as_deref(), Some("archive:docs"));
        assert!(spec.task.joins() && spec.task.owner_only());
    }
}
