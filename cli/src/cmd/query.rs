//! `myco query`: search a collection, on the node of its home or (without one) in this
//! process, reading the collection's files (not the queue: a `myco run` may hold it).

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use myco_runtime::config::Home;

use myco_jobs::filter::{Filter, parse_time};

use crate::args::{Cli, FilterArgs};
use crate::cmd::common::{BadInput, from_home_node, print_json};

pub async fn run(
    cli: &Cli,
    home: &Home,
    text: &str,
    collection: &str,
    k: usize,
    mode: myco_jobs::collection::Mode,
    filter: &FilterArgs,
) -> Result<ExitCode> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let time = |t: &Option<String>, flag: &str| {
        t.as_deref()
            .map(|t| parse_time(t, now).map_err(|e| BadInput(format!("--{flag}: {e}"))))
            .transpose()
    };
    let filter = Filter {
        source: filter.source.clone(),
        types: filter.types.clone(),
        modified_after_ms: time(&filter.since, "since")?,
        modified_before_ms: time(&filter.before, "before")?,
    };
    let req = myco_actors::query::QueryRequest {
        collection: collection.to_owned(),
        text: text.to_owned(),
        k,
        mode,
        filter,
    };
    let asked = &req;
    let from_node = from_home_node(cli, home, |c| async move { c.query(asked).await }).await?;
    let reply = match from_node {
        Some(reply) => reply,
        None => {
            eprintln!(
                "no node of {} answers: searching in this process (it loads the model each time; a running `myco node` keeps it loaded)",
                home.root().display()
            );
            myco_actors::query::query_here(home.root(), req, 0)
                .await
                .map_err(|e| match e {
                    myco_actors::query::QueryError::Failed(m) => anyhow!(m),
                    other => BadInput(other.to_string()).into(),
                })?
        }
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
