//! Streams: the pieces of output (LLM tokens) of running jobs, kept at the job's **owner**
//! for the clients that asked.
//!
//! A worker running a job of this node publishes its pieces here directly; a worker running a
//! stolen job sends them to the owner's PeerService, which publishes them here. A client
//! subscribes by job id and gets what was published so far, then the rest as it comes, so it
//! does not matter whether it subscribes before or after the job starts. Streams are volatile
//! (a restart loses them; the job's durable result does not), and are forgotten a while after
//! their last piece or subscriber, never while a client follows them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use myco_runtime::cluster::wire::StreamPiece;
use myco_runtime::queue::JobId;
use tokio::sync::broadcast;

/// How long a stream is kept after its last piece.
const KEEP: Duration = Duration::from_secs(600);

/// Pieces a live subscriber may fall behind by before it re-reads from the start.
const CAPACITY: usize = 1024;

/// The node's streams, by job. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Streams {
    inner: Arc<Mutex<HashMap<JobId, Entry>>>,
}

#[derive(Debug)]
struct Entry {
    pieces: Vec<StreamPiece>,
    tx: broadcast::Sender<StreamPiece>,
    touched: Instant,
}

impl Entry {
    fn new() -> Entry {
        Entry {
            pieces: Vec::new(),
            tx: broadcast::channel(CAPACITY).0,
            touched: Instant::now(),
        }
    }
}

impl Streams {
    /// Add pieces of job `id`'s output, in order.
    pub fn publish(&self, id: JobId, pieces: Vec<StreamPiece>) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, e| e.tx.receiver_count() > 0 || now.duration_since(e.touched) < KEEP);
        let entry = map.entry(id).or_insert_with(Entry::new);
        entry.touched = now;
        for piece in pieces {
            // No receiver is fine: late subscribers read `pieces`.
            let _ = entry.tx.send(piece.clone());
            entry.pieces.push(piece);
        }
    }

    /// What job `id` has published so far, and a receiver for what comes next (no piece is
    /// in both, none is missed).
    pub fn subscribe(&self, id: JobId) -> (Vec<StreamPiece>, broadcast::Receiver<StreamPiece>) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(id).or_insert_with(Entry::new);
        entry.touched = Instant::now();
        (entry.pieces.clone(), entry.tx.subscribe())
    }
}

/// One client's view of a stream: every piece once, in order, even if it falls behind.
#[derive(Debug)]
pub struct Subscription {
    streams: Streams,
    id: JobId,
    backlog: std::collections::VecDeque<StreamPiece>,
    rx: broadcast::Receiver<StreamPiece>,
    /// Pieces handed out so far.
    seen: usize,
}

impl Subscription {
    pub fn new(streams: &Streams, id: JobId) -> Subscription {
        let (backlog, rx) = streams.subscribe(id);
        Subscription {
            streams: streams.clone(),
            id,
            backlog: backlog.into(),
            rx,
            seen: 0,
        }
    }

    /// The next piece; waits for it. `None` only if the stream's entry was dropped.
    pub async fn next(&mut self) -> Option<StreamPiece> {
        loop {
            if let Some(p) = self.backlog.pop_front() {
                self.seen += 1;
                return Some(p);
            }
            match self.rx.recv().await {
                Ok(p) => {
                    self.seen += 1;
                    return Some(p);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up(),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Fell behind: read again from the start, skipping what was handed out.
    fn catch_up(&mut self) {
        let (all, rx) = self.streams.subscribe(self.id);
        self.rx = rx;
        self.backlog = all.into_iter().skip(self.seen).collect();
    }

    /// A piece that is already here, without waiting.
    pub fn try_next(&mut self) -> Option<StreamPiece> {
        if let Some(p) = self.backlog.pop_front() {
            self.seen += 1;
            return Some(p);
        }
        match self.rx.try_recv() {
            Ok(p) => {
                self.seen += 1;
                Some(p)
            }
            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                self.catch_up();
                self.try_next()
            }
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(i: i32) -> StreamPiece {
        StreamPiece {
            run: 1,
            token: Some(i),
            text: i.to_string(),
        }
    }

    #[tokio::test]
    async fn late_and_lagging_subscribers_see_every_piece_once_in_order() {
        let streams = Streams::default();
        let id = JobId::new();
        streams.publish(id, (0..10).map(piece).collect());
        let mut late = Subscription::new(&streams, id);
        // Far more than the channel holds, while `late` is not reading.
        streams.publish(id, (10..3000).map(piece).collect());
        let mut got = Vec::new();
        while let Some(p) = late.try_next() {
            got.push(p.token.unwrap_or(-1));
        }
        assert_eq!(got, (0..3000).collect::<Vec<_>>());
        streams.publish(id, vec![piece(3000)]);
        assert_eq!(late.next().await.and_then(|p| p.token), Some(3000));
    }
}
