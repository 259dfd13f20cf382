//! myco's node: its actors and the services on top of them.
//!
//! - [`node`]: the composition root ([`Node::start`], shutdown) and [`NodeHandle`], the
//!   narrow view everything above the actors uses.
//! - The actor tree: [`supervisor`] owns the [`coordinator`] (the queue's owner), the pool of
//!   [`worker`]s that pull work, the [`swarm`] side (membership, peers, stealing, a published
//!   view) and the [`pipeline`] stage host.
//! - On top: [`interactive`] requests (ahead of batch work, followed to their end), [`query`]
//!   over collections, and the HTTP API ([`http`]: jobs, swarm, metrics, OpenAI, SSE).
//!
//! Actors hold no durable state: leases, acks and retries live in the redb queue
//! (`myco-runtime`). Model work never runs inside an actor's `handle`.

pub mod budget;
pub mod collections;
pub mod coordinator;
pub mod features;
pub mod http;
pub mod interactive;
pub mod node;
#[cfg(feature = "pipeline")]
pub mod pipeline;
pub mod query;
pub mod streams;
pub mod supervisor;
pub mod swarm;
pub mod travel;
pub mod worker;

pub use node::handle::{ModelLookupError, NodeHandle, SpecSource, SubmitError};
pub use node::{Node, NodeError, Services};
