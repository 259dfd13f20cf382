//! The collections a node has opened for queries, kept per node (not per process: two nodes
//! in one process keep their own) and opened again when a run changes them on disk.
//!
//! Blocking file reads only, for callers off the async threads; no queries run here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use myco_jobs::collection::{Collection, CollectionError};

/// An open collection and the `updated_ms` it was opened at.
type Opened = (u64, Arc<Collection>);

/// A node's open collections, by directory. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Collections {
    open: Arc<Mutex<HashMap<PathBuf, Opened>>>,
}

impl Collections {
    /// The collection in `dir`, whose `collection.json` says it was last updated at
    /// `updated_ms`: the one already open unless it changed since.
    pub fn get(&self, dir: &Path, updated_ms: u64) -> Result<Arc<Collection>, CollectionError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((updated, c)) = open.get(dir)
            && *updated == updated_ms
        {
            return Ok(c.clone());
        }
        let c = Arc::new(Collection::open(dir)?);
        open.insert(dir.to_path_buf(), (c.meta.updated_ms, c.clone()));
        Ok(c)
    }

    /// Closes the collection in `dir` (after it was removed): its memory goes with the last
    /// query still holding it.
    pub fn forget(&self, dir: &Path) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(dir);
    }
}
