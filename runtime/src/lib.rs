//! myco's pure building blocks: the node's home directory and config ([`config`]), capability
//! detection ([`detect`]), who may use the API and what its jobs may read ([`access`]), and
//! the durable redb job queue ([`queue`]).
//!
//! No actors and no HTTP here: those live in `myco-actors`, which builds on this crate.

pub mod access;
pub mod config;
pub mod detect;
pub mod format;
pub mod models;
pub mod plan;
pub mod private_file;
pub mod queue;
pub mod running;

pub use queue::{JobId, Queue, QueueError, QueueOptions};
pub mod cluster;
