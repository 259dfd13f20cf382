//! Membership: who is in the swarm, right now, by name.
//!
//! It owns ractor_cluster's `NodeServer` (Isolated mode: myco dials its peers itself), the
//! cluster port ([`super::listener`]), discovery, and the dialer that (re)dials known
//! addresses. ractor_cluster does not check that peers answer, so Membership runs its own
//! heartbeat: every node casts a [`Heartbeat`] (capabilities, load) to every peer each
//! `heartbeat` interval, and a peer not heard from for `peer_timeout` is dropped (its
//! sessions are closed) until it speaks again. Peers are identified by their node name,
//! never by ractor's per-connection node id. Nothing here touches the queue.
//!
//! After every change it publishes a [`SwarmView`] that others read without asking
//! ([`super::view`]), and tells the coordinator what it acts on through the coordinator's
//! channel ([`SwarmEvent`]): this actor knows neither the coordinator nor its messages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use myco_jobs::JobKind;
use myco_runtime::cluster::discovery::{self, Beacon, DiscoveryConfig, Found};
use myco_runtime::cluster::secret::{SwarmSecret, SwarmTls};
use myco_runtime::cluster::wire::{
    self, Heartbeat, HeartbeatFrame, Hello, NodeInfo, NodeLoad, Role,
};
use myco_runtime::detect::Capabilities;
use myco_runtime::models::ModelFile;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage,
    NodeSessionMessage,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::swarm::listener;
use crate::swarm::protocol::{PEERS_GROUP, PeerMsg};
use crate::swarm::view::{PeerEntry, SwarmPublisher, SwarmSignals, SwarmView};

/// Messages to the [`Membership`] actor.
#[derive(Debug)]
pub enum MembershipMsg {
    /// A session event from the NodeServer.
    Session(SessionEvent, Box<NodeServerSessionInformation>),
    /// A peer's heartbeat, via the PeerService.
    Heard(Box<Heartbeat>),
    /// A peer whose heartbeat is of a protocol this node does not speak, via the
    /// PeerService: who it is and which protocols it speaks.
    Refused(Hello),
    /// Discovery heard a node of this swarm.
    Discovered(Found),
    /// Dial this address (and keep it dialed).
    Join(String),
    /// Periodic: send heartbeats, drop silent peers, redial (internal).
    Tick,
    /// A dial attempt ended (internal).
    Dialed {
        addr: String,
        result: Result<SocketAddr, String>,
    },
    /// This node's load changed (from the coordinator).
    Load(NodeLoad),
    /// The models the `infer` jobs queued here wait for (from the coordinator).
    Wanted(Vec<myco_runtime::cluster::wire::WantedModel>),
    /// Fresh capabilities and model list (internal, every few seconds).
    Refreshed(Box<(Capabilities, Vec<ModelFile>)>),
}

impl ractor::Message for MembershipMsg {}

/// NodeServer session events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    Opened,
    Ready,
    Disconnected,
}

/// Membership's fixed settings.
#[derive(Debug, Clone)]
pub struct Membership {
    pub name: String,
    pub secret: SwarmSecret,
    /// The cluster port's listen address.
    pub listen: SocketAddr,
    /// Addresses to keep dialed (`--join`).
    pub join: Vec<String>,
    pub discovery: Option<DiscoveryConfig>,
    pub heartbeat: Duration,
    pub peer_timeout: Duration,
    pub api_addr: Option<String>,
    pub caps: Capabilities,
    /// Where this node's model files are (re-scanned every few seconds).
    pub models_dir: std::path::PathBuf,
    pub kinds: Vec<JobKind>,
    pub roles: Vec<Role>,
    pub slots: u32,
    /// A cap on the memory offered to model stages (`--stage-memory`).
    pub stage_memory: Option<u64>,
    /// A cap on the GPU memory its stages use (`--gpu-memory`).
    pub gpu_memory: Option<u64>,
    /// Where each new view of the swarm goes.
    pub publisher: SwarmPublisher,
    /// The coordinator's channel for the swarm signals it acts on.
    pub events: Option<tokio::sync::watch::Sender<SwarmSignals>>,
    /// The port of this node's transfer listener, if it serves one.
    pub transfer_port: Option<u16>,
    /// Its transfers in flight and its cache, for heartbeats.
    pub board: myco_runtime::cluster::transfer::Board,
}

