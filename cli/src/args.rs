//! The command line, as clap parses it: [`Cli`], its [`Command`]s and the flags a node takes
//! ([`NodeArgs`]). Types only; the commands are in [`crate::cmd`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// One AI swarm from the machines you already own.
#[derive(Debug, Parser)]
#[command(name = "myco", version, about, propagate_version = true)]
pub struct Cli {
    /// Where the node keeps its state.
    #[arg(long, global = true, env = "MYCO_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// The node's HTTP API address [default: the address the node in --home wrote, else
    /// 127.0.0.1:7700].
    #[arg(long, global = true, env = "MYCO_API", value_name = "ADDR")]
    pub api: Option<SocketAddr>,

    /// Machine-readable output (JSON) with stable field names.
    #[arg(long, global = true, env = "MYCO_JSON")]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node: the queue, the workers and the HTTP API, until SIGINT/SIGTERM.
    Node(NodeArgs),
    /// Submit job files to the node; with --wait, follow them to the end.
    Submit {
        /// One or more job.toml files (submitted together: all or none).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Wait until the jobs finish; exit 0 only if all are done.
        #[arg(long, env = "MYCO_WAIT")]
        wait: bool,
    },
    /// Run a job file on an embedded node in this process, print its result, and exit.
    Run {
        file: PathBuf,
        /// Write the result (JSON Lines) here instead of standard output.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// List jobs (top-level jobs, newest first).
    Jobs {
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        #[arg(long, value_name = "KIND")]
        kind: Option<String>,
        /// Only the children of this job.
        #[arg(long, value_name = "ID")]
        parent: Option<String>,
        /// Include child jobs.
        #[arg(long)]
        all: bool,
        /// Only jobs whose id or description contains this (ignoring case).
        #[arg(long, value_name = "TEXT")]
        text: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one job's state and progress.
    Status { id: String },
    /// Print a done job's result (JSON Lines).
    Result {
        id: String,
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Cancel a job (and its children); a running attempt is stopped.
    Cancel { id: String },
    /// Queue a dead or cancelled job again with fresh attempts (for a parent: its dead and
    /// cancelled children; it waits on them, and joins again). Its history says so.
    Retry { id: String },
    /// Submit an ended job again as a new job: the same task, children and scheduling.
    Resubmit { id: String },
    /// Search a collection (built by an archive job) for the chunks nearest to a text. Asks
    /// the node of --home (or --api); with none running, searches the collection's files in
    /// this process (also while a `myco run` holds the home's queue).
    Query {
        text: String,
        /// The collection's name (`collection` in the archive job).
        #[arg(long, short = 'c')]
        collection: String,
        /// How many chunks to return.
        #[arg(short = 'k', long, default_value_t = 5)]
        k: usize,
        /// How to rank: `hybrid` (vectors and keywords, their scores fused), `vector`
        /// (nearest embeddings) or `keyword` (BM25 over the chunks' words; needs no model).
        #[arg(long, default_value = "hybrid", value_parser = parse_mode)]
        mode: myco_jobs::collection::Mode,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// List the collections of the node's home (model, files, chunks, size, last run), or
    /// remove one. Asks the node at --api; with none running, works on --home directly.
    Collections {
        #[command(subcommand)]
        action: Option<CollectionsCommand>,
    },
    /// Ask an LLM (a GGUF model some node of the swarm holds) and print the answer as it is
    /// generated. Asks the node at --api; with none running, starts one in this process.
    Ask {
        prompt: String,
        /// The model: a GGUF file name in ~/.myco/models of some node (with or without
        /// `.gguf`), or a path.
        #[arg(long, short = 'm')]
        model: String,
        /// A system message put before the prompt.
        #[arg(long)]
        system: Option<String>,
        /// Send the prompt as raw text (no chat template).
        #[arg(long)]
        raw: bool,
        #[arg(long, default_value_t = 256)]
        max_tokens: u32,
        /// 0 is greedy (deterministic).
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        /// The sampler's seed, to repeat an answer [default: a random one].
        #[arg(long)]
        seed: Option<u32>,
        /// Context size in tokens [default: the model's trained context, at most 4096].
        #[arg(long)]
        n_ctx: Option<u32>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Show how a pipeline job of MODEL would be split now: node → layers → bytes, over the
    /// nodes that hold the file, in proportion to the memory each offers.
    Plan {
        /// A GGUF file name in ~/.myco/models of the node at --api (with or without `.gguf`).
        model: String,
        /// Context size in tokens (sizes the KV caches).
        #[arg(long, default_value_t = 4096)]
        n_ctx: u32,
    },
    /// Show this machine's capabilities: cores, RAM, GPUs.
    Detect,
    /// Show the swarm: nodes, roles, capabilities, load, heartbeat age.
    Swarm,
    /// Show the models each node holds: name, size, architecture, layers and content hash
    /// (once the node has read the file); `pull` fetches one from a peer.
    Models {
        #[command(subcommand)]
        action: Option<ModelsAction>,
    },
    /// Measure myco on this machine, each figure against its baseline.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print this node's API token (made on its first start), for clients on other machines:
    /// `Authorization: Bearer TOKEN`, or an OpenAI client's `api_key`.
    Token,
    /// Print a one-line token another machine joins with: `myco node --join-token TOKEN`.
    /// It contains the swarm secret: share it like a password.
    Invite {
        /// The address peers should dial [default: this node's advertised cluster address].
        #[arg(long, value_name = "HOST:PORT")]
        addr: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CollectionsCommand {
    /// Remove a collection: its directory and every file in it.
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Skewed load on a local swarm of node processes: makespan against the ideal, steal
    /// latency, remote call overhead.
    Steal(crate::bench::StealArgs),
    /// A model pulled between two node processes on loopback, against a plain TLS copy of
    /// the same bytes: MB/s, the ratio, CPU per GB.
    Transfer(crate::bench::TransferArgs),
}

/// Settings of a node this process starts.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Executor threads for CPU jobs [default: one per core].
    #[arg(long, env = "MYCO_WORKERS")]
    pub workers: Option<usize>,
    /// The node's name in the swarm [default: the host name].
    #[arg(long, env = "MYCO_NAME")]
    pub name: Option<String>,
    /// Seconds a stopping node lets running jobs finish.
    #[arg(long, env = "MYCO_SHUTDOWN_GRACE", value_name = "SECS")]
    pub shutdown_grace: Option<f64>,
    /// Where to accept peers [default: 0.0.0.0:7701].
    #[arg(long, env = "MYCO_CLUSTER", value_name = "ADDR")]
    pub cluster: Option<std::net::SocketAddr>,
    /// A peer to dial (repeatable), for networks without multicast.
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "MYCO_JOIN",
        value_delimiter = ','
    )]
    pub join: Vec<String>,
    /// Join the swarm of an invite token (from `myco invite`).
    #[arg(long, env = "MYCO_JOIN_TOKEN", value_name = "TOKEN")]
    pub join_token: Option<String>,
    /// Do not look for peers on the LAN.
    #[arg(long, env = "MYCO_NO_DISCOVERY")]
    pub no_discovery: bool,
    /// The interface (IPv4 address) to discover peers on [default: every LAN interface].
    #[arg(long, env = "MYCO_DISCOVERY_IFACE", value_name = "IP")]
    pub discovery_iface: Option<std::net::Ipv4Addr>,
    /// The UDP port of discovery beacons [default: 7702].
    #[arg(long, env = "MYCO_DISCOVERY_PORT", value_name = "PORT")]
    pub discovery_port: Option<u16>,
    /// Memory this node offers to model stages of pipeline jobs, e.g. `6GiB` [default: its
    /// free memory].
    #[arg(long, env = "MYCO_STAGE_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    pub stage_memory: Option<u64>,
    /// Disk the model cache may take (slices of models this node does not hold, fetched to
    /// run their stages), e.g. `40GiB`; least recently used first [default: 20GiB].
    #[arg(long, env = "MYCO_MODEL_CACHE", value_name = "SIZE", value_parser = parse_size)]
    pub model_cache: Option<u64>,
    /// Never pull a model by itself (by default an idle node pulls a model that `infer` jobs
    /// wait for at a peer, if it has the memory for it, and takes some of them).
    #[arg(long, env = "MYCO_NO_AUTO_PULL")]
    pub no_auto_pull: bool,
    /// Layers of each LLM to put on the GPU, for jobs that do not say (0: none) [default: as
    /// many as fit in the GPU's free memory; the rest run on the CPU].
    #[arg(long, env = "MYCO_GPU_LAYERS", value_name = "N")]
    pub gpu_layers: Option<u32>,
    /// GPU memory this node's models and stages may use, e.g. `6GiB` [default: the GPU's free
    /// memory].
    #[arg(long, env = "MYCO_GPU_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    pub gpu_memory: Option<u64>,
    /// Cores this node uses: LLM requests decode on this many threads, and batch workers
    /// share them, yielding while a request runs [default: every core].
    #[arg(long, env = "MYCO_THREADS", value_name = "N")]
    pub threads: Option<u32>,
    /// LLM requests decoded together in one model [default: 4, fewer when their contexts
    /// do not fit in memory].
    #[arg(long, env = "MYCO_PARALLEL", value_name = "N")]
    pub parallel: Option<u32>,
    /// Hours finished interactive jobs (chat requests with their prompts and answers) stay in
    /// the queue file [default: 24].
    #[arg(long, env = "MYCO_RETENTION", value_name = "HOURS")]
    pub retention: Option<f64>,
    /// A directory below which jobs submitted over HTTP (by anyone but this node's owner on
    /// this machine) may read files; repeatable [default: none].
    #[arg(long = "data-root", value_name = "DIR")]
    pub data_roots: Vec<PathBuf>,
    /// Serve /metrics without the API token.
    #[arg(long, env = "MYCO_PUBLIC_METRICS")]
    pub public_metrics: bool,
    /// A host name the API answers to besides its own address, localhost and this
    /// machine's name (e.g. the name it has on your LAN or behind a proxy); repeatable.
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// A web origin whose pages may call the API from a browser (CORS), e.g.
    /// https://app.example; repeatable [default: none].
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
}

/// `123`, `512KiB`, `1.5GB`, `6GiB`, `2g`: a size in bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size; write e.g. 6GiB, 512MiB or 1000000"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}`; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    Ok((n * mult) as u64)
}

fn parse_mode(s: &str) -> Result<myco_jobs::collection::Mode, String> {
    s.parse()
}

/// Which chunks `myco query` may return; applied before ranking.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Only files whose path (relative to the archive root) matches this glob: `*` stays in
    /// one directory, `**` crosses any (`guide/**/*.md`).
    #[arg(long, value_name = "GLOB")]
    pub source: Option<String>,
    /// Only files of this type (extension: md, html, pdf, txt); repeat for several.
    #[arg(long = "type", value_name = "EXT")]
    pub types: Vec<String>,
    /// Only files modified since: a date (2026-11-01), a date and time
    /// (2026-11-01T08:30:00Z) or an age (7d, 36h).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only files modified before: a date, a date and time, or an age.
    #[arg(long, value_name = "TIME")]
    pub before: Option<String>,
}

/// `myco models ...`.
#[derive(Debug, Subcommand)]
pub enum ModelsAction {
    /// Fetch a GGUF model from a node of the swarm that holds it into this node's models
    /// folder (over the swarm's TLS, verified by its content hash, resumable).
    Pull {
        /// The model's name (its file name, with or without `.gguf`).
        name: String,
        /// The node to fetch from [default: the first that holds it].
        #[arg(long)]
        from: Option<String>,
    },
    /// Remove a GGUF model from this node: its file in the models folder and the slices of
    /// it in the model cache (other nodes keep theirs).
    Rm {
        /// The model's name (its file name, with or without `.gguf`).
        name: String,
    },
}
