//! What nodes say to each other: heartbeats with capabilities, steal requests and grants,
//! lease renewals, and result deliveries. Encoded with bincode (serde) in the versioned
//! envelope of [`crate::format`], under a protocol version.
//!
//! Versions: a node speaks the protocols [`oldest_protocol`]`..=`[`protocol`] (this build:
//! [`OLDEST_PROTOCOL`] to [`PROTOCOL`]). It reads every frame in that range and writes every
//! frame at one version, [`speaking`]: its newest, lowered to the newest its peers all
//! speak (membership sets it from their heartbeats and hellos). A heartbeat starts with a
//! [`Hello`] that stays the same in every version (name and range), so any node can read who
//! a peer is and which versions it speaks, and says why not when the two share none. So a swarm upgrades one node at a time while each release keeps reading the
//! one before it (a release that changes a wire type bumps [`PROTOCOL`] and keeps the old
//! shape's decoder at the old version); see ARCHITECTURE.md.
//!
//! Decoding never panics: a frame that does not decode (or is of a version this node does
//! not speak) arrives as `Err`, and the receiver logs and drops it. No I/O here.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};

use myco_jobs::{JobError, JobKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::detect::Capabilities;
use crate::format;
use crate::queue::{JobId, Lease};

/// The newest protocol this build speaks. 5: frames carry the versioned envelope. 6: a
/// heartbeat's models carry their content hash ([`v5`] keeps the shape before).
pub const PROTOCOL: u32 = 6;
/// The oldest protocol this build reads and writes. 4 and older sent bare bincode (no
/// envelope): a node before 5 is told apart and named, but not spoken to.
pub const OLDEST_PROTOCOL: u32 = 5;
/// The last protocol without the envelope.
pub const BARE_PROTOCOL: u16 = 4;

/// For tests of mixed versions: `MYCO_TEST_PROTOCOL=OLDEST..NEWEST` makes this process speak
/// those protocols instead (the frames keep this build's shapes).
pub const TEST_PROTOCOL_ENV: &str = "MYCO_TEST_PROTOCOL";

fn range() -> (u16, u16) {
    static RANGE: OnceLock<(u16, u16)> = OnceLock::new();
    *RANGE.get_or_init(|| {
        let own = (OLDEST_PROTOCOL as u16, PROTOCOL as u16);
        let Ok(v) = std::env::var(TEST_PROTOCOL_ENV) else {
            return own;
        };
        let parsed = v.split_once("..").and_then(|(a, b)| {
            let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
            (a <= b && a > BARE_PROTOCOL).then_some((a, b))
        });
        parsed.unwrap_or_else(|| {
            tracing::warn!(value = %v, "{TEST_PROTOCOL_ENV} is not OLDEST..NEWEST (above {BARE_PROTOCOL}): ignored");
            own
        })
    })
}

/// The oldest protocol this node speaks.
pub fn oldest_protocol() -> u16 {
    range().0
}

/// The newest protocol this node speaks (what its heartbeats advertise).
pub fn protocol() -> u16 {
    range().1
}

/// 0: not lowered (speak the newest).
static SPEAKING: AtomicU16 = AtomicU16::new(0);

/// The protocol this node writes frames at now.
pub fn speaking() -> u16 {
    match SPEAKING.load(Ordering::Relaxed) {
        0 => protocol(),
        v => v,
    }
}

/// Write at the newest protocol that this node and every peer in `peers_newest` speak (never
/// below this node's oldest). Returns the version now spoken.
pub fn speak_with(peers_newest: impl IntoIterator<Item = u16>) -> u16 {
    let v = peers_newest
        .into_iter()
        .fold(protocol(), u16::min)
        .max(oldest_protocol());
    SPEAKING.store(v, Ordering::Relaxed);
    v
}

/// Whether this node reads frames of protocol `v`.
fn speaks(v: u16) -> bool {
    (oldest_protocol()..=protocol()).contains(&v)
}

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

/// `value` at the protocol this node speaks now.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    format::encode(speaking(), value).unwrap_or_default()
}

