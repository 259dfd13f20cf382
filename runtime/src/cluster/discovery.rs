//! Zero-configuration discovery: UDP multicast beacons on the LAN.
//!
//! Each node multicasts a small beacon (its swarm id, name and cluster port) when it starts,
//! every few seconds after, and at once when it hears a node it has not heard before, so a
//! newcomer is known to everyone, and knows everyone, within a round trip. Beacons of other
//! swarms are ignored (the swarm id is a one-way hash of the secret). Discovery only
//! introduces: joining still takes a TLS handshake that needs the secret.
//!
//! The interfaces are explicit: one IPv4 address (tests use 127.0.0.1, with TTL 0 so nothing
//! leaves the host) or every up, non-loopback IPv4 interface. This file sends no other
//! traffic and dials nobody.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken as CancelToken;

/// The default multicast group and port.
pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 77);
pub const DEFAULT_PORT: u16 = 7702;

const MAGIC: &[u8; 4] = b"myco";

/// Where and how to look for peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The interface to use, by address; `None` means every LAN interface.
    pub iface: Option<Ipv4Addr>,
    pub group: Ipv4Addr,
    pub port: u16,
    pub every: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            iface: None,
            group: DEFAULT_GROUP,
            port: DEFAULT_PORT,
            every: Duration::from_secs(2),
        }
    }
}

/// What a beacon says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    pub protocol: u32,
    pub swarm_id: String,
    pub name: String,
    pub cluster_port: u16,
}

impl Beacon {
    fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        if let Ok(body) = bincode::serde::encode_to_vec(self, bincode::config::standard()) {
            out.extend(body);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Beacon> {
        let body = bytes.strip_prefix(MAGIC)?;
        bincode::serde::decode_from_slice(body, bincode::config::standard())
            .ok()
            .map(|(b, _)| b)
    }
}

/// A peer heard on the network: its name and where it accepts cluster connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub addr: SocketAddr,
}

/// The interfaces discovery runs on.
pub fn interfaces(cfg: &DiscoveryConfig) -> Vec<Ipv4Addr> {
    if let Some(ip) = cfg.iface {
        return vec![ip];
    }
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback())
        .filter_map(|i| match i.ip() {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        })
        .collect()
}

fn bind(
    cfg: &DiscoveryConfig,
    ifaces: &[Ipv4Addr],
) -> std::io::Result<(UdpSocket, Vec<UdpSocket>)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let recv = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    recv.set_reuse_address(true)?;
    recv.set_reuse_port(true)?;
    recv.set_nonblocking(true)?;
    recv.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, cfg.port)).into())?;
    for ip in ifaces {
        recv.join_multicast_v4(&cfg.group, ip)?;
    }
    let mut senders = Vec::new();
    for ip in ifaces {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_nonblocking(true)?;
        s.set_multicast_if_v4(ip)?;
        s.set_multicast_loop_v4(true)?;
        // Loopback beacons never leave the host; LAN beacons never leave the link.
        s.set_multicast_ttl_v4(if ip.is_loopback() { 0 } else { 1 })?;
        s.bind(&SocketAddr::from(SocketAddrV4::new(*ip, 0)).into())?;
        senders.push(UdpSocket::from_std(s.into())?);
    }
    Ok((UdpSocket::from_std(recv.into())?, senders))
}

/// Run discovery until `stop` fires, reporting every other node of this swarm heard.
pub async fn run(
    cfg: DiscoveryConfig,
    me: Beacon,
    found: mpsc::Sender<Found>,
    stop: CancelToken,
) -> std::io::Result<()> {
    let ifaces = interfaces(&cfg);
    if ifaces.is_empty() {
        tracing::warn!("discovery: no LAN interface with an IPv4 address; use --join");
        return Ok(());
    }
    let (recv, senders) = bind(&cfg, &ifaces)?;
    tracing::info!(interfaces = ?ifaces, group = %cfg.group, port = cfg.port, "discovery started");
    let target = SocketAddr::from(SocketAddrV4::new(cfg.group, cfg.port));
    let beacon = me.encode();
    let announce = || async {
        for s in &senders {
            if let Err(e) = s.send_to(&beacon, target).await {
                tracing::debug!(error = %e, "discovery: beacon not sent");
            }
        }
    };
    announce().await;
    let mut heard: HashSet<String> = HashSet::new();
    let mut ticker = tokio::time::interval(cfg.every);
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = ticker.tick() => announce().await,
            got = recv.recv_from(&mut buf) => {
                let Ok((n, from)) = got else { continue };
                let Some(b) = Beacon::decode(&buf[..n]) else { continue };
                // A node of another protocol is dialed too: its heartbeats say whether the
                // two share one, and if not, each says why not (`myco swarm`).
                if b.name == me.name || b.swarm_id != me.swarm_id {
                    continue;
                }
                let addr = SocketAddr::new(from.ip(), b.cluster_port);
                if heard.insert(b.name.clone()) {
                    // A newcomer: answer at once so it learns of us without waiting.
                    announce().await;
                }
                if found.send(Found { name: b.name, addr }).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beacons_round_trip_and_junk_is_ignored() {
        let b = Beacon {
            protocol: 1,
            swarm_id: "abcd".into(),
            name: "n1".into(),
            cluster_port: 7701,
        };
        assert_eq!(Beacon::decode(&b.encode()), Some(b));
        assert_eq!(Beacon::decode(b"hello"), None);
        assert_eq!(Beacon::decode(b"myco\xff\xff"), None);
    }

    #[tokio::test]
    async fn two_nodes_find_each_other_on_loopback() {
        let cfg = DiscoveryConfig {
            iface: Some(Ipv4Addr::LOCALHOST),
            port: 47_000 + (std::process::id() % 1000) as u16,
            ..DiscoveryConfig::default()
        };
        let stop = CancelToken::new();
        let beacon = |name: &str, port| Beacon {
            protocol: 1,
            swarm_id: "s1".into(),
            name: name.into(),
            cluster_port: port,
        };
        let (tx_a, mut rx_a) = mpsc::channel(16);
        let (tx_b, mut rx_b) = mpsc::channel(16);
        let (tx_c, mut rx_c) = mpsc::channel(16);
        let mut other = beacon("c", 3);
        other.swarm_id = "another swarm".into();
        let a = tokio::spawn(run(cfg.clone(), beacon("a", 1), tx_a, stop.clone()));
        let b = tokio::spawn(run(cfg.clone(), beacon("b", 2), tx_b, stop.clone()));
        let c = tokio::spawn(run(cfg.clone(), other, tx_c, stop.clone()));
        let deadline = Duration::from_secs(5);
        let at_a = tokio::time::timeout(deadline, rx_a.recv())
            .await
            .unwrap()
            .unwrap();
        let at_b = tokio::time::timeout(deadline, rx_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((at_a.name.as_str(), at_a.addr.port()), ("b", 2));
        assert_eq!((at_b.name.as_str(), at_b.addr.port()), ("a", 1));
        assert!(at_a.addr.ip().is_loopback());
        // The node of another swarm hears nobody and nobody hears it.
        assert!(rx_c.try_recv().is_err());
        stop.cancel();
        for t in [a, b, c] {
            t.await.unwrap().unwrap();
        }
    }
}
