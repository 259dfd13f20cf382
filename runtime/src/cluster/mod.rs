//! Cluster building blocks: the swarm secret and TLS ([`secret`]), and the wire types nodes
//! exchange ([`wire`]). The actors that use them live in `myco-actors`.

pub mod discovery;
pub mod secret;
pub mod transfer;
pub mod wire;
