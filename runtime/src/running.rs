//! The jobs a node is running right now, in a small file in its home (`running`: a job id
//! and the system's count of out-of-memory kills when it started, a line each), so that
//! after the node dies the next start knows which jobs were *running* (not merely leased)
//! and whether the kernel killed something for memory meanwhile (`oom_kill` in
//! `/proc/vmstat`, which counts the kills of cgroups' OOM killers too). A job that was
//! running when its node was killed for memory twice is not leased again blindly: it goes
//! dead with the reason (see [`crate::queue::QueueOptions::oom_killed`]). A node killed
//! otherwise (kill -9, a crash) only hands its jobs back, as before.
//!
//! The file is rewritten (not synced) at each start and end of a job: it must survive the
//! process dying, which the page cache sees to; a power cut may lose it, and then the jobs
//! are only leased again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::queue::JobId;

/// For tests: read the count of out-of-memory kills from this file instead of
/// `/proc/vmstat` (a test cannot make the kernel kill a node for memory safely).
pub const FAULT_OOM_KILLS_ENV: &str = "MYCO_FAULT_OOM_KILLS";

/// The system's count of out-of-memory kills so far, if it can be read.
pub fn oom_kills() -> Option<u64> {
    if let Some(path) = std::env::var_os(FAULT_OOM_KILLS_ENV) {
        return std::fs::read_to_string(path).ok()?.trim().parse().ok();
    }
    let vmstat = std::fs::read_to_string("/proc/vmstat").ok()?;
    vmstat
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// The running file of a node.
#[derive(Debug)]
pub struct Running {
    path: PathBuf,
    /// Each running job, with the OOM kill count when it started.
    ids: Mutex<BTreeMap<JobId, u64>>,
}

impl Running {
    /// The jobs the file at `path` holds (those running when the node last stopped without
    /// finishing them), each with the OOM kill count when it started. Read before the queue
    /// opens; [`Running::create`] empties it once the queue is this process's (another node
    /// on the same home must not empty it).
    pub fn read(path: &Path) -> Vec<(JobId, u64)> {
        std::fs::read_to_string(path)
            .map(|t| {
                t.lines()
                    .filter_map(|l| {
                        let mut parts = l.split_whitespace();
                        let id = JobId::from_string(parts.next()?).ok()?;
                        let kills = parts.next()?.parse().ok()?;
                        Some((id, kills))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Of the jobs [`Running::read`] found, those the node was running when the kernel
    /// killed something for memory (most likely the node: it died with them).
    pub fn killed_for_memory(before: &[(JobId, u64)]) -> Vec<JobId> {
        oom_kills().map_or_else(Vec::new, |now| Running::killed_by(before, now))
    }

    /// [`Running::killed_for_memory`] with the count of kills now given.
    fn killed_by(before: &[(JobId, u64)], now: u64) -> Vec<JobId> {
        before
            .iter()
            .filter(|(_, at_start)| now > *at_start)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The file at `path`, emptied: nothing runs yet.
    pub fn create(path: &Path) -> Running {
        let running = Running {
            path: path.to_path_buf(),
            ids: Mutex::new(BTreeMap::new()),
        };
        running.write(&BTreeMap::new());
        running
    }

    /// Job `id` starts running here.
    pub fn start(&self, id: JobId) {
        let kills = oom_kills().unwrap_or(u64::MAX);
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.insert(id, kills);
        self.write(&ids);
    }

    /// Job `id` has stopped running here (done, failed or handed back).
    pub fn end(&self, id: JobId) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.remove(&id).is_some() {
            self.write(&ids);
        }
    }

    fn write(&self, ids: &BTreeMap<JobId, u64>) {
        let text: String = ids.iter().map(|(id, k)| format!("{id} {k}\n")).collect();
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
    fn what_was_running_is_read_back_with_the_oom_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("running");
        assert!(Running::read(&path).is_empty());
        let r = Running::create(&path);
        let (a, b) = (JobId::new(), JobId::new());
        r.start(a);
        r.start(b);
        r.end(a);
        drop(r);
        let before = Running::read(&path);
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].0, b);
        // Killed for memory only if the count grew since the job started.
        let at_start = before[0].1;
        assert!(Running::killed_by(&before, at_start).is_empty());
        assert_eq!(Running::killed_by(&before, at_start + 1), vec![b]);
        Running::create(&path);
        assert!(Running::read(&path).is_empty(), "emptied");
    }
}
