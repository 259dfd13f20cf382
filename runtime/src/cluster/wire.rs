//! What nodes say to each other: heartbeats with capabilities, steal requests and grants,
//! lease renewals, and result deliveries. Encoded with bincode (serde), versioned by
//! [`PROTOCOL`].
//!
//! Every payload travels as [`Wire<T>`]: decoding never panics, a frame that does not decode
//! arrives as `Err` and the receiver logs and drops it. No I/O here.

use myco_jobs::{JobError, JobKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::detect::Capabilities;
use crate::queue::{JobId, Lease};

/// Bumped whenever a wire type changes shape; nodes refuse heartbeats of another version.
pub const PROTOCOL: u32 = 4;

/// The largest frame a node decodes (a delivery of results, a stage's activations). A
/// bigger one is refused before anything is decoded, and no length inside a frame may claim
/// more than this either, so a hostile or broken frame cannot make the decoder allocate
/// past it.
pub const MAX_FRAME: usize = 256 << 20;

/// A payload that may have failed to decode.
#[derive(Debug, Clone, PartialEq)]
pub struct Wire<T>(pub Result<T, String>);

impl<T> Wire<T> {
    pub fn new(value: T) -> Wire<T> {
        Wire(Ok(value))
    }
}

impl<T: Serialize + DeserializeOwned> ractor::BytesConvertable for Wire<T> {
    fn into_bytes(self) -> Vec<u8> {
        match self.0 {
            Ok(v) => {
                bincode::serde::encode_to_vec(&v, bincode::config::standard()).unwrap_or_default()
            }
            Err(_) => Vec::new(),
        }
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        if bytes.len() > MAX_FRAME {
            return Wire(Err(format!(
                "a frame of {} bytes is over the {MAX_FRAME}-byte cap",
                bytes.len()
            )));
        }
        let config = bincode::config::standard().with_limit::<MAX_FRAME>();
        Wire(
            bincode::serde::decode_from_slice(&bytes, config)
                .map(|(v, _)| v)
                .map_err(|e| format!("undecodable frame of {} bytes: {e}", bytes.len())),
        )
    }
}

/// A node's roles, which follow its capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds a queue (every node).
    Coordinator,
    /// Runs CPU jobs (nodes with spare cores).
    Worker,
    /// Hosts models on a GPU.
    Executive,
}

/// How busy a node is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Jobs waiting in this node's own queue (what a thief may take).
    pub queued: u64,
    /// Jobs running on its workers (its own and stolen).
    pub running: u32,
    /// Executor slots in all.
    pub slots: u32,
}

impl NodeLoad {
    pub fn free_slots(&self) -> u32 {
        self.slots.saturating_sub(self.running)
    }
}

/// What a node advertises in every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub protocol: u32,
    pub version: String,
    /// Where it accepts cluster connections (`host:port`).
    pub cluster_addr: String,
    /// Its HTTP API, if it serves one.
    pub api_addr: Option<String>,
    pub roles: Vec<Role>,
    pub caps: Capabilities,
    /// Model files it holds (name, format, size, architecture from the header).
    pub models: Vec<crate::models::ModelFile>,
    pub kinds: Vec<JobKind>,
    pub load: NodeLoad,
    /// Memory it offers to model stages (in a GPU build, the first GPU's free VRAM and free
    /// RAM; capped by `--stage-memory`).
    pub stage_memory: u64,
    /// Of `stage_memory`, the part on its GPU (capped by `--gpu-memory`).
    pub stage_gpu_memory: u64,
    /// The peers it is connected to, as `(name, cluster address)`: a node that joined
    /// through one member dials the rest (gossip), so `--join` needs one address.
    pub peers: Vec<(String, String)>,
    /// The layer-range stages it has loaded now (protocol 4 on).
    #[serde(default)]
    pub stages: Vec<HostedStage>,
}

/// A loaded stage of a pipeline model, as a node advertises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostedStage {
    /// The model file's name.
    pub model: String,
    pub first: u32,
    /// Exclusive.
    pub end: u32,
    /// Pipeline runs using it now.
    pub runs: u32,
}

/// "I am alive, and this is me."
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub seq: u64,
    pub sent_ms: u64,
    pub info: NodeInfo,
}

/// A thief asks a victim for work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StealRequest {
    /// The lease holder name of the thief (`name#incarnation`).
    pub holder: String,
    /// What it can run: its kinds and the models it holds.
    pub fit: myco_jobs::Fit,
    /// The most jobs it wants.
    pub max: u32,
    pub lease_ms: u64,
}

/// The victim's answer: the jobs it durably leased to the thief (maybe none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StealGrant {
    pub owner: String,
    pub leases: Vec<Lease>,
}

/// A thief extends its leases at the owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub holder: String,
    /// Every lease the thief holds from this owner: the owner queues again the thief's
    /// older leases missing here (grants that never arrived).
    pub leases: Vec<(JobId, u64)>,
    pub lease_ms: u64,
}

/// The leases the thief no longer holds (expired, cancelled, finished).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewReply {
    pub lost: Vec<JobId>,
}

