//! The job file envelope ([`JobFile`]: `version`, `kind`, `priority`, `max_attempts`,
//! `timeout`, `idempotency_key`, and the kinds' sections), read straight from TOML, and its
//! validation into a [`JobSpec`]: the envelope's fields here, the section by its kind's
//! module (through [`Sections`]).
//!
//! It must not know any kind's section or rules: adding a kind never touches this file.

use std::cell::OnceCell;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::env::SpecEnv;
use super::plan::JobSpec;
use super::problem::{Problems, SpecError};
use crate::access::{Access, Outside};
use crate::kind::{JobKind, Sections};
use crate::model::ModelRef;

/// The only format version this build reads.
pub const SPEC_VERSION: u32 = 1;

/// The envelope's own fields, besides the kinds' sections.
const ENVELOPE: [&str; 6] = [
    "version",
    "kind",
    "priority",
    "max_attempts",
    "timeout",
    "idempotency_key",
];

/// What a user asks for, as read from `job.toml` (before validation). Unknown top-level
/// fields are refused; a table named after a kind is that kind's section.
#[derive(Debug, Clone)]
pub struct JobFile {
    pub version: u32,
    pub kind: JobKind,
    /// Higher runs first (-1000..=1000), FIFO within a priority; default 0.
    pub priority: i32,
    /// Failed attempts before the job is dead (1..=100); default 3.
    pub max_attempts: u32,
    /// One attempt's time limit (humantime: "30s", "1h 30m"); default 10 minutes.
    pub timeout: Duration,
    /// A second submit with this key returns the first job.
    pub idempotency_key: Option<String>,
    pub sections: Sections,
}

impl<'de> Deserialize<'de> for JobFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JobFile, D::Error> {
        d.deserialize_map(FileVisitor)
    }
}

struct FileVisitor;

impl<'de> Visitor<'de> for FileVisitor {
    type Value = JobFile;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a job file (a table with `version`, `kind` and the kind's section)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JobFile, A::Error> {
        let mut version = None;
        let mut kind = None;
        let mut priority = None;
        let mut max_attempts = None;
        let mut timeout = None;
        let mut idempotency_key = None;
        let mut sections = Sections::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "version" => version = Some(map.next_value()?),
                "kind" => kind = Some(map.next_value()?),
                "priority" => priority = Some(map.next_value()?),
                "max_attempts" => max_attempts = Some(map.next_value()?),
                "timeout" => {
                    let t: humantime_serde::Serde<Duration> = map.next_value()?;
                    timeout = Some(t.into_inner());
                }
                "idempotency_key" => idempotency_key = map.next_value()?,
                other => {
                    if !sections.read(other, &mut map)? {
                        return Err(de::Error::custom(unknown_field(other)));
                    }
                }
            }
        }
        Ok(JobFile {
            version: version.ok_or_else(|| de::Error::missing_field("version"))?,
            kind: kind.ok_or_else(|| de::Error::missing_field("kind"))?,
            priority: priority.unwrap_or(0),
            max_attempts: max_attempts.unwrap_or(3),
            timeout: timeout.unwrap_or(Duration::from_secs(600)),
            idempotency_key,
            sections,
        })
    }
}

/// serde's message for an unknown field, listing the envelope's fields and the sections.
fn unknown_field(name: &str) -> String {
    let expected: Vec<String> = ENVELOPE
        .into_iter()
        .chain(JobKind::ALL.map(JobKind::as_str))
        .map(|f| format!("`{f}`"))
        .collect();
    format!(
        "unknown field `{name}`, expected one of {}",
        expected.join(", ")
    )
}

impl JobFile {
    /// Check every field; report all problems at once. Relative paths resolve against
    /// `base_dir`, model names in `models_dir`, else among `remote` (GGUF files peers hold).
    pub fn validate_in(
        self,
        base_dir: &Path,
        models_dir: &Path,
        remote: &[ModelRef],
    ) -> Result<JobSpec, SpecError> {
        self.validate_as(base_dir, models_dir, remote, &Access::Any)
            .map_err(Refused::into_spec_error)
    }

    /// [`JobFile::validate_in`] for a submitter who may read only what `access` allows: a
    /// field that names a file outside it refuses the job as [`Refused::Outside`], before
    /// the file is read.
    pub fn validate_as(
        self,
        base_dir: &Path,
        models_dir: &Path,
        remote: &[ModelRef],
        access: &Access,
    ) -> Result<JobSpec, Refused> {
        let mut p = Problems::default();
        if self.version != SPEC_VERSION {
            p.bad(
                "version",
                format!("unsupported version {}", self.version),
                "this myco reads `version = 1`",
            );
        }
        if !(-1000..=1000).contains(&self.priority) {
            p.bad(
                "priority",
                format!("{} is out of range", self.priority),
                "use a priority from -1000 to 1000 (higher runs first)",
            );
        }
        if !(1..=100).contains(&self.max_attempts) {
            p.bad(
                "max_attempts",
                format!("{} is out of range", self.max_attempts),
                "use 1 to 100 attempts",
            );
        }
        if self.timeout.is_zero() {
            p.bad(
                "timeout",
                "must be longer than zero",
                "write a duration such as \"30s\" or \"10m\"",
            );
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > 256)
        {
            p.bad(
                "idempotency_key",
                "must be 1 to 256 bytes long",
                "use a short stable name, e.g. \"archive-2026-11-22\"",
            );
        }
        let want = self.kind.as_str();
        for other in self.sections.present() {
            if other != self.kind {
                p.bad(
                    other.as_str(),
                    format!("a `[{other}]` table does not belong in a `kind = \"{want}\"` job"),
                    "remove it, or change `kind`",
                );
            }
        }
        let refused = OnceCell::new();
        let env = SpecEnv {
            base_dir,
            models_dir,
            remote,
            access,
            refused: &refused,
        };
        match self.sections.check(self.kind, &env, &mut p) {
            Some(checked) if p.is_empty() => Ok(JobSpec {
                priority: self.priority,
                max_attempts: self.max_attempts,
                timeout: self.timeout,
                idempotency_key: self.idempotency_key.or(checked.default_key),
                task: checked.task,
            }),
            _ => Err(match refused.into_inner() {
                Some(outside) => Refused::Outside(outside),
                None => Refused::Spec(SpecError {
                    problems: p.into_vec(),
                }),
            }),
        }
    }
}

/// Why a job was not accepted: its file's problems, or a file it names that its submitter
/// may not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Outside(Outside),
}

impl Refused {
    /// As a spec error (a refusal by the data roots as its one problem).
    pub fn into_spec_error(self) -> SpecError {
        match self {
            Refused::Spec(e) => e,
            Refused::Outside(o) => SpecError {
                problems: vec![super::problem::Problem::new(
                    "",
                    o.to_string(),
                    "name a file below the node's data roots",
                )],
            },
        }
    }
}
