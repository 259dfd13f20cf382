//! The cluster port: accepts TCP, completes the mutual-TLS handshake off the accept loop
//! (with a deadline and a cap on handshakes in flight), and hands authenticated streams to
//! ractor_cluster's `NodeServer`.
//!
//! myco runs its own accept loop because ractor_cluster's listener performs each TLS
//! handshake inline, with no deadline: one silent client would stall every later join. Here
//! a refused connection is logged with the reason in plain words.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::{NetworkStream, NodeServerMessage};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Most TLS handshakes in flight at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 64;
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// Turn a TLS error into a reason a person can act on.
pub fn explain_tls(err: &str) -> String {
    let lower = err.to_ascii_lowercase();
    let why = if lower.contains("unknownissuer") || lower.contains("badsignature") {
        "its certificate is not from this swarm: it holds a different swarm secret"
    } else if lower.contains("no certificates") || lower.contains("certificaterequired") {
        "it presented no certificate: not a myco node of this swarm"
    } else if lower.contains("corrupt message") || lower.contains("invalidcontenttype") {
        "it does not speak TLS (a plaintext client?)"
    } else if lower.contains("eof") || lower.contains("reset") {
        "it hung up during the handshake (the other side refused us: different swarm secret?)"
    } else {
        "TLS handshake failed"
    };
    format!("{why} ({err})")
}

/// Accept cluster connections until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    server: ActorRef<NodeServerMessage>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut handshakes = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        while handshakes.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cluster port: accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let server = server.clone();
        handshakes.spawn(async move {
            let _permit = permit;
            handshake(tcp, peer, acceptor, server).await;
        });
    }
    handshakes.shutdown().await;
}

async fn handshake(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    server: ActorRef<NodeServerMessage>,
) {
    let _ = tcp.set_nodelay(true);
    let Ok(local) = tcp.local_addr() else {
        return;
    };
    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let opened = NodeServerMessage::ConnectionOpened {
                stream: Box::new(NetworkStream::TlsServer {
                    peer_addr: peer,
                    local_addr: local,
                    stream,
                }),
                is_server: true,
            };
            if server.cast(opened).is_err() {
                tracing::debug!(%peer, "cluster port: node server gone");
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, "refused a cluster connection: {}", explain_tls(&e.to_string()));
        }
        Err(_) => {
            tracing::warn!(%peer, "refused a cluster connection: no TLS handshake within {HANDSHAKE_DEADLINE:?}");
        }
    }
}
