//! The commands: each turns parsed flags into calls on a node (over HTTP, or embedded for
//! `run` and `node`) and prints the outcome, human-readable or `--json`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use myco_actors::{Node, Services, SpecSource, SubmitError};
use myco_runtime::cluster::secret::SwarmSecret;
use myco_runtime::config::{Home, NodeConfig};
use myco_runtime::queue::{JobId, JobView, StateName};

use crate::ask::Ask;
use crate::client::{Client, NodeSaid, Unreachable};
use crate::wait::{Event, Target, Watch};
use crate::{Cli, Command, NodeArgs};

/// A bad-input error (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<NodeSaid>()
        .is_some_and(|n| n.code == "model_not_found")
    {
        return 2;
    }
    if e.downcast_ref::<Unreachable>().is_some() {
        3
    } else if e.downcast_ref::<BadInput>().is_some()
        || e.downcast_ref::<NodeSaid>()
            .is_some_and(|n| n.code == "invalid_spec" || n.status == 400)
        || e.downcast_ref::<SubmitError>()
            .is_some_and(|s| matches!(s, SubmitError::Spec { .. }))
    {
        2
    } else {
        1
    }
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let home = Home::new(cli.home.clone().unwrap_or_else(Home::default_root));
    let verbose_node = matches!(cli.command, Command::Node(_));
    init_logging(verbose_node);
    match cli.command {
        Command::Node(ref args) => node(&cli, &home, args).await,
        Command::Run {
            ref file,
            ref out,
            node: ref args,
        } => run_embedded(&cli, &home, file, out.as_deref(), args).await,
        Command::Submit { ref files, wait } => submit(&cli, &home, files, wait).await,
        Command::Jobs {
            ref state,
            ref kind,
            ref parent,
            all,
            limit,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(s) = state {
                q.push(("state", s.clone()));
            }
            if let Some(k) = kind {
                q.push(("kind", k.clone()));
            }
            if let Some(p) = parent {
                q.push(("parent", p.clone()));
            }
            if all {
                q.push(("all", "true".into()));
            }
            let reply = client(&cli, &home).list(&q).await?;
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
        Command::Status { ref id } => {
            let job = client(&cli, &home).status(id).await?;
            if cli.json {
                print_json(&job)?;
            } else {
                print_status(&job);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Result { ref id, ref out } => {
            let resp = client(&cli, &home).result(id).await?;
            let mut sink = open_out(out.as_deref())?;
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.context("the result stream broke off")?;
                sink.write_all(&chunk)?;
            }
            sink.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { ref id } => {
            let reply = client(&cli, &home).cancel(id).await?;
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
        Command::Query {
            ref text,
            ref collection,
            k,
            node: ref args,
        } => {
            let req = myco_actors::query::QueryRequest {
                collection: collection.clone(),
                text: text.clone(),
                k,
            };
            let reply = match client(&cli, &home).query(&req).await {
                Err(e) if e.downcast_ref::<Unreachable>().is_some() => {
                    let cfg = node_config(&cli, &home, args)?;
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
                    println!(
                        "{:>2}. {:.4}  {} #{}  {snippet}",
                        h.rank, h.score, h.source, h.index
                    );
                }
                eprintln!(
                    "{} chunks searched; embedding {:.1} ms, search {:.2} ms",
                    reply.searched, reply.embed_ms, reply.search_ms
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(crate::BenchCommand::Steal(ref args)) => {
            crate::bench::steal(args, cli.json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan { ref model, n_ctx } => {
            let reply = client(&cli, &home).plan(model, n_ctx).await?;
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
        Command::Swarm => {
            let reply = client(&cli, &home).swarm().await?;
            if cli.json {
                print_json(&reply)?;
            } else {
                print_swarm(&reply.nodes);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Invite { ref addr } => {
            let (secret, _) = SwarmSecret::load_or_create(&home.secret_path())
                .map_err(|e| BadInput(e.to_string()))?;
            let addrs = if addr.is_empty() {
                let reply = client(&cli, &home).swarm().await?;
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
                addr.clone()
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
        Command::Ask {
            ref prompt,
            ref model,
            ref system,
            raw,
            max_tokens,
            temperature,
            seed,
            n_ctx,
            node: ref args,
        } => {
            let ask = Ask {
                prompt: prompt.clone(),
                model: model.clone(),
                system: system.clone(),
                raw,
                max_tokens,
                temperature,
                seed,
                n_ctx,
            };
            crate::ask::ask(&cli, &home, ask, args).await
        }
        Command::Detect => {
            let caps = myco_runtime::detect::detect();
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
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
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
    println!("nodes holding it, with the memory each offers to stages:");
    for n in &p.nodes {
        let used = p.stages.iter().any(|s| s.node == n.name);
        let note = if used || p.stages.is_empty() {
            ""
        } else {
            "  (left out: too small for one layer, or not needed)"
        };
        println!("  {:<16} {:>12}{note}", n.name, mib(n.free_bytes));
    }
    match (&p.error, p.stages.len()) {
        (Some(e), _) => println!("no plan: {e}"),
        (None, 1) => println!("runs whole on {} (it fits; no split):", p.stages[0].node),
        (None, n) => println!("split over {n} nodes, in proportion to their memory:"),
    }
    for s in &p.stages {
        println!(
            "  {:<16} -> layers {:>3}..{:<3} -> {}",
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
            i.caps.gpus.len(),
            i.models.len(),
            format!("{}/{}", i.load.running, i.load.slots),
            i.load.queued,
            n.heartbeat_age_ms as f64 / 1000.0
        );
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn init_logging(node: bool) {
    // ractor_cluster logs every duplicate or closed session; myco logs what matters.
    let default = if node {
        "info,ractor_cluster=error"
    } else {
        "warn,ractor_cluster=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MYCO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
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
}

fn open_out(path: Option<&Path>) -> Result<Box<dyn Write>> {
    Ok(match path {
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
        )),
    })
}

/// The API address: --api / MYCO_API, else the one the node in --home wrote, else the default.
fn api_addr(cli: &Cli, home: &Home) -> SocketAddr {
    if let Some(a) = cli.api {
        return a;
    }
    std::fs::read_to_string(home.api_addr_path())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| NodeConfig::default().api)
}

pub(crate) fn client(cli: &Cli, home: &Home) -> Client {
    Client::new(api_addr(cli, home))
}

fn read_spec(file: &Path) -> Result<SpecSource> {
    let toml = std::fs::read_to_string(file).map_err(|e| {
        BadInput(format!(
            "cannot read job file {}: {e}\nhint: check the path; examples are in examples/",
            file.display()
        ))
    })?;
    let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let base_dir = abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(SpecSource { toml, base_dir })
}

pub(crate) fn node_config(cli: &Cli, home: &Home, args: &NodeArgs) -> Result<NodeConfig> {
    let mut cfg = home.load_config().map_err(|e| BadInput(e.to_string()))?;
    if let Some(api) = cli.api {
        cfg.api = api;
    }
    if let Some(w) = args.workers {
        cfg.workers = w;
    }
    if let Some(n) = &args.name {
        cfg.name = Some(n.clone());
    }
    if let Some(c) = args.cluster {
        cfg.cluster = c;
    }
    cfg.join.extend(args.join.iter().cloned());
    if args.no_discovery {
        cfg.discovery = false;
    }
    if let Some(ip) = args.discovery_iface {
        cfg.discovery_iface = Some(ip);
    }
    if let Some(p) = args.discovery_port {
        cfg.discovery_port = p;
    }
    if let Some(m) = args.stage_memory {
        cfg.stage_memory = Some(m);
    }
    if let Some(token) = &args.join_token {
        let (secret, addrs) =
            SwarmSecret::parse_token(token).map_err(|e| BadInput(e.to_string()))?;
        home.ensure().map_err(|e| BadInput(e.to_string()))?;
        let path = home.secret_path();
        if path.exists() {
            let (mine, _) =
                SwarmSecret::load_or_create(&path).map_err(|e| BadInput(e.to_string()))?;
            if mine != secret {
                return Err(BadInput(format!(
                    "{} already holds the secret of swarm {}, and the token is for swarm {}\nhint: use a fresh --home for the other swarm, or remove {} to leave this one",
                    home.root().display(),
                    mine.swarm_id(),
                    secret.swarm_id(),
                    path.display()
                ))
                .into());
            }
        } else {
            secret.save(&path).map_err(|e| BadInput(e.to_string()))?;
        }
        cfg.join.extend(addrs);
    }
    if let Some(g) = args.shutdown_grace {
        cfg.shutdown_grace = Duration::try_from_secs_f64(g)
            .map_err(|e| BadInput(format!("--shutdown-grace: {e}")))?;
    }
    cfg.validate().map_err(|e| BadInput(e.to_string()))?;
    Ok(cfg)
}

async fn node(cli: &Cli, home: &Home, args: &NodeArgs) -> Result<ExitCode> {
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

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn report_end(job: &JobView, failures: &[JobView]) {
    for f in failures {
        let why = f.error.as_ref().map(|e| e.message.as_str()).unwrap_or("");
        eprintln!("failed: {} ({}): {why}", f.id, f.description);
    }
    match job.state {
        StateName::Done => eprintln!(
            "job {} done: {}/{} parts done, {} failed",
            job.id, job.progress.done, job.progress.total, job.progress.failed
        ),
        other => {
            let why = job.error.as_ref().map(|e| e.message.as_str()).unwrap_or("");
            eprintln!("job {} {other}: {why}", job.id);
        }
    }
}

async fn submit(cli: &Cli, home: &Home, files: &[PathBuf], wait: bool) -> Result<ExitCode> {
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

/// Kinds whose output streams as it is made (an LLM's tokens).
fn streams(kind: myco_jobs::JobKind) -> bool {
    matches!(
        kind,
        myco_jobs::JobKind::Infer | myco_jobs::JobKind::Pipeline
    )
}

/// Follow job `id` to its end on the node's event stream: an LLM's tokens as they come
/// (not with `--json`), else a progress bar.
async fn wait_for(cli: &Cli, target: Target<'_>, id: JobId) -> Result<JobView> {
    // The kind decides what to show; the stream's first event says it.
    let mut watch: Option<Watch> = None;
    let end = target
        .follow(id, false, |event| {
            let w = watch.get_or_insert_with(|| {
                let streams = match &event {
                    Event::Progress(v) | Event::End(v) => streams(v.kind),
                    Event::Piece(_) => true,
                };
                Watch::new(cli.json, streams && !cli.json)
            });
            w.on(event)
        })
        .await?;
    let job = match end {
        Some(job) => job,
        // The stream broke off (the node stopped): report what it says now.
        None => target.status(id).await?,
    };
    if let Some(w) = &mut watch
        && streams(job.kind)
        && !cli.json
    {
        // Text the stream did not carry (pieces lost with a peer) is in the result.
        let mut bytes = Vec::new();
        if job.state == StateName::Done
            && target.write_result(id, &mut bytes).await.is_ok()
            && let Ok(g) = serde_json::from_slice::<myco_jobs::infer::Generation>(&bytes)
        {
            w.rest(&g.text);
        }
        println!();
    }
    Ok(job)
}

async fn run_embedded(
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
    let target = Target::Embedded(&handle);
    let job = tokio::select! {
        job = target.follow(id, false, |event| watch.on(event)) => job?,
        () = shutdown_signal() => {
            eprintln!("interrupted: job {id} stays queued in {}; run the same file again to resume", handle.queue().path().display());
            return Ok(ExitCode::from(130));
        }
    };
    let job = match job {
        Some(job) => job,
        None => target.status(id).await?,
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
