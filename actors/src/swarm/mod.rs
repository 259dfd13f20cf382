//! The swarm side of a node: [`membership`] (who is up, heartbeats, discovery, dialing),
//! the cluster port ([`listener`]), the [`peer`] service other nodes talk to and its
//! [`protocol`], the thief's side of work [`stealing`], and the [`view`] of the swarm that
//! Membership publishes for everyone else to read.

pub mod listener;
pub mod membership;
pub mod peer;
pub mod protocol;
pub mod stealing;
pub mod view;
