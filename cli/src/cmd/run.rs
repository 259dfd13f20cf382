//! `myco run`: run a job file on an embedded node in this process, follow it like `submit
//! --wait` does (the same follower, through the same [`myco_actors::NodeHandle`]), and print
//! its result.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use myco_actors::{Node, Services, SpecSource};
use myco_runtime::config::Home;
use myco_runtime::queue::{JobId, StateName};

use crate::args::{Cli, NodeArgs};
use crate::cmd::common::{
    node_config, open_out, print_json, read_spec, report_end, shutdown_signal,
};
use crate::wait::{Target, Watch};

pub async fn run(
    cli: &Cli,
    home: &Home,
    file: &Path,
    out: Option<&Path>,
    args: &NodeArgs,
) -> Result<ExitCode> {
    let spec = read_spec(file)?;
    let cfg = node_config(cli, home, args)?;
    let node = Node::start(home.clone(), cfg, Services::EMBEDDED).await?;
    let outcome = run_on(cli, &node, spec, out).await;
    node.shutdown().await?;
    outcome
}

async fn run_on(cli: &Cli, node: &Node, spec: SpecSource, out: Option<&Path>) -> Result<ExitCode> {
    let handle = node.handle().clone();
    let submitted = handle.submit(vec![spec]).await?;
    let mut watch = Watch::new(cli.json, false);
    let id: JobId = submitted
        .first()
        .ok_or_else(|| anyhow!("the node accepted no job"))?
        .id;
    // An embedded node that cannot run the kind (an engine left out of the build, or a CPU
    // llama.cpp cannot run on) would wait for ever: say so, and keep the job.
    if let Ok(Some(view)) = handle.get(id).await
        && !myco_actors::features::kinds().contains(&view.kind)
    {
        eprintln!(
            "this node cannot run {} jobs (see the warning above, or the build's features); job {id} stays queued in {}: submit it to a node that runs them, or run the file again on one",
            view.kind,
            handle.queue().path().display()
        );
        return Ok(ExitCode::from(2));
    }
    let target = Target::Embedded(&handle);
    let job = tokio::select! {
        job = target.follow(id, false, |event| watch.on(event)) => job?,
        () = shutdown_signal() => {
            eprintln!("interrupted: job {id} stays queued in {}; run the same file again to resume", handle.queue().path().display());
            return Ok(ExitCode::from(130));
        }
    };
    let failures = target.failures(id).await;
    if job.state == StateName::Done && (out.is_some() || !cli.json) {
        target.write_result(id, &mut open_out(out)?).await?;
    }
    if cli.json {
        print_json(&job)?;
    } else {
        report_end(&job, &failures);
    }
    Ok(if job.state == StateName::Done {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
