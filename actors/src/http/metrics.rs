//! `/metrics`: the node's counters and gauges in Prometheus' text format, under the metric
//! names dashboards already use.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use myco_jobs::JobKind;
use myco_runtime::queue::{Histogram, StateName};

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
    let stats = node.queue().stats();
    let restarts = node.worker_restarts().await;
    let load = node.load().await;
    let mut out = String::new();
    family(
        &mut out,
        "myco_jobs",
        "Jobs in this node's queue, by state.",
        "gauge",
    );
    for s in StateName::ALL {
        let _ = writeln!(out, "myco_jobs{{state=\"{s}\"}} {}", counts[s.index()]);
    }
    family(
        &mut out,
        "myco_jobs_finished_total",
        "Jobs finished since the node started, by kind and final state.",
        "counter",
    );
    for kind in JobKind::ALL {
        for s in [StateName::Done, StateName::Dead, StateName::Cancelled] {
            let n = stats.finished.get(&(kind, s)).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "myco_jobs_finished_total{{kind=\"{kind}\",state=\"{s}\"}} {n}"
            );
        }
    }
    family(
        &mut out,
        "myco_job_attempts_failed_total",
        "Failed attempts since the node started, by kind.",
        "counter",
    );
    for kind in JobKind::ALL {
        let n = stats.failed_attempts.get(&kind).copied().unwrap_or(0);
        let _ = writeln!(out, "myco_job_attempts_failed_total{{kind=\"{kind}\"}} {n}");
    }
    family(
        &mut out,
        "myco_job_latency_seconds",
        "Time from submission to done, by kind.",
        "histogram",
    );
    for kind in JobKind::ALL {
        let h = stats.latency.get(&kind).cloned().unwrap_or_default();
        write_histogram(&mut out, kind, &h);
    }
    family(
        &mut out,
        "myco_queue_commits_total",
        "Queue write transactions committed.",
        "counter",
    );
    let _ = writeln!(out, "myco_queue_commits_total {}", stats.commits);
    family(
        &mut out,
        "myco_queue_ops_total",
        "Queue operations committed.",
        "counter",
    );
    let _ = writeln!(out, "myco_queue_ops_total {}", stats.ops);
    family(
        &mut out,
        "myco_worker_restarts_total",
        "Workers replaced after a failure.",
        "counter",
    );
    let _ = writeln!(out, "myco_worker_restarts_total {restarts}");
    family(
        &mut out,
        "myco_http_requests_total",
        "HTTP requests served, by method and route.",
        "counter",
    );
    let served = requests.0.lock().map(|c| c.clone()).unwrap_or_default();
    for ((method, route), n) in served {
        let _ = writeln!(
            out,
            "myco_http_requests_total{{method=\"{method}\",route=\"{route}\"}} {n}"
        );
    }
    if let Some(load) = load {
        family(
            &mut out,
            "myco_jobs_running",
            "Jobs running on this node's workers.",
            "gauge",
        );
        let _ = writeln!(out, "myco_jobs_running {}", load.running);
        family(
            &mut out,
            "myco_workers_idle",
            "Batch workers waiting for a job.",
            "gauge",
        );
        let _ = writeln!(out, "myco_workers_idle {}", load.idle_workers);
        family(
            &mut out,
            "myco_executives_idle",
            "Executives (LLM inference) waiting for a job.",
            "gauge",
        );
        let _ = writeln!(out, "myco_executives_idle {}", load.idle_executives);
        family(
            &mut out,
            "myco_steals_total",
            "Successful steals by this node.",
            "counter",
        );
        let _ = writeln!(out, "myco_steals_total {}", load.steals);
        family(
            &mut out,
            "myco_stolen_jobs_total",
            "Jobs this node stole from peers.",
            "counter",
        );
        let _ = writeln!(out, "myco_stolen_jobs_total {}", load.stolen_jobs);
        family(
            &mut out,
            "myco_steal_seconds_total",
            "Summed latency of successful steals.",
            "counter",
        );
        let _ = writeln!(out, "myco_steal_seconds_total {}", load.steal_seconds);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

/// The `# HELP` and `# TYPE` lines that open a metric family.
fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn write_histogram(out: &mut String, kind: JobKind, h: &Histogram) {
    let mut cumulative = 0;
    for (i, bound) in Histogram::BOUNDS_MS.iter().enumerate() {
        cumulative += h.buckets[i];
        let le = *bound as f64 / 1000.0;
        let _ = writeln!(
            out,
            "myco_job_latency_seconds_bucket{{kind=\"{kind}\",le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "myco_job_latency_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(
        out,
        "myco_job_latency_seconds_sum{{kind=\"{kind}\"}} {}",
        h.sum_ms as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "myco_job_latency_seconds_count{{kind=\"{kind}\"}} {}",
        h.count
    );
}

/// `/metrics`.
pub fn routes() -> Router<NodeHandle> {
    Router::new().route("/metrics", get(metrics))
}