/// A frame of any protocol this node speaks.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() > MAX_FRAME {
        return Err(format!(
            "a frame of {} bytes is over the {MAX_FRAME}-byte cap",
            bytes.len()
        ));
    }
    let (version, body) = format::split(bytes);
    let version = if version == format::UNVERSIONED {
        BARE_PROTOCOL
    } else {
        version
    };
    if !speaks(version) {
        return Err(format!(
            "a frame of protocol {version}, and this node speaks {} to {}: {}",
            oldest_protocol(),
            protocol(),
            if version > protocol() {
                "upgrade this node to the sender's myco"
            } else {
                "upgrade the sender to this node's myco"
            }
        ));
    }
    format::decode_body::<T, MAX_FRAME>("a frame", version, body)
        .map_err(|e| format!("undecodable frame of {} bytes: {e}", bytes.len()))
}

impl<T: Serialize + DeserializeOwned> ractor::BytesConvertable for Wire<T> {
    fn into_bytes(self) -> Vec<u8> {
        match self.0 {
            Ok(v) => encode(&v),
            Err(_) => Vec::new(),
        }
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        Wire(decode(&bytes))
    }
}

/// Who a heartbeat is from and which protocols it speaks: the start of every heartbeat, the
/// same in every protocol from 5 on, so that nodes that share no protocol can still say so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub name: String,
    pub oldest: u16,
    pub newest: u16,
}

impl Hello {
    /// This node's hello.
    pub fn mine(name: &str) -> Hello {
        Hello {
            name: name.to_owned(),
            oldest: oldest_protocol(),
            newest: protocol(),
        }
    }

    /// Whether this node and the sender share a protocol (the one that speaks the newer
    /// comes down to it once it hears the other).
    pub fn shares(&self) -> bool {
        self.oldest <= protocol() && oldest_protocol() <= self.newest
    }

    /// Why this node and the sender cannot talk.
    pub fn why_not(&self) -> String {
        let (oldest, newest) = (oldest_protocol(), protocol());
        let upgrade = if self.oldest > newest {
            "upgrade this node to its myco".to_owned()
        } else {
            format!("upgrade `{}` to this node's myco", self.name)
        };
        format!(
            "node `{}` speaks protocols {} to {}, this node {oldest} to {newest}: {upgrade}",
            self.name, self.oldest, self.newest
        )
    }
}

/// A heartbeat as it travels: the tag and the protocol the sender speaks now, its
/// [`Hello`], then the [`Heartbeat`] at that protocol. `Err` holds the hello of a node whose
/// heartbeat this one cannot read (it shares no protocol with it, or has not yet come down
/// to one they share), or for a node from before protocol 5, what could be read of it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatFrame(pub Result<Box<Heartbeat>, Refused>);

/// A heartbeat this node cannot take.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// A node that shares no protocol with this one.
    Incompatible(Hello),
    /// Not a heartbeat any protocol reads.
    Garbled(String),
}

impl HeartbeatFrame {
    pub fn new(hb: Heartbeat) -> HeartbeatFrame {
        HeartbeatFrame(Ok(Box::new(hb)))
    }
}

impl ractor::BytesConvertable for HeartbeatFrame {
    fn into_bytes(self) -> Vec<u8> {
        let Ok(hb) = self.0 else {
            return Vec::new();
        };
        let hello = Hello::mine(&hb.info.name);
        let version = speaking();
        let mut out = format::header(version, 0);
        let config = bincode::config::standard();
        let body = if version <= 5 {
            bincode::serde::encode_to_vec(v5::Heartbeat::from(&*hb), config)
        } else {
            bincode::serde::encode_to_vec(&*hb, config)
        };
        match (bincode::serde::encode_to_vec(&hello, config), body) {
            (Ok(a), Ok(b)) => {
                out.extend(a);
                out.extend(b);
                out
            }
            _ => Vec::new(),
        }
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        HeartbeatFrame(read_heartbeat(&bytes))
    }
}

