//! Every way a peer's frame is decoded: the first byte picks a `PeerMsg` variant, the rest
//! is its serialized arguments, decoded as a node decodes what arrives from the cluster
//! (ractor's `Message::deserialize`, then each `Wire<T>` inside). Nothing may panic or
//! allocate past the frame cap; an undecodable frame is an `Err` the node logs and drops.
#![no_main]

use libfuzzer_sys::fuzz_target;
use myco_actors::swarm::protocol::PeerMsg;
use ractor::Message;
use ractor::message::SerializedMessage;

const VARIANTS: [(&str, bool); 7] = [
    ("Heartbeat", false),
    ("Steal", true),
    ("Renew", true),
    ("Deliver", true),
    ("Ping", true),
    ("Stream", false),
    ("Stage", false),
];

/// Decoding a call spawns the task that converts its reply: a runtime, as a node has.
static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
});

fuzz_target!(|data: &[u8]| {
    let _rt = RUNTIME.enter();
    let Some((&pick, args)) = data.split_first() else {
        return;
    };
    let (variant, rpc) = VARIANTS[usize::from(pick) % VARIANTS.len()];
    let msg = if rpc {
        let (tx, _rx) = ractor::concurrency::oneshot();
        SerializedMessage::Call {
            variant: variant.to_owned(),
            args: args.to_vec(),
            reply: tx.into(),
            metadata: None,
        }
    } else {
        SerializedMessage::Cast {
            variant: variant.to_owned(),
            args: args.to_vec(),
            metadata: None,
        }
    };
    let _ = PeerMsg::deserialize(msg);
});
