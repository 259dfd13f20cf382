//! The classified job error: [`JobError`] with its [`ErrorClass`] (retryable or fatal), and
//! the conversions from the executors' own errors.
//!
//! A leaf of the crate: it must not know about tasks, specs or executors.

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkError;

/// Whether a failed attempt is worth repeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// Transient: the queue retries with backoff until `max_attempts`.
    Retryable,
    /// The input or spec is wrong: retrying cannot help, the job is dead at once.
    Fatal,
}

/// A failed attempt, classified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub class: ErrorClass,
    pub message: String,
}

impl JobError {
    pub fn retryable(message: impl Into<String>) -> Self {
        JobError {
            class: ErrorClass::Retryable,
            message: message.into(),
        }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        JobError {
            class: ErrorClass::Fatal,
            message: message.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class == ErrorClass::Retryable
    }
}

impl From<ChunkError> for JobError {
    fn from(e: ChunkError) -> Self {
        if e.is_retryable() {
            JobError::retryable(e.to_string())
        } else {
            JobError::fatal(e.to_string())
        }
    }
}
