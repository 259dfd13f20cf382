//! The jobs a node is running right now, in a small file in its home (`running`, one job id
//! a line), so that after the node dies (killed for memory, a crash) the next start knows
//! which jobs were *running* when it died, not merely leased (prefetched) by it. A job that
//! was running when its node died twice is not leased again blindly: it goes dead with the
//! reason (see [`crate::queue::QueueOptions::running`]).
//!
//! The file is rewritten (not synced) at each start and end of a job: it must survive the
//! process dying, which the page cache sees to; a power cut may lose it, and then the jobs
//! are only leased again, as before.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::queue::JobId;

/// The running file of a node.
#[derive(Debug)]
pub struct Running {
    path: PathBuf,
    ids: Mutex<BTreeSet<JobId>>,
}

impl Running {
    /// The jobs the file at `path` holds (those running when the node last stopped without
    /// finishing them). Read before the queue opens; [`Running::create`] empties it once the
    /// queue is this process's (another node on the same home must not empty it).
    pub fn read(path: &Path) -> Vec<JobId> {
        std::fs::read_to_string(path)
            .map(|t| {
                t.lines()
                    .filter_map(|l| JobId::from_string(l.trim()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The file at `path`, emptied: nothing runs yet.
    pub fn create(path: &Path) -> Running {
        let running = Running {
            path: path.to_path_buf(),
            ids: Mutex::new(BTreeSet::new()),
        };
        running.write(&BTreeSet::new());
        running
    }

    /// Job `id` starts running here.
    pub fn start(&self, id: JobId) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.insert(id);
        self.write(&ids);
    }

    /// Job `id` has stopped running here (done, failed or handed back).
    pub fn end(&self, id: JobId) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.remove(&id) {
            self.write(&ids);
        }
    }

    fn write(&self, ids: &BTreeSet<JobId>) {
        let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
        if let Err(e) = crate::private_file::write_private(&self.path, &text) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the running file");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn what_was_running_is_read_back_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("running");
        assert!(Running::read(&path).is_empty());
        let r = Running::create(&path);
        let (a, b) = (JobId::new(), JobId::new());
        r.start(a);
        r.start(b);
        r.end(a);
        drop(r);
        assert_eq!(Running::read(&path), vec![b]);
        Running::create(&path);
        assert!(Running::read(&path).is_empty(), "emptied");
    }
}
