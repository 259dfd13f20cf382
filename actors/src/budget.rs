//! A node's CPU budget ([`CpuBudget`]): the cores it uses, and who gets them when an
//! interactive request (an LLM request, a query's embedding) and batch work (an archive's
//! chunking and embedding) want them at once.
//!
//! The rule: interactive work takes every core of the budget, batch work yields.
//! - LLM requests decode with the budget's threads ([`CpuBudget::cores`]); batch workers
//!   share the same cores (ONNX Runtime gets `cores / workers` threads each, at least one),
//!   so the node never runs more compute threads than its cores.
//! - While interactive work runs, a batch worker pauses at its next item boundary (every
//!   kind polls its cancel flag between items: an embedding batch, a file), for at most
//!   [`MAX_PAUSE`] at a time so that a node busy with requests all day still makes progress.
//! - Batch worker threads (and the ONNX Runtime threads they start) run at the lowest CPU
//!   priority (nice 19), so the item already in flight when a request arrives takes what
//!   the request leaves.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The longest a batch worker waits for interactive work at one item boundary.
pub const MAX_PAUSE: Duration = Duration::from_secs(30);

/// A node's cores and the interactive work running on them. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct CpuBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cores: u32,
    /// Interactive jobs running now (read without the lock on the hot path).
    interactive: AtomicU32,
    lock: Mutex<()>,
    changed: Condvar,
}

impl CpuBudget {
    /// A budget of `cores` (at least one).
    pub fn new(cores: u32) -> CpuBudget {
        CpuBudget {
            inner: Arc::new(Inner {
                cores: cores.max(1),
                interactive: AtomicU32::new(0),
                lock: Mutex::new(()),
                changed: Condvar::new(),
            }),
        }
    }

    /// The cores of the budget: the threads an LLM request decodes with.
    pub fn cores(&self) -> u32 {
        self.inner.cores
    }

    /// ONNX Runtime threads for each of `workers` batch workers: their share of the cores.
    pub fn batch_threads(&self, workers: usize) -> usize {
        (self.inner.cores as usize / workers.max(1)).max(1)
    }

    /// Interactive jobs running now.
    pub fn interactive(&self) -> u32 {
        self.inner.interactive.load(Ordering::Acquire)
    }

    /// Interactive work starts; batch work yields until the guard is dropped.
    pub fn enter(&self) -> Interactive {
        self.inner.interactive.fetch_add(1, Ordering::AcqRel);
        Interactive {
            budget: self.clone(),
        }
    }

    /// Batch work at an item boundary: wait while interactive work runs, at most `max`.
    /// Returns how long it waited.
    pub fn yield_to_interactive(&self, max: Duration) -> Duration {
        if self.interactive() == 0 {
            return Duration::ZERO;
        }
        let started = Instant::now();
        let mut guard = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.interactive() > 0 {
            let left = max.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            guard = match self.inner.changed.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        started.elapsed()
    }
}

/// Interactive work running: dropping it lets batch work go on.
#[derive(Debug)]
pub struct Interactive {
    budget: CpuBudget,
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let inner = &self.budget.inner;
        inner.interactive.fetch_sub(1, Ordering::AcqRel);
        let _guard = inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        inner.changed.notify_all();
    }
}

/// Run the calling thread (and the threads it starts from now on) at the lowest CPU
/// priority: batch work takes only what interactive work leaves. Best effort: a system that
/// refuses it leaves the priority as it was.
pub fn lower_this_thread() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), 19) {
        tracing::debug!("cannot lower a batch worker's CPU priority: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_work_waits_for_interactive_work_and_no_longer() {
        let budget = CpuBudget::new(2);
        assert_eq!(budget.yield_to_interactive(MAX_PAUSE), Duration::ZERO);
        let guard = budget.enter();
        // Bounded: nothing ends the interactive work, so the wait is the bound.
        let waited = budget.yield_to_interactive(Duration::from_millis(50));
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        let b = budget.clone();
        let waiter = std::thread::spawn(move || b.yield_to_interactive(MAX_PAUSE));
        std::thread::sleep(Duration::from_millis(50));
        drop(guard);
        let waited = waiter.join().unwrap_or(MAX_PAUSE);
        assert!(
            waited < MAX_PAUSE,
            "the end of interactive work woke the waiter"
        );
        assert_eq!(budget.interactive(), 0);
    }

    #[test]
    fn batch_threads_share_the_cores() {
        assert_eq!(CpuBudget::new(8).batch_threads(2), 4);
        assert_eq!(CpuBudget::new(2).batch_threads(4), 1);
        assert_eq!(CpuBudget::new(0).cores(), 1);
    }
}
