//! What checking a kind's section may look at besides the section itself ([`SpecEnv`]: the
//! job file's directory, the node's models, the models peers hold), and the path helpers
//! every kind uses.
//!
//! It must not know a job kind or read a section.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use super::problem::Problems;
use crate::access::{Access, Outside};
use crate::model::ModelRef;

/// The surroundings of a job file being checked.
#[derive(Debug, Clone, Copy)]
pub struct SpecEnv<'a> {
    /// The job file's directory: relative paths start here.
    pub base_dir: &'a Path,
    /// The node's models directory: model names resolve here.
    pub models_dir: &'a Path,
    /// GGUF models only peers hold (by file name and size).
    pub remote: &'a [ModelRef],
    /// What the submitter may read: every field that names a file is checked against it
    /// before anything reads the file.
    pub access: &'a Access,
    /// The first path refused by `access` (the submission is then refused as a whole, as
    /// outside the data roots).
    pub refused: &'a OnceCell<Outside>,
}

impl SpecEnv<'_> {
    /// `p` as the job means it: relative paths start at the job file's directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// `p` as the job means it, if the submitter may read it; else a problem at `field` (the
    /// refusal is kept: see [`SpecEnv::refused`]).
    pub fn readable(&self, field: &str, p: &Path, problems: &mut Problems) -> Option<PathBuf> {
        let path = self.path(p);
        self.may_read(field, &path, problems).then_some(path)
    }

    /// Whether the submitter may read `path` (already resolved); if not, a problem at
    /// `field` and the refusal kept.
    pub fn may_read(&self, field: &str, path: &Path, problems: &mut Problems) -> bool {
        match self.access.check(path) {
            Ok(()) => true,
            Err(outside) => {
                problems.bad(
                    field,
                    outside.to_string(),
                    "name a file below the node's data roots",
                );
                let _ = self.refused.set(outside);
                false
            }
        }
    }
}

/// Whether an input path is a glob pattern (it need not exist).
pub fn is_glob(p: &Path) -> bool {
    p.to_string_lossy().contains(['*', '?', '['])
}
