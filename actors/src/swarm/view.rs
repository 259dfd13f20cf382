//! The swarm as this node sees it, as Membership publishes it: who is up, with the info
//! their heartbeats carry (capabilities, models, load, memory) and the sessions that reach
//! their PeerService.
//!
//! Membership is the only writer ([`Swarm::channel`]); everyone else reads the latest
//! [`SwarmView`] without a round trip to the actor (the coordinator, stealing, stage hosts,
//! pipeline runners, the API). The coordinator is also told of changes it acts on
//! ([`SwarmEvent`]) on a channel it owns. Nothing here sends or decides anything.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use myco_jobs::JobKind;
use myco_runtime::cluster::wire::{HostedStage, NodeInfo};
use myco_runtime::models::{ModelFile, ModelFormat};
use ractor::ActorRef;
use serde::Serialize;
use tokio::sync::watch;

use crate::swarm::protocol::{PEERS_GROUP, PeerMsg};

/// One node as `myco swarm` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct MemberView {
    pub name: String,
    /// `self`, `up`, `down`, or `incompatible` (it shares no protocol with this node).
    pub status: String,
    pub info: Option<NodeInfo>,
    /// Why this node cannot work with it (an `incompatible` node: which protocols each
    /// speaks, and which to upgrade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
    /// Milliseconds since its last heartbeat (0 for this node).
    pub heartbeat_age_ms: u64,
}

impl MemberView {
    /// This node, or a peer that is up.
    pub fn is_up(&self) -> bool {
        self.status == "self" || self.status == "up"
    }
}

/// What Membership tells the coordinator, as a latest-value channel (`tokio::sync::watch`):
/// one slot, so a coordinator that falls behind reads the newest state instead of a queue
/// of old ones. The forwarding loop turns changes into [`SwarmEvent`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwarmSignals {
    /// How many peers are up.
    pub peers_up: usize,
    /// Counts the times a peer's heartbeat showed queued work it had not before.
    pub peer_work: u64,
}

/// The coordinator's end of [`SwarmSignals`].
pub type SwarmSignalsRx = tokio::sync::watch::Receiver<SwarmSignals>;

/// What the coordinator acts on, from [`SwarmSignals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwarmEvent {
    /// How many peers are up (sent when the number changes).
    PeersUp(usize),
    /// A peer's heartbeat shows queued work that it had not before.
    PeerWork,
}

/// A peer, as last heard.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub name: String,
    pub up: bool,
    pub info: Option<NodeInfo>,
    pub last_heard: Instant,
    /// ractor_cluster node ids of its open sessions.
    pub sessions: Vec<u64>,
    /// Set while its heartbeats are of protocols this node does not speak: why not.
    pub why_not: Option<String>,
}

/// One published state of the swarm.
#[derive(Debug, Clone, Default)]
pub struct SwarmView {
    /// This node's name and what its heartbeats say of it.
    pub name: String,
    pub me: Option<NodeInfo>,
    /// The peers ever heard of, by name.
    pub peers: Vec<PeerEntry>,
}

impl SwarmView {
    /// The swarm as `myco swarm` shows it: this node first, then its peers by name.
    pub fn members(&self) -> Vec<MemberView> {
        let mut out = vec![MemberView {
            name: self.name.clone(),
            status: "self".into(),
            info: self.me.clone(),
            why_not: None,
            heartbeat_age_ms: 0,
        }];
        out.extend(self.peers.iter().map(|p| {
            MemberView {
                name: p.name.clone(),
                status: match (&p.why_not, p.up) {
                    (Some(_), _) => "incompatible",
                    (None, true) => "up",
                    (None, false) => "down",
                }
                .into(),
                why_not: p.why_not.clone(),
                info: p.info.clone(),
                heartbeat_age_ms: p.last_heard.elapsed().as_millis() as u64,
            }
        }));
        out
    }

    /// The names of the nodes that are up, this one included.
    pub fn up(&self) -> BTreeSet<String> {
        std::iter::once(self.name.clone())
            .chain(self.peers.iter().filter(|p| p.up).map(|p| p.name.clone()))
            .collect()
    }

    /// The PeerService of `name`, if it is up: the `myco.peers` member on one of its
    /// sessions.
    pub fn peer(&self, name: &str) -> Option<ActorRef<PeerMsg>> {
        let peer = self.peers.iter().find(|p| p.name == name && p.up)?;
        ractor::pg::get_members(&PEERS_GROUP.to_owned())
            .into_iter()
            .find(|cell| match cell.get_id() {
                ractor::ActorId::Remote { node_id, .. } => peer.sessions.contains(&node_id),
                ractor::ActorId::Local(_) => false,
            })
            .map(ActorRef::from)
    }