fn read_heartbeat(bytes: &[u8]) -> Result<Box<Heartbeat>, Refused> {
    if bytes.len() > MAX_FRAME {
        return Err(Refused::Garbled(format!(
            "a heartbeat of {} bytes",
            bytes.len()
        )));
    }
    let config = bincode::config::standard().with_limit::<MAX_FRAME>();
    let (version, body) = format::split(bytes);
    if version == format::UNVERSIONED {
        // Before protocol 5: bare bincode of the heartbeat, of the shape it still has.
        return match bincode::serde::decode_from_slice::<Heartbeat, _>(body, config) {
            Ok((hb, _)) => Err(Refused::Incompatible(Hello {
                name: hb.info.name,
                oldest: BARE_PROTOCOL,
                newest: u16::try_from(hb.info.protocol).unwrap_or(BARE_PROTOCOL),
            })),
            Err(e) => Err(Refused::Garbled(format!("an unversioned heartbeat: {e}"))),
        };
    }
    let (hello, used): (Hello, usize) = bincode::serde::decode_from_slice(body, config)
        .map_err(|e| Refused::Garbled(format!("a heartbeat's hello: {e}")))?;
    if !speaks(version) {
        return Err(Refused::Incompatible(hello));
    }
    let decoded = if version <= 5 {
        bincode::serde::decode_from_slice::<v5::Heartbeat, _>(&body[used..], config)
            .map(|(hb, n)| (Heartbeat::from(hb), n))
    } else {
        bincode::serde::decode_from_slice::<Heartbeat, _>(&body[used..], config)
    };
    decoded.map(|(hb, _)| Box::new(hb)).map_err(|e| {
        Refused::Garbled(format!(
            "a heartbeat of protocol {version} from `{}`: {e}",
            hello.name
        ))
    })
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
    /// The port of its transfer listener (on the host of `cluster_addr`): members fetch
    /// the model files it holds there, by content hash (protocol 6 on).
    pub transfer_port: Option<u16>,
    /// The slices of models it keeps in its cache (protocol 6 on).
    pub cached: Vec<CachedSlice>,
    /// What it is fetching now (protocol 6 on).
    pub transfers: Vec<TransferView>,
    /// Bytes it received by transfers since it started (protocol 6 on).
    pub received_bytes: u64,
    /// The models of the `infer` jobs waiting in its queue (protocol 6 on): an idle node
    /// without one may pull it and take some.
    pub wanted: Vec<WantedModel>,
}

/// A model that queued `infer` jobs wait for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WantedModel {
    /// Its file name (`NAME.gguf`) and size, as the jobs name it.
    pub name: String,
    pub bytes: u64,
    /// Jobs waiting for it.
    pub jobs: u64,
}

/// A slice of a model a node keeps in its cache, to run a stage of a model it does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedSlice {
    /// The SHA-256 of the model it was cut from.
    pub source: String,
    pub first: u32,
    /// Exclusive.
    pub end: u32,
    pub bytes: u64,
}

/// A transfer in flight to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    /// What: `model NAME`, or `layers A..B of NAME`.
    pub what: String,
    /// The SHA-256 of what travels.
    pub sha256: String,
    /// The node it comes from.
    pub from: String,
    /// Bytes on disk so far (a resumed transfer starts at what it kept), and in all.
    pub done: u64,
    pub size: u64,
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
    /// Stages in the chain: a stage decodes at most about 1/`stages` of its runs' steps at
    /// once, so that groups of runs keep every stage of the chain busy.
    pub stages: u32,
}

/// One run's input at a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageStep {
    pub key: SeqKey,
    /// Positions `pos..pos + rows`.
    pub pos: u32,
    pub input: StepInput,
    /// The last stage samples after it (the prompt's last chunk, and every generated token).
    pub sample: bool,
    /// Token ids at stage 0 sent by the last stage when the runner is on stage 0's node: the
    /// runner learns the sampled token from this step (one frame a token instead of two).
    pub report: bool,
}

