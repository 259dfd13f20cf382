//! What checking a kind's section may look at besides the section itself ([`SpecEnv`]: the
//! job file's directory, the node's models, the models peers hold), and the path helpers
//! every kind uses.
//!
//! It must not know a job kind or read a section.

use std::path::{Path, PathBuf};

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
}

/// Whether an input path is a glob pattern (it need not exist).
pub fn is_glob(p: &Path) -> bool {
    p.to_string_lossy().contains(['*', '?', '['])
}
