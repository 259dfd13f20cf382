//! The queue's errors, in three classes ([`ErrorClass`]): refusals are the caller's fault
//! and final; storage errors are the node's, nothing of the operation was committed, and the
//! same operation may succeed later; internal errors are bugs or a queue going away.
//!
//! The writer passes the real cause of a failed commit to every operation of that commit
//! (a storage error stays a storage error), so a caller can tell "refused for good" from
//! "not recorded yet": a peer's delivery is acknowledged only in the first case.

use std::path::PathBuf;
use std::sync::Arc;

use super::record::JobId;

/// Errors from the queue. See [`QueueError::class`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// Refused: another process holds the file.
    #[error(
        "the queue at {0} is in use by another myco process; stop it, or use `myco submit` to talk to the running node, or pick another --home"
    )]
    Locked(PathBuf),
    /// Refused: no such job.
    #[error("no job {0}")]
    NotFound(JobId),
    /// Refused: the operation cannot apply (a job in the wrong state, a bad argument).
    #[error("{0}")]
    Invalid(String),
    /// The node's storage failed (a full disk, an I/O error): the operation was not
    /// committed. Retrying may succeed.
    #[error("queue storage error: {0}")]
    Storage(StorageError),
    /// Refused: an idempotency key already names a different job (409).
    #[error("{0}")]
    Conflict(String),
    /// A record (or the whole file) is of a format this build does not read: written by a
    /// newer myco, or one too old.
    #[error("{0}")]
    Format(#[from] crate::format::FormatError),
    /// The file holds a record this build cannot read.
    #[error("the queue holds a record it cannot read ({0}); restore from backup or report a bug")]
    Corrupt(String),
    /// The queue's own machinery failed (a thread that could not start, a task that
    /// panicked).
    #[error("internal queue error: {0}")]
    Internal(String),
    /// The queue is shut down (the node is stopping).
    #[error("the queue is shut down")]
    Closed,
}

/// What kind of failure a [`QueueError`] is, for whoever decides what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The caller's fault: the same request will be refused again.
    Refused,
    /// The node's storage: nothing was committed; retry later (503 on the API).
    Storage,
    /// A bug, corruption, or a queue that is going away.
    Internal,
}

impl QueueError {
    pub fn class(&self) -> ErrorClass {
        match self {
            QueueError::Locked(_)
            | QueueError::NotFound(_)
            | QueueError::Invalid(_)
            | QueueError::Conflict(_) => ErrorClass::Refused,
            QueueError::Storage(_) => ErrorClass::Storage,
            QueueError::Corrupt(_)
            | QueueError::Format(_)
            | QueueError::Internal(_)
            | QueueError::Closed => ErrorClass::Internal,
        }
    }

    /// Refused for good: retrying the same operation cannot succeed.
    pub fn is_refusal(&self) -> bool {
        self.class() == ErrorClass::Refused
    }

    /// Whether this error leaves the store unusable for the rest of a transaction (the
    /// writer then fails the whole commit with it).
    pub(super) fn poisons(&self) -> bool {
        matches!(self, QueueError::Storage(_) | QueueError::Corrupt(_))
    }
}

/// A storage error from redb, shared by every operation of the commit it failed (hence
/// the `Arc`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StorageError(Arc<redb::Error>);

impl StorageError {
    pub fn redb(&self) -> &redb::Error {
        &self.0
    }

    pub(super) fn other(message: &str) -> StorageError {
        StorageError(Arc::new(redb::Error::Io(std::io::Error::other(message))))
    }

    /// redb refuses every operation after an I/O error until the file is reopened.
    pub(super) fn needs_reopen(&self) -> bool {
        matches!(&*self.0, redb::Error::Io(_) | redb::Error::PreviousIo)
    }

    /// The disk is full (or over quota).
    pub fn is_disk_full(&self) -> bool {
        match &*self.0 {
            redb::Error::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }
}

impl From<redb::Error> for QueueError {
    fn from(e: redb::Error) -> Self {
        QueueError::Storage(StorageError(Arc::new(e)))
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for QueueError {
            fn from(e: $t) -> Self {
                QueueError::from(redb::Error::from(e))
            }
        }
    )*};
}
storage_from!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError,
    std::io::Error
);
