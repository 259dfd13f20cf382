//! The messages nodes send each other: [`PeerMsg`], the one actor type of a node that peers
//! talk to (its PeerService, in [`super::peer`]), and the process group that finds it.
//!
//! Every payload is a [`Wire`] frame (bincode, versioned), so a peer on another version is
//! told apart from a broken one. Nothing here has behaviour: it is the contract between
//! nodes, kept apart so that the actors sending frames do not depend on the one receiving.

use myco_runtime::cluster::wire::{
    Delivery, DeliveryAck, HeartbeatFrame, RenewReply, RenewRequest, StageFrame, StealGrant,
    StealRequest, StreamFrame, Wire,
};
use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;

/// The process group every node's PeerService joins.
pub const PEERS_GROUP: &str = "myco.peers";

/// Messages between nodes. Every payload is a [`Wire`] frame: one that fails to decode is
/// logged and dropped.
#[derive(RactorClusterMessage)]
pub enum PeerMsg {
    /// "I am alive, this is me, and these are the protocols I speak" (every second).
    Heartbeat(HeartbeatFrame),
    /// A thief asks for work; the reply holds the jobs durably leased to it.
    #[rpc]
    Steal(Wire<StealRequest>, RpcReplyPort<Wire<StealGrant>>),
    /// A thief extends its leases.
    #[rpc]
    Renew(Wire<RenewRequest>, RpcReplyPort<Wire<RenewReply>>),
    /// A thief hands back finished work; the reply lists what the owner has settled.
    #[rpc]
    Deliver(Wire<Delivery>, RpcReplyPort<Wire<DeliveryAck>>),
    /// Echo: measures the round trip of a call (for `myco bench steal`).
    #[rpc]
    Ping(Wire<u64>, RpcReplyPort<Wire<u64>>),
    /// A thief streams output of a job of ours (tokens) for our clients.
    Stream(Wire<StreamFrame>),
    /// The stage chain of pipeline jobs (see `stages`).
    Stage(Wire<StageFrame>),
}

impl std::fmt::Debug for PeerMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerMsg::Heartbeat(_) => "Heartbeat",
            PeerMsg::Steal(..) => "Steal",
            PeerMsg::Renew(..) => "Renew",
            PeerMsg::Deliver(..) => "Deliver",
            PeerMsg::Ping(..) => "Ping",
            PeerMsg::Stream(_) => "Stream",
            PeerMsg::Stage(_) => "Stage",
        })
    }
}
