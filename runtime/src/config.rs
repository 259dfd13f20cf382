//! The node's home directory (`~/.myco` or `$MYCO_HOME`) and its config file
//! (`config.toml` there, optional).
//!
//! The layout of models, collections and libraries under the home is
//! [`myco_jobs::home`]'s; [`Home`] adds the node's own files (queue, config, secret).
//!
//! Config is a serde struct with `deny_unknown_fields`, defaults for every field, and a
//! [`NodeConfig::validate`] that reports every problem with its field path. This file reads
//! files; it starts nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a node keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// `$MYCO_HOME` is read by the CLI; this is the fallback, `~/.myco`.
    pub fn default_root() -> PathBuf {
        myco_jobs::home::default_root()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn queue_path(&self) -> PathBuf {
        self.root.join("queue.redb")
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// The API token (mode 0600), made on the node's first start ([`crate::access`]).
    pub fn api_token_path(&self) -> PathBuf {
        self.root.join("api.token")
    }

    /// The file a running node writes its HTTP address to.
    pub fn api_addr_path(&self) -> PathBuf {
        self.root.join("node.addr")
    }

    /// Model files this node holds and advertises (the layout is [`myco_jobs::home`]'s).
    pub fn models_dir(&self) -> PathBuf {
        myco_jobs::home::models_dir(&self.root)
    }

    /// The collections archive jobs write, one directory each.
    pub fn collections_dir(&self) -> PathBuf {
        myco_jobs::home::collections_dir(&self.root)
    }

    /// Shared libraries the node loads at run time (ONNX Runtime).
    pub fn lib_dir(&self) -> PathBuf {
        myco_jobs::home::lib_dir(&self.root)
    }

    /// The swarm secret: whoever holds it is a member.
    pub fn secret_path(&self) -> PathBuf {
        self.root.join("swarm.key")
    }

    /// Create the directory if needed.
    ///
    /// The home is private (0700): it holds every prompt and answer (the queue), the
    /// collections, the swarm secret and the API token. A home made by an older myco (0755)
    /// is made private too; a directory that holds no myco file is left as it is.
    pub fn ensure(&self) -> Result<(), ConfigError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let existed = self.root.is_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| {
                ConfigError::one(
                    "home",
                    format!("cannot create {}: {e}", self.root.display()),
                    "pick a writable directory with --home or MYCO_HOME",
                )
            })?;
        let ours = !existed
            || [
                "queue.redb",
                "swarm.key",
                "api.token",
                "config.toml",
                "collections",
            ]
            .iter()
            .any(|f| self.root.join(f).exists());
        if ours
            && let Ok(meta) = std::fs::metadata(&self.root)
            && meta.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700)).map_err(
                |e| {
                    ConfigError::one(
                        "home",
                        format!("cannot make {} private (0700): {e}", self.root.display()),
                        "chmod 700 it yourself, or pick another --home",
                    )
                },
            )?;
        }
        Ok(())
    }

    /// Read `config.toml` if present, else defaults.
    pub fn load_config(&self) -> Result<NodeConfig, ConfigError> {
        let path = self.config_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => NodeConfig::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeConfig::default()),
            Err(e) => Err(ConfigError::one(
                "",
                format!("cannot read {}: {e}", path.display()),
                "fix its permissions or remove it",
            )),
        }
    }
}

/// The model cache's cap when `model_cache` is unset: 20 GiB.
pub const DEFAULT_MODEL_CACHE: u64 = 20 << 30;