/// What a step carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StepInput {
    /// Token ids → stage 0 (a chunk of the prompt from the runner, or a sampled token from
    /// the last stage).
    Tokens(Vec<u32>),
    /// Stage i → stage i+1: `rows × n_embd` hidden states.
    Hidden(Vec<f32>),
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
    /// Inputs for stages on the receiving node: a chunk of a prompt from a runner, or the
    /// outputs of one decode of a stage (a step of each of several runs), sent together so
    /// that the runs that were decoded together arrive together and are decoded together
    /// again.
    Steps(Vec<StageStep>),
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
    /// The run the frame belongs to (`Steps` may carry several).
    pub fn key(&self) -> Option<SeqKey> {
        match self {
            StageFrame::Open(o) => Some(o.key),
            StageFrame::Steps(_) => None,
            StageFrame::Opened { key, .. }
            | StageFrame::Token { key, .. }
            | StageFrame::Failed { key, .. }
            | StageFrame::Close { key } => Some(*key),
        }
    }
}

/// What a stage loaded: the tensors it read from the model file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageLoaded {
    pub tensor_bytes: u64,
    pub tensors: Vec<String>,
}

/// The shapes of protocol 5 that protocol 6 changed, frozen: a heartbeat whose models carry
/// no content hash. Read from and written to nodes that speak 5 (a node comes down to it
/// while such a peer is up).
pub mod v5 {
    use serde::{Deserialize, Serialize};