#[derive(Debug)]
struct Peer {
    info: Option<NodeInfo>,
    last_heard: Instant,
    up: bool,
    sessions: HashMap<u64, ActorRef<NodeSessionMessage>>,
    /// Its hello while its heartbeats are of a protocol this node does not read.
    refused: Option<Hello>,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            info: None,
            last_heard: Instant::now(),
            up: false,
            sessions: HashMap::new(),
            refused: None,
        }
    }

    /// Connected, and speaking a protocol this node reads.
    fn is_up(&self) -> bool {
        self.up && self.refused.is_none()
    }

    /// The newest protocol it speaks, as far as this node knows.
    fn newest(&self) -> Option<u16> {
        match (&self.refused, &self.info) {
            (Some(h), _) => h.shares().then_some(h.newest),
            (None, Some(i)) => Some(u16::try_from(i.protocol).unwrap_or(u16::MAX)),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Default)]
struct Target {
    /// The node this address turned out to be.
    name: Option<String>,
    resolved: Option<SocketAddr>,
    dialing: bool,
    next_try: Option<Instant>,
    failures: u32,
}

pub struct MembershipState {
    server: ActorRef<NodeServerMessage>,
    caps: Capabilities,
    models: Vec<ModelFile>,
    /// The models the `infer` jobs queued here wait for (the coordinator's count).
    wanted: Vec<myco_runtime::cluster::wire::WantedModel>,
    peers_up: usize,
    tls: SwarmTls,
    cluster_addr: SocketAddr,
    peers: HashMap<String, Peer>,
    targets: HashMap<String, Target>,
    load: NodeLoad,
    seq: u64,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for MembershipState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipState")
            .field("cluster_addr", &self.cluster_addr)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

/// Relays NodeServer events into the Membership mailbox.
struct Events(ActorRef<MembershipMsg>);

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        let _ = self
            .0
            .cast(MembershipMsg::Session(SessionEvent::Opened, Box::new(ses)));
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.cast(MembershipMsg::Session(
            SessionEvent::Disconnected,
            Box::new(ses),
        ));
    }
    fn node_session_authenticated(&self, _: NodeServerSessionInformation) {}
    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        let _ = self
            .0
            .cast(MembershipMsg::Session(SessionEvent::Ready, Box::new(ses)));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Membership {
    fn info(&self, state: &MembershipState) -> NodeInfo {
        let offer = crate::features::stage_memory(&state.caps, self.stage_memory, self.gpu_memory);
        NodeInfo {
            name: self.name.clone(),
            protocol: u32::from(wire::protocol()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            cluster_addr: state.cluster_addr.to_string(),
            api_addr: self.api_addr.clone(),
            roles: self.roles.clone(),
            caps: state.caps.clone(),
            models: state.models.clone(),
            kinds: self.kinds.clone(),
            load: state.load,
            // VRAM before RAM: a GPU build's stages run on the first GPU (its free VRAM, as
            // llama.cpp's backend reads it), what does not fit there from RAM.
            stage_memory: offer.total,
            stage_gpu_memory: offer.gpu,
            peers: state
                .peers
                .iter()
                .filter(|(_, p)| p.up)
                .filter_map(|(n, p)| Some((n.clone(), p.info.as_ref()?.cluster_addr.clone())))
                .collect(),
            stages: self.publisher.hosted_stages(),
            transfer_port: self.transfer_port,
            cached: self.board.cached(),
            transfers: self.board.flying(),
            received_bytes: self.board.received(),
            wanted: state.wanted.clone(),
        }
    }

    /// The peer's node name. ractor_cluster reports `name@hostname`; node names cannot
    /// contain `@`, so the part before it is the name.
    fn peer_name(ses: &NodeServerSessionInformation) -> Option<String> {
        ses.peer_name
            .as_ref()
            .and_then(|n| n.name.split('@').next())
            .map(str::to_owned)
    }

    fn drop_peer(&self, state: &mut MembershipState, name: &str, why: &str) {
        if let Some(peer) = state.peers.get_mut(name)
            && peer.up
        {
            peer.up = false;
            tracing::warn!(peer = name, "dropping peer from the swarm: {why}");
            for (_, session) in peer.sessions.drain() {
                session.stop(Some(format!("myco: {why}")));
            }
        }
        self.notify_peers_up(state);
    }

    fn dial(&self, myself: &ActorRef<MembershipMsg>, state: &mut MembershipState, addr: String) {
        let Some(target) = state.targets.get_mut(&addr) else {
            return;
        };
        target.dialing = true;
        let server = state.server.clone();
        let connector = state.tls.connector.clone();
        let me = myself.clone();
        let task = tokio::spawn(async move {
            let result = dial(&server, &addr, connector).await;
            let _ = me.cast(MembershipMsg::Dialed { addr, result });
        });
        state.tasks.retain(|t| !t.is_finished());
        state.tasks.push(task);
    }
}

async fn dial(
    server: &ActorRef<NodeServerMessage>,
    addr: &str,
    connector: tokio_rustls::TlsConnector,
) -> Result<SocketAddr, String> {
    let deadline = Duration::from_secs(5);
    let tcp = tokio::time::timeout(deadline, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "no answer within 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().map_err(|e| e.to_string())?;
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    let name = SwarmTls::server_name().map_err(|e| e.to_string())?;
    let stream = tokio::time::timeout(deadline, connector.connect(name, tcp))
        .await
        .map_err(|_| "no TLS handshake within 5 s".to_owned())?
        .map_err(|e| listener::explain_tls(&e.to_string()))?;
    server
        .cast(NodeServerMessage::ConnectionOpened {
            stream: Box::new(ractor_cluster::NetworkStream::TlsClient {
                peer_addr: peer,
                local_addr: local,
                stream,
            }),
            is_server: false,
        })
        .map_err(|e| e.to_string())?;
    Ok(peer)
}

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let tls = self.secret.tls()?;
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|e| {
                format!(
                    "cannot listen for peers on {}: {e}; pick a free address with --cluster",
                    self.listen
                )
            })?;
        let mut cluster_addr = listener.local_addr()?;
        if cluster_addr.ip().is_unspecified() {
            // Advertise an address peers can dial.
            let ip = discovery::interfaces(&DiscoveryConfig::default())
                .first()
                .copied()
                .map(std::net::IpAddr::V4)
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            cluster_addr.set_ip(ip);
        }
        // ractor_cluster's own listener is not used for peers (see listener.rs): keep it
        // on an ephemeral loopback port, TLS-only.
        let server = NodeServer::new(
            0,
            self.secret.cookie(),
            self.name.clone(),
            cluster_addr.ip().to_string(),
            Some(IncomingEncryptionMode::Tls(tls.acceptor.clone())),
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
        .with_max_inbound_frame_size(64 << 20);
        let (server, _) = Actor::spawn_linked(None, server, (), myself.get_cell()).await?;
        server.cast(NodeServerMessage::SubscribeToEvents {
            id: "myco.membership".into(),
            subscription: Box::new(Events(myself.clone())),
        })?;
        let stop = CancellationToken::new();
        let mut tasks = vec![tokio::spawn(listener::serve(
            listener,
            tls.acceptor.clone(),
            server.clone(),
            stop.clone(),
        ))];
        let ticker = {
            let me = myself.clone();
            let every = self.heartbeat;
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(every);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = interval.tick() => {
                            if me.cast(MembershipMsg::Tick).is_err() {
                                break;
                            }
                        }
                    }
                }
            })
        };
        tasks.push(ticker);
        if let Some(cfg) = self.discovery.clone() {
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            let beacon = Beacon {
                protocol: u32::from(wire::protocol()),
                swarm_id: self.secret.swarm_id(),
                name: self.name.clone(),
                cluster_port: cluster_addr.port(),
            };
            let stop_d = stop.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = discovery::run(cfg, beacon, tx, stop_d).await {
                    tracing::warn!(error = %e, "discovery stopped; peers can still join with --join");
                }
            }));
            let me = myself.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(found) = rx.recv().await {
                    if me.cast(MembershipMsg::Discovered(found)).is_err() {
                        break;
                    }
                }
            }));
        }
        let mut targets = HashMap::new();
        for addr in &self.join {
            targets.insert(addr.clone(), Target::default());
        }
        tracing::info!(node = %self.name, cluster = %cluster_addr, swarm = %self.secret.swarm_id(), "cluster port open");
        let refresher = {
            let me = myself.clone();
            let dir = self.models_dir.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = interval.tick() => {}
                    }
                    let dir = dir.clone();
                    let fresh = tokio::task::spawn_blocking(move || {
                        (crate::features::detect(), myco_runtime::models::scan(&dir))
                    })
                    .await;
                    let Ok(fresh) = fresh else { break };
                    if me.cast(MembershipMsg::Refreshed(Box::new(fresh))).is_err() {
                        break;
                    }
                }
            })
        };
        tasks.push(refresher);
        // The models this node holds, before the first view is published: a request right
        // after start sees them (the refresher keeps them current).
        let dir = self.models_dir.clone();
        let models = tokio::task::spawn_blocking(move || myco_runtime::models::scan(&dir))
            .await
            .unwrap_or_default();
        let state = MembershipState {
            server,
            caps: self.caps.clone(),
            models,
            wanted: Vec::new(),
            peers_up: 0,
            tls,
            cluster_addr,
            peers: HashMap::new(),
            targets,
            load: NodeLoad {
                slots: self.slots,
                ..NodeLoad::default()
            },
            seq: 0,
            stop,
            tasks,
        };
        // Published before the actor is up: nobody reads an empty swarm.
        self.publish(&state);
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        myself.cast(MembershipMsg::Tick)?;
        self.publish(state);
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stop.cancel();
        for t in state.tasks.drain(..) {
            t.abort();
        }
        state.server.stop(Some("node stopping".into()));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MembershipMsg::Session(event, ses) => {
                let name = Self::peer_name(&ses);
                match (event, name) {
                    (SessionEvent::Ready, Some(name)) => {
                        if !ses.is_server {
                            // An address we dialed: remember whose it is.
                            for t in state.targets.values_mut() {
                                if t.resolved.map(|a| a.to_string()) == Some(ses.peer_addr.clone())
                                {
                                    t.name = Some(name.clone());
                                }
                            }
                        }
                        let peer = state.peers.entry(name.clone()).or_insert_with(Peer::new);
                        peer.sessions.insert(ses.node_id, ses.actor.clone());
                        peer.last_heard = Instant::now();
                        if !peer.up {
                            peer.up = true;
                            tracing::info!(peer = %name, addr = %ses.peer_addr, "peer joined");
                        }
                        // Introduce ourselves right away.
                        self.send_heartbeats(state);
                    }
                    (SessionEvent::Disconnected, Some(name)) => {
                        if let Some(peer) = state.peers.get_mut(&name) {
                            peer.sessions.remove(&ses.node_id);
                            if peer.sessions.is_empty() && peer.up {
                                peer.up = false;
                                tracing::warn!(peer = %name, "peer disconnected");
                            }
                        }
                    }
                    _ => {}
                }
                self.notify_peers_up(state);
            }
            MembershipMsg::Heard(hb) => {
                let name = hb.info.name.clone();
                if name == self.name {
                    if hb.info.cluster_addr != state.cluster_addr.to_string() {
                        // Leases are held by name: two nodes with one name would take each
                        // other's jobs for their own.
                        tracing::error!(
                            other = %hb.info.cluster_addr,
                            "another node in this swarm is also named `{name}`; give each node a unique --name (or `name` in config.toml)"
                        );
                    }
                    return Ok(());
                }
                let peer = state.peers.entry(name.clone()).or_insert_with(Peer::new);
                peer.last_heard = Instant::now();
                if peer.refused.take().is_some() {
                    tracing::info!(peer = %name, protocol = hb.info.protocol, "peer now speaks a protocol this node reads");
                }
                // Learn whose address this is, and of the peers it knows (gossip).
                let gossip = hb.info.peers.clone();
                let own = hb.info.cluster_addr.clone();
                let had_work = peer.info.as_ref().is_some_and(|i| i.load.queued > 0);
                // Models its jobs wait for that it did not say before: an idle node may
                // pull one (replicas on demand), so it is news as well.
                let new_wants = hb.info.wanted.iter().any(|w| {
                    !peer.info.as_ref().is_some_and(|i| {
                        i.wanted
                            .iter()
                            .any(|o| o.name == w.name && o.bytes == w.bytes)
                    })
                });
                if (!had_work && hb.info.load.queued > 0 || new_wants)
                    && let Some(events) = &self.events
                {
                    events.send_modify(|s| s.peer_work = s.peer_work.wrapping_add(1));
                }
                peer.info = Some(hb.info);
                if !peer.up && !peer.sessions.is_empty() {
                    peer.up = true;
                    tracing::info!(peer = %name, "peer is back");
                }
                if let Some(t) = state.targets.get_mut(&own) {
                    t.name = Some(name.clone());
                }
                let me = state.cluster_addr.to_string();
                for (other, addr) in gossip {
                    if other == self.name || addr == me {
                        continue;
                    }
                    if state.peers.get(&other).is_some_and(|p| p.up) {
                        continue;
                    }
                    let target = state.targets.entry(addr).or_default();
                    if target.name.is_none() {
                        target.name = Some(other.clone());
                        // The smaller name dials first, as with discovery.
                        if self.name > other {
                            target.next_try = Some(Instant::now() + self.heartbeat * 3);
                        }
                    }
                }
            }
            MembershipMsg::Refused(hello) => {
                if hello.name == self.name {
                    return Ok(());
                }
                let peer = state
                    .peers
                    .entry(hello.name.clone())
                    .or_insert_with(Peer::new);
                if peer.refused.as_ref() != Some(&hello) {
                    if hello.shares() {
                        // It speaks a newer protocol we share: it comes down once it hears
                        // us (our heartbeats go at the newest it speaks from now on).
                        tracing::info!(peer = %hello.name, oldest = hello.oldest, newest = hello.newest, "peer speaks a newer protocol; waiting for it to come down to one this node reads");
                    } else {
                        tracing::warn!(peer = %hello.name, "cannot work with this peer: {}", hello.why_not());
                    }
                }
                peer.last_heard = Instant::now();
                peer.refused = Some(hello);
            }
            MembershipMsg::Discovered(found) => {
                let addr = found.addr.to_string();
                let known_up = state.peers.get(&found.name).is_some_and(|p| p.up);
                let target = state.targets.entry(addr.clone()).or_default();
                target.name.get_or_insert(found.name.clone());
                if !known_up && !target.dialing {
                    if self.name < found.name {
                        // Both sides hear each other: the smaller name dials, so that the
                        // two do not race to open duplicate sessions.
                        target.next_try = None;
                        self.dial(&myself, state, addr);
                    } else if target.next_try.is_none() {
                        // The other side should dial us; dial it ourselves if it has not
                        // within a moment.
                        target.next_try = Some(Instant::now() + self.heartbeat * 3);
                    }
                }
            }
            MembershipMsg::Join(addr) => {
                state.targets.entry(addr.clone()).or_default();
                self.dial(&myself, state, addr);
            }
            MembershipMsg::Tick => {
                self.send_heartbeats(state);
                self.notify_peers_up(state);
                let silent: Vec<(String, Duration)> = state
                    .peers
                    .iter()
                    .filter(|(_, p)| p.up && p.last_heard.elapsed() > self.peer_timeout)
                    .map(|(n, p)| (n.clone(), p.last_heard.elapsed()))
                    .collect();
                for (name, age) in silent {
                    self.drop_peer(
                        state,
                        &name,
                        &format!("no heartbeat for {:.1} s", age.as_secs_f64()),
                    );
                }
                let now = Instant::now();
                let due: Vec<String> = state
                    .targets
                    .iter()
                    .filter(|(_, t)| {
                        !t.dialing
                            && t.next_try.is_none_or(|at| at <= now)
                            && !t
                                .name
                                .as_ref()
                                .is_some_and(|n| state.peers.get(n).is_some_and(|p| p.up))
                    })
                    .map(|(a, _)| a.clone())
                    .collect();
                for addr in due {
                    if addr == state.cluster_addr.to_string() {
                        continue;
                    }
                    self.dial(&myself, state, addr);
                }
            }
            MembershipMsg::Dialed { addr, result } => {
                if let Some(t) = state.targets.get_mut(&addr) {
                    t.dialing = false;
                    match result {
                        Ok(resolved) => {
                            t.resolved = Some(resolved);
                            t.failures = 0;
                            t.next_try = Some(Instant::now() + Duration::from_secs(2));
                        }
                        Err(e) => {
                            t.failures += 1;
                            let backoff =
                                Duration::from_millis(500 * u64::from(t.failures.min(10)));
                            t.next_try = Some(Instant::now() + backoff);
                            if t.failures == 1 || t.failures % 20 == 0 {
                                tracing::warn!(peer = %addr, failures = t.failures, "cannot join: {e}");
                            }
                        }
                    }
                }
            }
            MembershipMsg::Refreshed(fresh) => {
                let (caps, models) = *fresh;
                let changed = models != state.models
                    || caps.gpus != state.caps.gpus
                    || caps.devices.len() != state.caps.devices.len();
                state.caps = caps;
                state.models = models;
                if changed {
                    // What this node can run changed: say so now.
                    self.send_heartbeats(state);
                }
            }
            MembershipMsg::Wanted(wanted) => state.wanted = wanted,
            MembershipMsg::Load(load) => {
                let news = state.load.queued == 0 && load.queued > 0;
                state.load = load;
                if news {
                    // Work just arrived: tell idle peers now, not at the next heartbeat.
                    self.send_heartbeats(state);
                }
            }
        }
        self.publish(state);
        Ok(())
    }
}

