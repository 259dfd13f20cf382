//! The queue's errors: storage and corruption are the node's problem, the others the
//! caller's.

use std::path::PathBuf;

use super::record::JobId;

/// Errors from the queue. Storage and corruption errors are the node's problem, the others
/// the caller's.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "the queue at {0} is in use by another myco process; stop it, or use `myco submit` to talk to the running node, or pick another --home"
    )]
    Locked(PathBuf),
    #[error("no job {0}")]
    NotFound(JobId),
    #[error("{0}")]
    Invalid(String),
    #[error("queue storage error: {0}")]
    Storage(#[from] redb::Error),
    #[error("the queue holds a record it cannot read ({0}); restore from backup or report a bug")]
    Corrupt(String),
    #[error("the queue is shut down")]
    Closed,
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for QueueError {
            fn from(e: $t) -> Self {
                QueueError::Storage(e.into())
            }
        }
    )*};
}
storage_from!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError
);