/// The end of one attempt at a stolen job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub id: JobId,
    pub token: u64,
    pub result: Result<Vec<u8>, JobError>,
}

/// A thief hands finished work back to the owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub from: String,
    pub outcomes: Vec<Outcome>,
}

/// The owner has durably recorded (or knowingly dropped) these: the thief may forget them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAck {
    pub settled: Vec<JobId>,
}

/// A piece of a running job's streamed output (an LLM token and the text it completes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPiece {
    /// The run that produced it (its lease token): a job run again (a retry, or a lease lost
    /// with its node) streams again from the start.
    pub run: u64,
    /// The token id; `None` for text released at the end of the generation.
    pub token: Option<i32>,
    pub text: String,
}

/// A thief streams a stolen job's output to the job's owner, where clients wait for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamFrame {
    pub id: JobId,
    pub pieces: Vec<StreamPiece>,
}

/// One run of a pipeline job: the job and the run id its runner picked (a new one each time
/// the stages are placed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeqKey {
    pub job: JobId,
    pub run: u64,
}

/// How the last stage picks tokens (llama.cpp's sampler chain, as `infer` builds it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// 0: greedy.
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub seed: u32,
    /// Tokens generated before this placement (a resumed run): the repeat penalty counts
    /// them, as it did the first time.
    pub generated: Vec<u32>,
}

/// The runner asks a node to host one stage of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageOpen {
    pub key: SeqKey,
    pub index: u32,
    /// The model file: its name in the node's models directory, and its size.
    pub model: String,
    pub size: u64,
    pub first: u32,
    /// Exclusive.
    pub end: u32,
    pub n_ctx: u32,
    /// llama.cpp threads for this run's stage (0: every core of the node).
    pub threads: u32,
    /// The node of the next stage; `None` for the last stage.
    pub next: Option<String>,
    /// The node of stage 0, where sampled tokens go (the ring).
    pub ring: String,
    /// The node running the job, which gets every token and every report.
    pub runner: String,
    pub sampling: Sampling,
    /// Tokens still to generate (the last stage stops there).
    pub max_tokens: u32,
    /// Tokens that end generation.
    pub eog: Vec<u32>,
}

/// Frames of the stage chain. Hidden states travel as f32 (4 bytes a value): stages then
/// compute bit for bit what one node with every layer computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StageFrame {
    /// Runner → each stage's node: load (or reuse) the stage and start a sequence.
    Open(Box<StageOpen>),
    /// A stage → the runner: loaded (or why not).
    Opened {
        key: SeqKey,
        index: u32,
        node: String,
        result: Result<StageLoaded, String>,
    },
    /// Token ids at positions `pos..` → stage 0 (a chunk of the prompt from the runner, or a
    /// sampled token from the last stage). The last stage samples after it if `sample` (the
    /// prompt's last chunk, and every generated token).
    Feed {
        key: SeqKey,
        pos: u32,
        tokens: Vec<u32>,
        sample: bool,
        /// The runner is on stage 0's node: it learns the sampled token from this frame
        /// (one frame a token instead of two).
        report: bool,
    },
    /// Stage i → stage i+1: `n_tok × n_embd` hidden states for positions `pos..`.
    Hidden {
        key: SeqKey,
        pos: u32,
        data: Vec<f32>,
        sample: bool,
    },
    /// The last stage → the runner: a sampled token; `last` when generation ends with it
    /// (an end-of-generation token, `max_tokens` or a full context).
    Token {
        key: SeqKey,
        token: u32,
        eog: bool,
        last: bool,
    },
    /// A stage → the runner: it cannot go on.
    Failed {
        key: SeqKey,
        node: String,
        why: String,
        /// The node it could not reach, if that is why.
        unreachable: Option<String>,
        /// Running it again cannot help (the input is wrong, not the swarm).
        fatal: bool,
    },
    /// Runner → every stage: the run is over; free its KV caches.
    Close { key: SeqKey },
}

impl StageFrame {
    /// The run the frame belongs to.
    pub fn key(&self) -> SeqKey {
        match self {
            StageFrame::Open(o) => o.key,
            StageFrame::Opened { key, .. }
            | StageFrame::Feed { key, .. }
            | StageFrame::Hidden { key, .. }
            | StageFrame::Token { key, .. }
            | StageFrame::Failed { key, .. }
            | StageFrame::Close { key } => *key,
        }
    }
}

/// What a stage loaded: the tensors it read from the model file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageLoaded {
    pub tensor_bytes: u64,
    pub tensors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use ractor::BytesConvertable;

    use super::*;

    #[test]
    fn round_trip_and_garbage_is_an_error_not_a_panic() {
        let req = StealRequest {
            holder: "a#1".into(),
            fit: myco_jobs::Fit::local(&[JobKind::Noop]),
            max: 4,
            lease_ms: 30_000,
        };
        let bytes = Wire::new(req.clone()).into_bytes();
        assert_eq!(Wire::<StealRequest>::from_bytes(bytes).0, Ok(req));
        let bad = Wire::<StealRequest>::from_bytes(vec![0xff; 3]);
        assert!(bad.0.is_err());
    }
}
