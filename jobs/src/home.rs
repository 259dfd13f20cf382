//! The layout of a node's home directory (`~/.myco` or `$MYCO_HOME`), in one place: where
//! models, collections and shared libraries live under it. `myco_runtime::config::Home`
//! and the jobs code build these paths only through the functions here.
//!
//! Paths only: nothing here creates, reads or writes a file.

use std::path::{Path, PathBuf};

/// The directory of model files a node holds and advertises (GGUF files, ONNX model
/// directories), under the home.
pub const MODELS: &str = "models";
/// The directory of collections (one directory each) archive jobs write, under the home.
pub const COLLECTIONS: &str = "collections";
/// The directory of shared libraries (ONNX Runtime), under the home.
pub const LIB: &str = "lib";
/// Files a node writes for a moment (a stage's slice of a model while llama.cpp loads it),
/// under the home: never under `models`, whose files the node advertises.
pub const SCRATCH: &str = "scratch";

/// The files of OpenAI's `/v1/files` (batch inputs and outputs), under the home.
pub const FILES: &str = "files";

/// What a node keeps to save work, under the home: model identities (`ids/`); fetched
/// models and slices later.
pub const CACHE: &str = "cache";

/// `home/cache`.
pub fn cache_dir(home: &Path) -> PathBuf {
    home.join(CACHE)
}

/// `home/models`.
pub fn models_dir(home: &Path) -> PathBuf {
    home.join(MODELS)
}

/// `home/collections`.
pub fn collections_dir(home: &Path) -> PathBuf {
    home.join(COLLECTIONS)
}

/// `home/collections/NAME`: the collection `name`.
pub fn collection_dir(home: &Path, name: &str) -> PathBuf {
    collections_dir(home).join(name)
}

/// `home/files`.
pub fn files_dir(home: &Path) -> PathBuf {
    home.join(FILES)
}

/// `home/scratch`.
pub fn scratch_dir(home: &Path) -> PathBuf {
    home.join(SCRATCH)
}

/// `home/lib`.
pub fn lib_dir(home: &Path) -> PathBuf {
    home.join(LIB)
}

/// `~/.myco` (`./.myco` without `$HOME`); `$MYCO_HOME` is read by [`default_home`] and the
/// CLI.
pub fn default_root() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".myco")
}

/// `$MYCO_HOME`, else [`default_root`].
pub fn default_home() -> PathBuf {
    std::env::var_os("MYCO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(default_root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_under_the_home() {
        let home = Path::new("/h");
        assert_eq!(models_dir(home), Path::new("/h/models"));
        assert_eq!(collections_dir(home), Path::new("/h/collections"));
        assert_eq!(
            collection_dir(home, "docs"),
            Path::new("/h/collections/docs")
        );
        assert_eq!(lib_dir(home), Path::new("/h/lib"));
    }
}
