//! `myco node`: start a node with the API and the swarm, until SIGINT or SIGTERM, then run
//! the shutdown protocol.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use myco_actors::{Node, Services};
use myco_runtime::config::Home;

use crate::args::{Cli, NodeArgs};
use crate::cmd::common::{node_config, print_json, shutdown_signal};

pub async fn run(cli: &Cli, home: &Home, args: &NodeArgs) -> Result<ExitCode> {
    let cfg = node_config(cli, home, args)?;
    let mut node = Node::start(home.clone(), cfg, Services::NODE).await?;
    let addr = node
        .api_addr()
        .ok_or_else(|| anyhow!("the API did not start"))?;
    let cluster = node
        .handle()
        .members()
        .await
        .into_iter()
        .next()
        .and_then(|m| m.info)
        .map(|i| i.cluster_addr);
    if cli.json {
        print_json(&serde_json::json!({
            "event": "started",
            "node": node.handle().name(),
            "api": addr.to_string(),
            "cluster": cluster,
            "home": home.root(),
        }))?;
    } else {
        println!(
            "myco node {} listening on http://{addr} (home {})",
            node.handle().name(),
            home.root().display()
        );
    }
    std::io::stdout().flush()?;
    let failed = tokio::select! {
        () = shutdown_signal() => false,
        () = node.stopped() => true,
    };
    if failed {
        bail!("the node's actors stopped unexpectedly; see the log above");
    }
    tracing::info!("stopping: finishing running jobs");
    node.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}
