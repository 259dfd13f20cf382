//! `/metrics`: the node's counters and gauges in Prometheus' text format (0.0.4), encoded by
//! the `prometheus-client` crate, under the metric names dashboards already use.
//!
//! Every value is read when the scrape comes (the queue's counters, the coordinator's load,
//! the request counts) and handed to the encoder as one collector: nothing here keeps a
//! second copy of a count.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use myco_jobs::JobKind;
use myco_runtime::queue::{Histogram, QueueStats, StateName};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::coordinator::Load;
use crate::http::error::{ApiError, blocking};
use crate::node::handle::NodeHandle;

/// Requests served since the node started, by method and route.
#[derive(Debug, Clone, Default)]
pub struct Requests(Arc<Mutex<BTreeMap<(String, String), u64>>>);

/// Count a request by its method and route (the route's pattern, not the path: one series
/// for every job id).
pub async fn count(State(requests): State<Requests>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    {
        let mut counts = requests.0.lock().unwrap_or_else(|p| p.into_inner());
        *counts
            .entry((req.method().as_str().to_owned(), route))
            .or_default() += 1;
    }
    next.run(req).await
}

async fn metrics(
    State(node): State<NodeHandle>,
    Extension(requests): Extension<Requests>,
) -> Result<Response, ApiError> {
    let q = node.queue().clone();
    let counts = blocking(move || q.counts()).await?;
    let scrape = Scrape {
        counts,
        stats: node.queue().stats(),
        restarts: node.worker_restarts().await,
        load: node.load().await,
        requests: requests.0.lock().map(|c| c.clone()).unwrap_or_default(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .map_err(|e| ApiError::internal(format!("cannot encode the metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        out,
    )
        .into_response())
}

/// Everything one scrape reports, read when it came.
#[derive(Debug)]
struct Scrape {
    counts: [u64; 6],
    stats: QueueStats,
    restarts: u64,
    load: Option<Load>,
    requests: BTreeMap<(String, String), u64>,
}

/// A counter or gauge without labels.
fn single<T>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    value: T,
) -> std::fmt::Result
where
    T: prometheus_client::encoding::EncodeCounterValue
        + prometheus_client::encoding::EncodeGaugeValue,
{
    let mut m = e.encode_descriptor(name, help, None, metric_type)?;
    match metric_type {
        MetricType::Counter => m.encode_counter::<NoLabelSet, T, u64>(&value, None),
        _ => m.encode_gauge(&value),
    }
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let stats = &self.stats;
        {
            let mut m = e.encode_descriptor(
                "myco_jobs",
                "Jobs in this node's queue, by state.",
                None,
                MetricType::Gauge,
            )?;
            for s in StateName::ALL {
                let labels = [("state", s.as_str())];
                m.encode_family(&labels)?
                    .encode_gauge(&self.counts[s.index()])?;
            }
        }
        {
            // Counters are named without `_total`: the encoder adds it.
            let mut m = e.encode_descriptor(
                "myco_jobs_finished",
                "Jobs finished since the node started, by kind and final state.",
                None,
                MetricType::Counter,
            )?;
            for kind in JobKind::ALL {
                for s in [StateName::Done, StateName::Dead, StateName::Cancelled] {
                    let n = stats.finished.get(&(kind, s)).copied().unwrap_or(0);
                    let labels = [("kind", kind.as_str()), ("state", s.as_str())];
                    m.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, u64, u64>(&n, None)?;
                }
            }
        }
        {
            let mut m = e.encode_descriptor(
                "myco_job_attempts_failed",
                "Failed attempts since the node started, by kind.",
                None,
                MetricType::Counter,
            )?;
            for kind in JobKind::ALL {
                let n = stats.failed_attempts.get(&kind).copied().unwrap_or(0);
                let labels = [("kind", kind.as_str())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, u64, u64>(&n, None)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "myco_job_latency_seconds",
                "Time from submission to done, by kind.",
                None,
                MetricType::Histogram,
            )?;
            for kind in JobKind::ALL {
                let h = stats.latency.get(&kind).cloned().unwrap_or_default();
                let labels = [("kind", kind.as_str())];
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    h.sum_ms as f64 / 1000.0,
                    h.count,
                    &buckets(&h),
                    None,
                )?;
            }
        }
        single(
            &mut e,
            "myco_queue_commits",
            "Queue write transactions committed.",
            MetricType::Counter,
            stats.commits,
        )?;
        single(
            &mut e,
            "myco_queue_ops",
            "Queue operations committed.",
            MetricType::Counter,
            stats.ops,
        )?;
        single(
            &mut e,
            "myco_worker_restarts",
            "Workers replaced after a failure.",
            MetricType::Counter,
            self.restarts,
        )?;
        {
            let mut m = e.encode_descriptor(
                "myco_http_requests",
                "HTTP requests served, by method and route.",
                None,
                MetricType::Counter,
            )?;
            for ((method, route), n) in &self.requests {
                let labels = [("method", method.as_str()), ("route", route.as_str())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, u64, u64>(n, None)?;
            }
        }
        if let Some(load) = self.load {
            let gauges = [
                (
                    "myco_jobs_running",
                    "Jobs running on this node's workers.",
                    load.running,
                ),
                (
                    "myco_workers_idle",
                    "Batch workers waiting for a job.",
                    load.idle_workers,
                ),
                (
                    "myco_executives_idle",
                    "Executives (LLM inference) waiting for a job.",
                    load.idle_executives,
                ),
            ];
            for (name, help, v) in gauges {
                single(&mut e, name, help, MetricType::Gauge, v as u64)?;
            }
            single(
                &mut e,
                "myco_steals",
                "Successful steals by this node.",
                MetricType::Counter,
                load.steals,
            )?;
            single(
                &mut e,
                "myco_stolen_jobs",
                "Jobs this node stole from peers.",
                MetricType::Counter,
                load.stolen_jobs,
            )?;
            single(
                &mut e,
                "myco_steal_seconds",
                "Summed latency of successful steals.",
                MetricType::Counter,
                load.steal_seconds,
            )?;
        }
        Ok(())
    }
}

/// The histogram's finite buckets as `(upper bound in seconds, count in that bucket)`; the
/// encoder makes them cumulative and adds `+Inf` from the total count.
fn buckets(h: &Histogram) -> Vec<(f64, u64)> {
    Histogram::BOUNDS_MS
        .iter()
        .zip(h.buckets)
        .map(|(bound, n)| (*bound as f64 / 1000.0, n))
        .collect()
}

/// `/metrics`.
pub fn routes() -> Router<NodeHandle> {
    Router::new().route("/metrics", get(metrics))
}