    use super::{Capabilities, HostedStage, JobKind, NodeLoad, Role};
    use myco_jobs::model::{ModelFile as File6, ModelFormat};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct ModelFile {
        pub name: String,
        pub path: std::path::PathBuf,
        pub format: ModelFormat,
        pub size_bytes: u64,
        pub architecture: Option<String>,
        pub layers: Option<u64>,
        pub embedding: Option<u64>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct NodeInfo {
        pub name: String,
        pub protocol: u32,
        pub version: String,
        pub cluster_addr: String,
        pub api_addr: Option<String>,
        pub roles: Vec<Role>,
        pub caps: Capabilities,
        pub models: Vec<ModelFile>,
        pub kinds: Vec<JobKind>,
        pub load: NodeLoad,
        pub stage_memory: u64,
        pub stage_gpu_memory: u64,
        pub peers: Vec<(String, String)>,
        #[serde(default)]
        pub stages: Vec<HostedStage>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Heartbeat {
        pub seq: u64,
        pub sent_ms: u64,
        pub info: NodeInfo,
    }

    impl From<&super::Heartbeat> for Heartbeat {
        fn from(hb: &super::Heartbeat) -> Heartbeat {
            let i = &hb.info;
            Heartbeat {
                seq: hb.seq,
                sent_ms: hb.sent_ms,
                info: NodeInfo {
                    name: i.name.clone(),
                    protocol: i.protocol,
                    version: i.version.clone(),
                    cluster_addr: i.cluster_addr.clone(),
                    api_addr: i.api_addr.clone(),
                    roles: i.roles.clone(),
                    caps: i.caps.clone(),
                    models: i
                        .models
                        .iter()
                        .map(|m| ModelFile {
                            name: m.name.clone(),
                            path: m.path.clone(),
                            format: m.format,
                            size_bytes: m.size_bytes,
                            architecture: m.architecture.clone(),
                            layers: m.layers,
                            embedding: m.embedding,
                        })
                        .collect(),
                    kinds: i.kinds.clone(),
                    load: i.load,
                    stage_memory: i.stage_memory,
                    stage_gpu_memory: i.stage_gpu_memory,
                    peers: i.peers.clone(),
                    stages: i.stages.clone(),
                },
            }
        }
    }

    impl From<Heartbeat> for super::Heartbeat {
        fn from(hb: Heartbeat) -> super::Heartbeat {
            let i = hb.info;
            super::Heartbeat {
                seq: hb.seq,
                sent_ms: hb.sent_ms,
                info: super::NodeInfo {
                    name: i.name,
                    protocol: i.protocol,
                    version: i.version,
                    cluster_addr: i.cluster_addr,
                    api_addr: i.api_addr,
                    roles: i.roles,
                    caps: i.caps,
                    models: i
                        .models
                        .into_iter()
                        .map(|m| File6 {
                            name: m.name,
                            path: m.path,
                            format: m.format,
                            size_bytes: m.size_bytes,
                            architecture: m.architecture,
                            layers: m.layers,
                            embedding: m.embedding,
                            sha256: None,
                        })
                        .collect(),
                    kinds: i.kinds,
                    load: i.load,
                    stage_memory: i.stage_memory,
                    stage_gpu_memory: i.stage_gpu_memory,
                    peers: i.peers,
                    stages: i.stages,
                    transfer_port: None,
                    cached: Vec::new(),
                    transfers: Vec::new(),
                    received_bytes: 0,
                    wanted: Vec::new(),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ractor::BytesConvertable;

    use super::*;

    fn heartbeat(name: &str, protocol: u32) -> Heartbeat {
        Heartbeat {
            seq: 1,
            sent_ms: 2,
            info: NodeInfo {
                name: name.into(),
                protocol,
                version: "test".into(),
                cluster_addr: "127.0.0.1:1".into(),
                api_addr: None,
                roles: vec![Role::Coordinator],
                caps: crate::detect::detect(),
                models: Vec::new(),
                kinds: vec![JobKind::Noop],
                load: NodeLoad::default(),
                stage_memory: 0,
                stage_gpu_memory: 0,
                peers: Vec::new(),
                stages: Vec::new(),
                transfer_port: None,
                cached: Vec::new(),
                transfers: Vec::new(),
                received_bytes: 0,
                wanted: Vec::new(),
            },
        }
    }

    #[test]
    fn heartbeats_say_who_speaks_what() {
        let hb = heartbeat("a", PROTOCOL);
        let bytes = HeartbeatFrame::new(hb.clone()).into_bytes();
        assert_eq!(bytes[0], format::TAG);
        assert_eq!(
            HeartbeatFrame::from_bytes(bytes.clone()).0,
            Ok(Box::new(hb.clone()))
        );
        // A newer node that reads none of ours: its hello still reads.
        let mut newer = format::header(PROTOCOL as u16 + 1, 0);
        let hello = Hello {
            name: "n".into(),
            oldest: PROTOCOL as u16 + 1,
            newest: PROTOCOL as u16 + 2,
        };
        newer.extend(bincode::serde::encode_to_vec(&hello, bincode::config::standard()).unwrap());
        newer.extend([1, 2, 3]);
        let Err(Refused::Incompatible(h)) = HeartbeatFrame::from_bytes(newer).0 else {
            panic!("a newer node is named");
        };
        assert_eq!(h, hello);
        assert!(h.why_not().contains("upgrade this node"), "{}", h.why_not());
        // A node from before versions: bare bincode, named too.
        let bare = bincode::serde::encode_to_vec(heartbeat("old", 4), bincode::config::standard())
            .unwrap();
        let Err(Refused::Incompatible(h)) = HeartbeatFrame::from_bytes(bare).0 else {
            panic!("an old node is named");
        };
        assert_eq!((h.name.as_str(), h.oldest, h.newest), ("old", 4, 4));
        assert!(h.why_not().contains("upgrade `old`"), "{}", h.why_not());
        assert!(matches!(
            HeartbeatFrame::from_bytes(vec![format::TAG, 5, 0, 0xff]).0,
            Err(Refused::Garbled(_))
        ));
    }

    #[test]
    fn frames_of_other_protocols_are_refused_by_version() {
        let bare = bincode::serde::encode_to_vec(7u64, bincode::config::standard()).unwrap();
        let e = Wire::<u64>::from_bytes(bare).0.unwrap_err();
        assert!(
            e.contains("protocol 4") && e.contains("upgrade the sender"),
            "{e}"
        );
        let newer = format::encode(PROTOCOL as u16 + 1, &7u64).unwrap();
        let e = Wire::<u64>::from_bytes(newer).0.unwrap_err();
        assert!(e.contains("upgrade this node"), "{e}");
    }

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
