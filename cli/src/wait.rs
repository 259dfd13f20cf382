//! Waiting for a job, the one way `myco submit --wait`, `myco run` and `myco ask` all wait:
//! follow the node's event stream of the job (`progress`, `piece`, then `end`) to its end.
//! Over HTTP that is `GET /api/jobs/{id}/stream`; in this process (`myco run`, an embedded
//! `ask`) it is the same follower ([`myco_actors::interactive::follow`]) through the same
//! [`NodeHandle`]. Nothing here polls.
//!
//! What to show of the events ([`Watch`]: a progress bar, an LLM's tokens) is here too; what
//! to do with the end is the command's.

use std::io::Write;

use anyhow::{Context, Result, anyhow};
use myco_actors::interactive::{Follow, Followed, Relay};
use myco_actors::{NodeHandle, SpecSource};
use myco_runtime::cluster::wire::StreamPiece;
use myco_runtime::queue::{JobId, JobView, ListFilter, StateName, Submitted};

use crate::client::{Client, read_sse};
use crate::progress::Progress;

/// What following a job yields.
#[derive(Debug)]
pub enum Event {
    Piece(StreamPiece),
    Progress(JobView),
    End(JobView),
}

/// The node a job runs on: over HTTP, or in this process.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Remote(&'a Client),
    Embedded(&'a NodeHandle),
}

impl Target<'_> {
    pub async fn submit(&self, specs: Vec<SpecSource>) -> Result<Vec<Submitted>> {
        Ok(match self {
            Target::Remote(c) => c.submit(specs).await?.jobs,
            Target::Embedded(h) => h.submit(specs).await?,
        })
    }

    /// Follow job `id`, calling `on` with each event until it returns false or the job
    /// ends. Returns the job's final status; if the stream broke off first (the node
    /// stopped), its status as the node reports it now.
    pub async fn follow(
        &self,
        id: JobId,
        cancel_on_disconnect: bool,
        mut on: impl FnMut(Event) -> Result<bool>,
    ) -> Result<JobView> {
        let mut end = None;
        match self {
            Target::Remote(c) => {
                let resp = c.stream(&id.to_string(), cancel_on_disconnect).await?;
                read_sse(resp, |event, data| {
                    let event = match event {
                        "piece" => Event::Piece(serde_json::from_str(data)?),
                        "progress" => Event::Progress(serde_json::from_str(data)?),
                        "end" => {
                            let view: JobView = serde_json::from_str(data)?;
                            end = Some(view.clone());
                            Event::End(view)
                        }
                        _ => return Ok(true),
                    };
                    let last = matches!(event, Event::End(_));
                    Ok(on(event)? && !last)
                })
                .await?;
            }
            Target::Embedded(h) => {
                let how = Follow {
                    cancel_on_drop: cancel_on_disconnect,
                    progress: true,
                };
                let mut rx = myco_actors::interactive::spawn_follow(h, id, how);
                while let Some(followed) = rx.recv().await {
                    let event = match followed {
                        Followed::Piece(p) => Event::Piece(p),
                        Followed::Progress(v) => Event::Progress(*v),
                        Followed::End(rec) => {
                            let view = rec.view();
                            end = Some(view.clone());
                            Event::End(view)
                        }
                    };
                    let last = matches!(event, Event::End(_));
                    if !on(event)? || last {
                        break;
                    }
                }
            }
        }
        match end {
            Some(job) => Ok(job),
            None => self.status(id).await,
        }
    }

    /// A job's status now (after a stream that broke off).
    pub async fn status(&self, id: JobId) -> Result<JobView> {
        match self {
            Target::Remote(c) => c.status(&id.to_string()).await,
            Target::Embedded(h) => h
                .get(id)
                .await?
                .map(|r| r.view())
                .ok_or_else(|| anyhow!("job {id} vanished")),
        }
    }

    /// Write a finished job's result to `sink` as it is read (a parent's is its
    /// children's, in order: one part in memory at a time).
    pub async fn write_result(&self, id: JobId, sink: &mut dyn Write) -> Result<()> {
        match self {
            Target::Remote(c) => {
                use futures_util::StreamExt;
                let mut stream = c.result(&id.to_string()).await?.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    sink.write_all(&chunk.context("the result stream broke off")?)?;
                }
            }
            Target::Embedded(h) => {
                let rec = h
                    .get(id)
                    .await?
                    .ok_or_else(|| anyhow!("job {id} vanished"))?;
                // A batch's result is its answers: its output file, then its error file.
                if let Some(files) = h.batch_files(&rec).await {
                    for path in files {
                        let mut f = std::fs::File::open(&path)
                            .with_context(|| format!("reading {}", path.display()))?;
                        std::io::copy(&mut f, sink)?;
                    }
                    return Ok(sink.flush()?);
                }
                for part in h.results(&rec).await? {
                    let queue = h.queue().clone();
                    let bytes = tokio::task::spawn_blocking(move || queue.result(part)).await??;
                    sink.write_all(&bytes.unwrap_or_default())?;
                }
            }
        }
        Ok(sink.flush()?)
    }

    /// The children of `id` that ended dead.
    pub async fn failures(&self, id: JobId) -> Vec<JobView> {
        match self {
            Target::Remote(c) => c
                .list(&[
                    ("parent", id.to_string()),
                    ("state", "dead".into()),
                    ("limit", "100000".into()),
                ])
                .await
                .map(|r| r.jobs)
                .unwrap_or_default(),
            Target::Embedded(h) => {
                let queue = h.queue().clone();
                tokio::task::spawn_blocking(move || {
                    queue.list(&ListFilter {
                        parent: Some(id),
                        state: Some(StateName::Dead),
                        limit: 100_000,
                        ..ListFilter::default()
                    })
                })
                .await
                .ok()
                .and_then(Result::ok)
                .map(|jobs| jobs.iter().map(|r| r.view()).collect())
                .unwrap_or_default()
            }
        }
    }
}

/// Shows a followed job: its progress (a bar on a terminal, log lines otherwise), and with
/// `tokens` its streamed text as it comes.
#[derive(Debug)]
pub struct Watch {
    progress: Option<Progress>,
    tokens: bool,
    relay: Relay,
    /// The text streamed so far.
    pub text: String,
}

impl Watch {
    /// `quiet`: no progress (`--json`); `tokens`: print streamed text to standard output.
    pub fn new(quiet: bool, tokens: bool) -> Watch {
        Watch {
            // Tokens on standard output and a bar on standard error would interleave.
            progress: (!tokens).then(|| Progress::new(quiet)),
            tokens,
            relay: Relay::default(),
            text: String::new(),
        }
    }

    /// Show one event; false once the job has ended.
    pub fn on(&mut self, event: Event) -> Result<bool> {
        match event {
            Event::Piece(p) => {
                if let Some(text) = self.relay.piece(&p) {
                    self.show(&text);
                }
            }
            Event::Progress(view) => {
                if let Some(p) = &mut self.progress {
                    p.update(&view);
                }
            }
            Event::End(_) => {
                if let Some(p) = self.progress.take() {
                    p.finish();
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Show whatever of a finished generation's `text` the stream did not carry (pieces
    /// lost with a peer).
    pub fn rest(&mut self, text: &str) {
        if let Some(rest) = self.relay.rest(text) {
            self.show(&rest);
        }
    }

    fn show(&mut self, text: &str) {
        self.text.push_str(text);
        if self.tokens {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }
}
