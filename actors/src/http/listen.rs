//! The API's TCP listener and its accept loop ([`serve`]), which defend the node against
//! clients that hold connections without using them:
//!
//! - at most `max` connections open at once (a semaphore, as mini-redis bounds its
//!   connections: the next one is accepted when one closes);
//! - at most `per_client` of them from one address: a connection over that is closed at
//!   once, so one address cannot take the places of everyone else;
//! - a request's header must arrive whole within the header timeout (config
//!   `header_timeout`, 10 s by default) of the server waiting for it (hyper's
//!   `header_read_timeout`, which runs from the moment a connection is ready for its next
//!   request: a new connection that sends nothing, a kept-alive one that goes idle, and a
//!   half-sent header are all closed when it fires);
//! - TCP_NODELAY on each, and the peer's address for the gate ([`Peer`]).
//!
//! axum's own `serve` sets no timeouts, hence this loop (hyper-util's, with graceful
//! shutdown); handlers and the router are axum's as before.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long a stop waits for requests in flight before it cuts them off.
const DRAIN: Duration = Duration::from_secs(5);

/// The connecting client's address (axum's `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

#[derive(Debug)]
pub struct Limited {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    per_client: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Limited {
    pub fn new(inner: TcpListener, max: usize, per_client: usize) -> Limited {
        Limited {
            inner,
            permits: Arc::new(Semaphore::new(max.max(1))),
            per_client: per_client.max(1),
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The next connection within the limits.
    pub async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            let permit = match self.permits.clone().acquire_owned().await {
                Ok(p) => p,
                // The semaphore is never closed; should it be, wait forever like a full one.
                Err(_) => std::future::pending().await,
            };
            let (tcp, addr) = match self.inner.accept().await {
                Ok(got) => got,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, as axum does.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let ip = addr.ip();
            {
                let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
                let n = open.entry(ip).or_insert(0);
                if *n >= self.per_client {
                    // Closed at once: this address holds its share already.
                    tracing::debug!(client = %ip, open = *n, "too many connections from one client: closed");
                    continue;
                }
                *n += 1;
            }
            // Results stream in several writes: without TCP_NODELAY, Nagle's algorithm and
            // delayed ACKs add ~40 ms to each response.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            return (
                Conn {
                    tcp,
                    _permit: permit,
                    _client: ClientSlot {
                        ip,
                        open: self.open.clone(),
                    },
                },
                addr,
            );
        }
    }
}

/// A connection's place among its address's connections, given back on drop.
#[derive(Debug)]
struct ClientSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A connection, holding its place among the `max` (and its client's) until it is dropped.
#[derive(Debug)]
pub struct Conn {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    _client: ClientSlot,
}

/// Serve `app` on `listener` until `stop` is cancelled; then stop accepting, let requests in
/// flight finish for a moment ([`DRAIN`]), and return.
pub async fn serve(
    mut listener: Limited,
    app: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    loop {
        let (conn, addr) = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            got = listener.accept() => got,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(Peer(addr)));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let served = http.serve_connection(TokioIo::new(conn), service);
        let watched = graceful.watch(served);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(client = %addr, error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("HTTP connections still open {DRAIN:?} into the stop: cut off");
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}
