//! myco's actors and the node that wires them: the [`supervisor::NodeSupervisor`] owning a
//! [`coordinator::Coordinator`] (the queue's owner) and a pool of [`worker::Worker`]s that
//! pull work, plus the node's HTTP API ([`api`]).
//!
//! Actors hold no durable state: leases, acks and retries live in the redb queue
//! (`myco-runtime`). Model work never runs inside an actor's `handle`.

pub mod api;
pub mod coordinator;
pub mod infer;
pub mod listener;
pub mod membership;
pub mod node;
pub mod openai;
pub mod peer;
pub mod pipeline;
pub mod query;
pub mod sse;
pub mod stages;
pub mod stealing;
pub mod streams;
pub mod supervisor;
pub mod worker;

pub use node::{Node, NodeError, NodeHandle, Services, SpecSource, SubmitError};
