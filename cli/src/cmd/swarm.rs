//! `myco swarm`, `myco plan`, `myco invite` and `myco detect`: the swarm, how a model would
//! be split over it, a token to join it, and this machine's capabilities.

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use myco_runtime::cluster::secret::SwarmSecret;
use myco_runtime::config::Home;

use crate::args::Cli;
use crate::cmd::common::{BadInput, client, gib, mib, print_json};

pub async fn swarm(cli: &Cli, home: &Home) -> Result<ExitCode> {
    let reply = client(cli, home).swarm().await?;
    if cli.json {
        print_json(&reply)?;
    } else {
        print_swarm(&reply.nodes);
    }
    Ok(ExitCode::SUCCESS)
}

/// `myco models`: per node of the swarm, the models it holds (from its heartbeat).
pub async fn models(cli: &Cli, home: &Home) -> Result<ExitCode> {
    let reply = client(cli, home).swarm().await?;
    let rows: Vec<serde_json::Value> = reply
        .nodes
        .iter()
        .filter_map(|n| Some((n, n.info.as_ref()?)))
        .flat_map(|(n, i)| {
            i.models.iter().map(move |m| {
                serde_json::json!({
                    "node": n.name, "model": m.name, "format": m.format,
                    "bytes": m.size_bytes, "architecture": m.architecture,
                    "layers": m.layers, "sha256": m.sha256,
                })
            })
        })
        .collect();
    // Each node's model cache (slices of models it does not hold) and its transfers.
    let name_of = |sha: &str| {
        reply
            .nodes
            .iter()
            .filter_map(|n| n.info.as_ref())
            .flat_map(|i| &i.models)
            .find(|m| m.sha256.as_deref() == Some(sha))
            .map_or_else(|| sha[..16.min(sha.len())].to_owned(), |m| m.name.clone())
    };
    let cached: Vec<serde_json::Value> = reply
        .nodes
        .iter()
        .filter_map(|n| Some((n, n.info.as_ref()?)))
        .flat_map(|(n, i)| {
            i.cached.iter().map(move |c| {
                serde_json::json!({
                    "node": n.name, "model": name_of(&c.source), "source": c.source,
                    "first": c.first, "end": c.end, "bytes": c.bytes,
                })
            })
        })
        .collect();
    let transfers: Vec<serde_json::Value> = reply
        .nodes
        .iter()
        .filter_map(|n| Some((n, n.info.as_ref()?)))
        .flat_map(|(n, i)| {
            i.transfers.iter().map(move |t| {
                serde_json::json!({
                    "node": n.name, "what": t.what, "from": t.from, "sha256": t.sha256,
                    "done": t.done, "size": t.size,
                })
            })
        })
        .collect();
    if cli.json {
        print_json(&serde_json::json!({
            "models": rows, "cached": cached, "transfers": transfers,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<32} {:>10} {:<12} {:>6}  SHA-256",
        "NODE", "MODEL", "SIZE", "ARCH", "LAYERS"
    );
    for r in &rows {
        let text = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
        println!(
            "{:<16} {:<32} {:>10} {:<12} {:>6}  {}",
            text("node"),
            text("model"),
            format!(
                "{:.1} MiB",
                r["bytes"].as_u64().unwrap_or(0) as f64 / f64::from(1u32 << 20)
            ),
            text("architecture"),
            r["layers"].as_u64().map_or("-".into(), |l| l.to_string()),
            r["sha256"]
                .as_str()
                .map_or("(not read yet)".to_owned(), |h| h[..16.min(h.len())]
                    .to_owned()),
        );
    }
    if !cached.is_empty() {
        println!("\ncached slices (stages of models a node does not hold):");
        for c in &cached {
            println!(
                "  {:<16} {:<32} layers {:>3}..{:<3} {:>10}",
                c["node"].as_str().unwrap_or("-"),
                c["model"].as_str().unwrap_or("-"),
                c["first"],
                c["end"],
                mib(c["bytes"].as_u64().unwrap_or(0)),
            );
        }
    }
    if !transfers.is_empty() {
        println!("\ntransfers in flight:");
        for t in &transfers {
            let (done, size) = (
                t["done"].as_u64().unwrap_or(0),
                t["size"].as_u64().unwrap_or(0),
            );
            println!(
                "  {:<16} {} from {}: {} of {} ({:.0} %)",
                t["node"].as_str().unwrap_or("-"),
                t["what"].as_str().unwrap_or("-"),
                t["from"].as_str().unwrap_or("-"),
                mib(done),
                mib(size),
                100.0 * done as f64 / size.max(1) as f64,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `myco models rm NAME`.
pub async fn remove_model(cli: &Cli, home: &Home, name: &str) -> Result<ExitCode> {
    let r = client(cli, home).remove_model(name).await?;
    if cli.json {
        print_json(&r)?;
    } else {
        let file = if r.file { "its file" } else { "no file" };
        println!(
            "removed {} from this node: {file}, {} cached slice(s), {} in all",
            r.model,
            r.slices,
            mib(r.bytes)
        );
        if r.kept > 0 {
            println!(
                "kept {} slice(s) that loaded stages use (they unload a minute after their last run; remove it again then)",
                r.kept
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `myco models pull NAME [--from NODE]`.
pub async fn pull(cli: &Cli, home: &Home, name: &str, from: Option<&str>) -> Result<ExitCode> {
    let p = client(cli, home).pull(name, from).await?;
    if cli.json {
        print_json(&p)?;
    } else {
        println!(
            "{} from {}: {} in {:.1} s ({:.0} MB/s), sha256 {}",
            p.model,
            p.from,
            mib(p.bytes),
            p.seconds,
            p.bytes as f64 / 1e6 / p.seconds.max(1e-9),
            p.sha256
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn plan(cli: &Cli, home: &Home, model: &str, n_ctx: u32) -> Result<ExitCode> {
    let reply = client(cli, home).plan(model, n_ctx).await?;
    if cli.json {
        print_json(&reply)?;
    } else {
        print_plan(&reply);
    }
    Ok(if reply.error.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `myco token`: the API token of --home (made now if the node never started there).
pub fn token(cli: &Cli, home: &Home) -> Result<ExitCode> {
    home.ensure().map_err(|e| BadInput(e.to_string()))?;
    let (token, _) = myco_runtime::access::ApiToken::load_or_create(&home.api_token_path())
        .map_err(|e| BadInput(e.to_string()))?;
    if cli.json {
        print_json(&serde_json::json!({ "token": token.as_str() }))?;
    } else {
        println!("{}", token.as_str());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn invite(cli: &Cli, home: &Home, addr: &[String]) -> Result<ExitCode> {
    let (secret, _) =
        SwarmSecret::load_or_create(&home.secret_path()).map_err(|e| BadInput(e.to_string()))?;
    let addrs = if addr.is_empty() {
        let reply = client(cli, home).swarm().await?;
        reply
            .nodes
            .into_iter()
            .next()
            .and_then(|m| m.info)
            .map(|i| vec![i.cluster_addr])
            .ok_or_else(|| {
                anyhow!("the node is not in a swarm (started without a cluster port?)")
            })?
    } else {
        addr.to_vec()
    };
    let token = secret.invite_token(&addrs);
    if cli.json {
        print_json(&serde_json::json!({ "token": token, "swarm": secret.swarm_id() }))?;
    } else {
        println!("{token}");
        eprintln!(
            "join with: myco node --join-token <that token>   (it holds the swarm secret: share it like a password)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn detect(cli: &Cli) -> Result<ExitCode> {
    let caps = myco_actors::features::detect();
    if cli.json {
        print_json(&caps)?;
    } else {
        println!("host      {} ({}, {})", caps.hostname, caps.os, caps.arch);
        println!("cpu       {} cores, {}", caps.cores, caps.cpu_brand);
        println!(
            "ram       {} total, {} free",
            gib(caps.ram_total_bytes),
            gib(caps.ram_free_bytes)
        );
        if caps.gpus.is_empty() {
            println!("gpus      none");
        }
        for g in &caps.gpus {
            println!("gpu       {} ({})", g.name, gib(g.vram_bytes));
        }
        // What llama.cpp in this build can compute on: the CPU, and GPUs of a GPU build.
        #[cfg(feature = "infer")]
        match myco_jobs::llm::infer::engine::cpu_kernels() {
            Ok(variant) => {
                println!("kernels   cpu {variant} (llama.cpp's CPU backend for this CPU)")
            }
            Err(why) => println!("compute   none: {why}"),
        }
        for d in &caps.devices {
            println!(
                "compute   {} ({}, {}): {} free of {}",
                d.name,
                d.kind,
                d.description,
                gib(d.free),
                gib(d.total)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `myco plan`: the model, the candidate nodes, then node → layers → bytes.
fn print_plan(p: &myco_actors::http::swarm::PlanReply) {
    println!(
        "{} ({}, {} layers): {} with the KV cache for {} tokens ({} a layer)",
        p.model,
        p.architecture,
        p.layers,
        mib(p.total_bytes),
        p.n_ctx,
        mib(p.kv_bytes_per_layer)
    );
    if let Some(sha) = &p.sha256 {
        println!("sha256 {sha}");
    }
    println!("nodes up, with the memory each offers to stages (* holds the file):");
    for n in &p.nodes {
        let used = p.stages.iter().any(|s| s.node == n.name);
        let note = if used || p.stages.is_empty() {
            ""
        } else {
            "  (left out: too small for one layer, or not needed)"
        };
        let gpu = if n.gpu_bytes > 0 {
            format!(" ({} on its GPU)", mib(n.gpu_bytes))
        } else {
            String::new()
        };
        let star = if n.holds { "*" } else { " " };
        println!("{star} {:<16} {:>12}{gpu}{note}", n.name, mib(n.free_bytes));
    }
    if let Some(c) = &p.choice {
        println!("{}: {}", c.mode, c.why);
    }
    match (&p.error, p.stages.len()) {
        (Some(e), _) => println!("no plan: {e}"),
        (None, 1) => println!("runs whole on {} (it fits; no split):", p.stages[0].node),
        (None, n) => println!("split over {n} nodes, in proportion to their memory:"),
    }
    for s in &p.stages {
        let fetch = p
            .fetches
            .iter()
            .find(|f| f.node == s.node && (f.first, f.end) == (s.first, s.end))
            .map_or_else(String::new, |f| {
                format!("  (fetches {} from {})", mib(f.bytes), f.from)
            });
        println!(
            "  {:<16} -> layers {:>3}..{:<3} -> {}{fetch}",
            s.node,
            s.first,
            s.end,
            mib(s.bytes)
        );
    }
}

fn print_swarm(nodes: &[myco_actors::swarm::view::MemberView]) {
    println!(
        "{:<16} {:<6} {:<28} {:>5} {:>17} {:>5} {:>11} {:>7} {:>9}",
        "NAME",
        "STATUS",
        "ROLES",
        "CORES",
        "RAM FREE/TOTAL",
        "GPUS",
        "RUNNING",
        "QUEUED",
        "HEARTBEAT"
    );
    for n in nodes {
        if let Some(why) = &n.why_not {
            println!("{:<16} {}  {why}", n.name, n.status);
            continue;
        }
        let Some(i) = &n.info else {
            println!("{:<16} {:<6}", n.name, n.status);
            continue;
        };
        let roles: Vec<String> = i
            .roles
            .iter()
            .map(|r| {
                serde_json::to_value(r)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        println!(
            "{:<16} {:<6} {:<28} {:>5} {:>17} {:>5} {:>6} {:>11} {:>7} {:>8.1}s",
            n.name,
            n.status,
            roles.join(","),
            i.caps.cores,
            format!(
                "{:.1}/{:.1} GiB",
                i.caps.ram_free_bytes as f64 / (1u64 << 30) as f64,
                i.caps.ram_total_bytes as f64 / (1u64 << 30) as f64
            ),
            gpus_column(&i.caps),
            i.models.len(),
            format!("{}/{}", i.load.running, i.load.slots),
            i.load.queued,
            n.heartbeat_age_ms as f64 / 1000.0
        );
    }
}

/// The swarm table's GPU column: the GPUs this node's build computes on (free memory),
/// else the count of GPUs the machine has.
fn gpus_column(caps: &myco_runtime::detect::Capabilities) -> String {
    let on: Vec<String> = caps
        .devices
        .iter()
        .filter(|d| d.is_gpu())
        .map(|d| format!("{} {:.1}G", d.name, d.free as f64 / (1u64 << 30) as f64))
        .collect();
    if on.is_empty() {
        caps.gpus.len().to_string()
    } else {
        on.join(",")
    }
}