/// A node's settings. Every field has a default; CLI flags override the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The node's name in the swarm; defaults to the host name.
    pub name: Option<String>,
    /// The HTTP API's listen address.
    pub api: SocketAddr,
    /// Executor threads for CPU jobs; 0 means one per core.
    pub workers: usize,
    /// How long a lease lasts without renewal.
    #[serde(with = "humantime_secs")]
    pub lease: Duration,
    /// How often leases are renewed and expired ones collected.
    #[serde(with = "humantime_secs")]
    pub tick: Duration,
    /// First retry delay (doubles per attempt, ±25 % jitter).
    #[serde(with = "humantime_secs")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_secs")]
    pub backoff_max: Duration,
    /// How long a stopping node lets running jobs finish before handing them back.
    #[serde(with = "humantime_secs")]
    pub shutdown_grace: Duration,
    /// Where this node accepts peers (mutual TLS).
    pub cluster: SocketAddr,
    /// Peers to dial (`host:port`), for networks without multicast.
    pub join: Vec<String>,
    /// Find peers on the LAN by multicast beacons.
    pub discovery: bool,
    /// The interface (IPv4 address) discovery uses; unset means every LAN interface.
    pub discovery_iface: Option<std::net::Ipv4Addr>,
    pub discovery_port: u16,
    /// How often heartbeats go out.
    #[serde(with = "humantime_secs")]
    pub heartbeat: Duration,
    /// A peer silent this long is dropped from the swarm.
    #[serde(with = "humantime_secs")]
    pub peer_timeout: Duration,
    /// Memory (bytes) this node offers to model stages; unset means its free memory.
    #[serde(default)]
    pub stage_memory: Option<u64>,
    /// Bytes a second each model transfer this node serves may send (so a transfer does
    /// not starve running jobs); unset means as fast as the network and disk go.
    #[serde(default)]
    pub transfer_rate: Option<u64>,
    /// Bytes the model cache (`cache/slices/`: slices fetched to run stages of models this
    /// node does not hold) may take; least recently used first, never a loaded stage's.
    /// Unset means [`DEFAULT_MODEL_CACHE`].
    #[serde(default)]
    pub model_cache: Option<u64>,
    /// An idle node pulls a model that `infer` jobs wait for at a peer (if it has the memory
    /// for it) and takes some of them: replicas on demand.
    pub auto_pull: bool,
    /// Layers of each LLM on the GPU for jobs that do not say; unset means as many as fit.
    #[serde(default)]
    pub gpu_layers: Option<u32>,
    /// GPU memory (bytes) this node's models and stages may use; unset means its free memory.
    #[serde(default)]
    pub gpu_memory: Option<u64>,
    /// The cores this node uses: LLM decoding runs on this many threads, batch workers
    /// share them (one ONNX Runtime thread each when there are as many workers); 0 means
    /// every core.
    #[serde(default)]
    pub threads: u32,
    /// LLM requests decoded together in one model's context (continuous batching); unset
    /// means 4, fewer when their KV caches do not fit in memory.
    #[serde(default)]
    pub parallel: Option<u32>,
    /// How long finished interactive jobs (chat requests with their prompts and answers,
    /// query embeddings) stay in the queue file.
    #[serde(with = "humantime_secs", default = "retention_interactive")]
    pub retention: Duration,
    /// How long every other finished job (batch work) stays, with its results.
    #[serde(with = "humantime_secs", default = "retention_batch")]
    pub batch_retention: Duration,
    /// Directories below which jobs submitted over HTTP by anyone but the node's owner may
    /// read files ([`crate::access`]).
    #[serde(default)]
    pub data_roots: Vec<PathBuf>,
    /// Serve `/metrics` without the API token (for a Prometheus scraper on the LAN).
    #[serde(default)]
    pub public_metrics: bool,
    /// Requests per second one client (by IP address) may make to `/v1/*`, with bursts of
    /// twice as many; then 429 with `Retry-After`. 0: no limit. The owner on loopback is
    /// never limited.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// Most HTTP connections open at once; more wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long an HTTP connection may take to send a request's header, counted from when
    /// the node is ready to read it (so also how long a connection may sit idle).
    #[serde(with = "humantime_secs", default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// Most HTTP connections open at once from one client address; more are closed at once.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: u32,
    /// Host names the API answers to besides its own address, loopback names (`localhost`)
    /// and this machine's host name: requests naming any other `Host` are refused (a web page
    /// that rebinds its DNS name to this node cannot reach it).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Web origins (`https://app.example`) whose pages may call the API from a browser
    /// (CORS): their preflights are answered. Pages of every other origin are refused.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

fn default_rate_limit() -> u32 {
    50
}

