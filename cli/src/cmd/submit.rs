//! `myco submit`: send job files to the node (all or none); with `--wait`, follow each to its
//! end on the node's event stream ([`crate::wait`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use myco_runtime::config::Home;
use myco_runtime::queue::{JobId, JobView, StateName};

use crate::args::Cli;
use crate::cmd::common::{client, print_json, read_spec, report_end};
use crate::wait::{Event, Target, Watch};

pub async fn run(cli: &Cli, home: &Home, files: &[PathBuf], wait: bool) -> Result<ExitCode> {
    let specs = files
        .iter()
        .map(|f| read_spec(f))
        .collect::<Result<Vec<_>>>()?;
    let client = client(cli, home);
    let reply = client.submit(specs).await?;
    if !wait {
        if cli.json {
            print_json(&reply)?;
        } else {
            for j in &reply.jobs {
                let note = if j.created {
                    ""
                } else {
                    " (already submitted)"
                };
                println!("{}{note}", j.id);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let target = Target::Remote(&client);
    let mut all_done = true;
    let mut views = Vec::new();
    for j in &reply.jobs {
        if !cli.json {
            eprintln!("submitted {}", j.id);
        }
        let job = wait_for(cli, target, j.id).await?;
        let failures = if job.progress.failed > 0 {
            target.failures(j.id).await
        } else {
            Vec::new()
        };
        if !cli.json {
            report_end(&job, &failures);
        }
        all_done &= job.state == StateName::Done;
        views.push(job);
    }
    if cli.json {
        print_json(&serde_json::json!({ "jobs": views }))?;
    }
    Ok(if all_done {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Follow job `id` to its end on the node's event stream: an LLM's tokens as they come
/// (not with `--json`), else a progress bar.
async fn wait_for(cli: &Cli, target: Target<'_>, id: JobId) -> Result<JobView> {
    // The kind decides what to show; the stream's first event says it.
    let mut watch: Option<Watch> = None;
    let job = target
        .follow(id, false, |event| {
            let w = watch.get_or_insert_with(|| {
                let streams = match &event {
                    Event::Progress(v) | Event::End(v) => v.kind.traits().streams,
                    Event::Piece(_) => true,
                };
                Watch::new(cli.json, streams && !cli.json)
            });
            w.on(event)
        })
        .await?;
    if let Some(w) = &mut watch
        && job.kind.traits().streams
        && !cli.json
    {
        // Text the stream did not carry (pieces lost with a peer) is in the result.
        let mut bytes = Vec::new();
        if job.state == StateName::Done
            && target.write_result(id, &mut bytes).await.is_ok()
            && let Ok(g) = serde_json::from_slice::<myco_jobs::llm::infer::Generation>(&bytes)
        {
            w.rest(&g.text);
        }
        println!();
    }
    Ok(job)
}