impl Membership {
    /// Tell the coordinator when the number of peers that are up changes.
    fn notify_peers_up(&self, state: &mut MembershipState) {
        let up = state.peers.values().filter(|p| p.is_up()).count();
        if up != state.peers_up {
            state.peers_up = up;
            if let Some(events) = &self.events {
                events.send_modify(|s| s.peers_up = up);
            }
        }
    }

    /// Publish the swarm as it is now.
    fn publish(&self, state: &MembershipState) {
        // Speak the newest protocol every connected peer speaks.
        let before = wire::speaking();
        let now = wire::speak_with(
            state
                .peers
                .values()
                .filter(|p| p.up)
                .filter_map(Peer::newest),
        );
        if now != before {
            tracing::info!(
                from = before,
                to = now,
                "speaking another protocol to the swarm"
            );
        }
        let mut peers: Vec<PeerEntry> = state
            .peers
            .iter()
            .map(|(name, p)| PeerEntry {
                name: name.clone(),
                up: p.is_up(),
                info: p.info.clone(),
                last_heard: p.last_heard,
                sessions: p.sessions.keys().copied().collect(),
                why_not: p
                    .refused
                    .as_ref()
                    .filter(|h| !h.shares())
                    .map(Hello::why_not),
            })
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        self.publisher.publish(SwarmView {
            name: self.name.clone(),
            me: Some(self.info(state)),
            peers,
        });
    }

    fn send_heartbeats(&self, state: &mut MembershipState) {
        state.seq += 1;
        let hb = Heartbeat {
            seq: state.seq,
            sent_ms: now_ms(),
            info: self.info(state),
        };
        for cell in ractor::pg::get_members(&PEERS_GROUP.to_owned()) {
            if cell.get_id().is_local() {
                continue;
            }
            let peer: ActorRef<PeerMsg> = cell.into();
            let _ = peer.cast(PeerMsg::Heartbeat(HeartbeatFrame::new(hb.clone())));
        }
    }
}