    /// Peers that are up with queued jobs of these kinds, busiest first.
    pub fn victims(&self, kinds: &[JobKind]) -> Vec<(String, ActorRef<PeerMsg>)> {
        let mut victims: Vec<(u64, &str)> = self
            .peers
            .iter()
            .filter(|p| p.up)
            .filter_map(|p| {
                let info = p.info.as_ref()?;
                let runs = kinds.iter().any(|k| info.kinds.contains(k));
                (runs && info.load.queued > 0).then_some((info.load.queued, p.name.as_str()))
            })
            .collect();
        victims.sort_by_key(|v| std::cmp::Reverse(v.0));
        victims
            .into_iter()
            .filter_map(|(_, n)| self.peer(n).map(|r| (n.to_owned(), r)))
            .collect()
    }
}

/// A reader of the published swarm view, and the board where this node's Stages actor
/// posts the stages it hosts (membership's heartbeats carry them). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Swarm(watch::Receiver<Arc<SwarmView>>, StageBoard);

/// Membership's end: publishes each new view, and reads the stage board.
#[derive(Debug, Clone)]
pub struct SwarmPublisher(Arc<watch::Sender<Arc<SwarmView>>>, StageBoard);

/// The stages this node hosts now: one writer (the Stages actor), read at each heartbeat.
#[derive(Debug, Clone, Default)]
pub struct StageBoard(Arc<std::sync::Mutex<Vec<HostedStage>>>);

impl StageBoard {
    pub fn set(&self, stages: Vec<HostedStage>) {
        if let Ok(mut g) = self.0.lock() {
            *g = stages;
        }
    }

    pub fn get(&self) -> Vec<HostedStage> {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

impl Swarm {
    /// A new view, with nobody in it but `name`.
    pub fn channel(name: &str) -> (SwarmPublisher, Swarm) {
        let view = SwarmView {
            name: name.to_owned(),
            ..SwarmView::default()
        };
        let (tx, rx) = watch::channel(Arc::new(view));
        let board = StageBoard::default();
        (
            SwarmPublisher(Arc::new(tx), board.clone()),
            Swarm(rx, board),
        )
    }

    /// The latest view.
    pub fn view(&self) -> Arc<SwarmView> {
        self.0.borrow().clone()
    }

    /// Where this node's hosted stages go (the Stages actor's).
    pub fn stage_board(&self) -> &StageBoard {
        &self.1
    }
}

impl SwarmPublisher {
    pub fn publish(&self, view: SwarmView) {
        self.0.send_replace(Arc::new(view));
    }

    /// The stages this node hosts now.
    pub fn hosted_stages(&self) -> Vec<HostedStage> {
        self.1.get()
    }
}

/// A GGUF model some node of the swarm holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwarmModel {
    /// The name requests use: the file name without `.gguf`.
    pub id: String,
    pub file: String,
    pub bytes: u64,
    pub architecture: Option<String>,
    /// The nodes that hold it.
    pub nodes: Vec<String>,
    /// The SHA-256 of its bytes, once a holder has read it and says so (protocol 6 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The GGUF models among `(holder, file)` pairs, one entry per file name and size (and
/// content hash: two files of one name and size whose hashes differ are two models), by
/// name.
pub fn gguf_models(files: impl IntoIterator<Item = (String, ModelFile)>) -> Vec<SwarmModel> {
    let mut out: Vec<SwarmModel> = Vec::new();
    for (holder, m) in files {
        if m.format != ModelFormat::Gguf {
            continue;
        }
        let file = m
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| m.name.clone());
        let same_bytes = |s: &SwarmModel| match (&s.sha256, &m.sha256) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        match out
            .iter_mut()
            .find(|s| s.file == file && s.bytes == m.size_bytes && same_bytes(s))
        {
            Some(s) => {
                if !s.nodes.contains(&holder) {
                    s.nodes.push(holder);
                }
                if s.sha256.is_none() {
                    s.sha256.clone_from(&m.sha256);
                }
            }
            None => out.push(SwarmModel {
                id: m.name.clone(),
                file,
                bytes: m.size_bytes,
                architecture: m.architecture.clone(),
                nodes: vec![holder],
                sha256: m.sha256.clone(),
            }),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}
