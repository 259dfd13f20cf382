//! Response bodies written by a task through a channel: server-sent events (with keep-alive
//! comments) and streamed results. Dropping the response (the client went away) closes the
//! channel, so the writing task learns of it at its next send.

use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

type Chunk = Result<Vec<u8>, std::io::Error>;

/// The writing end of a server-sent event stream.
#[derive(Debug)]
pub struct Sse {
    tx: mpsc::Sender<Chunk>,
    beat: tokio::time::Interval,
}

/// An event stream: the writer, and the response to return.
pub fn channel() -> (Sse, Response) {
    let (tx, rx) = mpsc::channel(64);
    let mut beat = tokio::time::interval(Duration::from_secs(2));
    beat.reset();
    let response = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body(rx),
    )
        .into_response();
    (Sse { tx, beat }, response)
}

impl Sse {
    /// Send a frame; false once the client has gone away.
    pub async fn send(&self, frame: Vec<u8>) -> bool {
        self.tx.send(Ok(frame)).await.is_ok()
    }

    /// The next item of `rx`, sending a keep-alive comment every 2 s meanwhile: a client
    /// that went away is only noticed when a write fails, and proxies keep the stream open.
    /// `None` once `rx` has ended or the client has gone away.
    pub async fn next<T>(&mut self, rx: &mut mpsc::Receiver<T>) -> Option<T> {
        loop {
            tokio::select! {
                item = rx.recv() => return item,
                _ = self.beat.tick() => {
                    if !self.send(b": keep-alive\n\n".to_vec()).await {
                        return None;
                    }
                }
            }
        }
    }
}

/// A channel's receiving end as a response body; dropping the body drops the receiver.
pub fn body(mut rx: mpsc::Receiver<Chunk>) -> Body {
    Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
