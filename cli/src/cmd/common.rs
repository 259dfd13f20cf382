//! What the commands share: bad-input errors, the node's address and client, reading a job
//! file, a node's config from flags, JSON output, the shutdown signal, and reporting how a
//! job ended.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use myco_actors::SpecSource;
use myco_runtime::cluster::secret::SwarmSecret;
use myco_runtime::config::{Home, NodeConfig};
use myco_runtime::queue::{JobView, StateName};

use crate::args::{Cli, NodeArgs};
use crate::client::Client;

/// A bad-input error (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

pub fn init_logging(node: bool) {
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

pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

pub fn open_out(path: Option<&Path>) -> Result<Box<dyn Write>> {
    Ok(match path {
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
        )),
    })
}

/// A client of --home's own node: at --api / MYCO_API when given, else at the address the
/// node of --home wrote there; `None` when neither is there (no node runs on this home, and
/// whatever answers at the default address belongs to another home).
pub fn home_client(cli: &Cli, home: &Home) -> Option<Client> {
    (cli.api.is_some() || home.api_addr_path().exists()).then(|| client(cli, home))
}

/// What `ask` gets from --home's own node ([`home_client`]); `Ok(None)` when no node of
/// this home runs or it does not answer, for the caller to do the work itself.
pub async fn from_home_node<T, F, Fut>(cli: &Cli, home: &Home, ask: F) -> Result<Option<T>>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let Some(client) = home_client(cli, home) else {
        return Ok(None);
    };
    match ask(client).await {
        Err(e) if e.downcast_ref::<crate::client::Unreachable>().is_some() => Ok(None),
        other => other.map(Some),
    }
}

/// The API address: --api / MYCO_API, else the one the node in --home wrote, else the default.
pub fn api_addr(cli: &Cli, home: &Home) -> SocketAddr {
    if let Some(a) = cli.api {
        return a;
    }
    std::fs::read_to_string(home.api_addr_path())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| NodeConfig::default().api)
}

/// A client of the node at [`api_addr`], with the API token of --home when it has one
/// (`MYCO_API_TOKEN` names another: a node on another machine).
pub fn client(cli: &Cli, home: &Home) -> Client {
    let token = std::env::var("MYCO_API_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| {
            myco_runtime::access::ApiToken::read(&home.api_token_path())
                .ok()
                .flatten()
                .map(|t| t.as_str().to_owned())
        });
    Client::new(api_addr(cli, home), token.as_deref())
}

pub fn read_spec(file: &Path) -> Result<SpecSource> {
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

pub fn node_config(cli: &Cli, home: &Home, args: &NodeArgs) -> Result<NodeConfig> {
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
    if args.no_auto_pull {
        cfg.auto_pull = false;
    }
    if let Some(m) = args.model_cache {
        cfg.model_cache = Some(m);
    }
    if let Some(m) = args.stage_memory {
        cfg.stage_memory = Some(m);
    }
    if let Some(n) = args.gpu_layers {
        cfg.gpu_layers = Some(n);
    }
    if let Some(m) = args.gpu_memory {
        cfg.gpu_memory = Some(m);
    }
    if let Some(n) = args.threads {
        cfg.threads = n;
    }
    if let Some(n) = args.parallel {
        cfg.parallel = Some(n);
    }
    for root in &args.data_roots {
        cfg.data_roots
            .push(std::path::absolute(root).unwrap_or_else(|_| root.clone()));
    }
    if args.public_metrics {
        cfg.public_metrics = true;
    }
    cfg.allowed_hosts.extend(args.allowed_hosts.iter().cloned());
    cfg.allowed_origins
        .extend(args.allowed_origins.iter().cloned());
    if let Some(h) = args.retention {
        cfg.retention = std::time::Duration::try_from_secs_f64(h * 3600.0).map_err(|_| {
            BadInput(format!(
                "--retention {h}: give hours as a number, e.g. 24 or 0.5"
            ))
        })?;
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

pub async fn shutdown_signal() {
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

pub fn report_end(job: &JobView, failures: &[JobView]) {
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

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}
