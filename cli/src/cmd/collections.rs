//! `myco collections`: list the collections of a node's home, or `rm NAME` one. Asks the
//! node of --home (or --api); with none running, reads (or removes from) --home's
//! collections directly.

use std::process::ExitCode;

use anyhow::Result;
use myco_actors::http::swarm::{CollectionsReply, RemovedReply};
use myco_jobs::collection;
use myco_runtime::config::Home;

use crate::args::Cli;
use crate::cmd::common::{BadInput, from_home_node, print_json};

fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut x = bytes as f64;
    let mut unit = 0;
    while x >= 1000.0 && unit + 1 < UNITS.len() {
        x /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{x:.1} {}", UNITS[unit])
    }
}

/// "3 h ago", from a Unix time in ms.
fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

pub async fn list(cli: &Cli, home: &Home) -> Result<ExitCode> {
    let from_node = from_home_node(cli, home, |c| async move { c.collections().await }).await?;
    let reply = match from_node {
        Some(reply) => reply,
        None => CollectionsReply {
            collections: collection::list(&myco_jobs::home::collections_dir(home.root()))?,
        },
    };
    if cli.json {
        print_json(&reply)?;
        return Ok(ExitCode::SUCCESS);
    }
    if reply.collections.is_empty() {
        eprintln!("no collections yet: an archive job (kind = \"archive\") builds one");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<22} {:>7} {:>9} {:>9}  LAST RUN",
        "NAME", "MODEL", "FILES", "CHUNKS", "SIZE"
    );
    for c in &reply.collections {
        if let Some(e) = &c.error {
            println!("{:<24} unreadable: {e}", c.name);
            continue;
        }
        println!(
            "{:<24} {:<22} {:>7} {:>9} {:>9}  {}{}",
            c.name,
            c.model,
            c.files,
            c.chunks,
            size(c.bytes),
            ago(c.updated_ms),
            if c.keyword {
                ""
            } else {
                "  (format 1: no keyword index on disk until its next run)"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn remove(cli: &Cli, home: &Home, name: &str) -> Result<ExitCode> {
    if !collection::valid_name(name) {
        return Err(BadInput(format!(
            "`{name}` is not a collection name (letters, digits, `-`, `_`, `.`)"
        ))
        .into());
    }
    let from_node = from_home_node(
        cli,
        home,
        |c| async move { c.remove_collection(name).await },
    )
    .await?;
    let reply = match from_node {
        Some(reply) => reply,
        None => {
            let removed = collection::remove(&myco_jobs::home::collections_dir(home.root()), name)?;
            if !removed {
                return Err(BadInput(format!(
                    "no collection `{name}` in {}\nhint: `myco collections` lists them",
                    myco_jobs::home::collections_dir(home.root()).display()
                ))
                .into());
            }
            RemovedReply {
                name: name.to_owned(),
                removed,
            }
        }
    };
    if cli.json {
        print_json(&reply)?;
    } else {
        println!("removed collection {}", reply.name);
    }
    Ok(ExitCode::SUCCESS)
}
