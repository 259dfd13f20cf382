//! `myco query`: search a collection, on the node or (without one) on an embedded node.

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use myco_actors::{Node, Services};
use myco_runtime::config::Home;

use crate::args::{Cli, NodeArgs};
use crate::client::Unreachable;
use crate::cmd::common::{BadInput, client, node_config, print_json};

pub async fn run(
    cli: &Cli,
    home: &Home,
    text: &str,
    collection: &str,
    k: usize,
    mode: myco_jobs::collection::Mode,
    args: &NodeArgs,
) -> Result<ExitCode> {
    let req = myco_actors::query::QueryRequest {
        collection: collection.to_owned(),
        text: text.to_owned(),
        k,
        mode,
    };
    let reply = match client(cli, home).query(&req).await {
        Err(e) if e.downcast_ref::<Unreachable>().is_some() => {
            eprintln!(
                "no node answers for {}: searching on a node started in this process (it loads the model each time; a running `myco node` keeps it loaded)",
                home.root().display()
            );
            let cfg = node_config(cli, home, args)?;
            let node = Node::start(home.clone(), cfg, Services::EMBEDDED).await?;
            let reply = myco_actors::query::query(node.handle(), req).await;
            node.shutdown().await?;
            reply.map_err(|e| match e {
                myco_actors::query::QueryError::Failed(m) => anyhow!(m),
                other => BadInput(other.to_string()).into(),
            })?
        }
        other => other?,
    };
    if cli.json {
        print_json(&reply)?;
    } else {
        for h in &reply.hits {
            let snippet: String = h.text.split_whitespace().collect::<Vec<_>>().join(" ");
            let snippet: String = snippet.chars().take(100).collect();
            let place = if h.headings.is_empty() {
                String::new()
            } else {
                format!(" ({})", h.headings.join(" > "))
            };
            println!(
                "{:>2}. {:.4}  {} #{}{place}  {snippet}",
                h.rank, h.score, h.source, h.index
            );
        }
        eprintln!(
            "{} chunks searched ({}); embedding {:.1} ms, search {:.2} ms",
            reply.searched,
            reply.mode.as_str(),
            reply.embed_ms,
            reply.search_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}