fn default_max_connections() -> u32 {
    256
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_connections_per_client() -> u32 {
    64
}

fn retention_interactive() -> Duration {
    Duration::from_millis(crate::queue::RETENTION_INTERACTIVE_MS)
}

fn retention_batch() -> Duration {
    Duration::from_millis(crate::queue::RETENTION_BATCH_MS)
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: None,
            api: SocketAddr::from(([127, 0, 0, 1], 7700)),
            workers: 0,
            lease: Duration::from_secs(30),
            tick: Duration::from_millis(500),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
            cluster: SocketAddr::from(([0, 0, 0, 0], 7701)),
            join: Vec::new(),
            discovery: true,
            discovery_iface: None,
            discovery_port: 7702,
            heartbeat: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(3),
            stage_memory: None,
            transfer_rate: None,
            model_cache: None,
            auto_pull: true,
            gpu_layers: None,
            gpu_memory: None,
            threads: 0,
            parallel: None,
            retention: retention_interactive(),
            batch_retention: retention_batch(),
            data_roots: Vec::new(),
            public_metrics: false,
            rate_limit: default_rate_limit(),
            max_connections: default_max_connections(),
            max_connections_per_client: default_max_connections_per_client(),
            header_timeout: default_header_timeout(),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

/// Durations in config files are seconds as a float (`lease = 30`, `tick = 0.5`).
mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

impl NodeConfig {
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| {
            ConfigError::one(
                "",
                format!("{}: {}", path.display(), e.message()),
                "fix the field named above; every field is optional",
            )
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every problem, with its field path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |field: &str, message: &str, hint: &str| {
            problems.push((field.to_owned(), message.to_owned(), hint.to_owned()))
        };
        if let Some(name) = &self.name
            && (name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        {
            bad(
                "name",
                "must be 1-64 characters of letters, digits, '-', '_' or '.'",
                "e.g. name = \"workstation\"",
            );
        }
        if self.workers > 1024 {
            bad(
                "workers",
                "more than 1024 workers",
                "use 0 for one per core",
            );
        }
        if self.threads > 4096 {
            bad("threads", "more than 4096 threads", "use 0 for every core");
        }
        if self.parallel == Some(0) || self.parallel.is_some_and(|p| p > 256) {
            bad(
                "parallel",
                "must be 1-256 requests",
                "4 suits most machines; 1 runs one request at a time",
            );
        }
        if self.lease < Duration::from_secs(1) {
            bad(
                "lease",
                "shorter than 1 s",
                "leases of 10-60 s suit most jobs",
            );
        }
        if self.tick.is_zero() || self.tick * 3 > self.lease {
            bad(
                "tick",
                "must be above zero and at most a third of `lease`",
                "renewals need a few chances before a lease runs out",
            );
        }
        if self.backoff_base.is_zero() || self.backoff_max < self.backoff_base {
            bad(
                "backoff_base",
                "must be above zero and at most `backoff_max`",
                "e.g. backoff_base = 1, backoff_max = 300",
            );
        }
        if self.heartbeat.is_zero() || self.heartbeat * 2 > self.peer_timeout {
            bad(
                "heartbeat",
                "must be above zero and at most half of `peer_timeout`",
                "e.g. heartbeat = 0.5, peer_timeout = 3",
            );
        }
        for (i, addr) in self.join.iter().enumerate() {
            if !addr.contains(':') {
                problems.push((
                    format!("join[{i}]"),
                    format!("`{addr}` has no port"),
                    "write host:port, e.g. 192.168.1.20:7701".to_owned(),
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The node's name: the configured one, else the host name.
    pub fn node_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let host = sysinfo::System::host_name().unwrap_or_else(|_| "node".into());
            host.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        })
    }

    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            self.thread_count() as usize
        } else {
            self.workers
        }
    }

    /// LLM requests decoded together per model ([`NodeConfig::parallel`], else 4).
    pub fn parallel_count(&self) -> u32 {
        self.parallel.unwrap_or(4)
    }

    /// The cores this node uses ([`NodeConfig::threads`], else every core).
    pub fn thread_count(&self) -> u32 {
        if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
        } else {
            self.threads
        }
    }
}

/// Problems in a config, each `(field, message, hint)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.problems))]
pub struct ConfigError {
    pub problems: Vec<(String, String, String)>,
}

impl ConfigError {
    fn one(field: &str, message: String, hint: &str) -> Self {
        ConfigError {
            problems: vec![(field.to_owned(), message, hint.to_owned())],
        }
    }
}

fn render(problems: &[(String, String, String)]) -> String {
    let mut out = String::from("invalid node config:");
    for (field, message, hint) in problems {
        let field = if field.is_empty() { "(file)" } else { field };
        out.push_str(&format!("\n  - {field}: {message}\n    hint: {hint}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        NodeConfig::default().validate().unwrap();
    }

    #[test]
    fn unknown_field_is_refused() {
        let e = NodeConfig::parse("wrokers = 3\n", Path::new("config.toml")).unwrap_err();
        assert!(e.to_string().contains("wrokers"), "{e}");
    }

    #[test]
    fn all_problems_are_reported() {
        let cfg = NodeConfig {
            lease: Duration::from_millis(10),
            workers: 5000,
            ..NodeConfig::default()
        };
        let e = cfg.validate().unwrap_err();
        let fields: Vec<_> = e.problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(fields, ["workers", "lease", "tick"]);
    }
}
