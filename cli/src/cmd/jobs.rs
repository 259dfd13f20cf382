//! `myco jobs`, `myco status`, `myco result`, `myco cancel`, `myco retry` and
//! `myco resubmit`: one request each to the node.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use myco_runtime::config::Home;
use myco_runtime::queue::JobView;

use crate::args::Cli;
use crate::cmd::common::{client, open_out, print_json};

/// What `myco jobs` lists.
#[derive(Debug)]
pub struct ListArgs<'a> {
    pub state: &'a Option<String>,
    pub kind: &'a Option<String>,
    pub parent: &'a Option<String>,
    pub all: bool,
    pub text: &'a Option<String>,
    pub limit: usize,
}

pub async fn list(cli: &Cli, home: &Home, a: ListArgs<'_>) -> Result<ExitCode> {
    let mut q = vec![("limit", a.limit.to_string())];
    if let Some(s) = a.state {
        q.push(("state", s.clone()));
    }
    if let Some(k) = a.kind {
        q.push(("kind", k.clone()));
    }
    if let Some(p) = a.parent {
        q.push(("parent", p.clone()));
    }
    if a.all {
        q.push(("all", "true".into()));
    }
    if let Some(t) = a.text {
        q.push(("text", t.clone()));
    }
    let reply = client(cli, home).list(&q).await?;
    if cli.json {
        print_json(&reply)?;
    } else {
        println!(
            "{:<26}  {:<6}  {:<9}  {:>13}  DESCRIPTION",
            "ID", "KIND", "STATE", "PROGRESS"
        );
        for j in &reply.jobs {
            println!(
                "{:<26}  {:<6}  {:<9}  {:>13}  {}",
                j.id,
                j.kind.as_str(),
                j.state.as_str(),
                format!("{}/{}", j.progress.done, j.progress.total),
                j.description
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(cli: &Cli, home: &Home, id: &str) -> Result<ExitCode> {
    let job = client(cli, home).status(id).await?;
    if cli.json {
        print_json(&job)?;
    } else {
        print_status(&job);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn result(cli: &Cli, home: &Home, id: &str, out: Option<&Path>) -> Result<ExitCode> {
    let resp = client(cli, home).result(id).await?;
    let mut sink = open_out(out)?;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("the result stream broke off")?;
        sink.write_all(&chunk)?;
    }
    sink.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(cli: &Cli, home: &Home, id: &str) -> Result<ExitCode> {
    let reply = client(cli, home).cancel(id).await?;
    if cli.json {
        print_json(&reply)?;
    } else {
        match reply.outcome {
            myco_runtime::queue::CancelOutcome::Cancelled => {
                println!("cancelled {}", reply.id)
            }
            myco_runtime::queue::CancelOutcome::AlreadyFinished(s) => {
                println!("{} had already finished: {s}", reply.id)
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn retry(cli: &Cli, home: &Home, id: &str) -> Result<ExitCode> {
    let reply = client(cli, home).retry(id).await?;
    if cli.json {
        print_json(&reply)?;
    } else if reply.requeued == 1 {
        println!("queued {} again with fresh attempts", reply.id);
    } else {
        println!(
            "queued {} failed children of {} again with fresh attempts",
            reply.requeued, reply.id
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn resubmit(cli: &Cli, home: &Home, id: &str) -> Result<ExitCode> {
    let reply = client(cli, home).resubmit(id).await?;
    if cli.json {
        print_json(&reply)?;
    } else {
        println!("resubmitted {} as {}", reply.from, reply.job.id);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(j: &JobView) {
    println!("id        {}", j.id);
    println!("kind      {}  ({})", j.kind, j.description);
    println!("state     {}", j.state);
    println!(
        "progress  {}/{} done, {} failed",
        j.progress.done, j.progress.total, j.progress.failed
    );
    if j.progress.items_total > 0 {
        println!(
            "files     {}/{}, {}",
            j.progress.items_done,
            j.progress.items_total,
            crate::progress::rate(j)
        );
    }
    println!("attempts  {} of {}", j.attempts, j.max_attempts);
    if let Some(h) = &j.holder {
        println!("holder    {h}");
    }
    if let Some(w) = &j.waiting {
        println!("waiting   {w}");
    }
    if let Some(e) = &j.error {
        println!("error     {}", e.message);
    }
    println!("history   (seconds after submission)");
    for h in &j.history {
        let at = h.at_ms.saturating_sub(j.created_ms) as f64 / 1000.0;
        match &h.note {
            Some(note) => println!("  {at:>9.1}  {:<9}  {note}", h.state.as_str()),
            None => println!("  {at:>9.1}  {}", h.state.as_str()),
        }
    }
}
